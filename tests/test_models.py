"""Model names resolve to the right files, identities are stable, and bad names fail clearly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from t2cli.errors import ModelLoadError, ModelNotFound
from t2cli.models.hashing import HashCache
from t2cli.models.identity import model_identity
from t2cli.models.resolve import ALIASES, embedded_gguf_path, resolve_model


def test_local_folder_resolves_and_identity_reads_config(tiny_llama: Path, tmp_path: Path) -> None:
    ref = resolve_model(str(tiny_llama))
    assert ref.source == "local" and ref.path == tiny_llama.absolute() and not ref.is_gguf
    identity = model_identity(ref, HashCache(tmp_path / "hashes.json"))
    assert identity.model_type == "llama"
    assert identity.architecture == "LlamaForCausalLM"
    assert identity.num_layers == 3 and identity.hidden_size == 32
    assert len(identity.fingerprint) == 64


def test_fingerprint_follows_weights_not_location(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "hashes.json")
    copy = shutil.copytree(tiny_model_dirs["llama"], tmp_path / "copy")
    same = model_identity(resolve_model(str(copy)), cache).fingerprint
    assert same == model_identity(resolve_model(str(tiny_model_dirs["llama"])), cache).fingerprint
    other = model_identity(resolve_model(str(tiny_model_dirs["mistral"])), cache).fingerprint
    assert other != same


def test_hash_cache_reuses_result_until_file_changes(tmp_path: Path) -> None:
    file = tmp_path / "w.bin"
    file.write_bytes(b"abc")
    cache = HashCache(tmp_path / "hashes.json")
    first = cache.sha256(file)
    assert HashCache(tmp_path / "hashes.json").sha256(file) == first  # persisted
    file.write_bytes(b"abcd")
    assert cache.sha256(file) != first


def test_unknown_alias_lists_known_ones() -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model("llama9-1t")
    assert "llama9-1t" in info.value.message
    assert all(alias in info.value.hint for alias in ALIASES)


def test_missing_path_is_reported_as_a_path() -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model("./no/such/model")
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model("missing.gguf")


def test_folder_without_model_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a model"):
        resolve_model(str(tmp_path))


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "weights.txt"
    file.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        resolve_model(str(file))


def test_hub_alias_offline_and_not_cached_says_how_to_fix(hf_cache: Path) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model("mistral-7b")
    assert "mistralai/Mistral-7B-Instruct-v0.3" in info.value.message
    assert "offline" in info.value.message
    assert "local folder" in info.value.hint


def test_hub_id_resolves_from_a_prepopulated_hf_cache(tiny_llama: Path, tmp_path: Path, hf_cache: Path) -> None:
    """The real huggingface_hub client, offline, finds a snapshot laid out as the HF cache does."""
    from tests.hf_cache import populate_hf_cache

    revision = populate_hf_cache(hf_cache, "acme/tiny-llama", tiny_llama)
    ref = resolve_model("acme/tiny-llama")
    assert ref.source == "hub" and ref.location == "acme/tiny-llama" and ref.revision == revision
    assert (ref.path / "config.json").is_file()
    identity = model_identity(ref, HashCache(tmp_path / "hashes.json"))
    assert identity.model_type == "llama"


def test_embedded_model_is_found_without_importing_its_package() -> None:
    path = embedded_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    ref = resolve_model(None)
    assert ref.source == "embedded" and ref.gguf_file == path.name and ref.name == "smollm2-135m"
