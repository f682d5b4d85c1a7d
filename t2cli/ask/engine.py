"""Two-pass adaptive inference (docs/method.md §3): the engine behind ``t2 ask``.

Pass 1 runs the strategy (``t2cli.ask.strategies``) and yields a ``Dispatch``: base
weights, one expert, or a mixture z' = sum_k alpha_k z_k. The switch applies that
z through ``SVFModel.apply`` keyed by the expert's name (or the mixture's weights),
so its composed weights are cached and switching back costs no recomposition.
Pass 2 generates the answer, streaming text to a callback. The base weights are
restored after every prompt, whether it succeeded or raised (Ctrl-C included).

``Asker`` checks everything it can before the model is loaded (strategy, experts,
classifier, mixture, prompt length against the context window, images on a text-only
model), so a bad request fails fast and leaves the registry untouched; the model is
loaded, and decomposed on first use, only when the first prompt is answered.

A prompt may come with images (a vision-language model): pass 1 sees them (the strategies
take ``images=``) and pass 2 generates from the processor's chat template with the images as
content parts (``t2cli.runtime.multimodal``), streaming as for text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers.generation.streamers import BaseStreamer

from registry.queries import base_models
from registry.queries import experts as expert_rows
from t2cli.ask.strategies import (
    PASS1_MODES,
    Completer,
    Dispatch,
    DispatchContext,
    build_dispatcher,
    mixture_key,
    parse_strategy,
    run_dispatch,
)
from t2cli.bank.install import Installed, first_use_install
from t2cli.errors import T2Error, UsageError
from t2cli.models.hashing import HashCache
from t2cli.models.identity import model_identity
from t2cli.models.load import load_processor, load_tokenizer
from t2cli.models.resolve import resolve_model
from t2cli.models.targets import is_vision_language
from t2cli.runtime.generation import completion_length, decoding, end_token_ids, prepare_tokenizer, render_prompt
from t2cli.runtime.multimodal import ImagePrompt, batch_inputs, encode_image_prompt
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import load_expert
from t2cli.tasks.images import image_files

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import GenerationMixin, ProcessorMixin

    from registry import Registry
    from t2cli.svf.adaptable import Adaptable
    from t2cli.tasks.types import ItemImage

DEFAULT_MAX_NEW_TOKENS = 256
TextCallback = Callable[[str], None]


class AskError(T2Error):
    """A prompt or an input file that cannot be answered."""


class AskSettingError(AskError, UsageError):
    """An ask setting outside what it accepts (--pass1, --max-new-tokens, --temperature): exit code 2."""


class ImagesNeedVisionError(AskError, UsageError):
    """Images given with a prompt for a text-only model, which cannot see them: exit code 2."""


ROUTED_STRATEGIES = ("auto", "router", "router-soft")  # pass 1 reads a router: the starter bank may supply it


@dataclass
class AskSettings:
    """How ``t2 ask`` answers: the strategy and the generation settings of pass 2."""

    strategy: str = "auto"  # auto | none | expert:NAME | prompt | classifier | cem | router | router-soft
    task: str | None = None  # cem: the task whose mixture to use
    classifier: str | None = None  # classifier: the dispatch expert (default: the latest trained on `dispatch`)
    pass1: str = "generate"  # prompt/classifier: generate the answer and parse it, or score the categories
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS  # pass-2 generation budget
    temperature: float = 0.0  # pass-2 sampling temperature; 0 = greedy
    router: str | None = None  # router/router-soft: the router (default: the latest of the base model)
    router_temperature: float = 1.0  # router-soft: temperature of the class probabilities
    top_k: int | None = None  # router-soft: mix only the k likeliest classes

    def __post_init__(self) -> None:
        parse_strategy(self.strategy)  # an unknown strategy fails here, before anything is opened
        if self.pass1 not in PASS1_MODES:
            raise AskSettingError(f"unknown --pass1 {self.pass1!r}", f"use one of: {', '.join(PASS1_MODES)}")
        if self.max_new_tokens < 1:
            raise AskSettingError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if not self.temperature >= 0:
            raise AskSettingError(f"--temperature must be >= 0 (got {self.temperature})", "use 0 for greedy decoding")
        if not self.router_temperature > 0:
            raise AskSettingError(f"--router-temperature must be > 0 (got {self.router_temperature})", "e.g. 1.0")
        if self.top_k is not None and self.top_k < 1:
            raise AskSettingError(f"--top-k must be at least 1 (got {self.top_k})", "e.g. --top-k 2")


@dataclass
class Timings:
    dispatch_s: float  # pass 1
    switch_s: float  # applying the chosen z (0 when cached)
    generate_s: float  # pass 2
    total_s: float  # the whole prompt (model loading excluded)


@dataclass
class AskResult:
    """One answered prompt; ``to_json`` is the ``t2 ask --json`` line."""

    prompt: str
    answer: str
    strategy: str
    choice: str
    category: str | None
    weights: dict[str, float]
    reason: str
    timings: Timings
    tokens: int  # generated tokens (end token included)
    cached: bool = False  # the chosen z's composed weights came from the cache
    images: tuple[str, ...] = ()  # where the images shown with the prompt come from (their paths)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cached")
        if not self.images:  # a text prompt's line is as it was before images existed
            data.pop("images")
        else:
            data["images"] = list(self.images)
        return data


@dataclass(frozen=True)
class Question:
    """One prompt of ``t2 ask`` and the images shown with it (none for a text question)."""

    prompt: str
    images: tuple[ItemImage, ...] = ()


# --------------------------------------------------------------------------- input


def check_prompt_text(prompt: str, where: str = "the prompt") -> None:
    """Refuse an empty (or whitespace-only) prompt."""
    if not prompt.strip():
        raise AskError(f"{where} is empty", 'give a question, e.g. t2 ask "What is 12 * 7?"')


def read_prompts(data: bytes, source: str) -> list[str]:
    """The prompts of an input file (``read_questions`` without their images)."""
    return [question.prompt for question in read_questions(data, source)]


def read_questions(data: bytes, source: str, folder: Path | None = None) -> list[Question]:
    """The questions of an input file: JSON lines with a "prompt" field, or plain text with one prompt per line.

    The format is JSONL when the first non-blank line starts with "{". A JSON line may name
    images in an optional "image" field: a path relative to ``folder`` (the file's folder) or
    a list of them, each checked as a task's images are (``t2cli.tasks.images``; ``folder``
    defaults to the working directory, for stdin). Blank
    lines are skipped. Errors name the line.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark, as some editors write
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data[: exc.start].count(b"\n") + 1
        raise AskError(
            f"{source} is not valid UTF-8 (byte 0x{data[exc.start]:02x} on line {line_no})",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`)",
        ) from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise AskError(f"{source} holds no prompt", 'write one prompt per line, or JSON lines with a "prompt" field')
    if not lines[0][1].lstrip().startswith("{"):
        return [Question(line) for _, line in lines]
    questions = []
    for number, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AskError(
                f"{source} line {number} is not valid JSON: {exc.msg} (column {exc.colno})",
                'write one {"prompt": "..."} object per line',
            ) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise AskError(
                f'{source} line {number} has no "prompt" string', 'write one {"prompt": "..."} object per line'
            )
        check_prompt_text(obj["prompt"], f"the prompt on {source} line {number}")
        where = f"{source} line {number}"
        images = image_files(folder or Path.cwd(), where, obj["image"]) if "image" in obj else ()
        questions.append(Question(obj["prompt"], images))
    return questions


def question_images(paths: Sequence[str]) -> tuple[ItemImage, ...]:
    """The images of ``t2 ask --image PATH`` (relative to the working directory), checked as a task's are."""
    return image_files(Path.cwd(), "--image", list(paths)) if paths else ()


# --------------------------------------------------------------------------- pass 2: streamed generation


class _CallbackStreamer(BaseStreamer):
    """A transformers streamer that decodes the new tokens and hands each new piece of text to a callback.

    ``generate`` calls it in its own thread, so an exception from the callback
    (a closed pipe, Ctrl-C) stops generation at once.
    """

    def __init__(self, tokenizer, end_ids: set[int], on_text: TextCallback) -> None:
        self.tokenizer, self.end_ids, self.on_text = tokenizer, end_ids, on_text
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False
        self.done = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.done or token in self.end_ids:
                self.done = True
                break
            self.ids.append(token)
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return  # half of a multi-byte character: wait for the rest
        if len(text) > self.sent:
            piece, self.sent = text[self.sent :], len(text)
            self.on_text(piece)


@torch.no_grad()
def stream_generate(
    adaptable: Adaptable,
    prompt: str | ImagePrompt,
    *,
    max_new_tokens: int,
    temperature: float,
    on_text: TextCallback | None,
) -> tuple[str, int]:
    """Answer one prompt with the weights currently applied; returns (text, tokens).

    ``prompt``: the user's text (the tokenizer's chat template is applied), or an ``ImagePrompt``
    already rendered and encoded by the processor, whose image tensors go to ``generate``.
    """
    tokenizer = prepare_tokenizer(adaptable.tokenizer)
    model = adaptable.model
    end_ids = end_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    extra: dict[str, Any] = {}
    rows: Mapping[str, Any]
    if isinstance(prompt, ImagePrompt):
        rows = batch_inputs([prompt], [prompt.ids], pad_id=tokenizer.pad_token_id, left=True)  # one row: no padding
        if prompt.placeholders:  # an image placeholder in the answer would stand for no image
            extra["suppress_tokens"] = list(prompt.placeholders)
    else:
        rows = tokenizer([render_prompt(tokenizer, prompt)], return_tensors="pt", add_special_tokens=False)
    enc = {key: value.to(device) for key, value in rows.items()}
    streamer = _CallbackStreamer(tokenizer, end_ids, on_text) if on_text is not None else None
    # A causal LM: PreTrainedModel itself declares no generate().
    out = cast("GenerationMixin", model).generate(
        **enc, **decoding(tokenizer, temperature), max_new_tokens=max_new_tokens, streamer=streamer, **extra
    )
    generated = out[0, enc["input_ids"].shape[1] :].tolist()
    cut = completion_length(generated, end_ids)
    text = tokenizer.decode(generated[:cut], skip_special_tokens=True)
    if not isinstance(text, str):  # one sequence decodes to one text (transformers annotates both modes at once)
        raise TypeError(f"decoding the answer gave {type(text).__name__}, not text")
    return text, cut


# --------------------------------------------------------------------------- the engine


@dataclass
class _Prepared:
    """What the checks before loading need: the model's identity, tokenizer and context window."""

    model_name: str
    fingerprint: str
    tokenizer: Any
    context_limit: int | None
    base_model_id: int | None
    num_layers: int | None = None
    model_type: str | None = None  # images need a vision-language model_type (``is_vision_language``)


class Asker:
    """Answers prompts with one strategy on one model; composed expert weights are cached across prompts.

    Pass ``adaptable`` to reuse a loaded model (tests, notebooks); otherwise the
    model named by ``model`` is resolved and checked now and loaded on the first
    ``ask``. ``complete`` replaces pass-1 generation (tests on random models).
    ``expect_images``: prompts will come with images, so a text-only model is refused
    here, before anything is written (the starter bank's first-use install included).
    """

    def __init__(
        self,
        registry: Registry,
        settings: AskSettings,
        *,
        model: str | None = None,
        adaptable: Adaptable | None = None,
        device: str = "auto",
        complete: Completer | None = None,
        expect_images: bool = False,
    ) -> None:
        self.registry, self.settings, self.model, self.device = registry, settings, model, device
        self._adaptable = adaptable
        self._processor: ProcessorMixin | None = None  # loaded for the first prompt with images
        self._z: dict[str, dict[str, torch.Tensor]] = {}
        self.prepared = prepare_model(registry, model, adaptable)
        if expect_images:
            self._require_vision()
        self.installed: Installed | None = None  # the starter bank, when this call installed it
        if parse_strategy(settings.strategy)[0].name in ROUTED_STRATEGIES:
            self.installed = first_use_install(registry, self.prepared.fingerprint, model=model)
            if self.installed is not None and self.installed.changed:
                self.prepared = prepare_model(registry, model, adaptable)  # the base model is registered now
        ctx = DispatchContext(
            registry=registry,
            base_model_id=self.prepared.base_model_id,
            model_name=self.prepared.model_name,
            tokenizer=self.prepared.tokenizer,
            context_limit=self.prepared.context_limit,
            adaptable=self.load,
            task=settings.task,
            classifier=settings.classifier,
            complete=complete,
            pass1=settings.pass1,
            router=settings.router,
            router_temperature=settings.router_temperature,
            top_k=settings.top_k,
            processor=self.processor,
        )
        self._dispatcher = build_dispatcher(ctx, settings.strategy)

    # ------------------------------------------------------------------ checks and loading

    def check_prompt(self, prompt: str, where: str = "the prompt", images: Sequence[ItemImage] = ()) -> int:
        """Refuse an empty prompt, images for a text-only model, or a prompt (its images' tokens included)
        that does not fit the context window; returns its token count."""
        check_prompt_text(prompt, where)
        return self._check_fits(prompt, self.encode(prompt, [i.open() for i in images]) if images else None, where)

    def _check_fits(self, prompt: str, shown: ImagePrompt | None, where: str) -> int:
        """``prompt`` (as ``shown`` with its images, when it has some) and the answer budget fit the window."""
        if shown is not None:
            n = len(shown.ids)
        else:
            tokenizer = self.prepared.tokenizer
            n = len(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])
        limit, budget = self.prepared.context_limit, self.settings.max_new_tokens
        if limit is not None and n + budget > limit:
            room = limit - budget
            raise AskError(
                f"{where} is {n} tokens (chat template{' and images' if shown else ''} included); with "
                f"--max-new-tokens {budget} that exceeds "
                f"the {limit}-token context window of {self.prepared.model_name}",
                f"shorten it to at most {room} tokens" if room > 0 else f"lower --max-new-tokens below {limit}",
            )
        return n

    def processor(self) -> ProcessorMixin:
        """The model's processor, for prompts with images; refuses a text-only model (exit code 2).

        Loaded from the model's folder without the model, so prompts are checked before it loads.
        """
        self._require_vision()
        if self._processor is None:
            adaptable = self._adaptable
            self._processor = (
                adaptable.processor() if adaptable is not None else load_processor(resolve_model(self.model))
            )
        return self._processor

    def _require_vision(self) -> None:
        model_type = self.prepared.model_type
        if model_type is not None and not is_vision_language(model_type):
            raise ImagesNeedVisionError(
                f"images need a vision-language model, but {self.prepared.model_name} (model_type {model_type}) "
                "is a text-only model: it cannot see them",
                "ask with --model smolvlm-256m (or another vision-language model, see `t2 models`), or leave out "
                "--image",
            )

    def encode(self, prompt: str, images: Sequence[Image]) -> ImagePrompt:
        """``prompt`` with ``images`` as pass 2 reads it: the processor's chat template, images before the text."""
        return encode_image_prompt(self.processor(), prompt, images)

    def load(self) -> Adaptable:
        """The loaded model (loaded, and decomposed if needed, on the first call)."""
        if self._adaptable is None:
            adaptable = load_adaptable(
                self.registry,
                self.model,
                targets=targets_for(self.registry, self.prepared.base_model_id),
                device=self.device,
            )
            if adaptable.identity.fingerprint != self.prepared.fingerprint:
                raise AskError(f"the weights of {self.prepared.model_name} changed while loading", "run again")
            self._adaptable = adaptable
        return self._adaptable

    # ------------------------------------------------------------------ the two passes

    def ask(self, prompt: str, *, images: Sequence[ItemImage] = (), on_text: TextCallback | None = None) -> AskResult:
        """Pass 1, switch, pass 2 for one prompt (shown with ``images``); the base weights are back afterwards,
        whatever happens."""
        check_prompt_text(prompt)
        pictures = [image.open() for image in images]  # decoded and encoded once, for both passes
        shown = self.encode(prompt, pictures) if pictures else None
        self._check_fits(prompt, shown, "the prompt")
        svf = self.load().svf
        started = time.perf_counter()
        try:
            decision = run_dispatch(self._dispatcher, prompt, images=pictures)
            switch_start = time.perf_counter()
            cached = self.apply_decision(decision)
            switch_s = time.perf_counter() - switch_start
            gen_start = time.perf_counter()
            answer, tokens = stream_generate(
                self.load(),
                shown or prompt,
                max_new_tokens=self.settings.max_new_tokens,
                temperature=self.settings.temperature,
                on_text=on_text,
            )
            generate_s = time.perf_counter() - gen_start
        finally:
            svf.restore()
        return AskResult(
            prompt=prompt,
            answer=answer,
            strategy=self.settings.strategy,
            choice=decision.choice,
            category=decision.category,
            weights=dict(decision.weights),
            reason=decision.reason,
            timings=Timings(decision.seconds, switch_s, generate_s, time.perf_counter() - started),
            tokens=tokens,
            cached=cached,
            images=tuple(image.source for image in images),
        )

    def dispatch(self, prompt: str, *, images: Sequence[Image] = ()) -> Dispatch:
        """Pass 1 alone (timed): which z should answer ``prompt`` (shown with ``images``)."""
        return run_dispatch(self._dispatcher, prompt, images=images)

    def apply_decision(self, decision: Dispatch) -> bool:
        """Apply the chosen z; returns whether nothing had to be composed (its weights were cached).

        One expert (or a stored mixture) is composed once and cached under its name. A
        mixture of several experts made per prompt (``router-soft``) is summed from the
        experts' cached composed weights (``SVFModel.apply_mixture``), never composed anew.
        """
        svf = self.load().svf
        weights = decision.weights
        if decision.stored is not None or (len(weights) == 1 and next(iter(weights.values())) == 1.0):
            key = decision.stored or next(iter(weights))
            if svf.is_cached(key):
                svf.apply({}, key=key)  # the cache holds W' for this key: nothing is loaded or composed
                return True
            svf.apply(self._expert_z(key), key=key)
            return False
        if not weights:
            svf.restore()
            return True
        cached = all(svf.is_cached(name) for name in weights)
        parts = {name: (alpha, {} if svf.is_cached(name) else self._expert_z(name)) for name, alpha in weights.items()}
        svf.apply_mixture(parts, label=mixture_key(weights))
        return cached

    def _expert_z(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._z:
            self._z[name] = load_expert(self.registry, name).z
        return self._z[name]


def prepare_model(registry: Registry, model: str | None, adaptable: Adaptable | None) -> _Prepared:
    """Identity, tokenizer and context window of the model, without loading or registering it."""
    if adaptable is not None:
        text_config = adaptable.model.config.get_text_config()
        return _Prepared(
            adaptable.identity.ref.name,
            adaptable.identity.fingerprint,
            adaptable.tokenizer,
            getattr(text_config, "max_position_embeddings", None),
            adaptable.base_model_id,
            adaptable.identity.num_layers,
            adaptable.identity.model_type,
        )
    ref = resolve_model(model)
    identity = model_identity(ref, HashCache(registry.home / "cache" / "file-hashes.json"))
    config = identity.config
    limit = config.get("max_position_embeddings") or (config.get("text_config") or {}).get("max_position_embeddings")
    return _Prepared(
        ref.name,
        identity.fingerprint,
        load_tokenizer(ref),
        int(limit) if limit else None,
        _base_model_id(registry, identity.fingerprint),
        identity.num_layers,
        identity.model_type,
    )


def _base_model_id(registry: Registry, fingerprint: str) -> int | None:
    base = base_models.by_fingerprint(registry, fingerprint)
    return None if base is None else base.id


def targets_for(registry: Registry, base_model_id: int | None) -> str:
    """The decomposition to load: the experts' targets spec when they all share one, else all matrices."""
    if base_model_id is None:
        return "all"
    specs = {record.targets_spec for record in expert_rows.of_base_model(registry, base_model_id)}
    spec = specs.pop() if len(specs) == 1 else None
    return "all" if spec is None else spec
