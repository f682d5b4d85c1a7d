"""Load what adaptive inference and training need: model, tokenizer, factors, identity.

One function, ``load_adaptable``, so ``train``, ``eval`` and ``ask`` agree on how a
model is found, decomposed (once, on first use) and wrapped for SVF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic

from typing_extensions import TypeVar

from t2cli.decompose.engine import decompose_model, find_decomposition, load_factors, register_base_model
from t2cli.errors import T2Error
from t2cli.models.hashing import HashCache
from t2cli.models.identity import ModelIdentity, model_identity
from t2cli.models.load import load_model, load_processor, load_tokenizer
from t2cli.models.resolve import resolve_model
from t2cli.models.targets import is_vision_language
from t2cli.runtime.devices import resolve_device
from t2cli.runtime.distributed import SINGLE, Dist
from t2cli.svf.expert import BaseModelRef
from t2cli.svf.model import SVFLike, SVFModel, load_svf_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

    from registry import Registry

# The SVF layout: ``SVFModel`` (the default, what ``load_adaptable`` returns) or ``ShardedSVF``
# (``load_sharded_adaptable``); ``Adaptable[SVFLike]`` is either. Nothing reassigns ``svf``.
SVF = TypeVar("SVF", bound=SVFLike, covariant=True, default=SVFModel)


@dataclass
class Adaptable(Generic[SVF]):
    """A loaded model ready for SVF, with its registry identity."""

    identity: ModelIdentity
    base_model_id: int
    decomposition_id: int
    targets: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    svf: SVF
    device: str
    _processor: ProcessorMixin | None = field(default=None, repr=False)

    def processor(self) -> ProcessorMixin:
        """The model's processor, loaded on first use (only prompts with images need it)."""
        if self._processor is None:
            if not is_vision_language(self.identity.model_type):
                raise T2Error(f"{self.identity.ref.name} is a text-only model: it has no processor for images")
            self._processor = load_processor(self.identity.ref)
        return self._processor

    def base_model_record(self) -> BaseModelRef:
        """The identity block stored in expert configs."""
        ref = self.identity.ref
        return BaseModelRef(
            name=ref.name,
            source=ref.source,
            location=ref.location,
            revision=ref.revision,
            fingerprint=self.identity.fingerprint,
            architecture=self.identity.architecture,
            model_type=self.identity.model_type,
            num_layers=self.identity.num_layers,
            vision_layers=self.identity.vision_layers or None,
        )


def load_adaptable(
    registry: Registry,
    model: str | None,
    *,
    targets: str = "all",
    device: str = "auto",
    dtype: str | None = None,
    dist: Dist | None = None,
) -> Adaptable:
    """Resolve and load ``model``, decompose its targets if not done yet, and wrap it for SVF.

    ``dtype``: the base weights' dtype (None: the checkpoint's own); the factors, deltas
    and z are float32 whatever it is. ``dist``: under a launcher, rank 0 loads and
    decomposes first while the others wait, then they load the factors it stored
    (read-only); ``device`` is then this rank's own (``Dist.device``).
    """
    dist = dist or SINGLE
    device = resolve_device(device)
    return dist.main_first(lambda: _load(registry, model, targets, device, dtype, writer=dist.is_main))


def _load(
    registry: Registry, model: str | None, targets: str, device: str, dtype: str | None, *, writer: bool
) -> Adaptable:
    ref = resolve_model(model)
    identity = model_identity(ref, HashCache(registry.home / "cache" / "file-hashes.json"))
    loaded = load_model(ref, device="cpu", dtype=dtype, dequantised_cache=dequantised_folder(registry, identity))
    if writer:
        # Decompose the weights as stored, not rounded to a narrower --dtype: the factors serve every dtype.
        exact = dtype in (None, "float32")
        summary = decompose_model(registry, model, targets=targets, device=device, loaded=loaded if exact else None)
        base_id, decomposition_id = register_base_model(registry, identity).id, summary.decomposition_id
    else:
        base_id, decomposition_id = find_decomposition(registry, identity, targets)
    loaded = loaded.to(device)  # type: ignore[arg-type]  # transformers wraps .to in functools.wraps, whose stub loses the method's self
    svf = load_svf_model(loaded, load_factors(registry, decomposition_id))
    return Adaptable(
        identity=identity,
        base_model_id=base_id,
        decomposition_id=decomposition_id,
        targets=targets,
        model=loaded,
        tokenizer=load_tokenizer(ref),
        svf=svf,
        device=device,
    )


def dequantised_folder(registry: Registry, identity: ModelIdentity) -> Path:
    """Where a GGUF model's dequantised copy lives: the home's cache, keyed by the file's fingerprint."""
    return registry.home / "cache" / "dequantised" / identity.fingerprint[:16]


def weights_folder(registry: Registry, identity: ModelIdentity) -> Path:
    """A folder with the model's weights as safetensors: its own, or t2's dequantised copy of a GGUF file.

    For readers that take weights from files rather than from t2's loaded model (the
    FSDP loader, vLLM). The dequantised copy is written on first use.
    """
    ref = identity.ref
    if not ref.is_gguf:
        return ref.path
    folder = dequantised_folder(registry, identity)
    if not (folder / "config.json").is_file():
        load_model(ref, dequantised_cache=folder)
    return folder
