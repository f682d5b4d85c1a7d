"""Routers in the registry: register, load (hash-checked), find the one for a base model, tell if stale.

A router is stale when the category experts it was trained for are no longer the ones
pass 1 would route to: an expert removed, one added, or one retrained (same name,
other file). Routing with it would send prompts to experts it never saw, so
``t2 ask`` refuses it and says how to retrain it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.queries import experts as expert_rows
from registry.queries import routers as router_rows
from registry.records import NewRouter, RouterRecord
from t2cli.models.resolve import model_argument
from t2cli.router.model import WEIGHTS_FILE, RoutedExpert, Router, RouterConfig, RouterError, read_router
from t2cli.svf.names import check_expert_name
from t2cli.tasks.dispatch_task import CategoryExpert, category_experts

if TYPE_CHECKING:
    from registry import Registry


def register_router(registry: Registry, router: Router, *, base_model_id: int, replace: bool = False) -> int:
    """Store the router's weights as a blob and insert its row; returns the router id."""
    check_expert_name(router.config.name)  # routers follow the expert-name rule
    tmp_dir = registry.home / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="router-", dir=tmp_dir))
    try:
        router.save(folder)
        info = registry.blobs.put_file(folder / WEIGHTS_FILE, move=True)
    finally:
        for leftover in folder.iterdir():
            leftover.unlink(missing_ok=True)
        os.rmdir(folder)
    new = NewRouter(router.config.name, base_model_id, router.config.valid_accuracy, router.config.to_json())
    return router_rows.add(registry, new, info, replace=replace)


def load_router(registry: Registry, record: RouterRecord) -> Router:
    """The router of ``record``, its weights hash-checked against the blob store."""
    registry.blobs.check(record.blob_sha256)
    return read_router(registry.blobs.path(record.blob_sha256), record.config_json, where=f"router {record.name!r}")


def find_router(registry: Registry, name: str | None, base_model_id: int | None, model_name: str) -> RouterRecord:
    """The router called ``name``, else the latest one of the base model; a clear error when there is none."""
    if name is not None:
        record = router_rows.get(registry, name)
        if record is None:
            known = ", ".join(r.name for r in router_rows.all_routers(registry)) or "none"
            raise RouterError(f"no router named {name!r} (registered: {known})", "list them with `t2 router list`")
        return record
    record = None if base_model_id is None else router_rows.latest_of_base_model(registry, base_model_id)
    if record is None:
        raise RouterError(
            f"no router is registered for {model_name}",
            "train one with `t2 router train` (needs experts of at least one category), or use --strategy prompt",
        )
    return record


def current_router(
    registry: Registry, name: str | None, base_model_id: int | None, model_name: str
) -> tuple[RouterRecord, Router]:
    """The router to use with a loaded base model, checked: registered, readable, of that model, not stale.

    ``name`` None: the latest router of the base model. Each failure is one ``RouterError``
    whose hint names the command that fixes it.
    """
    record = find_router(registry, name, base_model_id, model_name)
    if record.base_model_id != base_model_id:
        raise RouterError(
            f"router {record.name!r} belongs to base model {record.base_model_name}; the loaded model is {model_name}",
            f"use --model {model_argument(record.base_model_name, record.base_model_location)}, "
            "or train a router for this model with `t2 router train`",
        )
    router = load_router(registry, record)
    stale = stale_reason(registry, router, record.base_model_id)
    if stale is not None:
        experts = ",".join(e.expert for e in category_experts(registry, record.base_model_id))
        raise RouterError(
            f"router {record.name!r} is stale: {stale} since it was trained",
            f"retrain it with `t2 router train --name {record.name} --replace` (experts now: {experts or 'none'})",
        )
    return record, router


def routed_experts(registry: Registry, experts: list[CategoryExpert]) -> tuple[RoutedExpert, ...]:
    """The category experts as a router records them (with each expert's file hash)."""
    routed = []
    for expert in experts:
        record = expert_rows.get(registry, expert.expert)
        routed.append(RoutedExpert(expert.category, expert.expert, record.blob_sha256 if record else ""))
    return tuple(sorted(routed, key=lambda e: e.category))


def stale_reason(registry: Registry, router: Router, base_model_id: int) -> str | None:
    """Why ``router`` no longer matches the category experts of its base model, or None when it does."""
    now = {e.category: e for e in routed_experts(registry, category_experts(registry, base_model_id))}
    return _changes(now, {e.category: e for e in router.config.experts})


def _changes(now: dict[str, RoutedExpert], then: dict[str, RoutedExpert]) -> str | None:
    changes = []
    for category in sorted(set(now) | set(then)):
        old, new = then.get(category), now.get(category)
        if new is None:
            changes.append(f"{category} expert {old.expert} is gone" if old else category)
        elif old is None:
            changes.append(f"{category} expert {new.expert} was added")
        elif old.expert != new.expert:
            changes.append(f"{category} is now answered by {new.expert}, not {old.expert}")
        elif old.blob_sha256 != new.blob_sha256:
            changes.append(f"{category} expert {new.expert} was retrained")
    return "; ".join(changes) or None


@dataclass(frozen=True)
class RouterRow:
    """A router as ``t2 router list`` shows it."""

    name: str
    base_model: str
    classes: tuple[str, ...]
    experts: dict[str, str]  # category -> expert
    valid_accuracy: float | None
    stale: str | None  # why it no longer matches its experts, or None
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _row(registry: Registry, record: RouterRecord) -> RouterRow:
    config = RouterConfig.from_json(record.config_json, where=f"router {record.name!r}")
    now = {e.category: e for e in routed_experts(registry, category_experts(registry, record.base_model_id))}
    return RouterRow(
        name=record.name,
        base_model=record.base_model_name,
        classes=config.classes,
        experts={e.category: e.expert for e in config.experts},
        valid_accuracy=record.valid_accuracy,
        stale=_changes(now, {e.category: e for e in config.experts}),
        created_at=record.created_at.isoformat(),
    )


def list_routers(registry: Registry) -> list[RouterRow]:
    """Every router with its status (current or stale), oldest first."""
    return [_row(registry, record) for record in router_rows.all_routers(registry)]


def describe_router(registry: Registry, name: str) -> tuple[RouterRow, dict[str, Any]]:
    """A router's list row and its whole config."""
    record = find_router(registry, name, None, "")
    return _row(registry, record), json.loads(record.config_json)
