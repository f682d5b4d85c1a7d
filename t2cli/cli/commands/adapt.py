"""``t2 adapt``: few-shot mixing weights for a task found with CEM, registered as a mixture expert."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from t2cli.cli.console import err, out, print_json, progress_bar
from t2cli.cli.options import BatchSizeOpt, DeviceOpt, JsonOpt, MaxNewTokensOpt, ModelOpt, name_option


def _fmt(score) -> str:
    if isinstance(score, tuple):
        return f"{score[0]:.1%} ({score[1]:.3f})"
    return f"{score:.4g}"


def adapt_cmd(
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            "-t",
            help="Task to adapt to (a name, alias or .jsonl file); shots come from its "
            "train split. With --fewshot: the task name the mixture is registered for.",
            show_default=False,
        ),
    ] = None,
    fewshot: Annotated[
        str | None,
        typer.Option(
            "--fewshot",
            help="A .jsonl file of labelled examples (task file format); all its items are "
            "the shots unless --shots is given.",
            show_default=False,
        ),
    ] = None,
    shots: Annotated[
        int | None,
        typer.Option(help="Number of few-shot items (default: 10 from --task, all of --fewshot).", show_default=False),
    ] = None,
    experts: Annotated[
        str | None,
        typer.Option(
            "--experts",
            "-e",
            help="Comma-separated experts to mix (default: every non-mixture expert of the model).",
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = None,
    name: Annotated[str | None, name_option("Name of the mixture (default: TASK-cem, -2, ...).")] = None,
    population: Annotated[int, typer.Option(help="Candidates per generation (paper: 32).")] = 8,
    elite_ratio: Annotated[
        float, typer.Option(help="Fraction of candidates the distribution is refitted to (paper: 0.2).")
    ] = 0.25,
    generations: Annotated[int, typer.Option(help="CEM generations (paper: 50-100).")] = 5,
    init_std: Annotated[float, typer.Option(help="Initial std of every weight (paper: 0.5).")] = 0.5,
    min_std: Annotated[float, typer.Option(help="Floor on the std.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed for the search and the choice of shots.")] = 0,
    init: Annotated[
        str,
        typer.Option(
            "--init",
            help="CEM's starting mean: uniform (every expert 1/K, the paper) or router (the learned router's "
            "class probabilities averaged over the shots; other = base weights, so the weights sum to < 1).",
        ),
    ] = "uniform",
    router: Annotated[
        str | None,
        typer.Option(
            "--router",
            help="--init router: the router to use (default: the latest of the base model).",
            show_default=False,
        ),
    ] = None,
    per_matrix: Annotated[
        bool,
        typer.Option(
            "--per-matrix",
            help="One weight per expert per matrix role "
            "(attn.q ... mlp.down, shared by all layers) instead of per expert.",
        ),
    ] = False,
    method: Annotated[str, typer.Option(help="Mixing method: linear or task-arithmetic.")] = "linear",
    max_new_tokens: MaxNewTokensOpt = None,
    batch_size: BatchSizeOpt = 16,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Find mixing weights for experts on a few labelled examples (cross-entropy method).

    Fitness is greedy accuracy on the shots with the mixed z, ties broken by the mean
    log-likelihood of the gold answers. The best mixture is registered as an expert of
    kind "mixture" for the task (reused by `t2 ask --strategy cem --task TASK`).

    Examples:

      t2 adapt --task arc-challenge --experts math-v1,code-v1,reasoning-v1

      t2 adapt --fewshot my_examples.jsonl --task support-tickets --generations 10

      t2 adapt --task arc-challenge --init router --method task-arithmetic

      t2 adapt --task humaneval --model llama3-8b --device cuda --population 32 --elite-ratio 0.2 --generations 50
    """
    from t2cli.adapt.cem import AdaptConfig, CEMConfig, adapt, resolve_experts, resolve_shots  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.adapt.start import check_init, usable_router  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.experts.mixing import check_name_free, free_name  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.svf.adaptable import load_adaptable  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.tasks.modality import check_model_fits_task  # noqa: PLC0415 - CLI start-up: pulls transformers' config classes

    cem = CEMConfig(
        population=population,
        elite_ratio=elite_ratio,
        generations=generations,
        init_std=init_std,
        min_std=min_std,
        seed=seed,
    )
    check_init(init, router)
    plan = resolve_shots(task, fewshot, shots, seed)
    with open_registry() as registry:
        loaded, model = resolve_experts(registry, experts.split(",") if experts is not None else None, model)
        check_model_fits_task(plan.task, model, loaded[0].config.targets)  # shots with pictures need a VLM
        names = [e.name for e in loaded]
        if name is not None:
            check_name_free(registry, name)
        if init == "router":  # refuse a missing, stale or foreign router before the model is loaded
            usable_router(registry, router, loaded[0].base_model_id, model or "the embedded model", names)
        config = AdaptConfig(
            name=name or free_name(registry, f"{plan.label}-cem"),
            task=plan.label,
            method=method,
            per_matrix=per_matrix,
            cem=cem,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            source=plan.source,
            init=init,
            router=router,
        )
        if not as_json:
            err.print(f"loading {model or 'the embedded model'} and its decomposition...")
        adaptable = load_adaptable(registry, model, targets=loaded[0].config.targets, device=device)
        if not as_json:
            err.print(
                f"adapting to {plan.label}: {len(plan.items)} shots, experts {', '.join(names)}, "
                f"{cem.population} x {cem.generations} candidates + {len(names) + 1} baselines, {init} start"
            )
        progress = progress_bar(
            TextColumn("CEM generation {task.fields[generation]}/" + str(cem.generations)),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            quiet=as_json,
        )
        bar = progress.add_task("cem", total=cem.population, generation=1, best="-")

        def on_candidate(generation: int, index: int) -> None:
            progress.update(bar, completed=index + 1, generation=generation)

        def on_generation(stats) -> None:
            if not err.is_terminal and not as_json:
                err.print(
                    f"generation {stats.generation}/{cem.generations}: best {_fmt(stats.best)} "
                    f"mean {stats.mean:.1%} best so far {_fmt(stats.best_so_far)}"
                )
            if stats.generation < cem.generations:  # reset() replaces every field: pass them all
                progress.reset(bar, total=cem.population, generation=stats.generation + 1, best=_fmt(stats.best_so_far))
            else:
                progress.update(bar, best=_fmt(stats.best_so_far))

        with progress:
            result = adapt(
                registry,
                adaptable,
                plan.task,
                plan.items,
                loaded,
                config,
                on_candidate=on_candidate,
                on_generation=on_generation,
                on_message=None if as_json else progress.console.print,
            )
    if as_json:
        print_json(asdict(result))
        return
    table = Table(title=f"CEM on {len(result.shots)} shots of {result.task} (accuracy, mean gold log-likelihood)")
    for column in ("generation", "best", "mean accuracy", "best so far", "spread"):
        table.add_column(column, justify="right")
    for stats in result.history:
        table.add_row(
            str(stats.generation), _fmt(stats.best), f"{stats.mean:.1%}", _fmt(stats.best_so_far), f"{stats.spread:.3f}"
        )
    out.print(table)
    start = ", ".join(f"{e} {w:.3f}" for e, w in zip(result.init["experts"], result.init["mean"]))
    origin = f"router {result.init['router']}" if result.init["init"] == "router" else "uniform"
    out.print(f"CEM started from the {origin} mean: {start} (base weights {result.init['base_share']:.3f})")
    if result.base_fitness is not None:
        singles = ", ".join(f"{n} {f.accuracy:.1%}" for n, f in result.expert_fitness.items())
        out.print(
            f"few-shot accuracy: base {result.base_fitness.accuracy:.1%}; alone: {singles}; "
            f"mixture {result.fitness.accuracy:.1%} (on the shots it was fitted to: not a held-out score)"
        )
    if result.groups is None:
        weights = ", ".join(f"{e} {a:.3f}" for e, a in zip(result.experts, result.alphas))
    else:
        weights = "; ".join(
            f"{g}: " + ", ".join(f"{a:.2f}" for a in row) for g, row in zip(result.groups, result.alphas)
        )
        weights = f"({', '.join(result.experts)}) {weights}"
    out.print(
        f"expert [bold]{result.name}[/] registered (mixture for {result.task}): {weights}; "
        f"{result.evaluations} evaluations, {result.seconds:.0f} s"
    )
    out.print(f"next: t2 eval --task {plan.eval_task} --expert {result.name}   ·   t2 experts show {result.name}")


def register(app: typer.Typer) -> None:
    app.command("adapt")(adapt_cmd)
