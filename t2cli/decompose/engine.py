"""``t2 decompose``: SVD of a model's target matrices, stored once, resumable.

Each matrix's factors (U, S, Vh) go into their own safetensors blob in the
content-addressed store, and a row in ``decomposition_matrices`` is committed
right after, so an interrupted run loses at most the chunk in flight and a
re-run only computes what is missing. Matrices of the same shape are batched.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from registry.queries import base_models, decompositions
from registry.records import BaseModelRecord, DecompositionRecord, MatrixRecord, NewBaseModel
from t2cli.decompose.malloc import fix_mmap_threshold
from t2cli.decompose.svd import SVD_METHODS, matrices_at_once, svd_batch
from t2cli.errors import DecompositionError, T2Error, UsageError
from t2cli.models.hashing import HashCache
from t2cli.models.identity import ModelIdentity, model_identity
from t2cli.models.load import load_model
from t2cli.models.resolve import ModelRef, resolve_model
from t2cli.models.targets import TargetMatrix, is_vision_language, select_targets, targets_key
from t2cli.models.weights import ModuleWeights, SafetensorsWeights, WeightSource, check_present
from t2cli.runtime.devices import resolve_device

if TYPE_CHECKING:
    from registry import Registry

COMPUTE_DTYPES = ("float32", "float64")
FACTORS_FORMAT = "t2-svd/1"
# Rows above this relative error are flagged: float32 SVD of a healthy matrix lands near 1e-6.
MAX_REL_ERROR = 1e-5
DEFAULT_CHUNK_MATRICES = 8
DEFAULT_CHUNK_BYTES = 1 << 30
# CPU: a group of a chunk is read, decomposed and committed at once: one matrix per SVD worker, more
# while their float32 input stays under this. Large matrices then go one per worker (memory does not
# grow with the chunk); small ones in whole chunks (a group per 2 of SmolLM2's matrices cost 43% more SVD time).
GROUP_BYTES = 64 << 20


class DecompositionInterrupted(T2Error):
    """Ctrl-C during a decomposition; everything committed so far is kept."""

    exit_code = 130


@dataclass(frozen=True)
class DecomposeProgress:
    """One progress report: matrices done (of total) and bytes stored so far."""

    done: int
    total: int
    bytes_stored: int
    current: str


@dataclass(frozen=True)
class DecompositionSummary:
    """What a decompose run produced or found."""

    decomposition_id: int
    model_name: str
    model_source: str
    fingerprint: str
    targets_spec: str
    dtype: str
    method: str
    num_matrices: int
    computed: int  # computed in this run
    reused: int  # linked from an earlier decomposition of the same matrices
    already_complete: bool
    size_bytes: int
    max_rel_error: float
    seconds: float


ProgressCallback = Callable[[DecomposeProgress], None]


def decompose_model(
    registry: Registry,
    model: str | None,
    *,
    targets: str = "all",
    dtype: str = "float32",
    device: str = "cpu",
    method: str = "auto",
    revision: str | None = None,
    chunk_matrices: int = DEFAULT_CHUNK_MATRICES,
    on_progress: ProgressCallback | None = None,
    loaded: object | None = None,
) -> DecompositionSummary:
    """Decompose ``model``'s target matrices into the registry; a no-op when already done.

    ``loaded``: the same model already loaded by the caller (an ``nn.Module``), read
    instead of loading it a second time.
    """
    if dtype not in COMPUTE_DTYPES:
        raise UsageError(f"--svd-dtype {dtype!r} is not supported", f"use one of {', '.join(COMPUTE_DTYPES)}")
    if method not in SVD_METHODS:
        raise UsageError(f"unknown SVD method {method!r}", f"use one of {', '.join(SVD_METHODS)}")
    device = resolve_device(device)
    started = time.perf_counter()

    ref = resolve_model(model, revision=revision)
    identity = model_identity(ref, HashCache(registry.home / "cache" / "file-hashes.json"))
    chosen = select_targets(identity.model_type, identity.num_layers, targets, vision_layers=identity.vision_layers)
    # Read the safetensors headers before writing any row: a truncated file leaves no base model behind.
    headers = None
    if loaded is None and not ref.is_gguf and SafetensorsWeights.usable(ref.path):
        headers = SafetensorsWeights(ref.path)
    base = register_base_model(registry, identity)
    decomposition = _get_or_create_decomposition(registry, base, chosen, targets, dtype, method)

    done = _stored_matrix_names(registry, decomposition.id)
    pending = [m for m in chosen if m.name not in done]
    reused = _link_reusable(registry, decomposition.id, base.id, dtype, pending)
    pending = [m for m in pending if m.name not in reused]
    computed = 0
    if pending:
        if device == "cpu":
            fix_mmap_threshold()  # else glibc's per-thread heaps keep each matrix's freed transients
        pending_weights = [m.weight_name for m in pending]
        source = (
            ModuleWeights(loaded)  # type: ignore[arg-type]
            if loaded is not None
            else _open_weights(ref, headers, pending_weights, identity.model_type)
        )
        check_present(source, pending_weights, identity.model_type)
        done_count = len(chosen) - len(pending)
        # CPU: a group of one matrix per SVD thread (small matrices: up to GROUP_BYTES) is read, decomposed
        # and committed at a time; GPU: a whole same-shape chunk goes through one batched SVD.
        width = matrices_at_once(device, method)
        try:
            for chunk in plan_chunks(pending, source, chunk_matrices):
                step = _group_size(len(chunk), source.shape(chunk[0].weight_name), width)
                for group in (chunk[first : first + step] for first in range(0, len(chunk), step)):
                    stored = _decompose_group(registry, decomposition.id, group, source, dtype, device, method)
                    computed += len(group)
                    done_count += len(group)
                    if on_progress:
                        on_progress(DecomposeProgress(done_count, len(chosen), stored, group[-1].name))
        except KeyboardInterrupt:
            raise DecompositionInterrupted(
                f"interrupted after {done_count} of {len(chosen)} matrices (all of them saved)",
                "run the same command again to resume where it stopped",
            ) from None
    elif on_progress:
        on_progress(DecomposeProgress(len(chosen), len(chosen), _size(registry, decomposition.id), ""))

    return _finish(
        registry,
        decomposition.id,
        identity,
        targets,
        dtype,
        method,
        computed=computed,
        reused=len(reused),
        already=not pending and not reused and decomposition.status == "complete",
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------- registry rows


def register_base_model(registry: Registry, identity: ModelIdentity) -> BaseModelRecord:
    """Insert the base model (keyed by its weight fingerprint) or return the existing one."""
    ref = identity.ref
    return base_models.get_or_add(
        registry,
        NewBaseModel(
            name=ref.name,
            source=ref.source,
            location=ref.location,
            revision=ref.revision,
            fingerprint=identity.fingerprint,
            architecture=identity.architecture,
            model_type=identity.model_type,
            num_layers=identity.num_layers,
            hidden_size=identity.hidden_size,
            config=identity.config,
        ),
    )


def find_decomposition(
    registry: Registry, identity: ModelIdentity, targets: str = "all", dtype: str = "float32"
) -> tuple[int, int]:
    """(base model id, decomposition id) of a complete decomposition, looked up read-only.

    For processes that must not write (the non-zero ranks of a distributed run): they find
    what rank 0 decomposed by content (weight fingerprint + resolved target names), which
    also works when each node has its own ``T2_HOME``.
    """
    chosen = select_targets(identity.model_type, identity.num_layers, targets, vision_layers=identity.vision_layers)
    found = decompositions.find_complete(registry, identity.fingerprint, targets_key([m.name for m in chosen], dtype))
    if found is None:
        raise DecompositionError(
            f"no complete decomposition of {identity.ref.name} (targets {targets!r}) in {registry.home}",
            f"run `t2 decompose {identity.ref.location} --targets {targets}` on this node first, "
            "or give every node the same T2_HOME",
        )
    return found.base_model_id, found.id


def _get_or_create_decomposition(
    registry: Registry, base: BaseModelRecord, chosen: list[TargetMatrix], spec: str, dtype: str, method: str
) -> DecompositionRecord:
    return decompositions.get_or_add(
        registry,
        base_model_id=base.id,
        targets_spec=spec,
        targets_key=targets_key([m.name for m in chosen], dtype),
        dtype=dtype,
        method=method,
        num_matrices=len(chosen),
    )


def _stored_matrix_names(registry: Registry, decomposition_id: int) -> set[str]:
    """Matrices already recorded whose blob file is still in the store."""
    stored = decompositions.factor_blobs(registry, decomposition_id)
    stale = [name for name, sha in stored.items() if not registry.blobs.exists(sha)]
    if stale:  # the blob vanished behind t2's back: forget the row so the matrix is recomputed
        decompositions.forget_matrices(registry, decomposition_id, stale)
    return {name for name in stored if name not in stale}


def _link_reusable(
    registry: Registry, decomposition_id: int, base_model_id: int, dtype: str, pending: list[TargetMatrix]
) -> set[str]:
    """Point this decomposition at factors another decomposition of the same model already stored."""
    if not pending:
        return set()
    found = decompositions.reusable_matrices(
        registry, base_model_id=base_model_id, dtype=dtype, other_than=decomposition_id, names={m.name for m in pending}
    )
    linked: dict[str, MatrixRecord] = {}
    for row in found:
        if row.name in linked or not registry.blobs.exists(row.blob_sha256):
            continue
        linked[row.name] = replace(row, seconds=0.0)
    if linked:
        decompositions.add_matrices(registry, decomposition_id, list(linked.values()))
    return set(linked)


def _finish(
    registry: Registry,
    decomposition_id: int,
    identity: ModelIdentity,
    spec: str,
    dtype: str,
    method: str,
    *,
    computed: int,
    reused: int,
    already: bool,
    seconds: float,
) -> DecompositionSummary:
    row = decompositions.by_id(registry, decomposition_id)
    held = decompositions.summary(registry, decomposition_id)
    if row is None or held.count != row.num_matrices:
        raise DecompositionError(
            f"decomposition {decomposition_id} holds {held.count} of {row.num_matrices if row else '?'} matrices",
            "run the same command again to finish it",
        )
    max_err = float(held.max_rel_error or 0.0)
    if not already:
        decompositions.mark_complete(
            registry, decomposition_id, size_bytes=held.size_bytes, max_rel_error=max_err, seconds=seconds
        )
    return DecompositionSummary(
        decomposition_id=decomposition_id,
        model_name=identity.ref.name,
        model_source=identity.ref.source,
        fingerprint=identity.fingerprint,
        targets_spec=spec,
        dtype=dtype,
        method=row.method,
        num_matrices=held.count,
        computed=computed,
        reused=reused,
        already_complete=already,
        size_bytes=held.size_bytes,
        max_rel_error=max_err,
        seconds=seconds,
    )


def _size(registry: Registry, decomposition_id: int) -> int:
    return decompositions.size_bytes(registry, decomposition_id)


# --------------------------------------------------------------------------- computing


def _open_weights(
    ref: ModelRef, headers: SafetensorsWeights | None, weight_names: list[str], model_type: str
) -> WeightSource:
    """Stream from safetensors when possible; otherwise load the model (GGUF, .bin).

    A vision-language checkpoint may store its weights under transformers' older names
    (Qwen2-VL's ``model.layers.*`` for ``model.language_model.layers.*``, LLaVA's
    ``language_model.model.*``), which transformers renames on load with rules of its own:
    such a model is read through transformers rather than by guessing the renaming.
    """
    if headers is not None and (not is_vision_language(model_type) or all(headers.has(n) for n in weight_names)):
        return headers
    return ModuleWeights(load_model(ref))


def plan_chunks(
    pending: list[TargetMatrix], source: WeightSource, max_matrices: int, max_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[list[TargetMatrix]]:
    """Group pending matrices into same-shape chunks, in layer order, bounded in count and bytes."""
    open_chunks: dict[tuple[int, ...], list[TargetMatrix]] = {}
    for matrix in pending:
        shape = source.shape(matrix.weight_name)
        chunk = open_chunks.setdefault(shape, [])
        chunk.append(matrix)
        nbytes = len(chunk) * 4 * _numel(shape)
        if len(chunk) >= max_matrices or nbytes >= max_bytes:
            yield open_chunks.pop(shape)
    yield from (chunk for chunk in open_chunks.values() if chunk)


def _group_size(chunk_size: int, shape: tuple[int, ...], width: int | None) -> int:
    """Matrices of a chunk read at once: all for a batched SVD (``width`` None); else one per SVD worker,
    or as many as fit GROUP_BYTES of float32 input when that is more."""
    if width is None:
        return chunk_size
    return min(chunk_size, max(width, GROUP_BYTES // (4 * _numel(shape))))


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def _decompose_group(
    registry: Registry,
    decomposition_id: int,
    group: list[TargetMatrix],
    source: WeightSource,
    dtype: str,
    device: str,
    method: str,
) -> int:
    """Read, SVD and store a few same-shape matrices, commit their rows; returns the total bytes stored.

    The weights and factors are freed on return, before the next group is read.
    """
    started = time.perf_counter()
    weights = [source.get(m.weight_name).to(device) for m in group]
    try:
        results = svd_batch(weights, compute_dtype=getattr(torch, dtype), method=method)
    except ValueError as exc:
        raise DecompositionError(f"cannot decompose {group[0].name}: {exc}", "the model weights are damaged") from exc
    per_matrix = (time.perf_counter() - started) / len(group)
    stored = [
        (matrix, weight, result, _store_factors(registry, matrix, result, dtype))
        for matrix, weight, result in zip(group, weights, results)
    ]
    decompositions.add_matrices(
        registry,
        decomposition_id,
        [
            MatrixRecord(
                name=matrix.name,
                layer=matrix.layer,
                role=matrix.role,
                rows=int(weight.shape[0]),
                cols=int(weight.shape[1]),
                rank=int(result.S.shape[0]),
                blob_sha256=info.sha256,
                rel_error=float(result.rel_error),
                seconds=per_matrix,
            )
            for matrix, weight, result, info in stored
        ],
        new_blobs=[info for _, _, _, info in stored],
    )
    return _size(registry, decomposition_id)


def _store_factors(registry: Registry, matrix: TargetMatrix, result, dtype: str):  # -> registry.BlobInfo
    """Write U, S, Vh to a temp safetensors file and move it into the blob store."""
    tensors = {
        "U": result.U.detach().to("cpu", copy=False).contiguous(),
        "S": result.S.detach().to("cpu", copy=False).contiguous(),
        "Vh": result.Vh.detach().to("cpu", copy=False).contiguous(),
    }
    metadata = {"format": FACTORS_FORMAT, "matrix": matrix.name, "role": matrix.role, "compute_dtype": dtype}
    tmp_dir = registry.home / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="svd-", suffix=".safetensors", dir=tmp_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        return registry.blobs.put_file(tmp, move=True)
    finally:
        tmp.unlink(missing_ok=True)


def factor_blobs(registry: Registry, decomposition_id: int) -> dict[str, str]:
    """Matrix name -> sha256 of its factors blob, in the order the matrices were stored."""
    return decompositions.factor_blobs(registry, decomposition_id)


def load_factors(
    registry: Registry, decomposition_id: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """All (U, S, Vh) of a decomposition, keyed by matrix name (reads each blob once)."""
    factors = {}
    for name, sha in factor_blobs(registry, decomposition_id).items():
        tensors = load_file(str(registry.blobs.path(sha)))
        factors[name] = (tensors["U"], tensors["S"], tensors["Vh"])
    return factors
