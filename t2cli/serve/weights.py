"""Which weights answer a request: the ``model`` field, the ``t2`` extension, or pass 1.

``WeightsResolver.resolve`` reads the registry on every request (experts added or removed
while serving are seen at once) and returns either ready ``Weights`` (base, one expert, a
mixture) with every z already read from its blob, or the pass-1 strategy to run on the
model-owner thread (``choose``). An expert that is not there, is gone by the time its z
is read, or is removed while its request waits in the queue (``check_current``, run by the
worker before it applies a batch's weights) is a 404: nothing is applied until every z is
in memory.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from registry.errors import BlobCorrupt, BlobMissing
from registry.queries import experts as expert_rows
from t2cli.ask.strategies import (
    DispatchContext,
    Dispatcher,
    DispatchError,
    build_dispatcher,
    mixture_key,
    parse_strategy,
    run_dispatch,
    takes_images,
)
from t2cli.errors import T2Error
from t2cli.serve.errors import APIError, bad_request, not_found
from t2cli.serve.protocol import AUTO_MODEL, T2Options
from t2cli.svf.expert import load_z

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import ProcessorMixin

    from registry import Registry
    from registry.records import ExpertRecord
    from t2cli.svf.adaptable import Adaptable

BASE = "base"
DISPATCHER_TTL_S = 2.0  # a pass-1 strategy is rebuilt (its registry look-ups redone) at most this often
Z_CACHE_SIZE = 64  # z vectors kept in memory, by blob


@dataclass(frozen=True)
class Part:
    """One expert in the weights: its cache key (name and blob), mixing weight and z."""

    key: str
    name: str
    alpha: float
    z: dict[str, torch.Tensor] = field(repr=False)


@dataclass(frozen=True)
class Weights:
    """The z that answers: no parts = base weights; one part at 1.0 = that expert; else a mixture."""

    key: str  # requests with the same key share one batched generation
    choice: str  # "base", the expert's name, or the mixture's key
    parts: tuple[Part, ...]
    strategy: str | None = None  # the pass-1 strategy that chose them (None: the request named them)
    reason: str = "named by the request"
    pass1_seconds: float = 0.0
    pass1_images: bool | None = None  # the request had images and pass 1 chose: whether pass 1 saw them

    @property
    def weights(self) -> dict[str, float]:
        return {part.name: part.alpha for part in self.parts}

    def header(self) -> str:
        """The ``x-t2-weights`` header: ``base``, ``NAME`` or ``a=0.7,b=0.3``."""
        if not self.parts:
            return BASE
        if len(self.parts) == 1 and self.parts[0].alpha == 1.0:
            return self.parts[0].name
        return ",".join(f"{p.name}={p.alpha:.6g}" for p in self.parts)


@dataclass(frozen=True)
class Pass1:
    """The request leaves the choice to a pass-1 strategy, run on the model's thread."""

    strategy: str


BASE_WEIGHTS = Weights(key=BASE, choice=BASE, parts=())


class WeightsResolver:
    """Resolves ``model`` + ``t2`` into weights, against the live registry."""

    def __init__(self, registry: Registry, adaptable: Adaptable, *, default_strategy: str | None) -> None:
        self.registry, self.adaptable = registry, adaptable
        self.base_name = adaptable.identity.ref.name
        self.default_strategy = default_strategy or self._auto_strategy()
        self._z: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._z_lock = threading.Lock()
        self._dispatchers: dict[str, tuple[float, Dispatcher]] = {}
        self._processor_copy: ProcessorMixin | None = None

    # ------------------------------------------------------------------ listing

    def experts(self) -> list[ExpertRecord]:
        """The experts of the served base model, read now."""
        return expert_rows.of_base_model(self.registry, self.adaptable.base_model_id)

    # ------------------------------------------------------------------ resolution (any thread)

    def resolve(self, model: str, options: T2Options | None) -> Weights | Pass1:
        """What answers a request for ``model`` with the ``t2`` options: weights now, or a strategy to run."""
        if model not in (AUTO_MODEL, self.base_name):
            self._record(model, "model")  # a 404 for a model that is neither the base, t2-auto nor an expert
        if options is not None and options.experts is not None:
            if options.strategy is not None:
                raise bad_request("give t2.strategy or t2.experts, not both", param="t2")
            return self.mixture(options.experts)
        if options is not None and options.strategy is not None:
            return Pass1(self._check_strategy(options.strategy))
        if model == AUTO_MODEL:
            return Pass1(self.default_strategy)
        if model == self.base_name:
            return BASE_WEIGHTS
        return self.expert(model)

    def expert(self, name: str, *, param: str = "model") -> Weights:
        record = self._record(name, param)
        part = Part(self._key(record), name, 1.0, self._read_z(record, param))
        return Weights(key=part.key, choice=name, parts=(part,))

    def mixture(self, alphas: dict[str, float], *, param: str = "t2.experts") -> Weights:
        """Weights sum_k alpha_k z_k (+ the rest on the base weights); one expert at 1.0 is that expert."""
        if len(alphas) == 1 and next(iter(alphas.values())) == 1.0:
            return self.expert(next(iter(alphas)), param=param)
        parts = []
        for name, alpha in sorted(alphas.items()):
            if alpha == 0:
                continue
            record = self._record(name, param)
            parts.append(Part(self._key(record), name, float(alpha), self._read_z(record, param)))
        key = mixture_key({p.key: p.alpha for p in parts})
        return Weights(key=key, choice=mixture_key({p.name: p.alpha for p in parts}), parts=tuple(parts))

    def _record(self, name: str, param: str) -> ExpertRecord:
        record = expert_rows.get(self.registry, name)
        if record is None:
            raise not_found(
                f"no model or expert named {name!r} here: serving {self.base_name}, {AUTO_MODEL} and its experts "
                f"(GET /v1/models lists them)",
                param=param,
            )
        if record.base_model_id != self.adaptable.base_model_id:
            raise not_found(
                f"expert {name!r} belongs to base model {record.base_model_name}; this server serves {self.base_name}",
                param=param,
            )
        return record

    def check_current(self, weights: Weights) -> None:
        """A 404 when an expert of ``weights`` was removed (or replaced) since the request was resolved.

        The worker calls this right before applying a batch's weights: a request that waited in
        the queue while its expert was removed fails cleanly instead of answering with weights
        the registry no longer holds. Every z is already in memory, so nothing can fail halfway.
        """
        for part in weights.parts:
            record = expert_rows.get(self.registry, part.name)
            if record is None or self._key(record) != part.key:
                raise not_found(
                    f"expert {part.name!r} was removed or replaced while this request waited; send it again "
                    "(GET /v1/models lists the experts served now)",
                    param=None,
                )

    @staticmethod
    def _key(record: ExpertRecord) -> str:
        return f"{record.name}@{record.blob_sha256[:16]}"  # a replaced expert gets a new key

    def _read_z(self, record: ExpertRecord, param: str) -> dict[str, torch.Tensor]:
        with self._z_lock:
            cached = self._z.get(record.blob_sha256)
            if cached is not None:
                self._z.move_to_end(record.blob_sha256)
                return cached
        try:
            self.registry.blobs.check(record.blob_sha256)
            z = load_z(self.registry.blobs.path(record.blob_sha256))
        except (BlobMissing, BlobCorrupt) as exc:
            raise not_found(f"expert {record.name!r} is no longer available ({exc.message})", param=param) from None
        self.adaptable.svf.check_z(z)
        with self._z_lock:
            self._z[record.blob_sha256] = z
            while len(self._z) > Z_CACHE_SIZE:
                self._z.popitem(last=False)
        return z

    def _check_strategy(self, spec: str) -> str:
        try:
            parse_strategy(spec)
        except DispatchError as exc:
            raise bad_request(f"{exc.message}" + (f" ({exc.hint})" if exc.hint else ""), param="t2.strategy") from None
        return spec

    def _auto_strategy(self) -> str:
        """The default of ``t2-auto``: the learned router when the base model has one, else the base weights."""
        try:
            build_dispatcher(self._context(), "router")
        except T2Error:
            return "none"
        return "router"

    # ------------------------------------------------------------------ pass 1 (the model's thread only)

    def choose(self, strategy: str, prompt: str, images: Sequence[Image] = ()) -> Weights:
        """Run pass 1 on ``prompt`` (base weights applied) and resolve what it chose.

        ``images``: the request's pictures, shown to pass 1 with the prompt (as ``t2 ask --image``
        does) by every strategy that reads the prompt; ``pass1_images`` in the answer says whether it did.
        """
        try:
            dispatcher = self._dispatcher(strategy)
            decision = run_dispatch(dispatcher, prompt, images=images)
            saw_images = bool(images) and takes_images(dispatcher)
        except APIError:
            raise
        except T2Error as exc:
            raise bad_request(
                f"strategy {strategy!r} cannot run: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""),
                param="t2.strategy",
                code="strategy_unavailable",
            ) from None
        if decision.stored is not None:
            chosen = self.expert(decision.stored, param="t2.strategy")
        elif not decision.weights:
            chosen = BASE_WEIGHTS
        else:
            chosen = self.mixture(decision.weights, param="t2.strategy")
        return Weights(
            key=chosen.key,
            choice=chosen.choice,
            parts=chosen.parts,
            strategy=strategy,
            reason=decision.reason if saw_images or not images else f"{decision.reason} (pass 1 read the text only)",
            pass1_seconds=decision.seconds,
            pass1_images=saw_images if images else None,
        )

    def _dispatcher(self, strategy: str) -> Dispatcher:
        now = time.monotonic()
        entry = self._dispatchers.get(strategy)
        if entry is None or now - entry[0] > DISPATCHER_TTL_S:
            entry = self._dispatchers[strategy] = (now, build_dispatcher(self._context(), strategy))
        return entry[1]

    def _context(self) -> DispatchContext:
        config = self.adaptable.model.config.get_text_config()
        limit = getattr(config, "max_position_embeddings", None)
        adaptable = self.adaptable
        loader: Callable[[], Adaptable] = lambda: adaptable
        return DispatchContext(
            registry=self.registry,
            base_model_id=adaptable.base_model_id,
            model_name=self.base_name,
            tokenizer=adaptable.tokenizer,
            context_limit=int(limit) if limit else None,
            adaptable=loader,
            processor=self._pass1_processor,
        )

    def _pass1_processor(self) -> ProcessorMixin:
        """The worker's own copy of the processor: the handlers encode requests with the model's, under a lock."""
        if self._processor_copy is None:
            self._processor_copy = copy.deepcopy(self.adaptable.processor())
        return self._processor_copy
