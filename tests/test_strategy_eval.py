"""`t2 eval --strategy`: pass 1 per item, pass 2 batched per decision, the same answers as a direct eval."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from t2cli.ask.evaluation import evaluate_strategy
from t2cli.cli.app import app
from t2cli.eval.accuracy import evaluate
from t2cli.home import open_registry
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import load_expert
from t2cli.tasks import get_task
from tests.ask_support import add_expert, write_task


def test_a_fixed_expert_strategy_answers_exactly_like_evaluating_the_expert(tiny_llama: Path, tmp_path: Path) -> None:
    task = get_task(str(write_task(tmp_path / "sums.jsonl", "What is 1 plus", n=16)))
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        add_expert(registry, adaptable, "m", category="math", seed=1)
        direct = evaluate(
            registry,
            adaptable,
            task,
            expert="m",
            z=load_expert(registry, "m").z,
            split="train",
            max_new_tokens=5,
            record=False,
        )
        routed = evaluate_strategy(
            registry, task, "expert:m", model=str(tiny_llama), split="train", max_new_tokens=5, device="cpu"
        )
        base = evaluate_strategy(  # on the model loaded above: no second load
            registry, task, "none", adaptable=adaptable, split="train", max_new_tokens=5, record=False
        )
        direct_base = evaluate(registry, adaptable, task, split="train", max_new_tokens=5, record=False)
    assert routed.routing == {"m": 12} and base.routing == {"base": 12}
    assert [s["completion"] for s in base.samples] == [s["completion"] for s in direct_base.samples]
    assert [s["completion"] for s in routed.samples] == [s["completion"] for s in direct.samples]
    assert [s["completion"] for s in base.samples] != [s["completion"] for s in routed.samples]
    assert routed.correct == direct.correct and routed.n == 12


def test_eval_strategy_cli_stores_the_routing_and_refuses_two_modes(tiny_llama: Path, tmp_path: Path) -> None:
    task = str(write_task(tmp_path / "sums.jsonl", "What is 1 plus"))
    with open_registry() as registry:
        add_expert(registry, load_adaptable(registry, str(tiny_llama), device="cpu"), "m", category="math", seed=1)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "eval",
            "--task",
            task,
            "--strategy",
            "expert:m",
            "--model",
            str(tiny_llama),
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["strategy"] == "expert:m" and data["routing"] == {"m": 2} and data["n"] == 2
    from sqlalchemy import select

    from registry.schema import Evaluation

    with open_registry() as registry, registry.session(readonly=True) as session:
        configs = [json.loads(c) for c in session.scalars(select(Evaluation.config_json)).all()]
    assert [c["strategy"] for c in configs] == ["expert:m"] and configs[0]["routing"] == {"m": 2}
    both = runner.invoke(app, ["eval", "--task", task, "--strategy", "none", "--base"])
    assert both.exit_code == 2 and "exactly one of" in both.output
    unknown = runner.invoke(app, ["eval", "--task", task, "--strategy", "magic", "--model", str(tiny_llama)])
    assert unknown.exit_code == 2 and "unknown strategy 'magic'" in unknown.output
