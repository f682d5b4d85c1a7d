"""bench/serve.py: its percentiles, request plan and table from measured runs (no model, no server)."""

from __future__ import annotations

import pytest
from rich.console import Console

from bench.serve import BASE, COLUMNS, PROMPTS, Answer, Run, percentile, plan_requests, render


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0


def test_requests_cycle_over_the_weights_and_prompts() -> None:
    plan = plan_requests(14, [BASE, "a", "b"])
    assert [r.weights for r in plan[:4]] == [BASE, "a", "b", BASE]
    assert {r.prompt for r in plan} == set(PROMPTS)
    assert {(r.weights, r.prompt) for r in plan} >= {(BASE, PROMPTS[0]), ("a", PROMPTS[1]), ("b", PROMPTS[2])}


def _run(setup: str, clients: int, wall: float, seconds: list[float], text: str = "x") -> Run:
    answers: list[Answer | None] = [Answer(s, 8, text) for s in seconds]
    return Run(
        setup,
        clients,
        wall,
        answers,
        batches=2,
        batch_rows=4,
        decode_steps=10,
        decode_step_rows=25,
        switch_s=0.01,
        generate_s=0.99,
    )


def test_the_table_puts_the_ratios_side_by_side() -> None:
    baseline = Run("t2 ask, one at a time", 1, 8.0, [Answer(s, 8, "x") for s in (1.0, 2.0, 2.0, 4.0)])
    on = _run("t2 serve, continuous", 4, 2.0, [1.0, 1.0, 2.0, 4.0])
    off = _run("t2 serve, batching off", 4, 4.0, [1.0, 1.0, 1.0, 1.0], text="y")
    console = Console(width=200, record=True)
    console.print(render([baseline, on, off], baseline, 4, "title"))
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in console.export_text().splitlines()
        if line.startswith("│")
    }
    on_row = dict(zip(COLUMNS[1:], rows["t2 serve, continuous"]))
    assert on_row["req/s"] == "2.00" and on_row["tok/s"] == "16.0"
    assert on_row["req/s vs ask"] == "4.00x" and on_row["vs off"] == "2.00x"
    assert on_row["p95 vs alone"] == "1.85x"  # p95 3.7 s against one at a time's p50 of 2 s
    assert on_row["p95 vs alone p95"] == "1.00x"  # ... and against its p95, also 3.7 s
    assert on_row["rows/step"] == "2.5" and on_row["switching"] == "1.00%" and on_row["same"] == "4/4"
    assert dict(zip(COLUMNS[1:], rows["t2 serve, batching off"]))["same"] == "0/4"
