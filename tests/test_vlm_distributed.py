"""Data-parallel training on an image task (CPU, gloo): a tiny LLaVA on ``shapes`` as 2 processes trains the z of 1.

Each rank renders its own share of the step's prompts with their pictures, rolls them out and
scores them with those pictures; only the gradients of z are summed over ranks. The harness is
that of the text tests (tests/distributed_support.py): `t2 train` under `torchrun --standalone`,
and two spawned workers interrupted after step 2, each with a hard timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed_support import assert_resumes_in_one_process, assert_torchrun_trains_as_one_process, train_args


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_two_processes_train_the_z_of_one_on_shapes_and_only_rank_0_writes(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path, t2_home: Path
) -> None:
    model = tiny_vlm_dirs[family]
    # Greedy rollouts with the raw +/-1 reward: every rollout has a gradient, nothing is random. 4 prompts
    # per step: each rank renders, rolls out and scores 2 pictures.
    args = train_args(Path("shapes"), model, "shapes-dist", temperature=0.0, advantage="raw")
    args[args.index("--task") + 1] = "shapes"
    assert_torchrun_trains_as_one_process(args, tmp_path, t2_home, "shapes-dist")


def test_a_two_process_checkpoint_on_shapes_resumes_in_one_process(
    tiny_vlm_dirs: dict[str, Path], tmp_path: Path, t2_home: Path
) -> None:
    # Sampled rollouts (temperature 1), 5 pictures split 2 + 3 over the ranks; the raw reward gives every
    # rollout a gradient although a random model rarely names a shape right.
    assert_resumes_in_one_process(tiny_vlm_dirs["llava"], tmp_path, t2_home, task_name="shapes", advantage="raw")
