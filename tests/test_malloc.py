"""glibc's mmap threshold fixed for CPU decomposition: freed SVD transients go back to the OS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from t2cli.decompose.malloc import ENV_VARIABLE, fix_mmap_threshold

# Three rounds of two 2048 x 2048 SVDs (16 MiB each, above the threshold) on two threads, in a fresh process; prints
# "<fixed> <MiB of RSS gained> <MiB of the last round's factors, still referenced>".
ROUNDS = """
import sys
from pathlib import Path
import torch
from t2cli.decompose.malloc import fix_mmap_threshold
fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else False
torch.set_num_threads(2)
from t2cli.decompose.svd import svd_batch

def rss():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024

weights = [torch.randn(2048, 2048, generator=torch.Generator().manual_seed(i)) for i in range(2)]
before = rss()
for _ in range(3):
    results = svd_batch(weights, workers=2)
kept = sum(r.U.nbytes + r.S.nbytes + r.Vh.nbytes for r in results)
print(fixed, (rss() - before) / 2**20, kept / 2**20)
"""


def _rounds(mode: str) -> tuple[bool, float, float]:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    fixed, gained, kept = out.stdout.split()
    return fixed == "True", float(gained), float(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_with_the_threshold_fixed_freed_transients_leave_the_process(monkeypatch) -> None:
    monkeypatch.delenv(ENV_VARIABLE, raising=False)
    fixed, gained_fixed, kept = _rounds("fix")
    _, gained_dynamic, _ = _rounds("dynamic")
    assert fixed
    # The factors still referenced, plus small-buffer heaps and MKL's per-thread buffers: 20-40 MiB on a
    # quiet machine, 80-110 MiB while another job shares the cores; glibc's dynamic threshold: 450-600.
    assert gained_fixed < kept + 192
    assert gained_dynamic > 2 * gained_fixed  # glibc's raised threshold keeps freed transients: why t2 fixes it


def test_a_threshold_the_user_chose_is_left_alone(monkeypatch) -> None:
    monkeypatch.setenv(ENV_VARIABLE, "4194304")
    assert fix_mmap_threshold() is False
