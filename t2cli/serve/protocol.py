"""The wire format: OpenAI's request and response bodies, plus t2's ``t2`` extension field.

Requests ignore fields t2 does not use (``user``, ``presence_penalty``...), as OpenAI
clients send them; a field t2 uses is validated (ranges, types) and a bad one is a 400
naming it. Responses carry ``t2``: which weights answered (docs/serving.md).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from t2cli.serve.errors import bad_request

AUTO_MODEL = "t2-auto"  # the `model` that asks the server's pass-1 strategy to choose
MAX_STOP_SEQUENCES = 4


class T2Options(BaseModel):
    """The ``t2`` extension of a request body: a pass-1 strategy, or mixing weights expert -> alpha."""

    model_config = ConfigDict(extra="forbid")

    strategy: str | None = None
    experts: dict[str, float] | None = None

    @field_validator("experts")
    @classmethod
    def _weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("name at least one expert")
        for name, alpha in value.items():
            if not math.isfinite(alpha) or alpha < 0:
                raise ValueError(f"the weight of {name!r} must be a finite number >= 0 (got {alpha})")
        if sum(value.values()) <= 0:
            raise ValueError("the weights are all 0")
        return value


class _Sampling(BaseModel):
    """What both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    t2: T2Options | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("a stop sequence is empty")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str  # a data: URL (base64), or http(s) when the server allows remote images (docs/serving.md)
    detail: str | None = None  # "auto", "low", "high": accepted; the model's processor sets the resolution


class ImagePart(BaseModel):
    """OpenAI's ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}`` content part."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    @model_validator(mode="after")
    def _images_from_users(self) -> ChatMessage:
        if self.role != "user" and self.images():  # as OpenAI's API: pictures are what a user shows
            raise ValueError(f"image_url parts are accepted in user messages only, not in a {self.role} message")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if isinstance(part, TextPart))
        return self.content or ""

    def images(self) -> list[ImageURL]:
        if not isinstance(self.content, list):
            return []
        return [part.image_url for part in self.content if isinstance(part, ImagePart)]

    def parts(self) -> list[dict[str, str]]:
        """The content as a processor's chat template reads it: text parts, and ``{"type": "image"}`` per image."""
        if not isinstance(self.content, list):
            return [{"type": "text", "text": self.content or ""}]
        return [
            {"type": "text", "text": part.text} if isinstance(part, TextPart) else {"type": "image"}
            for part in self.content
        ]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def image_urls(self) -> list[tuple[str, str]]:
        """Every image of the conversation, in order: (where it is in the body, its URL)."""
        return [
            (f"messages.{m}.content.{p}.image_url.url", part.image_url.url)
            for m, message in enumerate(self.messages)
            if isinstance(message.content, list)
            for p, part in enumerate(message.content)
            if isinstance(part, ImagePart)
        ]


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("give one prompt (a string, or a list of one string)")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_budget(self) -> int | None:
        return self.max_tokens


def parse_request(kind: type[_Sampling], raw: bytes) -> Any:
    """The request body as ``kind``; a 400 naming the first bad field otherwise."""
    try:
        return kind.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "json_invalid":
            raise bad_request(f"the body is not valid JSON: {message}", code="invalid_json") from None
        raise bad_request(f"{where}: {message}" if where else message, param=where) from None


# --------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class T2Info(BaseModel):
    """Which weights answered: ``choice`` (base, an expert, or a mixture), its ``weights``, and pass 1."""

    choice: str
    weights: dict[str, float]
    strategy: str | None  # the pass-1 strategy that chose (None: the request named the weights)
    reason: str
    pass1_seconds: float
    # With images and a pass-1 strategy: whether pass 1 saw them (False: it read the text only). Absent otherwise.
    pass1_images: bool | None = None


def model_entry(name: str, created: int, **t2: Any) -> dict[str, Any]:
    """One item of ``GET /v1/models``."""
    return {"id": name, "object": "model", "created": created, "owned_by": "t2", "t2": t2}
