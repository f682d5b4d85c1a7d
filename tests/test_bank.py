"""Starter banks: built from a registry, checked file by file, installed into a fresh home, used by `auto`."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from registry.queries import experts as expert_rows
from registry.queries import routers as router_rows
from t2cli.ask.engine import Asker, AskSettings
from t2cli.bank import manifest
from t2cli.bank.build import build_bank, lift_of
from t2cli.bank.install import MARKER_FILE, install_bank, read_marker, router_staleness
from t2cli.bank.manifest import MANIFEST_FILE, BankError, read_bank
from t2cli.cli.app import app
from t2cli.errors import T2Error
from t2cli.eval.accuracy import EvalResult, make_result
from t2cli.experts.catalog import remove_expert
from t2cli.home import open_registry
from t2cli.models.hashing import sha256_file
from t2cli.router.store import register_router
from t2cli.router.train import select_experts, train_router
from t2cli.svf.expert import WEIGHTS_FILE, load_expert
from t2cli.tasks.types import TaskItem
from tests.ask_support import add_expert, math_and_code_experts

runner = CliRunner()
SMALL = {"train": 16, "valid": 4}


def _eval_file(path: Path, correct: dict[str, bool]) -> None:
    """What `t2 eval --json` prints (the same result type and serialisation), for the given per-item outcomes."""
    items = [TaskItem(id=key, prompt="", answer="", kind="exact") for key in correct]
    result = make_result(
        "sums",
        "test",
        None,
        items,
        list(correct.values()),
        [""] * len(items),
        1.0,
        1,
        result_type=EvalResult,
        max_new_tokens=16,
    )
    path.write_text(json.dumps(asdict(result)))


def test_a_lift_is_paired_on_the_same_items(tmp_path: Path) -> None:
    _eval_file(tmp_path / "sums-base.json", {"a": False, "b": False, "c": True, "d": False})
    _eval_file(tmp_path / "sums-m.json", {"d": True, "c": True, "b": True, "a": False})  # another order
    lift = lift_of(tmp_path, "sums", "m")
    assert lift is not None
    assert (lift.n, lift.base_correct, lift.expert_correct, lift.gains, lift.losses) == (4, 1, 3, 2, 0)
    assert lift.p == pytest.approx(0.5)
    assert lift.max_new_tokens == 16
    assert lift_of(tmp_path, "sums", "other") is None  # not measured
    _eval_file(tmp_path / "sums-x.json", {"a": True, "z": True})
    with pytest.raises(T2Error, match="different items"):
        lift_of(tmp_path, "sums", "x")


# --------------------------------------------------------------------------- build and install


@pytest.fixture()
def built_bank(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A bank (experts m and c, router r1) built from the test's registry under tmp/banks/tiny; then a new home."""
    with math_and_code_experts(tiny_llama, tmp_path) as (registry, adaptable, zs, _):
        experts = select_experts(registry, adaptable.base_model_id, None)
        router = train_router(registry, adaptable, name="r1", experts=experts, per_class=SMALL).router
        register_router(registry, router, base_model_id=adaptable.base_model_id)
        evals = tmp_path / "evals"
        evals.mkdir()
        _eval_file(evals / "sums-base.json", {"a": False, "b": True})
        _eval_file(evals / "sums-m.json", {"a": True, "b": True})
        bank = build_bank(["m", "c"], "r1", evals, "bash scripts/bank.sh", tmp_path / "banks" / "tiny", model="tiny")
    monkeypatch.setattr(manifest, "BANK_ROOT", tmp_path / "banks")
    monkeypatch.setenv("T2_HOME", str(tmp_path / "fresh-home"))
    return bank, zs


def test_a_built_bank_lists_every_file_with_its_hash_and_the_rebuild_commands(built_bank) -> None:
    bank, _ = built_bank
    again = read_bank(bank.folder)
    assert again == bank
    assert {e.name for e in bank.experts} == {"m", "c"} and bank.router is not None
    assert {f"experts/m/{WEIGHTS_FILE}", f"experts/c/{WEIGHTS_FILE}"} <= set(bank.files)
    lift = next(e.lift for e in bank.experts if e.name == "m")
    assert lift is not None and (lift.gains, lift.losses) == (1, 0)
    card = (bank.folder / "README.md").read_text()
    assert "bash scripts/bank.sh" in card and "sums.jsonl --name m`" in card and "--name r1" in card


def test_a_damaged_bank_file_is_refused(built_bank) -> None:
    bank, _ = built_bank
    weights = bank.folder / "experts" / "m" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BankError, match="does not match its sha256"):
        read_bank(bank.folder)


def test_the_bank_installs_into_a_fresh_home_with_the_same_z_and_a_current_router(built_bank, tiny_llama: Path) -> None:
    bank, zs = built_bank
    with open_registry() as registry:
        installed = install_bank(registry, bank, model=str(tiny_llama))
        assert sorted(installed.experts) == ["c", "m"] and installed.router == "r1"
        assert router_staleness(registry, installed) is None
        for name, z in zs.items():
            loaded = load_expert(registry, name)
            assert loaded.config.kind == "imported" and loaded.config.origin["source"] == "bank"
            assert all((loaded.z[key] == value).all() for key, value in z.items())
        again = install_bank(registry, bank, model=str(tiny_llama))  # idempotent: nothing replaced
        assert not again.changed and len(again.kept) == 3
        asker = Asker(registry, AskSettings(strategy="router", max_new_tokens=2), model=str(tiny_llama))
        result = asker.ask("What is 1 plus 2?")
    assert result.reason.startswith("router r1 (")


def test_auto_installs_the_bank_once_and_a_removed_expert_stays_removed(built_bank, tiny_llama: Path) -> None:
    bank, _ = built_bank
    settings = AskSettings(max_new_tokens=2)  # the default strategy
    assert settings.strategy == "auto"
    with open_registry() as registry:
        first = Asker(registry, settings, model=str(tiny_llama))
        assert first.installed is not None and first.installed.changed
        assert (registry.home / MARKER_FILE).exists()
        assert first.ask("What is 1 plus 2?").reason.startswith("router r1 (")
        remove_expert(registry, "m")
        second = Asker(registry, settings, model=str(tiny_llama))
        assert second.installed is None  # the marker: installed once per home
        answer = second.ask("What is 1 plus 2?")
        assert answer.choice == "base" and "auto: router 'r1' is stale" in answer.reason
        assert expert_rows.get(registry, "m") is None
        install_bank(registry, bank, model=str(tiny_llama))  # asked for: brings it back
        assert expert_rows.get(registry, "m") is not None
        assert Asker(registry, settings, model=str(tiny_llama)).ask("What is 1 plus 2?").reason.startswith("router r1")


def test_auto_without_a_bank_or_router_answers_with_the_base_weights_and_says_why(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with math_and_code_experts(tiny_llama, tmp_path) as (registry, _, _, _):
        asker = Asker(registry, AskSettings(max_new_tokens=2), model=str(tiny_llama))
        assert asker.installed is None and router_rows.all_routers(registry) == []
        answer = asker.ask("What is 1 plus 2?")
    assert answer.choice == "base" and answer.reason.startswith("base weights (auto: no router")


def test_bank_commands_list_and_install(built_bank, tiny_llama: Path) -> None:
    listed = runner.invoke(app, ["bank", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    banks = json.loads(listed.stdout)["banks"]
    assert [b["model"] for b in banks] == ["tiny"] and banks[0]["router"]["name"] == "r1"
    installed = runner.invoke(app, ["bank", "install", "--model", str(tiny_llama), "--json"])
    assert installed.exit_code == 0, installed.output
    report = json.loads(installed.stdout)
    assert sorted(report["experts"]) == ["c", "m"] and report["router"] == "r1" and report["router_stale"] is None


def test_bank_install_for_a_model_without_a_bank_is_one_clear_error(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest, "BANK_ROOT", tmp_path / "no-banks")
    result = runner.invoke(app, ["bank", "install", "--model", str(tiny_llama)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no starter bank ships for"), result.stderr


def test_the_shipped_banks_read_and_route_to_their_own_experts() -> None:
    """Every bank in the package passes its sha256 checks; its router routes to exactly its experts, each measured."""
    banks = [read_bank(folder) for folder in manifest.shipped_banks()]
    assert banks, "t2 ships at least the embedded model's bank (scripts/bank.sh builds it)"
    for bank in banks:
        names = {e.name for e in bank.experts}
        assert bank.router is not None and len(names) >= 3
        config = json.loads((bank.folder / bank.router.folder / "router_config.json").read_text())
        assert {routed["expert"] for routed in config["experts"]} == names
        assert all(e.lift is not None and e.lift.n >= 200 for e in bank.experts)


def test_a_rebuild_keeps_the_lift_of_an_unchanged_expert_file_and_drops_a_changed_ones(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A new router must not need the experts' evaluations again; a retrained expert must."""
    with math_and_code_experts(tiny_llama, tmp_path) as (registry, adaptable, _, tasks):
        experts = select_experts(registry, adaptable.base_model_id, None)
        router = train_router(registry, adaptable, name="r1", experts=experts, per_class=SMALL).router
        register_router(registry, router, base_model_id=adaptable.base_model_id)
        evals, empty = tmp_path / "evals", tmp_path / "no-evals"
        evals.mkdir()
        empty.mkdir()
        _eval_file(evals / "sums-base.json", {"a": False, "b": True})
        _eval_file(evals / "sums-m.json", {"a": True, "b": True})
        out = tmp_path / "banks" / "tiny"
        first = build_bank(["m", "c"], "r1", evals, "bash scripts/bank.sh", out, model="tiny")
        # the shipped card differs from what a re-export writes (as a bank installed, then rebuilt, does)
        card = out / "experts" / "m" / "README.md"
        first_card = card.read_bytes() + b"<!-- as shipped -->\n"
        card.write_bytes(first_card)
        files = {**first.files, "experts/m/README.md": sha256_file(card)}
        (out / MANIFEST_FILE).write_text(replace(first, files=files).to_json() + "\n")
        again = build_bank(["m", "c"], "r1", empty, "bash scripts/bank.sh", out, model="tiny")
        lifts = {e.name: e.lift for e in again.experts}
        assert lifts["m"] == next(e.lift for e in first.experts if e.name == "m") and lifts["m"] is not None
        assert lifts["c"] is None  # never measured
        assert (out / "experts" / "m" / "README.md").read_bytes() == first_card  # the shipped folder, kept as it was
        expert_rows.remove(registry, "m")
        add_expert(registry, adaptable, "m", category="math", task=tasks["math"], seed=9)
        retrained = build_bank(["m", "c"], None, empty, "bash scripts/bank.sh", out, model="tiny")
        assert next(e.lift for e in retrained.experts if e.name == "m") is None


# --------------------------------------------------------------------------- a newer bank after an upgrade of t2


def _newer_bank(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuild the shipped bank folder as a newer t2 would ship it: m and c as before, a new reasoning
    expert r, and router r1 retrained over the three. Built in its own home; T2_HOME is put back."""
    home = tmp_path / "fresh-home"
    monkeypatch.setenv("T2_HOME", str(tmp_path / "builder-v2"))
    (tmp_path / "v2").mkdir()
    with math_and_code_experts(tiny_llama, tmp_path / "v2") as (registry, adaptable, _, tasks):
        add_expert(registry, adaptable, "r", category="reasoning", task=tasks["math"], seed=3)
        experts = select_experts(registry, adaptable.base_model_id, None)
        router = train_router(registry, adaptable, name="r1", experts=experts, per_class=SMALL).router
        register_router(registry, router, base_model_id=adaptable.base_model_id)
        evals = tmp_path / "evals-v2"
        evals.mkdir()
        build_bank(["m", "c", "r"], "r1", evals, "bash scripts/bank.sh", tmp_path / "banks" / "tiny", model="tiny")
    monkeypatch.setenv("T2_HOME", str(home))


@pytest.mark.parametrize("marker", ["current", "written by an older t2"])
def test_a_newer_shipped_bank_installs_on_the_next_ask_and_replaces_the_old_banks_router(
    built_bank, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    settings = AskSettings(max_new_tokens=2)
    with open_registry() as registry:
        assert Asker(registry, settings, model=str(tiny_llama)).installed is not None
        old = router_rows.get(registry, "r1")
        assert old is not None
    marker_path = tmp_path / "fresh-home" / MARKER_FILE
    if marker == "written by an older t2":  # no manifest or router sha256, only the build date
        written = json.loads(marker_path.read_text())
        del written["manifest_sha256"], written["router_sha256"]
        marker_path.write_text(json.dumps(written | {"built": "2000-01-01"}))
    _newer_bank(tiny_llama, tmp_path, monkeypatch)
    with open_registry() as registry:
        upgrade = Asker(registry, settings, model=str(tiny_llama)).installed
        assert upgrade is not None and upgrade.upgraded
        assert upgrade.experts == ["r"] and upgrade.router == "r1"
        assert "upgraded to the new starter bank of" in upgrade.summary("tiny")
        new = router_rows.get(registry, "r1")
        assert new is not None and new.blob_sha256 != old.blob_sha256
        assert router_staleness(registry, upgrade) is None
        answer = Asker(registry, settings, model=str(tiny_llama)).ask("What is 1 plus 2?")
        assert answer.reason.startswith("router r1 (")
        assert Asker(registry, settings, model=str(tiny_llama)).installed is None  # once per bank


def test_an_upgrade_never_replaces_a_router_the_user_trained_under_the_banks_name(
    built_bank, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = AskSettings(max_new_tokens=2)
    with open_registry() as registry:
        asker = Asker(registry, settings, model=str(tiny_llama))
        experts = select_experts(registry, asker.prepared.base_model_id, None)
        mine = train_router(registry, asker.load(), name="r1", experts=experts, per_class={"train": 12, "valid": 4})
        register_router(registry, mine.router, base_model_id=asker.prepared.base_model_id, replace=True)
        users = router_rows.get(registry, "r1")
        # `t2 bank install` again: the experts are already installed, the router's name is the user's now
        again = install_bank(registry, read_bank(manifest.shipped_banks()[0]), previous=read_marker(registry.home))
        assert "r1: the name is taken by another router" in again.kept
    _newer_bank(tiny_llama, tmp_path, monkeypatch)
    with open_registry() as registry:
        upgrade = Asker(registry, settings, model=str(tiny_llama)).installed
        assert upgrade is not None and not upgrade.upgraded and upgrade.experts == ["r"]
        assert "r1: the name is taken by another router" in upgrade.kept
        assert router_rows.get(registry, "r1").blob_sha256 == users.blob_sha256


def test_t2_ask_says_on_stderr_what_it_installed(built_bank, tiny_llama: Path) -> None:
    args = ["ask", "What is 1 plus 2?", "--model", str(tiny_llama), "--max-new-tokens", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "installed the starter bank of" in first.stderr and "m, c, r1" in first.stderr
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "starter bank" not in again.stderr  # once per home
