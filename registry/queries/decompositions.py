"""Decompositions and their matrices: the SVD factors stored per base model and target set."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from registry.blobs import BlobInfo
from registry.records import DecompositionRecord, MatrixRecord, MatrixSummary, from_attributes
from registry.schema import BaseModel, Blob, Decomposition, DecompositionMatrix

if TYPE_CHECKING:
    from registry.registry import Registry


def _record(session: Session, row: Decomposition) -> DecompositionRecord:
    stored = session.scalar(
        select(func.count(DecompositionMatrix.id)).where(DecompositionMatrix.decomposition_id == row.id)
    )
    return from_attributes(DecompositionRecord, row, stored_matrices=int(stored or 0), size_bytes=row.size_bytes or 0)


def get_or_add(
    registry: Registry,
    *,
    base_model_id: int,
    targets_spec: str,
    targets_key: str,
    dtype: str,
    method: str,
    num_matrices: int,
) -> DecompositionRecord:
    """The decomposition of ``base_model_id`` with ``targets_key``, created ("partial", empty) if new."""
    with registry.session() as session:
        row = session.scalars(
            select(Decomposition).where(
                Decomposition.base_model_id == base_model_id, Decomposition.targets_key == targets_key
            )
        ).first()
        if row is None:
            row = Decomposition(
                base_model_id=base_model_id,
                targets_spec=targets_spec,
                targets_key=targets_key,
                dtype=dtype,
                method=method,
                status="partial",
                num_matrices=num_matrices,
            )
            session.add(row)
            session.flush()
        return _record(session, row)


def by_id(registry: Registry, decomposition_id: int) -> DecompositionRecord | None:
    """The decomposition with this id, if any."""
    with registry.session(readonly=True) as session:
        row = session.get(Decomposition, decomposition_id)
        return None if row is None else _record(session, row)


def find_complete(registry: Registry, fingerprint: str, targets_key: str) -> DecompositionRecord | None:
    """A complete decomposition of the base model with ``fingerprint`` over the matrices of ``targets_key``."""
    with registry.session(readonly=True) as session:
        row = session.scalars(
            select(Decomposition)
            .join(BaseModel, Decomposition.base_model_id == BaseModel.id)
            .where(
                BaseModel.fingerprint == fingerprint,
                Decomposition.targets_key == targets_key,
                Decomposition.status == "complete",
            )
        ).first()
        return None if row is None else _record(session, row)


def of_base_model(registry: Registry, base_model_id: int, *, complete_only: bool = False) -> list[DecompositionRecord]:
    """The decompositions of a base model, oldest first."""
    query = select(Decomposition).where(Decomposition.base_model_id == base_model_id)
    if complete_only:
        query = query.where(Decomposition.status == "complete")
    with registry.session(readonly=True) as session:
        return [_record(session, row) for row in session.scalars(query.order_by(Decomposition.id))]


def factor_blobs(registry: Registry, decomposition_id: int) -> dict[str, str]:
    """Matrix name -> sha256 of its factors blob, in the order the matrices were stored."""
    with registry.session(readonly=True) as session:
        rows = session.execute(
            select(DecompositionMatrix.name, DecompositionMatrix.blob_sha256)
            .where(DecompositionMatrix.decomposition_id == decomposition_id)
            .order_by(DecompositionMatrix.id)
        ).all()
    return {name: sha for name, sha in rows}


def forget_matrices(registry: Registry, decomposition_id: int, names: Collection[str]) -> None:
    """Delete these matrices' rows (their blob went missing: they will be recomputed)."""
    with registry.session() as session:
        session.execute(
            delete(DecompositionMatrix).where(
                DecompositionMatrix.decomposition_id == decomposition_id, DecompositionMatrix.name.in_(list(names))
            )
        )


def reusable_matrices(
    registry: Registry, *, base_model_id: int, dtype: str, other_than: int, names: Collection[str]
) -> list[MatrixRecord]:
    """Matrices named ``names`` that another decomposition (not ``other_than``) of the same base stored in ``dtype``."""
    with registry.session(readonly=True) as session:
        rows = session.scalars(
            select(DecompositionMatrix)
            .join(Decomposition)
            .where(
                Decomposition.base_model_id == base_model_id,
                Decomposition.dtype == dtype,
                Decomposition.id != other_than,
                DecompositionMatrix.name.in_(list(names)),
            )
            .order_by(DecompositionMatrix.id)
        ).all()
        return [
            MatrixRecord(r.name, r.layer, r.role, r.rows, r.cols, r.rank, r.blob_sha256, r.rel_error, r.seconds)
            for r in rows
        ]


def add_matrices(
    registry: Registry, decomposition_id: int, matrices: Sequence[MatrixRecord], *, new_blobs: Sequence[BlobInfo] = ()
) -> None:
    """Record matrices of a decomposition in one transaction; ``new_blobs``: their just-stored blob files."""
    with registry.session() as session:
        for info in new_blobs:
            registry.add_blob(session, info, "svd")
        for m in matrices:
            session.add(
                DecompositionMatrix(
                    decomposition_id=decomposition_id,
                    name=m.name,
                    layer=m.layer,
                    role=m.role,
                    rows=m.rows,
                    cols=m.cols,
                    rank=m.rank,
                    blob_sha256=m.blob_sha256,
                    rel_error=m.rel_error,
                    seconds=m.seconds,
                )
            )


def _size_in(session: Session, decomposition_id: int) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(Blob.size), 0))
            .join(DecompositionMatrix, DecompositionMatrix.blob_sha256 == Blob.sha256)
            .where(DecompositionMatrix.decomposition_id == decomposition_id)
        )
        or 0
    )


def size_bytes(registry: Registry, decomposition_id: int) -> int:
    """Bytes of the blobs a decomposition's matrices point at."""
    with registry.session(readonly=True) as session:
        return _size_in(session, decomposition_id)


def summary(registry: Registry, decomposition_id: int) -> MatrixSummary:
    """How many matrices a decomposition holds, their worst error and the bytes of their blobs."""
    with registry.session(readonly=True) as session:
        count, max_err = session.execute(
            select(func.count(DecompositionMatrix.id), func.max(DecompositionMatrix.rel_error)).where(
                DecompositionMatrix.decomposition_id == decomposition_id
            )
        ).one()
        return MatrixSummary(
            int(count), None if max_err is None else float(max_err), _size_in(session, decomposition_id)
        )


def mark_complete(
    registry: Registry, decomposition_id: int, *, size_bytes: int, max_rel_error: float, seconds: float
) -> None:
    """Set status "complete" with its size, worst error and completion time; ``seconds`` adds to the time spent."""
    with registry.session() as session:
        row = session.get(Decomposition, decomposition_id)
        if row is None:
            return
        row.status = "complete"
        row.size_bytes = int(size_bytes)
        row.max_rel_error = float(max_rel_error)
        row.seconds = (row.seconds or 0.0) + seconds
        row.completed_at = datetime.now(timezone.utc)
