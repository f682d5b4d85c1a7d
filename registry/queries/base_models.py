"""Base models: register one by its weight fingerprint, find it again, list them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from registry.records import BaseModelRecord, NewBaseModel, from_attributes, values_of
from registry.schema import BaseModel, Expert

if TYPE_CHECKING:
    from registry.registry import Registry


def _record(row: BaseModel) -> BaseModelRecord:
    return from_attributes(BaseModelRecord, row, config=json.loads(row.config_json or "{}"))


def get_or_add(registry: Registry, model: NewBaseModel) -> BaseModelRecord:
    """The base model with ``model.fingerprint``, inserted first when it is not registered yet."""
    with registry.session() as session:
        row = session.scalars(select(BaseModel).where(BaseModel.fingerprint == model.fingerprint)).first()
        if row is None:
            row = BaseModel(
                **values_of(model, without=("config",)), config_json=json.dumps(model.config, sort_keys=True)
            )
            session.add(row)
            session.flush()
        return _record(row)


def by_fingerprint(registry: Registry, fingerprint: str) -> BaseModelRecord | None:
    """The registered base model whose weights have this fingerprint, if any."""
    with registry.session(readonly=True) as session:
        row = session.scalars(select(BaseModel).where(BaseModel.fingerprint == fingerprint)).first()
        return None if row is None else _record(row)


def by_id(registry: Registry, base_model_id: int) -> BaseModelRecord | None:
    """The base model with this id, if any."""
    with registry.session(readonly=True) as session:
        row = session.get(BaseModel, base_model_id)
        return None if row is None else _record(row)


def all_base_models(registry: Registry) -> list[BaseModelRecord]:
    """Every registered base model, in registration order."""
    with registry.session(readonly=True) as session:
        return [_record(row) for row in session.scalars(select(BaseModel).order_by(BaseModel.id))]


def expert_counts(registry: Registry) -> dict[int, int]:
    """Base model id -> how many experts it has (models without experts are absent)."""
    with registry.session(readonly=True) as session:
        rows = session.execute(select(Expert.base_model_id, func.count(Expert.id)).group_by(Expert.base_model_id))
        return {int(base_id): int(count) for base_id, count in rows}
