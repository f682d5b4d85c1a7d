"""Data-parallel training on CPU (gloo): 2 processes train the z of 1, only rank 0 writes, resume crosses world sizes.

The two multi-process tests start real process groups on localhost: one runs the
`t2 train` command under `torchrun --standalone`, the other spawns two workers with
torch.multiprocessing (tests/distributed_support.py). Both have hard timeouts, so a
hang fails the test instead of the CI job.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from t2cli.home import open_registry
from t2cli.runtime.distributed import Dist, DistributedError, rank_device
from tests.distributed_support import (
    assert_resumes_in_one_process,
    assert_torchrun_trains_as_one_process,
    train_args,
    write_task,
)


def test_two_processes_under_torchrun_train_the_same_z_and_only_rank_0_writes(
    tiny_llama: Path, tmp_path: Path, t2_home: Path
) -> None:
    task = write_task(tmp_path / "sums.jsonl", "sums")
    # Greedy rollouts with the raw +/-1 reward: every sample has a gradient, nothing is random.
    args = train_args(task, tiny_llama, "sums-dist", temperature=0.0, advantage="raw")
    run = assert_torchrun_trains_as_one_process(args, tmp_path, t2_home, "sums-dist")
    assert sorted(run.metrics["reward"]) == [1, 2, 3]


# --------------------------------------------------------------------------- spawned workers


def test_a_two_process_checkpoint_resumes_in_one_process_with_sampled_rollouts(
    tiny_llama: Path, tmp_path: Path, t2_home: Path
) -> None:
    assert_resumes_in_one_process(tiny_llama, tmp_path, t2_home)


# --------------------------------------------------------------------------- no processes


def test_shards_are_contiguous_whole_and_balanced() -> None:
    for n in (0, 1, 4, 5, 16):
        for world in (1, 2, 3, 8):
            bounds = [Dist(rank=r, world_size=world).shard(n) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_keyed_sampling_does_not_depend_on_the_batch(tiny_llama: Path) -> None:
    from t2cli.models.load import load_model, load_tokenizer
    from t2cli.models.resolve import resolve_model
    from t2cli.runtime.generation import generate, render_prompt, sample_key

    ref = resolve_model(str(tiny_llama))
    model, tokenizer = load_model(ref), load_tokenizer(ref)
    prompts = [render_prompt(tokenizer, f"{a}+{b}=?") for a, b in [(1, 2), (3, 4), (5, 6), (7, 18)]]
    keys = [sample_key(0, 1, i, j) for i in range(4) for j in range(3)]
    whole = generate(
        model, tokenizer, prompts, max_new_tokens=8, temperature=1.0, per_prompt=3, batch_size=12, sample_keys=keys
    )
    torch.manual_seed(123)  # the global RNG plays no part
    tail = generate(
        model,
        tokenizer,
        prompts[2:],
        max_new_tokens=8,
        temperature=1.0,
        per_prompt=3,
        batch_size=2,
        sample_keys=keys[6:],
    )
    assert whole.completion_ids[6:] == tail.completion_ids
    assert len({tuple(c) for c in whole.completion_ids}) > 1  # it does sample


def test_a_gpu_index_is_refused_under_a_launcher() -> None:
    with pytest.raises(DistributedError, match="cuda:LOCAL_RANK"):
        rank_device("cuda:0", local_rank=1, world_size=2)
    assert rank_device("cpu", local_rank=1, world_size=2) == "cpu"


def test_a_read_only_registry_refuses_writes() -> None:
    from registry import RegistryError

    with open_registry():
        pass
    with open_registry(read_only=True) as registry:
        assert registry.status().rows["experts"] == 0  # reads work
        with pytest.raises(RegistryError, match="read-only"), registry.session():
            pass


def test_bfloat16_base_weights_keep_float32_factors_deltas_and_z(tiny_llama: Path, tmp_path: Path) -> None:
    from t2cli.runtime.distributed import resolve_dtype
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.model import compose_delta
    from t2cli.tasks import get_task
    from t2cli.train.loop import TrainConfig, train

    assert resolve_dtype("auto", "cpu") is None and resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu", dtype="bfloat16")
        exact = load_adaptable(registry, str(tiny_llama), device="cpu")
        svf = adaptable.svf
        name = "model.layers.1.mlp.down_proj"
        base = dict(adaptable.model.named_parameters())[f"{name}.weight"]
        assert base.dtype == torch.bfloat16 and svf.factors[name].U.dtype == torch.float32
        # the factors (computed on this first, bfloat16 load) are those of the weights as stored (float32
        # here), not of their bfloat16 rounding (relative error ~2e-3)
        stored = dict(exact.model.named_parameters())[f"{name}.weight"]
        f = svf.factors[name]
        assert stored.dtype == torch.float32 and adaptable.decomposition_id == exact.decomposition_id
        assert float(((f.U * f.S) @ f.Vh - stored).norm() / stored.norm()) < 1e-5
        z = {n: torch.ones_like(f.S, requires_grad=True) for n, f in svf.factors.items()}
        composed = svf.differentiable_weights(z)
        assert composed[name].dtype == torch.bfloat16 and torch.equal(composed[name], base)  # z = 1 is W, bit for bit
        with torch.no_grad():
            z[name][0] = 1.5
        delta = compose_delta(svf.factors[name], z[name])
        assert delta.dtype == torch.float32
        moved = svf.differentiable_weights(z)[name]
        assert torch.equal(moved, (base.float() + delta).to(torch.bfloat16))
        moved.float().sum().backward()
        assert z[name].grad.dtype == torch.float32 and torch.isfinite(z[name].grad).all()

        task = get_task(str(write_task(tmp_path / "sums.jsonl", "sums")))
        config = TrainConfig(
            task="sums",
            name="bf16",
            steps=1,
            prompts_per_step=2,
            samples_per_prompt=2,
            valid_size=2,
            max_new_tokens=3,
            advantage="raw",
            temperature=0.0,
            device="cpu",
            dtype="bfloat16",
            lr=0.05,
        )
        train(registry, adaptable, task, config)
        from t2cli.svf.expert import load_expert

        expert = load_expert(registry, "bf16")
    assert all(v.dtype == torch.float32 for v in expert.z.values())


def test_the_composition_graph_saves_no_new_tensor() -> None:
    """docs/scaling.md's memory plan counts no autograd-saved memory for W'(z): only U, S, Vh are kept."""
    from t2cli.svf.model import Factors, compose_weight

    weight = torch.randn(12, 5).to(torch.bfloat16)
    U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)
    z = torch.ones_like(S, requires_grad=True)
    known = {t.untyped_storage().data_ptr() for t in (weight, U, S, Vh, z)}
    saved: list[bool] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.untyped_storage().data_ptr() in known)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compose_weight(weight, Factors(U, S, Vh), z)
    assert saved and all(saved)
