"""Pass 1 of two-pass inference: strategies that decide which z answers a prompt (docs/method.md §3).

A strategy is registered by name with ``@strategy("name")``. It is a factory: it
gets a ``DispatchContext`` (the registry, the base model, the options) and an
optional argument (``expert:NAME`` gives "NAME"), does its registry look-ups and
checks once, raising one clear ``DispatchError`` when it cannot work, and returns
a ``Dispatcher``: a function from a prompt to a ``Dispatch`` (the choice, the
mixture weights expert -> alpha, the reason). Pass 2 (``t2cli.ask.engine``) applies it.

| strategy | pass 1 |
| --- | --- |
| ``none`` | nothing: base weights |
| ``expert:NAME`` | nothing: that expert |
| ``prompt`` | the base model classifies the prompt into the experts' categories or ``other`` |
| ``classifier`` | the same question, answered with the dispatch expert applied |
| ``cem`` | the latest CEM mixture registered for ``--task`` (made by ``t2 adapt``) |
| ``router`` | the learned router reads the base model's hidden states of the prompt: its likeliest class |
| ``router-soft`` | the same router's class probabilities as mixing weights (``other`` = base weights) |
| ``auto`` | the default: ``AUTO_ROUTING`` with the base model's current router, else the base weights (and why) |

The model is only loaded when a dispatcher first needs it (``ctx.adaptable()``),
so every look-up error comes before anything is loaded or decomposed.

A prompt may come with images (``run_dispatch(..., images=...)``, a vision-language model):
the dispatchers that read the prompt take them as ``images=`` and see them as pass 2 will,
through the model's processor: ``prompt`` and ``classifier`` generate or score the
classification with the images as content parts, ``router`` and ``router-soft`` (and ``auto``)
read the prefill of the prompt with its images. ``none``, ``expert:NAME`` and ``cem`` do not
read the prompt at all, so they take no images.
"""

from __future__ import annotations

import copy
import inspect
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import torch

from registry.queries import experts as expert_rows
from registry.records import ExpertRecord
from t2cli.adapt.cem import latest_cem_mixture
from t2cli.errors import T2Error, UsageError
from t2cli.experts.catalog import find_expert
from t2cli.models.resolve import model_argument
from t2cli.router.features import prompt_features
from t2cli.router.model import Router, RouterError, soft_weights
from t2cli.router.store import current_router
from t2cli.runtime.generation import generate, render_prompt
from t2cli.runtime.multimodal import ImagePrompt, batch_inputs, encode_image_prompt, encode_plain_image_prompt
from t2cli.svf.expert import ExpertConfig, load_expert
from t2cli.tasks.dispatch_task import (
    ANSWER_PREFIX,
    DISPATCH_MAX_NEW_TOKENS,
    DISPATCH_TASK,
    OTHER,
    CategoryExpert,
    boxed_category,
    category_experts,
    classification_prompt,
    parse_category,
)

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

    from registry import Registry
    from t2cli.svf.adaptable import Adaptable

BASE = "base"  # Dispatch.choice when pass 2 runs on the base weights
PASS1_MODES = ("generate", "score")
MIN_QUESTION_TOKENS = 32  # pass 1 never cuts the question shorter than this


class DispatchError(T2Error):
    """A strategy that cannot run: unknown name, missing expert, classifier or mixture."""


class StrategyUsageError(DispatchError, UsageError):
    """A --strategy value that names no strategy or misses its argument (exit code 2)."""


@dataclass(frozen=True)
class Dispatch:
    """What pass 1 decided.

    ``weights`` maps expert names to mixing weights alpha (empty: base weights;
    one expert at 1.0: that expert). ``stored`` names a registered expert whose
    stored z pass 2 applies as is (a CEM mixture, whose alphas may be per
    matrix); ``weights`` then reports the mixture's recorded parents.
    """

    choice: str  # "base", an expert name, or a mixture's name
    weights: dict[str, float]
    reason: str
    seconds: float = 0.0
    category: str | None = None  # the category pass 1 read, where it classified
    stored: str | None = None


# A prompt -> what pass 1 decided. Dispatchers that read the prompt also take ``images=`` (PIL images shown
# with it); ``run_dispatch`` passes them only to a dispatcher that takes them (``_takes_images``).
Dispatcher = Callable[[str], Dispatch]
# Pass-1 generation: (the loaded model, the classification message) -> the model's answer, with the
# weights currently applied. Tests inject a stub where the model is random.
Completer = Callable[["Adaptable", str], str]
PrefixCache = dict  # (weights key, prefix text) -> (prefix token ids, its KV cache); one per Asker


@dataclass
class DispatchContext:
    """What a strategy may use: the registry, the base model and the options of ``t2 ask``."""

    registry: Registry
    base_model_id: int | None  # None: the model was never registered (so no expert can belong to it)
    model_name: str
    tokenizer: PreTrainedTokenizerBase
    context_limit: int | None  # the model's max_position_embeddings, when known
    adaptable: Callable[[], Adaptable]  # loads the model on first call
    task: str | None = None
    classifier: str | None = None
    complete: Completer | None = None  # None: ``greedy_answer``
    pass1: str = "generate"  # how prompt/classifier read the category: "generate" or "score" (PASS1_MODES)
    prefix_cache: PrefixCache = field(default_factory=dict)  # --pass1 score: the instructions' KV, per weights
    router: str | None = None  # router/router-soft: the router's name (default: the latest of the base model)
    router_temperature: float = 1.0  # router-soft: softmax temperature of the class probabilities
    top_k: int | None = None  # router-soft: mix only the k likeliest classes
    processor: Callable[[], ProcessorMixin] | None = None  # prompts with images; None: the loaded model's

    def image_processor(self) -> ProcessorMixin:
        """The processor that encodes prompts with images (a vision-language model's)."""
        return self.processor() if self.processor is not None else self.adaptable().processor()


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    factory: Callable[[DispatchContext, str | None], Dispatcher]
    takes_arg: bool
    help: str

    @property
    def usage(self) -> str:
        return f"{self.name}:NAME" if self.takes_arg else self.name


_STRATEGIES: dict[str, StrategyInfo] = {}


def strategy(name: str, *, takes_arg: bool = False, help: str = ""):
    """Register a strategy factory ``(ctx, arg) -> Dispatcher`` under ``name`` (``name:ARG`` when it takes one)."""

    def register(factory: Callable[[DispatchContext, str | None], Dispatcher]):
        if name in _STRATEGIES:
            raise ValueError(f"strategy '{name}' is already registered")
        _STRATEGIES[name] = StrategyInfo(name, factory, takes_arg, help or (factory.__doc__ or "").strip())
        return factory

    return register


def strategy_names() -> list[str]:
    """The strategies as a user writes them (``expert:NAME``), in registration order."""
    return [info.usage for info in _STRATEGIES.values()]


def parse_strategy(spec: str) -> tuple[StrategyInfo, str | None]:
    """``"expert:math-v1"`` -> (the expert strategy, "math-v1"); a clear error for unknown names."""
    name, sep, arg = spec.strip().partition(":")
    info = _STRATEGIES.get(name.strip().lower())
    valid = ", ".join(strategy_names())
    if info is None:
        raise StrategyUsageError(f"unknown strategy {spec!r}", f"use one of: {valid}")
    value = arg.strip() or None
    if info.takes_arg and value is None:
        raise StrategyUsageError(
            f"strategy {info.name!r} needs a name: --strategy {info.usage}", f"use one of: {valid}"
        )
    if not info.takes_arg and sep:
        raise StrategyUsageError(f"strategy {info.name!r} takes no argument (got {spec!r})", f"use one of: {valid}")
    return info, value


def build_dispatcher(ctx: DispatchContext, spec: str) -> Dispatcher:
    """The pass-1 function for strategy ``spec``, after its look-ups and checks."""
    info, arg = parse_strategy(spec)
    return info.factory(ctx, arg)


def run_dispatch(dispatcher: Dispatcher, prompt: str, *, images: Sequence[Image] = ()) -> Dispatch:
    """Pass 1, timed. ``images``: shown with the prompt; a dispatcher that takes no ``images`` reads the text alone."""
    started = time.perf_counter()
    if images and takes_images(dispatcher):
        decision = cast("Callable[..., Dispatch]", dispatcher)(prompt, images=images)
    else:
        decision = dispatcher(prompt)
    return replace(decision, seconds=time.perf_counter() - started)


def takes_images(dispatcher: Dispatcher) -> bool:
    """Whether ``run_dispatch`` shows ``dispatcher`` the images (it reads them) or the text alone."""
    # Strategies registered before images existed (a plugin's ``lambda prompt: ...``) keep working.
    try:
        parameters = inspect.signature(dispatcher).parameters.values()
    except (TypeError, ValueError):  # a callable without an introspectable signature
        return False
    return any(p.name == "images" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# --------------------------------------------------------------------------- registry look-ups


def expert_model(registry: Registry, name: str) -> str | None:
    """The --model that expert ``name`` belongs to (ExpertNotFound if there is no such expert)."""
    record = find_expert(registry, name)
    return model_argument(record.base_model_name, record.base_model_location)


def _check_base(ctx: DispatchContext, expert: ExpertRecord) -> None:
    if expert.base_model_id != ctx.base_model_id:
        raise DispatchError(
            f"expert {expert.name!r} belongs to base model {expert.base_model_name}; the loaded model is "
            f"{ctx.model_name}",
            f"ask with --model {model_argument(expert.base_model_name, expert.base_model_location)}",
        )


def _latest_expert(registry: Registry, base_model_id: int | None, *, task: str) -> str | None:
    """The latest non-mixture expert of ``base_model_id`` trained on ``task``."""
    return None if base_model_id is None else expert_rows.latest_for_task(registry, base_model_id, task)


def _latest_cem_mixture(registry: Registry, task: str, base_model_id: int | None) -> str | None:
    """The latest CEM mixture registered for ``task`` (its name or alias) on this base model."""
    return None if base_model_id is None else latest_cem_mixture(registry, task, base_model_id)


# --------------------------------------------------------------------------- pass-1 generation


def greedy_answer(
    adaptable: Adaptable,
    message: str,
    *,
    categories: Sequence[str] = (),
    images: Sequence[Image] = (),
    processor: ProcessorMixin | None = None,
) -> str:
    """The model's greedy answer to ``message`` (chat template applied) with the weights currently applied.

    With ``categories``, generation stops at the first ``\\boxed{...}`` naming one of them:
    ``parse_category`` reads nothing after it, so the answer means the same and pass 1
    does not pay for the words a small model adds after its box. With ``images``, the message
    goes through the processor (default: the model's) with the images as content parts before it.
    """
    prompts: list[str] | list[ImagePrompt]
    if images:
        prompts = [encode_image_prompt(processor or adaptable.processor(), message, images)]
    else:
        prompts = [render_prompt(adaptable.tokenizer, message)]
    stop = (lambda so_far: boxed_category(so_far, categories) is not None) if categories else None
    gens = generate(
        adaptable.model, adaptable.tokenizer, prompts, max_new_tokens=DISPATCH_MAX_NEW_TOKENS, stop_when=stop
    )
    return gens.texts[0]


_QUESTION_MARK = "\nQuestion:"  # classification_prompt ends with it and the question: what precedes is fixed


def _with_kv(model, kv) -> dict[str, Any]:
    """The forward keyword for a KV cache: ``cache`` in recent transformers 5 (``past_key_values``
    is deprecated there, to go in 5.40), ``past_key_values`` in the releases before the rename."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: kv}


def _kv_of(output):
    """The KV cache a forward returned, under either name (see ``_with_kv``)."""
    kv = getattr(output, "cache", None)
    return kv if kv is not None else output.past_key_values


def _prefix_state(model, tokenizer, text: str, ids: list[int], key: str | None, cache: PrefixCache | None):
    """(KV cache of the fixed instructions, how many of ``ids`` it covers), computed once per weights.

    The classification prompt is the same up to ``Question:`` for every prompt; only the
    question and the template's tail differ. The split is used only when tokenizing the
    prefix alone gives exactly the first tokens of the whole text (else nothing is cached).
    """
    cut = text.rfind(_QUESTION_MARK)
    if cache is None or cut < 0:
        return None, 0
    prefix = text[: cut + len(_QUESTION_MARK)]
    entry = cache.get((key, prefix))
    if entry is None:
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        if ids[: len(prefix_ids)] != prefix_ids or len(prefix_ids) >= len(ids):
            return None, 0
        device = next(model.parameters()).device
        out = model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True)
        entry = cache[(key, prefix)] = (prefix_ids, _kv_of(out))
    prefix_ids, kv = entry
    if ids[: len(prefix_ids)] != prefix_ids:
        return None, 0
    return copy.deepcopy(kv), len(prefix_ids)  # the forward below appends to it


@torch.no_grad()
def score_categories(
    adaptable: Adaptable,
    message: str,
    names: Sequence[str],
    *,
    prefix_cache: PrefixCache | None = None,
    images: Sequence[Image] = (),
    processor: ProcessorMixin | None = None,
) -> dict[str, float]:
    """Pass 1 without generating: the log-probability of each ``name + "}"`` right after the
    answer's required opening ``Classification: \\boxed{``, with the weights currently applied.

    One forward over the prompt fills the KV cache; one batched forward over the K
    candidates (right-padded, the cache repeated K times) scores them all, so the cost is
    about one prefill whatever the answer length. With ``prefix_cache`` the fixed
    instructions are prefilled once per set of weights and only the question is prefilled
    per prompt. Every name gets a score: nothing to parse, and no fallback is needed.

    With ``images`` the message goes through the processor (default: the model's), the images as
    content parts before it, and the first forward gets their tensors; nothing is cached across
    prompts then (the images come first, so no two prompts share a prefix).
    """
    model, tokenizer = adaptable.model, adaptable.tokenizer
    device = next(model.parameters()).device
    if images:
        shown = encode_image_prompt(processor or adaptable.processor(), message, images, suffix=ANSWER_PREFIX)
        ids = shown.ids
        inputs = batch_inputs([shown], [ids], pad_id=tokenizer.pad_token_id or 0, left=False)
        first = model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=True)
    else:
        text = render_prompt(tokenizer, message) + ANSWER_PREFIX
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        kv, done = _prefix_state(model, tokenizer, text, ids, adaptable.svf.active, prefix_cache)
        first = model(input_ids=torch.tensor([ids[done:]], device=device), use_cache=True, **_with_kv(model, kv))
    first_logprobs = first.logits[0, -1].float().log_softmax(-1)
    candidates = [tokenizer(name + "}", add_special_tokens=False)["input_ids"] for name in names]
    width = max(len(c) for c in candidates)
    batch = torch.zeros((len(candidates), width), dtype=torch.long, device=device)
    for row, c in enumerate(candidates):
        batch[row, : len(c)] = torch.tensor(c, device=device)
    cache = _kv_of(first)
    cache.batch_repeat_interleave(len(candidates))
    # No attention mask: the candidates are right-padded, so a real token never sees a pad (causal attention),
    # and positions continue from the cache. Qwen2-VL needs that: given a mask, it derives positions from
    # the mask's whole width instead of adding its image offset (rope deltas) to the cache's length.
    rest = model(input_ids=batch, **_with_kv(model, cache)).logits.float().log_softmax(-1)
    scores = {}
    for row, (name, c) in enumerate(zip(names, candidates)):
        total = first_logprobs[c[0]]
        for j in range(1, len(c)):  # position j-1 of the candidate predicts its token j
            total = total + rest[row, j - 1, c[j]]
        scores[name] = float(total)
    return scores


def fit_question(ctx: DispatchContext, question: str, categories: Mapping[str, str]) -> tuple[str, int | None]:
    """``question`` cut (keeping its start) so the classification prompt fits the model's window.

    Returns (question, tokens kept) where tokens kept is None when nothing was cut.
    The category is usually clear from the start of a prompt; the cut never goes
    below ``MIN_QUESTION_TOKENS``.
    """
    if ctx.context_limit is None:
        return question, None
    budget = ctx.context_limit - DISPATCH_MAX_NEW_TOKENS
    rendered = render_prompt(ctx.tokenizer, classification_prompt(question, categories))
    overflow = len(ctx.tokenizer(rendered, add_special_tokens=False)["input_ids"]) - budget
    if overflow <= 0:
        return question, None
    ids = ctx.tokenizer(question, add_special_tokens=False)["input_ids"]
    keep = max(len(ids) - overflow, MIN_QUESTION_TOKENS)
    if keep >= len(ids):
        return question, None
    kept = ctx.tokenizer.decode(ids[:keep], skip_special_tokens=True)
    if not isinstance(kept, str):  # one sequence decodes to one text (transformers annotates both modes at once)
        raise TypeError(f"decoding the question gave {type(kept).__name__}, not text")
    return kept, keep


def _quote(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return json.dumps(flat if len(flat) <= limit else flat[: limit - 3] + "...", ensure_ascii=False)


def _classify(
    ctx: DispatchContext, prompt: str, experts: list[CategoryExpert], who: str, images: Sequence[Image] = ()
) -> Dispatch:
    """Ask the model (with whatever weights are applied) for the category, and map it to an expert.

    ``images``: shown with the classification prompt, as the user showed them with theirs.
    """
    categories = {e.category: e.description for e in experts}
    question, kept = fit_question(ctx, prompt, categories)
    names = [*categories, OTHER]
    message = classification_prompt(question, categories)
    cut = f" (pass 1 saw the first {kept} tokens of the prompt)" if kept is not None else ""
    found: str | None
    processor = ctx.image_processor() if images else None
    if ctx.pass1 == "score":
        scores = score_categories(
            ctx.adaptable(), message, names, prefix_cache=ctx.prefix_cache, images=images, processor=processor
        )
        found = max(names, key=lambda name: scores[name])  # ties: the first listed
        listed = ", ".join(f"{name} {score:.2f}" for name, score in sorted(scores.items(), key=lambda kv: -kv[1]))
        verdict = f"scored the categories (log-prob after {ANSWER_PREFIX!r}: {listed}) and chose {found}"
    else:
        if ctx.complete is not None:  # a test's stub: it reads the message alone
            answer = ctx.complete(ctx.adaptable(), message)
        else:
            answer = greedy_answer(ctx.adaptable(), message, categories=names, images=images, processor=processor)
        found = parse_category(answer, names)
        if found is None:
            return Dispatch(
                BASE,
                {},
                f"{who} answered {_quote(answer)}, which names no category: fell back to the base weights{cut}",
            )
        verdict = f"classified the prompt as {found} ({_quote(answer)})"
    if found == OTHER:
        return Dispatch(BASE, {}, f"{who} {verdict}: base weights{cut}", category=OTHER)
    expert = next(e for e in experts if e.category == found)
    return Dispatch(
        expert.expert, {expert.expert: 1.0}, f"{who} {verdict}: expert {expert.expert}{cut}", category=found
    )


def _require_category_experts(ctx: DispatchContext, strategy_name: str) -> list[CategoryExpert]:
    experts = category_experts(ctx.registry, ctx.base_model_id)
    if not experts:
        raise DispatchError(
            f"no experts with a category are registered for {ctx.model_name}: strategy {strategy_name!r} has "
            "nothing to choose from",
            "train one (e.g. `t2 train --task math`), or use --strategy none",
        )
    return experts


# --------------------------------------------------------------------------- the strategies


@strategy("none", help="Base weights; no pass 1.")
def _none(ctx: DispatchContext, arg: str | None) -> Dispatcher:
    return lambda prompt: Dispatch(BASE, {}, "base weights (--strategy none)")


@strategy("expert", takes_arg=True, help="The named expert; no pass 1.")
def _expert(ctx: DispatchContext, arg: str | None) -> Dispatcher:
    assert arg is not None  # parse_strategy guarantees it
    _check_base(ctx, find_expert(ctx.registry, arg))
    return lambda prompt: Dispatch(arg, {arg: 1.0}, f"expert {arg} (--strategy expert:{arg})")


@strategy("prompt", help="The base model classifies the prompt into the experts' categories or other.")
def _prompt(ctx: DispatchContext, arg: str | None) -> Dispatcher:
    experts = _require_category_experts(ctx, "prompt")

    def run(prompt: str, images: Sequence[Image] = ()) -> Dispatch:
        svf = ctx.adaptable().svf
        with svf.adapted(None):
            return _classify(ctx, prompt, experts, "the base model", images)

    return run


@strategy("classifier", help="The dispatch expert (`t2 train --task dispatch`) classifies the prompt.")
def _classifier(ctx: DispatchContext, arg: str | None) -> Dispatcher:
    experts = _require_category_experts(ctx, "classifier")
    name = ctx.classifier or _latest_expert(ctx.registry, ctx.base_model_id, task=DISPATCH_TASK)
    if name is None:
        raise DispatchError(
            f"no dispatch classifier expert is registered for {ctx.model_name}",
            "train one with `t2 train --task dispatch`, name one with --classifier NAME, or use --strategy prompt",
        )
    _check_base(ctx, find_expert(ctx.registry, name))
    z: dict[str, torch.Tensor] = {}

    def run(prompt: str, images: Sequence[Image] = ()) -> Dispatch:
        if not z:
            z.update(load_expert(ctx.registry, name).z)
        svf = ctx.adaptable().svf
        with svf.adapted(z, key=name):
            return _classify(ctx, prompt, experts, f"classifier {name}", images)

    return run


@strategy("cem", help="The latest CEM mixture for --task (made by `t2 adapt --task T`).")
def _cem(ctx: DispatchContext, arg: str | None) -> Dispatcher:
    if not ctx.task:
        raise DispatchError(
            "strategy 'cem' needs --task T: the task the mixture was adapted to",
            'e.g. t2 ask "..." --strategy cem --task arc-challenge',
        )
    name = _latest_cem_mixture(ctx.registry, ctx.task, ctx.base_model_id)
    if name is None:
        raise DispatchError(
            f"no CEM mixture for task {ctx.task}; run `t2 adapt --task {ctx.task}` first",
            "or pick another --strategy (prompt, classifier, expert:NAME, none)",
        )
    config = ExpertConfig.from_json(find_expert(ctx.registry, name).config_json)
    weights = {p["name"]: float(p["weight"]) for p in config.parents if p.get("weight") is not None}
    mix = " + ".join(f"{w:.3g} {n}" for n, w in weights.items()) or "its stored z"
    mixture = config.parametrization.get("mixture") or {}
    if weights and mixture.get("granularity") == "role":
        mix += " (mean alphas; one alpha per expert per matrix role)"
    return lambda prompt: Dispatch(
        name, weights or {name: 1.0}, f"CEM mixture {name} for task {ctx.task}: {mix}", stored=name
    )


# --------------------------------------------------------------------------- the learned router


def _router_for(ctx: DispatchContext) -> Router:
    """The router pass 1 uses, checked: registered, valid, for this base model, not stale."""
    try:
        return current_router(ctx.registry, ctx.router, ctx.base_model_id, ctx.model_name)[1]
    except RouterError as exc:  # a strategy that cannot run, like every other
        raise DispatchError(exc.message, exc.hint) from None


def _router_probabilities(
    ctx: DispatchContext, router: Router, prompt: str, images: Sequence[Image] = ()
) -> list[float]:
    adaptable = ctx.adaptable()
    recipe = router.config.features
    # With images: their tokens, then the same plain text, through the processor (t2cli.router.features).
    shown = encode_plain_image_prompt(ctx.image_processor(), prompt, images) if images else prompt
    with adaptable.svf.adapted(None):  # the router was fitted on the base model's states
        features = prompt_features(
            adaptable.model, adaptable.tokenizer, [shown], layers=recipe.layers, pooling=recipe.pooling
        )
    return router.probabilities(features, temperature=ctx.router_temperature)[0].tolist()


def _scores_text(router: Router, probabilities: Sequence[float]) -> str:
    ranked = sorted(zip(router.config.classes, probabilities), key=lambda pair: -pair[1])
    return ", ".join(f"{category} {p:.2f}" for category, p in ranked)


@strategy(
    "router", help="The learned router (`t2 router train`) reads the prompt's hidden states: its likeliest class."
)
def _router(ctx: DispatchContext, arg: str | None) -> Dispatcher:
    router = _router_for(ctx)
    name = router.config.name

    def run(prompt: str, images: Sequence[Image] = ()) -> Dispatch:
        probabilities = _router_probabilities(ctx, router, prompt, images)
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        category = router.config.classes[best]
        expert = router.config.expert_of(category)
        scores = _scores_text(router, probabilities)
        if expert is None:
            return Dispatch(BASE, {}, f"router {name} ({scores}): {category}: base weights", category=category)
        return Dispatch(
            expert, {expert: 1.0}, f"router {name} ({scores}): {category}: expert {expert}", category=category
        )

    return run


@strategy(
    "router-soft",
    help="The learned router's class probabilities as mixing weights (--router-temperature, --top-k; other = base).",
)
def _router_soft(ctx: DispatchContext, arg: str | None) -> Dispatcher:
    router = _router_for(ctx)
    name = router.config.name

    def run(prompt: str, images: Sequence[Image] = ()) -> Dispatch:
        probabilities = _router_probabilities(ctx, router, prompt, images)
        weights = soft_weights(router, probabilities, top_k=ctx.top_k)
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        scores = _scores_text(router, probabilities)
        base_share = 1.0 - sum(weights.values())
        if not weights:
            choice, what = BASE, "base weights"
        elif len(weights) == 1 and base_share < 1e-9:
            choice = next(iter(weights))
            what = f"expert {choice}"
        else:
            choice = mixture_key(weights)
            what = " + ".join(f"{w:.2f} {n}" for n, w in weights.items())
            what += f" + {base_share:.2f} base" if base_share > 1e-9 else ""
        return Dispatch(choice, weights, f"router {name} ({scores}): {what}", category=router.config.classes[best])

    return run


# What `auto` (t2 ask's default) runs when the base model has a current router: the mode that scored best
# in bench/t2_table.py (docs/router.md).
AUTO_ROUTING = "router"


@strategy(
    "auto",
    help=f"The default: the base model's learned router ({AUTO_ROUTING}) when it has a current one, else base weights.",
)
def _auto(ctx: DispatchContext, arg: str | None) -> Dispatcher:
    try:
        return _STRATEGIES[AUTO_ROUTING].factory(ctx, None)
    except T2Error as exc:  # no router, a stale one, one of another model: answer, and say why not routed
        why = f"{exc}; {exc.hint}" if exc.hint else str(exc)
        return lambda prompt: Dispatch(BASE, {}, f"base weights (auto: {why})")


def mixture_key(weights: Mapping[str, float]) -> str:
    """The name of a per-prompt mixture (and its composed-weight cache key): the same weights give the same key."""
    return "mix[" + ",".join(f"{name}={alpha:.9g}" for name, alpha in sorted(weights.items())) + "]"
