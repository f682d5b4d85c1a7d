"""Install a starter bank into the registry: its experts (as ``t2 import`` would) and its router.

``t2 ask`` installs the bank of the loaded base model once, on first use, so that a fresh
install dispatches with no training first; ``t2 bank install`` does it on demand. A marker
file in the t2 home records the first install: an expert the user removes afterwards is
not brought back behind their back (``t2 bank install`` brings it back when asked).

A newer t2 may ship a rebuilt bank (new experts, a router over them). The marker names the bank
it installed (the sha256 of its ``bank.json``), so the first routed ``t2 ask`` after an upgrade
installs the new bank's experts and puts its router in place of the router the old bank
installed; a router of that name the user trained or replaced is never touched.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from registry.queries import base_models
from registry.queries import experts as expert_rows
from registry.queries import routers as router_rows
from t2cli.bank.manifest import MANIFEST_FILE, Bank, bank_for
from t2cli.experts.importing import import_expert
from t2cli.models.hashing import sha256_file
from t2cli.router.model import CONFIG_FILE, WEIGHTS_FILE, Router, read_router
from t2cli.router.store import load_router, register_router, stale_reason
from t2cli.svf.expert import WEIGHTS_FILE as EXPERT_WEIGHTS_FILE

if TYPE_CHECKING:
    from registry import Registry
    from registry.records import RouterRecord

MARKER_FILE = "bank-installed.json"


@dataclass
class Installed:
    """What an install registered, and what it left alone (with why)."""

    bank: Bank
    experts: list[str] = field(default_factory=list)
    router: str | None = None
    kept: list[str] = field(default_factory=list)  # "NAME: why" for each piece not installed
    stale: str | None = None  # the router does not match the registered experts (a name was taken)
    upgraded: bool = False  # this install replaced the router of an older bank
    router_sha256: str | None = None  # the bank's router as registered here (installed or found in place)

    def summary(self, model_name: str) -> str:
        """One line for stderr: what this install registered."""
        names = ", ".join([*self.experts, *([self.router] if self.router else [])])
        verb = "upgraded to the new starter bank" if self.upgraded else "installed the starter bank"
        return f"{verb} of {model_name}: {names}"

    @property
    def changed(self) -> bool:
        return bool(self.experts or self.router)


def install_bank(
    registry: Registry, bank: Bank, *, model: str | None = None, previous: dict[str, Any] | None = None
) -> Installed:
    """Register the bank's experts and router that are not registered yet; never replaces anything,
    except, given the ``previous`` install's marker, the router that an older bank installed."""
    result = Installed(bank)
    for expert in bank.experts:
        folder = bank.folder / expert.folder
        existing = expert_rows.get(registry, expert.name)
        if existing is not None:
            same = existing.blob_sha256 == sha256_file(folder / EXPERT_WEIGHTS_FILE)
            result.kept.append(
                f"{expert.name}: {'already installed' if same else 'the name is taken by another expert'}"
            )
            continue
        import_expert(registry, folder, model=model, source="bank", location=f"t2 starter bank {bank.folder.name}")
        result.experts.append(expert.name)
    if bank.router is not None:
        _install_router(registry, bank, previous, result)
    _write_marker(registry.home, bank, result)
    return result


def _installed_by(previous: dict[str, Any] | None, record: RouterRecord) -> bool:
    """Whether ``record`` is the router the ``previous`` bank install registered, untouched since.

    Markers written since t2 records the router's sha256 compare it; an older marker names the
    experts that install registered, and a router routing to those experts only is the bank's.
    """
    if previous is None or previous.get("router") != record.name:
        return False
    if "router_sha256" in previous:
        return previous["router_sha256"] == record.blob_sha256
    routed = {entry.get("expert") for entry in json.loads(record.config_json).get("experts", [])}
    return bool(routed) and routed <= set(previous.get("experts", []))


def _install_router(registry: Registry, bank: Bank, previous: dict[str, Any] | None, result: Installed) -> None:
    """Register the bank's router into ``result`` (router, upgraded, router_sha256), or say in ``kept`` why not."""
    assert bank.router is not None
    name = bank.router.name
    base = base_models.by_fingerprint(registry, bank.fingerprint)
    if base is None:  # no expert could be imported, so the base model was never registered
        result.kept.append(f"{name}: none of its experts is installed")
        return
    folder = bank.folder / bank.router.folder
    router = read_router(
        folder / WEIGHTS_FILE, (folder / CONFIG_FILE).read_text(encoding="utf-8"), where=f"bank router {name!r}"
    )
    # The router was built where the bank was; here its base model is the local copy (same fingerprint).
    local = replace(router.config.base_model, name=base.name, source=base.source, location=base.location)
    router.config = replace(router.config, base_model=local)
    record = router_rows.get(registry, name)
    if record is not None and record.base_model_id == base.id and _same_router(registry, record, router):
        result.kept.append(f"{name}: already installed")
        result.router_sha256 = record.blob_sha256
        return
    if record is not None and (record.base_model_id != base.id or not _installed_by(previous, record)):
        result.kept.append(f"{name}: the name is taken by another router")
        return
    register_router(registry, router, base_model_id=base.id, replace=record is not None)
    registered = router_rows.get(registry, name)
    assert registered is not None
    result.router, result.upgraded, result.router_sha256 = name, record is not None, registered.blob_sha256


def _same_router(registry: Registry, record: RouterRecord, router: Router) -> bool:
    """Whether the registered router has the bank router's experts and weights."""
    registered = load_router(registry, record)
    fields = ("mean", "scale", "coef", "intercept")
    return registered.config.experts == router.config.experts and all(
        torch.equal(getattr(registered, name), getattr(router, name)) for name in fields
    )


def router_staleness(registry: Registry, installed: Installed) -> str | None:
    """Why the installed bank router does not match the registered experts (None when it does)."""
    if installed.bank.router is None:
        return None
    record = router_rows.get(registry, installed.bank.router.name)
    if record is None:
        return None
    return stale_reason(registry, load_router(registry, record), record.base_model_id)


def manifest_sha256(bank: Bank) -> str:
    """The sha256 of the bank's ``bank.json``: it lists every file's sha256, so it names the whole bank."""
    return sha256_file(bank.folder / MANIFEST_FILE)


def read_marker(home: Path) -> dict[str, Any] | None:
    """The marker of this home's bank install, if any (an unreadable one counts as an install of no known bank)."""
    path = home / MARKER_FILE
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _write_marker(home: Path, bank: Bank, result: Installed) -> None:
    """Record the install (written to a temp file, then renamed)."""
    marker: dict[str, Any] = {
        "bank": bank.folder.name,
        "manifest_sha256": manifest_sha256(bank),
        "built": bank.built,
        "installed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "experts": result.experts,
        "router": result.router,
        "kept": result.kept,
    }
    if result.router_sha256 is not None and bank.router is not None:
        # the router the bank put in place (or found in place): what a later upgrade may replace
        marker["router"] = bank.router.name
        marker["router_sha256"] = result.router_sha256
    home.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bank-", dir=home)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(marker, handle, indent=2)
    os.replace(tmp, home / MARKER_FILE)


def first_use_install(registry: Registry, fingerprint: str, *, model: str | None = None) -> Installed | None:
    """Install the shipped bank of the base model with ``fingerprint`` once per t2 home, and once more
    for each newer bank a t2 upgrade ships (None: nothing to do)."""
    marker = read_marker(registry.home)
    if marker is not None and not marker:  # a marker we cannot read: installed once, never again
        return None
    bank = bank_for(fingerprint)
    if bank is None:
        return None
    if marker is None:
        return install_bank(registry, bank, model=model)
    if marker.get("bank") != bank.folder.name or _same_bank(marker, bank):
        return None
    return install_bank(registry, bank, model=model, previous=marker)


def _same_bank(marker: dict[str, Any], bank: Bank) -> bool:
    if "manifest_sha256" in marker:
        return marker["manifest_sha256"] == manifest_sha256(bank)
    return marker.get("built") == bank.built  # a marker written before t2 recorded the manifest's sha256
