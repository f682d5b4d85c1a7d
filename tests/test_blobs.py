"""The content-addressed blob store: round trips, deduplication, failures leave nothing behind."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from registry import BlobCorrupt, BlobInfo, BlobMissing, BlobStore, RegistryError, StoreUnavailable
from registry import blobs as blobs_module
from tests.blob_data import put_data


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_round_trip(store: BlobStore) -> None:
    data = b"singular values" * 1000
    info = put_data(store, data)
    assert info == BlobInfo(hashlib.sha256(data).hexdigest(), len(data))
    path = store.path(info.sha256)
    assert path == store.root / "sha256" / info.sha256[:2] / info.sha256
    assert path.read_bytes() == data
    assert (path.stat().st_mode & 0o777) == 0o444
    assert store.exists(info.sha256)
    store.check(info.sha256)


def test_put_file_copies_in_chunks_and_keeps_the_source(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "expert.safetensors"
    data = os.urandom(blobs_module.CHUNK * 2 + 17)  # spans several read chunks
    src.write_bytes(data)
    info = store.put_file(src)
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert store.path(info.sha256).read_bytes() == data
    assert src.exists()
    assert list((store.root / "tmp").iterdir()) == []


def test_put_file_move_takes_the_source(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "u_s_v.safetensors"
    src.write_bytes(b"abc")
    info = store.put_file(src, move=True)
    assert not src.exists()
    assert store.path(info.sha256).read_bytes() == b"abc"
    assert (store.path(info.sha256).stat().st_mode & 0o777) == 0o444


def test_same_content_gives_same_sha_and_one_file(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"same")
    first = put_data(store, b"same")
    second = store.put_file(src)
    third = store.put_file(src, move=True)
    assert first == second == third
    assert list(store.iter_shas()) == [first.sha256]
    assert [p.name for p in _all_files(store.root)] == [first.sha256]
    assert store.total_size() == 4


def test_iter_shas_skips_stray_files(store: BlobStore) -> None:
    info = put_data(store, b"x")
    (store.root / "sha256" / info.sha256[:2] / "notes.txt").write_text("not a blob")
    (store.root / "sha256" / "zz").mkdir()
    (store.root / "sha256" / "zz" / ("0" * 64)).write_bytes(b"in the wrong directory")
    assert list(store.iter_shas()) == [info.sha256]


def test_full_disk_leaves_no_partial_file(store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, which ignores permission bits, so a read-only directory
    # would not fail; simulate the full disk at the rename instead.
    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(blobs_module.os, "replace", full)
    src = tmp_path / "big.bin"
    src.write_bytes(b"payload")
    for put in (lambda: store.put_file(src), lambda: store.put_file(src, move=True)):
        with pytest.raises(StoreUnavailable) as caught:
            put()
        assert "No space left on device" in caught.value.message
        assert str(store.root) in caught.value.message
        assert caught.value.hint is not None and "disk space" in caught.value.hint
    assert _all_files(store.root) == []
    assert src.read_bytes() == b"payload"  # a failed move keeps the source


def test_unreadable_source_is_a_registry_error(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"cannot read .*nope\.bin"):
        store.put_file(tmp_path / "nope.bin")


def test_check_detects_corruption(store: BlobStore) -> None:
    info = put_data(store, b"original content")
    path = store.path(info.sha256)
    path.chmod(0o644)
    with open(path, "r+b") as handle:
        handle.write(b"O")
    with pytest.raises(BlobCorrupt) as caught:
        store.check(info.sha256)
    assert info.sha256 in caught.value.message
    assert hashlib.sha256(b"Original content").hexdigest() in caught.value.message


def test_missing_blob_raises_blob_missing(store: BlobStore) -> None:
    sha = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(sha)
    with pytest.raises(BlobMissing, match=sha):
        store.path(sha)
    with pytest.raises(BlobMissing):
        store.check(sha)


def test_malformed_sha_is_refused(store: BlobStore) -> None:
    with pytest.raises(RegistryError, match="not a sha256"):
        store.path("../../etc/passwd")


def test_remove_is_idempotent(store: BlobStore) -> None:
    info = put_data(store, b"gone soon")
    store.remove(info.sha256)
    store.remove(info.sha256)
    assert not store.exists(info.sha256)
    assert list(store.iter_shas()) == []


def test_clean_temp_removes_only_stale_files(store: BlobStore) -> None:
    tmp = store.root / "tmp"
    tmp.mkdir(parents=True)
    stale, fresh = tmp / "put-stale", tmp / "put-fresh"
    stale.write_bytes(b"crashed write")
    fresh.write_bytes(b"write in progress")
    os.utime(stale, (1, 1))
    assert store.clean_temp(older_than_s=60) == 1
    assert [p.name for p in tmp.iterdir()] == ["put-fresh"]
