"""Schema migrations: blank DB to head, idempotent reopen, reversibility, newer schemas, concurrent opens."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import registry
from registry import Registry, SchemaTooNew, migrate
from registry.db import make_engine
from registry.schema import Base

EXPECTED_TABLES = {
    "blobs",
    "base_models",
    "decompositions",
    "decomposition_matrices",
    "experts",
    "expert_parents",
    "expert_tags",
    "training_runs",
    "run_metrics",
    "evaluations",
    "routers",
}


def _tables(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows} - {"alembic_version"}


def test_blank_database_migrates_to_head_with_every_table(t2_home: Path) -> None:
    with Registry.open(t2_home) as reg:
        assert reg.revision() == registry.SCHEMA_HEAD
    assert _tables(t2_home / "registry.db") == EXPECTED_TABLES
    assert (t2_home / "blobs").is_dir()
    assert (t2_home.stat().st_mode & 0o777) == 0o700


def test_schema_head_constant_matches_the_newest_revision_file() -> None:
    # Registry.open skips Alembic when the DB is at SCHEMA_HEAD: a stale constant would skip a migration.
    assert migrate.known_revisions()[-1] == registry.SCHEMA_HEAD
    assert migrate.known_revisions()[0] == "0001_initial"


def test_migrated_database_matches_the_models(t2_home: Path) -> None:
    Registry.open(t2_home).close()
    engine = make_engine(t2_home / "registry.db")
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], "registry/schema.py and the migrations disagree: write a new revision"


def test_reopening_at_head_does_not_migrate(t2_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Registry.open(t2_home).close()

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("migrate.upgrade called on a database already at head")

    monkeypatch.setattr(migrate, "upgrade", refuse)
    with Registry.open(t2_home) as reg:
        assert reg.revision() == registry.SCHEMA_HEAD


def test_upgrade_at_head_is_a_no_op(t2_home: Path) -> None:
    Registry.open(t2_home).close()
    db = t2_home / "registry.db"
    assert migrate.upgrade(db, t2_home / ".migrate.lock") == registry.SCHEMA_HEAD
    assert _tables(db) == EXPECTED_TABLES


def test_downgrade_to_base_then_upgrade_again(t2_home: Path) -> None:
    Registry.open(t2_home).close()
    db, lock = t2_home / "registry.db", t2_home / ".migrate.lock"
    assert migrate.downgrade(db, lock, "base") == "base"
    assert _tables(db) == set()
    assert migrate.upgrade(db, lock) == registry.SCHEMA_HEAD
    assert _tables(db) == EXPECTED_TABLES


def test_unknown_revision_raises_schema_too_new(t2_home: Path) -> None:
    Registry.open(t2_home).close()
    with sqlite3.connect(t2_home / "registry.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(SchemaTooNew) as caught:
        Registry.open(t2_home)
    assert "9999_from_the_future" in caught.value.message
    assert caught.value.hint is not None and "upgrade t2" in caught.value.hint


def _open_after_barrier(home: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    with Registry.open(Path(home)) as reg:
        if reg.revision() != registry.SCHEMA_HEAD:
            raise SystemExit(3)


def test_eight_processes_open_a_fresh_home_at_once(t2_home: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_open_after_barrier, args=(str(t2_home), barrier)) for _ in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0] * 8
    assert _tables(t2_home / "registry.db") == EXPECTED_TABLES
    with sqlite3.connect(t2_home / "registry.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(registry.SCHEMA_HEAD,)]
