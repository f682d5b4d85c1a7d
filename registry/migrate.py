"""Apply the registry's Alembic migrations programmatically (no ``alembic.ini``).

Revisions live in ``registry/migrations/versions`` with readable ids
(``0001_initial``, ``0002_...``). To add one, write the model change in
``registry/schema.py``, then render a file from the template::

    python -c "from alembic import command; from registry.migrate import alembic_config; \\
        command.revision(alembic_config(), 'add foo', rev_id='0002_add_foo')"

fill in ``upgrade``/``downgrade`` (batch mode: ``with op.batch_alter_table(...)``),
and bump ``SCHEMA_HEAD`` in ``registry/registry.py``; ``tests/test_migrations.py``
checks the models and the migrated database agree.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from registry.db import make_engine, read_revision, translate_errors
from registry.errors import RegistryError, SchemaTooNew, store_unavailable

if sys.platform != "win32":
    import fcntl
else:  # Windows: no flock; BEGIN IMMEDIATE alone serialises migrations (up to the busy timeout).
    fcntl = None

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for the registry's scripts, running on ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    """The registry's revision scripts."""
    return ScriptDirectory.from_config(alembic_config())


def known_revisions() -> list[str]:
    """Every revision id this version of t2 ships, oldest first."""
    return [script.revision for script in reversed(list(script_directory().walk_revisions()))]


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed) for the block.

    Unlike SQLite's 30 s busy timeout, this waits as long as another process's
    migration takes.
    """
    try:
        handle = open(lock_path, "a")  # noqa: SIM115  (closed by the with below)
    except OSError as exc:
        raise store_unavailable("create the lock file", lock_path, exc) from exc
    with handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def upgrade(db_path: Path, lock_path: Path, target: str = "head") -> str:
    """Migrate the database at ``db_path`` up to ``target``; return the revision it ends at.

    A no-op when already there. Raises ``SchemaTooNew`` when the database holds a
    revision this version does not know (it was migrated by a newer t2).
    """
    return _migrate(db_path, lock_path, "upgrade", target)


def downgrade(db_path: Path, lock_path: Path, target: str) -> str:
    """Migrate the database at ``db_path`` down to ``target`` (``"base"``: empty); return where it ends."""
    return _migrate(db_path, lock_path, "downgrade", target)


def _migrate(db_path: Path, lock_path: Path, direction: str, target: str) -> str:
    with exclusive_lock(lock_path):
        engine = make_engine(db_path, foreign_keys=False)
        try:
            # One BEGIN IMMEDIATE transaction: the whole migration lands or none of it does.
            with translate_errors(db_path), engine.begin() as conn:
                current = read_revision(conn)
                known = known_revisions()
                if current is not None and current not in known:
                    raise SchemaTooNew(
                        f"the registry database {db_path} has schema revision '{current}', "
                        f"which this version of t2 does not know (newest known: '{known[-1]}'): "
                        "it was written by a newer t2",
                        "upgrade t2 (pip install -U t2cli), or set T2_HOME to another directory",
                    )
                if direction == "upgrade" and target == "head" and current == known[-1]:
                    return current  # another process migrated while we waited for the lock
                getattr(command, direction)(alembic_config(conn), target)
                _check_foreign_keys(conn, db_path, target)
                return read_revision(conn) or "base"
        finally:
            engine.dispose()


def _check_foreign_keys(conn: Connection, db_path: Path, target: str) -> None:
    # Foreign keys are off while migrating (see make_engine), so check them once at the end.
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        table, rowid, parent = broken[0][:3]
        raise RegistryError(
            f"migrating {db_path} to '{target}' would leave {len(broken)} rows pointing at missing rows "
            f"(first: {table} row {rowid} -> {parent}); nothing was changed",
            "report this as a t2 bug, with the output of `sqlite3 registry.db .schema`",
        )
