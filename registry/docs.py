"""Render ``docs/registry.md`` from the code: ``python -m registry.docs > docs/registry.md``.

``tests/test_registry_docs.py`` fails when the checked-in page differs from
what this renders, so the page cannot drift from the schema.
"""

from __future__ import annotations

from sqlalchemy import Column, Table, UniqueConstraint
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.elements import TextClause

from registry.blobs import CHUNK
from registry.db import BUSY_TIMEOUT_MS
from registry.registry import GC_GRACE_S, SCHEMA_HEAD
from registry.schema import Base

_DIALECT = sqlite.dialect()

_INTRO = f"""\
# The t2 registry

<!-- Generated from registry/ by `python -m registry.docs > docs/registry.md`; do not edit by hand. -->

t2 keeps what it knows (base models, SVD decompositions, experts, training
runs, evaluations) in one SQLite database, and the bulky tensors in a
content-addressed blob store, both under one home directory.

## Home directory

The home is `$T2_HOME`, or the platform's user data directory for `t2`. It is
created with mode `0700` on first use.

```text
registry.db (+ -wal, -shm)   the database described below
blobs/sha256/ab/<sha256>     blob files, named by the sha256 of their content
blobs/tmp/                   files being written
tmp/                         expert and factor files being prepared for the blob store
.migrate.lock                serialises schema migrations between processes
```

## Database

SQLite through SQLAlchemy 2.0. Every connection sets `journal_mode=WAL`
(readers never wait for the writer), `foreign_keys=ON`,
`busy_timeout={BUSY_TIMEOUT_MS}` (a second writer waits up to {BUSY_TIMEOUT_MS // 1000} s instead of
failing) and `synchronous=NORMAL`. Write transactions start with
`BEGIN IMMEDIATE`, taking the write lock at once, so concurrent writers queue
on the busy timeout instead of failing with "database is locked" when a
deferred transaction tries to upgrade its lock. Read-only sessions
(`Registry.session(readonly=True)`) use a plain `BEGIN`.

Times are stored as UTC and read back as timezone-aware UTC datetimes.

## Migrations

The schema is versioned with Alembic; revisions live in
`registry/migrations/versions/` with readable ids. `Registry.open` applies
any pending ones, in one transaction, under an exclusive lock on
`.migrate.lock`, so several processes may open a fresh home at once. A
database at a revision this t2 does not know was written by a newer t2 and
is refused (`SchemaTooNew`: upgrade t2). Current head: `{SCHEMA_HEAD}`.

## Blobs

A blob is written to `blobs/tmp/` (read in {CHUNK >> 20} MiB chunks and hashed on
the way), fsynced, made read-only (`0444`) and renamed to
`blobs/sha256/<first two hex digits>/<sha256>`: a blob path holds the whole
content or does not exist. Storing content that is already there keeps the
existing file. A file is registered in the `blobs` table in the same
transaction as the row that refers to it (`Registry.add_blob`).

## Verify and gc

`Registry.verify` re-hashes every blob file and reports blobs that rows refer
to but whose file is gone (*missing*), files whose content no longer matches
their name (*corrupt*), files with no `blobs` row (*orphans*) and `blobs`
rows no other table refers to (*unreferenced*). It changes nothing.

`Registry.gc` removes orphans and unreferenced blobs, never a blob that a row
refers to. Files written in the last {GC_GRACE_S / 3600:g} h are kept, since another process
may not have committed the rows that use them yet. Temp files in `blobs/tmp/`
and `tmp/` older than that (a killed command's half-written files) go too.

## Tables
"""


def render_schema_markdown() -> str:
    """The registry's documentation page: prose on the layout, then every table of the schema."""
    docs = {mapper.persist_selectable: mapper.class_.__doc__ or "" for mapper in Base.registry.mappers}
    parts = [_INTRO]
    for table in Base.metadata.sorted_tables:
        parts.append(_render_table(table, docs.get(table, "")))
    return "\n".join(parts)


def _render_table(table: Table, doc: str) -> str:
    lines = [f"### `{table.name}`", ""]
    if doc:
        lines += [" ".join(doc.split()), ""]
    lines += ["| Column | Type | Null | Key | Default | Description |", "|---|---|---|---|---|---|"]
    for column in table.columns:
        cells = [
            f"`{column.name}`",
            column.type.compile(dialect=_DIALECT),
            "yes" if column.nullable else "no",
            _keys(column),
            _default(column),
            (column.comment or "").replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    extras = []
    for constraint in sorted(table.constraints, key=lambda c: str(c.name)):
        if isinstance(constraint, UniqueConstraint) and len(constraint.columns) > 1:
            extras.append(f"- unique `{constraint.name}` ({_names(constraint.columns)})")
    for index in sorted(table.indexes, key=lambda i: str(i.name)):
        extras.append(f"- index `{index.name}` ({_names(index.columns)})")
    if extras:
        lines += ["", *extras]
    lines.append("")
    return "\n".join(lines)


def _keys(column: Column) -> str:
    keys = []
    if column.primary_key:
        keys.append("PK")
    for fk in sorted(column.foreign_keys, key=lambda f: f.target_fullname):
        keys.append(f"FK `{fk.target_fullname}` on delete {fk.ondelete or 'NO ACTION'}")
    for constraint in column.table.constraints:
        if isinstance(constraint, UniqueConstraint) and list(constraint.columns) == [column]:
            keys.append("unique")
    return ", ".join(keys)


def _default(column: Column) -> str:
    default = column.server_default
    if default is None:
        return ""
    arg = getattr(default, "arg", None)
    if isinstance(arg, str):
        return f"`'{arg}'`"
    if isinstance(arg, TextClause):
        return f"`{arg.text}`"
    return f"`{arg.compile(dialect=_DIALECT)}`" if arg is not None else ""


def _names(columns: object) -> str:
    return ", ".join(f"`{c.name}`" for c in columns)  # type: ignore[attr-defined]


if __name__ == "__main__":
    print(render_schema_markdown(), end="")
