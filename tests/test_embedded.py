"""End to end on the real embedded model (SmolLM2-135M-Instruct GGUF, dequantised by transformers)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.decompose.engine import load_factors
from t2cli.home import open_registry
from t2cli.models.load import load_model
from t2cli.models.resolve import resolve_model

pytestmark = pytest.mark.slow


def test_decompose_first_and_last_layer_of_the_embedded_model() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["decompose", "--targets", r"layers\.(0|29)\.", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model_name"] == "smollm2-135m" and summary["model_source"] == "embedded"
    assert summary["num_matrices"] == 14 and summary["max_rel_error"] < 1e-5

    model = load_model(resolve_model(None))
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    with open_registry() as registry:
        factors = load_factors(registry, summary["decomposition_id"])
    params = dict(model.named_parameters())
    shapes = {}
    for name, (U, S, Vh) in factors.items():
        W = params[name + ".weight"].detach().double()
        rebuilt = U.double() @ torch.diag(S.double()) @ Vh.double()
        assert (torch.linalg.norm(W - rebuilt) / torch.linalg.norm(W)).item() < 1e-5
        shapes[name.split(".", 3)[-1]] = tuple(W.shape)
    assert shapes["self_attn.k_proj"] == (192, 576) and shapes["mlp.down_proj"] == (576, 1536)

    listing = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    (registered,) = listing["registered"]
    assert registered["source"] == "embedded" and registered["num_layers"] == 30


def test_dequantised_cache_gives_identical_weights_and_rebuilds_when_damaged(tmp_path) -> None:
    ref = resolve_model(None)
    cache = tmp_path / "dequantised"
    fresh = load_model(ref, dequantised_cache=cache)  # dequantises the GGUF and writes the cache
    assert (cache / "config.json").is_file() and not list(tmp_path.glob(".dequantised-*"))
    cached = load_model(ref, dequantised_cache=cache)  # read back from safetensors
    expected, got = fresh.state_dict(), cached.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # still tied

    for weights in cache.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    rebuilt = load_model(ref, dequantised_cache=cache)
    assert torch.equal(rebuilt.model.layers[3].mlp.down_proj.weight, fresh.model.layers[3].mlp.down_proj.weight)
    assert load_model(ref, dequantised_cache=cache).config.num_hidden_layers == 30  # the rebuilt cache loads
