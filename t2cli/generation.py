"""Batched generation with the model's chat template, and log-probabilities of completions.

Generation uses transformers' ``generate`` with left padding (the same code path
every HF user trusts); sampling is seeded through ``torch.manual_seed`` so a run
is reproducible. ``completion_logprobs`` is the differentiable half of RL: it
scores given completions under any forward function (base or adapted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generations:
    """Completions for a list of prompts (``per_prompt`` consecutive entries per prompt)."""

    prompt_ids: list[list[int]]  # one per completion (repeated for samples of the same prompt)
    completion_ids: list[list[int]]  # generated tokens, cut after the first end token
    texts: list[str]
    per_prompt: int
    new_tokens: int  # generated tokens in total, for tokens/s


def render_prompt(tokenizer: PreTrainedTokenizerBase, user: str, system: str | None = None) -> str:
    """The chat-formatted prompt text ending where the assistant's answer starts."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Base models without a template (e.g. Gemma-3 base): plain text, still deterministic.
    return (f"{system}\n\n" if system else "") + f"{user}\n"


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding with a pad token, as batched decoder-only generation needs."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _end_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ends = model.generation_config.eos_token_id
    ids = set(ends if isinstance(ends, list) else [ends] if ends is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    per_prompt: int = 1,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> Generations:
    """Generate ``per_prompt`` completions for each chat-formatted prompt (greedy at temperature 0)."""
    prepare_tokenizer(tokenizer)
    device = next(model.parameters()).device
    end_ids = _end_ids(model, tokenizer)
    expanded = [p for p in prompts for _ in range(per_prompt)]
    prompt_ids: list[list[int]] = []
    completion_ids: list[list[int]] = []
    new_tokens = 0
    sampling = temperature > 0
    for start in range(0, len(expanded), batch_size):
        chunk = expanded[start : start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
        )
        width = enc["input_ids"].shape[1]
        for row, mask in zip(range(len(chunk)), enc["attention_mask"]):
            prompt_ids.append(enc["input_ids"][row][mask.bool()].tolist())
            generated = out[row, width:].tolist()
            cut = next((i + 1 for i, t in enumerate(generated) if t in end_ids), len(generated))
            completion_ids.append(generated[:cut])
            new_tokens += cut
        if on_batch:
            on_batch(len(chunk))
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Generations(prompt_ids, completion_ids, texts, per_prompt, new_tokens)


def completion_logprobs(
    forward: Callable[..., object],
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device | str = "cpu",
    return_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of each completion given its prompt.

    ``forward(input_ids=..., attention_mask=...)`` returns an object with ``.logits``
    (the model, or an adapted forward). Returns (logprobs [B, T], mask [B, T],
    logits of the completion positions [B, T, V] if asked), right-padded to the
    longest completion.
    """
    sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    longest = max(len(s) for s in sequences)
    width = max(max(len(c) for c in completion_ids), 1)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    ids, attention = ids.to(device), attention.to(device)
    logits = forward(input_ids=ids, attention_mask=attention).logits  # [B, L, V]
    # Position i predicts token i+1: gather each completion's window.
    index = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    mask = torch.zeros((len(sequences), width), dtype=torch.float32, device=device)
    for row, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        positions = torch.arange(len(p) - 1, len(p) - 1 + len(c), device=device)
        index[row, : len(c)] = positions
        mask[row, : len(c)] = 1.0
    window = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # [B, T, V]
    targets = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for row, c in enumerate(completion_ids):
        if c:
            targets[row, : len(c)] = torch.tensor(c, dtype=torch.long, device=device)
    logprobs = window.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1) * mask
    return logprobs, mask, (window if return_logits else None)
