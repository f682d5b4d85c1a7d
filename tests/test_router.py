"""The learned router: features, fitting, storage, staleness, soft weights, and `--strategy router[-soft]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from registry.queries import routers as router_rows
from t2cli.ask.engine import Asker, AskSettings
from t2cli.ask.strategies import DispatchError
from t2cli.cli.app import app
from t2cli.router.features import decoder_layers, prompt_features
from t2cli.router.model import CONFIG_FILE, WEIGHTS_FILE, Router, RouterError, read_router, soft_weights
from t2cli.router.store import load_router, register_router, stale_reason
from t2cli.router.train import select_experts, train_router
from tests.ask_support import add_expert, math_and_code_experts

runner = CliRunner()
SMALL = {"train": 16, "valid": 4}


def _error_line(result) -> str:
    text = result.stderr
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, text
    return text


@pytest.fixture()
def env(tiny_llama: Path, tmp_path: Path):
    with math_and_code_experts(tiny_llama, tmp_path) as (registry, adaptable, zs, tasks):
        yield registry, adaptable, zs, tasks


def _trained(registry, adaptable, name: str = "r1") -> Router:
    experts = select_experts(registry, adaptable.base_model_id, None)
    # pool="expert": these tests separate the fixture's two custom tasks (tests/test_router_data.py covers the pool)
    router = train_router(registry, adaptable, name=name, experts=experts, per_class=SMALL, pool="expert").router
    register_router(registry, router, base_model_id=adaptable.base_model_id)
    return router


# --------------------------------------------------------------------------- features


def test_features_stop_at_the_deepest_layer_and_match_the_full_forward(env) -> None:
    _, adaptable, _, _ = env
    model, tokenizer = adaptable.model, adaptable.tokenizer
    prompts = ["What is 1 plus 2?", "Write a function that adds two numbers and returns the sum."]
    full = [model(input_ids=torch.tensor([tokenizer(t)["input_ids"]]), output_hidden_states=True) for t in prompts]
    hooks_before = [len(layer._forward_hooks) for layer in decoder_layers(model)]  # transformers keeps its own
    features = prompt_features(model, tokenizer, prompts, layers=[0, 1], pooling="mean", batch_size=8)
    for row, output in enumerate(full):
        hidden = output.hidden_states
        width = hidden[1].shape[-1]
        # hidden_states[i + 1] is the output of decoder layer i
        assert torch.allclose(features[row, :width], hidden[1][0].mean(0), atol=1e-5)
        assert torch.allclose(features[row, width:], hidden[2][0].mean(0), atol=1e-5)
    # batched with padding or alone: the same row; the hooks are gone afterwards
    alone = prompt_features(model, tokenizer, prompts[:1], layers=[0, 1], pooling="last")
    batched = prompt_features(model, tokenizer, prompts, layers=[0, 1], pooling="last")
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    assert [len(layer._forward_hooks) for layer in decoder_layers(model)] == hooks_before


# --------------------------------------------------------------------------- soft weights


def _toy_router(classes=("code", "math", "other"), experts=(("code", "c"), ("math", "m"))) -> Router:
    from t2cli.router.model import FeatureRecipe, RoutedExpert, RouterConfig
    from t2cli.svf.expert import BaseModelRef

    config = RouterConfig(
        name="toy",
        base_model=BaseModelRef(name="tiny", fingerprint="f" * 64),
        features=FeatureRecipe((0,), "mean"),
        classes=tuple(classes),
        experts=tuple(RoutedExpert(c, e, "0" * 64) for c, e in experts),
    )
    n = len(classes)
    return Router(config, torch.zeros(3), torch.ones(3), torch.eye(n, 3), torch.zeros(n))


def test_soft_weights_round_to_steps_that_sum_to_one_and_leave_other_to_the_base_weights() -> None:
    router = _toy_router()
    # code, math, other in twentieths: 10.2, 6.6, 3.2 -> 10, 6, 3, and the unit left goes to the largest remainder
    weights = soft_weights(router, [0.51, 0.33, 0.16])
    assert weights == {"c": 0.5, "m": 0.35}  # other's 0.15 is the base weights' share
    assert soft_weights(router, [0.51, 0.33, 0.16], top_k=1) == {"c": 1.0}
    assert soft_weights(router, [0.51, 0.33, 0.16], top_k=2) == {"c": 0.6, "m": 0.4}  # 12.14, 7.86 -> 12, 8
    assert soft_weights(router, [0.01, 0.01, 0.98]) == {}  # all base


def test_a_damaged_router_file_is_one_clear_error(tmp_path: Path) -> None:
    router = _toy_router()
    router.save(tmp_path)
    loaded = read_router(tmp_path / WEIGHTS_FILE, (tmp_path / CONFIG_FILE).read_text(), where="toy")
    assert torch.equal(loaded.coef, router.coef) and loaded.config == router.config
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(RouterError, match="cannot read"):
        read_router(tmp_path / WEIGHTS_FILE, (tmp_path / CONFIG_FILE).read_text(), where="toy")
    with pytest.raises(RouterError, match="not a valid router config"):
        read_router(tmp_path / WEIGHTS_FILE, '{"format": "t2-expert"}', where="toy")
    with pytest.raises(RouterError, match="shapes"):
        Router(router.config, torch.zeros(3), torch.ones(3), torch.eye(2, 3), torch.zeros(2))


# --------------------------------------------------------------------------- training, storage, staleness


def test_a_trained_router_is_registered_with_its_experts_and_reloads_identically(env) -> None:
    registry, adaptable, _, _ = env
    router = _trained(registry, adaptable)
    assert router.config.classes == ("code", "math", "other")
    assert {e.category: e.expert for e in router.config.experts} == {"code": "c", "math": "m"}
    assert 0.0 <= router.config.valid_accuracy <= 1.0
    record = router_rows.get(registry, "r1")
    again = load_router(registry, record)
    assert torch.equal(again.coef, router.coef) and again.config == router.config
    assert stale_reason(registry, again, adaptable.base_model_id) is None


def test_a_router_learns_to_separate_its_classes(env) -> None:
    """On the tiny random model the two tasks' templates differ in every token: the router must tell them apart."""
    registry, adaptable, _, _ = env
    router = _trained(registry, adaptable)
    probabilities = router.probabilities(
        prompt_features(
            adaptable.model,
            adaptable.tokenizer,
            ["What is 1 plus 11?", "Write a function number 11?"],
            layers=router.config.features.layers,
        )
    )
    classes = router.config.classes
    assert [classes[i] for i in probabilities.argmax(-1).tolist()] == ["math", "code"]


def test_adding_removing_or_retraining_an_expert_makes_the_router_stale(env) -> None:
    registry, adaptable, _, _ = env
    router = _trained(registry, adaptable)
    add_expert(registry, adaptable, "r", category="reasoning", task="arc-easy", seed=5)
    assert stale_reason(registry, router, adaptable.base_model_id) == "reasoning expert r was added"
    asker_settings = AskSettings(strategy="router", max_new_tokens=2)
    with pytest.raises(DispatchError, match="stale: reasoning expert r was added") as info:
        Asker(registry, asker_settings, adaptable=adaptable)
    assert "t2 router train --name r1 --replace" in info.value.hint
    from registry.queries import experts as expert_rows

    expert_rows.remove(registry, "r")
    assert stale_reason(registry, router, adaptable.base_model_id) is None
    add_expert(registry, adaptable, "m2", category="math", task="arithmetic", seed=6)
    assert stale_reason(registry, router, adaptable.base_model_id) == "math is now answered by m2, not m"


# --------------------------------------------------------------------------- pass 1 with the router


def test_router_strategies_answer_with_the_expert_or_the_mixture_they_chose(env) -> None:
    registry, adaptable, _zs, _ = env
    _trained(registry, adaptable)
    hard = Asker(registry, AskSettings(strategy="router", max_new_tokens=2), adaptable=adaptable)
    decision = hard.dispatch("What is 1 plus 11?")
    assert decision.choice == "m" and decision.weights == {"m": 1.0} and decision.category == "math"
    assert "router r1 (math" in decision.reason
    soft = Asker(
        registry, AskSettings(strategy="router-soft", router_temperature=50.0, max_new_tokens=2), adaptable=adaptable
    )
    mixed = soft.dispatch("What is 1 plus 11?")
    # a temperature of 50 flattens the probabilities: both experts and the base weights get a share
    assert set(mixed.weights) == {"m", "c"} and 0.5 < sum(mixed.weights.values()) < 0.8
    assert mixed.choice.startswith("mix[") and "base" in mixed.reason
    result = soft.ask("What is 1 plus 11?")
    assert result.weights == mixed.weights and adaptable.svf.active is None


def test_router_errors_are_one_line_and_exit_1(env, tiny_llama: Path) -> None:
    _registry, _adaptable, _, _ = env
    model = ["--model", str(tiny_llama), "--device", "cpu", "--max-new-tokens", "2"]
    no_router = runner.invoke(app, ["ask", "hi", "--strategy", "router", *model])
    assert no_router.exit_code == 1 and "no router is registered" in _error_line(no_router)
    missing = runner.invoke(app, ["ask", "hi", "--strategy", "router", "--router", "nope", *model])
    assert missing.exit_code == 1 and "no router named 'nope'" in _error_line(missing)
    bad_k = runner.invoke(app, ["ask", "hi", "--strategy", "router-soft", "--top-k", "0", *model])
    assert bad_k.exit_code == 2 and "--top-k must be at least 1" in _error_line(bad_k)


def test_cli_trains_lists_shows_and_removes_a_router(env, tiny_llama: Path) -> None:
    trained = runner.invoke(
        app, ["router", "train", "--model", str(tiny_llama), "--per-class", "16", "--device", "cpu", "--json"]
    )
    assert trained.exit_code == 0, trained.stderr
    config = json.loads(trained.stdout)["router"]
    assert config["name"] == "router" and config["classes"] == ["code", "math", "other"]
    assert config["command"].startswith("t2 router train")
    again = runner.invoke(app, ["router", "train", "--model", str(tiny_llama), "--per-class", "16"])
    assert again.exit_code == 1 and "already exists" in _error_line(again)
    listed = json.loads(runner.invoke(app, ["router", "list", "--json"]).stdout)["routers"]
    assert [(r["name"], r["stale"]) for r in listed] == [("router", None)]
    shown = json.loads(runner.invoke(app, ["router", "show", "router", "--json"]).stdout)
    assert shown["config"]["experts"][0]["expert"] == "c"
    removed = runner.invoke(app, ["router", "rm", "router", "--yes"])
    assert removed.exit_code == 0
    assert json.loads(runner.invoke(app, ["router", "list", "--json"]).stdout)["routers"] == []


def test_router_train_refuses_an_unknown_task_pool_or_excluded_task_with_exit_2(env, tiny_llama: Path) -> None:
    model = ["--model", str(tiny_llama), "--device", "cpu", "--per-class", "16"]
    bad_pool = runner.invoke(app, ["router", "train", *model, "--task-pool", "all"])
    assert bad_pool.exit_code == 2 and "unknown --task-pool 'all'" in _error_line(bad_pool)
    typo = runner.invoke(app, ["router", "train", *model, "--exclude-tasks", "arc-challenge,arithmetc"])
    assert typo.exit_code == 2 and "did you mean 'arithmetic'" in _error_line(typo)
    assert json.loads(runner.invoke(app, ["router", "list", "--json"]).stdout)["routers"] == []


def test_a_cli_router_records_its_task_pool_and_exclusions_in_its_rebuild_command(env, tiny_llama: Path) -> None:
    args = ["router", "train", "--model", str(tiny_llama), "--device", "cpu", "--per-class", "16", "--json"]
    trained = runner.invoke(app, [*args, "--task-pool", "expert", "--exclude-tasks", "mbpp"])
    assert trained.exit_code == 0, trained.stderr
    config = json.loads(trained.stdout)["router"]
    assert config["training"]["task_pool"] == "expert" and config["training"]["excluded_tasks"] == ["mbpp"]
    assert "--task-pool expert --exclude-tasks mbpp" in config["command"]
    assert config["training"]["sources"]["math"].startswith("tasks sums (train split")
