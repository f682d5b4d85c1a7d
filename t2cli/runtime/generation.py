"""Batched generation with the model's chat template, and log-probabilities of completions.

Generation uses transformers' ``generate`` with left padding (the same code path
every HF user trusts); sampling is seeded through ``torch.manual_seed`` so a run
is reproducible. With ``sample_keys`` each sequence instead draws from its own
random stream (``KeyedSampler``), so what it samples does not depend on which
other sequences share its batch or its process (distributed training needs
this). ``completion_logprobs`` is the differentiable half of RL: it
scores given completions under any forward function (base or adapted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch

from t2cli.runtime.multimodal import ImagePrompt, batch_inputs

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase

    from t2cli.runtime.distributed import Dist


@dataclass(frozen=True)
class Generations:
    """Completions for a list of prompts (``per_prompt`` consecutive entries per prompt)."""

    prompt_ids: list[list[int]]  # one per completion (repeated for samples of the same prompt)
    completion_ids: list[list[int]]  # generated tokens, cut after the first end token
    texts: list[str]
    per_prompt: int
    new_tokens: int  # generated tokens in total, for tokens/s
    # Image prompts: each completion's prompt with its image tensors, so the loss re-scores it with its
    # images (None for a text prompt, and the empty tuple when no prompt had images).
    image_prompts: tuple[ImagePrompt | None, ...] = ()


def render_prompt(tokenizer: PreTrainedTokenizerBase, user: str, system: str | None = None) -> str:
    """The chat-formatted prompt text ending where the assistant's answer starts."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):  # tokenize=False returns the text (transformers annotates every mode at once)
            raise TypeError(f"the chat template gave {type(text).__name__}, not the prompt text")
        return text
    # Base models without a template (e.g. Gemma-3 base): plain text, still deterministic.
    return (f"{system}\n\n" if system else "") + f"{user}\n"


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding with a pad token, as batched decoder-only generation needs."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def end_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The token ids that end a completion: the generation config's eos id(s) and the tokenizer's."""
    ends = model.generation_config.eos_token_id
    ids = set(ends if isinstance(ends, list) else [ends] if ends is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def completion_length(generated: Sequence[int], end_ids: set[int]) -> int:
    """How many of the ``generated`` tokens are the completion: up to and including the first end token."""
    return next((i + 1 for i, token in enumerate(generated) if token in end_ids), len(generated))


def decoding(tokenizer: PreTrainedTokenizerBase, temperature: float) -> dict[str, Any]:
    """``model.generate``'s decoding arguments: sampling at ``temperature`` > 0 (no top-p, no top-k), greedy at 0."""
    sampling = temperature > 0
    return {
        "do_sample": sampling,
        "temperature": temperature if sampling else None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": tokenizer.pad_token_id,
    }


def sample_key(*parts: int) -> int:
    """A 63-bit seed derived from integers, stable across runs, machines and Python versions."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class KeyedSampler:
    """Temperature sampling with one random stream per sequence (a transformers logits processor).

    Gumbel-max: argmax(logits / T + G) with G ~ Gumbel(0, 1) i.i.d. is an exact draw from
    softmax(logits / T). Each row's G comes from its own ``torch.Generator`` seeded with the
    row's key and consumes exactly one vocabulary-sized draw per position, so the token a
    sequence samples at position t depends only on its key, t and its own logits -- not on
    the batch it shares, its row in it, or how prompts were split over processes. Used with
    greedy decoding (``do_sample=False``), which takes the argmax.
    """

    def __init__(self, keys: Sequence[int], temperature: float) -> None:
        if temperature <= 0:
            raise ValueError("KeyedSampler needs a temperature > 0")
        self.keys = list(keys)
        self.temperature = temperature
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(k) for k in self.keys]
        if len(self._generators) != scores.shape[0]:
            raise ValueError(f"{len(self._generators)} sample keys for a batch of {scores.shape[0]}")
        return scores.float() / self.temperature + keyed_gumbel(self._generators, scores.shape[-1], scores.device)


def keyed_gumbel(generators: Sequence[torch.Generator], vocab: int, device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) noise, one vocabulary-sized draw from each row's own stream: ``[len(generators), vocab]``."""
    uniform = torch.stack([torch.rand(vocab, generator=g, device=device, dtype=torch.float32) for g in generators])
    return -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(torch.float32).tiny)))


class TextStop:
    """Stop each sequence once ``done(text so far)`` holds (a transformers stopping criterion).

    Decodes only the generated part of each row, so ``done`` sees what the model wrote,
    not the prompt. ``stopped_at`` records, per row, how many tokens it had when ``done``
    first held (what follows in the output is the batch's padding). Used by pass 1, which
    needs nothing after the first boxed category.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_width: int, done: Callable[[str], bool]) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.done = done
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        generated = input_ids[:, self.prompt_width :]
        for row, text in enumerate(self.tokenizer.batch_decode(generated, skip_special_tokens=True)):
            if row not in self.stopped_at and self.done(text):
                self.stopped_at[row] = generated.shape[1]
        rows = range(input_ids.shape[0])
        return torch.tensor([row in self.stopped_at for row in rows], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[ImagePrompt],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    per_prompt: int = 1,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    sample_keys: Sequence[int] | None = None,
    stop_when: Callable[[str], bool] | None = None,
    sync: Dist | None = None,
) -> Generations:
    """Generate ``per_prompt`` completions for each chat-formatted prompt (greedy at temperature 0).

    ``prompts``: chat-formatted texts, or ``ImagePrompt``s (a vision-language model's prompts,
    encoded by its processor: ``t2cli.runtime.multimodal``), whose image tensors go to the model
    with the ids; the ``Generations`` then keep each completion's ``ImagePrompt`` for the loss.

    ``stop_when``: a completion ends as soon as it holds for the text generated so far
    (or at an end token, or after ``max_new_tokens``).

    ``sample_keys``: one seed per completion (``len(prompts) * per_prompt``, in output
    order); at temperature > 0 each completion then samples from its own stream
    (``KeyedSampler``) instead of the global torch RNG.

    ``sync``: the job, when the model is sharded (FSDP) and every forward is a collective:
    all ranks then run the same number of ``generate`` calls (a rank with fewer prompts
    pads with dummy ones, whose completions are dropped) and each call steps until every
    rank is done (``synced_gpus``).
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList  # noqa: PLC0415 - heavy: transformers (~2 s), only when generating

    prepare_tokenizer(tokenizer)
    device = next(model.parameters()).device
    end_ids = end_token_ids(model, tokenizer)
    expanded = [p for p in prompts for _ in range(per_prompt)]
    prompt_ids: list[list[int]] = []
    completion_ids: list[list[int]] = []
    new_tokens = 0
    if sample_keys is not None and len(sample_keys) != len(expanded):
        raise ValueError(f"{len(sample_keys)} sample keys for {len(expanded)} completions")
    real = len(expanded)
    synced = sync is not None and sync.enabled
    if sync is not None and synced:
        padding = int(sync.max(real)) - real
        expanded += [expanded[-1] if expanded else render_prompt(tokenizer, "")] * padding
        sample_keys = None if sample_keys is None else list(sample_keys) + [0] * padding
    keyed = sample_keys is not None and temperature > 0
    sampling = temperature > 0 and not keyed  # keyed sampling runs as greedy decoding over perturbed logits
    images = any(isinstance(p, ImagePrompt) for p in expanded)
    # A completion holding an image placeholder could not be scored again: the model would look for
    # image features for it (the loss forward fails). Real models almost never write one; random ones do.
    banned = sorted({i for p in expanded if isinstance(p, ImagePrompt) for i in p.placeholders})
    suppress: dict[str, Any] = {"suppress_tokens": banned} if banned else {}
    for start in range(0, len(expanded), batch_size):
        chunk = expanded[start : start + batch_size]
        enc = _encode(tokenizer, chunk).to(device)
        processors = LogitsProcessorList(
            [KeyedSampler(sample_keys[start : start + batch_size], temperature)]
            if keyed and sample_keys is not None
            else []
        )
        width = enc["input_ids"].shape[1]
        text_stop = TextStop(tokenizer, width, stop_when) if stop_when else None
        stopping = StoppingCriteriaList([text_stop] if text_stop else [])
        # A causal LM (or a wrapper of one, like a PEFT model): PreTrainedModel itself declares no generate().
        out = cast("GenerationMixin", model).generate(
            **enc,
            **decoding(tokenizer, temperature if sampling else 0.0),
            stopping_criteria=stopping,
            max_new_tokens=max_new_tokens,
            logits_processor=processors,
            synced_gpus=synced,
            **suppress,
        )
        for row, mask in zip(range(min(len(chunk), real - start)), enc["attention_mask"]):
            prompt_ids.append(enc["input_ids"][row][mask.bool()].tolist())
            generated = out[row, width:].tolist()
            cut = completion_length(generated, end_ids)
            if text_stop is not None:  # where TextStop ended this row (the rest is the batch's padding)
                cut = min(cut, text_stop.stopped_at.get(row, cut))
            completion_ids.append(generated[:cut])
            new_tokens += cut
        if on_batch and start < real:
            on_batch(min(len(chunk), real - start))
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True) if completion_ids else []
    kept = tuple(p if isinstance(p, ImagePrompt) else None for p in expanded[:real]) if images else ()
    return Generations(prompt_ids, completion_ids, texts, per_prompt, new_tokens, kept)


def _encode(tokenizer: PreTrainedTokenizerBase, chunk: Sequence[str | ImagePrompt]):  # -> BatchEncoding
    """One left-padded generation batch: texts through the tokenizer, image prompts as their processor encoded them."""
    from transformers import BatchEncoding  # noqa: PLC0415 - heavy: transformers (~2 s), only when generating

    if not any(isinstance(p, ImagePrompt) for p in chunk):
        return tokenizer(list(chunk), return_tensors="pt", padding=True, add_special_tokens=False)
    prompts = [p if isinstance(p, ImagePrompt) else _text_prompt(tokenizer, p) for p in chunk]
    return BatchEncoding(batch_inputs(prompts, [p.ids for p in prompts], pad_id=tokenizer.pad_token_id, left=True))


def _text_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> ImagePrompt:
    # A text item beside image items (a task may mix them): an ImagePrompt with no images batches with theirs.
    return ImagePrompt(ids=tokenizer(text, add_special_tokens=False)["input_ids"], tensors={})


class _Logits(Protocol):
    """What a forward returns: a model output with ``.logits`` [B, L, V]."""

    @property
    def logits(self) -> torch.Tensor: ...


def completion_logprobs(
    forward: Callable[..., _Logits],
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device | str = "cpu",
    return_logits: bool = False,
    image_prompts: Sequence[ImagePrompt | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of each completion given its prompt.

    ``forward(input_ids=..., attention_mask=...)`` returns an object with ``.logits``
    (the model, or an adapted forward). Returns (logprobs [B, T], mask [B, T],
    logits of the completion positions [B, T, V] if asked), right-padded to the
    longest completion.

    ``image_prompts``: per row, the ``ImagePrompt`` its ``prompt_ids`` came from (None for a
    text row): the forward then also gets the rows' image tensors, so a completion is scored
    with the picture it was generated from.
    """
    sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    width = max(max(len(c) for c in completion_ids), 1)
    # One right-padded batch builder for both: a text row is an ImagePrompt without images (ids and mask only).
    rows = image_prompts if image_prompts is not None else [None] * len(sequences)
    prompts = [p or ImagePrompt(ids=list(ids), tensors={}) for p, ids in zip(rows, prompt_ids)]
    inputs = {k: v.to(device) for k, v in batch_inputs(prompts, sequences, pad_id=pad_id, left=False).items()}
    logits = forward(**inputs).logits  # [B, L, V]
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
