"""Storage going wrong behind t2's back: damaged or deleted blobs, a full disk, a read-only home.

* a blob corrupted or deleted outside t2: `t2 db verify` names it (exit 1), using the expert fails
  with one `error:` line, `t2 db gc` removes orphan files and never a referenced blob;
* ENOSPC in the middle of a write (the blob store's temp file, or SQLite's commit): one clear
  error, and the registry is unchanged (row counts and `db verify` as before, no temp file left).
  A read-only home is simulated by chmod when the tests do not run as root (root ignores mode
  bits), else by raising EROFS from the same write.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t2cli.cli.app import app
from tests.blob_data import put_data
from tests.expert_factory import make_expert

runner = CliRunner()


def t2(*args: str):
    return runner.invoke(app, list(args))


def one_error_line(result) -> str:
    text = result.stderr or result.output
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[0].startswith("error: "), text
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), text
    return text


@pytest.fixture()
def with_expert(tiny_llama: Path, t2_home: Path):
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable

    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        make_expert(registry, adaptable, "victim")
        make_expert(registry, adaptable, "bystander", seed=1)
        from sqlalchemy import select

        from registry.schema import Expert

        with registry.session(readonly=True) as session:
            sha = session.scalars(select(Expert.blob_sha256).where(Expert.name == "victim")).one()
        blob = registry.blobs.path(sha)
    return sha, blob


def snapshot(home: Path) -> tuple:
    """Row counts per table and the verify outcome: what must not change when a write fails."""
    from registry import Registry

    with Registry.open(home) as registry:
        status = registry.status()
        report = registry.verify()
    return status.rows, status.blob_count, (report.missing, report.corrupt, report.orphans, report.unreferenced)


def _ask_with(expert: str, model: Path):
    return t2("ask", "1+1=?", "--model", str(model), "--strategy", f"expert:{expert}", "--max-new-tokens", "2")


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_damaged_blob_is_reported_and_using_the_expert_fails_in_one_line(with_expert, tiny_llama: Path, damage) -> None:
    sha, blob = with_expert
    if damage == "corrupt":
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    else:
        blob.unlink()
    verify = t2("db", "verify")
    assert verify.exit_code == 1
    assert f"{'corrupt' if damage == 'corrupt' else 'missing'} {sha}" in verify.output

    used = _ask_with("victim", tiny_llama)
    assert used.exit_code == 1
    assert sha in one_error_line(used)
    assert _ask_with("bystander", tiny_llama).exit_code == 0  # other experts still work

    shown = t2("experts", "show", "victim")
    assert shown.exit_code == 0  # the rows are intact; only the weights are gone


def test_gc_removes_orphans_and_never_a_referenced_blob(with_expert, t2_home: Path) -> None:
    from registry import Registry

    sha, _blob = with_expert
    with Registry.open(t2_home) as registry:
        orphan = put_data(registry.blobs, b"nobody refers to me").sha256
        referenced = set(registry.blobs.iter_shas()) - {orphan}
        # gc's grace period protects a fresh blob whose rows may not be committed yet
        assert registry.gc() == []
        os.utime(registry.blobs.path(orphan), (0, 0))
    result = t2("db", "gc")
    assert result.exit_code == 0 and "removed 1 blobs" in result.output
    with Registry.open(t2_home) as registry:
        left = set(registry.blobs.iter_shas())
        assert left == referenced and sha in left
        assert registry.gc(grace_s=0) == []  # even with no grace, referenced blobs stay
        assert registry.verify().ok


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize("failure", ["enospc-blob", "enospc-commit", "read-only-home"])
def test_failed_write_leaves_the_registry_as_it_was(with_expert, t2_home: Path, monkeypatch, failure) -> None:
    """`t2 mix` writes a blob then a row; the write fails: one clear error, nothing changed."""
    before = snapshot(t2_home)
    if failure == "read-only-home" and not _running_as_root():
        for folder in (t2_home / "blobs" / "sha256", t2_home / "tmp", t2_home / "blobs" / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o555)
    elif failure in ("enospc-blob", "read-only-home"):
        import registry.blobs as blobs

        code = errno.ENOSPC if failure == "enospc-blob" else errno.EROFS
        real_replace = os.replace

        def failing_replace(src, dst, *a, **kw):
            if "sha256" in str(dst):
                raise OSError(code, os.strerror(code), str(dst))
            return real_replace(src, dst, *a, **kw)

        monkeypatch.setattr(blobs.os, "replace", failing_replace)
    else:  # SQLite reports a full disk when the commit cannot grow the WAL
        from sqlalchemy.orm import Session

        def full_disk(self):
            import sqlite3

            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(Session, "commit", full_disk)
    try:
        result = t2("mix", "victim", "bystander", "--name", "mixed")
    finally:
        for folder in (t2_home / "blobs" / "sha256", t2_home / "tmp", t2_home / "blobs" / "tmp"):
            if folder.exists():
                folder.chmod(0o755)
    assert result.exit_code == 1, result.output
    text = one_error_line(result)
    assert any(word in text.lower() for word in ("disk", "full", "read-only", "permission")), text
    monkeypatch.undo()
    monkeypatch.setenv("T2_HOME", str(t2_home))
    after = snapshot(t2_home)
    assert after[0] == before[0]  # row counts
    assert after[2][:2] == ([], [])  # nothing missing or corrupt
    assert after[1] <= before[1] + 1  # at most one orphan file (commit failed after the blob landed) ...
    if after[1] > before[1]:
        assert len(after[2][2]) == 1  # ... which verify lists as an orphan and gc removes
    leftovers = [p for d in (t2_home / "tmp", t2_home / "blobs" / "tmp") if d.is_dir() for p in d.iterdir()]
    assert leftovers == []
