"""Sharing experts: export/import folders, pull from the HF cache, push in one commit, and what validation refuses."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, constants
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.experts.catalog import get_expert, list_base_models, list_experts
from t2cli.experts.importing import MAX_Z_LENGTH
from t2cli.home import open_registry
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import load_expert
from tests.cli_support import one_error
from tests.expert_factory import make_expert
from tests.hf_cache import populate_hf_cache

runner = CliRunner()
EXPERT_FILES = {"README.md", "expert.safetensors", "expert_config.json"}


def t2(*args):
    return runner.invoke(app, [str(a) for a in args])


def _registered() -> tuple[list[str], int]:
    """Expert names and the number of base models in the registry."""
    with open_registry() as registry:
        return [e.name for e in list_experts(registry)], len(list_base_models(registry))


@pytest.fixture()
def expert(tiny_llama: Path) -> dict[str, torch.Tensor]:
    """A registered expert 'sums-v1' on the tiny Llama; returns its z."""
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        return make_expert(registry, adaptable, "sums-v1")


@pytest.fixture()
def exported(expert, tmp_path: Path) -> Path:
    folder = tmp_path / "shared" / "sums-v1"
    result = t2("export", "sums-v1", folder)
    assert result.exit_code == 0, result.output
    return folder


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "expert_config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            data[outer][inner] = value
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _rewrite_z(folder: Path, mutate, fmt: str = "t2-expert/1") -> None:
    path = folder / "expert.safetensors"
    z = mutate(load_file(str(path)))
    save_file(z, str(path), metadata={"format": fmt, "name": "sums-v1"})


# --------------------------------------------------------------------------- export / import


def test_export_then_import_registers_an_identical_imported_copy(expert, exported: Path) -> None:
    assert {p.name for p in exported.iterdir()} == EXPERT_FILES
    assert [p.name for p in exported.parent.iterdir()] == ["sums-v1"]  # no temp folder left behind
    written = load_file(str(exported / "expert.safetensors"))
    assert all(torch.equal(written[k], expert[k]) for k in expert) and set(written) == set(expert)
    card = (exported / "README.md").read_text()
    assert "library_name: t2" in card and "- task:sums" in card and "| valid_accuracy | 0.5 |" in card

    result = t2("import", exported, "--name", "sums-copy")
    assert result.exit_code == 0, result.output
    assert "imported sums-copy (trained expert 'sums-v1', 21 matrices)" in " ".join(result.output.split())
    with open_registry() as registry:
        copy = load_expert(registry, "sums-copy")
        info = get_expert(registry, "sums-copy")
        original = load_expert(registry, "sums-v1")
    assert all(torch.equal(copy.z[k], expert[k]) for k in expert) and set(copy.z) == set(expert)
    assert info.kind == "imported" and copy.config.kind == "imported"
    sha = hashlib.sha256((exported / "expert.safetensors").read_bytes()).hexdigest()
    assert copy.config.origin == {
        "kind": "trained",
        "name": "sums-v1",
        "source": "folder",
        "location": str(exported),
        "revision": None,
        "sha256": sha,
        "t2_version": original.config.t2_version,
    }
    assert copy.config.base_model.fingerprint == original.config.base_model.fingerprint
    assert copy.config.task == "sums" and copy.config.metrics == original.config.metrics
    assert copy.base_model_id == original.base_model_id and copy.decomposition_id == original.decomposition_id


def test_export_refuses_an_existing_folder_and_leaves_it_alone(expert, tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    result = t2("export", "sums-v1", folder)
    assert result.exit_code == 1
    assert "already exists" in one_error(result)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_export_of_an_unknown_expert_is_one_line(tmp_path: Path) -> None:
    result = t2("export", "nope", tmp_path / "x")
    assert result.exit_code == 1 and "no expert named 'nope'" in one_error(result)
    assert not (tmp_path / "x").exists()


def test_import_keeps_lineage_in_the_config_and_the_first_origin(tiny_llama: Path, tmp_path: Path) -> None:
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        make_expert(registry, adaptable, "sums-v0", seed=1)
        make_expert(
            registry,
            adaptable,
            "sums-v1",
            seed=2,
            parents=[{"name": "sums-v0", "weight": None, "relation": "finetuned"}],
        )
    assert t2("export", "sums-v1", tmp_path / "a").exit_code == 0
    assert "- finetuned from `sums-v0`" in (tmp_path / "a" / "README.md").read_text()
    assert t2("import", tmp_path / "a", "--name", "copy1").exit_code == 0
    # Exported again and re-imported: still says what it originally was.
    assert t2("export", "copy1", tmp_path / "b").exit_code == 0
    assert t2("import", tmp_path / "b", "--name", "copy2").exit_code == 0
    with open_registry() as registry:
        copy1, copy2 = get_expert(registry, "copy1"), get_expert(registry, "copy2")
    assert copy1.config["parents"] == [{"name": "sums-v0", "weight": None, "relation": "finetuned"}]
    assert copy1.parents == []  # a local 'sums-v0' is not known to be that parent: not linked
    assert copy2.config["origin"]["kind"] == "trained" and copy2.config["origin"]["name"] == "copy1"


def test_import_refuses_a_name_already_taken(exported: Path) -> None:
    result = t2("import", exported)
    assert result.exit_code == 1
    text = one_error(result)
    assert "an expert named 'sums-v1' already exists" in text and "--name" in text


def test_import_on_a_fresh_home_finds_the_base_at_its_recorded_path(
    exported: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("T2_HOME", str(tmp_path / "other-home"))
    result = t2("import", exported)
    assert result.exit_code == 0, result.output
    assert _registered() == (["sums-v1"], 1)


def test_import_of_an_unknown_base_asks_for_it_then_accepts_model(
    exported: Path, tiny_llama: Path, tmp_path: Path, monkeypatch
) -> None:
    _edit_config(exported, **{"base_model.location": "/elsewhere/llama"})
    monkeypatch.setenv("T2_HOME", str(tmp_path / "other-home"))
    result = t2("import", exported)
    assert result.exit_code == 1
    text = one_error(result)
    assert "was made for base model llama" in text and "not registered here" in text
    assert "t2 decompose /elsewhere/llama" in text and "--model" in text
    assert _registered() == ([], 0)

    result = t2("import", exported, "--model", tiny_llama)
    assert result.exit_code == 0, result.output
    with open_registry() as registry:
        imported = load_expert(registry, "sums-v1")
    assert imported.config.base_model.location == str(tiny_llama)  # points at the local copy now


def test_import_with_another_model_is_refused_with_transfer_hint(exported: Path, tiny_model_dirs) -> None:
    result = t2("import", exported, "--name", "x", "--model", tiny_model_dirs["qwen2"])
    assert result.exit_code == 1
    text = one_error(result)
    assert "was made for llama" in text and "fingerprint" in text and "t2 transfer sums-v1" in text
    assert _registered() == (["sums-v1"], 1)


def _add(name: str, data: bytes = b"\x80\x04K\x01.", mode: int = 0o644):
    def mutate(folder: Path, tmp: Path) -> None:
        (folder / name).write_bytes(data)
        os.chmod(folder / name, mode)

    return mutate


def _symlink_config(folder: Path, tmp: Path) -> None:
    outside = tmp / "outside.json"
    outside.write_text((folder / "expert_config.json").read_text())
    (folder / "expert_config.json").unlink()
    (folder / "expert_config.json").symlink_to(outside)


def _truncate(folder: Path, tmp: Path) -> None:
    path = folder / "expert.safetensors"
    path.write_bytes(path.read_bytes()[:-40])


def _huge_header(folder: Path, tmp: Path) -> None:
    path = folder / "expert.safetensors"
    data = path.read_bytes()
    path.write_bytes((1 << 40).to_bytes(8, "little") + data[8:])


DOWN0 = "model.layers.0.mlp.down_proj"
BAD_FOLDERS = [
    ("pickle .bin", _add("pytorch_model.bin"), "pytorch_model.bin is a pickle file"),
    ("pickle .ckpt", _add("z.ckpt"), "z.ckpt is a pickle file"),
    ("python code", _add("setup.py", b"import os"), "setup.py is code"),
    ("executable", _add("run", b"#!/bin/sh\n", 0o755), "run is an executable file"),
    ("unknown file", _add("notes.txt", b"hi"), "unexpected file notes.txt"),
    ("symlink", _symlink_config, "expert_config.json is a symlink"),
    ("sub-folder", lambda f, t: (f / "sub").mkdir(), "sub/ is a sub-folder"),
    ("missing weights", lambda f, t: (f / "expert.safetensors").unlink(), "has no expert.safetensors"),
    ("name with ../", lambda f, t: _edit_config(f, name="../evil"), "invalid expert name '../evil'"),
    ("unknown format version", lambda f, t: _edit_config(f, format_version=99), "format version 99"),
    ("weights format tag", lambda f, t: _rewrite_z(f, lambda z: z, "t2-expert/7"), "has format 't2-expert/7'"),
    ("not JSON", lambda f, t: (f / "expert_config.json").write_text("{"), "is not valid JSON"),
    ("field type", lambda f, t: _edit_config(f, num_matrices="21"), "field 'num_matrices' is str"),
    (
        "wrong fingerprint",
        lambda f, t: _edit_config(f, **{"base_model.fingerprint": "0" * 64}),
        "made for llama; the model found is llama, whose weights differ (fingerprint ",
    ),
    (
        "wrong z length",
        lambda f, t: _rewrite_z(f, lambda z: {**z, DOWN0: z[DOWN0][:10]}),
        f"z for {DOWN0} has 10 values, but that matrix of llama has rank 32",
    ),
    (
        "unknown matrix",
        lambda f, t: _rewrite_z(
            f, lambda z: {**{k: v for k, v in z.items() if k != DOWN0}, "model.layers.7.mlp.down_proj": z[DOWN0]}
        ),
        "adapts 'model.layers.7.mlp.down_proj', which llama does not have",
    ),
    (
        "count mismatch",
        lambda f, t: _rewrite_z(f, lambda z: {k: v for k, v in z.items() if k != DOWN0}),
        "holds 20 vectors but expert_config.json says num_matrices = 21",
    ),
    ("2-D tensor", lambda f, t: _rewrite_z(f, lambda z: {**z, DOWN0: z[DOWN0].reshape(4, 8)}), "with shape [4, 8]"),
    (
        "oversized tensor",
        lambda f, t: _rewrite_z(f, lambda z: {**z, DOWN0: torch.ones(MAX_Z_LENGTH + 1)}),
        "with 16,385 values (limit 16,384)",
    ),
    ("integer tensor", lambda f, t: _rewrite_z(f, lambda z: {**z, DOWN0: z[DOWN0].to(torch.int32)}), "as I32"),
    ("NaN", lambda f, t: _rewrite_z(f, lambda z: {**z, DOWN0: z[DOWN0] * float("nan")}), "holds NaN or inf"),
    ("truncated", _truncate, "points outside its data"),
    ("lying header length", _huge_header, "declares a 1,099,511,627,776-byte header"),
]


@pytest.mark.parametrize("case", BAD_FOLDERS, ids=[c[0] for c in BAD_FOLDERS])
def test_import_refuses_bad_folders_and_registers_nothing(case, exported: Path, tmp_path: Path) -> None:
    _, mutate, expected = case
    mutate(exported, tmp_path)
    result = t2("import", exported, "--name", "incoming")
    assert result.exit_code == 1, result.output
    assert expected in one_error(result)
    assert _registered() == (["sums-v1"], 1)


def test_import_refuses_a_bad_name_option(exported: Path) -> None:
    result = t2("import", exported, "--name", "../../x")
    assert result.exit_code == 2 and "invalid expert name '../../x'" in one_error(result)  # a usage error


def test_float16_vectors_are_accepted(exported: Path, expert) -> None:
    _rewrite_z(exported, lambda z: {k: v.to(torch.float16) for k, v in z.items()})
    assert t2("import", exported, "--name", "half").exit_code == 0
    with open_registry() as registry:
        half = load_expert(registry, "half")
    assert all(torch.equal(half.z[k], expert[k].to(torch.float16).float()) for k in expert)


# --------------------------------------------------------------------------- pull


def test_pull_from_the_hf_cache_registers_the_expert(expert, exported: Path, hf_cache: Path) -> None:
    commit = populate_hf_cache(hf_cache, "acme/sums-svf", exported)
    result = t2("pull", "acme/sums-svf", "--name", "pulled")
    assert result.exit_code == 0, result.output
    by_commit = t2("pull", "acme/sums-svf", "--revision", commit, "--name", "pinned")
    assert by_commit.exit_code == 0, by_commit.output
    with open_registry() as registry:
        pulled, pinned = load_expert(registry, "pulled"), load_expert(registry, "pinned")
    assert all(torch.equal(pulled.z[k], expert[k]) for k in expert)
    assert pulled.config.kind == "imported"
    assert {k: pulled.config.origin[k] for k in ("kind", "source", "location", "revision")} == {
        "kind": "trained",
        "source": "hub",
        "location": "acme/sums-svf",
        "revision": commit,
    }
    assert pinned.config.origin["revision"] == commit


def test_pull_offline_of_an_uncached_repo_or_revision_is_one_line(exported: Path, hf_cache: Path) -> None:
    result = t2("pull", "acme/not-cached")
    assert result.exit_code == 1
    assert "acme/not-cached is not in the HF cache and the Hub cannot be reached (offline)" in one_error(result)
    populate_hf_cache(hf_cache, "acme/sums-svf", exported)
    result = t2("pull", "acme/sums-svf", "--revision", "v9")
    assert result.exit_code == 1 and "at revision 'v9' is not in the HF cache" in one_error(result)


def test_pull_of_a_repo_without_an_expert_says_so(hf_cache: Path, tmp_path: Path) -> None:
    model_repo = tmp_path / "not-an-expert"
    model_repo.mkdir()
    (model_repo / "config.json").write_text("{}")
    populate_hf_cache(hf_cache, "acme/some-model", model_repo)
    result = t2("pull", "acme/some-model")
    assert result.exit_code == 1
    assert "Hub repo acme/some-model holds no t2 expert (no expert.safetensors)" in one_error(result)


def _escaping_link(hf_cache: Path, tmp: Path) -> None:
    (snapshot,) = (hf_cache / "models--acme--sums-svf" / "snapshots").iterdir()
    outside = tmp / "elsewhere.json"
    outside.write_text((snapshot / "expert_config.json").read_text())
    (snapshot / "expert_config.json").unlink()
    (snapshot / "expert_config.json").symlink_to(os.path.relpath(outside, snapshot))


BAD_REPOS = [
    (
        "pickle in the repo",
        lambda f, t: (f / "pytorch_model.bin").write_bytes(b"\x80\x04."),
        None,
        "pytorch_model.bin is a pickle file",
    ),
    ("link out of the cache", None, _escaping_link, "links to ../"),
    (
        "wrong shapes",
        lambda f, t: _rewrite_z(f, lambda z: {**z, DOWN0: z[DOWN0][:5]}),
        None,
        f"z for {DOWN0} has 5 values",
    ),
    (
        "wrong base",
        lambda f, t: _edit_config(f, **{"base_model.fingerprint": "f" * 64}),
        None,
        "made for llama; the model found is llama, whose weights differ (fingerprint ",
    ),
]


@pytest.mark.parametrize("case", BAD_REPOS, ids=[c[0] for c in BAD_REPOS])
def test_pull_refuses_bad_repos_and_registers_nothing(case, exported: Path, hf_cache: Path, tmp_path: Path) -> None:
    _, before, after, expected = case
    if before:
        before(exported, tmp_path)
    populate_hf_cache(hf_cache, "acme/sums-svf", exported)
    if after:
        after(hf_cache, tmp_path)
    result = t2("pull", "acme/sums-svf", "--name", "incoming")
    assert result.exit_code == 1, result.output
    assert expected in one_error(result)
    assert _registered() == (["sums-v1"], 1)


@pytest.mark.parametrize("command", ["pull", "push"])
def test_bad_repo_ids_are_refused(command: str, expert) -> None:
    args = ["pull", "../../etc"] if command == "pull" else ["push", "sums-v1", "no-owner"]
    result = t2(*args)
    assert result.exit_code == 1 and "is not a Hub repo id" in one_error(result)


# --------------------------------------------------------------------------- push


@pytest.fixture()
def hub_expert(tiny_llama: Path, hf_cache: Path) -> dict[str, torch.Tensor]:
    """'sums-v1' (finetuned from 'sums-v0') on a base model that came from the Hub (acme/tiny-llama)."""
    populate_hf_cache(hf_cache, "acme/tiny-llama", tiny_llama)
    with open_registry() as registry:
        adaptable = load_adaptable(registry, "acme/tiny-llama", device="cpu")
        make_expert(registry, adaptable, "sums-v0", seed=1)
        return make_expert(
            registry,
            adaptable,
            "sums-v1",
            seed=2,
            parents=[{"name": "sums-v0", "weight": None, "relation": "finetuned"}],
        )


class FakeHub:
    """Records the HfApi calls t2 makes; the commit's files are read when it is made."""

    TOKEN = "hf_secret_test_token"

    def __init__(self, monkeypatch, *, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.files: dict[str, bytes] = {}
        self.fail = fail
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr("t2cli.experts.hub.get_token", lambda: self.TOKEN)
        monkeypatch.setattr(HfApi, "create_repo", self._record("create_repo"))
        monkeypatch.setattr(HfApi, "create_branch", self._record("create_branch"))
        monkeypatch.setattr(HfApi, "create_commit", lambda api, *args, **kwargs: self._commit(*args, **kwargs))

    def _record(self, name: str):
        def method(api, *args, **kwargs):
            assert api.token == self.TOKEN
            self.calls.append((name, args, kwargs))

        return method

    def _commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", (repo_id,), kwargs))
        if self.fail is not None:
            raise self.fail
        for op in operations:
            self.files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'ab' * 20}",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="ab" * 20,
        )


def test_push_uploads_the_three_files_in_one_commit(hub_expert, monkeypatch) -> None:
    hub = FakeHub(monkeypatch)
    result = t2("push", "sums-v1", "alice/sums-svf", "--private")
    assert result.exit_code == 0, result.output
    assert [name for name, _, _ in hub.calls] == ["create_repo", "create_commit"]
    assert hub.calls[0][1:] == (("alice/sums-svf",), {"repo_type": "model", "private": True, "exist_ok": True})
    assert hub.calls[1][2]["revision"] is None and hub.calls[1][2]["commit_message"] == "Upload t2 expert sums-v1"
    assert set(hub.files) == EXPERT_FILES
    card = hub.files["README.md"].decode()
    for line in (
        "library_name: t2",
        "base_model: acme/tiny-llama",
        "base_model_relation: adapter",
        "- task:sums",
        "| valid_accuracy | 0.5 |",
        "- finetuned from `sums-v0`",
    ):
        assert line in card, line
    config = json.loads(hub.files["expert_config.json"])
    assert config["name"] == "sums-v1" and config["kind"] == "trained" and config["num_matrices"] == 21
    from safetensors.torch import load as load_bytes

    pushed = load_bytes(hub.files["expert.safetensors"])
    assert all(torch.equal(pushed[k], hub_expert[k]) for k in hub_expert)
    assert f"in commit {'ab' * 6}" in result.output and FakeHub.TOKEN not in result.output


def test_push_to_a_branch_creates_it_and_commits_there(hub_expert, monkeypatch) -> None:
    hub = FakeHub(monkeypatch)
    result = t2("push", "sums-v1", "alice/sums-svf", "--branch", "dev")
    assert result.exit_code == 0, result.output
    assert [name for name, _, _ in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[1][1:] == (("alice/sums-svf",), {"branch": "dev", "repo_type": "model", "exist_ok": True})
    assert hub.calls[2][2]["revision"] == "dev" and "alice/sums-svf@dev" in result.output


def _http_error(status: int) -> Exception:
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError(
        f"{status} Client Error", response=SimpleNamespace(status_code=status, headers={}, request=None)
    )


PUSH_FAILURES = [
    ("offline", "offline", "cannot push while HF_HUB_OFFLINE is set"),
    ("no token", "no-token", "no Hugging Face token found"),
    ("403", _http_error(403), "your token cannot write to alice/sums-svf (403)"),
    ("401", _http_error(401), "the Hub rejected the token (401)"),
    ("repo not found", "repo-not-found", "Hub repo alice/sums-svf not found"),
    ("no connection", ConnectionError("connection refused"), "cannot reach the Hub (ConnectionError)"),
]


@pytest.mark.parametrize("case", PUSH_FAILURES, ids=[c[0] for c in PUSH_FAILURES])
def test_push_failures_are_one_line_and_never_show_the_token(case, hub_expert, monkeypatch) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    _, failure, expected = case
    if failure == "repo-not-found":
        failure = RepositoryNotFoundError("404", response=SimpleNamespace(status_code=404, headers={}, request=None))
    hub = FakeHub(monkeypatch, fail=failure if isinstance(failure, Exception) else None)
    if failure == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if failure == "no-token":
        monkeypatch.setattr("t2cli.experts.hub.get_token", lambda: None)
    result = t2("push", "sums-v1", "alice/sums-svf")
    assert result.exit_code == 1
    assert expected in one_error(result) and FakeHub.TOKEN not in result.output
    if isinstance(failure, str):
        assert hub.calls == []  # refused before any request


@pytest.mark.parametrize("command", ["export", "import", "push", "pull"])
def test_sharing_commands_have_help_with_examples(command: str) -> None:
    result = t2(command, "--help")
    assert result.exit_code == 0 and "Example" in result.output
