"""SQLite engine for the registry: pragmas, ``BEGIN IMMEDIATE`` writes, readable errors.

Several t2 processes (a training run logging metrics, a ``t2 list`` in another
terminal) share one database file, so:

* WAL lets readers run while one writer writes;
* ``busy_timeout`` makes a second writer wait up to 30 s instead of failing;
* write transactions start with ``BEGIN IMMEDIATE``: a deferred ``BEGIN`` would
  take the write lock only at the first write, and SQLite refuses that upgrade
  at once (no busy wait) when another writer got there first.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import ConnectionPoolEntry

from registry.errors import RegistryError, StoreUnavailable

BUSY_TIMEOUT_MS = 30_000
# An execution option: a connection carrying it starts a plain deferred BEGIN,
# which never waits for writers (reads only).
READONLY_OPTION = "t2_readonly"


def make_engine(db_path: Path, *, foreign_keys: bool = True) -> Engine:
    """An engine on the SQLite file ``db_path`` with the registry's pragmas on every connection.

    ``foreign_keys=False`` is for migrations only: SQLite cannot switch foreign
    keys inside a transaction, and batch migrations drop and re-create tables,
    which would fire ``ON DELETE CASCADE`` on the rows being copied.
    """
    url = URL.create("sqlite+pysqlite", database=str(db_path))
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module so "begin" below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            _switch_to_wal(cursor)
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get(READONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried: SQLite answers "locked" at once, without the busy handler,
    while another connection holds the fresh database (several processes opening a new home at once)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _cause(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return str(original)


def translate_error(exc: BaseException, db_path: Path) -> RegistryError | None:
    """The ``StoreUnavailable`` matching a SQLite error, or ``None`` if it is not a storage problem."""
    if not isinstance(exc, (sa_exc.OperationalError, sa_exc.DatabaseError, sqlite3.DatabaseError)):
        return None
    cause = _cause(exc)
    text = cause.lower()
    if "readonly database" in text or "read-only" in text:
        return StoreUnavailable(
            f"cannot write to the registry database {db_path} ({cause})",
            f"check the permissions of {db_path.parent}, or set T2_HOME to a writable directory",
        )
    if "unable to open database file" in text:
        return StoreUnavailable(
            f"cannot open the registry database {db_path} ({cause})",
            f"check that {db_path.parent} exists and is writable, or set T2_HOME to a writable directory",
        )
    if "disk is full" in text:
        return StoreUnavailable(
            f"cannot write to the registry database {db_path} ({cause})",
            "free some disk space, or set T2_HOME to a directory on a disk with room",
        )
    if "disk i/o error" in text:
        return StoreUnavailable(
            f"cannot read or write the registry database {db_path} ({cause})",
            "check the disk holding T2_HOME (full, removed, or failing)",
        )
    if "database is locked" in text:
        return StoreUnavailable(
            f"the registry database {db_path} is locked by another process ({cause})",
            f"wait for the other t2 command to finish (t2 waits up to {BUSY_TIMEOUT_MS // 1000} s), "
            "then run this one again",
        )
    if "file is not a database" in text:
        return StoreUnavailable(
            f"{db_path} is not a SQLite database ({cause})",
            "move the file aside (t2 creates a new registry), or set T2_HOME to another directory",
        )
    return None


@contextmanager
def translate_errors(db_path: Path) -> Iterator[None]:
    """Re-raise SQLite storage failures inside the block as ``StoreUnavailable``; others pass."""
    try:
        yield
    except (sa_exc.DBAPIError, sqlite3.DatabaseError) as exc:
        translated = translate_error(exc, db_path)
        if translated is None:
            raise
        raise translated from exc


def as_readonly(connection: Connection) -> Connection:
    """``connection`` set to open deferred (read-only) transactions."""
    options: dict[str, Any] = {READONLY_OPTION: True}
    return connection.execution_options(**options)


def read_revision(connection: Connection) -> str | None:
    """The Alembic revision recorded in the database, or ``None`` for a blank one.

    Plain SQL so that opening an up-to-date registry never imports Alembic.
    """
    has_table = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).first()
    if has_table is None:
        return None
    row = connection.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    return None if row is None else str(row[0])
