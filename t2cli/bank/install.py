"""Install a starter bank into the registry: its experts (as ``t2 import`` would) and its router.

``t2 ask`` installs the bank of the loaded base model once, on first use, so that a fresh
install dispatches with no training first; ``t2 bank install`` does it on demand. A marker
file in the t2 home records the first install: an expert the user removes afterwards is
not brought back behind their back (``t2 bank install`` brings it back when asked).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from registry.queries import base_models
from registry.queries import experts as expert_rows
from registry.queries import routers as router_rows
from t2cli.bank.manifest import Bank, bank_for
from t2cli.experts.importing import import_expert
from t2cli.models.hashing import sha256_file
from t2cli.router.model import CONFIG_FILE, WEIGHTS_FILE, read_router
from t2cli.router.store import load_router, register_router, stale_reason
from t2cli.svf.expert import WEIGHTS_FILE as EXPERT_WEIGHTS_FILE

if TYPE_CHECKING:
    from registry import Registry

MARKER_FILE = "bank-installed.json"


@dataclass
class Installed:
    """What an install registered, and what it left alone (with why)."""

    bank: Bank
    experts: list[str] = field(default_factory=list)
    router: str | None = None
    kept: list[str] = field(default_factory=list)  # "NAME: why" for each piece not installed
    stale: str | None = None  # the router does not match the registered experts (a name was taken)

    @property
    def changed(self) -> bool:
        return bool(self.experts or self.router)


def install_bank(registry: Registry, bank: Bank, *, model: str | None = None) -> Installed:
    """Register the bank's experts and router that are not registered yet; never replaces anything."""
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
        result.router, why = _install_router(registry, bank)
        if why:
            result.kept.append(f"{bank.router.name}: {why}")
    _write_marker(registry.home, bank, result)
    return result


def _install_router(registry: Registry, bank: Bank) -> tuple[str | None, str | None]:
    """(name registered or None, why not)."""
    assert bank.router is not None
    name = bank.router.name
    base = base_models.by_fingerprint(registry, bank.fingerprint)
    if base is None:  # no expert could be imported, so the base model was never registered
        return None, "none of its experts is installed"
    record = router_rows.get(registry, name)
    if record is not None:
        return None, "already installed" if record.base_model_id == base.id else "the name is taken by another router"
    folder = bank.folder / bank.router.folder
    router = read_router(
        folder / WEIGHTS_FILE, (folder / CONFIG_FILE).read_text(encoding="utf-8"), where=f"bank router {name!r}"
    )
    # The router was built where the bank was; here its base model is the local copy (same fingerprint).
    local = replace(router.config.base_model, name=base.name, source=base.source, location=base.location)
    router.config = replace(router.config, base_model=local)
    register_router(registry, router, base_model_id=base.id)
    return name, None


def router_staleness(registry: Registry, installed: Installed) -> str | None:
    """Why the installed bank router does not match the registered experts (None when it does)."""
    if installed.bank.router is None:
        return None
    record = router_rows.get(registry, installed.bank.router.name)
    if record is None:
        return None
    return stale_reason(registry, load_router(registry, record), record.base_model_id)


def _write_marker(home: Path, bank: Bank, result: Installed) -> None:
    """Record the install (written to a temp file, then renamed)."""
    marker = {
        "bank": bank.folder.name,
        "built": bank.built,
        "installed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "experts": result.experts,
        "router": result.router,
        "kept": result.kept,
    }
    home.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bank-", dir=home)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(marker, handle, indent=2)
    os.replace(tmp, home / MARKER_FILE)


def first_use_install(registry: Registry, fingerprint: str, *, model: str | None = None) -> Installed | None:
    """Install the shipped bank of the base model with ``fingerprint`` once per t2 home (None: nothing to do)."""
    if (registry.home / MARKER_FILE).exists():
        return None
    bank = bank_for(fingerprint)
    if bank is None:
        return None
    return install_bank(registry, bank, model=model)
