"""Is a training run still being trained? An advisory lock in its checkpoint folder says.

The process that trains a run holds an exclusive ``flock`` on ``RUN_DIR/.lock`` for as
long as it trains. The kernel drops the lock when that process ends in any way (``kill -9``
included), so a run whose registry row still says "running" but whose lock is free was
stopped without a chance to say so. ``t2 runs`` shows such a run as interrupted, and
``t2 train --resume`` refuses a run that another process is still training (two writers
would interleave their checkpoints).

flock is per open file description: a second ``open`` + ``flock`` conflicts even within
one process, which is what makes the probe below work (and testable). Where ``fcntl``
does not exist (Windows), nothing is locked and every run counts as possibly alive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from t2cli.errors import T2Error

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunBusy(T2Error):
    """Another process is training this run."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} is being trained by another process",
            "wait for it to finish (`t2 runs list`), or stop that process before resuming",
        )


@contextmanager
def hold_run_lock(run_dir: Path, run_id: str) -> Iterator[None]:
    """Hold the run's lock while the body trains it; ``RunBusy`` if another process holds it."""
    if fcntl is None:
        yield
        return
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(run_id) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def run_in_progress(run_dir: str | Path | None) -> bool:
    """Whether a process holds the run's lock now (True when that cannot be known)."""
    if fcntl is None or run_dir is None:
        return True
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False  # never locked: the run was made before locks, or its folder is gone
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
