"""Sharing experts of vision-language models: export, import, push, pull, merged and LoRA exports, transfer.

Tiny random LLaVA and Idefics3 (SmolVLM) models with processors (tests/vlm_models.py). The
experts adapt all three parts of the model: a language-model block's MLP, a vision tower block
and the projector, so that every path carries vision and projector matrices, not only the
language model's. Every logit comparison runs with an image in the input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, constants
from safetensors.torch import load_file
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.experts.catalog import list_base_models, list_experts
from t2cli.home import open_registry
from t2cli.runtime.multimodal import batch_inputs
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import load_expert
from t2cli.tasks import get_task
from tests.cli_support import one_error
from tests.expert_factory import make_expert
from tests.hf_cache import populate_hf_cache
from tests.vlm_models import image_inputs

FAMILIES = ("llava", "idefics3", "gemma3")
# One language-model block's MLP, one vision tower block and the projector, in each family's module names
# (Gemma 3's projector is a bare matrix, which t2 does not adapt).
MIXED = {
    "llava": r"language_model\.layers\.1\.mlp\.|vision_tower\.encoder\.layers\.0\.|multi_modal_projector\.",
    "idefics3": r"text_model\.layers\.1\.mlp\.|vision_model\.encoder\.layers\.0\.|connector\.",
    "gemma3": r"language_model\.layers\.1\.mlp\.|vision_tower\.encoder\.layers\.0\.",
}
PARTS = {  # (language, vision, projector) matrices MIXED selects
    "llava": (3, 6, 2),
    "idefics3": (3, 6, 1),
    "gemma3": (3, 6, 0),
}
runner = CliRunner()


def t2(*args):
    return runner.invoke(app, [str(a) for a in args])


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _expert(folder: str, family: str, name: str = "vqa-v1", targets: str | None = None):
    """(adaptable, z): the VLM at ``folder`` loaded for SVF and a registered expert on MIXED targets."""
    with open_registry() as registry:
        adaptable = load_adaptable(registry, folder, targets=targets or MIXED[family], device="cpu")
        z = make_expert(registry, adaptable, name, task="shapes", category="vision", description="a VLM test expert")
    return adaptable, z


def _adapted_logits(adaptable, z, inputs) -> torch.Tensor:
    with adaptable.svf.adapted(z):
        return _logits(adaptable.model, inputs)


def _fresh_home(monkeypatch, tmp_path: Path, name: str) -> None:
    monkeypatch.setenv("T2_HOME", str(tmp_path / name))


# --------------------------------------------------------------------------- export / import


@pytest.mark.parametrize("family", FAMILIES)
def test_export_import_round_trip_gives_the_same_z_and_logits_with_an_image(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    folder = tiny_vlm_dirs[family]
    adaptable, z = _expert(str(folder), family)
    inputs = image_inputs(family)
    expected = _adapted_logits(adaptable, z, inputs)
    assert not torch.allclose(expected, _logits(adaptable.model, inputs), atol=1e-4)  # the expert changes the output

    exported = tmp_path / "shared" / "vqa-v1"
    assert t2("export", "vqa-v1", exported).exit_code == 0
    config = json.loads((exported / "expert_config.json").read_text())
    assert config["base_model"]["model_type"] == family and config["base_model"]["vision_layers"] == 2

    _fresh_home(monkeypatch, tmp_path, "elsewhere")  # another machine: nothing registered, the base found at its path
    result = t2("import", exported, "--name", "vqa-copy")
    assert result.exit_code == 0, result.output
    with open_registry() as registry:
        copy = load_expert(registry, "vqa-copy")
        fresh = load_adaptable(registry, str(folder), targets=copy.config.targets, device="cpu")
    assert set(copy.z) == set(z) and all(torch.equal(copy.z[k], z[k]) for k in z)
    assert torch.equal(_adapted_logits(fresh, copy.z, inputs), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_card_names_the_vlm_and_the_parts_the_expert_adapts(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path
) -> None:
    _expert(str(tiny_vlm_dirs[family]), family)
    assert t2("export", "vqa-v1", tmp_path / "out").exit_code == 0
    card = (tmp_path / "out" / "README.md").read_text()
    counted = zip(("language model", "vision tower", "projector"), PARTS[family])
    adapted = ", ".join(f"{part} ({n} matrices)" for part, n in counted if n)  # a part with none is not named
    family_name = {"llava": "LLaVA", "idefics3": "Idefics3 / SmolVLM", "gemma3": "Gemma 3"}[family]
    for line in (
        "pipeline_tag: image-text-to-text",
        "- vision-language",
        f"is a vision-language model of the {family_name} family",
        f"model_type `{family}`",
        "a vision tower (2 blocks)",
        f"Adapted: {adapted};",
        "AutoModelForImageTextToText",
    ):
        assert line in card, line


# --------------------------------------------------------------------------- merged and LoRA


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_export_is_a_loadable_vlm_with_the_experts_logits(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adaptable, z = _expert(str(tiny_vlm_dirs[family]), family)
    out = tmp_path / "merged"
    result = t2("export", "vqa-v1", out, "--merged", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "AutoModelForImageTextToText.from_pretrained" in " ".join(result.output.split())
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "processor_config.json", "tokenizer.json", "README.md"} <= files
    assert "pipeline_tag: image-text-to-text" in (out / "README.md").read_text()

    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    # The merged folder's processor renders and encodes a prompt with a picture as the original does.
    task = get_task("shapes")
    items = task.split("test")[:2]
    prompts = task.image_prompts(processor, items)
    original = task.image_prompts(adaptable.processor(), items)
    assert [p.ids for p in prompts] == [p.ids for p in original]
    inputs = batch_inputs(prompts, [p.ids for p in prompts], pad_id=0, left=True)
    expected = _adapted_logits(adaptable, z, inputs)
    assert not torch.allclose(expected, _logits(adaptable.model, inputs), atol=1e-4)
    assert torch.allclose(_logits(merged, inputs), expected, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_export_names_the_vlms_modules_and_gives_the_experts_logits_at_full_rank(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    folder = tiny_vlm_dirs[family]
    adaptable, z = _expert(str(folder), family)
    result = t2("export", "vqa-v1", tmp_path / "lora", "--lora", "--rank", "32")  # 32: the largest rank here
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    # PEFT matches a list entry to a module whose name equals it (or ends with "." + it): the loaded names.
    assert set(config["target_modules"]) == set(z) and config["task_type"] == "CAUSAL_LM"
    base = AutoModelForImageTextToText.from_pretrained(folder).eval()
    modules = dict(base.named_modules())
    assert all(isinstance(modules[name], torch.nn.Linear) for name in z)
    keys = set(load_file(str(tmp_path / "lora" / "adapter_model.safetensors")))
    assert keys == {f"base_model.model.{name}.lora_{ab}.weight" for name in z for ab in "AB"}

    peft_model = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    inputs = image_inputs(family)
    expected = _adapted_logits(adaptable, z, inputs)
    assert torch.allclose(_logits(peft_model, inputs), expected, atol=1e-4)
    assert not torch.allclose(_logits(adaptable.model, inputs), expected, atol=1e-3)


# --------------------------------------------------------------------------- push / pull

HUB_BASE = {
    "llava": ("acme/tiny-llava", None),
    "idefics3": ("HuggingFaceTB/SmolVLM-256M-Instruct", "smolvlm-256m"),
    "gemma3": ("google/gemma-3-4b-it", "gemma3-4b"),
}


class FakeHub:
    """Stands in for the Hub's HTTP API (HfApi's create_repo / create_commit); keeps the committed files."""

    def __init__(self, monkeypatch) -> None:
        self.files: dict[str, bytes] = {}
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr("t2cli.experts.hub.get_token", lambda: "hf_test_token_123")
        monkeypatch.setattr(HfApi, "create_repo", lambda api, *a, **k: None)
        monkeypatch.setattr(HfApi, "create_commit", lambda api, repo_id, operations, **k: self._commit(operations))

    def _commit(self, operations) -> CommitInfo:
        for op in operations:
            self.files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
        return CommitInfo(
            commit_url=f"https://huggingface.co/alice/vqa-svf/commit/{'cd' * 20}",
            commit_message="",
            commit_description="",
            oid="cd" * 20,
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_push_then_pull_on_another_machine_round_trips_and_the_card_names_the_hub_model(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path, hf_cache: Path, monkeypatch
) -> None:
    hub_id, alias = HUB_BASE[family]
    populate_hf_cache(hf_cache, hub_id, tiny_vlm_dirs[family])
    _, z = _expert(alias or hub_id, family)
    hub = FakeHub(monkeypatch)
    result = t2("push", "vqa-v1", "alice/vqa-svf")
    assert result.exit_code == 0, result.output
    card = hub.files["README.md"].decode()
    assert f"base_model: {hub_id}" in card and "base_model_relation: adapter" in card
    assert f"Hub id `{hub_id}`" in card and (alias is None or f"t2 alias `{alias}`" in card)

    # What the Hub would serve: the committed files, laid out in the HF cache as snapshot_download leaves them.
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for file, data in hub.files.items():
        (pushed / file).write_bytes(data)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    commit = populate_hf_cache(hf_cache, "alice/vqa-svf", pushed)
    _fresh_home(monkeypatch, tmp_path, "elsewhere")
    pulled = t2("pull", "alice/vqa-svf", "--model", alias or hub_id)
    assert pulled.exit_code == 0, pulled.output
    with open_registry() as registry:
        expert = load_expert(registry, "vqa-v1")
    assert set(expert.z) == set(z) and all(torch.equal(expert.z[k], z[k]) for k in z)
    assert expert.config.origin["location"] == "alice/vqa-svf" and expert.config.origin["revision"] == commit
    assert expert.config.base_model.vision_layers == 2


# --------------------------------------------------------------------------- transfer


def test_a_language_model_expert_moves_between_a_vlm_and_a_text_model(
    tiny_vlm_dirs: dict[str, Path], tiny_llama: Path
) -> None:
    _, z = _expert(str(tiny_vlm_dirs["llava"]), "llava", name="lm-v1", targets="all")
    result = t2("transfer", "lm-v1", "--to", tiny_llama, "--name", "to-text", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["coverage"] == 1.0 and summary["target_matrices"] == 21  # 3 text layers from 2 VLM layers
    with open_registry() as registry:
        moved = load_expert(registry, "to-text")
    # Layer 0 of the text model sits at depth 0 of the VLM's language model: its z is copied.
    assert torch.equal(moved.z["model.layers.0.mlp.up_proj"], z["model.language_model.layers.0.mlp.up_proj"])
    back = t2("transfer", "to-text", "--to", tiny_vlm_dirs["idefics3"], "--name", "back", "--json")
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["summary"]["coverage"] == 1.0


def test_a_vision_tower_expert_moves_between_clip_like_towers(tiny_vlm_dirs: dict[str, Path]) -> None:
    _, z = _expert(str(tiny_vlm_dirs["llava"]), "llava", name="eyes-v1", targets="vision")
    result = t2("transfer", "eyes-v1", "--to", tiny_vlm_dirs["idefics3"], "--name", "eyes-idefics", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["coverage"] == 1.0 and summary["direct"] == 12
    assert (summary["source_vision_layers"], summary["target_vision_layers"]) == (2, 2)
    with open_registry() as registry:
        moved = load_expert(registry, "eyes-idefics")
    assert set(moved.z) == {name.replace("vision_tower", "vision_model") for name in z}
    for name in z:  # same role, same block, same shape: copied
        assert torch.equal(moved.z[name.replace("model.vision_tower.", "model.vision_model.")], z[name])


def test_transfers_that_would_drop_part_of_the_expert_are_refused_in_one_line(
    tiny_vlm_dirs: dict[str, Path], tiny_llama: Path
) -> None:
    _expert(str(tiny_vlm_dirs["llava"]), "llava")  # language MLP, a vision block and the projector
    to_text = t2("transfer", "vqa-v1", "--to", tiny_llama)
    assert to_text.exit_code == 1
    message = one_error(to_text)
    assert "adapts the vision tower and projector (8 matrices)" in message and "is a text-only model" in message
    to_idefics = t2("transfer", "vqa-v1", "--to", tiny_vlm_dirs["idefics3"])
    assert to_idefics.exit_code == 1
    assert "2 projector matrices of roles projector.linear_1, projector.linear_2" in one_error(to_idefics)
    with open_registry() as registry:
        assert [e.name for e in list_experts(registry)] == ["vqa-v1"]
        assert len(list_base_models(registry)) == 1  # neither target was loaded or decomposed


def test_fused_and_split_attention_roles_do_not_line_up() -> None:
    from t2cli.experts.transfer import TransferError, plan_transfer
    from t2cli.models.targets import select_targets

    source = {m.name: 16 for m in select_targets("qwen2_vl", 2, "vision", vision_layers=2)}
    target = {m.name: 16 for m in select_targets("llava", 2, "vision", vision_layers=2)}
    with pytest.raises(TransferError, match=r"2 vision tower matrices of roles vision\.attn\.qkv, which"):
        plan_transfer(source, "qwen2_vl", 2, target, "llava", 2, source_vision_layers=2, target_vision_layers=2)
