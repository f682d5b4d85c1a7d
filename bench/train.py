"""SVF against a PEFT LoRA baseline in the same RL loop, on the embedded model.

    python bench/train.py                              # addition, 10 steps, lr sweep for both
    python bench/train.py --steps 10 --svf-lrs 3e-3 --lora-lrs 1e-3 --test-n 200

Both methods run t2's recipe step for step: the same training prompts (same seed), the
same rollout settings (16 prompts x 4 samples at temperature 1, ``t2cli.runtime.generation.generate``),
the same group-mean advantage, the same loss (``t2cli.train.loop.policy_gradient``), AdamW with
the same cosine schedule and clipping. Only the trainable part differs:

* **SVF**: one z per attention + MLP matrix (all 210), exactly as ``t2 train`` does it
  (W'(z) composed once per step, ``t2cli.train.loop.svf_policy_gradient``);
* **LoRA**: ``peft`` LoRA, r=16, alpha=32, no dropout, on the attention q_proj and v_proj.

Each learning rate of each method's sweep trains from scratch; the best one on the
validation split (greedy, ``--valid-n`` items) is then scored on ``--test-n`` held-out test
items. Printed: trainable parameters, seconds per step (rollout and update separately)
and their ratio to LoRA, validation accuracy per learning rate, and test accuracy with its
95% Wilson interval. The issue's goals: SVF <= 1/10 of LoRA's parameters, step time
<= 1.0x, test accuracy >= LoRA's.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.table import Table

console = Console(width=180)


@dataclass
class RunResult:
    method: str
    lr: float
    params: int
    rollout_s: list[float] = field(default_factory=list)
    update_s: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    valid: float = 0.0
    state: dict | None = None  # what the test evaluation needs to rebuild the trained policy


class SVFPolicy:
    """z per matrix, trained as t2 train does."""

    name = "SVF"

    def __init__(self, adaptable) -> None:
        self.adaptable = adaptable
        self.z = {name: torch.ones_like(f.S, requires_grad=True) for name, f in adaptable.svf.factors.items()}
        self.composed = None

    def parameters(self) -> list[torch.Tensor]:
        return list(self.z.values())

    def rollout_model(self):
        self.composed = self.adaptable.svf.differentiable_weights(self.z)
        self.adaptable.svf.apply_weights(self.composed)
        return self.adaptable.model

    def after_rollout(self) -> None:
        self.adaptable.svf.restore()

    def backward(self, gens, advantages, config) -> None:
        from t2cli.train.loop import svf_policy_gradient

        svf_policy_gradient(self.adaptable, self.composed, gens, advantages, config)
        self.composed = None

    def eval_model(self):
        self.adaptable.svf.apply({k: v.detach() for k, v in self.z.items()})
        return self.adaptable.model

    def after_eval(self) -> None:
        self.adaptable.svf.restore()


class LoRAPolicy:
    """PEFT LoRA r=16 on q_proj, v_proj of a private copy of the base model."""

    name = "LoRA"

    def __init__(self, adaptable, seed: int) -> None:
        from peft import LoraConfig, get_peft_model

        self.adaptable = adaptable
        torch.manual_seed(seed)
        config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], bias="none")
        self.model = get_peft_model(copy.deepcopy(adaptable.model), config)

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def rollout_model(self):
        return self.model

    def after_rollout(self) -> None:
        pass

    def backward(self, gens, advantages, config) -> None:
        from t2cli.train.loop import policy_gradient

        policy_gradient(self.model, self.model, self.adaptable.tokenizer.pad_token_id, gens, advantages, config)

    def eval_model(self):
        return self.model

    def after_eval(self) -> None:
        pass


def accuracy(policy, adaptable, task, items, batch_size: int) -> list[bool]:
    """Greedy accuracy of a policy on task items."""
    from t2cli.runtime.generation import generate

    prompts = task.prompts(adaptable.tokenizer, items)
    model = policy.eval_model()
    try:
        gens = generate(model, adaptable.tokenizer, prompts, max_new_tokens=task.max_new_tokens, batch_size=batch_size)
    finally:
        policy.after_eval()
    return task.correct(items, gens.texts)


def train_policy(policy, adaptable, task, config, valid_items) -> RunResult:
    """``config.steps`` RL steps of t2's recipe on ``policy``; returns timings and validation accuracy."""
    from t2cli.runtime.generation import generate
    from t2cli.train.loop import cosine_factor, group_advantages

    params = policy.parameters()
    result = RunResult(policy.name, config.lr, sum(p.numel() for p in params))
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(config))
    item_rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    for step in range(1, config.steps + 1):
        items = task.sample_train(config.prompts_per_step, item_rng)
        prompts = task.prompts(adaptable.tokenizer, items)
        start = time.perf_counter()
        model = policy.rollout_model()
        try:
            gens = generate(
                model,
                adaptable.tokenizer,
                prompts,
                max_new_tokens=task.max_new_tokens,
                temperature=config.temperature,
                per_prompt=config.samples_per_prompt,
                batch_size=config.gen_batch,
            )
        finally:
            policy.after_rollout()
        middle = time.perf_counter()
        expanded = [item for item in items for _ in range(config.samples_per_prompt)]
        correct = task.correct(expanded, gens.texts)
        rewards = torch.tensor([1.0 if ok else -1.0 for ok in correct])
        optimizer.zero_grad(set_to_none=True)
        policy.backward(gens, group_advantages(rewards, config), config)
        torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
        optimizer.step()
        schedule.step()
        end = time.perf_counter()
        result.rollout_s.append(middle - start)
        result.update_s.append(end - middle)
        result.rewards.append(float(rewards.mean()))
        console.log(
            f"{policy.name} lr {config.lr:g} step {step}: reward {rewards.mean():+.3f}, "
            f"rollout {middle - start:.1f} s, update {end - middle:.1f} s"
        )
    result.valid = sum(accuracy(policy, adaptable, task, valid_items, config.gen_batch)) / len(valid_items)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="addition")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--svf-lrs", default="3e-3,1e-2")
    parser.add_argument("--lora-lrs", default="3e-4,1e-3,3e-3")
    parser.add_argument("--valid-n", type=int, default=100)
    parser.add_argument("--test-n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from t2cli.eval.accuracy import wilson_interval
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task
    from t2cli.train.loop import TrainConfig

    task = get_task(args.task)
    valid_items = task.split("valid")[: args.valid_n]
    test_items = task.split("test")[: args.test_n]
    with open_registry() as registry:
        adaptable = load_adaptable(registry, None, device="cpu")

    results: list[RunResult] = []
    best: dict[str, tuple[RunResult, object]] = {}
    sweeps = [("SVF", float(lr)) for lr in args.svf_lrs.split(",")] + [
        ("LoRA", float(lr)) for lr in args.lora_lrs.split(",")
    ]
    for method, lr in sweeps:
        config = TrainConfig(task=args.task, name="bench", steps=args.steps, lr=lr, seed=args.seed, device="cpu")
        policy = SVFPolicy(adaptable) if method == "SVF" else LoRAPolicy(adaptable, args.seed)
        result = train_policy(policy, adaptable, task, config, valid_items)
        results.append(result)
        if method not in best or result.valid > best[method][0].valid:
            best[method] = (result, policy)
        console.log(f"{method} lr {lr:g}: validation accuracy {result.valid:.1%}")

    sweep = Table(title=f"{args.task}: validation accuracy after {args.steps} steps (n={len(valid_items)})")
    for column in ("method", "lr", "valid acc", "mean reward, last 3 steps"):
        sweep.add_column(column)
    for r in results:
        sweep.add_row(r.method, f"{r.lr:g}", f"{r.valid:.1%}", f"{sum(r.rewards[-3:]) / 3:+.3f}")
    console.print(sweep)

    lora = best["LoRA"][0]
    table = Table(title=f"{args.task}: SVF vs LoRA (r=16, q,v), {args.steps} steps, best lr each")
    for column in (
        "method",
        "trainable params",
        "vs LoRA",
        "best lr",
        "rollout s/step",
        "update s/step",
        "step s",
        "step vs LoRA",
        f"test acc (n={len(test_items)})",
        "95% CI",
    ):
        table.add_column(column)
    lora_step = (sum(lora.rollout_s) + sum(lora.update_s)) / args.steps
    for method in ("SVF", "LoRA"):
        r, policy = best[method]
        correct = accuracy(policy, adaptable, task, test_items, 64)
        low, high = wilson_interval(sum(correct), len(correct))
        step = (sum(r.rollout_s) + sum(r.update_s)) / args.steps
        table.add_row(
            method,
            f"{r.params:,}",
            f"{r.params / lora.params:.2f}x",
            f"{r.lr:g}",
            f"{sum(r.rollout_s) / args.steps:.1f}",
            f"{sum(r.update_s) / args.steps:.1f}",
            f"{step:.1f}",
            f"{step / lora_step:.2f}x",
            f"{sum(correct) / len(correct):.1%}",
            f"[{low:.1%}, {high:.1%}]",
        )
    console.print(table)


if __name__ == "__main__":
    main()
