"""``t2 eval``: accuracy of base weights or an expert on a task split, with a 95% interval."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from registry.queries import evaluations
from registry.queries import experts as expert_rows
from registry.records import NewEvaluation, from_attributes
from t2cli.errors import T2Error
from t2cli.runtime.generation import generate

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.runtime.distributed import Dist
    from t2cli.runtime.multimodal import ImagePrompt
    from t2cli.svf.adaptable import Adaptable
    from t2cli.svf.model import SVFLike
    from t2cli.tasks import Task, TaskItem


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sane at 0 and n, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalResult:
    """Accuracy on one task split, with the per-item record."""

    task: str
    split: str
    expert: str | None  # None: the base weights
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    seconds: float
    tokens_per_s: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    max_new_tokens: int | None = None  # the answer budget every item had (paired comparisons need the same)


R = TypeVar("R", bound=EvalResult)


def make_result(
    task: str,
    split: str,
    expert: str | None,
    items: Sequence[TaskItem],
    correct: Sequence[bool],
    texts: Sequence[str],
    seconds: float,
    tokens: int,
    *,
    result_type: type[R],
    per_item: Sequence[dict] | None = None,
    max_new_tokens: int | None = None,
    **extra: Any,
) -> R:
    """An evaluation result with its Wilson interval and per-item record (``per_item`` adds fields to each)."""
    k, n = sum(correct), len(items)
    low, high = wilson_interval(k, n)
    samples = [
        {"id": item.id, "correct": ok, "completion": text, "answer": item.answer, **(per_item[i] if per_item else {})}
        for i, (item, ok, text) in enumerate(zip(items, correct, texts))
    ]
    return result_type(
        task=task,
        split=split,
        expert=expert,
        n=n,
        correct=k,
        accuracy=k / n,
        ci_low=low,
        ci_high=high,
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
        samples=samples,
        max_new_tokens=max_new_tokens,
        **extra,
    )


def item_prompts(adaptable: Adaptable[SVFLike], task: Task, items: Sequence[TaskItem]) -> list[str] | list[ImagePrompt]:
    """What to generate from: chat-formatted texts, or, when items show images, the processor's ``ImagePrompt``s.

    Text items on any model take the tokenizer's path unchanged; items with images need a
    vision-language model (``Adaptable.processor``; ``check_model_fits_task`` refuses the rest first).
    """
    if any(item.images for item in items):
        return task.image_prompts(adaptable.processor(), items)
    return task.prompts(adaptable.tokenizer, items)


@torch.no_grad()
def run_items(
    adaptable: Adaptable[SVFLike],
    task: Task,
    items: Sequence[TaskItem],
    z: Mapping[str, torch.Tensor] | None,
    *,
    key: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    sync: Dist | None = None,
) -> tuple[list[bool], list[str], float, int]:
    """Greedy answers for ``items`` with z applied (None: base); returns (correct, texts, seconds, tokens).

    ``sync``: the job, when the model is FSDP-sharded (see ``generation.generate``).
    """
    prompts = item_prompts(adaptable, task, items)
    started = time.perf_counter()
    with adaptable.svf.adapted(z, key=key):
        gens = generate(
            adaptable.model,
            adaptable.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens or task.max_new_tokens,
            temperature=0.0,
            batch_size=batch_size,
            on_batch=on_batch,
            sync=sync,
        )
    return task.correct(items, gens.texts), gens.texts, time.perf_counter() - started, gens.new_tokens


def evaluate(
    registry: Registry,
    adaptable: Adaptable,
    task: Task,
    *,
    expert: str | None = None,
    z: Mapping[str, torch.Tensor] | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    record: bool = True,
    max_new_tokens: int | None = None,
) -> EvalResult:
    """Score greedy answers on a split and (by default) store the result in the registry."""
    if split not in ("train", "valid", "test"):
        raise T2Error(f"unknown split {split!r}", "use train, valid or test")
    items = task.split(split)
    if limit is not None:
        if limit < 1:
            raise T2Error(f"--limit {limit} must be at least 1")
        items = items[:limit]
    if not items:
        raise T2Error(f"task {task.name} has no {split} items", "pick another --split")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise T2Error(f"--max-new-tokens {max_new_tokens} must be at least 1")
    budget = max_new_tokens or task.max_new_tokens
    correct, texts, seconds, tokens = run_items(
        adaptable, task, items, z, key=expert, batch_size=batch_size, on_batch=on_batch, max_new_tokens=budget
    )
    result = make_result(
        task.name, split, expert, items, correct, texts, seconds, tokens, result_type=EvalResult, max_new_tokens=budget
    )
    if record:
        _record(registry, adaptable, result, limit=limit, batch_size=batch_size, max_new_tokens=budget)
    return result


def _record(
    registry: Registry,
    adaptable: Adaptable,
    result: EvalResult,
    *,
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
) -> None:
    expert = None if result.expert is None else expert_rows.get(registry, result.expert)
    record_evaluation(
        registry,
        result,
        base_model_id=adaptable.base_model_id,
        expert_id=None if expert is None else expert.id,
        config={"limit": limit, "batch_size": batch_size, "decoding": "greedy", "max_new_tokens": max_new_tokens},
    )


def record_evaluation(
    registry: Registry, result: EvalResult, *, base_model_id: int, expert_id: int | None, config: dict[str, Any]
) -> None:
    """Store ``result`` as an evaluation of an expert (``expert_id`` None: the base weights) run with ``config``."""
    evaluations.add(
        registry,
        from_attributes(NewEvaluation, result, base_model_id=base_model_id, expert_id=expert_id, config=config),
    )
