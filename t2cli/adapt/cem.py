"""Few-shot adaptation: mixing weights for K experts found with the cross-entropy method.

``cem_search`` is a plain optimiser: sample a population of weight vectors from a
Gaussian (clamped to [lower, upper]), score each with a fitness callback, refit the
Gaussian to the elite (the top ``elite_ratio``), repeat. Fitness values may be
floats or tuples compared lexicographically (``(accuracy, mean log-likelihood)``
breaks accuracy ties by likelihood). ``adapt`` is the engine behind ``t2 adapt``:
fitness = greedy accuracy on a handful of labelled items with the mixed z applied,
ties broken by the mean per-token log-likelihood of the gold answers; the best
mixture is registered at the end (a crash mid-search writes nothing) and the base
weights are restored after every evaluation. See docs/mixing.md and docs/method.md §4.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from registry.queries import experts as expert_rows
from t2cli.adapt.start import StartingMean, check_init, router_start, start_tensor, uniform_start
from t2cli.errors import T2Error, UsageError
from t2cli.eval.accuracy import item_prompts
from t2cli.experts.mixing import (
    MixingError,
    check_compatible,
    check_name_free,
    get_mixing_method,
    mix_stacked,
    mixture_config,
    role_groups,
    stack_experts,
)
from t2cli.models.hashing import HashCache
from t2cli.models.identity import model_identity
from t2cli.models.resolve import resolve_model
from t2cli.runtime.generation import completion_logprobs, generate, prepare_tokenizer
from t2cli.runtime.multimodal import ImagePrompt
from t2cli.svf.expert import base_model_argument, check_base_model, load_expert, register_expert
from t2cli.tasks import get_task, task_names
from t2cli.tasks.custom import load_task_file

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.svf.adaptable import Adaptable
    from t2cli.svf.expert import LoadedExpert
    from t2cli.tasks import Task, TaskItem

Score = float | tuple[float, ...]
ADAPTATION = "cem"  # parametrization["adaptation"] of every mixture `t2 adapt` registers


# --------------------------------------------------------------------------- the optimiser


@dataclass
class CEMConfig:
    """Settings of a cross-entropy-method search over mixing weights."""

    population: int = 8  # candidates scored per generation (paper: 32)
    elite_ratio: float = 0.25  # fraction of the population the Gaussian is refitted to (paper: 0.2)
    generations: int = 5  # (paper: 50-100)
    init_mean: float | None = None  # starting mean of every weight; None: 1/K (paper)
    init_std: float = 0.5  # starting standard deviation (paper: 0.5)
    min_std: float = 0.01  # floor on the std so the search never freezes completely
    lower: float = 0.0  # weights are clamped to [lower, upper] (paper: [0, 1])
    upper: float = 1.0
    seed: int = 0
    reevaluate_best: bool = False  # re-score the best-so-far each generation (only useful for noisy fitness)

    def __post_init__(self) -> None:
        if self.population < 2:
            raise UsageError(f"--population must be at least 2 (got {self.population})")
        if self.generations < 1:
            raise UsageError(f"--generations must be at least 1 (got {self.generations})")
        if not 0 < self.elite_ratio <= 1:
            raise UsageError(f"--elite-ratio must be in (0, 1] (got {self.elite_ratio})")
        if not (self.init_std > 0 and self.min_std >= 0 and math.isfinite(self.init_std)):
            raise UsageError(f"--init-std must be > 0 and --min-std >= 0 (got {self.init_std}, {self.min_std})")
        if not (math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper):
            raise UsageError(f"the weight bounds [{self.lower}, {self.upper}] are empty")
        if self.init_mean is not None and not math.isfinite(self.init_mean):
            raise UsageError(f"--init-mean must be a finite number (got {self.init_mean})")

    @property
    def num_elite(self) -> int:
        """round(population * elite_ratio), but at least 2: one elite has no spread, and the search would freeze."""
        return min(self.population, max(2, round(self.population * self.elite_ratio)))


# The settings of the paper / the authors' code (docs/method.md §4, docs/mixing.md), for GPUs.
PAPER_CEM = CEMConfig(population=32, elite_ratio=0.2, generations=50, init_std=0.5, lower=0.0, upper=1.0)


@dataclass(frozen=True)
class GenerationStats:
    """One generation of the search."""

    generation: int  # 1-based
    best: Score  # best fitness among this generation's candidates
    mean: float  # mean of the first fitness component over this generation's candidates
    best_so_far: Score
    spread: float  # mean std of the sampling distribution after the update
    evaluations: int  # fitness calls so far


@dataclass
class CEMResult:
    best_alpha: torch.Tensor  # (dim,), float64
    best_fitness: Score
    history: list[GenerationStats] = field(default_factory=list)
    evaluations: int = 0


def _sort_key(score: Score) -> tuple[float, ...]:
    """Fitness as a tuple of floats, NaN as -inf, so that candidates always sort."""
    values = score if isinstance(score, tuple) else (score,)
    return tuple(-math.inf if math.isnan(float(v)) else float(v) for v in values)


def _primary(score: Score) -> float:
    return _sort_key(score)[0]


def cem_search(
    fitness: Callable[[torch.Tensor], Score],
    dim: int,
    config: CEMConfig,
    *,
    init_mean: torch.Tensor | None = None,
    on_candidate: Callable[[int, int], None] | None = None,
    on_generation: Callable[[GenerationStats], None] | None = None,
) -> CEMResult:
    """Maximise ``fitness(alpha)`` over alpha in [lower, upper]^dim with the cross-entropy method.

    Each generation samples ``population`` candidates from N(mean, std^2) (clamped),
    scores them, and refits mean and std (floored at ``min_std``) to the
    ``num_elite`` best. The best candidate so far always competes for the elite
    (with its stored fitness, or re-scored when ``reevaluate_best``), so the best
    fitness never gets worse. ``on_candidate(generation, index)`` is called after each
    evaluation, ``on_generation(stats)`` after each generation. Deterministic for a
    given ``seed`` and deterministic fitness.
    """
    if dim < 1:
        raise ValueError("dim must be at least 1")
    generator = torch.Generator().manual_seed(config.seed)
    start = config.init_mean if config.init_mean is not None else 1.0 / dim
    mean = (
        init_mean.to(torch.float64).clone()
        if init_mean is not None
        else torch.full((dim,), float(start), dtype=torch.float64)
    )
    std = torch.full((dim,), float(config.init_std), dtype=torch.float64)
    best_alpha: torch.Tensor | None = None
    best_score: Score | None = None
    history: list[GenerationStats] = []
    evaluations = 0
    for generation in range(1, config.generations + 1):
        noise = torch.randn((config.population, dim), generator=generator, dtype=torch.float64)
        samples = (mean + std * noise).clamp(config.lower, config.upper)
        if best_alpha is not None and config.reevaluate_best:
            samples[0] = best_alpha
        scores: list[Score] = []
        for index, alpha in enumerate(samples):
            scores.append(fitness(alpha.clone()))
            evaluations += 1
            if on_candidate is not None:
                on_candidate(generation, index)
        candidates = list(zip(samples, scores))
        generation_best = max(scores, key=_sort_key)
        if best_alpha is not None and best_score is not None and not config.reevaluate_best:
            candidates.append((best_alpha, best_score))
        # Stable sort: among equal fitness the earlier candidate wins (the previous best is last).
        ranked = sorted(candidates, key=lambda c: _sort_key(c[1]), reverse=True)
        elite = torch.stack([alpha for alpha, _ in ranked[: config.num_elite]])
        mean = elite.mean(dim=0)
        std = elite.std(dim=0, unbiased=False).clamp_min(config.min_std)
        if best_score is None or _sort_key(ranked[0][1]) > _sort_key(best_score) or config.reevaluate_best:
            best_alpha, best_score = ranked[0][0].clone(), ranked[0][1]
        stats = GenerationStats(
            generation=generation,
            best=generation_best,
            mean=sum(_primary(s) for s in scores) / len(scores),
            best_so_far=best_score,
            spread=float(std.mean()),
            evaluations=evaluations,
        )
        history.append(stats)
        if on_generation is not None:
            on_generation(stats)
    assert best_alpha is not None and best_score is not None
    return CEMResult(best_alpha=best_alpha, best_fitness=best_score, history=history, evaluations=evaluations)


# --------------------------------------------------------------------------- few-shot fitness


class FewShotScore(NamedTuple):
    """Fitness of one z on the few-shot items: accuracy first, mean log-likelihood breaks ties."""

    accuracy: float
    loglik: float  # mean over items of the mean per-token log-prob of the gold answer


def gold_texts(task: Task, items: Sequence[TaskItem]) -> list[str]:
    """Each item's gold answer written as a completion (the task's reference, else the raw answer)."""
    texts = []
    for item in items:
        try:
            text = task.reference_completion(item)
        except T2Error:
            text = None
        texts.append(text if text else item.answer)
    return texts


@torch.no_grad()
def fewshot_fitness(
    adaptable: Adaptable,
    task: Task,
    items: Sequence[TaskItem],
    z: dict[str, torch.Tensor] | None,
    *,
    max_new_tokens: int,
    batch_size: int = 16,
) -> tuple[FewShotScore, list[bool]]:
    """Greedy accuracy of ``z`` (None: base weights) on ``items`` and the gold answers' log-likelihood.

    Generation and scoring of the gold answers run under one ``svf.adapted`` block:
    z is composed once, and the base weights are back when this returns or raises. Items with
    images (a vision-language model) are generated and scored with their pictures.
    """
    tokenizer = prepare_tokenizer(adaptable.tokenizer)
    prompts = item_prompts(adaptable, task, items)  # texts, or the processor's prompts with their pictures
    shown = [p for p in prompts if isinstance(p, ImagePrompt)] or None  # item_prompts gives all of one kind
    golds = gold_texts(task, items)
    with adaptable.svf.adapted(z):
        gens = generate(
            adaptable.model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size
        )
        prompt_ids = (
            [p.ids for p in shown] if shown is not None else tokenizer(prompts, add_special_tokens=False)["input_ids"]
        )
        gold_ids = tokenizer(golds, add_special_tokens=False)["input_ids"]
        per_item: list[float] = []
        for start in range(0, len(items), batch_size):
            rows = slice(start, start + batch_size)
            logprobs, mask, _ = completion_logprobs(
                adaptable.model,
                prompt_ids[rows],
                gold_ids[rows],
                pad_id=tokenizer.pad_token_id,
                device=adaptable.device,
                image_prompts=shown[rows] if shown is not None else None,
            )
            per_item += (logprobs.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).tolist()
    correct = task.correct(items, gens.texts)
    loglik = sum(per_item) / len(per_item)
    return FewShotScore(sum(correct) / len(correct), loglik if math.isfinite(loglik) else -math.inf), correct


# --------------------------------------------------------------------------- choosing experts and shots


def default_experts(registry: Registry, fingerprint: str) -> list[str]:
    """Every non-mixture expert of the base model with this fingerprint, oldest first.

    Experts that adapt different matrix sets cannot be mixed: if there are several
    sets, a MixingError lists them.
    """
    by_set: dict[tuple[str, ...], list[str]] = {}
    for row in expert_rows.of_fingerprint(registry, fingerprint):
        if row.kind != "mixture":
            by_set.setdefault(row.matrices, []).append(row.name)
    if len(by_set) > 1:
        listing = "; ".join(", ".join(names) for names in by_set.values())
        raise MixingError(
            f"this model's experts adapt different matrix sets ({listing})",
            "choose experts of one set with --experts A,B",
        )
    return next(iter(by_set.values()), [])


def resolve_experts(
    registry: Registry, names: Sequence[str] | None, model: str | None
) -> tuple[list[LoadedExpert], str | None]:
    """The experts to mix (named, or every non-mixture expert of ``model``) and the model to load.

    Named experts bring their own base model when ``model`` is None. The experts are
    checked for mixability here, before any model is loaded.
    """
    if names is not None:
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise UsageError("--experts names no expert", "e.g. --experts math-v1,code-v1")
        loaded = [load_expert(registry, n) for n in names]
        model = base_model_argument(loaded[0].config, model)
    else:
        identity = model_identity(resolve_model(model), HashCache(registry.home / "cache" / "file-hashes.json"))
        names = default_experts(registry, identity.fingerprint)
        if len(names) < 2:
            raise UsageError(
                f"{identity.ref.name} has {len(names)} expert{'' if len(names) == 1 else 's'} to mix; CEM needs two or more",
                "train experts with `t2 train --task ...` or name them with --experts A,B",
            )
        loaded = [load_expert(registry, n) for n in names]
    check_compatible(loaded)
    return loaded, model


@dataclass
class ShotPlan:
    """Which items to adapt on and which task the mixture is for."""

    task: Task  # gives the system prompt, the generation budget and the category
    label: str  # the task name the mixture is registered under
    items: list[TaskItem]
    source: str  # recorded in the mixture's config
    eval_task: str  # what to pass to `t2 eval --task` afterwards


def resolve_shots(task: str | None, fewshot: str | None, shots: int | None, seed: int) -> ShotPlan:
    """``--task T``: ``shots`` (default 10) items of T's train split. ``--fewshot FILE``: the file's items.

    With both, the file gives the items and T only names the task the mixture is for
    (a known task's system prompt is used; an unknown name is a new label).
    """
    if task is None and fewshot is None:
        raise UsageError("give --task TASK or --fewshot FILE.jsonl", "e.g. t2 adapt --task arc-challenge")
    if fewshot is None:
        if task is None:
            raise UsageError("give --task TASK or --fewshot FILE.jsonl", "e.g. t2 adapt --task arc-challenge")
        named = get_task(task)
        split = "train" if named.split("train") else "valid"
        return ShotPlan(named, named.name, select_shots(named, shots, seed), f"task {named.name} ({split} split)", task)
    file_task = load_task_file(Path(fewshot).expanduser())
    known = task if task is not None and task.strip().lower() in task_names() else None
    label = canonical_task_name(task) if task is not None else file_task.name
    return ShotPlan(
        get_task(known) if known is not None else file_task,
        label,
        select_shots(file_task, shots, seed, whole_file=True),
        f"file {fewshot}",
        known if known is not None else fewshot,
    )


def select_shots(task: Task, shots: int | None, seed: int, *, whole_file: bool = False) -> list[TaskItem]:
    """The few-shot items: ``shots`` drawn (seeded) from the train split (valid if train is empty).

    ``whole_file`` (a --fewshot file): every item of the file, or ``shots`` of them drawn.
    Test items are never used for a named task.
    """
    if whole_file:
        pool = task.split("train") + task.split("valid") + task.split("test")
    else:
        pool = task.split("train") or task.split("valid")
    if not pool:
        raise T2Error(f"task {task.name} has no train or valid items to adapt on", "pass --fewshot FILE.jsonl")
    if shots is not None and shots < 1:
        raise UsageError(f"--shots must be at least 1 (got {shots})")
    if shots is None:
        shots = len(pool) if whole_file else 10
    if shots >= len(pool):
        return list(pool)
    return random.Random(f"t2-adapt:{task.name}:{seed}").sample(pool, shots)


# --------------------------------------------------------------------------- the engine


@dataclass
class AdaptConfig:
    """Settings of one `t2 adapt` run (recorded in the mixture's config)."""

    name: str
    task: str  # the task the mixture is registered for
    method: str = "linear"
    per_matrix: bool = False  # one weight per expert per matrix role (attn.q ... mlp.down) instead of per expert
    cem: CEMConfig = field(default_factory=CEMConfig)
    max_new_tokens: int | None = None  # None: the task's budget
    batch_size: int = 16
    baselines: bool = True  # also score the base weights and each expert alone (K + 1 evaluations)
    source: str = ""  # where the shots came from, e.g. "task gsm8k (train split)" or a file path
    init: str = "uniform"  # CEM's starting mean: "uniform" (1/K, the paper) or "router" (t2cli.adapt.start)
    router: str | None = None  # init "router": the router's name (None: the latest of the base model)

    def __post_init__(self) -> None:
        get_mixing_method(self.method)
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        check_init(self.init, self.router)
        if self.init == "router" and self.cem.init_mean is not None:
            raise UsageError("a starting mean of its own (CEMConfig.init_mean) and --init router exclude each other")


@dataclass
class AdaptResult:
    name: str
    task: str
    experts: list[str]
    groups: list[str] | None  # role groups when per_matrix
    alphas: list[Any]  # K weights, or G lists of K weights
    fitness: FewShotScore
    base_fitness: FewShotScore | None
    expert_fitness: dict[str, FewShotScore]
    history: list[GenerationStats]
    shots: list[str]
    evaluations: int
    seconds: float
    init: dict[str, Any] = field(default_factory=dict)  # StartingMean.to_json(): where CEM started


@dataclass
class MixtureSearch:
    """What one CEM search found, before anything is registered (``search_mixture``)."""

    groups: list[str] | None  # role groups when per_matrix
    alpha: torch.Tensor  # (K,) or (G, K), float64
    z: dict[str, torch.Tensor]  # the best mixture's z, float32 on the CPU
    fitness: FewShotScore
    start: StartingMean
    start_fitness: FewShotScore | None  # the starting mean's own fitness, when asked for
    base_fitness: FewShotScore | None
    expert_fitness: dict[str, FewShotScore]
    history: list[GenerationStats]
    evaluations: int
    max_new_tokens: int


def search_mixture(
    registry: Registry,
    adaptable: Adaptable,
    task: Task,
    items: Sequence[TaskItem],
    experts: Sequence[LoadedExpert],
    config: AdaptConfig,
    *,
    score_start: bool = False,
    on_candidate: Callable[[int, int], None] | None = None,
    on_generation: Callable[[GenerationStats], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> MixtureSearch:
    """Search mixing weights for ``experts`` on ``items`` with CEM from ``config.init``'s start; registers nothing.

    ``score_start``: also score the starting mean itself (one evaluation more). The
    model's base weights are restored after every fitness evaluation and when this
    returns or raises.
    """
    say = on_message or (lambda message: None)
    if not items:
        raise T2Error("no few-shot items to adapt on", "pass --shots N or a --fewshot file with items")
    check_compatible(experts)
    for expert in experts:
        check_base_model(expert.name, expert.config.base_model, adaptable.identity)
    adaptable.svf.check_z(experts[0].z)
    names = [e.name for e in experts]
    if config.init == "router":
        start = router_start(registry, adaptable, config.router, items, names)
        shares = ", ".join(f"{n} {w:.3f}" for n, w in zip(names, start.weights))
        say(f"router {start.router} start (mean over {len(items)} shots): {shares}, base {start.base_share:.3f}")
    else:
        start = uniform_start(names, config.cem.init_mean)
    max_new = config.max_new_tokens or task.max_new_tokens
    device = next(iter(adaptable.svf.factors.values())).S.device
    stacks = {name: stack.to(device) for name, stack in stack_experts([e.z for e in experts]).items()}
    k = len(experts)
    groups: list[str] | None = None
    group_of: dict[str, int] | None = None
    if config.per_matrix:
        groups, group_of = role_groups(sorted(stacks), adaptable.identity.model_type, adaptable.identity.num_layers)
    shape = (k,) if groups is None else (len(groups), k)
    init = start_tensor(start, None if groups is None else len(groups))

    def mixed(alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        return mix_stacked(stacks, alpha.reshape(shape), config.method, groups=group_of)

    def score(z: dict[str, torch.Tensor] | None) -> FewShotScore:
        return fewshot_fitness(adaptable, task, items, z, max_new_tokens=max_new, batch_size=config.batch_size)[0]

    try:
        base_fitness, expert_fitness, start_fitness = None, {}, None
        if config.baselines:
            base_fitness = score(None)
            say(f"base weights: few-shot accuracy {base_fitness.accuracy:.1%} (log-lik {base_fitness.loglik:.3f})")
            for expert in experts:
                expert_fitness[expert.name] = score({n: v.to(device) for n, v in expert.z.items()})
                say(f"{expert.name} alone: few-shot accuracy {expert_fitness[expert.name].accuracy:.1%}")
        if score_start:
            start_fitness = score(mixed(init))
            say(f"{start.init} start: few-shot accuracy {start_fitness.accuracy:.1%}")
        result = cem_search(
            lambda alpha: score(mixed(alpha)),
            math.prod(shape),
            config.cem,
            init_mean=init,
            on_candidate=on_candidate,
            on_generation=on_generation,
        )
    finally:
        adaptable.svf.restore()

    z = {name: vector.detach().to("cpu", torch.float32) for name, vector in mixed(result.best_alpha).items()}
    if not isinstance(result.best_fitness, tuple):  # score() returns a FewShotScore
        raise TypeError(f"CEM fitness {result.best_fitness!r} is not an (accuracy, log-likelihood) pair")
    return MixtureSearch(
        groups=groups,
        alpha=result.best_alpha.reshape(shape),
        z=z,
        fitness=FewShotScore(*result.best_fitness),
        start=start,
        start_fitness=start_fitness,
        base_fitness=base_fitness,
        expert_fitness=expert_fitness,
        history=result.history,
        evaluations=result.evaluations,
        max_new_tokens=max_new,
    )


def adapt(
    registry: Registry,
    adaptable: Adaptable,
    task: Task,
    items: Sequence[TaskItem],
    experts: Sequence[LoadedExpert],
    config: AdaptConfig,
    *,
    on_candidate: Callable[[int, int], None] | None = None,
    on_generation: Callable[[GenerationStats], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> AdaptResult:
    """Search mixing weights for ``experts`` on ``items`` with CEM and register the best mixture.

    Nothing is written before the search has finished; the model's base weights are
    restored after every fitness evaluation and when this returns or raises.
    """
    started = time.perf_counter()
    check_name_free(registry, config.name)
    search = search_mixture(
        registry,
        adaptable,
        task,
        items,
        experts,
        config,
        on_candidate=on_candidate,
        on_generation=on_generation,
        on_message=on_message,
    )
    alpha, groups, fitness, base_fitness = search.alpha, search.groups, search.fitness, search.base_fitness
    shot_ids = [item.id for item in items]
    alphas_shown = ", ".join(
        f"{e.name} {float(a):.3f}" for e, a in zip(experts, alpha if groups is None else alpha.mean(0))
    )
    started_from = "" if search.start.init == "uniform" else f", started from router {search.start.router}"
    expert_config = mixture_config(
        config.name,
        experts,
        alpha,
        config.method,
        adaptation=ADAPTATION,
        groups=groups,
        base_model=adaptable.base_model_record(),
        task=config.task,
        category=task.category or None,
        description=f"CEM mixture for {config.task} ({alphas_shown}{started_from}); few-shot accuracy "
        f"{fitness.accuracy:.1%} on {len(items)} items",
        metrics={
            "fewshot_accuracy": fitness.accuracy,
            "fewshot_loglik": fitness.loglik,
            "fewshot_n": len(items),
            **(
                {"base_fewshot_accuracy": base_fitness.accuracy, "base_fewshot_loglik": base_fitness.loglik}
                if base_fitness
                else {}
            ),
            **{f"expert_fewshot_accuracy/{n}": f.accuracy for n, f in search.expert_fitness.items()},
        },
        training={
            "adaptation": ADAPTATION,
            "cem": asdict(config.cem),
            "num_elite": config.cem.num_elite,
            "init": search.start.to_json(),
            "method": config.method,
            "per_matrix": config.per_matrix,
            "max_new_tokens": search.max_new_tokens,
            "shots": shot_ids,
            "source": config.source,
            "evaluations": search.evaluations,
            "fitness": "greedy accuracy on the shots, ties broken by mean per-token log-likelihood of the gold answers",
            "history": [_stats_json(s) for s in search.history],
        },
    )
    register_expert(
        registry,
        search.z,
        expert_config,
        base_model_id=adaptable.base_model_id,
        decomposition_id=adaptable.decomposition_id,
    )
    return AdaptResult(
        name=config.name,
        task=config.task,
        experts=[e.name for e in experts],
        groups=groups,
        alphas=expert_config.parametrization["mixture"]["alphas"],
        fitness=fitness,
        base_fitness=base_fitness,
        expert_fitness=search.expert_fitness,
        history=search.history,
        shots=shot_ids,
        evaluations=search.evaluations,
        seconds=time.perf_counter() - started,
        init=search.start.to_json(),
    )


def _stats_json(stats: GenerationStats) -> dict[str, Any]:
    def plain(score: Score) -> Any:
        return list(score) if isinstance(score, tuple) else score

    return {
        "generation": stats.generation,
        "best": plain(stats.best),
        "mean": stats.mean,
        "best_so_far": plain(stats.best_so_far),
        "spread": stats.spread,
        "evaluations": stats.evaluations,
    }


# --------------------------------------------------------------------------- reuse


def canonical_task_name(task: str) -> str:
    """The name a mixture is registered under: a task's canonical name (aliases resolved) or a file's stem."""
    if task.strip().lower() in task_names():
        return get_task(task).name
    if task.lower().endswith(".jsonl"):
        return Path(task).stem
    return task


def latest_cem_mixture(registry: Registry, task_name: str, base_model_id: int) -> str | None:
    """The newest expert of ``base_model_id`` with kind "mixture", task ``task_name`` and adaptation "cem".

    ``task_name`` may be an alias ("math") or a .jsonl path; it is resolved the way
    ``t2 adapt`` records it. None when there is no such expert.
    """
    for row in expert_rows.mixtures_for_task(registry, base_model_id, canonical_task_name(task_name)):
        try:
            parametrization = json.loads(row.config_json).get("parametrization") or {}
        except (json.JSONDecodeError, AttributeError):
            continue
        if parametrization.get("adaptation") == ADAPTATION:
            return row.name
    return None
