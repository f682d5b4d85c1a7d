"""Prompts with images: rendered and encoded by the model's own processor, batched for a forward pass.

A vision-language model's processor knows what a text model's tokenizer does not: the chat
template's image content parts, how many placeholder tokens an image takes, and how pixels
become ``pixel_values`` (plus ``image_grid_thw`` for Qwen2-VL, ``pixel_attention_mask`` for
Idefics3). t2 lets it do all of that, one prompt at a time, and keeps the result as an
``ImagePrompt``: the token ids (image placeholders expanded) and the image tensors. Batches
are then built here, not by the processor, so that generation (left padding) and the
policy-gradient forward (prompt + completion, right padding) feed the same prompt the same
way, and a prompt's rollouts can be re-scored in any micro-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import ProcessorMixin

# Processor outputs laid out per token (one value per input id), not per image: padded with the ids.
# Qwen2-VL's multimodal RoPE reads ``mm_token_type_ids``, Gemma 3's attention mask ``token_type_ids``
# (its image tokens attend to each other both ways); 1 = image token, and completion tokens are text (0).
TOKEN_LEVEL = ("mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class ImagePrompt:
    """One chat-formatted prompt with its images, encoded by the model's processor.

    ``ids``: the prompt's tokens, each image's placeholder already expanded to as many tokens
    as the image takes. ``tensors``: the image inputs (``pixel_values``...), batch dimension 1.
    ``token_level``: per-token processor outputs (``TOKEN_LEVEL``), aligned with ``ids``.
    """

    ids: list[int]
    tensors: dict[str, torch.Tensor] = field(repr=False)
    token_level: dict[str, list[int]] = field(default_factory=dict, repr=False)
    placeholders: tuple[int, ...] = ()  # the ids the model replaces with image features: never to be generated


# Where processors keep the ids of the tokens their model replaces with image (or video) features.
PLACEHOLDER_ATTRIBUTES = ("image_token_id", "video_token_id")


def placeholder_ids(processor: ProcessorMixin) -> tuple[int, ...]:
    """The processor's image/video placeholder ids (LLaVA, Idefics3 and Qwen2-VL processors name them alike).

    Also its ``image_token_ids``: Gemma 3's ``image_token_id`` is the ``<start_of_image>`` marker written in
    the text, and the tokens its model replaces with image features are listed there.
    """
    listed = getattr(processor, "image_token_ids", None)
    ids = [getattr(processor, name, None) for name in PLACEHOLDER_ATTRIBUTES]
    ids += list(listed) if isinstance(listed, (list, tuple)) else []
    return tuple(sorted({i for i in ids if isinstance(i, int)}))


def image_messages(user: str, n_images: int, system: str | None = None) -> list[dict[str, Any]]:
    """Chat messages with the images as content parts before the question (how VLM model cards prompt)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": user})
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    )
    return [*messages, {"role": "user", "content": content}]


def encode_image_prompt(
    processor: ProcessorMixin, user: str, images: Sequence[Image], system: str | None = None, *, suffix: str = ""
) -> ImagePrompt:
    """Render ``user`` and ``images`` with the processor's chat template and encode them (one prompt).

    ``suffix``: text after the generation prompt, the start of the answer (pass 1's ``Classification: \\boxed{``).
    """
    return encode_chat(processor, image_messages(user, len(images), system), images, suffix=suffix)


def encode_chat(
    processor: ProcessorMixin, messages: list[dict[str, Any]], images: Sequence[Image], *, suffix: str = ""
) -> ImagePrompt:
    """Render chat ``messages`` (content parts; ``{"type": "image"}`` stands for the next of ``images``, in
    order) with the processor's chat template, and encode them (one prompt); ``suffix`` follows the template."""
    return encode_rendered(processor, render_chat(processor, messages) + suffix, images)


def render_chat(processor: ProcessorMixin, messages: list[dict[str, Any]]) -> str:
    """The prompt text of chat ``messages`` (content parts) under the processor's chat template, generation prompt on."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):  # tokenize=False returns the text (transformers annotates every mode at once)
        raise TypeError(f"the chat template gave {type(text).__name__}, not the prompt text")
    return text


def encode_rendered(processor: ProcessorMixin, text: str, images: Sequence[Image]) -> ImagePrompt:
    """A prompt already rendered by ``render_chat``, encoded with its images (placeholders expanded)."""
    # The template writes any BOS itself, as for text prompts (render_prompt): the tokenizer must not add another.
    return _encode(processor, text, images, add_special_tokens=False)


def encode_plain_image_prompt(processor: ProcessorMixin, text: str, images: Sequence[Image]) -> ImagePrompt:
    """``images`` then ``text``, without the chat template: the processor's image token per image before the text.

    How the router reads a prompt (``t2cli.router.features``): plain text, the tokenizer's own
    special tokens, so that a prompt's features without images are those of its text. The processor
    expands each image token as it does in a chat prompt (Idefics3 and Gemma 3 add their image markers;
    Qwen2-VL's vision-start/end markers are written here, as its chat template does: its positions
    tell one picture from the next only by them).
    """
    marker = getattr(processor, "image_token", None)
    if images and not isinstance(marker, str):
        raise TypeError(f"{type(processor).__name__} names no image token to place the images with")
    start, end = _vision_markers(processor) if images else ("", "")
    return _encode(processor, f"{start}{marker or ''}{end}" * len(images) + text, images, add_special_tokens=True)


QWEN_VISION_MARKERS = ("<|vision_start|>", "<|vision_end|>")


def _vision_markers(processor: ProcessorMixin) -> tuple[str, str]:
    """The text around each image in a prompt: Qwen2-VL's markers where its tokenizer has them, else none."""
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        return ("", "")
    # Token lookups, not get_vocab(): that builds the whole vocabulary (150k entries for Qwen) on every prompt.
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_VISION_MARKERS))
    known = all(i is not None and i != tokenizer.unk_token_id for i in ids)
    return QWEN_VISION_MARKERS if known else ("", "")


def _encode(processor: ProcessorMixin, text: str, images: Sequence[Image], *, add_special_tokens: bool) -> ImagePrompt:
    out = processor(
        text=[text],
        images=[list(images)] if images else None,
        return_tensors="pt",
        add_special_tokens=add_special_tokens,
    )
    ids = out.pop("input_ids")[0].tolist()
    out.pop("attention_mask", None)
    token_level = {key: out.pop(key)[0].tolist() for key in TOKEN_LEVEL if key in out}
    return ImagePrompt(
        ids=ids,
        tensors={key: value for key, value in out.items()},
        token_level=token_level,
        placeholders=placeholder_ids(processor),
    )


def batch_inputs(
    prompts: Sequence[ImagePrompt], rows: Sequence[Sequence[int]], *, pad_id: int, left: bool
) -> dict[str, torch.Tensor]:
    """A padded batch: ``rows[i]`` are the token ids of row i (``prompts[i]``'s ids, then any completion).

    Returns input_ids, attention_mask, each per-token output of ``prompts`` (zero past the
    prompt: completions and padding are text) and the image tensors concatenated along
    the batch dimension (every supported processor gives one row per prompt or per image).
    """
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    keys = sorted({key for p in prompts for key in p.token_level})
    per_token = {key: torch.zeros_like(ids) for key in keys}
    for i, (prompt, row) in enumerate(zip(prompts, rows)):
        start = width - len(row) if left else 0
        ids[i, start : start + len(row)] = torch.tensor(list(row), dtype=torch.long)
        attention[i, start : start + len(row)] = 1
        for key in keys:
            values = prompt.token_level.get(key, [])
            per_token[key][i, start : start + len(values)] = torch.tensor(values, dtype=torch.long)
    tensors = {
        key: torch.cat([p.tensors[key] for p in prompts if key in p.tensors])  # a text item adds no image rows
        for key in sorted({k for p in prompts for k in p.tensors})
    }
    return {"input_ids": ids, "attention_mask": attention, **per_token, **tensors}
