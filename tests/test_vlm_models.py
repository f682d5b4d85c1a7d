"""Vision-language models: t2 finds, fingerprints, decomposes and adapts the language model inside them.

Tiny random VLMs of four families (Idefics3 / SmolVLM, Qwen2-VL, Qwen2.5-VL, LLaVA) are built
locally (tests/vlm_models.py); every forward pass here carries an image (pixel values from
the family's own image processor).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.decompose.engine import DecompositionInterrupted, decompose_model, load_factors
from t2cli.errors import ModelNotFound, TargetValueError
from t2cli.home import open_registry
from t2cli.models.hashing import HashCache
from t2cli.models.identity import model_identity
from t2cli.models.load import load_model
from t2cli.models.resolve import resolve_model
from t2cli.models.targets import select_targets
from t2cli.svf.model import SVFModel, load_svf_model
from tests.hf_cache import populate_hf_cache
from tests.vlm_models import VLM_FAMILIES, build_tiny_vlm, image_inputs

# A regex naming the vision tower in every family (the tower's module is called one of these).
VISION_TOWER = r"\.(vision_model|vision_tower|visual)\."
# Linear layers of the image side that the model never runs: SigLIP's pooling head in Gemma 3's tower.
UNUSED_IMAGE_SIDE = {"gemma3": r"\.vision_tower\.head\."}


def _identity(folder: Path, tmp_path: Path):
    return model_identity(resolve_model(str(folder)), HashCache(tmp_path / "hashes.json"))


def _linear_names(module: nn.Module, prefix: str = "") -> set[str]:
    return {prefix + name for name, child in module.named_modules() if isinstance(child, nn.Linear)}


def _svf(folder: Path, targets: str = "all") -> SVFModel:
    with open_registry() as registry:
        summary = decompose_model(registry, str(folder), targets=targets)
        raw = load_factors(registry, summary.decomposition_id)
    return load_svf_model(load_model(resolve_model(str(folder))), raw)


def _logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


# --------------------------------------------------------------------------- (a) targets


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_default_targets_are_exactly_the_language_models_attention_and_mlp(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path
) -> None:
    folder = tiny_vlm_dirs[family]
    identity = _identity(folder, tmp_path)
    model = load_model(identity.ref)
    # transformers' own view of the parts: the decoder is the language model (its only linear
    # layers are the blocks' attention and MLP projections); every other linear layer but the
    # LM head belongs to the vision tower or the projector.
    module_names = {id(module): name for name, module in model.named_modules()}
    language = _linear_names(model.get_decoder(), module_names[id(model.get_decoder())] + ".")
    unused = UNUSED_IMAGE_SIDE.get(family)
    image_side = {
        name for name in _linear_names(model) - language - {"lm_head"} if not (unused and re.search(unused, name))
    }
    assert identity.num_layers == 2 and identity.vision_layers == 2 and image_side

    def chosen(spec: str) -> set[str]:
        return {
            m.name
            for m in select_targets(
                identity.model_type, identity.num_layers, spec, vision_layers=identity.vision_layers
            )
        }

    assert chosen("all") == language and len(language) == 2 * 7
    assert chosen("attn") | chosen("mlp") == language and not chosen("attn") & chosen("mlp")
    vision = chosen("vision")
    if family == "gemma3":  # its projector is a bare matrix (x @ W), not a linear layer: nothing to adapt there
        assert vision == image_side
        with pytest.raises(TargetValueError, match="bare matrix"):
            chosen("projector")
    else:
        projector = chosen("projector")
        assert vision | projector == image_side and vision and projector and not vision & projector
    # A regex can name the vision tower; it reaches nothing of the language model.
    tower = chosen(VISION_TOWER)
    assert tower == {name for name in image_side if re.search(VISION_TOWER, name)} and tower >= vision
    first_block = chosen(VISION_TOWER[:-2] + r"\.(encoder\.layers|blocks)\.0\.")
    assert first_block and first_block < vision


def test_models_show_lists_the_vision_tower_on_request(tiny_vlm_dirs: dict[str, Path]) -> None:
    folder = tiny_vlm_dirs["idefics3"]
    default = CliRunner().invoke(app, ["models", "show", str(folder), "--json"])
    assert default.exit_code == 0, default.output
    shown = json.loads(default.stdout)
    assert shown["architecture"] == "Idefics3ForConditionalGeneration" and shown["vision_layers"] == 2
    assert all(name.startswith("model.text_model.layers.") for name in shown["matrices"])
    vision = json.loads(
        CliRunner().invoke(app, ["models", "show", str(folder), "--targets", "vision", "--json"]).stdout
    )
    assert vision["roles"] == {
        role: 2 for role in ("vision.attn.q", "vision.attn.k", "vision.attn.v", "vision.attn.o")
    } | {
        "vision.mlp.fc1": 2,
        "vision.mlp.fc2": 2,
    }


# --------------------------------------------------------------------------- (b), (c) SVF with an image


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_identity_expert_gives_the_base_logits_with_an_image(family: str, tiny_vlm_dirs: dict[str, Path]) -> None:
    svf = _svf(tiny_vlm_dirs[family])
    inputs = image_inputs(family)
    base = _logits(svf.model, inputs)
    # The image really goes through the model: another picture (its colours inverted) gives other logits.
    # (Not a blank one: Idefics3 drops an all-zero image as padding.)
    inverted = {**inputs, "pixel_values": -inputs["pixel_values"]}
    assert not torch.allclose(base, _logits(svf.model, inverted))
    with svf.adapted({name: torch.ones_like(f.S) for name, f in svf.factors.items()}):
        adapted = _logits(svf.model, inputs)
    assert torch.equal(base, adapted)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_apply_then_restore_is_exact_and_leaves_the_image_side_alone(
    family: str, tiny_vlm_dirs: dict[str, Path]
) -> None:
    svf = _svf(tiny_vlm_dirs[family])
    inputs = image_inputs(family)
    before = {name: p.detach().clone() for name, p in svf.model.named_parameters()}
    base = _logits(svf.model, inputs)
    torch.manual_seed(0)
    svf.apply({name: torch.rand_like(f.S) * 2 for name, f in svf.factors.items()}, key="random")
    applied = dict(svf.model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], applied[name])}
    assert changed == {f"{name}.weight" for name in svf.factors}  # the language model's matrices, nothing else
    assert not torch.allclose(base, _logits(svf.model, inputs))
    svf.restore()
    after = dict(svf.model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert torch.equal(base, _logits(svf.model, inputs))


def test_vision_tower_targets_decompose_and_adapt(tiny_vlm_dirs: dict[str, Path]) -> None:
    """``--targets vision`` reaches the tower through decompose and SVF: logits move, restore is exact."""
    svf = _svf(tiny_vlm_dirs["qwen2_vl"], targets="vision")
    assert svf.factors and all(".visual.blocks." in name for name in svf.factors)
    inputs = image_inputs("qwen2_vl")
    base = _logits(svf.model, inputs)
    with svf.adapted({name: torch.full_like(f.S, 1.5) for name, f in svf.factors.items()}):
        assert not torch.allclose(base, _logits(svf.model, inputs))
    assert torch.equal(base, _logits(svf.model, inputs))


# --------------------------------------------------------------------------- (d) decompose


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])  # keys as loaded / keys renamed by transformers on load
def test_decompose_of_a_vlm_resumes_and_matches_an_uninterrupted_run(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_vlm_dirs[family]
    calls = {"n": 0}

    def interrupt_after_two_chunks(event) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with open_registry() as registry:
        with pytest.raises(DecompositionInterrupted):
            decompose_model(registry, str(folder), chunk_matrices=2, on_progress=interrupt_after_two_chunks)
        resumed = decompose_model(registry, str(folder), chunk_matrices=2)
        assert 0 < resumed.computed < resumed.num_matrices == 2 * 7  # only the missing ones
        resumed_factors = load_factors(registry, resumed.decomposition_id)

    monkeypatch.setenv("T2_HOME", str(tmp_path / "other-home"))
    with open_registry() as registry:
        clean = decompose_model(registry, str(folder), chunk_matrices=2)
        clean_factors = load_factors(registry, clean.decomposition_id)
    assert resumed_factors.keys() == clean_factors.keys()
    for name in clean_factors:
        assert all(torch.equal(a, b) for a, b in zip(resumed_factors[name], clean_factors[name])), name
    # The factors are those of the weights transformers loads (whatever names the checkpoint uses).
    weights = dict(load_model(resolve_model(str(folder))).named_parameters())
    for name, (U, S, Vh) in clean_factors.items():
        W = weights[f"{name}.weight"].detach().double()
        assert torch.linalg.norm(W - U.double() @ torch.diag(S.double()) @ Vh.double()) < 1e-5 * torch.linalg.norm(W)


# --------------------------------------------------------------------------- (e) identity and aliases


def test_fingerprint_tells_two_vlms_apart_and_is_stable(tiny_vlm_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = tiny_vlm_dirs["idefics3"]
    first = _identity(folder, tmp_path)
    assert first.architecture == "Idefics3ForConditionalGeneration" and first.model_type == "idefics3"
    assert _identity(folder, tmp_path / "fresh-cache").fingerprint == first.fingerprint  # re-hashed from scratch
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert _identity(copy, tmp_path).fingerprint == first.fingerprint  # same bytes elsewhere: same model
    other = build_tiny_vlm("idefics3", tmp_path / "other-seed", seed=99)
    assert _identity(other, tmp_path).fingerprint != first.fingerprint
    assert _identity(tiny_vlm_dirs["llava"], tmp_path).fingerprint != first.fingerprint


def test_vlm_alias_resolves_from_the_hf_cache(tiny_vlm_dirs: dict[str, Path], tmp_path: Path, hf_cache: Path) -> None:
    revision = populate_hf_cache(hf_cache, "HuggingFaceTB/SmolVLM-256M-Instruct", tiny_vlm_dirs["idefics3"])
    ref = resolve_model("smolvlm-256m")
    assert (ref.name, ref.source, ref.location, ref.revision) == (
        "smolvlm-256m",
        "hub",
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        revision,
    )
    assert model_identity(ref, HashCache(tmp_path / "hashes.json")).vision_layers == 2
    with pytest.raises(ModelNotFound, match="llava-hf/llama3-llava-next-8b-hf"):
        resolve_model("llava-next-8b")  # offline and not cached: never downloaded in tests
