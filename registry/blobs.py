"""A content-addressed blob store: each file is named by the sha256 of its bytes.

Layout: ``root/sha256/ab/abcdef...`` (the first two hex digits fan files out
over 256 directories). Files arrive through ``root/tmp/``, are fsynced, made
read-only (0o444) and renamed into place, so a blob path either holds the whole
content or does not exist, even after a crash or a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry.errors import BlobCorrupt, BlobMissing, RegistryError, store_unavailable

CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BlobInfo:
    """What the store returns for a stored blob."""

    sha256: str
    size: int


class BlobStore:
    """Files named by their sha256 under ``root``; writes are atomic and deduplicated."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- writing -------------------------------------------------------------

    def put_file(self, src: Path, *, move: bool = False) -> BlobInfo:
        """Store the content of ``src``; with ``move=True`` the file is taken (renamed when possible).

        When a blob with the same content exists it is kept and ``src``'s copy dropped.
        Raises ``StoreUnavailable`` when the store cannot be written (read-only,
        disk full, permissions); no partial file is left behind.
        """
        src = Path(src)
        if move:
            moved = self._move_in(src)
            if moved is not None:
                return moved
        info = self._copy_in(src)
        if move:
            _drop(src)
        return info

    def _copy_in(self, src: Path) -> BlobInfo:
        # One pass: hash while copying into a temp file, then rename it to its name.
        try:
            reader = open(src, "rb")  # noqa: SIM115  (closed by the with below)
        except OSError as exc:
            raise RegistryError(f"cannot read {src} ({exc.strerror})", "check the path and its permissions") from exc
        tmp = self._new_temp()
        try:
            digest, size = hashlib.sha256(), 0
            with reader, open(tmp, "wb") as out:
                while chunk := _read(reader, src):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            info = BlobInfo(digest.hexdigest(), size)
            if not self._keep_existing(info.sha256):
                self._install(tmp, info.sha256)
        except OSError as exc:
            raise store_unavailable("write to the blob store", self.root, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)
        return info

    def _move_in(self, src: Path) -> BlobInfo | None:
        """Rename ``src`` into place; ``None`` when it lies on another file system and must be copied."""
        info = _hash_file(src)
        if self._keep_existing(info.sha256):
            _drop(src)
            return info
        final = self._file(info.sha256)
        try:
            with open(src, "rb") as handle:
                os.fsync(handle.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, final)
            os.chmod(final, 0o444)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return None
            raise store_unavailable("write to the blob store", self.root, exc) from exc
        _sync_dir(final.parent)
        return info

    def _new_temp(self) -> Path:
        tmp_dir = self.root / "tmp"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="put-")
            os.close(fd)
        except OSError as exc:
            raise store_unavailable("write to the blob store", self.root, exc) from exc
        return Path(name)

    def _keep_existing(self, sha: str) -> bool:
        """True when ``sha`` is already stored; its mtime is refreshed so ``gc``'s grace period covers it."""
        final = self._file(sha)
        try:
            os.utime(final)
        except FileNotFoundError:
            return False
        except OSError:
            pass  # an old mtime only shortens gc's grace for this blob
        return True

    def _install(self, tmp: Path, sha: str) -> None:
        # tmp/ and sha256/ share a file system, so the rename is atomic.
        final = self._file(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        _sync_dir(final.parent)

    # -- reading -------------------------------------------------------------

    def path(self, sha: str) -> Path:
        """The file holding blob ``sha``; raises ``BlobMissing`` when there is none."""
        file = self._file(sha)
        if not file.is_file():
            raise BlobMissing(
                f"blob {sha} is missing from the blob store {self.root}",
                "re-create the decomposition or expert that stored it (verify lists every affected blob)",
            )
        return file

    def exists(self, sha: str) -> bool:
        """Whether blob ``sha`` has a file."""
        return self._file(sha).is_file()

    def check(self, sha: str) -> None:
        """Re-hash blob ``sha``; raises ``BlobMissing`` or ``BlobCorrupt`` when it is not intact."""
        file = self.path(sha)
        try:
            actual = _hash_file(file).sha256
        except RegistryError as exc:
            raise BlobCorrupt(f"blob {sha} cannot be read: {exc.message}", _CORRUPT_HINT) from exc
        if actual != sha:
            raise BlobCorrupt(f"blob {sha} is corrupt: its content now hashes to {actual}", _CORRUPT_HINT)

    def mtime(self, sha: str) -> float:
        """When blob ``sha`` was last written or re-stored (seconds since the epoch)."""
        return self.path(sha).stat().st_mtime

    def iter_shas(self) -> Iterator[str]:
        """The sha256 of every blob file, sorted; stray files in the tree are skipped."""
        top = self.root / "sha256"
        if not top.is_dir():
            return
        for prefix in sorted(top.iterdir()):
            if not prefix.is_dir():
                continue
            for file in sorted(prefix.iterdir()):
                if _SHA256.match(file.name) and file.name.startswith(prefix.name) and file.is_file():
                    yield file.name

    def total_size(self) -> int:
        """Bytes held by all blob files."""
        return sum(self._file(sha).stat().st_size for sha in self.iter_shas())

    # -- removing ------------------------------------------------------------

    def remove(self, sha: str) -> None:
        """Delete blob ``sha``'s file; a blob that is already gone is not an error."""
        try:
            self._file(sha).unlink(missing_ok=True)
        except OSError as exc:
            raise store_unavailable("remove a blob from", self.root, exc) from exc

    def clean_temp(self, older_than_s: float) -> int:
        """Delete temp files left by interrupted writes older than ``older_than_s``; return how many."""
        tmp_dir = self.root / "tmp"
        if not tmp_dir.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for file in tmp_dir.iterdir():
            if file.is_file() and file.stat().st_mtime < cutoff:
                file.unlink(missing_ok=True)
                removed += 1
        return removed

    def _file(self, sha: str) -> Path:
        if not _SHA256.match(sha):
            raise RegistryError(f"'{sha}' is not a sha256 digest", "a blob id is 64 lowercase hex characters")
        return self.root / "sha256" / sha[:2] / sha


_CORRUPT_HINT = "remove the blob, then re-create the decomposition or expert that stored it"


def _read(reader: BinaryIO, src: Path) -> bytes:
    try:
        return reader.read(CHUNK)
    except OSError as exc:
        raise RegistryError(f"cannot read {src} ({exc.strerror})", "check the file and the disk it is on") from exc


def _hash_file(path: Path) -> BlobInfo:
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as reader:
            while chunk := _read(reader, path):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise RegistryError(f"cannot read {path} ({exc.strerror})", "check the path and its permissions") from exc
    return BlobInfo(digest.hexdigest(), size)


def _sync_dir(directory: Path) -> None:
    """Make a rename into ``directory`` durable (best effort: the rename itself is already atomic)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # no directory file descriptors on this platform (Windows)
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the data file itself was synced
    finally:
        os.close(dir_fd)


def _drop(src: Path) -> None:
    """Remove a source file whose content is now stored; a leftover copy is harmless, so best effort."""
    with contextlib.suppress(OSError):
        src.unlink(missing_ok=True)
