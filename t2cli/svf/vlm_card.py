"""What a model card says about a vision-language base model: family, identity, and which parts an expert adapts.

Shared by the expert folder's card (``t2cli.svf.expert.model_card``) and the merged and LoRA
export cards (``t2cli.experts.export``), so that every shared artefact of a VLM expert names
the same model the same way. Text models get nothing from here (their cards are unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from t2cli.models.resolve import ALIASES
from t2cli.models.targets import PART_NAMES, VLM_FAMILIES, is_vision_language, matrix_parts

if TYPE_CHECKING:
    from t2cli.svf.expert import BaseModelRef

PIPELINE_TEXT = "text-generation"
PIPELINE_IMAGE_TEXT = "image-text-to-text"


def is_vlm(base: BaseModelRef) -> bool:
    return bool(base.model_type) and is_vision_language(str(base.model_type))


def pipeline_tag(base: BaseModelRef) -> str:
    """The Hub's pipeline for the base: image-text-to-text for a vision-language model."""
    return PIPELINE_IMAGE_TEXT if is_vlm(base) else PIPELINE_TEXT


def adapted_parts(base: BaseModelRef, matrices: Iterable[str]) -> dict[str, int]:
    """Adapted matrices per part of the model ("language", "vision", "projector"), from its layout."""
    if not is_vlm(base):
        return {"language": len(list(matrices))}
    return matrix_parts(str(base.model_type), int(base.num_layers or 0), int(base.vision_layers or 0), matrices)


def parts_phrase(parts: dict[str, int]) -> str:
    """ "language model (14 matrices), vision tower (12 matrices)" in the order of the model's flow."""
    order = [*PART_NAMES, "other"]
    names = {**PART_NAMES, "other": "other matrices"}
    return ", ".join(f"{names[p]} ({parts[p]} matrices)" for p in order if parts.get(p))


def vlm_section(base: BaseModelRef, matrices: Iterable[str], hub_id: str | None) -> list[str]:
    """Card lines naming a vision-language base and what the expert adapts in it; [] for a text model."""
    if not is_vlm(base):
        return []
    model_type = str(base.model_type)
    alias = _alias(base, hub_id)
    who = [f"model_type `{model_type}`", f"architecture `{base.architecture}`"]
    if hub_id:
        who.append(f"Hub id `{hub_id}`")
    if alias:
        who.append(f"t2 alias `{alias}`")
    parts = adapted_parts(base, list(matrices))
    return [
        "",
        "## Vision-language model",
        "",
        f"{base.name} is a vision-language model of the {VLM_FAMILIES.get(model_type, model_type)} family "
        f"({', '.join(who)}): a language model, a vision tower ({base.vision_layers or '?'} blocks) and a "
        "projector from image features to the language model. Load it with `AutoModelForImageTextToText` "
        "and its processor (`AutoProcessor`).",
        "",
        f"Adapted: {parts_phrase(parts)}; "
        + (
            "the vision tower and projector are unchanged."
            if set(parts) == {"language"}
            else "matrices outside the language model act only on images."
        ),
    ]


def _alias(base: BaseModelRef, hub_id: str | None) -> str | None:
    name = str(base.name or "").lower()
    if name in ALIASES:
        return name
    return next((alias.name for alias in ALIASES.values() if hub_id and alias.hub_id == hub_id), None)
