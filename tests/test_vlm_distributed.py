"""Data-parallel training on an image task (CPU, gloo): a tiny LLaVA on ``shapes`` as 2 processes trains the z of 1.

Each rank renders its own share of the step's prompts with their pictures, rolls them out and
scores them with those pictures; only the gradients of z are summed over ranks. The harness is
that of the text tests (tests/distributed_support.py): `t2 train` under `torchrun --standalone`,
and two spawned workers interrupted after step 2, each with a hard timeout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed_support import assert_resumes_in_one_process, assert_same_training, torchrun, train_args


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_two_processes_train_the_z_of_one_on_shapes_and_only_rank_0_writes(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path, t2_home: Path
) -> None:
    from typer.testing import CliRunner

    from registry import Registry
    from t2cli.cli.app import app
    from t2cli.train.runs import get_run

    model = tiny_vlm_dirs[family]
    # Greedy rollouts with the raw +/-1 reward: every rollout has a gradient, nothing is random. 4 prompts
    # per step: each rank renders, rolls out and scores 2 pictures.
    args = train_args(Path("shapes"), model, "shapes-dist", temperature=0.0, advantage="raw")
    args[args.index("--task") + 1] = "shapes"
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
    assert run.status == "finished" and run.expert == "shapes-dist"
    assert len(list((home2 / "runs").glob("*/checkpoint.safetensors"))) == 1


def test_a_two_process_checkpoint_on_shapes_resumes_in_one_process(
    tiny_vlm_dirs: dict[str, Path], tmp_path: Path, t2_home: Path
) -> None:
    # Sampled rollouts (temperature 1), 5 pictures split 2 + 3 over the ranks; the raw reward gives every
    # rollout a gradient although a random model rarely names a shape right.
    assert_resumes_in_one_process(tiny_vlm_dirs["llava"], tmp_path, t2_home, task_name="shapes", advantage="raw")
