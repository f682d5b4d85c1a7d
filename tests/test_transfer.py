"""Cross-model transfer: the depth and spectrum maps on small tensors, and `t2 transfer` on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.experts.transfer import TransferError, plan_transfer, resample_spectrum, transfer_z
from t2cli.home import open_registry
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import load_expert
from tests.expert_factory import make_expert
from tests.tiny_models import COMMON, build_tiny_tokenizer


def _names(layers: int, roles=("self_attn.q_proj", "mlp.down_proj")) -> list[str]:
    return [f"model.layers.{i}.{role}" for i in range(layers) for role in roles]


def test_resample_keeps_the_ends_and_interpolates_between() -> None:
    z = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert torch.equal(resample_spectrum(z, 5), z)
    assert torch.allclose(resample_spectrum(z, 3), torch.tensor([1.0, 3.0, 5.0]))
    assert torch.allclose(resample_spectrum(z, 9), torch.linspace(1, 5, 9))
    assert torch.allclose(resample_spectrum(torch.tensor([2.0]), 4), torch.full((4,), 2.0))


def test_same_shapes_map_directly() -> None:
    ranks = {name: 4 for name in _names(3)}
    plan = plan_transfer(ranks, "llama", 3, ranks, "mistral", 3)
    assert plan.summary()["direct"] == 6 and not plan.uncovered
    z = {name: torch.arange(4.0) + i for i, name in enumerate(ranks)}
    out = transfer_z(z, plan)
    assert all(torch.equal(out[name], z[name]) for name in z)


def test_depth_is_mapped_by_relative_position() -> None:
    source = {name: 2 for name in _names(3, ("mlp.down_proj",))}
    target = {name: 2 for name in _names(5, ("mlp.down_proj",))}
    plan = plan_transfer(source, "llama", 3, target, "llama", 5)
    z = {f"model.layers.{i}.mlp.down_proj": torch.full((2,), float(i)) for i in range(3)}
    out = transfer_z(z, plan)
    # target layers 0..4 sit at source depths 0, 0.5, 1, 1.5, 2
    got = [out[f"model.layers.{j}.mlp.down_proj"][0].item() for j in range(5)]
    assert got == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert plan.summary()["depth_interpolated"] == 2


def test_roles_the_expert_lacks_stay_at_one_and_foreign_names_are_refused() -> None:
    source = {name: 3 for name in _names(2, ("mlp.down_proj",))}
    target = {name: 3 for name in _names(2)}
    plan = plan_transfer(source, "llama", 2, target, "llama", 2)
    out = transfer_z({n: torch.full((3,), 2.0) for n in source}, plan)
    assert torch.equal(out["model.layers.0.self_attn.q_proj"], torch.ones(3))
    assert plan.summary()["coverage"] == 0.5
    with pytest.raises(TransferError):
        plan_transfer({"lm_head": 3}, "llama", 2, target, "llama", 2)


def test_shuffle_permutes_values_but_keeps_them() -> None:
    ranks = {name: 16 for name in _names(1)}
    plan = plan_transfer(ranks, "llama", 1, ranks, "llama", 1)
    z = {name: torch.linspace(0.5, 1.5, 16) for name in ranks}
    shuffled = transfer_z(z, plan, shuffle_seed=0)
    for name in ranks:
        assert not torch.equal(shuffled[name], z[name])
        assert torch.equal(shuffled[name].sort().values, z[name].sort().values)


def test_transfer_cli_registers_a_transferred_expert_with_its_parent(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    with open_registry() as registry:
        source = load_adaptable(registry, str(tiny_model_dirs["llama"]), device="cpu")
        z = make_expert(registry, source, "src")
    runner = CliRunner()
    result = runner.invoke(
        app, ["transfer", "src", "--to", str(tiny_model_dirs["mistral"]), "--name", "moved", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["coverage"] == 1.0 and summary["direct"] == 21
    shuffled = runner.invoke(app, ["transfer", "src", "--to", str(tiny_model_dirs["mistral"]), "--shuffle"])
    assert shuffled.exit_code == 0, shuffled.output
    with open_registry() as registry:
        moved = load_expert(registry, "moved")
        control = load_expert(registry, "src-to-mistral-shuffled")
    assert moved.config.kind == "transferred" and moved.config.parents == [
        {"name": "src", "weight": None, "relation": "transferred"}
    ]
    assert moved.config.base_model.model_type == "mistral"
    assert all(torch.equal(moved.z[name], z[name]) for name in z)  # same shapes: copied
    assert control.config.parametrization["transfer"]["shuffled"] is True
    assert any(not torch.equal(control.z[name], z[name]) for name in z)


def test_transfer_to_the_same_model_or_an_unknown_expert_is_a_clear_error(tiny_llama: Path) -> None:
    with open_registry() as registry:
        make_expert(registry, load_adaptable(registry, str(tiny_llama), device="cpu"), "src")
    runner = CliRunner()
    same = runner.invoke(app, ["transfer", "src", "--to", str(tiny_llama)])
    assert same.exit_code == 1 and "already belongs" in same.output and "Traceback" not in same.output
    unknown = runner.invoke(app, ["transfer", "nope", "--to", str(tiny_llama)])
    assert unknown.exit_code == 1 and "no expert named 'nope'" in unknown.output


def test_transfer_to_a_deeper_wider_model_interpolates_and_resamples(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config

    folder = tmp_path / "qwen2-5-layers"
    config = Qwen2Config(
        **{**COMMON, "num_hidden_layers": 5, "hidden_size": 48, "intermediate_size": 64},
        architectures=["Qwen2ForCausalLM"],
    )
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    build_tiny_tokenizer(folder)
    with open_registry() as registry:
        make_expert(registry, load_adaptable(registry, str(tiny_llama), device="cpu"), "src")
    result = CliRunner().invoke(app, ["transfer", "src", "--to", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    # 5 target layers on 3 source layers: layers 1 and 3 sit halfway between two source layers
    assert summary["target_matrices"] == 35 and summary["coverage"] == 1.0
    assert summary["depth_interpolated"] == 14
    assert summary["rank_resampled"] == 35  # hidden 32 -> 48: every rank min(m, n) differs
    with open_registry() as registry:
        moved = load_expert(registry, "src-to-qwen2-5-layers")
    assert moved.config.base_model.num_layers == 5 and len(moved.z) == 35
    assert moved.z["model.layers.0.self_attn.q_proj"].shape == (48,)
