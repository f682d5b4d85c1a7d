"""End to end on the real embedded model (SmolLM2-135M-Instruct GGUF, dequantised by transformers)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from t2cli.cli import app
from t2cli.decompose import load_factors
from t2cli.home import open_registry
from t2cli.models import load_model, resolve_model

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
