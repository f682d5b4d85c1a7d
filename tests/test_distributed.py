"""Data-parallel training on CPU (gloo): 2 processes train the z of 1, only rank 0 writes, resume crosses world sizes.

The two multi-process tests start real process groups on localhost: one runs the
`t2 train` command under `torchrun --standalone` (a free port is picked by torchrun),
the other spawns two workers with torch.multiprocessing on a free port. Both have
hard timeouts, so a hang fails the test instead of the CI job.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from t2cli.home import open_registry
from t2cli.runtime.distributed import Dist, DistributedError, rank_device

ROOT = Path(__file__).resolve().parent.parent
# Float32 sums in another order (micro-batches of other shapes, the all-reduce) move z by ~1e-6
# after three Adam steps that move it by ~1e-1; a diverged rollout would move it by ~lr = 5e-2.
Z_TOLERANCE = 1e-4
LAUNCH_TIMEOUT_S = 240


def _write_task(path: Path, kind: str) -> Path:
    """30 items (20 train, 5 valid, 5 test): sums scored as numbers, or 'any vowel' by regex.

    A random tiny model never adds correctly; the regex task gives it mixed rewards,
    so the group baseline has something to work with when sampling.
    """
    rng = random.Random(0)
    lines = []
    for i in range(30):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        split = "train" if i < 20 else "valid" if i < 25 else "test"
        if kind == "sums":
            item = {"prompt": f"{a}+{b}=?", "answer": str(a + b), "kind": "number", "split": split}
        else:
            item = {"prompt": f"say {a}{b}", "answer": "(?i).*[aeiou].*", "kind": "regex", "split": split}
        lines.append(json.dumps(item))
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(task: Path, model: Path, name: str, **overrides) -> list[str]:
    settings = {
        "steps": 3,
        "prompts-per-step": 4,
        "samples-per-prompt": 2,
        "eval-every": 2,
        "valid-size": 5,
        "max-new-tokens": 4,
        "lr": 0.05,
        "seed": 3,
        "device": "cpu",
    }
    settings.update(overrides)
    args = ["train", "--task", str(task), "--model", str(model), "--name", name]
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    return args


def _checkpoint(home: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (path,) = (home / "runs").glob("*/checkpoint.safetensors")
    return load_file(str(path))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefix)}
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


def assert_same_training(result2: dict, result1: dict, home2: Path, home1: Path) -> None:
    """Two `t2 train --json` results (and the checkpoints in their homes) describe the same training."""
    two, one = _checkpoint(home2), _checkpoint(home1)
    moved = max(float((v - 1).abs().max()) for k, v in one.items() if k.startswith("z/"))
    assert moved > 1e-2  # z really trained
    assert _max_diff(two, one, "z/") < Z_TOLERANCE
    assert _max_diff(two, one, "adam/exp_avg/") < Z_TOLERANCE
    assert [m["reward"] for m in result2["history"]] == [m["reward"] for m in result1["history"]]
    assert [m["valid_accuracy"] for m in result2["history"]] == [m["valid_accuracy"] for m in result1["history"]]
    for m2, m1 in zip(result2["history"], result1["history"]):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4, abs=1e-6)
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
        # KL is a difference of nearly equal log-probabilities: float32 cancellation leaves ~1e-8
        assert m2["kl"] == pytest.approx(m1["kl"], rel=1e-4, abs=1e-7)


def _env(home: Path) -> dict[str, str]:
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": python_path,
        "T2_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_two_processes_under_torchrun_train_the_same_z_and_only_rank_0_writes(
    tiny_llama: Path, tmp_path: Path, t2_home: Path
) -> None:
    from typer.testing import CliRunner

    from t2cli.cli.app import app

    task = _write_task(tmp_path / "sums.jsonl", "sums")
    # Greedy rollouts with the raw +/-1 reward: every sample has a gradient, nothing is random.
    args = _args(task, tiny_llama, "sums-dist", temperature=0.0, advantage="raw")
    home2 = tmp_path / "home-2proc"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "t2cli"]
    done = subprocess.run(
        launch + args + ["--json"],
        capture_output=True,
        text=True,
        env=_env(home2),
        cwd=tmp_path,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data parallel: 2 processes (gloo)" in done.stderr
    result2 = json.loads(done.stdout.splitlines()[-1])  # rank 0's JSON lines only; the last is the result

    single = CliRunner().invoke(app, args + ["--json"])
    assert single.exit_code == 0, single.output
    assert_same_training(result2, json.loads(single.stdout.splitlines()[-1]), home2, t2_home)

    from registry import Registry
    from t2cli.train.runs import get_run

    with Registry.open(home2) as registry:  # rank 1 had a read-only handle: a write would have failed the run
        rows = registry.status().rows
        run = get_run(registry, result2["run_id"])
    assert rows["training_runs"] == 1 and rows["experts"] == 1
    assert rows["base_models"] == 1 and rows["decompositions"] == 1
    assert run.status == "finished" and run.expert == "sums-dist"
    assert sorted(run.metrics["reward"]) == [1, 2, 3]


# --------------------------------------------------------------------------- spawned workers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawned_worker(rank: int, world: int, port: int, home: str, task_path: str, model: str, config: dict) -> None:
    """One rank of a 2-process run (FSDP-sharded if ``config["shard"]`` says so), interrupted after step 2 on every rank."""
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "T2_HOME": home,
        }
    )
    torch.set_num_threads(1)
    from t2cli.runtime.distributed import init_distributed, open_registry_ranked
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task
    from t2cli.train.loop import TrainConfig, TrainingInterrupted, train

    def stop_after_step_2(message, metrics) -> None:
        if metrics is not None and metrics.step == 2:
            raise KeyboardInterrupt

    with init_distributed("cpu") as dist, open_registry_ranked(dist) as registry:
        if config.get("shard") == "fsdp":
            from t2cli.svf.sharded import load_sharded_adaptable

            adaptable = load_sharded_adaptable(registry, model, targets="all", dtype=None, dist=dist)
        else:
            adaptable = load_adaptable(registry, model, device=dist.device, dist=dist)
        try:
            task = get_task(task_path)
            train(registry, adaptable, task, TrainConfig(**config), on_event=stop_after_step_2, dist=dist)
        except TrainingInterrupted:
            return
    raise AssertionError("the run was not interrupted")


def _spawn(world: int, *args) -> None:
    import torch.multiprocessing as mp

    context = mp.start_processes(
        _spawned_worker, args=(world, _free_port(), *args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world}-process run did not finish in {LAUNCH_TIMEOUT_S} s")


def test_a_two_process_checkpoint_resumes_in_one_process_with_sampled_rollouts(
    tiny_llama: Path, tmp_path: Path, t2_home: Path
) -> None:
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task
    from t2cli.train.loop import TrainConfig, find_resumable_run, train

    task_path = _write_task(tmp_path / "vowels.jsonl", "vowels")
    # Sampled rollouts (temperature 1, group baseline), 5 prompts split 2 + 3: keyed sampling must
    # make each prompt's group independent of the split.
    config = dict(
        task=str(task_path),
        name="resumed",
        steps=3,
        prompts_per_step=5,
        samples_per_prompt=3,
        eval_every=1,
        valid_size=5,
        max_new_tokens=4,
        micro_batch=4,
        gen_batch=4,
        lr=0.05,
        temperature=1.0,
        device="cpu",
        seed=5,
    )
    _spawn(2, str(t2_home), str(task_path), str(tiny_llama), config)

    task = get_task(str(task_path))
    with open_registry() as registry:
        assert registry.status().rows["experts"] == 0
        run_id = find_resumable_run(registry, "resumed")
        assert run_id is not None
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        resumed = train(registry, adaptable, task, TrainConfig(**config), resume_run=run_id)
        clean = train(registry, adaptable, task, TrainConfig(**{**config, "name": "clean"}))
        rows = registry.status().rows
    assert resumed.run_id == run_id and rows["training_runs"] == 2 and rows["experts"] == 2
    assert [m.reward for m in resumed.history] == [m.reward for m in clean.history]
    assert any(-1 < m.reward < 1 for m in clean.history)  # mixed rewards: the group baseline has a signal
    checkpoints = {path.parent.name: path for path in (t2_home / "runs").glob("*/checkpoint.safetensors")}
    from safetensors.torch import load_file

    resumed_z, clean_z = load_file(str(checkpoints[run_id])), load_file(str(checkpoints[clean.run_id]))
    assert max(float((v - 1).abs().max()) for k, v in clean_z.items() if k.startswith("z/")) > 1e-3
    assert _max_diff(resumed_z, clean_z, "z/") < Z_TOLERANCE


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

        task = get_task(str(_write_task(tmp_path / "sums.jsonl", "sums")))
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
