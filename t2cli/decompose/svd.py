"""Reduced SVD of weight matrices, W = U diag(S) Vh, fast on CPU and checked.

Every target matrix of a model is decomposed once, so this is the slowest
step of `t2 decompose`. The functions here are pure tensor functions: they
never print, never touch files, and work on any device.

Methods (``SVD_METHODS``):

* ``gesdd``: ``torch.linalg.svd`` one matrix at a time (LAPACK gesdd on CPU,
  cuSOLVER's default on CUDA). Wide matrices are transposed first: MKL's gesdd
  took 115-140 ms for a 576x1536 matrix and 80-90 ms for its transpose.
* ``gesdd-batched``: the same, one ``torch.linalg.svd`` call over the stacked
  matrices (slower on CPU: 1.25x the plain loop over SmolLM2-135M).
* ``gram64``: eigendecomposition of the smaller Gram matrix in float64
  (``X^T X = V diag(S^2) V^T``, ``U = X V / S``), one matrix at a time. Squaring
  W squares its condition number, so float64 is needed to keep float32-level
  accuracy, and (near-)zero singular values still break it. Each result is
  therefore checked (orthogonality of U and V, reconstruction error) and a
  matrix that fails is redone by ``gesdd``; ``SVDResult.method`` says which
  one produced it.
* ``auto``: ``gesdd`` (see ``_auto_method`` for the measurements).

On CPU, per-matrix methods decompose ``workers`` matrices at once with one
torch thread each (see ``_map``).

Every result gets a deterministic sign (the largest-magnitude entry of each
column of U is positive): the same input and method give the same bytes (for
content-addressed storage), and different methods agree up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

# A checked method's result must meet both tolerances, else the matrix is
# redone by gesdd. float32 gesdd itself reaches ~2e-6 on both for the
# SmolLM2-135M matrices; the issue requires a reconstruction error < 1e-5.
REL_ERROR_TOL = 1e-5
# Checked with a float32 Q^T Q: on those matrices it read within 4e-7 of the
# float64 value; float32 gesdd's own worst is 2.6e-6.
ORTHO_TOL = 5e-6

# Rows of W checked at once in relative_reconstruction_error: float64 residual and W blocks of this size.
CHECK_BLOCK_BYTES = 16 * 2**20

SVD_METHODS: tuple[str, ...] = ("auto", "gesdd", "gesdd-batched", "gram64")

_COMPUTE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class SVDResult:
    """One matrix's reduced SVD, always returned as float32 tensors.

    ``U`` is (m, r), ``S`` is (r,) descending and non-negative, ``Vh`` is
    (r, n), with r = min(m, n); ``rel_error`` is
    ||W - U diag(S) Vh||_F / ||W||_F computed in float64 from the returned
    float32 factors; ``method`` is the method that actually produced them.
    """

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    rel_error: float
    method: str


def relative_reconstruction_error(W: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> float:
    """||W - U diag(S) Vh||_F / ||W||_F in float64 (the absolute error when W is zero).

    Computed a block of the long side at a time: the float64 temporaries are the square
    factor and about ``CHECK_BLOCK_BYTES`` of rows, not three float64 copies of W (for a
    14336 x 4096 matrix of Llama-3-8B, 0.2 GiB instead of 1.4 GiB per matrix in flight).
    """
    if W.shape[0] < W.shape[1]:  # wide: W^T = Vh^T diag(S) U^T has the same norms
        W, U, Vh = W.mT, Vh.mT, U.mT
    s = S.to(torch.float64)
    vh = Vh.to(torch.float64)  # r x n with r = n: the square factor
    rows = max(1, CHECK_BLOCK_BYTES // (8 * W.shape[1]))
    num, den = 0.0, 0.0
    for start in range(0, W.shape[0], rows):
        w = W[start : start + rows].to(torch.float64)
        residual = torch.addmm(w, U[start : start + rows].to(torch.float64) * s, vh, alpha=-1)
        num += torch.linalg.matrix_norm(residual).item() ** 2
        den += torch.linalg.matrix_norm(w).item() ** 2
    num, den = math.sqrt(num), math.sqrt(den)
    return num / den if den > 0 else num


def orthogonality_error(Q: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> float:
    """max |Q^T Q - I| for a column-orthonormal Q (pass ``Vh.T`` for Vh), computed in ``dtype``."""
    q = Q.to(dtype)
    gram = q.mT @ q
    gram.diagonal().sub_(1)
    return gram.abs().max().item()


def svd_batch(
    weights: Sequence[torch.Tensor],
    *,
    compute_dtype: torch.dtype = torch.float32,
    method: str = "auto",
    workers: int | None = None,
) -> list[SVDResult]:
    """Reduced SVD of matrices that all have the same shape (the caller groups by shape).

    ``compute_dtype`` (float32 or float64) is the precision of the whole
    computation; results are float32 either way, on the input's device.
    Inputs may be float16/bfloat16/float32/float64; half precision is
    converted first, never decomposed as is. ``method`` is one of
    ``SVD_METHODS``. ``workers`` (CPU, per-matrix methods) decomposes that
    many matrices at once with one torch thread each, setting torch's
    process-wide thread count to 1 meanwhile; None means one per torch thread.

    Raises ValueError for an unknown method or dtype, matrices of different
    shapes or dimensions, and NaN or Inf entries.
    """
    if method not in SVD_METHODS:
        raise ValueError(f"unknown SVD method {method!r}: valid methods are {', '.join(SVD_METHODS)}")
    if compute_dtype not in _COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {compute_dtype} is not supported: use torch.float32 or torch.float64")
    if not weights:
        return []
    shape = weights[0].shape
    for i, w in enumerate(weights):
        if w.ndim != 2:
            raise ValueError(f"matrix {i} has shape {tuple(w.shape)}: expected a 2-D matrix")
        if w.shape != shape:
            raise ValueError(
                f"matrix {i} has shape {tuple(w.shape)}, matrix 0 has {tuple(shape)}: group matrices by shape"
            )
        _check_finite(w, i)
    device = weights[0].device
    if method == "auto":
        method = _auto_method(device)
    if workers is None:
        workers = _default_workers(device)

    if method == "gesdd-batched":
        x = torch.stack([_tall(w.to(compute_dtype)) for w in weights])
        u, s, vh = _gesdd_tall(x)
        return [_finish(w, u[i], s[i], vh[i], method) for i, w in enumerate(weights)]
    one = _decompose_gram64 if method == "gram64" else _decompose_gesdd
    return _map(lambda w: one(w, compute_dtype), weights, workers)


def matrices_at_once(device: torch.device | str, method: str = "auto") -> int | None:
    """How many matrices ``svd_batch`` works on at once: None (all it gets) for gesdd-batched, else its workers.

    A caller that streams weights from disk hands it groups of this size, so that only that
    many inputs, SVD transients and results are in memory at a time.
    """
    device = torch.device(device)
    resolved = _auto_method(device) if method == "auto" else method
    return None if resolved == "gesdd-batched" else _default_workers(device)


def _check_finite(w: torch.Tensor, index: int) -> None:
    """Raise ValueError naming what is wrong when a matrix holds NaN or Inf."""
    if bool(torch.isfinite(w).all()):
        return
    nan = int(torch.isnan(w).sum())
    inf = int(torch.isinf(w).sum())
    raise ValueError(
        f"matrix {index} of shape {tuple(w.shape)} is not finite ({nan} NaN, {inf} Inf entries): "
        "an SVD of it is meaningless; check the model's weights"
    )


def _auto_method(device: torch.device) -> str:
    """The method ``auto`` stands for on this device."""
    if device.type != "cpu":
        # Not measured off CPU; torch's batched SVD lets cuSOLVER pick its driver.
        return "gesdd-batched"
    # All 210 SmolLM2-135M matrices on 2 cores (AMD EPYC, MKL), bench/decompose.py,
    # best of 3 quiet rounds, checks included, two runs: plain loop 12.7-13.2 s;
    # gesdd 11.8-12.8 s; gram64 12.2-13.5 s (its float64 GEMMs and extra checks
    # eat what its eigh saves over gesdd); gesdd-batched 16.1-16.5 s. gesdd is
    # also the reference accuracy and never falls back.
    return "gesdd"


def _default_workers(device: torch.device) -> int:
    """How many matrices to decompose at once: one per torch thread on CPU.

    Measured over SmolLM2-135M on 2 cores: gesdd 12.8 s with 2 workers, 14.7 s
    with 1 (two MKL threads on one matrix); and while another process kept
    one core busy, the plain two-thread loop took 536 s instead of 13 s
    (OpenMP barriers wait for the descheduled thread), which single-threaded
    workers avoid.
    """
    if device.type != "cpu":
        return 1
    return torch.get_num_threads()


def _map(fn: Callable[[torch.Tensor], SVDResult], weights: Sequence[torch.Tensor], workers: int) -> list[SVDResult]:
    """Apply ``fn`` to each matrix, ``workers`` at a time with one torch thread each."""
    workers = min(workers, len(weights))
    if workers <= 1 or weights[0].device.type != "cpu":
        return [fn(w) for w in weights]
    # LAPACK's reductions to bidiagonal/tridiagonal form are memory-bound and
    # scale poorly over threads; whole matrices in parallel scale better.
    # torch's thread count is process-wide, so it is restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, weights))
    finally:
        torch.set_num_threads(before)


def _tall(w: torch.Tensor) -> torch.Tensor:
    """The matrix itself, or its transpose when it is wide (LAPACK is faster on tall)."""
    return w.mT if w.shape[-2] < w.shape[-1] else w


def _gesdd_tall(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.linalg.svd of tall matrices, retried in float64 if LAPACK does not converge."""
    try:
        return torch.linalg.svd(x, full_matrices=False)
    except torch.linalg.LinAlgError:
        if x.dtype == torch.float64:
            raise ValueError(f"the SVD of a {tuple(x.shape[-2:])} matrix did not converge") from None
        return torch.linalg.svd(x.to(torch.float64), full_matrices=False)


def _gram64_tall(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of tall X through eigh(X^T X) in float64; inaccurate for (near-)zero singular values."""
    x = x.to(torch.float64)
    evals, evecs = torch.linalg.eigh(x.mT @ x)
    # eigh sorts ascending; the SVD wants descending.
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    s = evals.clamp_min(0).sqrt()
    u = (x @ evecs) / s.unsqueeze(-2)
    return u, s, evecs.mT


def _decompose_gesdd(w: torch.Tensor, compute_dtype: torch.dtype) -> SVDResult:
    """One matrix by gesdd."""
    u, s, vh = _gesdd_tall(_tall(w.to(compute_dtype)))
    return _finish(w, u, s, vh, "gesdd")


def _decompose_gram64(w: torch.Tensor, compute_dtype: torch.dtype) -> SVDResult:
    """One matrix by gram64, redone by gesdd when the result fails its checks."""
    u, s, vh = _gram64_tall(_tall(w))
    u, s, vh = u.float(), s.float(), vh.float()
    # NaN (from 0/0 on a zero singular value) must fail, hence `not <=`.
    if not (
        orthogonality_error(u, dtype=torch.float32) <= ORTHO_TOL
        and orthogonality_error(vh.mT, dtype=torch.float32) <= ORTHO_TOL
    ):
        return _decompose_gesdd(w, compute_dtype)
    result = _finish(w, u, s, vh, "gram64")
    if not result.rel_error <= REL_ERROR_TOL:
        return _decompose_gesdd(w, compute_dtype)
    return result


def _finish(w: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, method: str) -> SVDResult:
    """Undo the transpose of a wide matrix, fix signs, cast to float32, measure the error."""
    if w.shape[0] < w.shape[1]:
        u, vh = vh.mT, u.mT
    u, s, vh = u.float(), s.float(), vh.float()
    # Make the largest-|.| entry of each column of U positive (ties: first index).
    pivot = u.abs().argmax(dim=0, keepdim=True)
    sign = torch.where(u.gather(0, pivot) < 0, -1.0, 1.0).to(u.dtype)
    u = (u * sign).contiguous()
    vh = (vh * sign.mT).contiguous()
    rel_error = relative_reconstruction_error(w, u, s, vh)
    return SVDResult(U=u, S=s.contiguous(), Vh=vh, rel_error=rel_error, method=method)
