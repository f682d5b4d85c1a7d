"""`t2 train --json` as a stream, the budget warning, `t2 experts tag`, `t2 runs rm` and `t2 db gc` of run folders."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t2cli.cli.app import app

runner = CliRunner()


def t2(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture()
def sums_file(tmp_path: Path) -> Path:
    rng = random.Random(0)
    path = tmp_path / "sums.jsonl"
    lines = []
    for i in range(12):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        split = "train" if i < 8 else "valid" if i < 10 else "test"
        lines.append(json.dumps({"prompt": f"{a}+{b}=?", "answer": str(a + b), "kind": "number", "split": split}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(tiny_llama: Path, sums_file: Path, name: str, *extra: str, budget: int = 3):
    return t2(
        "train",
        "--task",
        str(sums_file),
        "--model",
        str(tiny_llama),
        "--name",
        name,
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--samples-per-prompt",
        "2",
        "--eval-every",
        "1",
        "--valid-size",
        "2",
        "--max-new-tokens",
        str(budget),
        "--batch-size",
        "4",
        "--micro-batch",
        "4",
        "--device",
        "cpu",
        *extra,
    )


@pytest.fixture()
def trained(tiny_llama: Path, sums_file: Path):
    result = _train(tiny_llama, sums_file, "sums-v1", "--json")
    assert result.exit_code == 0, result.output
    return result


def test_train_json_is_one_line_per_step_then_the_result(trained) -> None:
    events = [json.loads(line) for line in trained.stdout.strip().splitlines()]
    assert [e["event"] for e in events] == ["step", "step", "result"]
    assert [e["step"] for e in events[:2]] == [1, 2]
    for step in events[:2]:
        assert {"reward", "accuracy", "loss", "valid_accuracy", "at_budget", "seconds"} <= set(step)
    assert {"run_id", "expert", "best_step", "best_valid_accuracy", "base_valid_accuracy"} <= set(events[-1])
    assert events[-1]["expert"] == "sums-v1"


def test_train_warns_once_when_most_rollouts_hit_a_long_budget(
    trained, tiny_llama: Path, sums_file: Path, monkeypatch
) -> None:
    # A random tiny model rarely stops within 3 tokens: every rollout runs to the budget.
    steps = [json.loads(line) for line in trained.stdout.strip().splitlines()][:-1]
    assert [s["at_budget"] for s in steps] == [1.0, 1.0]
    assert "budget" not in trained.stderr  # 3 tokens is a short budget: cut answers cost little

    import t2cli.train.loop

    monkeypatch.setattr(t2cli.train.loop, "LONG_BUDGET", 2)  # now 3 tokens counts as long
    result = _train(tiny_llama, sums_file, "sums-long", "--json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "budget" in line]
    assert warnings == [  # once, at the first step, not at every step
        "warning: step 1: 4 of 4 rollouts ran to the 3-token budget (slow steps); "
        "pass --max-new-tokens N or set max_new_tokens in the task file"
    ]


def test_experts_tag_adds_and_removes(trained) -> None:
    added = t2("experts", "tag", "sums-v1", "reviewed", "arith", "reviewed")
    assert added.exit_code == 0, added.output
    assert "tags now: arith, reviewed" in added.stdout
    shown = json.loads(t2("experts", "show", "sums-v1", "--json").stdout)
    assert sorted(shown["tags"]) == ["arith", "reviewed"]
    removed = json.loads(t2("experts", "tag", "sums-v1", "reviewed", "--remove", "--json").stdout)
    assert removed == {"expert": "sums-v1", "tags": ["arith"], "added": [], "removed": ["reviewed"]}
    assert "tags: arith" in t2("experts", "show", "sums-v1").stdout

    bad = t2("experts", "tag", "sums-v1", "two words")
    assert bad.exit_code == 2 and "invalid tag 'two words'" in bad.stderr
    unknown = t2("experts", "tag", "sums-v2", "x")
    assert unknown.exit_code == 1 and "did you mean 'sums-v1'?" in unknown.stderr


def test_runs_rm_removes_the_run_and_its_folder_and_keeps_the_expert(trained, t2_home: Path) -> None:
    run_id = json.loads(trained.stdout.strip().splitlines()[-1])["run_id"]
    folder = t2_home / "runs" / run_id
    assert folder.is_dir()
    result = t2("runs", "rm", run_id, "--yes", "--json")
    assert result.exit_code == 0, result.output
    removed = json.loads(result.stdout)
    assert removed["run_id"] == run_id and removed["expert"] == "sums-v1" and removed["metric_rows"] > 0
    assert not folder.exists()
    assert json.loads(t2("runs", "list", "--json").stdout) == {"runs": []}
    assert json.loads(t2("experts", "show", "sums-v1", "--json").stdout)["name"] == "sums-v1"
    again = t2("runs", "rm", run_id, "--yes")
    assert again.exit_code == 1 and f"no training run {run_id!r}" in again.stderr


def test_runs_rm_refuses_a_run_being_trained(trained, t2_home: Path) -> None:
    from t2cli.train.run_lock import hold_run_lock

    run_id = json.loads(trained.stdout.strip().splitlines()[-1])["run_id"]
    folder = t2_home / "runs" / run_id
    with hold_run_lock(folder, run_id):  # what a training process holds
        result = t2("runs", "rm", run_id, "--yes")
    assert result.exit_code == 1 and "is being trained by another process" in result.stderr
    assert folder.is_dir() and len(json.loads(t2("runs", "list", "--json").stdout)["runs"]) == 1


def test_db_gc_removes_orphan_run_folders_and_dry_run_removes_nothing(trained, t2_home: Path) -> None:
    from t2cli.train.run_lock import hold_run_lock

    run_id = json.loads(trained.stdout.strip().splitlines()[-1])["run_id"]
    orphan = t2_home / "runs" / "run-20260101-000000-dead"
    (orphan / "checkpoint").mkdir(parents=True)
    starting = t2_home / "runs" / "run-20260101-000000-live"
    starting.mkdir()

    with hold_run_lock(starting, "live"):  # a run whose row is not written yet: its process holds the lock
        dry = t2("db", "gc", "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert f"would remove run folder {orphan}" in dry.stdout and "live" not in dry.stdout
        assert orphan.is_dir()
        result = json.loads(t2("db", "gc", "--json").stdout)
    assert result["run_folders"] == [str(orphan)] and result["dry_run"] is False
    assert not orphan.exists() and starting.is_dir() and (t2_home / "runs" / run_id).is_dir()


def test_eval_and_runs_show_json_are_one_object(trained, tiny_llama: Path, sums_file: Path) -> None:
    result = t2(
        "eval", "--task", str(sums_file), "--expert", "sums-v1", "--limit", "2", "--max-new-tokens", "2", "--json"
    )
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    data = json.loads(line)
    assert {"task", "split", "expert", "n", "correct", "accuracy", "ci_low", "ci_high", "seconds"} <= set(data)
    assert data["n"] == 2 and data["expert"] == "sums-v1"
    run_id = json.loads(trained.stdout.strip().splitlines()[-1])["run_id"]
    (shown,) = t2("runs", "show", run_id, "--json").stdout.strip().splitlines()
    run = json.loads(shown)
    assert {"run_id", "task", "status", "expert", "config", "metrics"} <= set(run) and run["status"] == "finished"
    listed = json.loads(t2("runs", "list", "--json").stdout)["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
