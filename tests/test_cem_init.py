"""`t2 adapt --init router`: CEM starts from the learned router's class probabilities averaged over the shots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from registry.queries import routers as router_rows
from t2cli.adapt.cem import AdaptConfig, CEMConfig, adapt
from t2cli.adapt.start import (
    StartingMean,
    check_overlap,
    router_weights,
    start_tensor,
    uniform_start,
    usable_router,
)
from t2cli.cli.app import app
from t2cli.errors import UsageError
from t2cli.router.model import FeatureRecipe, RoutedExpert, Router, RouterConfig, RouterError
from t2cli.router.store import register_router
from t2cli.router.train import select_experts, train_router
from t2cli.svf.expert import BaseModelRef, load_expert
from t2cli.tasks import get_task
from tests.ask_support import add_expert, math_and_code_experts

runner = CliRunner()
SMALL = {"train": 16, "valid": 4}


@pytest.fixture()
def env(tiny_llama: Path, tmp_path: Path):
    """Experts m (math) and c (code) routed by router r1, and u, an expert with no category (not routed)."""
    with math_and_code_experts(tiny_llama, tmp_path) as (registry, adaptable, _zs, tasks):
        experts = select_experts(registry, adaptable.base_model_id, None)
        router = train_router(registry, adaptable, name="r1", experts=experts, per_class=SMALL).router
        register_router(registry, router, base_model_id=adaptable.base_model_id)
        add_expert(registry, adaptable, "u", category=None, seed=3)  # no category: the router stays current
        yield registry, adaptable, router, tasks


def _toy_router() -> Router:
    config = RouterConfig(
        name="toy",
        base_model=BaseModelRef(name="tiny", fingerprint="f" * 64),
        features=FeatureRecipe((0,), "mean"),
        classes=("code", "math", "other"),
        experts=(RoutedExpert("code", "c", "0" * 64), RoutedExpert("math", "m", "0" * 64)),
    )
    return Router(config, torch.zeros(3), torch.ones(3), torch.eye(3, 3), torch.zeros(3))


# --------------------------------------------------------------------------- the mapping rule


def test_routed_experts_get_their_class_mass_and_the_rest_goes_to_the_base_weights() -> None:
    start = router_weights(_toy_router(), [0.5, 0.3, 0.2], ["m", "x"])
    assert start.weights == (0.3, 0.0)  # m: math's mass; x is not routed to: 0
    assert start.unrouted == ("x",) and start.unsearched == {"code": 0.5}  # c is not searched: its mass is base
    assert start.base_share == pytest.approx(0.7)  # other 0.2 + code 0.5
    both = router_weights(_toy_router(), [0.5, 0.3, 0.2], ["c", "m"])
    assert both.weights == (0.5, 0.3) and both.base_share == pytest.approx(0.2) and both.unsearched == {}
    with pytest.raises(UsageError, match="none of them is among the experts to mix"):
        check_overlap(_toy_router(), ["x", "y"])
    assert uniform_start(["a", "b", "c", "d"]).weights == (0.25,) * 4 and uniform_start(["a", "b"]).base_share == 0.0


def test_per_matrix_search_starts_every_role_group_from_the_same_weights() -> None:
    start = StartingMean("router", ("a", "b"), (0.6, 0.1))
    flat = start_tensor(start, 3)
    assert flat.dtype == torch.float64 and flat.reshape(3, 2).tolist() == [[0.6, 0.1]] * 3
    assert start_tensor(start, None).tolist() == [0.6, 0.1]


# --------------------------------------------------------------------------- adapt from the router's start


def _expected_probabilities(adaptable, router: Router, prompts: list[str]) -> list[float]:
    """The router's probabilities averaged over the prompts, from plain forward hooks (no t2 features code)."""
    assert router.config.features.pooling == "mean"
    blocks = adaptable.model.model.layers
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        blocks[layer].register_forward_hook(
            lambda module, args, out, layer=layer: outputs.__setitem__(layer, out[0] if isinstance(out, tuple) else out)
        )
        for layer in router.config.features.layers
    ]
    rows = []
    try:
        for prompt in prompts:
            with torch.no_grad():
                adaptable.model(input_ids=torch.tensor([adaptable.tokenizer(prompt)["input_ids"]]))
            rows.append(torch.cat([outputs[layer][0].float().mean(0) for layer in router.config.features.layers]))
    finally:
        for hook in hooks:
            hook.remove()
    x = (torch.stack(rows) - router.mean) / router.scale
    return torch.softmax(x @ router.coef.T + router.intercept, dim=-1).mean(0).tolist()


def test_cem_starts_from_the_routers_mean_probabilities_and_records_them(env) -> None:
    registry, adaptable, router, tasks = env
    math_task, code_task = get_task(tasks["math"]), get_task(tasks["code"])
    items = math_task.split("train")[:3] + code_task.split("train")[:2]  # both kinds: neither class gets all
    expected = dict(zip(router.config.classes, _expected_probabilities(adaptable, router, [i.prompt for i in items])))
    assert 0.05 < expected["math"] < 0.95 and 0.05 < expected["code"] < 0.95
    experts = [load_expert(registry, name) for name in ("m", "c", "u")]
    # A starting std of 1e-9 samples the mean itself: the registered weights are where CEM started.
    config = AdaptConfig(
        name="mixed",
        task="sums",
        init="router",
        baselines=False,
        max_new_tokens=1,
        cem=CEMConfig(population=2, generations=1, init_std=1e-9),
    )
    result = adapt(registry, adaptable, math_task, items, experts, config)
    mixed = load_expert(registry, "mixed")
    want = [expected["math"], expected["code"], 0.0]
    assert mixed.config.parametrization["mixture"]["alphas"] == pytest.approx(want, abs=1e-6)
    recorded = mixed.config.training["init"]
    assert recorded == result.init
    assert recorded["init"] == "router" and recorded["router"] == "r1"
    assert recorded["router_sha256"] == router_rows.get(registry, "r1").blob_sha256
    assert recorded["experts"] == ["m", "c", "u"] and recorded["mean"] == pytest.approx(want)
    assert recorded["probabilities"] == pytest.approx(expected, abs=1e-5)
    assert recorded["base_share"] == pytest.approx(expected["other"], abs=1e-5)
    assert recorded["unrouted"] == ["u"] and recorded["unsearched"] == {} and "rule" in recorded
    assert "started from router r1" in mixed.config.description


def test_the_default_start_is_still_uniform_and_recorded(env) -> None:
    registry, adaptable, _router, tasks = env
    task = get_task(tasks["math"])
    experts = [load_expert(registry, name) for name in ("m", "c")]
    config = AdaptConfig(
        name="plain", task="sums", baselines=False, max_new_tokens=1, cem=CEMConfig(population=2, generations=1)
    )
    adapt(registry, adaptable, task, task.split("train")[:2], experts, config)
    assert load_expert(registry, "plain").config.training["init"] == {
        "init": "uniform",
        "experts": ["m", "c"],
        "mean": [0.5, 0.5],
        "base_share": 0.0,
    }


# --------------------------------------------------------------------------- refusals


def _refusal(result, exit_code: int, phrase: str) -> None:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.exit_code == exit_code, result.output
    assert lines[0].startswith("error: ") and phrase in lines[0], result.stderr
    assert len(lines) <= 2 and "Traceback" not in result.stderr
    assert "loading" not in result.stderr  # refused before the model is loaded


def test_router_start_refusals_are_one_line_before_the_model_loads(env, tiny_llama: Path) -> None:
    registry, adaptable, _router, tasks = env
    args = ["adapt", "--fewshot", tasks["math"], "--model", str(tiny_llama), "--device", "cpu"]
    args += ["--experts", "m,c"]

    def run(*extra: str):
        return runner.invoke(app, [*args, *extra])

    _refusal(run("--init", "magic"), 2, "unknown --init 'magic'")
    _refusal(run("--router", "r1"), 2, "--router r1 needs --init router")
    _refusal(run("--init", "router", "--router", "nope"), 1, "no router named 'nope'")
    add_expert(registry, adaptable, "u2", category=None, seed=4)
    no_overlap = runner.invoke(app, [*args[:-1], "u,u2", "--init", "router"])
    _refusal(no_overlap, 2, "routes to c, m; none of them is among the experts to mix (u, u2)")
    add_expert(registry, adaptable, "r", category="reasoning", task="arc-easy", seed=5)
    _refusal(run("--init", "router"), 1, "router 'r1' is stale: reasoning expert r was added")
    router_rows.remove(registry, "r1")
    _refusal(run("--init", "router"), 1, "no router is registered")


def test_a_router_of_another_base_model_is_refused(env) -> None:
    registry, adaptable, _router, _tasks = env
    with pytest.raises(RouterError, match="router 'r1' belongs to base model .*; the loaded model is other"):
        usable_router(registry, "r1", adaptable.base_model_id + 1, "other", ["m", "c"])
    sha, router = usable_router(registry, None, adaptable.base_model_id, "tiny", ["m", "c"])
    assert router.config.name == "r1" and sha == router_rows.get(registry, "r1").blob_sha256


def test_adapt_cli_with_the_router_start(env, tiny_llama: Path) -> None:
    _registry, _adaptable, _router, tasks = env
    result = runner.invoke(
        app,
        [
            "adapt",
            "--fewshot",
            tasks["math"],
            "--shots",
            "3",
            "--experts",
            "m,c",
            "--model",
            str(tiny_llama),
            "--device",
            "cpu",
            "--init",
            "router",
            "--population",
            "2",
            "--generations",
            "1",
            "--max-new-tokens",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "CEM started from the router r1 mean: m " in result.stdout


# --------------------------------------------------------------------------- bench/cem_init.py on the tiny model


def test_the_benchmark_runs_both_starts_at_each_seed_and_pairs_them(env, tiny_llama: Path, tmp_path: Path) -> None:
    import json

    from bench import cem_init
    from t2cli.eval.paired import paired

    _registry, _adaptable, _router, tasks = env
    out = tmp_path / "cem_init.json"
    args = ["--task", tasks["math"], "--experts", "m,c", "--model", str(tiny_llama), "--device", "cpu"]
    args += ["--seeds", "0,1", "--shots", "3", "--population", "2", "--generations", "2", "--limit", "2"]
    assert cem_init.main([*args, "--max-new-tokens", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    arms = {(arm["seed"], arm["init"]): arm for arm in data["arms"]}
    assert sorted(arms) == [(0, "router"), (0, "uniform"), (1, "router"), (1, "uniform")]
    assert arms[(0, "uniform")]["start"]["mean"] == [0.5, 0.5]
    assert arms[(0, "router")]["start"]["router"] == "r1" and arms[(0, "router")]["start"]["base_share"] > 0
    assert all(len(arm["generations"]) == 2 and len(arm["test_correct"]) == 2 for arm in arms.values())
    assert len(data["base_correct"]) == 2 and data["settings"]["population"] == 2
    rows = data["paired"]
    assert [(r["label"], r["new"], r["old"]) for r in rows] == [
        ("seed 0", "router", "uniform"),
        ("seed 0", "uniform", "base"),
        ("seed 0", "router", "base"),
        ("seed 1", "router", "uniform"),
        ("seed 1", "uniform", "base"),
        ("seed 1", "router", "base"),
        ("all 2 seeds (pooled)", "router", "uniform"),
    ]
    pooled = paired(
        arms[(0, "router")]["test_correct"] + arms[(1, "router")]["test_correct"],
        arms[(0, "uniform")]["test_correct"] + arms[(1, "uniform")]["test_correct"],
    )
    assert (rows[-1]["result"]["gains"], rows[-1]["result"]["losses"], rows[-1]["result"]["p"]) == (
        pooled.gains,
        pooled.losses,
        pooled.p,
    )
    vs_base = paired(arms[(1, "router")]["test_correct"], data["base_correct"])
    assert rows[5]["result"] == {"n": 2, "gains": vs_base.gains, "losses": vs_base.losses, "p": vs_base.p}


def test_the_benchmark_pairs_router_against_uniform_per_seed_and_pooled() -> None:
    from bench.cem_init import Arm, comparisons

    def arm(seed: int, init: str, correct: list[bool]) -> Arm:
        return Arm(seed, init, {}, [0.0, 0.0], [], [0.0, 0.0], [], correct, 0.0)

    arms = [
        arm(0, "uniform", [False, False, True, False]),
        arm(0, "router", [True, True, True, False]),
        arm(1, "uniform", [True, False, False, False]),
        arm(1, "router", [False, True, False, False]),
    ]
    rows = comparisons(arms, [False, False, False, True])
    first, pooled = rows[0], rows[-1]
    assert (first.new, first.old, first.result.gains, first.result.losses) == ("router", "uniform", 2, 0)
    assert first.new_accuracy == 0.75 and first.old_accuracy == 0.25
    assert (rows[2].new, rows[2].old, rows[2].result.gains, rows[2].result.losses) == ("router", "base", 3, 1)
    assert (pooled.result.n, pooled.result.gains, pooled.result.losses) == (8, 3, 1)
