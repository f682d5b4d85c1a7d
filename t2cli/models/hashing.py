"""File hashing with a small on-disk cache, so big model files are hashed once."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hf_cache_blob_hash(path: Path) -> str | None:
    """The sha256 the HF cache already names an LFS file by, if ``path`` links into ``blobs/``.

    The Hub cache stores each large file as ``blobs/<sha256>`` and links to it from
    ``snapshots/<rev>/``; reading the name saves hashing gigabytes again.
    """
    if not path.is_symlink():
        return None
    target = Path(os.readlink(path))
    if target.parent.name == "blobs" and _HEX64.match(target.name):
        return target.name
    return None


class HashCache:
    """sha256 of files keyed by (absolute path, size, mtime), kept in a JSON file."""

    def __init__(self, cache_file: Path) -> None:
        self.cache_file = cache_file
        try:
            self._entries: dict[str, str] = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            self._entries = {}

    def sha256(self, path: Path) -> str:
        """The file's sha256, from the cache when the file has not changed since."""
        known = hf_cache_blob_hash(path)
        if known:
            return known
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in self._entries:
            self._entries[key] = sha256_file(path)
            self._save()
        return self._entries[key]

    def _save(self) -> None:
        # Best effort: a cache that cannot be written only costs a re-hash later.
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self._entries, sort_keys=True))
            os.replace(tmp, self.cache_file)
        except OSError:
            pass
