"""FSDP-sharded training (``--shard fsdp``): the sharded model computes what the replicated one does.

In-process tests run FSDP2 on a one-rank gloo group (the sharding machinery, the
per-layer z gradient and the weight refresh, without process start-up); the
multi-process tests launch 2 ranks (torchrun, or spawned workers) and compare the
trained z with a plain 1-process run, as tests/test_distributed.py does for data
parallelism.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from t2cli.home import open_registry
from t2cli.runtime.distributed import Dist
from tests.distributed_support import (
    assert_resumes_in_one_process,
    assert_same_training,
    torchrun,
    train_args,
    write_task,
)


def _tied_llama(folder: Path) -> Path:
    """A tiny Llama whose lm_head is its embedding matrix (as SmolLM2's is)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.tiny_models import COMMON, build_tiny_tokenizer

    torch.manual_seed(7)
    config = LlamaConfig(
        **COMMON,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    build_tiny_tokenizer(folder)
    return folder


def _random_z(factors, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: 1 + 0.3 * torch.randn(f.rank, generator=generator) for name, f in factors.items()}


# --------------------------------------------------------------------------- one rank, in process


def test_the_sharded_model_gives_the_replicated_logits_and_z_gradients(one_rank_group: Dist, tmp_path: Path) -> None:
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.sharded import SVFLinear, load_sharded_adaptable

    model = str(_tied_llama(tmp_path / "tied"))
    with open_registry() as registry:
        sharded = load_sharded_adaptable(registry, model, targets="all", dtype=None, dist=one_rank_group)
        plain = load_adaptable(registry, model, targets="all", device=one_rank_group.device)
    svf = sharded.svf
    assert sharded.decomposition_id == plain.decomposition_id  # one decomposition serves both layouts
    assert len(svf.layers) == 21 and all(isinstance(layer, SVFLinear) for layer in svf.layers.values())
    net = sharded.model
    assert net.lm_head.weight is net.model.embed_tokens.weight  # the tie survived meta init and sharding
    ids = torch.randint(4, 100, (2, 11), device=one_rank_group.device)

    with torch.no_grad():
        assert torch.equal(net(input_ids=ids).logits, plain.model(input_ids=ids).logits)
    z = {name: v.to(one_rank_group.device) for name, v in _random_z(plain.svf.factors).items()}
    svf.refresh(z)
    plain.svf.apply(z)
    with torch.no_grad():
        adapted, expected = net(input_ids=ids).logits, plain.model(input_ids=ids).logits
    plain.svf.restore()
    assert torch.allclose(adapted, expected, atol=1e-6)
    assert not torch.allclose(adapted, plain.model(input_ids=ids).logits, atol=1e-3)  # z did change the model
    with svf.gathered():  # the rollouts' layout: every layer gathered once, not per forward
        assert all(unit.weight.__class__.__name__ != "DTensor" for unit in svf.layers.values())
        with torch.no_grad():
            assert torch.equal(net(input_ids=ids).logits, adapted)
        with pytest.raises(RuntimeError, match="compose first"):
            svf.refresh(None)  # would leave the gathered copies stale
    assert all(type(layer.weight).__name__ == "DTensor" for layer in svf.layers.values())  # sharded again

    # dL/dz per layer from (x, dL/dy) equals autograd through W'(z) = W + U diag(S (z - 1)) Vh
    mine = {n: v.clone().requires_grad_(True) for n, v in z.items()}
    with svf.bound(mine):
        net(input_ids=ids).logits.float().pow(2).mean().backward()
    theirs = {n: v.clone().requires_grad_(True) for n, v in z.items()}
    logits = plain.svf.forward_with(plain.svf.differentiable_weights(theirs), input_ids=ids).logits
    logits.float().pow(2).mean().backward()
    scale = max(float(v.grad.abs().max()) for v in theirs.values())
    assert scale > 0
    assert max(float((mine[n].grad - theirs[n].grad).abs().max()) for n in z) < 1e-5 * scale

    # the KL reference reads W whatever is composed; restoring gives W back bit for bit
    with torch.no_grad():
        assert torch.equal(svf.base_forward(input_ids=ids).logits, plain.model(input_ids=ids).logits)
    svf.restore()
    for name, layer in svf.layers.items():
        assert torch.equal(layer.weight.to_local(), dict(plain.model.named_parameters())[f"{name}.weight"])


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gemma", "gemma3"])
def test_each_architecture_shards_and_adapts_like_the_replicated_model(
    one_rank_group: Dist, tiny_model_dirs: dict[str, Path], arch: str
) -> None:
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.sharded import load_sharded_adaptable

    device = one_rank_group.device
    with open_registry() as registry:
        sharded = load_sharded_adaptable(
            registry, str(tiny_model_dirs[arch]), targets="all", dtype=None, dist=one_rank_group
        )
        plain = load_adaptable(registry, str(tiny_model_dirs[arch]), targets="all", device=device)
    assert len(sharded.svf.layers) == 21 and len(sharded.svf.units) == 3  # 7 matrices in each of 3 decoder layers
    z = {name: v.to(device) for name, v in _random_z(plain.svf.factors, seed=3).items()}
    sharded.svf.refresh(z)
    plain.svf.apply(z)
    ids = torch.randint(4, 100, (2, 9), device=device)
    with torch.no_grad():
        assert torch.allclose(sharded.model(input_ids=ids).logits, plain.model(input_ids=ids).logits, atol=1e-6)


def test_z_one_composes_w_bit_for_bit_and_non_finite_weights_are_refused(
    one_rank_group: Dist, tiny_llama: Path
) -> None:
    from t2cli.svf.model import SVFError
    from t2cli.svf.sharded import load_sharded_adaptable

    with open_registry() as registry:
        sharded = load_sharded_adaptable(
            registry, str(tiny_llama), targets="mlp", dtype="bfloat16", dist=one_rank_group
        )
    svf = sharded.svf
    before = {name: layer.weight.to_local().clone() for name, layer in svf.layers.items()}
    assert all(w.dtype == torch.bfloat16 for w in before.values())
    assert all(layer.shards.U.dtype == torch.float32 for layer in svf.layers.values())
    device = one_rank_group.device
    svf.refresh({name: torch.ones(r, device=device) for name, r in svf.ranks.items()})
    assert all(torch.equal(layer.weight.to_local(), before[name]) for name, layer in svf.layers.items())
    broken = {name: torch.full((r,), float("inf"), device=device) for name, r in svf.ranks.items()}
    with pytest.raises(SVFError, match="non-finite"):
        svf.refresh(broken)
    assert all(torch.equal(layer.weight.to_local(), before[name]) for name, layer in svf.layers.items())


# --------------------------------------------------------------------------- two ranks


def _compare_runs(two: subprocess.CompletedProcess, one_home: Path, two_home: Path, single_output: str) -> dict:
    result2, result1 = json.loads(two.stdout.splitlines()[-1]), json.loads(single_output.splitlines()[-1])
    assert_same_training(result2, result1, two_home, one_home)
    return result1


def test_two_fsdp_ranks_with_sampled_rollouts_train_the_z_of_one_process(
    tiny_llama: Path, tmp_path: Path, t2_home: Path
) -> None:
    from typer.testing import CliRunner

    from t2cli.cli.app import app

    task = write_task(tmp_path / "vowels.jsonl", "vowels")
    # 5 prompts split 2 + 3 and sampled rollouts of uneven lengths: the ranks pad their generate
    # calls and loss micro-batches so that every FSDP collective is met.
    args = train_args(
        task,
        tiny_llama,
        "fsdp",
        **{"prompts-per-step": 5, "temperature": 1.0, "max-new-tokens": 6, "micro-batch": 3, "gen-batch": 4},
    )
    two_home = tmp_path / "home-fsdp"
    two = torchrun(args + ["--shard", "fsdp"], two_home, tmp_path)
    assert "FSDP-sharded model: 2 processes (gloo)" in two.stderr
    single = CliRunner().invoke(app, args + ["--json"])
    assert single.exit_code == 0, single.output
    result = _compare_runs(two, t2_home, two_home, single.stdout)
    assert any(-1 < m["reward"] < 1 for m in result["history"])  # mixed rewards: the baseline had a signal

    from registry import Registry

    with Registry.open(two_home) as registry:
        rows = registry.status().rows
    assert rows["training_runs"] == 1 and rows["experts"] == 1 and rows["decompositions"] == 1


def test_two_fsdp_ranks_with_a_kl_penalty_biases_and_gathered_rollouts_train_the_z_of_one_process(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, t2_home: Path
) -> None:
    from typer.testing import CliRunner

    from t2cli.cli.app import app

    task = write_task(tmp_path / "sums.jsonl", "sums")
    # Qwen2 has q/k/v biases; the KL reference forward gathers W per matrix on every rank.
    args = train_args(
        task,
        tiny_model_dirs["qwen2"],
        "fsdp-kl",
        **{"prompts-per-step": 3, "temperature": 0.0, "advantage": "raw", "kl-coef": 0.2},
    )
    two_home = tmp_path / "home-fsdp"
    # --fsdp-gather-rollouts: rollouts and validation on the model gathered once per block
    two = torchrun(args + ["--shard", "fsdp", "--fsdp-gather-rollouts"], two_home, tmp_path)
    single = CliRunner().invoke(app, args + ["--json"])
    assert single.exit_code == 0, single.output
    result = _compare_runs(two, t2_home, two_home, single.stdout)
    assert any(m["kl"] > 0 for m in result["history"][1:])  # the penalty was live after the first step


def test_an_fsdp_checkpoint_resumes_in_one_unsharded_process(tiny_llama: Path, tmp_path: Path, t2_home: Path) -> None:
    assert_resumes_in_one_process(tiny_llama, tmp_path, t2_home, shard="fsdp")


# --------------------------------------------------------------------------- bad input


def test_fsdp_in_one_process_and_unknown_shardings_are_refused(tiny_llama: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from t2cli.cli.app import app

    task = write_task(tmp_path / "sums.jsonl", "sums")
    alone = CliRunner().invoke(app, train_args(task, tiny_llama, "x") + ["--shard", "fsdp"])
    assert alone.exit_code == 1
    assert "--shard fsdp splits the model over several processes" in alone.output
    assert "torchrun" in alone.output
    unknown = CliRunner().invoke(app, train_args(task, tiny_llama, "x") + ["--shard", "zero3"])
    assert unknown.exit_code == 2 and "unknown --shard 'zero3'" in unknown.output
    assert not (Path(os.environ["T2_HOME"]) / "runs").exists() or not any(
        (Path(os.environ["T2_HOME"]) / "runs").iterdir()
    )


# --------------------------------------------------------------------------- padding for FSDP's collectives


class _BusierPeer:
    """A stand-in job whose busiest rank has ``extra`` more work than this one (``Dist.max`` is all it asks)."""

    enabled = True

    def __init__(self, extra: int) -> None:
        self.extra = extra

    def max(self, value: float) -> float:
        return float(value + self.extra)


def test_padding_adds_forwards_but_changes_no_completion_and_no_gradient(
    one_rank_group: Dist, tiny_llama: Path
) -> None:
    """A rank with less work than its peers pads its generate calls and loss micro-batches with dummies."""
    if one_rank_group.device != "cpu":
        pytest.skip("the padding logic is device-independent")
    from t2cli.runtime.generation import generate, render_prompt, sample_key
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.train.loop import TrainConfig, group_advantages, policy_gradient

    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
    model, tokenizer, svf = adaptable.model, adaptable.tokenizer, adaptable.svf
    prompts = [render_prompt(tokenizer, f"say {i}{i + 1}") for i in range(3)]
    keys = [sample_key(1, 1, i, j) for i in range(3) for j in range(2)]
    calls = {"forward": 0}
    original_forward = model.forward

    def counting_forward(*args, **kwargs):
        calls["forward"] += 1
        return original_forward(*args, **kwargs)

    model.forward = counting_forward
    plain = generate(
        model, tokenizer, prompts, max_new_tokens=4, temperature=1.0, per_prompt=2, batch_size=4, sample_keys=keys
    )
    unpadded_calls, calls["forward"] = calls["forward"], 0
    # 3 padding completions make a third generate call of 1 + 4 sequences: more forwards, same results
    padded = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=4,
        temperature=1.0,
        per_prompt=2,
        batch_size=4,
        sample_keys=keys,
        sync=_BusierPeer(3),
    )
    assert calls["forward"] > unpadded_calls
    assert padded == plain

    config = TrainConfig(
        task="t", name="n", prompts_per_step=3, samples_per_prompt=2, micro_batch=2, advantage="raw", kl_coef=0.1
    )
    advantages = group_advantages(torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0]), config)

    def gradient(sync) -> tuple[dict[str, torch.Tensor], float, float, int]:
        z = svf.trainable_z()
        calls["forward"] = 0
        loss, kl = policy_gradient(
            lambda **kw: svf.forward_with(svf.differentiable_weights(z), **kw),
            model,
            tokenizer.pad_token_id,
            plain,
            advantages,
            config,
            total=6,
            sync=sync,
        )
        return {n: v.grad.clone() for n, v in z.items() if v.grad is not None}, loss, kl, calls["forward"]

    grads, loss, kl, forwards = gradient(None)
    padded_grads, padded_loss, padded_kl, padded_forwards = gradient(_BusierPeer(2))
    assert padded_forwards == forwards + 2 * 2  # two dummy micro-batches, each a forward and a KL reference forward
    assert padded_loss == pytest.approx(loss, abs=1e-7) and padded_kl == pytest.approx(kl, abs=1e-9)
    assert grads.keys() == padded_grads.keys() and all(torch.allclose(grads[n], padded_grads[n]) for n in grads)
