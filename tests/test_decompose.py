"""Decomposition: exact round trip, idempotence, resume after an interruption, reuse across target sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from t2cli.decompose.engine import DecompositionInterrupted, decompose_model, load_factors
from t2cli.home import open_registry


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma", "gemma3"])
def test_factors_reconstruct_every_target_matrix(arch: str, tiny_model_dirs: dict[str, Path]) -> None:
    folder = tiny_model_dirs[arch]
    with open_registry() as registry:
        summary = decompose_model(registry, str(folder))
        factors = load_factors(registry, summary.decomposition_id)
    weights = _weights(folder)
    assert summary.num_matrices == 3 * 7 == len(factors) == summary.computed
    assert summary.max_rel_error < 1e-5
    for name, (U, S, Vh) in factors.items():
        W = weights[name + ".weight"].double()
        rebuilt = U.double() @ torch.diag(S.double()) @ Vh.double()
        assert torch.linalg.norm(W - rebuilt) / torch.linalg.norm(W) < 1e-5, name
        assert U.shape == (W.shape[0], min(W.shape)) and Vh.shape == (min(W.shape), W.shape[1])
        assert torch.all(S[:-1] >= S[1:])


def test_second_run_is_a_no_op(tiny_llama: Path) -> None:
    with open_registry() as registry:
        first = decompose_model(registry, str(tiny_llama))
        blobs_before = sorted(registry.blobs.iter_shas())
        second = decompose_model(registry, str(tiny_llama))
        assert second.already_complete and second.computed == 0
        assert second.decomposition_id == first.decomposition_id
        assert sorted(registry.blobs.iter_shas()) == blobs_before


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(
    tiny_llama: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = {"n": 0}

    def interrupt_after_two_chunks(event) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with open_registry() as registry:
        with pytest.raises(DecompositionInterrupted) as info:
            decompose_model(registry, str(tiny_llama), chunk_matrices=2, on_progress=interrupt_after_two_chunks)
        assert "run the same command again" in info.value.hint
        resumed = decompose_model(registry, str(tiny_llama), chunk_matrices=2)
        assert 0 < resumed.computed < resumed.num_matrices  # only the missing ones
        resumed_factors = load_factors(registry, resumed.decomposition_id)

    monkeypatch.setenv("T2_HOME", str(tmp_path / "other-home"))
    with open_registry() as registry:
        clean = decompose_model(registry, str(tiny_llama), chunk_matrices=2)
        clean_factors = load_factors(registry, clean.decomposition_id)
    assert resumed_factors.keys() == clean_factors.keys()
    for name in clean_factors:
        for a, b in zip(resumed_factors[name], clean_factors[name]):
            assert torch.equal(a, b), name  # deterministic: same bytes, same blobs


def test_subset_reuses_factors_already_stored(tiny_llama: Path) -> None:
    with open_registry() as registry:
        decompose_model(registry, str(tiny_llama), targets="all")
        mlp = decompose_model(registry, str(tiny_llama), targets="mlp")
    assert mlp.num_matrices == 9 and mlp.reused == 9 and mlp.computed == 0


def test_deleted_blob_is_recomputed(tiny_llama: Path) -> None:
    with open_registry() as registry:
        first = decompose_model(registry, str(tiny_llama))
        victim = next(iter(registry.blobs.iter_shas()))
        path = registry.blobs.path(victim)
        path.chmod(0o644)
        path.unlink()
        again = decompose_model(registry, str(tiny_llama))
        assert again.computed >= 1 and not again.already_complete
        assert again.decomposition_id == first.decomposition_id
        assert again.num_matrices == first.num_matrices and again.max_rel_error < 1e-5
        # Every row now points at a blob that exists (recomputed in a smaller batch, the bytes
        # may differ in the last bits from the deleted ones, so the address may differ too).
        report = registry.verify()
        assert not report.missing and not report.corrupt


def test_float64_compute_is_a_separate_decomposition(tiny_llama: Path) -> None:
    with open_registry() as registry:
        f32 = decompose_model(registry, str(tiny_llama), targets="attn")
        f64 = decompose_model(registry, str(tiny_llama), targets="attn", dtype="float64")
    assert f32.decomposition_id != f64.decomposition_id
    assert f64.computed == 12 and f64.max_rel_error < 1e-6


@pytest.mark.parametrize("chunk_matrices", [2, 8])
def test_a_safetensors_folder_is_streamed_a_few_matrices_at_a_time(
    chunk_matrices: int, tiny_llama: Path, monkeypatch
) -> None:
    """The model is never loaded; each weight is read once; at most as many are in memory as the SVD
    works on at once (its CPU workers, one per torch thread), whatever the chunk size.

    GROUP_BYTES is set to 1 so that the tiny matrices are grouped as large ones are (one per worker).
    """
    import gc
    import weakref

    import t2cli.decompose.engine as decompose
    from t2cli.models.weights import SafetensorsWeights

    def no_loading(*args, **kwargs):
        raise AssertionError("decompose loaded the whole model instead of streaming its safetensors")

    monkeypatch.setattr(decompose, "load_model", no_loading)
    monkeypatch.setattr(decompose, "GROUP_BYTES", 1)
    read, alive, most_alive = [], [], [0]
    real_get = SafetensorsWeights.get

    def counting_get(self, name: str) -> torch.Tensor:
        gc.collect()
        alive[:] = [ref for ref in alive if ref() is not None]
        tensor = real_get(self, name)
        alive.append(weakref.ref(tensor))
        most_alive[0] = max(most_alive[0], len(alive))
        read.append(name)
        return tensor

    monkeypatch.setattr(SafetensorsWeights, "get", counting_get)
    with open_registry() as registry:
        summary = decompose_model(registry, str(tiny_llama), chunk_matrices=chunk_matrices, method="gesdd")
    assert summary.computed == 21
    assert sorted(read) == sorted(set(read)) and len(read) == 21
    assert 1 <= most_alive[0] <= min(chunk_matrices, torch.get_num_threads())


def test_groups_are_one_matrix_per_worker_for_large_matrices_and_whole_chunks_for_small_ones() -> None:
    from t2cli.decompose.engine import GROUP_BYTES, _group_size

    large = (14336, 4096)  # Llama-3-8B's MLP: 224 MiB of float32 each
    small = (1536, 576)  # SmolLM2's MLP: 3.4 MiB
    assert _group_size(5, large, 2) == 2 and _group_size(5, large, 1) == 1
    assert _group_size(8, small, 2) == 8
    assert _group_size(8, (GROUP_BYTES // 4 // 4096 // 3, 4096), 2) == 3  # three fit GROUP_BYTES
    assert _group_size(5, large, None) == 5  # a batched GPU SVD takes the whole chunk
