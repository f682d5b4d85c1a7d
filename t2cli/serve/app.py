"""The FastAPI app: one handler per endpoint over a shared ``Service``.

| endpoint | what |
| --- | --- |
| ``GET /v1/models`` | ``t2-auto``, the base model and its experts, read from the registry now |
| ``POST /v1/chat/completions`` | chat, streamed (SSE) or not |
| ``POST /v1/completions`` | plain-text completion, streamed or not |
| ``GET /metrics`` | Prometheus text format |
| ``GET /`` | the playground page |

Every error is OpenAI's error object (``errors.APIError``); the Bearer check covers
``/v1`` and ``/metrics`` when the server has a key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from t2cli.serve.errors import APIError, internal, not_found, too_large, unauthorized
from t2cli.serve.protocol import (
    AUTO_MODEL,
    ChatCompletionRequest,
    CompletionRequest,
    T2Info,
    Usage,
    model_entry,
    parse_request,
)
from t2cli.serve.scheduler import Completed, Event, Failed, Finished, Job, Started, Text
from t2cli.serve.service import Service
from t2cli.serve.weights import Weights

log = logging.getLogger("t2.serve")
PROTECTED = ("/v1", "/metrics")


class Inbox:
    """Events from the worker thread to one handler's coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    async def next(self) -> Event:
        return await self.queue.get()


def t2_info(weights: Weights) -> dict[str, Any]:
    info = T2Info(
        choice=weights.choice,
        weights=weights.weights,
        strategy=weights.strategy,
        reason=weights.reason,
        pass1_seconds=round(weights.pass1_seconds, 6),
        pass1_images=weights.pass1_images,
    ).model_dump()
    if info["pass1_images"] is None:  # said only where a request with images went through pass 1
        del info["pass1_images"]
    return info


def t2_headers(weights: Weights) -> dict[str, str]:
    return {
        "x-t2-choice": weights.choice,
        "x-t2-weights": weights.header(),
        "x-t2-pass1-seconds": f"{weights.pass1_seconds:.6f}",
    }


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(f"the body is {declared} bytes; this server accepts at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(f"the body is over {limit} bytes, the most this server accepts")
    return bytes(body)


def create_app(service: Service) -> FastAPI:
    """The app serving ``service``; its lifespan starts the model's worker and drains it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.scheduler.close)

    app = FastAPI(title="t2 serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    settings = service.settings

    # ------------------------------------------------------------------ errors, auth, metrics

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = not_found(f"no endpoint {request.method} {request.url.path}", param=None, code="unknown_url")
        else:
            error = APIError(exc.status_code, str(exc.detail), type="invalid_request_error")
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        error = internal(f"unexpected {type(exc).__name__}: this is a bug in t2")
        return JSONResponse(error.body(), status_code=500)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if settings.api_key is not None and path.startswith(PROTECTED):
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
                error = unauthorized("a valid API key is required: send the header Authorization: Bearer <key>")
                service.metrics.request(path, 401)
                return JSONResponse(error.body(), status_code=401)
        response = await call_next(request)
        if path.startswith("/v1"):
            service.metrics.request(path, response.status_code)
        return response

    # ------------------------------------------------------------------ endpoints

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        page = resources.files("t2cli.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def _models() -> list[dict[str, Any]]:
        now = int(time.time())
        items = [
            model_entry(AUTO_MODEL, now, kind="auto", strategy=service.resolver.default_strategy),
            model_entry(service.base_name, now, kind="base"),
        ]
        for record in service.resolver.experts():
            if record.name in (AUTO_MODEL, service.base_name):
                continue
            created = int(record.created_at.timestamp())
            items.append(
                model_entry(record.name, created, kind=record.kind, task=record.task, category=record.category)
            )
        return items

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": await run_in_threadpool(_models)}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for item in await run_in_threadpool(_models):
            if item["id"] == model_id:
                return item
        raise not_found(f"no model or expert named {model_id!r} here (GET /v1/models lists them)")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_request(ChatCompletionRequest, await read_body(request, service.body_limit))
        pictures = await service.read_images(req)  # checked, decoded or fetched here: the worker never waits on I/O
        inbox = Inbox()
        job = await run_in_threadpool(service.chat_job, req, inbox.emit, pictures)
        return await _answer(request, req, job, inbox, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse_request(CompletionRequest, await read_body(request, service.body_limit))
        inbox = Inbox()
        job = await run_in_threadpool(service.completion_job, req, inbox.emit)
        return await _answer(request, req, job, inbox, chat=False)

    async def _answer(
        request: Request, req: ChatCompletionRequest | CompletionRequest, job: Job, inbox: Inbox, *, chat: bool
    ) -> Response:
        service.scheduler.submit(job)
        # Until the stream starts (it then watches the client itself), or until a whole answer is ready.
        watch = asyncio.create_task(_cancel_when_gone(request, job))
        try:
            first = await inbox.next()  # the weights are applied (or the request failed)
            if isinstance(first, Failed):
                raise first.error
            if not isinstance(first, Started):
                raise internal(f"the worker sent {type(first).__name__} first")
            weights = first.weights
            if req.stream:
                stream = _stream(req, job, inbox, weights, chat=chat)
                return StreamingResponse(stream, media_type="text/event-stream", headers=t2_headers(weights))
            body = await _collect(req, inbox, weights, chat=chat)
        finally:
            watch.cancel()
            if not req.stream:
                job.cancelled.set()  # no-op once answered; frees the rows if this handler was cancelled
        return JSONResponse(body, headers=t2_headers(weights))

    async def _collect(
        req: ChatCompletionRequest | CompletionRequest, inbox: Inbox, weights: Weights, *, chat: bool
    ) -> dict[str, Any]:
        finished: dict[int, Finished] = {}
        while True:
            event = await inbox.next()
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Finished):
                finished[event.index] = event
            if isinstance(event, Completed):
                break
        choices = []
        for index in range(req.n):
            done = finished[index]
            reason = "length" if done.reason == "length" else "stop"
            if chat:
                message = {"role": "assistant", "content": done.text}
                choices.append({"index": index, "message": message, "finish_reason": reason, "logprobs": None})
            else:
                choices.append({"index": index, "text": done.text, "finish_reason": reason, "logprobs": None})
        usage = Usage(
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            total_tokens=event.prompt_tokens + event.completion_tokens,
        )
        return {
            "id": _new_id(chat),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": choices,
            "usage": usage.model_dump(),
            "t2": t2_info(weights),
        }

    async def _stream(
        req: ChatCompletionRequest | CompletionRequest, job: Job, inbox: Inbox, weights: Weights, *, chat: bool
    ) -> AsyncIterator[str]:
        chunk_id, created, info = _new_id(chat), int(time.time()), t2_info(weights)
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {"id": chunk_id, "object": kind, "created": created, "model": req.model, "choices": choices}
            body.update(extra, t2=info)
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def choice(index: int, text: str | None, reason: str | None, *, role: bool = False) -> dict[str, Any]:
            if not chat:
                return {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}

        try:
            if chat:
                yield chunk([choice(i, None, None, role=True) for i in range(req.n)])
            while True:
                event = await inbox.next()
                if isinstance(event, Text):
                    yield chunk([choice(event.index, event.text, None)])
                elif isinstance(event, Finished):
                    reason = "length" if event.reason == "length" else "stop"
                    yield chunk([choice(event.index, None if chat else "", reason)])
                elif isinstance(event, Failed):
                    yield f"data: {json.dumps(event.error.body())}\n\n"
                    break
                elif isinstance(event, Completed):
                    if req.include_usage():
                        total = event.prompt_tokens + event.completion_tokens
                        usage = Usage(
                            prompt_tokens=event.prompt_tokens,
                            completion_tokens=event.completion_tokens,
                            total_tokens=total,
                        )
                        yield chunk([], usage=usage.model_dump())
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()

    return app


async def _cancel_when_gone(request: Request, job: Job) -> None:
    """Cancel ``job`` once its client has disconnected: its rows stop at the next token (or never start).

    The body is read by then, so the next ASGI message is the disconnect (as Starlette's
    ``StreamingResponse`` listens for it); the task is cancelled once the answer is ready.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancelled.set()


def _new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
