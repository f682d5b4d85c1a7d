"""``t2 train``: an SVF expert trained with REINFORCE on a task's own reward.

Read top to bottom: one config, one loop with numbered steps, evaluation outside
the loop, a checkpoint after every step (z, best z, optimizer moments, step, RNG
state and config in one safetensors file, no pickle), and the run's metrics in the
registry. Only z is trainable; rollouts use the adapted weights without gradients,
the loss re-scores them through W'(z) (docs/method.md §2).

Under ``torchrun`` / ``accelerate launch`` (``dist``, see t2cli/runtime/distributed.py) the
same loop runs on every rank: all ranks draw the same global batch of prompts, each
rolls out, scores and backpropagates its contiguous share of whole prompt groups
(the loss still divided by the global sample count), and the z gradients are summed
over ranks before clipping and the optimizer step, so every rank holds the same z.
Rollouts sample from one random stream per (seed, step, prompt, sample), so the data
do not depend on the number of processes. Rank 0 alone writes the run, metrics,
checkpoints and the expert.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from registry.queries import experts, runs
from t2cli.errors import T2Error, UsageError
from t2cli.eval.accuracy import item_prompts, run_items
from t2cli.models.targets import is_vision_language, select_targets
from t2cli.runtime.distributed import DTYPES, SINGLE, Dist
from t2cli.runtime.generation import completion_logprobs, generate, sample_key
from t2cli.runtime.multimodal import ImagePrompt
from t2cli.svf.adaptable import weights_folder
from t2cli.svf.expert import ExpertConfig, register_expert
from t2cli.svf.model import SVFModel
from t2cli.svf.sharded import SHARDINGS, ShardedSVF
from t2cli.tasks.types import SPLITS
from t2cli.train.rollout_vllm import VisionPrompt, VLLMRollout, vision_prompts, vllm_weight_name
from t2cli.train.run_lock import hold_run_lock

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.svf.adaptable import Adaptable
    from t2cli.svf.model import SVFLike
    from t2cli.tasks import Task
    from t2cli.tasks.types import TaskItem

ADVANTAGES = ("group", "group-norm", "raw")
ROLLOUTS = ("hf", "vllm")
CHECKPOINT_FILE = "checkpoint.safetensors"


class TrainingInterrupted(T2Error):
    """Ctrl-C during training: the last completed step is checkpointed."""

    exit_code = 130


@dataclass
class TrainConfig:
    """Every setting of a training run (stored with the run and the expert)."""

    task: str
    name: str
    model: str | None = None
    targets: str = "all"
    steps: int = 40  # optimizer steps
    prompts_per_step: int = 16  # distinct training prompts per step
    samples_per_prompt: int = 4  # rollouts per prompt (a group, for the group baseline)
    temperature: float = 1.0  # rollout sampling temperature
    lr: float = 3e-3  # AdamW peak learning rate, cosine-decayed to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # decays z towards 0, not 1: keep 0 unless you know why
    clip_norm: float = 1.0  # gradient clipping (global L2 norm over all z)
    kl_coef: float = 0.0  # KL(adapted || base) penalty per token; the paper tries 0-0.3
    advantage: str = "group"  # group: reward - group mean; group-norm: also / group std; raw: the +1/-1 reward
    max_new_tokens: int | None = None  # rollout/validation budget; None: the task's default
    eval_every: int = 4  # validation every K steps (and at step 0 and the last step)
    valid_size: int = 100  # validation items (greedy)
    micro_batch: int = 16  # sequences per forward/backward in the loss
    gen_batch: int = 64  # sequences per generate() call
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # base weights: auto = bfloat16 on CUDA, the checkpoint's own on CPU; z/factors stay float32
    shard: str = (
        "none"  # none: every rank holds the whole model (data parallel); fsdp: FSDP2 shards it (t2cli/svf/sharded.py)
    )
    fsdp_gather_rollouts: bool = False  # --shard fsdp: gather the live model once for the rollouts, not per token
    rollout: str = "hf"  # hf: transformers generate; vllm: a colocated vLLM engine, W' pushed each step (t2cli/train/rollout_vllm.py)
    vllm_memory: float = 0.3  # the GPU memory fraction the vLLM engine may take

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "prompts_per_step",
            "samples_per_prompt",
            "eval_every",
            "valid_size",
            "micro_batch",
            "gen_batch",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number (got {self.lr})")
        if self.temperature < 0 or self.kl_coef < 0 or self.clip_norm <= 0:
            raise UsageError("--temperature and --kl-coef must be >= 0, --clip-norm > 0")
        if self.advantage not in ADVANTAGES:
            raise UsageError(f"unknown --advantage {self.advantage!r}", f"use one of {', '.join(ADVANTAGES)}")
        if self.advantage != "raw" and self.samples_per_prompt < 2:
            raise UsageError("a group baseline needs --samples-per-prompt >= 2", "or use --advantage raw")
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown --dtype {self.dtype!r}", f"use one of {', '.join(DTYPES)}")
        if self.shard not in SHARDINGS:
            raise UsageError(f"unknown --shard {self.shard!r}", f"use one of {', '.join(SHARDINGS)}")
        if self.rollout not in ROLLOUTS:
            raise UsageError(f"unknown --rollout {self.rollout!r}", f"use one of {', '.join(ROLLOUTS)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if not 0 < self.vllm_memory <= 1:
            raise UsageError(f"--vllm-memory must be a fraction in (0, 1] (got {self.vllm_memory})")


LONG_BUDGET = 64  # tokens: above it, rollouts cut at the budget make steps slow (train warns)


@dataclass
class StepMetrics:
    """What one step measured (also the registry's run_metrics rows)."""

    step: int
    reward: float  # mean +1/-1 reward of the rollouts
    accuracy: float  # fraction of correct rollouts
    loss: float
    grad_norm: float
    lr: float
    tokens_per_s: float
    seconds: float
    kl: float = 0.0
    valid_accuracy: float | None = None
    at_budget: float = 0.0  # fraction of rollouts cut at the generation budget (max_new_tokens)


@dataclass
class TrainState:
    """Where a run stands; saved as JSON in every checkpoint (metadata ``state``) and read back to resume."""

    step: int = 0  # the last completed optimizer step (0: only the base weights were validated)
    best_valid: float = -1.0  # the best validation accuracy so far (the base model's to begin with)
    best_step: int = 0  # the step of best_valid; its z is the one registered
    base_valid: float | None = None  # validation accuracy of the base weights (None: not measured yet)
    history: list[StepMetrics] = field(default_factory=list)  # one entry per completed step

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        """Read a checkpoint's state; keys a newer t2 added are dropped with a warning."""
        data = json.loads(text)
        _warn_unknown("training state", data, cls)
        history = []
        for entry in data.get("history", []):
            _warn_unknown("step metrics", entry, StepMetrics)
            history.append(StepMetrics(**{k: v for k, v in entry.items() if k in StepMetrics.__dataclass_fields__}))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "history"}
        return cls(**known, history=history)


def _warn_unknown(what: str, data: dict[str, Any], cls: type) -> None:
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        warnings.warn(f"ignoring unknown {what} keys in a checkpoint: {', '.join(unknown)}", stacklevel=3)


@dataclass(frozen=True)
class Checkpoint:
    """What ``checkpoint.safetensors`` holds, read back: tensors (z, best z, Adam moments, torch RNG) and metadata."""

    tensors: dict[str, torch.Tensor]
    state: TrainState
    adam_steps: dict[str, float]  # matrix name -> AdamW step count
    schedule: dict[str, Any]  # the LR scheduler's own state_dict
    python_rng: tuple[Any, ...]  # random.Random.getstate() of the prompt sampler


@dataclass
class TrainResult:
    run_id: str
    expert: str
    best_step: int
    best_valid_accuracy: float
    base_valid_accuracy: float
    history: list[StepMetrics] = field(default_factory=list)
    seconds: float = 0.0


ProgressCallback = Callable[[str, StepMetrics | None], None]


# --------------------------------------------------------------------------- the loop


def train(
    registry: Registry,
    adaptable: Adaptable[SVFModel] | Adaptable[ShardedSVF],
    task: Task,
    config: TrainConfig,
    *,
    resume_run: str | None = None,
    on_event: ProgressCallback | None = None,
    dist: Dist | None = None,
) -> TrainResult:
    """Train z on ``task``; register the best-on-validation z as expert ``config.name``.

    ``dist``: this process's rank when launched by torchrun/accelerate (default: one
    process). Every rank calls ``train`` with the same arguments; rank 0 writes, and holds
    the run's lock (``t2cli.train.run_lock``) while it trains.
    """
    with ExitStack() as held:
        return _train(
            registry, adaptable, task, config, resume_run=resume_run, on_event=on_event, dist=dist or SINGLE, held=held
        )


def _train(
    registry: Registry,
    adaptable: Adaptable[SVFModel] | Adaptable[ShardedSVF],
    task: Task,
    config: TrainConfig,
    *,
    resume_run: str | None,
    on_event: ProgressCallback | None,
    dist: Dist,
    held: ExitStack,
) -> TrainResult:
    emit = on_event or (lambda message, metrics: None)
    svf = adaptable.svf
    sharded = isinstance(svf, ShardedSVF)  # FSDP: every forward is a collective, so generation and loss are synced
    sync = dist if sharded else None
    backend, pushed = _vllm_backend(registry, adaptable, task, config, dist) if config.rollout == "vllm" else (None, {})
    if isinstance(svf, ShardedSVF):
        svf.gather_in_adapted = config.fsdp_gather_rollouts  # validation generates like the rollouts
    max_new = config.max_new_tokens or task.max_new_tokens
    valid_items = task.split("valid")[: config.valid_size] or task.split("train")[: config.valid_size]

    if task.uses_images():
        adaptable.processor()  # a vision-language model without its processor files fails before the run is written
    # 0. state: fresh or from the checkpoint of an interrupted run (rank 0 reads it, every rank loads it)
    run_id, run_dir = dist.on_main(lambda: _start_run(registry, adaptable, config, resume_run, held))
    z = svf.trainable_z()
    optimizer = torch.optim.AdamW(list(z.values()), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(config))
    item_rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    state = TrainState()
    best_z = {name: v.detach().clone() for name, v in z.items()}
    checkpoint = dist.on_main(lambda: _read_checkpoint(run_dir))
    if checkpoint is not None:
        state, best_z = _restore_checkpoint(checkpoint, z, optimizer, schedule, item_rng)
        emit(f"resumed {run_id} at step {state.step}", None)
    if dist.enabled:
        layout = "FSDP-sharded model" if sharded else "data parallel"
        emit(
            f"{layout}: {dist.world_size} processes ({dist.backend}), "
            f"{config.prompts_per_step} prompts per step split over them",
            None,
        )
    history = state.history
    started = time.perf_counter()

    def validate(step: int) -> float:
        frozen = {name: v.detach() for name, v in z.items()}
        start, stop = dist.shard(len(valid_items))  # each rank scores its share; the counts are summed
        items = valid_items[start:stop]
        if backend is None:
            correct, _, _, _ = run_items(
                adaptable,
                task,
                items,
                frozen,
                batch_size=config.gen_batch,
                max_new_tokens=max_new,
                sync=sync,
            )
        else:
            if isinstance(svf, ShardedSVF):
                svf.refresh(frozen)
            _push_weights(backend, pushed, svf, None if isinstance(svf, ShardedSVF) else svf.composed(frozen))
            gens = backend.generate(_vllm_prompts(adaptable, task, items), max_new_tokens=max_new, temperature=0.0)
            correct = task.correct(items, gens.texts)
        (total,) = dist.sum([sum(correct)])
        return total / len(valid_items)

    try:
        if state.base_valid is None:
            state.base_valid = validate(0)  # z = 1: the base model's validation accuracy
            state.best_valid = state.base_valid
            if dist.is_main:
                _record_values(registry, run_id, 0, {"valid_accuracy": state.base_valid})
                _save_checkpoint(run_dir, config, state, z, best_z, optimizer, schedule, item_rng)
            emit(f"step 0 (base weights): validation accuracy {state.base_valid:.1%}", None)

        budget_warned = False
        for step in range(state.step + 1, config.steps + 1):
            step_start = time.perf_counter()
            # 1. the step's global batch of prompts (the same on every rank); this rank's contiguous share of it
            items = task.sample_train(config.prompts_per_step, item_rng)
            first, stop = dist.shard(len(items))
            mine = items[first:stop]
            # With their images on a vision-language model (for vLLM also unexpanded: VisionPrompt)
            prompts = item_prompts(adaptable, task, mine) if backend is None else _vllm_prompts(adaptable, task, mine)
            keys = [
                sample_key(config.seed, step, first + i, j)
                for i in range(len(mine))
                for j in range(config.samples_per_prompt)
            ]

            # 2. W'(z) composed once per step: the rollouts run on its values, the loss backpropagates into it
            #    (sharded: each rank composes its rows of the live weights; the loss reaches z per layer)
            composed = None
            if isinstance(svf, ShardedSVF):
                svf.refresh(z)
            else:
                composed = svf.differentiable_weights(z)
            gen_start = time.perf_counter()
            gens = _roll_out(
                adaptable, composed, prompts, keys, config, max_new, backend=backend, pushed=pushed, sync=sync
            )
            gen_seconds = time.perf_counter() - gen_start

            # 3. rewards: +1 correct, -1 otherwise
            expanded = [item for item in mine for _ in range(config.samples_per_prompt)]
            correct = task.correct(expanded, gens.texts)
            rewards = torch.tensor([1.0 if ok else -1.0 for ok in correct])

            # 4. advantages (a per-prompt group baseline removes most of REINFORCE's variance)
            advantages = group_advantages(rewards, config)

            # 5. loss = -(advantage * sum of completion log-probs) / N over the GLOBAL batch; backward in micro-batches
            optimizer.zero_grad(set_to_none=True)
            total = config.prompts_per_step * config.samples_per_prompt
            if isinstance(svf, ShardedSVF):
                with svf.bound(z):
                    loss_total, kl_mean = policy_gradient(
                        adaptable.model,
                        svf.base_forward,
                        adaptable.tokenizer.pad_token_id,
                        gens,
                        advantages,
                        config,
                        device=adaptable.device,
                        total=total,
                        sync=dist,
                    )
            else:
                if composed is None:  # step 2 composes W'(z) whenever the model is not sharded
                    raise RuntimeError("no composed weights W'(z) for the loss")
                loss_total, kl_mean = svf_policy_gradient(adaptable, composed, gens, advantages, config, total=total)
                del composed

            # 6. gradients summed over ranks, then clip and step (identical on every rank)
            dist.all_reduce_grads(list(z.values()))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(list(z.values()), config.clip_norm))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()

            cut = sum(len(ids) >= max_new for ids in gens.completion_ids)
            reward_sum, n_correct, loss, kl_sum, new_tokens, n_cut = dist.sum(
                [float(rewards.sum()), sum(correct), loss_total, kl_mean * gens.new_tokens, gens.new_tokens, cut]
            )
            metrics = StepMetrics(
                step=step,
                reward=reward_sum / total,
                accuracy=n_correct / total,
                loss=loss,
                grad_norm=grad_norm,
                lr=lr,
                tokens_per_s=new_tokens / max(dist.max(gen_seconds), 1e-9),
                seconds=time.perf_counter() - step_start,
                kl=kl_sum / new_tokens if new_tokens else 0.0,
                at_budget=n_cut / total,
            )
            # Most rollouts cut at a long budget: the step's time goes to answers that never end. Once per process.
            if metrics.at_budget > 0.5 and max_new > LONG_BUDGET and not budget_warned:
                budget_warned = True
                emit(
                    f"warning: step {step}: {n_cut:.0f} of {total} rollouts ran to the {max_new}-token budget "
                    "(slow steps); pass --max-new-tokens N or set max_new_tokens in the task file",
                    None,
                )
            # 7. validation; the best-on-validation z is what gets registered
            if step % config.eval_every == 0 or step == config.steps:
                metrics.valid_accuracy = validate(step)
                if metrics.valid_accuracy > state.best_valid:
                    state.best_valid, state.best_step = metrics.valid_accuracy, step
                    best_z = {name: v.detach().clone() for name, v in z.items()}
            history.append(metrics)
            state.step = step

            # 8. checkpoint every step, metrics to the registry (rank 0)
            if dist.is_main:
                _save_checkpoint(run_dir, config, state, z, best_z, optimizer, schedule, item_rng)
                _record_metrics(registry, run_id, metrics)
            emit("step", metrics)
    except KeyboardInterrupt:
        if dist.is_main:
            _set_status(registry, run_id, "interrupted")
        raise TrainingInterrupted(
            f"training interrupted after step {state.step} of {config.steps} (checkpointed)",
            f"resume with: t2 train --task {config.task} --name {config.name} --resume",
        ) from None
    except BaseException:
        if dist.is_main:
            _set_status(registry, run_id, "failed")
        raise

    expert_config = ExpertConfig(
        name=config.name,
        base_model=adaptable.base_model_record(),
        targets=adaptable.targets,
        num_matrices=len(z),
        kind="trained",
        task=task.name,
        category=task.category,
        description=f"SVF expert trained with RL on {task.name}",
        parametrization={"stored": "effective_multiplier", "trained": "direct z, init 1.0", "norm_rescaled": False},
        metrics={
            "valid_accuracy": state.best_valid,
            "base_valid_accuracy": state.base_valid,
            "best_step": state.best_step,
            "valid_n": len(valid_items),
        },
        training={**asdict(config), "run_id": run_id},
    )

    def register() -> None:
        expert_id = register_expert(
            registry,
            best_z,
            expert_config,
            base_model_id=adaptable.base_model_id,
            decomposition_id=adaptable.decomposition_id,
            replace=_registered_by_run(registry, config.name, run_id),
        )
        _finish_run(registry, run_id, expert_id)

    dist.on_main(register)  # the other ranks return once the expert is registered
    assert state.base_valid is not None  # measured at step 0, before the loop
    return TrainResult(
        run_id=run_id,
        expert=config.name,
        best_step=state.best_step,
        best_valid_accuracy=state.best_valid,
        base_valid_accuracy=state.base_valid,
        history=history,
        seconds=time.perf_counter() - started,
    )


def _roll_out(
    adaptable: Adaptable[SVFModel] | Adaptable[ShardedSVF],
    composed: dict[str, torch.Tensor] | None,
    prompts: list[str] | list[ImagePrompt] | list[VisionPrompt],
    keys: list[int],
    config: TrainConfig,
    max_new: int,
    *,
    backend,
    pushed: dict[str, str],
    sync: Dist | None,
):  # -> Generations
    """Step 2's completions with W'(z): through vLLM, or transformers generation on the adapted model.

    ``composed``: W'(z) of the replicated layout, bound for the rollouts and unbound after;
    None when the model is sharded, its live weights already composed (``ShardedSVF.refresh``).
    """
    svf = adaptable.svf
    if backend is not None:  # vLLM generates with W' pushed into its own copy of the model
        if any(isinstance(p, ImagePrompt) for p in prompts):  # vLLM expands image placeholders itself
            raise TypeError("the vLLM rollout takes texts or VisionPrompts (_vllm_prompts), not ImagePrompts")
        _push_weights(backend, pushed, svf, composed)
        return backend.generate(
            prompts,
            max_new_tokens=max_new,
            temperature=config.temperature,
            per_prompt=config.samples_per_prompt,
            sample_keys=keys,
        )
    if any(isinstance(p, VisionPrompt) for p in prompts):
        raise TypeError("VisionPrompts are the vLLM rollout's; transformers generation takes ImagePrompts")
    hf_prompts = cast("list[str] | list[ImagePrompt]", prompts)

    def rollouts():
        return generate(
            adaptable.model,
            adaptable.tokenizer,
            hf_prompts,
            max_new_tokens=max_new,
            temperature=config.temperature,
            per_prompt=config.samples_per_prompt,
            batch_size=config.gen_batch,
            sample_keys=keys,
            sync=sync,
        )

    if isinstance(svf, ShardedSVF):
        with svf.gathered() if config.fsdp_gather_rollouts else nullcontext():
            return rollouts()
    if composed is None:  # the replicated layout rolls out on the W'(z) it is given
        raise RuntimeError("no composed weights W'(z) for the rollouts")
    svf.apply_weights(composed)
    try:
        return rollouts()
    finally:
        svf.restore()


def _vllm_backend(
    registry: Registry, adaptable: Adaptable[SVFLike], task: Task, config: TrainConfig, dist: Dist
) -> tuple[VLLMRollout, dict[str, str]]:
    """The colocated vLLM engine of ``--rollout vllm``, loading the base weights from their safetensors files,
    and the name vLLM takes W' of each target under (refusing targets it cannot take before the engine starts)."""
    identity = adaptable.identity
    targets = select_targets(
        identity.model_type, identity.num_layers, adaptable.targets, vision_layers=identity.vision_layers
    )
    pushed = {matrix.name: vllm_weight_name(matrix) for matrix in targets}
    vlm = is_vision_language(identity.model_type)
    # vLLM profiles memory for its per-prompt image limit: the task's largest item, not vLLM's default of 999.
    most_images = max((len(item.images) for split in SPLITS for item in task.split(split)), default=0)
    folder = dist.main_first(lambda: weights_folder(registry, identity))  # rank 0 dequantises a GGUF once
    dtype = str(next(adaptable.model.parameters()).dtype).removeprefix("torch.")
    backend = VLLMRollout(
        folder,
        adaptable.tokenizer,
        dtype=dtype,
        seed=config.seed,
        gpu_memory_utilization=config.vllm_memory,
        device=adaptable.device,
        max_images=most_images if vlm else None,
    )
    return backend, pushed


def _vllm_prompts(adaptable: Adaptable[SVFLike], task: Task, items: list[TaskItem]) -> list[str] | list[VisionPrompt]:
    """``item_prompts`` for the vLLM engine: items with images as ``VisionPrompt``s (their images, ids unexpanded)."""
    if any(item.images for item in items):
        return vision_prompts(adaptable.processor(), items, task.system_prompt)
    return task.prompts(adaptable.tokenizer, items)


def _push_weights(backend, pushed: dict[str, str], svf, composed: dict[str, torch.Tensor] | None) -> None:
    """W' of every target matrix into the vLLM engine, under the names in ``pushed`` (``vllm_weight_name``):
    the composed tensors, or (FSDP) each live weight gathered in turn."""
    if composed is not None:
        backend.push_weights({pushed[name]: weight.detach() for name, weight in composed.items()})
        return
    for name, layer in svf.layers.items():  # one gathered matrix at a time bounds the extra memory
        backend.push_weights({pushed[name]: layer.weight.full_tensor()})


def cosine_factor(config: TrainConfig) -> Callable[[int], float]:
    """Cosine decay from 1 to ``min_lr_ratio`` over the run (as a LambdaLR factor)."""

    def factor(step: int) -> float:
        progress = min(step / max(config.steps - 1, 1), 1.0)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def group_advantages(rewards: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Per-sample advantages from +1/-1 rewards laid out as consecutive groups of ``samples_per_prompt``."""
    if config.advantage == "raw":
        return rewards
    groups = rewards.view(-1, config.samples_per_prompt)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if config.advantage == "group-norm":
        centred = centred / (groups.std(dim=1, keepdim=True) + 1e-6)
    return centred.reshape(-1)


def svf_policy_gradient(
    adaptable: Adaptable[SVFLike],
    composed: dict[str, torch.Tensor],
    gens,
    advantages: torch.Tensor,
    config: TrainConfig,
    *,
    total: int | None = None,
) -> tuple[float, float]:
    """Backward of the REINFORCE (+KL) loss into z; returns (loss, mean KL).

    The micro-batches accumulate dL/dW' on detached copies of ``composed`` (= W'(z)),
    then one backward carries it through the composition to z: composing and its
    backward (an m x n x r product per matrix) happen once per step, not once per
    micro-batch.
    """
    svf = adaptable.svf
    if not isinstance(svf, SVFModel):
        raise TypeError(
            f"svf_policy_gradient needs an SVFModel, not {type(svf).__name__} (FSDP trains through bound z)"
        )
    leaves = {name: weight.detach().requires_grad_(True) for name, weight in composed.items()}
    loss, kl = policy_gradient(
        lambda **kw: svf.forward_with(leaves, **kw),
        adaptable.model,
        adaptable.tokenizer.pad_token_id,
        gens,
        advantages,
        config,
        device=adaptable.device,
        total=total,
    )
    names = [name for name in composed if leaves[name].grad is not None]
    if names:
        torch.autograd.backward([composed[name] for name in names], [leaves[name].grad for name in names])
    return loss, kl


def policy_gradient(
    forward: Callable[..., Any],
    base_forward: Callable[..., Any],
    pad_id: int,
    gens,
    advantages: torch.Tensor,
    config: TrainConfig,
    *,
    device: str = "cpu",
    total: int | None = None,
    sync: Dist | None = None,
) -> tuple[float, float]:
    """Backward of the REINFORCE (+KL) loss through ``forward``, micro-batched; returns (loss, mean KL per token).

    loss = -sum_i advantage_i * log p(completion_i | prompt_i) / N (+ kl_coef * per-token KL to ``base_forward``).
    N is ``total`` (the global batch when ``gens`` is one rank's share of it) or ``len(gens)``.
    Any differentiable policy can be plugged in (SVF here; bench/train.py passes a LoRA model).

    ``sync``: the job, when ``forward`` is an FSDP-sharded model whose forwards and backwards
    are collectives: every rank then runs as many micro-batches as the busiest one, the
    others padding with a one-token dummy whose loss is multiplied by zero.
    """
    n = total or len(gens.completion_ids)
    # Samples with zero advantage and no KL term contribute nothing: skip their forward/backward.
    active = [i for i, ids in enumerate(gens.completion_ids) if ids and (config.kl_coef > 0 or advantages[i] != 0)]
    batches: list[list[int] | None] = [
        active[s : s + config.micro_batch] for s in range(0, len(active), config.micro_batch)
    ]
    if sync is not None and sync.enabled:
        batches += [None] * (int(sync.max(len(batches))) - len(batches))
    loss_total, kl_total, kl_tokens = 0.0, 0.0, 0.0
    for rows in batches:
        dummy = rows is None
        prompts = [[pad_id, pad_id]] if rows is None else [gens.prompt_ids[i] for i in rows]
        completions = [[pad_id]] if rows is None else [gens.completion_ids[i] for i in rows]
        # Each completion is scored with the images it was generated from (vision-language prompts).
        images = [gens.image_prompts[i] for i in rows] if rows is not None and gens.image_prompts else None
        logprobs, mask, logits = completion_logprobs(
            forward,
            prompts,
            completions,
            pad_id=pad_id,
            device=device,
            return_logits=config.kl_coef > 0,
            image_prompts=images,
        )
        adv = torch.zeros(1) if dummy else advantages[rows]
        loss = -(adv.to(logprobs.device) * logprobs.sum(dim=1)).sum() / n
        if config.kl_coef > 0:
            with torch.no_grad():
                _, _, base_logits = completion_logprobs(
                    base_forward,
                    prompts,
                    completions,
                    pad_id=pad_id,
                    device=device,
                    return_logits=True,
                    image_prompts=images,
                )
            if logits is None or base_logits is None:  # both asked for (return_logits) when kl_coef > 0
                raise RuntimeError("completion_logprobs returned no logits for the KL term")
            log_p = logits.float().log_softmax(-1)
            log_q = base_logits.float().log_softmax(-1)
            kl = ((log_p.exp() * (log_p - log_q)).sum(-1) * mask).sum()
            if dummy:
                kl = kl * 0.0
            loss = loss + config.kl_coef * kl / max(float(mask.sum()), 1.0) * len(prompts) / n
            kl_total += kl.item()
            kl_tokens += 0.0 if dummy else float(mask.sum())
        loss.backward()
        loss_total += loss.item()
    return loss_total, kl_total / kl_tokens if kl_tokens else 0.0


# --------------------------------------------------------------------------- runs and checkpoints


def _start_run(
    registry: Registry, adaptable: Adaptable[SVFLike], config: TrainConfig, resume_run: str | None, held: ExitStack
) -> tuple[str, Path]:
    """Create the run's row and folder, or reopen the run to resume; ``held`` keeps the run's lock until training ends.

    Rank 0 only (``Dist.on_main``), so a ``RunBusy`` reaches every rank.
    """
    if resume_run is not None:
        row = runs.get(registry, resume_run)
        if row is None:
            raise T2Error(f"no training run {resume_run!r}", "see `t2 runs list`")
        run_dir = Path(row.checkpoint_dir or registry.home / "runs" / row.run_id)
        held.enter_context(hold_run_lock(run_dir, row.run_id))  # RunBusy if it is trained now
        stored = json.loads(row.config_json)
        if {k: stored.get(k) for k in ("task", "name", "targets")} != {
            "task": config.task,
            "name": config.name,
            "targets": config.targets,
        }:
            raise T2Error(
                f"run {resume_run} trained {stored.get('name')!r} on {stored.get('task')!r}",
                "resume it with the same --task and --name",
            )
        runs.set_status(registry, row.run_id, "running")
        return row.run_id, run_dir
    if experts.exists(registry, config.name):
        raise T2Error(f"an expert named {config.name!r} already exists", "pick another --name or `t2 experts rm` it")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_id = f"run-{stamp}-{os.urandom(2).hex()}"
    run_dir = registry.home / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    held.enter_context(hold_run_lock(run_dir, run_id))
    runs.start(
        registry,
        run_id=run_id,
        base_model_id=adaptable.base_model_id,
        task=config.task,
        config_json=json.dumps(asdict(config), sort_keys=True),
        checkpoint_dir=str(run_dir),
    )
    return run_id, run_dir


def find_resumable_run(registry: Registry, name: str) -> str | None:
    """The latest unfinished run that trains expert ``name``."""
    for row in runs.unfinished(registry):
        if json.loads(row.config_json).get("name") == name:
            return row.run_id
    return None


def _save_checkpoint(
    run_dir: Path, config: TrainConfig, state: TrainState, z, best_z, optimizer, schedule, item_rng
) -> None:
    """One safetensors file (tensors + JSON metadata), written to a temp file then renamed."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in z.items():
        tensors[f"z/{name}"] = value.detach().cpu().contiguous()
        tensors[f"best/{name}"] = best_z[name].cpu().contiguous()
        moments = optimizer.state.get(value, {})
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in moments:
                tensors[f"adam/{moment}/{name}"] = moments[moment].cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    adam_steps = {
        name: float(optimizer.state[v]["step"]) for name, v in z.items() if "step" in optimizer.state.get(v, {})
    }
    py_state = item_rng.getstate()
    metadata = {
        "config": json.dumps(asdict(config), sort_keys=True),
        "state": state.to_json(),
        "adam_steps": json.dumps(adam_steps),
        "schedule": json.dumps(schedule.state_dict()),
        "python_rng": json.dumps([py_state[0], list(py_state[1]), py_state[2]]),
    }
    tmp = run_dir / f".{CHECKPOINT_FILE}.tmp"
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, run_dir / CHECKPOINT_FILE)


def _read_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's checkpoint, or None when it has none yet."""
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    version, internal, gauss = json.loads(metadata["python_rng"])
    return Checkpoint(
        tensors=tensors,
        state=TrainState.from_json(metadata["state"]),
        adam_steps=json.loads(metadata["adam_steps"]),
        schedule=json.loads(metadata["schedule"]),
        python_rng=(version, tuple(internal), gauss),
    )


def _restore_checkpoint(
    checkpoint: Checkpoint, z, optimizer, schedule, item_rng
) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Load a checkpoint into z, the optimizer, the schedule and the RNGs; returns (state, best z)."""
    tensors = checkpoint.tensors
    with torch.no_grad():
        for name, value in z.items():
            value.copy_(tensors[f"z/{name}"])
            if f"adam/exp_avg/{name}" in tensors:
                optimizer.state[value] = {
                    "step": torch.tensor(checkpoint.adam_steps[name]),
                    "exp_avg": tensors[f"adam/exp_avg/{name}"].to(value.device).clone(),
                    "exp_avg_sq": tensors[f"adam/exp_avg_sq/{name}"].to(value.device).clone(),
                }
    schedule.load_state_dict(checkpoint.schedule)
    # The scheduler's state does not carry the optimizer's current lr: set it, or the first resumed
    # step would run at the initial lr instead of the decayed one.
    for group, lr in zip(optimizer.param_groups, schedule.get_last_lr()):
        group["lr"] = lr
    torch.set_rng_state(tensors["rng/torch"])
    item_rng.setstate(checkpoint.python_rng)
    best_z = {name: tensors[f"best/{name}"].to(z[name].device).clone() for name in z}
    return checkpoint.state, best_z


def _record_metrics(registry: Registry, run_id: str, metrics: StepMetrics) -> None:
    values = {key: value for key, value in asdict(metrics).items() if key != "step" and value is not None}
    _record_values(registry, run_id, metrics.step, values)


def _record_values(registry: Registry, run_id: str, step: int, values: dict[str, float]) -> None:
    runs.record_metrics(registry, run_id, step, values)


def _set_status(registry: Registry, run_id: str, status: str) -> None:
    runs.set_status(registry, run_id, status)


def _registered_by_run(registry: Registry, name: str, run_id: str) -> bool:
    """Whether expert ``name`` exists and was registered by ``run_id``.

    True after a kill between registering the expert and marking the run finished: the resumed
    run re-registers the same z (same checkpoint) in place of it instead of refusing the name.
    """
    record = experts.get(registry, name)
    return record is not None and json.loads(record.config_json).get("training", {}).get("run_id") == run_id


def _finish_run(registry: Registry, run_id: str, expert_id: int) -> None:
    runs.finish(registry, run_id, expert_id)
