"""What the handlers share: the settings, the resolver, the scheduler, the metrics, and the
request checks that run before a request is queued (tokens, limits, weights, images).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from t2cli.errors import T2Error
from t2cli.models.targets import is_vision_language
from t2cli.runtime.generation import prepare_tokenizer
from t2cli.runtime.multimodal import ImagePrompt, encode_chat
from t2cli.serve.errors import bad_request
from t2cli.serve.images import ImageLimits, open_image, read_image
from t2cli.serve.metrics import Gauges, Metrics
from t2cli.serve.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest
from t2cli.serve.scheduler import Event, Job, Scheduler
from t2cli.serve.weights import Pass1, WeightsResolver

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL.Image import Image
    from transformers import ProcessorMixin

    from registry import Registry
    from t2cli.svf.adaptable import Adaptable

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass(frozen=True)
class ServeSettings:
    """Limits and defaults of ``t2 serve`` (docs/serving.md)."""

    api_key: str | None = None  # None: no Bearer check (loopback only, or --insecure)
    strategy: str | None = None  # t2-auto's pass 1 (None: router when the base model has one, else none)
    default_max_tokens: int = 256  # chat completions without max_tokens
    max_tokens: int = 2048  # the largest max_tokens a request may ask
    max_n: int = 8
    max_body_bytes: int = 1 << 20  # without images: a vision-language model's server adds room for them
    max_queue: int = 64
    max_batch: int = 16
    batching: str = "continuous"  # continuous (requests join a running batch between steps) | static
    cache_bytes: int | None = 2 << 30  # composed weights kept for hot experts
    images: ImageLimits = field(default_factory=ImageLimits)  # image_url parts (vision-language models)

    def __post_init__(self) -> None:
        for name in ("default_max_tokens", "max_tokens", "max_n", "max_body_bytes", "max_queue", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


class Service:
    """The served model and everything a handler needs to turn a request into a queued ``Job``."""

    def __init__(self, registry: Registry, adaptable: Adaptable, settings: ServeSettings) -> None:
        self.registry, self.adaptable, self.settings = registry, adaptable, settings
        prepare_tokenizer(adaptable.tokenizer)  # the worker's (left padding, a pad token)
        # The handlers tokenize on other threads: their own copy, one at a time (a fast tokenizer
        # is not safe to share across threads).
        self._tokenizer = copy.deepcopy(adaptable.tokenizer)
        self._tokenizer_lock = threading.Lock()
        config = adaptable.model.config.get_text_config()
        limit = getattr(config, "max_position_embeddings", None)
        self.context_limit: int | None = int(limit) if limit else None
        if settings.cache_bytes is not None:
            adaptable.svf.set_cache_limits(entries=1 << 20, nbytes=settings.cache_bytes)
        self.vision = is_vision_language(adaptable.identity.model_type)
        self._processor: ProcessorMixin | None = None
        self._no_processor: str | None = None  # why a vision-language model cannot take images here
        self._processor_lock = threading.Lock()
        if self.vision:
            try:
                self._processor = adaptable.processor()
            except T2Error as exc:  # text still works; image requests get this reason
                self._no_processor = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        # The model's image placeholder ids: never generated (every row alike), never typed in a prompt.
        self.placeholders = _placeholder_ids(adaptable) if self.vision else ()
        self.body_limit = settings.max_body_bytes + (settings.images.body_bytes() if self.vision else 0)
        self.resolver = WeightsResolver(registry, adaptable, default_strategy=settings.strategy)
        self.metrics = Metrics(self._gauges)
        self.scheduler = Scheduler(
            adaptable,
            self.resolver,
            self.metrics,
            max_queue=settings.max_queue,
            max_batch=settings.max_batch,
            batching=settings.batching,
            suppress=self.placeholders,
        )

    @property
    def base_name(self) -> str:
        return self.resolver.base_name

    def _gauges(self) -> Gauges:
        svf = self.adaptable.svf
        return Gauges(
            queue_length=self.scheduler.queue_length,
            in_flight=self.scheduler.in_flight,
            cache_entries=svf.cache_entries(),
            cache_bytes=svf.cache_nbytes(),
            cache_hits=svf.cache_hits,
            cache_misses=svf.cache_misses,
        )

    # ------------------------------------------------------------------ requests -> jobs (a handler's thread)

    async def read_images(self, req: ChatCompletionRequest) -> list[bytes]:
        """The request's images as encoded bytes (data URLs decoded, remote ones fetched), after the cheap checks."""
        urls = req.image_urls()
        if not urls:
            return []
        if not self.vision:
            raise bad_request(
                f"{self.base_name} is a text-only model: it cannot read the image_url parts of this request; "
                "send text only, or serve a vision-language model (docs/vlm.md)",
                param=urls[0][0],
                code="images_unsupported",
            )
        if self._no_processor is not None:
            raise bad_request(
                f"{self.base_name} cannot be shown images here: {self._no_processor}",
                param=urls[0][0],
                code="images_unsupported",
            )
        limits = self.settings.images
        if len(urls) > limits.max_images:
            raise bad_request(
                f"the request has {len(urls)} images; this server takes at most {limits.max_images} per request "
                "(t2 serve --max-images)",
                param="messages",
            )
        return [await read_image(url, limits, where) for where, url in urls]

    def chat_job(self, req: ChatCompletionRequest, emit: Callable[[Event], None], pictures: list[bytes]) -> Job:
        self._check_placeholders(req.messages)
        prompt: ImagePrompt | None = None
        images: list[Image] = []
        if pictures:
            prompt, images = self._encode(req, pictures)
            ids = prompt.ids
        else:
            text = self._render(req.messages)
            with self._tokenizer_lock:
                ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        users = [m.text() for m in req.messages if m.role == "user"]
        dispatch = users[-1] if users else req.messages[-1].text()
        job = self._job(req, ids, dispatch, req.token_budget(), self.settings.default_max_tokens, emit)
        job.image_prompt = prompt
        if isinstance(job.target, Pass1):  # the pictures are kept (until pass 1 has run) only for pass 1
            job.images = tuple(images)
        return job

    def _check_placeholders(self, messages: list[ChatMessage]) -> None:
        if not self.placeholders:
            return
        for where, message in enumerate(messages):
            with self._tokenizer_lock:
                ids = self._tokenizer(message.text(), add_special_tokens=False)["input_ids"]
            self._refuse_placeholders(ids, f"messages.{where}.content")

    def _refuse_placeholders(self, ids: list[int], param: str) -> None:
        """Refuse text holding the model's image placeholder: the model would look for a picture that is not there
        (and fail the whole batch it shares, image requests included)."""
        found = set(ids) & set(self.placeholders)
        if found:
            with self._tokenizer_lock:
                token = self._tokenizer.convert_ids_to_tokens(min(found))
            raise bad_request(
                f"the text holds {token!r}, the model's image placeholder: write it otherwise, and send "
                "pictures as image_url parts",
                param=param,
            )

    def _encode(self, req: ChatCompletionRequest, pictures: list[bytes]) -> tuple[ImagePrompt, list[Image]]:
        """Decode the pictures and encode the conversation with them (the model's processor).

        One request at a time: the processor, like the tokenizer, is not to be shared across threads,
        and the decoded pixels held at once are then one request's, however many requests arrive.
        """
        if self._processor is None:
            raise RuntimeError("image requests are refused before this point when the model has no processor")
        messages = req.messages
        turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.parts()} for m in messages]
        limits = self.settings.images
        with self._processor_lock:
            images = [open_image(data, limits, where) for data, (where, _) in zip(pictures, req.image_urls())]
            try:
                return encode_chat(self._processor, turns, images), images
            except ValueError as exc:  # e.g. a picture too small or too narrow for the processor's resizing
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise bad_request(f"the model's processor cannot take the image: {first}", param="messages") from None

    def completion_job(self, req: CompletionRequest, emit: Callable[[Event], None]) -> Job:
        with self._tokenizer_lock:
            ids = self._tokenizer(req.text())["input_ids"]
        if not ids:
            raise bad_request("the prompt is empty", param="prompt")
        self._refuse_placeholders(ids, "prompt")  # a completion row may share a batch with image rows
        budget = req.token_budget()
        return self._job(req, ids, req.text(), budget, COMPLETIONS_DEFAULT_MAX_TOKENS, emit)

    def _render(self, messages: list[ChatMessage]) -> str:
        turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
        if not getattr(self._tokenizer, "chat_template", None):
            return "\n\n".join(turn["content"] for turn in turns) + "\n"
        with self._tokenizer_lock:
            text = self._tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):
            raise TypeError(f"the chat template gave {type(text).__name__}, not text")
        return text

    def _job(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        ids: list[int],
        dispatch: str,
        budget: int | None,
        default: int,
        emit: Callable[[Event], None],
    ) -> Job:
        s = self.settings
        if req.n > s.max_n:
            raise bad_request(f"n is {req.n}; this server answers at most {s.max_n} choices per request", param="n")
        if budget is not None and budget > s.max_tokens:
            raise bad_request(
                f"max_tokens is {budget}; this server generates at most {s.max_tokens} tokens per answer",
                param="max_tokens",
            )
        limit = self.context_limit
        if limit is not None:
            room = limit - len(ids)
            if room < 1 or (budget is not None and budget > room):
                raise bad_request(
                    f"the prompt is {len(ids)} tokens; with max_tokens {budget or 1} that exceeds the "
                    f"{limit}-token context window of {self.base_name}",
                    param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                    code="context_length_exceeded",
                )
            if budget is None:
                budget = min(default, room)
        target = self.resolver.resolve(req.model, req.t2)
        return Job(
            prompt_ids=list(ids),
            dispatch_prompt=dispatch,
            target=target,
            emit=emit,
            n=req.n,
            max_tokens=budget or default,
            stops=req.stops(),
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
        )


def _placeholder_ids(adaptable: Adaptable) -> tuple[int, ...]:
    """The ids a vision-language model replaces with image (or video) features, from its config."""
    config = adaptable.model.config
    ids = (getattr(config, name, None) for name in ("image_token_id", "image_token_index", "video_token_id"))
    return tuple(sorted({i for i in ids if isinstance(i, int)}))
