"""Continuous batching: rows join and leave a running generation between decoding steps.

``generate_rows`` (decode.py) runs one ``generate`` call per batch: a request that arrives
while a batch runs waits for its longest row to end, and a row that has ended is still fed
padding until then. ``ContinuousBatch`` keeps the running rows' key/value cache itself:
``admit`` prefills new rows (one left-padded forward pass) and splices their cache into the
running one, ``step`` decodes one token for every running row, and a row that ends leaves
the batch at once (its answer is complete the step it ends). The scheduler calls ``admit``
between steps for queued requests of the same weights, as vLLM and TGI schedule per
iteration; different weights still never share a forward pass.

Each row is left-padded to the batch's width with its own attention mask and explicit
position ids, so a row's tokens are computed as when it is alone (up to the floating-point
order of batched matrix products). Rows that sample draw from their own keyed Gumbel stream
(``keyed_gumbel``), one draw per position, exactly as ``generate_rows``' ``KeyedSampler``
does: a seeded request samples the same tokens whichever way it is batched.

The splice handles full-attention key/value caches (``DynamicLayer``: Llama, Qwen2, Phi-3,
SmolLM2...). Models whose cache holds anything else (sliding windows, linear-attention
state) and vision-language models (positions that depend on the images) are answered by
``generate_rows``: ``supports`` tells which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from transformers import LogitsProcessorList
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from t2cli.runtime.generation import end_token_ids, keyed_gumbel
from t2cli.runtime.multimodal import ImagePrompt, batch_inputs
from t2cli.serve.decode import Row, RowStreamer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def supports(model: PreTrainedModel) -> bool:
    """Whether ``ContinuousBatch`` can run ``model``: a text model whose cache layers are all full attention."""
    config = model.config
    if getattr(config, "vision_config", None) is not None:
        return False
    layers = DynamicCache(config=config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class ContinuousBatch:
    """The running rows of one weights group, their cache and their next tokens."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        temperature: float,
        top_p: float,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)
        self.sampling = temperature > 0
        self.warpers = LogitsProcessorList()
        if self.sampling:
            self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p))
        self.rows: list[Row] = []
        self._generators: list[torch.Generator] = []
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)  # [rows, cached positions]
        self._next = torch.zeros((0,), dtype=torch.long, device=self.device)  # each row's token not yet cached
        self._streamer = RowStreamer(tokenizer, [], end_token_ids(model, tokenizer))
        self._streamer.prompt_seen = True  # tokens are pushed one step at a time, never the prompt
        self.steps = 0  # decoding forward passes
        self.step_rows = 0  # rows those passes computed, summed: step_rows / steps = the mean batch

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ joining

    @torch.no_grad()
    def admit(self, rows: Sequence[Row]) -> None:
        """Prefill ``rows`` together, choose each one's first token and add them to the running batch."""
        if not rows:
            return
        if any(row.images is not None for row in rows):  # ``supports`` keeps vision-language models out
            raise ValueError("a continuous batch takes text rows only: rows with images go to generate_rows")
        prompts = [
            ImagePrompt(ids=row.prompt_ids, tensors={}) for row in rows
        ]  # text rows, padded as generate_rows pads
        inputs = batch_inputs(prompts, [p.ids for p in prompts], pad_id=self.pad_id, left=True)
        ids, mask = inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first token
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        )
        generators = [torch.Generator(device=self.device).manual_seed(row.sample_key) for row in rows]
        tokens = self._choose(out.logits[:, -1, :], generators)
        self._join(cache, mask)
        self.rows.extend(rows)
        self._generators.extend(generators)
        self._next = torch.cat([self._next, tokens])
        self._push(rows, tokens)

    def _join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Splice a new cache into the running one: the shorter is left-padded (masked) to the longer's length."""
        if self._cache is None or not self.rows:
            self._cache, self._mask = cache, mask
            return
        length = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(_kv_layers(self._cache), _kv_layers(cache)):
            old.keys = torch.cat([_left_pad(_kv(old.keys), length, -2), _left_pad(_kv(new.keys), length, -2)])
            old.values = torch.cat([_left_pad(_kv(old.values), length, -2), _left_pad(_kv(new.values), length, -2)])
        self._mask = torch.cat([_left_pad(self._mask, length, -1), _left_pad(mask, length, -1)])

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def step(self) -> None:
        """Decode one token for every running row; rows that end leave the batch."""
        if not self.rows:
            return
        positions = self._mask.sum(-1, keepdim=True)  # the next token's position: the row's real tokens so far
        mask = torch.cat([self._mask, torch.ones_like(positions)], dim=-1)
        out = self.model(
            input_ids=self._next[:, None],
            attention_mask=mask,
            position_ids=positions,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._mask = mask
        self.steps += 1
        self.step_rows += len(self.rows)
        self._next = self._choose(out.logits[:, -1, :], self._generators)
        self._push(self.rows, self._next)

    def _choose(self, logits: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Greedy, or a draw per row from its keyed stream (as ``KeyedSampler`` in ``generate_rows``)."""
        if not self.sampling:
            return logits.argmax(-1)
        no_ids = cast(
            "torch.LongTensor", torch.empty((len(generators), 0), dtype=torch.long)
        )  # the warpers ignore them
        scores = self.warpers(no_ids, logits)
        return (scores.float() + keyed_gumbel(generators, scores.shape[-1], scores.device)).argmax(-1)

    def _push(self, rows: Sequence[Row], tokens: torch.Tensor) -> None:
        """Stream each row's new token (end, budget, stop text and cancelling are the streamer's), then drop ended rows."""
        self._streamer.rows = rows
        self._streamer.put(tokens)
        self._drop_done()

    def _drop_done(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self._generators = [self._generators[i] for i in keep]
        self._next = self._next[index]
        self._mask = self._mask[index]
        if self._cache is None:
            return
        # Columns that are padding for every remaining row are dropped, so the cache never outgrows its longest row.
        used = self._mask.sum(0) > 0
        first = int(used.nonzero()[0]) if bool(used.any()) else self._mask.shape[1]
        self._mask = self._mask[:, first:]
        for layer in _kv_layers(self._cache):
            layer.keys = _kv(layer.keys)[index, :, first:]
            layer.values = _kv(layer.values)[index, :, first:]


def _kv_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, each a full-attention ``DynamicLayer`` (what ``supports`` checked)."""
    layers = list(cache.layers)
    for layer in layers:
        if not isinstance(layer, DynamicLayer):
            raise TypeError(f"a continuous batch cannot splice a {type(layer).__name__} cache layer")
    return cast("list[DynamicLayer]", layers)


def _kv(tensor: torch.Tensor | None) -> torch.Tensor:
    """A filled layer's keys or values (every layer is filled by the prefill)."""
    if tensor is None:
        raise RuntimeError("a cache layer was not filled by the prefill")
    return tensor


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """``tensor`` with zeros prepended along ``dim`` up to ``length`` (a mask's zeros mean padding)."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
