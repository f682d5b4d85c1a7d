"""SVF core invariants: identity = base, apply/restore exact, gradients reach z and only z."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2cli.decompose.engine import decompose_model, load_factors
from t2cli.home import open_registry
from t2cli.models.load import load_model
from t2cli.models.resolve import resolve_model
from t2cli.svf.model import SVFError, SVFModel, load_svf_model


@pytest.fixture()
def svf(tiny_llama: Path) -> SVFModel:
    with open_registry() as registry:
        summary = decompose_model(registry, str(tiny_llama))
        raw = load_factors(registry, summary.decomposition_id)
    model = load_model(resolve_model(str(tiny_llama)))
    return load_svf_model(model, raw)


def _logits(svf: SVFModel) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    with torch.no_grad():
        return svf.model(input_ids=ids).logits


def test_identity_expert_reproduces_base_logits_exactly(svf: SVFModel) -> None:
    base = _logits(svf)
    with svf.adapted({name: torch.ones_like(f.S) for name, f in svf.factors.items()}):
        adapted = _logits(svf)
    assert torch.equal(base, adapted)


def test_apply_then_restore_gives_the_base_tensors_back(svf: SVFModel) -> None:
    before = {name: p.detach().clone() for name, p in svf.model.named_parameters()}
    z = {name: torch.rand_like(f.S) * 2 for name, f in svf.factors.items()}
    svf.apply(z, key="random")
    changed = _logits(svf)
    svf.restore()
    after = dict(svf.model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not torch.allclose(changed, _logits(svf))


def test_applied_weight_is_u_diag_sz_vh(svf: SVFModel) -> None:
    name = "model.layers.1.mlp.down_proj"
    f = svf.factors[name]
    z = {name: torch.linspace(0.5, 1.5, f.rank)}
    svf.apply(z)
    weight = dict(svf.model.named_parameters())[name + ".weight"].detach()
    expected = (f.U.double() * (f.S.double() * z[name].double())) @ f.Vh.double()
    assert torch.allclose(weight.double(), expected, atol=1e-5)
    svf.restore()


def test_gradients_reach_z_and_only_z(svf: SVFModel) -> None:
    z = {name: torch.ones_like(f.S, requires_grad=True) for name, f in svf.factors.items()}
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    logits = svf.forward_with(svf.differentiable_weights(z), input_ids=ids).logits
    logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in z.values())
    assert all(p.grad is None for p in svf.model.parameters())


def test_cached_expert_switch_does_not_recompose(svf: SVFModel, monkeypatch) -> None:
    import t2cli.svf.model as svf_module

    z = {name: torch.full_like(f.S, 1.1) for name, f in svf.factors.items()}
    svf.apply(z, key="a")
    calls = {"n": 0}
    real = svf_module.compose_weight

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(svf_module, "compose_weight", counting)
    svf.restore()
    svf.apply(z, key="a")
    assert calls["n"] == 0 and svf.active == "a"


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda f: {"model.layers.9.mlp.up_proj": torch.ones(4)}, "lacks"),
        (lambda f: {"model.layers.0.mlp.up_proj": torch.ones(f["model.layers.0.mlp.up_proj"].rank + 1)}, "shape"),
        (
            lambda f: {"model.layers.0.mlp.up_proj": torch.full_like(f["model.layers.0.mlp.up_proj"].S, float("nan"))},
            "NaN",
        ),
        (
            lambda f: {"model.layers.0.mlp.up_proj": torch.full_like(f["model.layers.0.mlp.up_proj"].S, 3e38)},
            "non-finite",
        ),
    ],
)
def test_bad_z_is_refused_and_weights_stay_base(svf: SVFModel, bad, message: str) -> None:
    from t2cli.svf.model import Factors

    f = svf.factors["model.layers.0.mlp.up_proj"]  # large singular values make a huge z overflow
    svf.factors["model.layers.0.mlp.up_proj"] = Factors(f.U, f.S * 1e6, f.Vh)
    base = _logits(svf)
    with pytest.raises(SVFError, match=message):
        svf.apply(bad(svf.factors))
    assert torch.equal(base, _logits(svf))
