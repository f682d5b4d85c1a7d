"""The registry database: pragmas, locking, foreign keys, verify/gc, rollback, concurrency, errors."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from registry import (
    BaseModel,
    Blob,
    BlobMissing,
    Decomposition,
    DecompositionMatrix,
    Expert,
    ExpertParent,
    ExpertTag,
    Registry,
    StoreUnavailable,
)
from registry.db import translate_error
from registry.records import values_of
from tests.blob_data import put_data
from tests.registry_support import new_base_model


def _base_model(session: Session, fingerprint: str = "f" * 64) -> BaseModel:
    model = BaseModel(**values_of(new_base_model(fingerprint), without=("config",)))
    session.add(model)
    session.flush()
    return model


def _expert(reg: Registry, session: Session, base: BaseModel, name: str, content: bytes | None = None) -> Expert:
    blob = reg.add_blob(session, put_data(reg.blobs, content or name.encode()), "expert")
    expert = Expert(name=name, base_model=base, kind="trained", targets_json="[]", blob_sha256=blob.sha256)
    session.add(expert)
    session.flush()
    return expert


def _age(reg: Registry, sha: str) -> None:
    """Backdate a blob file past gc's grace period."""
    os.utime(reg.blobs.path(sha), (1, 1))


def test_pragmas_are_set_on_every_connection(reg: Registry) -> None:
    with reg.session() as session:
        conn = session.connection()
        values = {
            p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
            for p in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    assert values == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30000, "synchronous": 1}


def _other_writer_can_lock(db_path: Path) -> bool:
    other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()


def test_write_sessions_begin_immediate_and_readonly_ones_do_not(reg: Registry) -> None:
    with reg.session() as session:
        session.scalar(select(func.count()).select_from(Blob))
        assert not _other_writer_can_lock(reg.db_path)  # we hold the write lock from the first read
    with reg.session(readonly=True) as session:
        session.scalar(select(func.count()).select_from(Blob))
        assert _other_writer_can_lock(reg.db_path)
    assert _other_writer_can_lock(reg.db_path)


def test_times_are_aware_utc_and_naive_times_are_refused(reg: Registry) -> None:
    with reg.session() as session:
        base = _base_model(session)
    assert base.created_at.tzinfo is timezone.utc
    assert abs((datetime.now(timezone.utc) - base.created_at).total_seconds()) < 60
    with pytest.raises(Exception, match="naive datetime"), reg.session() as session:
        session.get(BaseModel, base.id).created_at = datetime(2025, 1, 1)  # type: ignore[union-attr]


def test_deleting_a_base_model_with_experts_is_refused(reg: Registry) -> None:
    with reg.session() as session:
        base_id = _expert(reg, session, _base_model(session), "math").base_model_id
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), reg.session() as session:
        session.delete(session.get(BaseModel, base_id))
    with reg.session() as session:
        assert session.get(BaseModel, base_id) is not None


def test_deleting_an_expert_removes_its_tags_and_parent_links(reg: Registry) -> None:
    with reg.session() as session:
        base = _base_model(session)
        parent = _expert(reg, session, base, "math")
        child = _expert(reg, session, base, "math-mix")
        child.tags.extend([ExpertTag(tag="mixture"), ExpertTag(tag="gsm8k")])
        child.parent_links.append(ExpertParent(parent=parent, weight=0.5, relation="mixed"))
        parent_id, child_id = parent.id, child.id
    with pytest.raises(IntegrityError), reg.session() as session:  # a parent with children is kept (RESTRICT)
        session.delete(session.get(Expert, parent_id))
    with reg.session() as session:
        session.delete(session.get(Expert, child_id))
    with reg.session() as session:
        assert session.scalars(select(ExpertTag)).all() == []
        assert session.scalars(select(ExpertParent)).all() == []
        assert session.get(Expert, parent_id) is not None


def test_deleting_a_decomposition_cascades_to_matrices_and_detaches_experts(reg: Registry) -> None:
    with reg.session() as session:
        base = _base_model(session)
        svd = reg.add_blob(session, put_data(reg.blobs, b"usv"), "svd")
        decomposition = Decomposition(
            base_model=base, targets_spec="mlp", targets_key="k" * 64, dtype="float32", method="torch.linalg.svd"
        )
        decomposition.matrices.append(
            DecompositionMatrix(
                name="model.layers.0.mlp.down_proj",
                layer=0,
                role="mlp.down",
                rows=8,
                cols=16,
                rank=8,
                blob_sha256=svd.sha256,
                rel_error=1e-6,
                seconds=0.1,
            )
        )
        session.add(decomposition)
        expert = _expert(reg, session, base, "math")
        expert.decomposition = decomposition
        decomposition_id, expert_id = decomposition.id, expert.id
    with reg.session() as session:
        # Delete through SQL, not the ORM, to prove the database itself cascades.
        session.connection().exec_driver_sql(f"DELETE FROM decompositions WHERE id = {decomposition_id}")
    with reg.session() as session:
        assert session.scalars(select(DecompositionMatrix)).all() == []
        assert session.get(Expert, expert_id).decomposition_id is None  # type: ignore[union-attr]


def test_a_session_that_raises_rolls_back(reg: Registry) -> None:
    with pytest.raises(RuntimeError, match="boom"), reg.session() as session:
        _base_model(session)
        raise RuntimeError("boom")
    with reg.session() as session:
        assert session.scalars(select(BaseModel)).all() == []


def test_add_blob_inserts_once_and_needs_the_file(reg: Registry) -> None:
    info = put_data(reg.blobs, b"weights")
    with reg.session() as session:
        first = reg.add_blob(session, info, "svd")
    with reg.session() as session:
        again = reg.add_blob(session, info, "svd")
        assert again.sha256 == first.sha256 and again.size == 7
        assert session.scalar(select(func.count()).select_from(Blob)) == 1
    reg.blobs.remove(info.sha256)
    with pytest.raises(BlobMissing), reg.session() as session:
        reg.add_blob(session, info, "svd")


def test_verify_reports_missing_corrupt_orphan_and_unreferenced(reg: Registry) -> None:
    with reg.session() as session:
        base = _base_model(session)
        missing = _expert(reg, session, base, "gone").blob_sha256
        corrupt = _expert(reg, session, base, "bitrot").blob_sha256
        intact = _expert(reg, session, base, "fine").blob_sha256
        unreferenced = reg.add_blob(session, put_data(reg.blobs, b"left over"), "svd").sha256
        lost_unused = reg.add_blob(session, put_data(reg.blobs, b"lost, unused"), "svd").sha256
    orphan = put_data(reg.blobs, b"never registered").sha256
    reg.blobs.remove(missing)
    reg.blobs.remove(lost_unused)  # nothing refers to it: wasted row, not lost data
    path = reg.blobs.path(corrupt)
    path.chmod(0o644)
    path.write_bytes(b"flipped")
    calls: list[tuple[int, int]] = []
    report = reg.verify(progress=lambda done, total: calls.append((done, total)))
    assert report.missing == [missing]
    assert report.corrupt == [corrupt]
    assert report.orphans == [orphan]
    assert report.unreferenced == sorted([unreferenced, lost_unused])
    assert intact not in report.missing + report.corrupt
    assert report.checked == 4 and not report.ok
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_gc_removes_orphans_and_unreferenced_but_never_a_referenced_blob(reg: Registry) -> None:
    with reg.session() as session:
        kept = _expert(reg, session, _base_model(session), "math").blob_sha256
        unreferenced = reg.add_blob(session, put_data(reg.blobs, b"left over"), "svd").sha256
        fileless = reg.add_blob(session, put_data(reg.blobs, b"row whose file is gone"), "svd").sha256
    reg.blobs.remove(fileless)
    orphan = put_data(reg.blobs, b"never registered").sha256
    fresh_orphan = put_data(reg.blobs, b"being written by another process").sha256
    for sha in (kept, unreferenced, orphan):
        _age(reg, sha)
    expected = sorted([unreferenced, fileless, orphan])

    assert reg.gc(dry_run=True) == expected
    assert reg.blobs.exists(orphan) and reg.blobs.exists(unreferenced)
    with reg.session() as session:
        assert session.get(Blob, fileless) is not None

    assert reg.gc() == expected
    assert sorted(reg.blobs.iter_shas()) == sorted([kept, fresh_orphan])
    with reg.session() as session:
        assert session.scalars(select(Blob.sha256)).all() == [kept]
    assert reg.verify().ok
    assert reg.gc(grace_s=0) == [fresh_orphan]
    assert list(reg.blobs.iter_shas()) == [kept]


def test_status_counts_rows_and_blobs(reg: Registry) -> None:
    with reg.session() as session:
        expert = _expert(reg, session, _base_model(session), "math")
        expert.tags.append(ExpertTag(tag="gsm8k"))
    status = reg.status()
    assert status.revision == reg.revision()
    assert status.rows["experts"] == 1 and status.rows["expert_tags"] == 1 and status.rows["evaluations"] == 0
    assert status.blob_count == 1 and status.blob_bytes == len(b"math")
    assert status.db_bytes > 0


def _write_experts(home: str, worker: int, count: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    with Registry.open(Path(home)) as reg:
        barrier.wait()
        for i in range(count):
            with reg.session() as session:
                base = session.scalars(select(BaseModel)).one()
                expert = _expert(reg, session, base, f"w{worker}-e{i}")
                expert.tags.extend([ExpertTag(tag=f"worker-{worker}"), ExpertTag(tag="concurrent")])


def test_concurrent_writers_from_four_processes_all_land(reg: Registry) -> None:
    with reg.session() as session:
        _base_model(session)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_write_experts, args=(str(reg.home), w, 25, barrier)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * 4
    with reg.session() as session:
        assert session.scalar(select(func.count()).select_from(Expert)) == 100
        assert session.scalar(select(func.count()).select_from(ExpertTag)) == 200
    assert reg.verify().ok


def test_home_under_a_regular_file_is_store_unavailable(tmp_path: Path) -> None:
    # Tests run as root, and root writes through read-only permission bits, so a
    # chmod-ed directory would not fail. A path under a regular file fails for
    # everyone (ENOTDIR) with no mount needed.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable) as caught:
        Registry.open(blocker / "sub")
    assert str(blocker / "sub") in caught.value.message
    assert "Not a directory" in caught.value.message
    assert caught.value.hint is not None and "T2_HOME" in caught.value.hint


def test_sqlite_storage_errors_become_store_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    readonly = OperationalError("INSERT ...", {}, sqlite3.OperationalError("attempt to write a readonly database"))
    error = translate_error(readonly, db)
    assert isinstance(error, StoreUnavailable)
    assert str(db) in error.message and "readonly database" in error.message
    full = translate_error(sqlite3.OperationalError("database or disk is full"), db)
    assert isinstance(full, StoreUnavailable) and "disk space" in (full.hint or "")
    assert translate_error(sqlite3.OperationalError("no such table: experts"), db) is None


def test_a_database_file_that_is_not_sqlite_is_store_unavailable(t2_home: Path) -> None:
    t2_home.mkdir(parents=True)
    (t2_home / "registry.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="not a SQLite database"):
        Registry.open(t2_home)
