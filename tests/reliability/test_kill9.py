"""kill -9 at random points of `t2 train`, `t2 decompose` and `t2 adapt`; rerunning (`--resume`) recovers.

The killed commands run in spawned children (a fresh interpreter each: a *forked* child of a
process whose OpenMP pool has run hangs at its first parallel op, which is what the full suite's
earlier tests leave behind) that call the real CLI app; the parent SIGKILLs them after it
sees k checkpoints (train) or k stored matrices (decompose). A test-only sleep after each
checkpoint / SVD chunk widens the windows so the kills land mid-run; it changes no result.

The kill schedule is random, seeded by T2_RELIABILITY_SEED (default 7) and printed, so a failure
can be replayed. Determinism: a resumed run restores z, AdamW moments, the LR schedule and the
torch and Python RNG states from its checkpoint, so on CPU its last checkpoint (z, best z, moments,
step counts, sampler state) equals an uninterrupted run's bit for bit in practice; we compare with
atol=1e-6 (the same bound as tests/test_train.py). The training settings make that comparison
bite: raw +/-1 advantages and a large learning rate move z at every step (a random tiny model
answers no sum, so a group baseline would leave every advantage at 0 and z at 1), and the kills
land after two or more Adam steps, so a resume that lost the moments, the sampler's state or the
step counter ends on another z.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import torch

SEED = int(os.environ.get("T2_RELIABILITY_SEED", "7"))
STEPS = 6
JOIN_S = 600  # generous: a busy shared CI machine is slow; a hang still fails
TRAIN_ARGS = [
    "--steps",
    str(STEPS),
    "--prompts-per-step",
    "4",
    "--samples-per-prompt",
    "2",
    "--eval-every",
    "2",
    "--valid-size",
    "5",
    "--max-new-tokens",
    "4",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--advantage",
    "raw",
    "--lr",
    "0.05",
]


@pytest.fixture()
def sums_file(tmp_path: Path) -> Path:
    rng = random.Random(0)
    lines = []
    for i in range(30):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        split = "train" if i < 20 else "valid" if i < 25 else "test"
        lines.append(json.dumps({"prompt": f"{a}+{b}=?", "answer": str(a + b), "kind": "number", "split": split}))
    path = tmp_path / "sums.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _child(home: str, args: list[str], patch: str | None) -> None:
    """Run `t2 ARGS` in this (spawned) process; ``patch`` names a test hook installed first."""
    os.environ["T2_HOME"] = home
    if patch == "slow-checkpoints":
        import t2cli.train.loop as train

        real = train._save_checkpoint

        def slow(*a, **kw):
            real(*a, **kw)
            time.sleep(0.25)

        train._save_checkpoint = slow
    elif patch == "kill-before-finish":  # SIGKILL between registering the expert and marking the run finished
        import t2cli.train.loop as train

        train._finish_run = lambda *a, **kw: os.kill(os.getpid(), signal.SIGKILL)
    elif patch == "slow-fitness":  # a marker file per scored candidate, so the parent can kill mid-search
        import t2cli.adapt.cem as cem

        real_fitness = cem.fewshot_fitness

        def slow_fitness(*a, **kw):
            result = real_fitness(*a, **kw)
            marks = Path(home) / "cem-marks"
            marks.mkdir(exist_ok=True)
            (marks / str(len(list(marks.iterdir())))).touch()
            time.sleep(0.1)
            return result

        cem.fewshot_fitness = slow_fitness
    elif patch == "slow-svd":
        import t2cli.decompose.svd as svd

        real_svd = svd.svd_batch

        def slow_svd(*a, **kw):
            time.sleep(0.25)
            return real_svd(*a, **kw)

        svd.svd_batch = slow_svd
    from t2cli.cli.app import app

    try:
        app(args, prog_name="t2")
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    os._exit(0)


_started: list = []


@pytest.fixture(autouse=True)
def _kill_leftover_children():
    """A failed assertion must not leave a child running (and eating CPU) for the rest of the suite."""
    yield
    while _started:
        proc = _started.pop()
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def _start(home: Path, args: list[str], patch: str | None = None):
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(str(home), args, patch))
    proc.start()
    _started.append(proc)
    return proc


def _wait_until(proc, condition, timeout: float = JOIN_S) -> bool:
    """Poll ``condition`` every 10 ms; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if not proc.is_alive():
            return False
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the child")


def _checkpoint_step(home: Path) -> int:
    """The step of the newest checkpoint under home/runs (-1 before the first one)."""
    from safetensors import safe_open

    best = -1
    for path in (home / "runs").glob("*/checkpoint.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as handle:
                best = max(best, json.loads(handle.metadata()["state"])["step"])
        except Exception:  # replaced under our feet: the next poll sees the new one
            pass
    return best


def _last_checkpoint(home: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of the one run's checkpoint (the last step's, once the run is done)."""
    from safetensors import safe_open

    (path,) = (home / "runs").glob("*/checkpoint.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


def _resume_state(metadata: dict[str, str]) -> dict:
    """What a resumed run must have carried over, from a checkpoint's metadata (not the timings)."""
    state = json.loads(metadata["state"])
    untimed = [{k: v for k, v in m.items() if k not in ("seconds", "tokens_per_s")} for m in state.pop("history")]
    return {
        "state": state,
        "history": untimed,
        "adam_steps": json.loads(metadata["adam_steps"]),
        "schedule": json.loads(metadata["schedule"]),
        "python_rng": json.loads(metadata["python_rng"]),
    }


def _tensor_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest |a - b| over the tensors of both (1.0 when their names differ); the RNG state must be equal."""
    if set(a) != set(b):
        return 1.0
    if not torch.equal(a.get("rng/torch", torch.zeros(0)), b.get("rng/torch", torch.zeros(0))):
        return 1.0
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if k != "rng/torch")


def _count(home: Path, sql: str) -> int:
    db = home / "registry.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # tables not created yet


def _assert_clean(home: Path) -> list[str]:
    """verify: nothing missing or corrupt; gc removes any leftovers and never a referenced blob."""
    from registry import Registry

    with Registry.open(home) as registry:
        before = registry.verify()
        assert before.ok, before
        removed = registry.gc(grace_s=0)
        assert set(removed) == set(before.orphans) | set(before.unreferenced)
        after = registry.verify()
    assert after.ok and after.orphans == [] and after.unreferenced == []
    assert after.checked == before.checked - len(removed)  # only unused blobs went
    leftovers = [p for d in (home / "tmp", home / "blobs" / "tmp") if d.is_dir() for p in d.iterdir()]
    assert leftovers == [], "gc removes the temp files of killed writes"
    return removed


def test_kill9_during_training_then_resume_gives_the_uninterrupted_expert(
    tiny_llama: Path, sums_file: Path, tmp_path: Path, capsys
) -> None:
    from sqlalchemy import select

    from registry import Registry
    from registry.schema import Expert, TrainingRun
    from t2cli.svf.expert import load_expert
    from t2cli.train.runs import list_runs

    base = ["train", "--task", str(sums_file), "--model", str(tiny_llama), *TRAIN_ARGS]
    reference_home = tmp_path / "reference"
    proc = _start(reference_home, [*base, "--name", "ref"])
    proc.join(JOIN_S)
    assert proc.exitcode == 0
    with Registry.open(reference_home) as registry:
        reference_z = load_expert(registry, "ref").z
    reference_tensors, reference_meta = _last_checkpoint(reference_home)
    moved = max(float((v - 1).abs().max()) for k, v in reference_tensors.items() if k.startswith("z/"))
    assert moved > 1e-2, "z must move at every step, or a resume that lost the optimizer state would go unseen"

    home = tmp_path / "killed"
    rng = random.Random(SEED)
    points = sorted(rng.sample(range(2, STEPS), 2))  # kill once checkpoint k is on disk (after 2+ Adam steps)
    seen = []
    args = [*base, "--name", "k9"]

    def progress() -> tuple[list[str], int, bool]:
        """(run ids, newest checkpoint step, whether the run finished) as the registry and disk show them."""
        with Registry.open(home) as registry:
            runs = list_runs(registry)
        return [run.run_id for run in runs], _checkpoint_step(home), [run.status for run in runs] == ["finished"]

    after_kill = []  # progress right after each kill
    for i, k in enumerate(points):
        proc = _start(home, args + (["--resume"] if i else []), "slow-checkpoints")
        target = max(k, seen[-1] + 1) if seen else k  # a checkpoint this process wrote
        reached = _wait_until(proc, lambda: _checkpoint_step(home) >= target)
        assert reached, f"the run ended before checkpoint {target}"
        proc.kill()
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        seen.append(_checkpoint_step(home))
        after_kill.append(progress())
        with Registry.open(home) as registry:  # the row still says running; its free lock says otherwise
            assert [run.status for run in list_runs(registry)] == ["interrupted"]
    # a deterministic point: the expert is registered, the run is not yet marked finished
    proc = _start(home, [*args, "--resume"], "kill-before-finish")
    proc.join(JOIN_S)
    assert proc.exitcode == -signal.SIGKILL
    after_kill.append(progress())
    proc = _start(home, [*args, "--resume"])
    proc.join(JOIN_S)
    assert proc.exitcode == 0
    final = progress()
    with Registry.open(home) as registry:
        z = load_expert(registry, "k9").z
        with registry.session(readonly=True) as session:
            experts = list(session.scalars(select(Expert.name)))
            runs = list(session.execute(select(TrainingRun.status, TrainingRun.expert_id)))
    # the expert (best-on-validation z) and the last checkpoint (z, best z, Adam moments, RNG) against the reference
    tensors, meta = _last_checkpoint(home)
    max_diff = max(_tensor_diff(z, reference_z), _tensor_diff(tensors, reference_tensors))
    same_state = _resume_state(meta) == _resume_state(reference_meta)
    # A kill is recovered when the command run after it went on with the same run, past where the kill left
    # it (a later checkpoint, or the run finished); the last one also when the result is the reference run's.
    tried = len(after_kill)
    later = [*after_kill[1:], (final[0], final[1], final[2] and max_diff <= 1e-6 and same_state)]
    recovered = sum(
        ids == next_ids and (next_step, next_done) > (step, done)
        for (ids, step, done), (next_ids, next_step, next_done) in zip(after_kill, later)
    )
    assert recovered == tried, (after_kill, final, max_diff, same_state)
    assert experts == ["k9"], "one expert, no half-registered duplicates"
    assert len(runs) == 1 and runs[0][0] == "finished" and runs[0][1] is not None
    assert max_diff <= 1e-6, max_diff
    assert same_state, (_resume_state(meta), _resume_state(reference_meta))
    # the re-registration after the last kill stored the same bytes (same z, canonical header): no stray blob
    removed = _assert_clean(home)
    assert removed == []
    with capsys.disabled():
        print(
            f"\n[reliability] train kill -9 (seed {SEED}): kills after checkpoints {seen} + before "
            f"the run is marked finished: {tried} tried, {recovered} recovered; z moved up to {moved:.2f}, "
            f"max |Δ| vs the uninterrupted run (z, moments) = {max_diff:.1e}, "
            f"gc removed {len(removed)} unused blobs"
        )


def test_kill9_during_decompose_then_rerun_completes(tiny_llama: Path, tmp_path: Path, capsys) -> None:
    from typer.testing import CliRunner

    import t2cli.decompose.engine  # noqa: F401
    from t2cli.cli.app import app

    home = tmp_path / "killed"
    rng = random.Random(SEED + 1)
    count = "SELECT count(*) FROM decomposition_matrices"
    stored, kept = [], []  # matrices committed at each kill; their rows

    def rows() -> set[tuple]:
        """(id, name, seconds) of every stored matrix: a matrix computed again gets another SVD time."""
        with sqlite3.connect(f"file:{home / 'registry.db'}?mode=ro", uri=True, timeout=5) as conn:
            return set(conn.execute("SELECT id, name, seconds FROM decomposition_matrices"))

    for more in (rng.randint(1, 8), rng.randint(1, 8)):  # kill once `more` further matrices are committed
        target = _count(home, count) + more
        proc = _start(home, ["decompose", str(tiny_llama), "--device", "cpu"], "slow-svd")
        reached = _wait_until(proc, lambda: _count(home, count) >= target)
        assert reached, f"the decomposition ended before {target} matrices"
        proc.kill()
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        stored.append(_count(home, count))
        kept.append(rows())
    assert 0 < stored[-1] < 21
    os.environ["T2_HOME"] = str(home)  # monkeypatched back by the autouse fixture's teardown
    result = CliRunner().invoke(app, ["decompose", str(tiny_llama), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # A kill is recovered when the next command kept every matrix it had committed (same rows, not
    # recomputed) and stored more; the rerun must end with all 21.
    tried = len(kept)
    later = [*kept[1:], rows() if _count(home, count) == 21 else set()]
    recovered = sum(before < after for before, after in zip(kept, later))
    assert recovered == tried, (stored, summary)
    assert summary["num_matrices"] == 21 and summary["computed"] == 21 - stored[-1]
    _assert_clean(home)
    with capsys.disabled():
        print(
            f"\n[reliability] decompose kill -9 (seed {SEED + 1}): killed with {stored} of 21 matrices stored: "
            f"{tried} tried, {recovered} recovered"
        )


def test_kill9_during_cem_search_leaves_the_registry_unchanged_and_a_rerun_matches(
    tiny_llama: Path, tmp_path: Path, capsys
) -> None:
    """CEM has no checkpoint: a killed search must leave nothing behind, and a rerun (same seed) gives
    the mixture an uninterrupted search gives."""
    from sqlalchemy import select

    from registry import Registry
    from registry.schema import Expert
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.expert import load_expert
    from tests.expert_factory import make_expert

    shots = tmp_path / "digits.jsonl"
    shots.write_text(
        "".join(json.dumps({"prompt": f"Say {i}.", "answer": str(i), "kind": "number"}) + "\n" for i in range(6))
    )
    args = [
        "adapt",
        "--fewshot",
        str(shots),
        "--task",
        "digits",
        "--model",
        str(tiny_llama),
        "--device",
        "cpu",
        "--population",
        "4",
        "--generations",
        "3",
        "--max-new-tokens",
        "2",
        "--name",
        "mixed",
    ]

    def prepare(home: Path) -> None:
        with Registry.open(home) as registry:
            adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
            for seed, name in enumerate(("alpha", "beta")):
                make_expert(registry, adaptable, name, seed=100 + seed, scale=0.5)

    reference, home = tmp_path / "reference", tmp_path / "killed"
    for h in (reference, home):
        prepare(h)
    proc = _start(reference, args)
    proc.join(JOIN_S)
    assert proc.exitcode == 0
    with Registry.open(reference) as registry:
        reference_z = load_expert(registry, "mixed").z

    rng = random.Random(SEED + 2)
    points = sorted(rng.sample(range(1, 12), 2))  # 4 x 3 = 12 candidates scored in a full search
    unchanged = []  # per kill: the registry holds the same experts and blobs as before the killed search
    for k in points:
        shutil.rmtree(home / "cem-marks", ignore_errors=True)
        experts_before = _count(home, "SELECT count(*) FROM experts")
        blobs_before = sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file())
        proc = _start(home, args, "slow-fitness")
        reached = _wait_until(
            proc, lambda: len(list((home / "cem-marks").glob("*"))) >= k if (home / "cem-marks").is_dir() else False
        )
        assert reached, f"the search ended before candidate {k}"
        proc.kill()
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        unchanged.append(
            _count(home, "SELECT count(*) FROM experts") == experts_before  # nothing half-registered
            and sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file()) == blobs_before
        )
    shutil.rmtree(home / "cem-marks", ignore_errors=True)
    proc = _start(home, args)
    proc.join(JOIN_S)
    assert proc.exitcode == 0
    with Registry.open(home) as registry:
        z = load_expert(registry, "mixed").z
        with registry.session(readonly=True) as session:
            assert sorted(session.scalars(select(Expert.name))) == ["alpha", "beta", "mixed"]
    max_diff = max(float((z[name] - reference_z[name]).abs().max()) for name in z)
    # CEM keeps no checkpoint: a kill is recovered when it left the registry as it was and the rerun
    # gives the reference mixture.
    tried, recovered = len(unchanged), sum(unchanged) if max_diff <= 1e-6 else 0
    assert recovered == tried, (unchanged, max_diff)
    _assert_clean(home)
    with capsys.disabled():
        print(
            f"\n[reliability] adapt (CEM) kill -9 (seed {SEED + 2}): killed after candidates {points}: "
            f"{tried} tried, {recovered} recovered (registry unchanged, rerun max |z - z_ref| = {max_diff:.1e})"
        )


def test_the_same_z_always_gives_the_same_blob(tmp_path: Path) -> None:
    """safetensors writes its metadata in hash-map order; save_z's bytes must not depend on it."""
    import hashlib

    from t2cli.svf.expert import save_z

    z = {f"model.layers.{i}.mlp.down_proj": torch.linspace(0, 1, 8) * i for i in range(4)}
    digests = set()
    for i in range(20):
        path = tmp_path / f"{i}.safetensors"
        save_z(z, path, name="same")
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
