"""``t2 train``: train an SVF expert with RL on a task."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from t2cli.cli.console import err, out, progress_bar
from t2cli.cli.options import (
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MaxNewTokensOpt,
    ModelOpt,
    TaskOpt,
    deprecated_alias,
    name_option,
)
from t2cli.errors import T2Error

if TYPE_CHECKING:
    from t2cli.svf.adaptable import Adaptable
    from t2cli.svf.model import SVFModel
    from t2cli.svf.sharded import ShardedSVF


def train_cmd(
    task: TaskOpt,
    model: ModelOpt = None,
    name: Annotated[str | None, name_option("Expert name (default: TASK-svf).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 40,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the latest interrupted run of this --name.")
    ] = False,
    targets: Annotated[str, typer.Option(help="Adapted matrices: attn, mlp, all or a regex.")] = "all",
    prompts_per_step: Annotated[int, typer.Option(help="Training prompts per step.")] = 16,
    samples_per_prompt: Annotated[int, typer.Option(help="Rollouts per prompt (the group of the baseline).")] = 4,
    temperature: Annotated[float, typer.Option(help="Rollout sampling temperature.")] = 1.0,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (cosine decay).")] = 3e-3,
    kl_coef: Annotated[float, typer.Option(help="KL penalty to the base model (0 = off).")] = 0.0,
    advantage: Annotated[str, typer.Option(help="group, group-norm or raw.")] = "group",
    clip_norm: Annotated[float, typer.Option(help="Gradient clipping norm.")] = 1.0,
    eval_every: Annotated[int, typer.Option(help="Validate every K steps.")] = 4,
    valid_size: Annotated[int, typer.Option(help="Validation items.")] = 100,
    max_new_tokens: MaxNewTokensOpt = None,
    micro_batch: Annotated[int, typer.Option(help="Sequences per forward/backward of the loss (bounds memory).")] = 16,
    batch_size: BatchSizeOpt = 64,
    seed: Annotated[int, typer.Option(help="Seed for prompt order and sampling.")] = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    shard: Annotated[
        str,
        typer.Option(
            help="none: every process holds the whole model (data parallel); fsdp: FSDP2 shards the base weights and "
            "factors over the processes (models that do not fit one GPU; needs torchrun/accelerate).",
        ),
    ] = "none",
    fsdp_gather_rollouts: Annotated[
        bool,
        typer.Option(
            "--fsdp-gather-rollouts",
            help="With --shard fsdp: gather the whole live model once for the rollouts instead "
            "of every layer per generated token (faster; needs the unsharded model's memory on each GPU meanwhile).",
        ),
    ] = False,
    rollout: Annotated[
        str,
        typer.Option(
            help="hf: generate rollouts with transformers; vllm: with a vLLM engine on the same GPU, W'(z) pushed into it "
            "after every update (pip install 't2cli[vllm]', CUDA only).",
        ),
    ] = "hf",
    vllm_memory: Annotated[
        float, typer.Option(help="GPU memory fraction the vLLM engine may take (--rollout vllm).")
    ] = 0.3,
    as_json: JsonOpt = False,
    old_gen_batch: Annotated[
        int | None, typer.Option("--gen-batch", hidden=True, help="Deprecated spelling of --batch-size.")
    ] = None,
) -> None:
    """Train an SVF expert (one z vector per matrix) with REINFORCE on TASK's reward.

    The best-on-validation z is registered as the expert; every step is checkpointed,
    so `--resume` continues an interrupted run (with any number of processes).

    Runs unchanged under `torchrun` and `accelerate launch`: the prompts of each step are
    split over the processes, gradients are summed, rank 0 writes; each process takes
    cuda:LOCAL_RANK for --device auto/cuda. With --shard fsdp the model itself is split over
    the processes too (docs/scaling.md).

    Examples:

      t2 train --task addition --name add-v1          # 2 CPU cores, ~35 min on the embedded model

      t2 train --task math --model llama3-8b --device cuda --steps 200 --prompts-per-step 64

      t2 train --task ./my_task.jsonl --name mine --resume

      t2 train --task dispatch       # the classifier of `t2 ask --strategy classifier`

      torchrun --standalone --nproc-per-node 8 -m t2cli train --task math --model llama3-8b --prompts-per-step 64

      torchrun --standalone --nproc-per-node 8 -m t2cli train --task math --model llama3-70b --shard fsdp --targets mlp
    """
    from t2cli.runtime.distributed import init_distributed, open_registry_ranked, resolve_dtype  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.svf.adaptable import load_adaptable  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.svf.names import check_expert_name  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (<1 ms)
    from t2cli.svf.sharded import check_sharding, load_sharded_adaptable  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.tasks import get_task, needs_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)
    from t2cli.tasks.modality import check_model_fits_task  # noqa: PLC0415 - CLI start-up: pulls transformers' config classes
    from t2cli.train.loop import TrainConfig, find_resumable_run, train  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.train.rollout_vllm import check_vllm_backend, check_vllm_targets  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)

    if old_gen_batch is not None:
        deprecated_alias("--gen-batch", "--batch-size")
        batch_size = old_gen_batch
    task_obj = None if needs_registry(task) else get_task(task)  # `dispatch` is built once the model is loaded
    if task_obj is not None:  # images reach the model through every rollout (hf or vllm), replicated or FSDP
        check_model_fits_task(task_obj, model, targets)  # from the config: before the registry opens
    if rollout == "vllm":  # vLLM takes W' of the language model only (images reach it as for --rollout hf)
        check_vllm_targets(model, targets)
    name = check_expert_name(name or f"{task_obj.name if task_obj else task.strip().lower()}-svf")
    config = TrainConfig(
        task=task,
        name=name,
        model=model,
        targets=targets,
        steps=steps,
        prompts_per_step=prompts_per_step,
        samples_per_prompt=samples_per_prompt,
        temperature=temperature,
        lr=lr,
        kl_coef=kl_coef,
        advantage=advantage,
        clip_norm=clip_norm,
        eval_every=eval_every,
        valid_size=valid_size,
        max_new_tokens=max_new_tokens,
        micro_batch=micro_batch,
        gen_batch=batch_size,
        seed=seed,
        device=device,
        dtype=dtype,
        shard=shard,
        fsdp_gather_rollouts=fsdp_gather_rollouts,
        rollout=rollout,
        vllm_memory=vllm_memory,
    )
    with init_distributed(device) as dist, open_registry_ranked(dist) as registry:
        check_sharding(shard, dist)
        if rollout == "vllm":
            check_vllm_backend(dist.device)
        run = None
        if resume:
            run = dist.on_main(lambda: find_resumable_run(registry, name))
            if run is None:
                raise T2Error(f"no interrupted run trains {name!r}", "start one without --resume")
        if dist.is_main:
            err.print(f"loading {model or 'the embedded model'} and its decomposition...")
        base_dtype = resolve_dtype(dtype, dist.device)
        adaptable: Adaptable[SVFModel] | Adaptable[ShardedSVF]
        if shard == "fsdp":
            adaptable = load_sharded_adaptable(registry, model, targets=targets, dtype=base_dtype, dist=dist)
        else:
            adaptable = load_adaptable(
                registry, model, targets=targets, device=dist.device, dtype=base_dtype, dist=dist
            )
        if task_obj is None:
            task_obj = get_task(task, registry=registry, base_model_id=adaptable.base_model_id)
        progress = progress_bar(
            TextColumn("training {task.fields[expert]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("reward {task.fields[reward]} · valid {task.fields[valid]} · {task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            quiet=as_json or not dist.is_main,
        )
        bar = progress.add_task("train", total=config.steps, expert=name, reward="-", valid="-", tps="-")
        valid_seen = {"last": "-"}

        def on_event(message, metrics) -> None:
            if metrics is None:
                err.print(message, markup=False) if as_json else progress.console.print(message, markup=False)
                return
            if as_json:  # JSON lines: one object per step, then the result
                typer.echo(json.dumps({"event": "step", **asdict(metrics)}))
            if metrics.valid_accuracy is not None:
                valid_seen["last"] = f"{metrics.valid_accuracy:.1%}"
            if not err.is_terminal and not as_json:  # logs and pipes get one line per step instead of a bar
                err.print(
                    f"step {metrics.step}/{config.steps}: reward {metrics.reward:+.3f} rollout accuracy "
                    f"{metrics.accuracy:.1%} valid {valid_seen['last']} loss {metrics.loss:.3f} "
                    f"grad {metrics.grad_norm:.3f} lr {metrics.lr:.2e} {metrics.tokens_per_s:.0f} tok/s {metrics.seconds:.0f} s"
                )
            progress.update(
                bar,
                completed=metrics.step,
                reward=f"{metrics.reward:+.2f}",
                valid=valid_seen["last"],
                tps=f"{metrics.tokens_per_s:.0f}",
            )

        with progress:
            result = train(
                registry,
                adaptable,
                task_obj,
                config,
                resume_run=run,
                on_event=on_event if dist.is_main else None,
                dist=dist,
            )
    if not dist.is_main:  # rank 0 reports for the job
        return
    if as_json:
        typer.echo(json.dumps({"event": "result", **asdict(result)}))
        return
    out.print(
        f"expert [bold]{result.expert}[/] registered from {result.run_id}: validation accuracy "
        f"{result.base_valid_accuracy:.1%} (base) -> {result.best_valid_accuracy:.1%} (step {result.best_step}), "
        f"{result.seconds / 60:.1f} min"
    )
    out.print(
        f"next: t2 eval --task {task} --expert {result.expert}   ·   t2 runs show {result.run_id} --plot curve.png"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
