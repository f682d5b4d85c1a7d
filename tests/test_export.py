"""Exports for other tools: a merged HF model and a PEFT LoRA adapter reproduce t2's applied expert."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.experts.export import expert_factors, export_lora, lora_factors
from t2cli.home import open_registry
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import load_expert
from t2cli.svf.model import Factors, compose_delta
from tests.cli_support import one_error
from tests.expert_factory import make_expert

runner = CliRunner()
PROMPT = "12+30=? 7*8=?"


def t2(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def adapted(tiny_llama: Path):
    """(adaptable, z): the tiny Llama loaded for SVF and a registered expert 'sums-v1' on it."""
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        z = make_expert(registry, adaptable, "sums-v1")
    return adaptable, z


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def _expert_logits(adaptable, z) -> torch.Tensor:
    with adaptable.svf.adapted(z):
        return _logits(adaptable.model, adaptable.tokenizer)


# --------------------------------------------------------------------------- merged


def test_merged_export_loads_in_transformers_with_the_experts_logits(adapted, tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adaptable, z = adapted
    folder = tmp_path / "out" / "merged"
    result = t2("export", "sums-v1", folder, "--merged", "--device", "cpu")
    assert result.exit_code == 0, result.output
    files = {p.name for p in folder.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert [p.name for p in folder.parent.iterdir()] == ["merged"]  # no temp folder left behind

    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer(PROMPT).input_ids == adaptable.tokenizer(PROMPT).input_ids
    expected = _expert_logits(adaptable, z)
    base = _logits(adaptable.model, adaptable.tokenizer)
    assert not torch.allclose(expected, base, atol=1e-3)  # the expert changes the output...
    assert torch.allclose(_logits(merged, tokenizer), expected, atol=1e-5)  # ...and the merged model is it
    assert load_file(str(tiny_llama / "model.safetensors")).keys()  # base folder untouched and readable


def test_merged_export_refuses_a_model_with_other_weights(adapted, tiny_model_dirs, tmp_path: Path) -> None:
    result = t2(
        "export",
        "sums-v1",
        tmp_path / "out" / "m",
        "--merged",
        "--model",
        tiny_model_dirs["mistral"],
        "--device",
        "cpu",
    )
    assert result.exit_code == 1
    assert "was made for llama; the model found is mistral" in one_error(result)
    assert list((tmp_path / "out").iterdir()) == []  # nothing written, not even a temp folder
    with open_registry() as registry:
        from t2cli.experts.catalog import list_base_models

        assert [b.name for b in list_base_models(registry)] == ["llama"]  # mistral was not loaded or decomposed


# --------------------------------------------------------------------------- LoRA


def test_lora_factors_on_a_small_matrix() -> None:
    torch.manual_seed(0)
    W = torch.randn(4, 3)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    f = Factors(U, S, Vh)
    z = torch.tensor([1.5, 1.0, 0.2])  # d = S * (0.5, 0, -0.8): one component is unchanged, one negative
    delta = compose_delta(f, z)
    d = S * (z - 1)

    B, A, error = lora_factors(f, z, 3)
    assert torch.allclose(B @ A, delta, atol=1e-6) and error == 0.0

    B, A, error = lora_factors(f, z, 1)
    k = int(d.abs().argmax())
    assert torch.allclose(B @ A, d[k] * torch.outer(U[:, k], Vh[k]), atol=1e-6)
    assert error == pytest.approx(float(torch.linalg.norm(delta - B @ A) / torch.linalg.norm(delta)), rel=1e-5)

    B, A, error = lora_factors(f, z, 5)  # beyond the matrix's rank: zero-padded, still exact
    assert B.shape == (4, 5) and A.shape == (5, 3) and torch.allclose(B @ A, delta, atol=1e-6)

    B, A, error = lora_factors(f, torch.ones(3), 2)  # identity expert: no change at all
    assert error == 0.0 and torch.count_nonzero(B @ A) == 0


def test_lora_export_loads_in_peft_and_converges_to_the_expert(adapted, tiny_llama: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adaptable, z = adapted
    expected = _expert_logits(adaptable, z)
    distances, overall = {}, {}
    for rank in (2, 8, 32):  # 32 = the largest rank of the tiny model's matrices
        folder = tmp_path / f"lora-{rank}"
        with open_registry() as registry:
            result = export_lora(registry, "sums-v1", folder, rank=rank)
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == rank
        assert set(config["target_modules"]) == set(z) and config["base_model_name_or_path"] == str(tiny_llama)
        keys = set(load_file(str(folder / "adapter_model.safetensors")))
        assert keys == {f"base_model.model.{name}.lora_{ab}.weight" for name in z for ab in "AB"}

        base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
        peft_model = PeftModel.from_pretrained(base, folder).eval()
        distances[rank] = float((_logits(peft_model, adaptable.tokenizer) - expected).abs().max())
        overall[rank] = result.overall_error
    assert distances[2] > distances[8] > distances[32]
    assert overall[2] > overall[8] > overall[32] == 0.0
    base_distance = float((_logits(adaptable.model, adaptable.tokenizer) - expected).abs().max())
    assert distances[2] < base_distance  # even rank 2 moves towards the expert
    assert distances[32] < 1e-4  # full rank: the expert itself


def test_reported_lora_errors_are_the_written_adapters_frobenius_errors(adapted, tmp_path: Path) -> None:
    _adaptable, z = adapted
    with open_registry() as registry:
        result = export_lora(registry, "sums-v1", tmp_path / "lora", rank=4)
        factors = expert_factors(registry, load_expert(registry, "sums-v1"))
    weights = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    dropped = total = 0.0
    for name in z:
        delta = compose_delta(factors[name], z[name])
        approx = weights[f"base_model.model.{name}.lora_B.weight"] @ weights[f"base_model.model.{name}.lora_A.weight"]
        true = float(torch.linalg.norm(delta - approx) / torch.linalg.norm(delta))
        assert result.errors[name] == pytest.approx(true, rel=1e-3, abs=1e-6), name
        dropped += float(torch.linalg.norm(delta - approx)) ** 2
        total += float(torch.linalg.norm(delta)) ** 2
    assert result.overall_error == pytest.approx((dropped / total) ** 0.5, rel=1e-3)
    assert result.min_error <= result.median_error <= result.max_error


def test_lora_export_cli_prints_the_error_summary(adapted, tmp_path: Path) -> None:
    result = t2("export", "sums-v1", tmp_path / "lora", "--lora", "--rank", "4")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "LoRA r=4 over 21 matrices" in text and "median" in text and "overall" in text
    as_json = t2("export", "sums-v1", tmp_path / "lora2", "--lora", "--rank", "4", "--json")
    summary = json.loads(as_json.stdout)
    assert summary["rank"] == 4 and len(summary["errors"]) == 21 and 0 < summary["overall_error"] < 1


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--merged", "--lora"], "--merged and --lora exclude each other"),
        (["--rank", "4"], "--rank applies to --lora exports"),
        (["--lora", "--rank", "0"], "--rank 0 is not positive"),
    ],
)
def test_bad_export_options_are_usage_errors(adapted, tmp_path: Path, args, expected) -> None:
    result = t2("export", "sums-v1", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert expected in one_error(result)
    assert not (tmp_path / "out").exists()


def test_lora_export_without_peft_says_how_to_install_it(adapted, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # what an environment without peft looks like to import
    result = t2("export", "sums-v1", tmp_path / "lora", "--lora")
    assert result.exit_code == 1
    assert "needs the peft package" in one_error(result) and "t2cli[lora]" in one_error(result)


class _Quantizer:
    """Stands in for transformers' HfQuantizer record on a loaded model (the library boundary)."""

    def __init__(self, method: str, packed: dict) -> None:
        from types import SimpleNamespace

        self.quantization_config = SimpleNamespace(quant_method=method)
        self.packed_modules = packed
        self.removed = False

    def remove_quantization_config(self, model) -> None:
        self.removed = True


def test_a_dequantised_gguf_model_is_made_saveable_and_a_quantized_one_is_refused() -> None:
    from types import SimpleNamespace

    from t2cli.errors import T2Error
    from t2cli.models.load import drop_gguf_record

    dense = _Quantizer("gguf", {})
    drop_gguf_record(SimpleNamespace(hf_quantizer=dense))
    assert dense.removed
    for quantizer in (_Quantizer("gguf", {"model.layers.0.mlp.up_proj": object()}), _Quantizer("bitsandbytes", {})):
        with pytest.raises(T2Error, match="not dense weights"):
            drop_gguf_record(SimpleNamespace(hf_quantizer=quantizer))
        assert not quantizer.removed
    drop_gguf_record(SimpleNamespace())  # an ordinary model: nothing to do
