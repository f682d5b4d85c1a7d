"""Lay out files exactly as huggingface_hub's cache does, for offline tests of the real client."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def populate_hf_cache(
    cache: Path, repo_id: str, source: Path, revision: str | None = None, repo_type: str = "model"
) -> str:
    """Copy ``source``'s files into ``cache`` as a snapshot of ``repo_id``; returns the commit hash.

    Layout: {models,datasets}--org--name/{blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>,
    refs/main = <commit>}.
    """
    repo_dir = cache / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    revision = revision or hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return revision
