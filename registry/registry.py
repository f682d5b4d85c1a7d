"""The registry: one SQLite database plus a blob store under the t2 home directory.

Layout of ``home``::

    registry.db (+ -wal, -shm)   tables described in docs/registry.md
    blobs/sha256/ab/<sha256>     content-addressed files (registry.blobs)
    blobs/tmp/                   files being written
    tmp/                         expert and factor files being prepared for the blob store
    .migrate.lock                serialises schema migrations between processes
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from registry.blobs import BlobInfo, BlobStore
from registry.db import READONLY_OPTION, as_readonly, make_engine, read_revision, translate_errors
from registry.errors import BlobCorrupt, RegistryError, store_unavailable
from registry.schema import Base, Blob, blob_reference_columns

# The newest revision in registry/migrations/versions. Comparing against a constant
# lets an up-to-date registry open without importing Alembic; a test keeps it in step.
SCHEMA_HEAD = "0002_routers"
# gc leaves blobs written this recently alone: their rows may not be committed yet.
GC_GRACE_S = 3600.0


@dataclass(frozen=True)
class RegistryStatus:
    """A summary of what the registry holds."""

    home: Path
    db_path: Path
    revision: str
    db_bytes: int  # the database file plus its write-ahead log
    rows: dict[str, int]  # table name -> row count
    blob_count: int
    blob_bytes: int


@dataclass
class VerifyReport:
    """What ``Registry.verify`` found; every list holds sha256 digests, sorted."""

    checked: int = 0  # blob files re-hashed
    missing: list[str] = field(default_factory=list)  # a row refers to it, the file is gone
    corrupt: list[str] = field(default_factory=list)  # the file's content hashes differently
    orphans: list[str] = field(default_factory=list)  # a file with no blobs row (gc removes it)
    unreferenced: list[str] = field(default_factory=list)  # a blobs row nothing uses (gc removes it)

    @property
    def ok(self) -> bool:
        """No data lost or damaged (orphans and unreferenced blobs are only wasted space)."""
        return not self.missing and not self.corrupt


class Registry:
    """The t2 registry under one home directory; open it with ``Registry.open(home)``."""

    def __init__(self, home: Path, engine: Engine, *, read_only: bool = False) -> None:
        self.home = home
        self.read_only = read_only
        self.db_path = home / "registry.db"
        self.blobs = BlobStore(home / "blobs")
        self.engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)

    @classmethod
    def open(cls, home: Path, *, read_only: bool = False) -> Registry:
        """Open the registry under ``home``, creating it and applying migrations as needed.

        Safe when several processes open a fresh home at once. Raises
        ``StoreUnavailable`` when the home cannot be created or written and
        ``SchemaTooNew`` when a newer t2 has migrated the database.
        ``read_only``: a handle that refuses write sessions and never migrates
        (the non-zero ranks of a distributed run, once rank 0 opened the registry).
        """
        home = Path(home)
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            (home / "blobs").mkdir(exist_ok=True)
        except OSError as exc:
            raise store_unavailable("create T2_HOME", home, exc) from exc
        db_path = home / "registry.db"
        engine = make_engine(db_path)
        try:
            with translate_errors(db_path), engine.connect() as conn:
                current = read_revision(as_readonly(conn))
            if current != SCHEMA_HEAD and read_only:
                raise RegistryError(
                    f"{db_path} is at schema {current or 'base'}, not {SCHEMA_HEAD}",
                    "open it once for writing first (rank 0 does this in a distributed run)",
                )
            if current != SCHEMA_HEAD:
                from registry import migrate  # noqa: PLC0415 - heavy: Alembic (~0.2 s), only when migrating

                migrate.upgrade(db_path, home / ".migrate.lock")
        except BaseException:
            engine.dispose()
            raise
        return cls(home, engine, read_only=read_only)

    def close(self) -> None:
        """Close the database connections."""
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back if it raises.

        The first statement starts ``BEGIN IMMEDIATE``, so the block holds the
        write lock from then on: keep write blocks short. ``readonly=True`` starts
        a plain ``BEGIN`` that never waits for writers, and always rolls back.
        Storage failures surface as ``StoreUnavailable``; a write session on a
        read-only handle raises ``RegistryError`` before touching the database.
        """
        if self.read_only and not readonly:
            raise RegistryError(
                f"this handle on {self.db_path} is read-only (a non-zero rank of a distributed run)",
                "only rank 0 writes to the registry; this is a bug in t2",
            )
        with translate_errors(self.db_path), self._sessions() as session:
            if readonly:
                session.connection(execution_options={READONLY_OPTION: True})
            try:
                yield session
                if readonly:
                    session.rollback()
                else:
                    session.commit()
            except BaseException:
                session.rollback()
                raise

    def revision(self) -> str:
        """The schema revision of the database (``SCHEMA_HEAD`` once open)."""
        with self.session(readonly=True) as session:
            current = read_revision(session.connection())
        if current is None:
            raise RegistryError(f"{self.db_path} has no schema revision", "open the registry again to migrate it")
        return current

    def add_blob(self, session: Session, info: BlobInfo, kind: str) -> Blob:
        """The ``blobs`` row for a stored blob, inserted if new (use the session that references it).

        Registering the row in the same transaction as the row that points at it
        keeps ``gc`` from ever seeing the blob unreferenced. Raises
        ``BlobMissing`` when the store has no such file.
        """
        self.blobs.path(info.sha256)  # a row for a file that is not there would be a lie
        blob = session.get(Blob, info.sha256)
        if blob is None:
            blob = Blob(sha256=info.sha256, size=info.size, kind=kind)
            session.add(blob)
            session.flush()
        return blob

    def status(self) -> RegistryStatus:
        """Row counts, database size and blob store size."""
        with self.session(readonly=True) as session:
            rows = {
                table.name: session.scalar(select(func.count()).select_from(table)) or 0
                for table in sorted(Base.metadata.sorted_tables, key=lambda t: t.name)
            }
            revision = read_revision(session.connection()) or "base"
        wal = self.db_path.with_name(self.db_path.name + "-wal")
        db_bytes = sum(p.stat().st_size for p in (self.db_path, wal) if p.exists())
        shas = list(self.blobs.iter_shas())
        return RegistryStatus(
            home=self.home,
            db_path=self.db_path,
            revision=revision,
            db_bytes=db_bytes,
            rows=rows,
            blob_count=len(shas),
            blob_bytes=self.blobs.total_size(),
        )

    def verify(self, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Re-hash every blob file and cross-check files against rows.

        ``progress(done, total)`` is called after each file. Nothing is changed;
        ``gc`` removes orphans and unreferenced blobs.
        """
        with self.session(readonly=True) as session:
            rows, referenced = self._blob_rows(session)
        files = list(self.blobs.iter_shas())
        report = VerifyReport(
            # Only referenced blobs count as missing: a lost file nothing uses loses no data.
            missing=sorted(referenced - set(files)),
            orphans=sorted(set(files) - rows),
            unreferenced=sorted(rows - referenced),
        )
        for done, sha in enumerate(files, start=1):
            try:
                self.blobs.check(sha)
            except BlobCorrupt:
                report.corrupt.append(sha)
            report.checked += 1
            if progress is not None:
                progress(done, len(files))
        return report

    def gc(self, dry_run: bool = False, grace_s: float = GC_GRACE_S) -> list[str]:
        """Remove blobs nothing refers to (orphan files, unreferenced rows); return their sha256s.

        A blob referenced by any row is never removed. Files written less than
        ``grace_s`` seconds ago are kept: another process may have stored one and
        not yet committed the rows that use it. Stale temp files go too (``blobs/tmp/`` and
        ``tmp/``, where a killed command may have left a half-written file).
        """
        cutoff = time.time() - grace_s
        removed: list[str] = []
        # A write session: BEGIN IMMEDIATE keeps other writers out while we decide and delete.
        with self.session() as session:
            rows, referenced = self._blob_rows(session)
            files = set(self.blobs.iter_shas())
            for sha in sorted((rows - referenced) | (files - rows)):
                if sha in files and self.blobs.mtime(sha) > cutoff:
                    continue
                removed.append(sha)
                if dry_run:
                    continue
                if sha in rows:
                    session.execute(delete(Blob).where(Blob.sha256 == sha))
                self.blobs.remove(sha)
        if not dry_run:
            self.blobs.clean_temp(older_than_s=grace_s)
            _clean_stale(self.home / "tmp", older_than_s=grace_s)
        return removed

    @staticmethod
    def _blob_rows(session: Session) -> tuple[set[str], set[str]]:
        """(every sha in ``blobs``, every sha some other table refers to)."""
        rows = set(session.scalars(select(Blob.sha256)))
        referenced: set[str] = set()
        for column in blob_reference_columns():
            referenced.update(session.scalars(select(column).where(column.is_not(None)).distinct()))
        return rows, referenced


def _clean_stale(directory: Path, older_than_s: float) -> int:
    """Delete files in ``directory`` older than ``older_than_s`` (temp files of killed commands)."""
    if not directory.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for file in directory.iterdir():
        try:
            if file.is_file() and file.stat().st_mtime < cutoff:
                file.unlink(missing_ok=True)
                removed += 1
        except OSError as exc:
            raise store_unavailable("remove a temp file from", directory, exc) from exc
    return removed
