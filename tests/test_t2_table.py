"""bench/t2_table.py: its statistics and the table it assembles from per-item results (no model loaded)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import t2_table
from bench.dispatch_accuracy import HANDWRITTEN, dispatched_category, expected_category, handwritten_questions
from bench.reporting import write_json
from bench.t2_table import (
    MIXTURE,
    Item,
    RowPlan,
    RowRun,
    best_single_expert,
    markdown_table,
    routing_counts,
    summarise,
)
from t2cli.ask.strategies import Dispatch
from t2cli.eval.paired import Paired
from t2cli.home import open_registry
from t2cli.router.store import register_router
from t2cli.router.train import select_experts, train_router
from t2cli.svf.adaptable import load_adaptable
from t2cli.tasks.dispatch_task import OTHER
from tests.ask_support import add_expert, math_and_code_experts


def test_routing_counts_most_first_and_mixtures_together() -> None:
    choices = ["arith", "base", "arith", "mix[arc=0.5,arith=0.5]", "mix[arc=0.4,arith=0.6]", "arc", "arith"]
    assert routing_counts(choices) == {"arith": 3, MIXTURE: 2, "arc": 1, "base": 1}
    assert list(routing_counts(["b", "a"])) == ["a", "b"]  # a tie reads alphabetically


# --------------------------------------------------------------------------- the table

ITEMS = [
    Item("arc-challenge", "reasoning", "a0"),
    Item("arc-challenge", "reasoning", "a1"),
    Item("arc-challenge", "reasoning", "a2"),
    Item("arc-challenge", "reasoning", "a3"),
    Item("arithmetic", "math", "m0"),
    Item("arithmetic", "math", "m1"),
]


def _run(name: str, kind: str, correct: list[bool], choices: list[str] | None = None, seconds: float = 0.0) -> RowRun:
    plan = RowPlan(name, f"row {name}", kind, dict.fromkeys(("arc-challenge", "arithmetic"), name))
    return RowRun(plan, correct, choices or [name] * len(correct), seconds)


def _runs() -> list[RowRun]:
    return [
        _run("base", "base", [False, False, True, False, True, False]),
        _run("expert:arc", "expert", [True, True, True, False, False, False]),  # 3 right
        _run("expert:arith", "expert", [False, False, True, False, True, True]),  # 3 right, listed later
        _run("expert:code", "expert", [False, False, False, False, True, False]),
        _run("router", "routed", [True, True, True, False, True, True], ["arc"] * 4 + ["arith", "base"], 0.6),
        RowRun(RowPlan("classifier", "", "routed", unavailable="not available (no dispatch classifier registered)")),
    ]


def test_the_best_single_expert_has_the_most_right_answers_and_the_first_listed_wins_a_tie() -> None:
    runs = _runs()
    assert best_single_expert(runs) is runs[1]
    runs[2].correct[0] = True  # expert:arith now has 4
    assert best_single_expert(runs) is runs[2]
    assert best_single_expert([runs[0], runs[4]]) is None


def test_summary_splits_by_family_and_pairs_each_row_with_base_and_the_best_expert() -> None:
    summary = summarise(ITEMS, _runs())
    rows = {row.name: row for row in summary.rows}
    assert summary.items == 6 and summary.families == {"reasoning": 4, "math": 2}
    assert summary.best_expert == "expert:arc"

    router = rows["router"]
    assert router.overall is not None and (router.overall.correct, router.overall.n) == (5, 6)
    assert {family: (acc.correct, acc.n) for family, acc in router.families.items()} == {
        "reasoning": (3, 4),
        "math": (2, 2),
    }
    assert router.overall.low < 5 / 6 < router.overall.high
    assert router.vs_base == Paired(6, 3, 0, 0.25)  # a0, a1 and m1 gained
    assert router.vs_best == Paired(6, 2, 0, 0.5)  # m0 and m1 gained against expert:arc
    assert router.routing == {"arc": 4, "arith": 1, "base": 1}
    assert router.pass1_s_per_item == pytest.approx(0.1)

    assert rows["base"].vs_base is None and rows["expert:arc"].vs_best is None  # nothing against itself
    assert rows["expert:arith"].vs_best == Paired(6, 2, 2, 1.0)
    assert rows["expert:arc"].routing is None and rows["expert:arc"].pass1_s_per_item is None  # not routed
    assert rows["expert:code"].families["reasoning"].correct == 0

    classifier = rows["classifier"]
    assert classifier.overall is None and classifier.unavailable == "not available (no dispatch classifier registered)"


def test_summary_refuses_a_row_with_results_for_other_items() -> None:
    runs = _runs()
    runs[4].correct.pop()
    with pytest.raises(ValueError, match="router has 5 results for 6 items"):
        summarise(ITEMS, runs)


def test_cells_and_markdown_show_every_row_and_the_unavailable_reason() -> None:
    summary = summarise(ITEMS, _runs())
    columns, cells = t2_table.main_columns(summary), t2_table.main_cells(summary)
    assert all(len(row) == len(columns) for row in cells)
    assert "reasoning (n=4)" in columns and "vs expert:arc: gains / losses" in columns
    router = next(row for row in cells if row[0] == "router")
    assert router[2:4] == ["83.3%", t2_table.interval(summary.rows[4].overall)] and "arc 4, arith 1, base 1" in router
    text = markdown_table(columns, cells)
    lines = text.splitlines()
    assert len(lines) == 2 + len(cells) and {line.count("|") for line in lines} == {len(columns) + 1}
    assert "| classifier | not available (no dispatch classifier registered) |" in text


def test_json_is_written_whole_through_a_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.json"
    write_json(target, {"rows": [1, 2]})
    assert json.loads(target.read_text()) == {"rows": [1, 2]}
    assert [p.name for p in target.parent.iterdir()] == ["table.json"]  # no temporary file left behind


# --------------------------------------------------------------------------- end to end, on a tiny random model


def test_the_script_measures_every_row_on_a_tiny_model_and_writes_its_json(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with math_and_code_experts(tiny_llama, tmp_path) as (registry, adaptable, _, tasks):
        experts = select_experts(registry, adaptable.base_model_id, None)
        router = train_router(registry, adaptable, name="r1", experts=experts, per_class={"train": 16, "valid": 4})
        register_router(registry, router.router, base_model_id=adaptable.base_model_id)
    out = tmp_path / "table.json"
    args = ["--model", str(tiny_llama), "--tasks", f"{tasks['math']},{tasks['code']}", "--per-task", "2"]
    options = ["--max-new-tokens", "3", "--device", "cpu", "--dispatch-limit", "4", "--markdown", "--json", str(out)]
    assert t2_table.main([*args, *options]) == 0
    printed = capsys.readouterr()
    assert "| row | what | accuracy (n=4) |" in printed.out and "| pass 1 | set | n |" in printed.out
    assert "┃" not in printed.out and "┃" in printed.err  # with --markdown the terminal tables go to stderr
    assert "note: expert m was trained on sums: those items are not held out" in printed.err
    data = json.loads(out.read_text())
    rows = {row["name"]: row for row in data["table"]["rows"]}
    assert list(rows) == ["base", "expert:c", "expert:m", "prompt", "classifier", "cem", "router", "router-soft"]
    assert [item["task"] for item in data["items"]] == ["sums", "sums", "funcs", "funcs"]
    assert all(len(data["per_item"][name]["correct"]) == 4 for name in rows if rows[name]["unavailable"] is None)
    assert rows["classifier"]["unavailable"] == "not available (no dispatch classifier registered)"
    assert "no CEM mixture for sums, funcs" in rows["cem"]["unavailable"]
    assert rows["base"]["overall"]["value"] == rows["base"]["overall"]["correct"] / 4
    assert sum(rows["router"]["routing"].values()) == 4 and rows["router"]["pass1_s_per_item"] > 0
    assert data["table"]["best_expert"] in ("expert:c", "expert:m")
    dispatch = {(row["strategy"], row["set_name"]): row for row in data["dispatch"]}
    assert dispatch["router", "dispatch test"]["score"]["n"] == 4
    assert dispatch["router", "dispatch test"]["right_category"]["n"] == 4
    assert dispatch["prompt", "hand-written"]["score"]["n"] == 64
    assert dispatch["classifier", "hand-written"]["score"] is None


def test_a_registry_without_experts_or_a_usable_router_is_one_line_and_exit_2(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert t2_table.main(["--model", str(tiny_llama), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no category experts are registered") and "`t2 train --task" in err
    assert len(err.splitlines()) == 1
    with math_and_code_experts(tiny_llama, tmp_path):
        pass
    assert t2_table.main(["--model", str(tiny_llama), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no router is registered") and "run `t2 router train`" in err
    assert len(err.splitlines()) == 1
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")  # experts m and c, from above
        experts = select_experts(registry, adaptable.base_model_id, None)
        router = train_router(registry, adaptable, name="r1", experts=experts, per_class={"train": 8, "valid": 2})
        register_router(registry, router.router, base_model_id=adaptable.base_model_id)
        add_expert(registry, adaptable, "r", category="reasoning", seed=3)  # the router does not know it
    assert t2_table.main(["--model", str(tiny_llama), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: router 'r1' is stale") and "`t2 router train --name r1 --replace`" in err
    assert len(err.splitlines()) == 1


def test_a_handwritten_class_without_an_expert_is_expected_to_go_to_the_base_weights() -> None:
    questions = handwritten_questions(HANDWRITTEN, {"math", "code"})
    assert len(questions) == 64
    assert Counter(category for _, category in questions) == {"math": 16, "code": 16, OTHER: 32}
    assert expected_category("reasoning", {"math", "reasoning"}) == "reasoning"
    assert dispatched_category(Dispatch("base", {}, "nothing readable")) == OTHER  # no category read: base weights
