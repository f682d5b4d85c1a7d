"""Export an expert for other tools: the plain expert folder, a merged HF model, or a PEFT LoRA adapter.

* ``export_expert``: the three-file expert folder (docs/experts.md), for ``t2 import``.
* ``export_merged``: a standalone Hugging Face model folder with W' = U diag(S z) Vh folded
  into the weights (safetensors, config, generation config, tokenizer): any tool that loads
  HF models serves it, and its logits are those of t2's applied expert.
* ``export_lora``: the delta W' - W = U diag(S (z - 1)) Vh is already an SVD (up to order and
  signs), so its best rank-R approximation is its R components of largest |S (z - 1)|: no
  new SVD. Written as a PEFT LoRA adapter (``lora_alpha = r``, so PEFT's scaling is 1) that
  vLLM, TGI and PEFT load; the relative Frobenius error per matrix is reported.

Every export writes into a temporary folder beside the destination and renames it, so a
failed export leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from t2cli.decompose.engine import decompose_model, load_factors
from t2cli.errors import T2Error, UsageError
from t2cli.experts.importing import covering_decomposition, identify_model
from t2cli.models.load import _quiet_transformers, drop_gguf_record
from t2cli.svf import vlm_card
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import (
    LoadedExpert,
    base_hub_id,
    base_model_argument,
    check_base_model,
    load_expert,
    write_expert_folder,
)
from t2cli.svf.model import Factors

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.svf.adaptable import Adaptable

LORA_CONFIG_FILE = "adapter_config.json"  # peft.utils.constants.CONFIG_NAME
LORA_WEIGHTS_FILE = "adapter_model.safetensors"  # peft.utils.constants.SAFETENSORS_WEIGHTS_NAME


# --------------------------------------------------------------------------- shared


@contextmanager
def _new_folder(folder: Path, prefix: str) -> Iterator[Path]:
    """Yield a temp folder beside ``folder``; rename it to ``folder`` when the block succeeds."""
    folder = Path(folder).absolute()
    if folder.exists():
        raise T2Error(f"{folder} already exists", "choose another folder or remove it first")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder.parent))
    try:
        yield tmp
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_same_base(registry: Registry, loaded: LoadedExpert, model: str | None) -> None:
    """Refuse, before loading anything, to use an expert with a model other than the one it was made for."""
    check_base_model(loaded.name, loaded.config.base_model, identify_model(registry, model))


# --------------------------------------------------------------------------- plain folder


def export_expert(registry: Registry, name: str, folder: Path) -> Path:
    """Write a registered expert as its three-file folder (the format `t2 import` reads)."""
    loaded = load_expert(registry, name)
    return write_expert_folder(Path(folder), loaded.z, loaded.config)


# --------------------------------------------------------------------------- merged model


@dataclass(frozen=True)
class MergedExport:
    """What ``export_merged`` wrote."""

    folder: str
    expert: str
    base_model: str
    num_matrices: int
    dtype: str
    files: list[str]
    auto_class: str = "AutoModelForCausalLM"  # what loads it: AutoModelForImageTextToText for a vision-language model


def export_merged(
    registry: Registry,
    name: str,
    folder: Path,
    *,
    model: str | None = None,
    device: str = "auto",
    adaptable: Adaptable | None = None,
) -> MergedExport:
    """Write a standalone HF model folder with the expert folded into its weights.

    ``adaptable``: the expert's base model already loaded (tests, or a caller exporting several).
    """
    loaded = load_expert(registry, name)
    with _new_folder(Path(folder), ".merged-") as tmp:
        if adaptable is None:
            spec = base_model_argument(loaded.config, model)
            check_same_base(registry, loaded, spec)
            adaptable = load_adaptable(registry, spec, targets=loaded.config.targets, device=device)
        else:
            check_base_model(loaded.name, loaded.config.base_model, adaptable.identity)
        vlm = vlm_card.is_vlm(loaded.config.base_model)
        # A vision-language model is only usable with its processor (image processor, image tokens, chat
        # template with image parts): load it before anything is written, so a folder without one fails first.
        processor = adaptable.processor() if vlm else None
        drop_gguf_record(adaptable.model)  # a dequantised GGUF model saves as plain dense weights
        adaptable.svf.apply(loaded.z)
        try:
            with _quiet_transformers():  # model.safetensors, config.json, generation_config.json
                adaptable.model.save_pretrained(tmp)
                adaptable.tokenizer.save_pretrained(tmp)
                if processor is not None:  # processor_config.json (image processor included), chat template
                    processor.save_pretrained(tmp)
        finally:
            adaptable.svf.restore()
        (tmp / "README.md").write_text(_merged_card(loaded))
        files = sorted(p.name for p in tmp.iterdir())
    return MergedExport(
        folder=str(Path(folder).absolute()),
        expert=name,
        base_model=adaptable.identity.ref.name,
        num_matrices=len(loaded.z),
        dtype=str(next(adaptable.model.parameters()).dtype).removeprefix("torch."),
        files=files,
        auto_class="AutoModelForImageTextToText" if vlm else "AutoModelForCausalLM",
    )


def _merged_card(loaded: LoadedExpert) -> str:
    base = loaded.config.base_model
    hub_id = base_hub_id(base)
    lines = ["---", "library_name: transformers"]
    if hub_id:
        lines += [f"base_model: {hub_id}", "base_model_relation: merge"]
    vlm = vlm_card.is_vlm(base)
    lines += [f"pipeline_tag: {vlm_card.pipeline_tag(base)}", "tags:", "- t2", "- transformer-squared", "- svf-merged"]
    lines += ["- vision-language"] if vlm else []
    how = (
        "Load it with `AutoModelForImageTextToText` and `AutoProcessor` (the processor files are included)."
        if vlm
        else "Load it like any Hugging Face causal LM."
    )
    lines += [
        "---",
        "",
        f"# {loaded.name} (merged)",
        "",
        f"{base.name} with the t2 SVF expert `{loaded.name}` folded into {len(loaded.z)} weight matrices "
        f"(W' = U diag(S z) Vh). {how}",
        *vlm_card.vlm_section(base, loaded.z, hub_id),
        "",
        f"Base model fingerprint: `{base.fingerprint}`. Task: `{loaded.config.task or '-'}`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- LoRA


def lora_factors(factors: Factors, z: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-``rank`` factorisation B @ A of delta = U diag(S (z - 1)) Vh, and its relative error.

    d = S (z - 1) are delta's singular values up to sign, so its best rank-R approximation
    (Eckart-Young) keeps the R entries of largest |d|. Each kept component is split evenly:
    B = U[:, k] * sign(d_k) sqrt|d_k|, A = sqrt|d_k| Vh[k, :] (balanced magnitudes suit
    half-precision serving). Ranks beyond the matrix's own are zero-padded, so every matrix
    of an adapter has the same r. Returns B (m, rank), A (rank, n) in float32 and
    ||delta - B A||_F / ||delta||_F (0 when delta = 0).
    """
    if rank < 1:
        raise UsageError(f"--rank {rank} is not positive", "use a rank of 1 or more, e.g. --rank 16")
    U, Vh = factors.U.to(torch.float32), factors.Vh.to(torch.float32)
    d = factors.S.to(torch.float32) * (z.to(factors.S.device, torch.float32) - 1.0)
    order = torch.argsort(d.abs(), descending=True, stable=True)
    keep, drop = order[:rank], order[rank:]
    root = d[keep].abs().sqrt()
    B = torch.zeros(U.shape[0], rank, dtype=torch.float32, device=U.device)
    A = torch.zeros(rank, Vh.shape[1], dtype=torch.float32, device=U.device)
    B[:, : keep.numel()] = U[:, keep] * (torch.sign(d[keep]) * root)
    A[: keep.numel(), :] = root[:, None] * Vh[keep, :]
    total = float(d.double().square().sum())
    dropped = float(d[drop].double().square().sum())
    return B, A, math.sqrt(dropped / total) if total > 0 else 0.0


@dataclass(frozen=True)
class LoraExport:
    """What ``export_lora`` wrote and how close the rank-r adapter is to the expert."""

    folder: str
    expert: str
    rank: int
    num_matrices: int
    base_model_name_or_path: str
    errors: dict[str, float]  # matrix -> ||delta - delta_r||_F / ||delta||_F
    overall_error: float  # the same over all matrices together
    min_error: float
    median_error: float
    max_error: float


def export_lora(
    registry: Registry,
    name: str,
    folder: Path,
    *,
    rank: int,
    model: str | None = None,
    factors: dict[str, Factors] | None = None,
) -> LoraExport:
    """Write the expert as a PEFT LoRA adapter of rank ``rank`` (see ``lora_factors``).

    Needs only the decomposition (loads no model weights unless the base must be decomposed).
    ``factors``: the base's factors when the caller already has them.
    """
    try:
        from peft import LoraConfig  # noqa: PLC0415 - optional: peft is the [lora] extra
    except ImportError:
        raise T2Error("LoRA export needs the peft package", "pip install 't2cli[lora]' (or pip install peft)") from None
    if rank < 1:
        raise UsageError(f"--rank {rank} is not positive", "use a rank of 1 or more, e.g. --rank 16")
    loaded = load_expert(registry, name)
    if factors is None:
        factors = expert_factors(registry, loaded, model)
    missing = sorted(set(loaded.z) - set(factors))
    if missing:
        raise T2Error(
            f"the decomposition lacks {missing[0]!r} ({len(missing)} matrices)",
            f"decompose the base with the expert's targets: t2 decompose --targets '{loaded.config.targets}'",
        )
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    dropped = total = 0.0
    for matrix in sorted(loaded.z):
        f = factors[matrix]
        B, A, error = lora_factors(f, loaded.z[matrix], rank)
        tensors[f"base_model.model.{matrix}.lora_A.weight"] = A.cpu().contiguous()
        tensors[f"base_model.model.{matrix}.lora_B.weight"] = B.cpu().contiguous()
        errors[matrix] = error
        d2 = float((f.S.double() * (loaded.z[matrix].to(f.S.device).double() - 1)).square().sum())
        total += d2
        dropped += d2 * error**2
    base = loaded.config.base_model
    base_path = base_hub_id(base) or str(base.location or base.name)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted(loaded.z),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",  # also for a VLM: PeftModelForCausalLM passes pixel_values on to its forward
        base_model_name_or_path=base_path,
        use_rslora=False,
    )
    with _new_folder(Path(folder), ".lora-") as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / LORA_WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "README.md").write_text(_lora_card(loaded, rank, base_path))
    values = list(errors.values())
    return LoraExport(
        folder=str(Path(folder).absolute()),
        expert=name,
        rank=rank,
        num_matrices=len(errors),
        base_model_name_or_path=base_path,
        errors=errors,
        overall_error=math.sqrt(dropped / total) if total > 0 else 0.0,
        min_error=min(values),
        median_error=statistics.median(values),
        max_error=max(values),
    )


def expert_factors(registry: Registry, loaded: LoadedExpert, model: str | None = None) -> dict[str, Factors]:
    """The SVD factors of the matrices an expert adapts: from its decomposition, else decomposed now."""
    decomposition_id = covering_decomposition(registry, loaded.base_model_id, set(loaded.z), loaded.config.targets)
    if decomposition_id is None:
        spec = base_model_argument(loaded.config, model)
        check_same_base(registry, loaded, spec)
        decomposition_id = decompose_model(registry, spec, targets=loaded.config.targets).decomposition_id
    raw = load_factors(registry, decomposition_id)
    return {key: Factors(*(t.to(torch.float32) for t in raw[key])) for key in loaded.z if key in raw}


def _lora_card(loaded: LoadedExpert, rank: int, base_path: str) -> str:
    base = loaded.config.base_model
    hub_id = base_hub_id(base)
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base_path}" if hub_id else None,
        f"pipeline_tag: {vlm_card.pipeline_tag(base)}",
        "tags:",
        "- t2",
        "- transformer-squared",
        "- lora",
        "- vision-language" if vlm_card.is_vlm(base) else None,
        "---",
        "",
        f"# {loaded.name} (LoRA r={rank})",
        "",
        f"The t2 SVF expert `{loaded.name}` as a rank-{rank} LoRA adapter: the delta U diag(S (z - 1)) Vh "
        f"truncated to its {rank} largest singular components per matrix (lora_alpha = r, scaling 1). "
        "`target_modules` are the full module names as transformers loads the model.",
        *vlm_card.vlm_section(base, loaded.z, hub_id),
        "",
        f"Base model fingerprint: `{loaded.config.base_model.fingerprint}`.",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)
