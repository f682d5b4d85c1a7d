"""The SVD kernel on tiny matrices: every method, every shape, the fallback, the checks."""

from __future__ import annotations

import pytest
import torch

from t2cli.decompose.svd import SVD_METHODS, SVDResult, orthogonality_error, relative_reconstruction_error, svd_batch

METHODS = [m for m in SVD_METHODS if m != "auto"] + ["auto"]
SHAPES = [(4, 3), (3, 4), (5, 5), (16, 8), (8, 16)]


def random_matrices(shape: tuple[int, int], count: int = 3, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(count)]


def low_rank(m: int, n: int, rank: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen)


def check_valid(result: SVDResult, w: torch.Tensor, tol: float = 1e-5) -> None:
    """Shapes, dtype, layout, order, orthogonality and reconstruction of one result."""
    m, n = w.shape
    r = min(m, n)
    assert result.U.shape == (m, r) and result.S.shape == (r,) and result.Vh.shape == (r, n)
    for t in (result.U, result.S, result.Vh):
        assert t.dtype == torch.float32 and t.is_contiguous() and t.device == w.device
    assert bool((result.S >= 0).all())
    assert bool((result.S[:-1] >= result.S[1:]).all()), "singular values must be descending"
    assert orthogonality_error(result.U) < tol
    assert orthogonality_error(result.Vh.mT) < tol
    assert result.rel_error < tol
    assert result.rel_error == pytest.approx(
        relative_reconstruction_error(w, result.U, result.S, result.Vh), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_every_method_and_shape(method: str, shape: tuple[int, int]) -> None:
    weights = random_matrices(shape)
    results = svd_batch(weights, method=method)
    assert len(results) == len(weights)
    for w, r in zip(weights, results):
        check_valid(r, w)
        assert r.method in SVD_METHODS and r.method != "auto"


def test_gram64_keeps_well_conditioned_matrices() -> None:
    # A random 16x8 matrix is well conditioned: gram64 must not fall back.
    results = svd_batch(random_matrices((16, 8)), method="gram64")
    assert [r.method for r in results] == ["gram64"] * 3


@pytest.mark.parametrize("shape", [(8, 6), (6, 8)])
def test_rank_deficient_falls_back_to_gesdd(shape: tuple[int, int]) -> None:
    w = low_rank(*shape, rank=2)
    (result,) = svd_batch([w], method="gram64")
    assert result.method == "gesdd"
    check_valid(result, w)
    assert float(result.S[2:].max()) < 1e-5 * float(result.S[0])


def test_zero_matrix() -> None:
    w = torch.zeros(8, 6)
    for method in METHODS:
        (result,) = svd_batch([w], method=method)
        check_valid(result, w)
        assert result.rel_error == 0.0
        assert bool((result.S == 0).all())
    (result,) = svd_batch([w], method="gram64")
    assert result.method == "gesdd"


def test_ill_conditioned_matrix_stays_accurate() -> None:
    # Singular values from 1 down to 1e-7: squaring them in a Gram matrix
    # loses the small ones even in float64, so gram64 must fall back.
    gen = torch.Generator().manual_seed(1)
    q1, _ = torch.linalg.qr(torch.randn(12, 8, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    w = ((q1 * torch.logspace(0, -7, 8, dtype=torch.float64)) @ q2.T).float()
    (result,) = svd_batch([w], method="gram64")
    assert result.method == "gesdd"
    check_valid(result, w)


def test_mixed_batch_only_bad_matrices_fall_back() -> None:
    weights = [*random_matrices((8, 6), count=2), low_rank(8, 6, rank=2)]
    results = svd_batch(weights, method="gram64")
    assert [r.method for r in results] == ["gram64", "gram64", "gesdd"]
    for w, r in zip(weights, results):
        check_valid(r, w)


@pytest.mark.parametrize("method", METHODS)
def test_float64_compute_returns_float32(method: str) -> None:
    weights = random_matrices((16, 8), count=2)
    results32 = svd_batch(weights, method=method)
    results64 = svd_batch(weights, method=method, compute_dtype=torch.float64)
    for w, r32, r64 in zip(weights, results32, results64):
        check_valid(r64, w)
        torch.testing.assert_close(r64.S, r32.S, rtol=1e-5, atol=1e-6)
        # Same deterministic signs, so the factors agree entry by entry.
        torch.testing.assert_close(r64.U, r32.U, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input(dtype: torch.dtype) -> None:
    w = random_matrices((16, 8), count=1)[0].to(dtype)
    for method in METHODS:
        (result,) = svd_batch([w], method=method)
        # The factors reproduce the half-precision values exactly as given.
        check_valid(result, w)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_raises(bad: float) -> None:
    weights = random_matrices((4, 3), count=2)
    weights[1][2, 1] = bad
    with pytest.raises(ValueError, match=r"matrix 1 .*(NaN|Inf)"):
        svd_batch(weights)


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown SVD method 'lanczos'") as info:
        svd_batch(random_matrices((4, 3)), method="lanczos")
    for name in SVD_METHODS:
        assert name in str(info.value)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="group matrices by shape"):
        svd_batch([torch.randn(4, 3), torch.randn(3, 4)])
    with pytest.raises(ValueError, match="2-D"):
        svd_batch([torch.randn(2, 4, 3)])
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        svd_batch([torch.randn(4, 3)], compute_dtype=torch.bfloat16)
    assert svd_batch([]) == []


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_one_at_a_time(method: str) -> None:
    weights = random_matrices((16, 8), count=4, seed=3)
    batched = svd_batch(weights, method=method)
    for w, r in zip(weights, batched):
        (single,) = svd_batch([w], method=method)
        torch.testing.assert_close(r.S, single.S, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.U, single.U, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r.Vh, single.Vh, rtol=1e-4, atol=1e-5)


def test_methods_agree_after_sign_convention() -> None:
    w = random_matrices((16, 8), count=1, seed=4)[0]
    by_method = {m: svd_batch([w], method=m)[0] for m in METHODS}
    ref = by_method["gesdd"]
    for r in by_method.values():
        torch.testing.assert_close(r.U, ref.U, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r.Vh, ref.Vh, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_sign_convention_is_deterministic(method: str) -> None:
    weights = random_matrices((8, 16), count=2, seed=5)
    first = svd_batch(weights, method=method)
    again = svd_batch(weights, method=method)
    for a, b in zip(first, again):
        assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S) and torch.equal(a.Vh, b.Vh)
        pivot = a.U.abs().argmax(dim=0)
        assert bool((a.U[pivot, torch.arange(a.U.shape[1])] > 0).all())


def test_workers_give_the_same_results_and_restore_threads() -> None:
    weights = random_matrices((16, 8), count=5, seed=6)
    threads = torch.get_num_threads()
    serial = svd_batch(weights, method="gram64", workers=1)
    parallel = svd_batch(weights, method="gram64", workers=2)
    assert torch.get_num_threads() == threads
    for a, b in zip(serial, parallel):
        torch.testing.assert_close(a.U, b.U, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.S, b.S, rtol=1e-6, atol=1e-7)


def test_error_measures_on_known_values() -> None:
    assert orthogonality_error(torch.eye(3)) == 0.0
    assert orthogonality_error(torch.diag(torch.tensor([1.0, 2.0]))) == pytest.approx(3.0)
    # Columns of a tall matrix only: Q^T Q is 2x2.
    assert orthogonality_error(torch.eye(4)[:, :2]) == 0.0
    w = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    u, s, vh = torch.eye(2), torch.tensor([3.0, 4.0]), torch.eye(2)
    assert relative_reconstruction_error(w, u, s, vh) == 0.0
    assert relative_reconstruction_error(w, u, torch.zeros(2), vh) == pytest.approx(1.0)
    assert relative_reconstruction_error(w, u, torch.tensor([3.0, 0.0]), vh) == pytest.approx(4.0 / 5.0)
    assert relative_reconstruction_error(torch.zeros(2, 2), u, torch.zeros(2), vh) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_results_stay_on_device() -> None:
    weights = [w.cuda() for w in random_matrices((16, 8))]
    for r, w in zip(svd_batch(weights), weights):
        check_valid(r, w)


@pytest.mark.parametrize("shape", [(37, 5), (5, 37), (6, 6)])
def test_reconstruction_error_in_row_blocks_is_the_whole_matrix_error(shape, monkeypatch) -> None:
    """The check runs a few rows of the long side at a time (bounded float64 memory); the result must not change."""
    import t2cli.decompose.svd as svd

    w = random_matrices(shape, count=1)[0]
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    u = u + 1e-3 * torch.randn_like(u)  # a visible error, so that every block contributes
    w64 = w.double()
    direct = (
        torch.linalg.matrix_norm(w64 - u.double() @ torch.diag(s.double()) @ vh.double())
        / torch.linalg.matrix_norm(w64)
    ).item()
    whole = relative_reconstruction_error(w, u, s, vh)
    monkeypatch.setattr(svd, "CHECK_BLOCK_BYTES", 8 * 5 * 3)  # 3 rows of the long side per block
    blocked = relative_reconstruction_error(w, u, s, vh)
    assert direct > 1e-4
    assert whole == pytest.approx(direct, rel=1e-12) and blocked == pytest.approx(direct, rel=1e-12)
    assert relative_reconstruction_error(torch.zeros(shape), u, s, vh) == pytest.approx(
        torch.linalg.matrix_norm(u.double() @ torch.diag(s.double()) @ vh.double()).item(), rel=1e-12
    )
