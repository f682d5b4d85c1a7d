"""Errors a request can meet, each one OpenAI's error object with its HTTP status.

A handler raises ``APIError``; the app turns it into
``{"error": {"message", "type", "param", "code"}}`` with ``status``. Nothing else
reaches a client: an unexpected exception becomes a 500 with one line, never a traceback.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """One failed request: HTTP status, OpenAI error type, the offending parameter, a short code."""

    def __init__(
        self, status: int, message: str, *, type: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, type="invalid_request_error", param=param, code=code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")


def not_found(message: str, *, param: str | None = "model", code: str = "model_not_found") -> APIError:
    return APIError(404, message, type="invalid_request_error", param=param, code=code)


def too_large(message: str) -> APIError:
    return APIError(413, message, type="invalid_request_error", code="request_too_large")


def queue_full(message: str) -> APIError:
    return APIError(429, message, type="rate_limit_error", code="queue_full")


def unavailable(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="shutting_down")


def internal(message: str) -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")
