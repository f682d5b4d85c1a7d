"""Typed configs: an expert's base model block, the training state, and the one base-model check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from t2cli.models.identity import ModelIdentity
from t2cli.models.resolve import ModelRef, model_argument
from t2cli.svf.expert import (
    BaseModelMismatch,
    BaseModelRef,
    ExpertConfig,
    base_model_argument,
    check_base_model,
)
from t2cli.train.loop import StepMetrics, TrainState

# expert_config.json as t2 wrote it before base_model was typed (keys sorted, two-space indent).
OLD_CONFIG = {
    "base_model": {
        "architecture": "LlamaForCausalLM",
        "fingerprint": "a" * 64,
        "location": "/models/tiny",
        "model_type": "llama",
        "name": "tiny",
        "num_layers": 2,
        "revision": None,
        "source": "local",
    },
    "category": "math",
    "created_at": "2026-11-30T10:00:00+00:00",
    "description": None,
    "format_version": 1,
    "kind": "trained",
    "metrics": {"valid_accuracy": 0.5},
    "name": "math-v1",
    "num_matrices": 14,
    "origin": {},
    "parametrization": {"stored": "effective_multiplier"},
    "parents": [],
    "t2_version": "0.1.0",
    "targets": "all",
    "task": "math",
    "training": {"run_id": "run-1"},
}


def _identity(fingerprint: str, name: str = "other", location: str = "/models/other") -> ModelIdentity:
    ref = ModelRef(name=name, source="local", location=location, path=Path(location))
    return ModelIdentity(ref, fingerprint, "LlamaForCausalLM", "llama", 2, 8, {})


def test_an_old_expert_config_loads_typed_and_writes_back_byte_identical() -> None:
    text = json.dumps(OLD_CONFIG, indent=2, sort_keys=True) + "\n"
    config = ExpertConfig.from_json(text)
    assert isinstance(config.base_model, BaseModelRef)
    assert config.base_model.fingerprint == "a" * 64 and config.base_model.num_layers == 2
    assert config.to_json() == text


def test_hub_id_is_written_only_when_set() -> None:
    base = BaseModelRef(name="tiny", fingerprint="a" * 64)
    assert "hub_id" not in base.to_dict()
    assert BaseModelRef.from_dict({**base.to_dict(), "hub_id": "org/tiny"}).to_dict()["hub_id"] == "org/tiny"


def test_unknown_base_model_keys_from_a_newer_t2_warn_and_are_dropped() -> None:
    data = {**OLD_CONFIG, "base_model": {**OLD_CONFIG["base_model"], "quantisation": "q4"}}
    with pytest.warns(UserWarning, match="quantisation"):
        config = ExpertConfig.from_json(json.dumps(data))
    assert "quantisation" not in json.loads(config.to_json())["base_model"]


def test_a_dict_base_model_is_still_accepted() -> None:
    config = ExpertConfig(name="x", base_model={"name": "tiny", "fingerprint": "b" * 64}, targets="all", num_matrices=1)  # type: ignore[arg-type]
    assert config.base_model == BaseModelRef(name="tiny", fingerprint="b" * 64)


def test_model_argument_is_the_alias_when_there_is_one_else_the_location() -> None:
    assert model_argument("smollm2-135m", "/somewhere") == "smollm2-135m"
    assert model_argument("tiny", "/models/tiny") == "/models/tiny"
    config = ExpertConfig.from_json(json.dumps(OLD_CONFIG))
    assert base_model_argument(config) == "/models/tiny"
    assert base_model_argument(config, "/given") == "/given"


def test_check_base_model_names_the_expert_both_models_and_the_fix() -> None:
    base = BaseModelRef(name="tiny", fingerprint="a" * 64, location="/models/tiny", source="local")
    check_base_model("math-v1", base, _identity("a" * 64))  # same weights: no error
    with pytest.raises(BaseModelMismatch) as info:
        check_base_model("math-v1", base, _identity("c" * 64))
    message = str(info.value)
    assert "expert 'math-v1' was made for tiny; the model found is other" in message
    assert "cccccccccccc" in message and "aaaaaaaaaaaa" in message
    assert "use --model /models/tiny" in message and "t2 transfer math-v1 --to /models/other" in message


def test_train_state_round_trips_and_keeps_the_checkpoint_json() -> None:
    metrics = StepMetrics(
        step=1, reward=0.5, accuracy=0.75, loss=0.1, grad_norm=1.0, lr=1e-3, tokens_per_s=9.0, seconds=2.0
    )
    state = TrainState(step=1, best_valid=0.5, best_step=1, base_valid=0.25, history=[metrics])
    text = state.to_json()
    old_style = {"step": 1, "best_valid": 0.5, "best_step": 1, "base_valid": 0.25, "history": [metrics.__dict__]}
    assert text == json.dumps(old_style, sort_keys=True)  # what checkpoints held when the state was a dict
    assert TrainState.from_json(text) == state
    assert (
        TrainState.from_json(
            json.dumps({"step": 0, "best_valid": -1.0, "best_step": 0, "base_valid": None, "history": []})
        )
        == TrainState()
    )
    with pytest.warns(UserWarning, match="epoch"):
        assert TrainState.from_json(json.dumps({**old_style, "epoch": 3})) == state
