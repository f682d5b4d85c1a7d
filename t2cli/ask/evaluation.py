"""Accuracy of a two-pass strategy on a task: pass 1 per item, pass 2 batched per decision.

``t2 eval --task T --strategy prompt|classifier|cem|none|expert:NAME`` answers every
item the way ``t2 ask`` would (same dispatchers, same composed-weight cache), but
generates pass 2 in batches: items are grouped by what pass 1 chose, and each group
is answered in one batched ``generate`` with that z applied. The result is an
``EvalResult`` plus the routing (how many items went where) and the pass-1 time; it
is stored like any evaluation, with the strategy in its config.

An image task (a vision-language model) goes the same way with its pictures: pass 1 sees each
item's images, as ``t2 ask --image`` does, and pass 2 generates from the processor's prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from t2cli.ask.engine import Asker, AskSettings
from t2cli.errors import T2Error
from t2cli.eval.accuracy import EvalResult, item_prompts, make_result, record_evaluation
from t2cli.runtime.generation import generate

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.svf.adaptable import Adaptable
    from t2cli.tasks import Task


@dataclass
class StrategyEvalResult(EvalResult):
    strategy: str = ""
    pass1: str = "generate"  # prompt/classifier: how pass 1 read the category
    routing: dict[str, int] = field(default_factory=dict)  # choice -> items
    dispatch_seconds: float = 0.0  # pass 1, all items


def evaluate_strategy(
    registry: Registry,
    task: Task,
    strategy: str,
    *,
    model: str | None = None,
    adaptable: Adaptable | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    classifier: str | None = None,
    pass1: str = "generate",
    router: str | None = None,
    router_temperature: float = 1.0,
    top_k: int | None = None,
    device: str = "auto",
    on_item: Callable[[int], None] | None = None,
    record: bool = True,
) -> StrategyEvalResult:
    """Dispatch each item with ``strategy``, answer each group of items batched, score, and store the result.

    ``adaptable``: a model already loaded (``model`` is then ignored), so that several strategies
    measured in one run share one load and one composed-weight cache (bench/t2_table.py).
    """
    items = task.split(split)[:limit] if limit else task.split(split)
    if not items:
        raise T2Error(f"task {task.name} has no {split} items", "pick another --split")
    budget = max_new_tokens or task.max_new_tokens
    asker = Asker(
        registry,
        AskSettings(
            strategy=strategy,
            task=task.name,
            classifier=classifier,
            max_new_tokens=budget,
            pass1=pass1,
            router=router,
            router_temperature=router_temperature,
            top_k=top_k,
        ),
        model=model,
        adaptable=adaptable,
        device=device,
        expect_images=any(item.images for item in items),  # a text-only model is refused before it loads
    )
    adaptable = asker.load()
    started = time.perf_counter()
    decisions = []
    for item in items:  # pass 1 sees the user's question and its pictures, as in `t2 ask`
        decisions.append(asker.dispatch(item.prompt, images=[image.open() for image in item.images]))
        if on_item:
            on_item(1)
    dispatch_seconds = time.perf_counter() - started

    groups: dict[str, list[int]] = {}  # a per-prompt mixture's choice is its key: equal mixtures share a batch
    for index, decision in enumerate(decisions):
        groups.setdefault(decision.choice, []).append(index)
    texts: list[str] = [""] * len(items)
    tokens = 0
    for indices in groups.values():
        try:
            asker.apply_decision(decisions[indices[0]])
            prompts = item_prompts(adaptable, task, [items[i] for i in indices])
            gens = generate(adaptable.model, adaptable.tokenizer, prompts, max_new_tokens=budget, batch_size=batch_size)
        finally:
            adaptable.svf.restore()
        for i, text in zip(indices, gens.texts):
            texts[i] = text
        tokens += gens.new_tokens
    seconds = time.perf_counter() - started

    correct = task.correct(items, texts)
    result = make_result(
        task.name,
        split,
        None,
        items,
        correct,
        texts,
        seconds,
        tokens,
        result_type=StrategyEvalResult,
        max_new_tokens=budget,
        per_item=[{"choice": d.choice, "reason": d.reason} for d in decisions],
        strategy=strategy,
        pass1=pass1,
        routing={choice: len(indices) for choice, indices in groups.items()},
        dispatch_seconds=dispatch_seconds,
    )
    if record:
        router_settings = (
            {"name": router, "temperature": router_temperature, "top_k": top_k}
            if strategy.startswith("router")
            else None
        )
        _record(
            registry,
            adaptable.base_model_id,
            result,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=budget,
            router_settings=router_settings,
        )
    return result


def _record(
    registry: Registry,
    base_model_id: int,
    result: StrategyEvalResult,
    *,
    limit,
    batch_size,
    max_new_tokens,
    router_settings: dict | None = None,
) -> None:
    record_evaluation(
        registry,
        result,
        base_model_id=base_model_id,
        expert_id=None,
        config={
            "strategy": result.strategy,
            "pass1": result.pass1,
            "router": router_settings,
            "routing": result.routing,
            "limit": limit,
            "batch_size": batch_size,
            "decoding": "greedy",
            "max_new_tokens": max_new_tokens,
            "dispatch_seconds": result.dispatch_seconds,
        },
    )
