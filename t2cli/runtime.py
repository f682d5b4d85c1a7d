"""Load what adaptive inference and training need: model, tokenizer, factors, identity.

One function, ``load_adaptable``, so ``train``, ``eval`` and ``ask`` agree on how a
model is found, decomposed (once, on first use) and wrapped for SVF.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from t2cli.decompose import decompose_model, load_factors, register_base_model, resolve_device
from t2cli.hashing import HashCache
from t2cli.models import ModelIdentity, load_model, load_tokenizer, model_identity, resolve_model
from t2cli.svf import SVFModel, load_svf_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from registry import Registry


@dataclass
class Adaptable:
    """A loaded model ready for SVF, with its registry identity."""

    identity: ModelIdentity
    base_model_id: int
    decomposition_id: int
    targets: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    svf: SVFModel
    device: str

    def base_model_record(self) -> dict[str, Any]:
        """The identity block stored in expert configs."""
        ref = self.identity.ref
        return {
            "name": ref.name, "source": ref.source, "location": ref.location, "revision": ref.revision,
            "fingerprint": self.identity.fingerprint, "architecture": self.identity.architecture,
            "model_type": self.identity.model_type, "num_layers": self.identity.num_layers,
        }


def load_adaptable(
    registry: Registry, model: str | None, *, targets: str = "all", device: str = "auto", dtype: str | None = None
) -> Adaptable:
    """Resolve and load ``model``, decompose its targets if not done yet, and wrap it for SVF."""
    device = resolve_device(device)
    ref = resolve_model(model)
    identity = model_identity(ref, HashCache(registry.home / "cache" / "file-hashes.json"))
    # GGUF models are dequantised once into the home's cache (keyed by the file's fingerprint).
    dequantised = registry.home / "cache" / "dequantised" / identity.fingerprint[:16]
    loaded = load_model(ref, device="cpu", dtype=dtype, dequantised_cache=dequantised)
    summary = decompose_model(registry, model, targets=targets, device=device, loaded=loaded)
    base = register_base_model(registry, identity)
    loaded = loaded.to(device)
    svf = load_svf_model(loaded, load_factors(registry, summary.decomposition_id))
    return Adaptable(
        identity=identity, base_model_id=base.id, decomposition_id=summary.decomposition_id, targets=targets,
        model=loaded, tokenizer=load_tokenizer(ref), svf=svf, device=device,
    )
