"""A home written by an older t2 release opens, migrates and works with this code.

``tests/data/home-<commit>.tar.gz`` was written by ``tests/data/make_old_home.py`` running
the release at <commit> (decompose a tiny Llama, train two experts, mix them, evaluate one).
Each test unpacks a fresh copy, points T2_HOME at it and uses it as a user would.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t2cli.cli.app import app

FIXTURES = sorted((Path(__file__).parent / "data").glob("home-*.tar.gz"))


@pytest.fixture(params=FIXTURES, ids=[f.name.removesuffix(".tar.gz") for f in FIXTURES])
def old_home(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    with tarfile.open(request.param) as tar:
        tar.extractall(tmp_path, filter="data")
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    monkeypatch.setenv("T2_HOME", str(tmp_path / manifest["home"]))
    return {**manifest, "model": str(tmp_path / manifest["model"]), "task": str(tmp_path / manifest["task"])}


def t2(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"t2 {' '.join(args)} -> {result.exit_code}\n{result.output}"
    return result


def test_fixtures_exist() -> None:
    assert FIXTURES, "tests/data holds no home written by an older release"


def test_the_old_home_verifies_and_lists_what_the_old_release_registered(old_home: dict) -> None:
    t2("db", "status")
    verify = json.loads(t2("db", "verify", "--json").stdout)
    assert verify["missing"] == [] and verify["corrupt"] == [], verify
    listed = t2("experts", "list").output
    for name in old_home["experts"]:
        assert name in listed
    lineage = t2("experts", "show", "sums-mix").output
    assert "sums-v1" in lineage and "sums-v2" in lineage
    runs = t2("runs", "list").output
    assert runs.count("sums-v") >= 2  # the two training runs, by the experts they registered


def test_old_experts_evaluate_ask_mix_and_round_trip_with_this_code(old_home: dict, tmp_path: Path) -> None:
    model, task = old_home["model"], old_home["task"]
    t2("eval", "--task", task, "--expert", "sums-v1", "--model", model, "--limit", "2")
    t2("ask", "1 + 2 =", "--strategy", "expert:sums-mix", "--model", model, "--max-new-tokens", "4", "--device", "cpu")
    t2("mix", "sums-v1", "sums-v2", "--weights", "0.5,0.5", "--name", "new-mix")
    t2("export", "sums-v2", str(tmp_path / "out"))
    t2("import", str(tmp_path / "out"), "--name", "sums-v2-again")
    listed = t2("experts", "list").output
    assert "new-mix" in listed and "sums-v2-again" in listed
