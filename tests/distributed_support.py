"""Two-process training runs on CPU (gloo) for tests: `t2 train` under torchrun, or spawned workers.

Shared by tests/test_distributed.py (data parallel) and tests/test_sharded.py (FSDP). Every launch
has a hard timeout, so a hang fails the test instead of the CI job, and a failed launch shows what
its processes wrote. Neither picks a port for the children to race for: torchrun --standalone
holds the port of its own rendezvous store, and spawned workers meet through a file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from t2cli.home import open_registry

ROOT = Path(__file__).resolve().parent.parent
# Float32 sums in another order (micro-batches of other shapes, the all-reduce) move z by ~1e-6
# after three Adam steps that move it by ~1e-1; a diverged rollout would move it by ~lr = 5e-2.
Z_TOLERANCE = 1e-4
# Generous: two fresh interpreters import torch and train on a busy, shared 2-core machine.
LAUNCH_TIMEOUT_S = 600


def write_task(path: Path, kind: str) -> Path:
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


def train_args(task: Path, model: Path, name: str, **overrides) -> list[str]:
    """`t2 train` arguments for a short CPU run; ``overrides`` by option name (``"micro-batch": 3``)."""
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


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> float:
    """The largest |a - b| over the tensors named ``prefix...`` (both must have the same ones)."""
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefix)}
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


def assert_same_training(result2: dict, result1: dict, home2: Path, home1: Path) -> None:
    """Two `t2 train --json` results (and the checkpoints in their homes) describe the same training."""
    two, one = _checkpoint(home2), _checkpoint(home1)
    moved = max(float((v - 1).abs().max()) for k, v in one.items() if k.startswith("z/"))
    assert moved > 1e-2  # z really trained
    assert max_diff(two, one, "z/") < Z_TOLERANCE
    assert max_diff(two, one, "adam/exp_avg/") < Z_TOLERANCE
    assert [m["reward"] for m in result2["history"]] == [m["reward"] for m in result1["history"]]
    assert [m["valid_accuracy"] for m in result2["history"]] == [m["valid_accuracy"] for m in result1["history"]]
    for m2, m1 in zip(result2["history"], result1["history"]):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4, abs=1e-6)
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
        # KL is a difference of nearly equal log-probabilities: float32 cancellation leaves ~1e-8
        assert m2["kl"] == pytest.approx(m1["kl"], rel=1e-4, abs=1e-7)


def assert_torchrun_trains_as_one_process(args: list[str], tmp_path: Path, t2_home: Path, expert: str):
    """`t2 train ARGS` under torchrun (2 gloo ranks) trains what 1 process trains, and only rank 0 writes.

    Returns the 2-process run's record (for a test's own checks on it).
    """
    # Here, not at the top: the spawned workers import this module and need none of the CLI.
    from typer.testing import CliRunner

    from registry import Registry
    from t2cli.cli.app import app
    from t2cli.train.runs import get_run

    home2 = tmp_path / "home-2proc"
    done = torchrun(args, home2, tmp_path)
    assert "data parallel: 2 processes (gloo)" in done.stderr
    result2 = json.loads(done.stdout.splitlines()[-1])  # rank 0's JSON lines only; the last is the result

    single = CliRunner().invoke(app, args + ["--json"])
    assert single.exit_code == 0, single.output
    # Same z and Adam moments (to float32 reduction order), same rewards, loss, KL and validation per step.
    assert_same_training(result2, json.loads(single.stdout.splitlines()[-1]), home2, t2_home)

    with Registry.open(home2) as registry:  # rank 1 had a read-only handle: a write would have failed the run
        rows = registry.status().rows
        run = get_run(registry, result2["run_id"])
    assert rows["training_runs"] == 1 and rows["experts"] == 1
    assert rows["base_models"] == 1 and rows["decompositions"] == 1
    assert run.status == "finished" and run.expert == expert
    assert len(list((home2 / "runs").glob("*/checkpoint.safetensors"))) == 1
    return run


def launch_env(home: Path) -> dict[str, str]:
    """The environment of a launched `t2`: this checkout importable, ``home`` as T2_HOME, one thread, offline."""
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": python_path,
        "T2_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def torchrun(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`t2 ARGS --json` as 2 processes under `torchrun --standalone`; fails the test (with their output) unless it exits 0.

    torchrun and its workers run in a session of their own, so a timeout kills all of them, not only torchrun.
    """
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "t2cli"]
    command = launch + args + ["--json"]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=launch_env(home),
        cwd=cwd,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT_S} s\n{stdout[-3000:]}\n{stderr[-5000:]}")
    done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    assert done.returncode == 0, f"torchrun exited {done.returncode}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    return done


# --------------------------------------------------------------------------- spawned workers


def _spawned_worker(
    rank: int, world: int, store_file: str, home: str, task_path: str, model: str, config: dict
) -> None:
    """One rank of a 2-process run (FSDP-sharded if ``config["shard"]`` says so), interrupted after step 2 on every rank."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "T2_HOME": home})
    torch.set_num_threads(1)
    import torch.distributed as td

    from t2cli.runtime.distributed import TIMEOUT, init_distributed, open_registry_ranked
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task
    from t2cli.train.loop import TrainConfig, TrainingInterrupted, train

    def stop_after_step_2(message, metrics) -> None:
        if metrics is not None and metrics.step == 2:
            raise KeyboardInterrupt

    # The group meets through a file, not a port another process could take between picking and binding
    # it; init_distributed then joins this group as it joins a launcher's.
    td.init_process_group("gloo", store=td.FileStore(store_file, world), rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        with init_distributed("cpu") as dist, open_registry_ranked(dist) as registry:
            if config.get("shard") == "fsdp":
                from t2cli.svf.sharded import load_sharded_adaptable

                adaptable = load_sharded_adaptable(registry, model, targets="all", dtype=None, dist=dist)
            else:
                adaptable = load_adaptable(registry, model, device=dist.device, dist=dist)
            task = get_task(task_path)
            try:
                train(registry, adaptable, task, TrainConfig(**config), on_event=stop_after_step_2, dist=dist)
            except TrainingInterrupted:
                pass
            else:
                raise AssertionError("the run was not interrupted")
        # Rank 0 still writes the checkpoint when rank 1 is interrupted: leave together, so that no rank
        # tears its gloo pairs down while the other may still use them.
        td.barrier()
    finally:
        td.destroy_process_group()
    # Skip interpreter finalisation: gloo's worker threads can still hold work objects then, and their
    # destruction aborts the process ("terminate called without an active exception", SIGABRT) after
    # the work is done and checked. Everything this rank wrote is closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(world: int, home: Path, task_path: Path | str, model: Path, config: dict) -> None:
    """``world`` spawned processes train ``config`` together and stop after step 2 (checkpointed)."""
    import torch.multiprocessing as mp

    rendezvous = Path(tempfile.mkdtemp(prefix="t2-rendezvous-"))
    args = (world, str(rendezvous / "store"), str(home), str(task_path), str(model), config)
    context = mp.start_processes(_spawned_worker, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world}-process run did not finish in {LAUNCH_TIMEOUT_S} s")
    except (
        mp.ProcessRaisedException,
        mp.ProcessExitedException,
    ) as exc:  # the child's traceback, or how it died, rather than only its exit code
        pytest.fail(f"a worker of the {world}-process run failed: {exc}")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
        shutil.rmtree(rendezvous, ignore_errors=True)


def assert_resumes_in_one_process(
    tiny_llama: Path, tmp_path: Path, t2_home: Path, *, task_name: str | None = None, **settings
) -> None:
    """A 2-process run (``settings`` added to its config) stopped after step 2 resumes in one plain process
    and ends where an uninterrupted one-process run does, with sampled rollouts.

    ``task_name``: a built-in task (e.g. the image task ``shapes`` with a vision-language ``tiny_llama``)
    instead of the written vowels task; a random model may then earn no reward at all, so the check for
    mixed rewards is skipped (pass ``advantage="raw"`` for a gradient from every rollout)."""
    from safetensors.torch import load_file

    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task
    from t2cli.train.loop import TrainConfig, find_resumable_run, train

    task_path = write_task(tmp_path / "vowels.jsonl", "vowels") if task_name is None else task_name
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
    spawn(2, t2_home, task_path, tiny_llama, {**config, **settings})
    # The one-process runs train as the 2-process one did, on a whole model (no FSDP settings).
    config.update({k: v for k, v in settings.items() if k not in ("shard", "fsdp_gather_rollouts")})

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
    if task_name is None:
        assert any(-1 < m.reward < 1 for m in clean.history)  # mixed rewards: the group baseline has a signal
    checkpoints = {path.parent.name: path for path in (t2_home / "runs").glob("*/checkpoint.safetensors")}
    resumed_z, clean_z = load_file(str(checkpoints[run_id])), load_file(str(checkpoints[clean.run_id]))
    assert max(float((v - 1).abs().max()) for k, v in clean_z.items() if k.startswith("z/")) > 1e-3
    assert max_diff(resumed_z, clean_z, "z/") < Z_TOLERANCE
