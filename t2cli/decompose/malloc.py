"""Keep glibc from holding on to freed tensor memory during long CPU jobs.

glibc serves an allocation of at least its mmap threshold with its own mapping, returned to
the OS on free. After each such free it raises the threshold (up to 32 MiB on 64-bit), so the
next tensors of a few MiB come from its heaps instead, one per thread, which keep what is
freed. Fixing the threshold, as ``MALLOC_MMAP_THRESHOLD_`` does from outside, stops that.

Measured with bench/decompose_memory.py (2 CPU threads): `t2 decompose` of an 8-layer Llama
(hidden 2048) peaked at 1,113 MiB above its imports with glibc's dynamic threshold, 624 MiB
with it fixed at 1 MiB, in the same time. t2 fixes it at 8 MiB, above SmolLM2's matrices
(1.3-3.5 MiB in float32): at 1 MiB every one of their buffers was mapped and unmapped, and
their SVDs took 51 s instead of 31 s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
ENV_VARIABLE = "MALLOC_MMAP_THRESHOLD_"
DEFAULT_THRESHOLD = 8 * 2**20


def fix_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Serve allocations >= ``threshold`` bytes by mmap for the rest of the process; True when set.

    Does nothing (False) off Linux, without glibc, or when the user set ``MALLOC_MMAP_THRESHOLD_``.
    """
    if not sys.platform.startswith("linux") or ENV_VARIABLE in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
