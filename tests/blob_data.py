"""Putting test bytes into a blob store the way t2 stores everything: a file, then ``BlobStore.put_file``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from registry import BlobInfo, BlobStore


def put_data(store: BlobStore, data: bytes) -> BlobInfo:
    """Write ``data`` to a temporary file beside the store and move it in (``put_file(move=True)``)."""
    folder = Path(store.root).parent
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="test-blob-", dir=folder)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return store.put_file(Path(name), move=True)
