"""Prompt features for the router: the base model's hidden states of the prompt, from one prefill.

The prompt is fed as plain text (no chat template: the template's fixed system text
would dominate a mean over tokens and says nothing about the prompt). Forward hooks on
the chosen decoder layers collect their outputs, and the forward stops right after the
deepest chosen layer, so pass 1 costs a prefill of ``max(layers) + 1`` layers, not of
the whole model. Each layer's states are pooled over the prompt's tokens (mean over the
attention mask, or the last token) and the pooled vectors of the layers are concatenated.

A prompt shown with images is an ``ImagePrompt`` (``encode_plain_image_prompt``: the images'
tokens, then the same plain text) and its image tensors go into the same prefill. The mean
then leaves out the image placeholders: the router was fitted on text prompts, and a picture's
hundreds of patch states would swamp the question's few; the question's tokens come after
the image and attend to it, so its states carry what the picture shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from t2cli.router.defaults import POOLINGS
from t2cli.runtime.multimodal import ImagePrompt, batch_inputs

MAX_PROMPT_TOKENS = 256  # the start of a prompt tells its kind; a longer one is cut here


class _Stop(Exception):
    """Raised by the hook of the deepest layer needed: the rest of the forward is not run."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a causal LM (``model.model.layers`` for Llama, Qwen, Gemma...)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return layers


@contextmanager
def _collect(layers: nn.ModuleList, wanted: Sequence[int], sink: dict[int, torch.Tensor]) -> Iterator[None]:
    deepest = max(wanted)

    def hook_for(index: int):
        def hook(module: nn.Module, args: object, output: object) -> None:
            states = output[0] if isinstance(output, tuple) else output
            if not isinstance(states, torch.Tensor):
                raise TypeError(f"decoder layer {index} returned {type(states).__name__}, not hidden states")
            sink[index] = states
            if index == deepest:
                raise _Stop

        return hook

    handles = [layers[i].register_forward_hook(hook_for(i)) for i in sorted(set(wanted))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pool(states: torch.Tensor, mask: torch.Tensor, pooling: str, pooled: torch.Tensor) -> torch.Tensor:
    """``pooled``: the tokens the mean is taken over (``mask`` without image placeholders)."""
    if pooling == "mean":
        weights = pooled.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
    last = mask.sum(1) - 1  # right padding: the last real token of each row
    return states[torch.arange(states.shape[0], device=states.device), last]


def _cut(prompt: ImagePrompt) -> ImagePrompt:
    """The prompt cut to ``MAX_PROMPT_TOKENS`` past its last image placeholder (an image is never cut)."""
    after = max((i + 1 for i, token in enumerate(prompt.ids) if token in prompt.placeholders), default=0)
    keep = after + MAX_PROMPT_TOKENS
    if len(prompt.ids) <= keep:
        return prompt
    token_level = {key: values[:keep] for key, values in prompt.token_level.items()}
    return replace(prompt, ids=prompt.ids[:keep], token_level=token_level)


@torch.no_grad()
def prompt_features(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str | ImagePrompt],
    *,
    layers: Sequence[int],
    pooling: str = "mean",
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """[len(prompts), len(layers) * hidden] float32 features, with the weights currently applied.

    ``prompts``: plain texts, or ``ImagePrompt``s whose image tensors go into the forward.
    Negative layer indices count from the end, as in Python. Rows do not depend on
    the batch they were computed in beyond float rounding (right padding, masked pooling).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    blocks = decoder_layers(model)
    outside = [i for i in layers if not -len(blocks) <= i < len(blocks)]
    if outside:
        raise ValueError(f"layer {outside[0]} is outside the model's {len(blocks)} decoder layers")
    wanted = [i % len(blocks) for i in layers]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # A text is an ImagePrompt without images: one batch builder for both (t2cli.runtime.multimodal).
    encoded = [
        _cut(p)
        if isinstance(p, ImagePrompt)
        else ImagePrompt(ids=tokenizer(p, add_special_tokens=True)["input_ids"][:MAX_PROMPT_TOKENS], tensors={})
        for p in prompts
    ]
    # Batches of similar lengths pad little: sort by length, compute, then put the rows back in order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    rows: dict[int, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        batch = [encoded[i] for i in order[start : start + batch_size]]
        inputs = {
            k: v.to(device) for k, v in batch_inputs(batch, [p.ids for p in batch], pad_id=pad, left=False).items()
        }
        mask = inputs["attention_mask"]
        placeholders = torch.tensor(sorted({t for p in batch for t in p.placeholders}), dtype=torch.long, device=device)
        pooled = mask * ~torch.isin(inputs["input_ids"], placeholders)
        sink: dict[int, torch.Tensor] = {}
        with _collect(blocks, wanted, sink):
            try:
                model(**inputs, use_cache=False)
            except _Stop:
                pass
        features = torch.cat([_pool(sink[i].float(), mask, pooling, pooled) for i in wanted], dim=-1).cpu()
        rows.update(zip(order[start : start + batch_size], features))
        if on_batch is not None:
            on_batch(len(batch))
    return torch.stack([rows[i] for i in range(len(prompts))]) if rows else torch.zeros((0, 0))
