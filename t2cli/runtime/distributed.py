"""Data parallelism for ``t2 train`` under ``torchrun`` or ``accelerate launch``.

Both launchers start one process per rank and describe the job in environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). ``init_distributed`` reads them and calls
``torch.distributed.init_process_group`` (gloo on CPU, NCCL on CUDA); without
them (or with ``WORLD_SIZE=1``) everything here is a no-op and ``t2`` runs as
one process. ``Dist`` holds the rank and wraps the few collectives training
needs; it is not a communication layer of its own.

Roles: rank 0 is the only writer (registry rows, checkpoints, the expert);
other ranks open the registry read-only. ``Dist.on_main`` runs a step on rank 0
and hands its result (or its error) to every rank; ``Dist.main_first`` runs a
step on rank 0 first (decomposing, migrating) and on the others once it
succeeded, so a failure on rank 0 is raised on every rank instead of leaving
them waiting in a collective.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
import torch.distributed as td

from t2cli.errors import T2Error, UsageError
from t2cli.home import open_registry
from t2cli.runtime.devices import resolve_device

if TYPE_CHECKING:
    from registry import Registry

T = TypeVar("T")

# Collectives wait this long for the slowest rank. Rank 0 decomposing a big model while the
# others wait is the longest legitimate wait: decompose first (`t2 decompose`) on large models.
TIMEOUT = timedelta(minutes=60)
DTYPES = ("auto", "float32", "bfloat16", "float16")


class DistributedError(T2Error):
    """A failure on rank 0 seen from another rank, or a launch that does not fit the machine."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun/accelerate)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # this rank's device: cpu or cuda:LOCAL_RANK

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.startswith("cuda") else "gloo"

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [start, stop) of ``n`` items (sizes differ by at most one)."""
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    # ------------------------------------------------------------------ collectives

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or max) ``tensor`` over ranks in place, through this rank's device; returns it."""
        if not self.enabled:
            return tensor
        reduce_op = {"sum": td.ReduceOp.SUM, "max": td.ReduceOp.MAX}[op]
        on_device = tensor.to(self.device)
        td.all_reduce(on_device, op=reduce_op)
        if on_device is not tensor:
            tensor.copy_(on_device)
        return tensor

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a few numbers over ranks (float64)."""
        return self.all_reduce(torch.tensor(list(values), dtype=torch.float64)).tolist()

    def max(self, value: float) -> float:
        return float(self.all_reduce(torch.tensor([value], dtype=torch.float64), op="max")[0])

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable values only)."""
        if not self.enabled:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0, device=None if self.backend == "gloo" else _torch_device(self.device))
        return box[0]

    def all_reduce_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Sum ``.grad`` of ``params`` over ranks, in one collective.

        A parameter without a gradient on every rank keeps ``grad = None`` (the
        optimizer then skips it, as in one process); one with a gradient on some
        rank gets the sum, with zeros standing in for the ranks that had none.
        """
        if not self.enabled:
            return
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        parts = [flags] + [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
        flat = self.all_reduce(torch.cat([t.to(self.device) for t in parts]))
        offset = len(params)
        for present, param in zip(flat[: len(params)].tolist(), params):
            size = param.numel()
            param.grad = flat[offset : offset + size].view_as(param).to(param.dtype).clone() if present > 0 else None
            offset += size

    # ------------------------------------------------------------------ who does what

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 only; its result (or its error) on every rank."""
        if not self.enabled:
            return fn()
        return self._relay(fn, share=True)

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the other ranks once it succeeded (they wait meanwhile)."""
        if not self.enabled:
            return fn()
        result = self._relay(fn, share=False)
        return result if self.is_main else fn()

    def _relay(self, fn: Callable[[], T], *, share: bool) -> Any:
        """Run ``fn`` on rank 0 and broadcast ("ok", result or None) or ("error", (message, hint))."""
        if self.is_main:
            try:
                result = fn()
            except BaseException as exc:
                self.broadcast_object(("error", _describe(exc)))
                raise
            self.broadcast_object(("ok", result if share else None))
            return result
        status, payload = cast("tuple[str, Any]", self.broadcast_object(None))  # rank 0's reply, sent above
        if status == "error":
            raise DistributedError(*payload)
        return payload


SINGLE = Dist()


def _describe(exc: BaseException) -> tuple[str, str | None]:
    if isinstance(exc, T2Error):
        return f"rank 0: {exc.message}", exc.hint
    if isinstance(exc, KeyboardInterrupt):
        return "rank 0 was interrupted", None
    return f"rank 0 failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", (
        "see rank 0's output above"
    )


def _torch_device(device: str):
    return torch.device(device)


# --------------------------------------------------------------------------- set-up


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) without one."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise DistributedError(
            f"unreadable launcher environment: {exc}", "launch with torchrun or accelerate launch"
        ) from None
    return rank, world, local


def rank_device(device: str, local_rank: int, world_size: int) -> str:
    """This rank's device for ``--device``: under a launcher, ``auto``/``cuda`` mean ``cuda:LOCAL_RANK``."""
    if world_size == 1:
        return resolve_device(device)
    if device.startswith("cuda:"):
        raise DistributedError(
            f"--device {device} would put all {world_size} ranks on one GPU",
            "use --device cuda (or auto): each rank takes cuda:LOCAL_RANK",
        )
    if device in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(
                f"local rank {local_rank} has no GPU (this node has {count})",
                f"launch at most {count} processes per node (--nproc-per-node {count})",
            )
        return f"cuda:{local_rank}"
    return resolve_device("cpu" if device == "auto" else device)


def resolve_dtype(dtype: str, device: str) -> str | None:
    """The base weights' dtype for ``--dtype``: ``auto`` is bfloat16 on CUDA, the checkpoint's own on CPU (None)."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return None


@contextmanager
def init_distributed(device: str = "auto") -> Iterator[Dist]:
    """The job this process belongs to; joins (and at the end leaves) the process group if launched.

    Reuses a process group someone else initialised (and leaves it to them).
    """
    rank, world, local = launched_world()
    resolved = rank_device(device, local, world)
    if world == 1:
        yield Dist(device=resolved)
        return
    dist = Dist(rank=rank, world_size=world, local_rank=local, device=resolved)
    owned = not td.is_initialized()
    if owned:
        if resolved.startswith("cuda"):
            torch.cuda.set_device(resolved)
        td.init_process_group(backend=dist.backend, timeout=TIMEOUT)
    finished = False
    try:
        yield dist
        finished = True
    finally:
        if owned and td.is_initialized():
            # Free what still holds gloo work (FSDP's handles) while the group and the interpreter are alive:
            # tensors of gloo work freed during interpreter finalization abort the process (SIGABRT).
            gc.collect()
            if finished:
                # Leave together: a rank tearing gloo down while its peer still uses the connection
                # aborted the peer ("terminate called without an active exception", SIGABRT).
                td.barrier()
            td.destroy_process_group()


def open_registry_ranked(dist: Dist) -> Registry:
    """The registry for this rank: rank 0 opens (and migrates) it first; the others open it read-only."""
    return dist.main_first(lambda: open_registry(read_only=not dist.is_main))
