"""bench/memory_plan.py --vlm: LLaVA-NeXT-8B's shapes add up, and docs/vlm.md shows the table the script prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import memory_plan

REPO = Path(__file__).resolve().parents[1]


def test_llava_next_8b_shapes_add_up() -> None:
    vlm = memory_plan.LLAVA_NEXT_8B
    # Llama-3-8B with the padded vocabulary, CLIP ViT-L/14-336 (~304M), a ~21M projector.
    assert vlm.language.total_params() == pytest.approx(8.03e9, rel=1e-3)
    assert vlm.vision.total_params() == pytest.approx(303.5e6, rel=1e-3)
    assert vlm.vision.tokens_per_tile == 577 and vlm.image_tokens == 2928
    _, rows = memory_plan.vlm_plan(vlm, vision=True, micro_batch=1, gen_batch=1)
    _, without = memory_plan.vlm_plan(vlm, vision=False, micro_batch=1, gen_batch=1)
    with_tower, lm_only = dict((r[0], r[1]) for r in rows), dict((r[0], r[1]) for r in without)
    tower = "+ loss activations per sequence, vision tower"
    assert lm_only[tower] == 0 < with_tower[tower]  # recorded for backward only when the tower is targeted
    assert with_tower["resident during a step (no activations)"] > lm_only["resident during a step (no activations)"]


def test_docs_show_the_table_the_script_prints(capsys) -> None:
    memory_plan.print_vlm(memory_plan.LLAVA_NEXT_8B, micro_batch=16, gen_batch=64)
    printed = {
        cells[1]: cells[2:4]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.split("|")]) > 4
    }
    docs = (REPO / "docs" / "vlm.md").read_text()
    section = docs[docs.index("## Memory plan for LLaVA-NeXT-8B") : docs.index("## The GPU script")]
    shown = 0
    for line in section.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if line.startswith("| ") and len(cells) > 3 and cells[1] in printed:
            assert cells[2:4] == printed[cells[1]], cells[1]
            shown += 1
    assert shown >= 10


def test_sharding_splits_the_language_model_and_replicates_the_image_side() -> None:
    vlm = memory_plan.LLAVA_NEXT_8B
    plans = {n: dict((r[0], r[1]) for r in memory_plan.vlm_sharded_plan(vlm, n)) for n in (1, 2, 8)}
    image_side = "vision tower + projector, bf16, replicated"
    resident = "resident during a step per rank (no activations)"
    # The tower + projector (~325M parameters) is whole on every rank, whatever the ranks.
    assert all(p[image_side] == pytest.approx(0.605, abs=0.01) for p in plans.values())
    assert plans[1][resident] > plans[2][resident] > plans[8][resident]
    # One rank holds what the unsharded plan holds minus the composed copies FSDP does without (W' is the live
    # weight): never more than the unsharded resident.
    _, unsharded = memory_plan.vlm_plan(vlm, vision=False, micro_batch=1, gen_batch=1)
    assert plans[1][resident] < dict((r[0], r[1]) for r in unsharded)["resident during a step (no activations)"]


def test_docs_show_the_sharded_table_the_script_prints(capsys) -> None:
    memory_plan.print_vlm(memory_plan.LLAVA_NEXT_8B, micro_batch=16, gen_batch=64)
    out = capsys.readouterr().out
    printed = out[out.index("| LLaVA-NeXT-8B, --shard fsdp") :].splitlines()
    rows = {cells[1]: cells[2:5] for line in printed[2:] if len(cells := [c.strip() for c in line.split("|")]) > 5}
    docs = (REPO / "docs" / "vlm.md").read_text()
    section = docs[docs.index("| LLaVA-NeXT-8B, --shard fsdp") : docs.index("## The GPU script")]
    shown = [[c.strip() for c in line.split("|")] for line in section.splitlines()[2:] if line.startswith("| ")]
    assert len(shown) == len(rows) == 6
    for cells in shown:
        assert cells[2:5] == rows[cells[1]], cells[1]
