"""`t2 eval --strategy` and `t2 adapt` on image tasks: pass 1, pass 2 and the few-shot fitness see the pictures.

A tiny random LLaVA with two category experts (m, c) and a router over them (tests/ask_support.py);
the `shapes` task's test items each show one picture.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from t2cli.adapt.cem import fewshot_fitness
from t2cli.ask import strategies
from t2cli.ask.evaluation import evaluate_strategy
from t2cli.cli.app import app
from t2cli.eval.accuracy import evaluate
from t2cli.router.store import register_router
from t2cli.router.train import select_experts, train_router
from t2cli.tasks import get_task
from t2cli.tasks.types import TaskItem
from tests.ask_support import math_and_code_experts, registry_snapshot

runner = CliRunner()
N = 6  # test items of shapes


@dataclass(frozen=True)
class Picture:
    """Stands for an item's picture: a white square, or seeded noise (a random model barely looks at a clean
    drawing; noise against white moves it, as in tests/test_ask_images.py)."""

    source: str
    noise: bool

    def open(self) -> Image.Image:
        if not self.noise:
            return Image.new("RGB", (96, 96), "white")
        pixels = torch.randint(0, 256, (96, 96, 3), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
        return Image.fromarray(pixels.numpy())


def _shown_over(item: TaskItem, *, noise: bool) -> TaskItem:
    return dataclasses.replace(item, images=tuple(Picture(i.source, noise) for i in item.images))


@pytest.fixture
def llava_bank(tiny_vlm_dirs: dict[str, Path], tmp_path: Path):
    """A tiny LLaVA with experts m (math) and c (code) and a router r1 over them, in the test's registry."""
    model = tiny_vlm_dirs["llava"]
    with math_and_code_experts(model, tmp_path) as (registry, adaptable, zs, _):
        experts = select_experts(registry, adaptable.base_model_id, None)
        router = train_router(
            registry, adaptable, name="r1", experts=experts, per_class={"train": 16, "valid": 4}, pool="expert"
        ).router
        register_router(registry, router, base_model_id=adaptable.base_model_id)
        yield registry, adaptable, zs, model


def test_strategy_none_answers_each_item_as_the_base_evaluation_does_with_its_picture(llava_bank) -> None:
    registry, adaptable, _, _ = llava_bank
    task = get_task("shapes")
    base = evaluate(registry, adaptable, task, limit=N, record=False, max_new_tokens=6)
    none = evaluate_strategy(registry, task, "none", adaptable=adaptable, limit=N, max_new_tokens=6, record=False)
    assert none.routing == {"base": N}
    assert [row["completion"] for row in none.samples] == [row["completion"] for row in base.samples]


@pytest.mark.parametrize("strategy", ["router", "router-soft", "prompt"])
def test_pass_1_of_every_strategy_sees_each_items_pictures(
    llava_bank, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, adaptable, _, _ = llava_bank
    task = get_task("shapes")
    seen: list[list[tuple[int, int]]] = []
    real = strategies.run_dispatch

    def spy(dispatcher, prompt, *, images=()):
        seen.append([image.size for image in images])
        return real(dispatcher, prompt, images=images)

    monkeypatch.setattr("t2cli.ask.engine.run_dispatch", spy)
    result = evaluate_strategy(
        registry, task, strategy, adaptable=adaptable, limit=N, max_new_tokens=6, record=False, router="r1"
    )
    assert result.n == N and sum(result.routing.values()) == N
    # One call per item, each with that item's one 96 x 96 picture.
    assert seen == [[(96, 96)]] * N


def test_fewshot_fitness_scores_the_shots_with_their_pictures(llava_bank) -> None:
    _, adaptable, zs, _ = llava_bank
    task = get_task("shapes")
    items = task.split("train")[:4]
    base, correct = fewshot_fitness(adaptable, task, items, None, max_new_tokens=6, batch_size=2)
    again, _ = fewshot_fitness(adaptable, task, items, None, max_new_tokens=6, batch_size=4)
    assert base.loglik == pytest.approx(again.loglik, abs=1e-5) and len(correct) == 4  # micro-batches agree
    white, noise = (
        fewshot_fitness(adaptable, task, [_shown_over(i, noise=n) for i in items], None, max_new_tokens=6)[0]
        for n in (False, True)
    )
    # The gold answers are scored against the pictures: another picture moves the mean log-likelihood by
    # ~2e-3 on this random model, far past the micro-batches' float noise (~1e-7).
    assert abs(white.loglik - noise.loglik) > 5e-4
    expert, _ = fewshot_fitness(adaptable, task, items, zs["m"], max_new_tokens=6)
    assert expert.loglik != base.loglik
    assert all(torch.equal(p, q) for p, q in zip(adaptable.model.parameters(), adaptable.model.parameters()))


def test_eval_strategy_and_adapt_on_shapes_through_the_cli(llava_bank) -> None:
    _, _, _, model = llava_bank
    result = runner.invoke(
        app,
        ["eval", "--task", "shapes", "--strategy", "router", "--router", "r1", "--model", str(model)]
        + ["--limit", str(N), "--max-new-tokens", "6", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n"] == N and data["strategy"] == "router" and sum(data["routing"].values()) == N

    adapted = runner.invoke(
        app,
        ["adapt", "--task", "shapes", "--experts", "m,c", "--model", str(model), "--shots", "3"]
        + ["--population", "2", "--generations", "1", "--max-new-tokens", "6", "--name", "shapes-cem", "--json"],
    )
    assert adapted.exit_code == 0, adapted.output
    mixture = json.loads(adapted.stdout)
    assert mixture["name"] == "shapes-cem" and len(mixture["shots"]) == 3 and mixture["experts"] == ["m", "c"]


@pytest.mark.parametrize(
    "command",
    [["eval", "--task", "shapes", "--strategy", "none"], ["adapt", "--task", "shapes"]],
    ids=["eval-strategy", "adapt"],
)
def test_an_image_task_on_a_text_model_is_refused_in_one_line(
    command: list[str], tiny_llama: Path, t2_home: Path, tmp_path: Path
) -> None:
    with math_and_code_experts(tiny_llama, tmp_path):
        pass
    before = registry_snapshot(t2_home)
    result = runner.invoke(app, [*command, "--model", str(tiny_llama)])
    assert result.exit_code == 1, result.output
    error_lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1, result.output
    assert "task 'shapes' shows images, but" in error_lines[0] and "is a text-only model" in error_lines[0]
    assert registry_snapshot(t2_home) == before  # nothing written
