"""One batched generation whose rows stream, stop and sample on their own.

Every row of a batch shares the weights and the decoding (greedy, or one temperature and
top-p); each keeps its own token budget, stop sequences and random stream
(``KeyedSampler``: what a row samples depends on its seed alone, not on the batch it
shares). ``RowStreamer`` hands each row's new text to its callback as tokens arrive,
holding back what could be the start of a stop sequence; ``RowStop`` tells
``generate`` which rows are done, so a finished row is padded while the others go on.
A row may carry images (an ``ImagePrompt`` its model's processor encoded): text and image
rows are padded by the same routine (``batch_inputs``), the image tensors concatenated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper
from transformers.generation.streamers import BaseStreamer

from t2cli.runtime.generation import KeyedSampler, decoding, end_token_ids
from t2cli.runtime.multimodal import ImagePrompt, batch_inputs

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Row:
    """One completion to generate: its prompt tokens, limits, seed and where its text goes."""

    prompt_ids: list[int]
    max_tokens: int
    stops: list[str]
    sample_key: int
    on_text: Callable[[str], None]
    cancelled: Callable[[], bool] = lambda: False
    images: ImagePrompt | None = None  # the prompt with its images (its ids are ``prompt_ids``); None: text
    # filled while generating
    ids: list[int] = field(default_factory=list)
    text: str = ""  # the completion so far (cut at a stop sequence)
    sent: int = 0  # characters of ``text`` already handed to ``on_text``
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class RowStreamer(BaseStreamer):
    """Receives each step's tokens (one per row) and streams every row's text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], end_ids: set[int]) -> None:
        self.tokenizer, self.rows, self.end_ids = tokenizer, rows, end_ids
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if row.done:
                continue
            if row.cancelled():
                row.finish_reason = "cancelled"
                continue
            row.ids.append(token)
            if token in self.end_ids:
                row.finish_reason = "stop"
            elif len(row.ids) >= row.max_tokens:
                row.finish_reason = "length"
            self._emit(row)

    def end(self) -> None:
        for row in self.rows:
            if not row.done:
                row.finish_reason = "length"
                self._emit(row)

    def _emit(self, row: Row) -> None:
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        if not isinstance(text, str):
            raise TypeError(f"decoding gave {type(text).__name__}, not text")
        hits = [i for i in (text.find(stop) for stop in row.stops) if i >= 0]
        if hits:
            text, row.finish_reason = text[: min(hits)], "stop"
        row.text = text
        ready = len(text)
        if not row.done:
            if text.endswith("\ufffd"):
                ready = len(text) - 1  # half of a multi-byte character: wait for the rest
            for stop in row.stops:  # hold back a tail that may be the start of a stop sequence
                for n in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:n]):
                        ready = min(ready, len(text) - n)
                        break
        if ready > row.sent:
            piece, row.sent = text[row.sent : ready], ready
            row.on_text(piece)


class RowStop:
    """A stopping criterion: a row is done once the streamer says so (end token, budget, stop text, cancel)."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    *,
    temperature: float,
    top_p: float,
    suppress: Sequence[int] = (),
) -> None:
    """Generate every row in one left-padded batch with the weights currently applied (rows are filled in).

    ``suppress``: token ids never generated (a vision-language model's image placeholders, on every
    row alike so that a row's answer does not depend on its batch).
    """
    parameter = next(model.parameters())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [row.images or ImagePrompt(ids=row.prompt_ids, tensors={}) for row in rows]
    inputs = batch_inputs(prompts, [p.ids for p in prompts], pad_id=int(pad_id or 0), left=True)
    # Pixels in the model's dtype (processors give float32), ids and masks as they are.
    inputs = {
        key: value.to(parameter.device, dtype=parameter.dtype)
        if value.is_floating_point()
        else value.to(parameter.device)
        for key, value in inputs.items()
    }
    processors = LogitsProcessorList()
    if temperature > 0:  # keyed sampling runs as greedy decoding over perturbed logits
        processors.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
        processors.append(KeyedSampler([row.sample_key for row in rows], 1.0))
    settings = decoding(tokenizer, 0.0)
    settings["pad_token_id"] = pad_id
    if suppress:
        settings["suppress_tokens"] = list(suppress)
    cast("GenerationMixin", model).generate(
        **inputs,
        **settings,
        max_new_tokens=max(row.max_tokens for row in rows),
        logits_processor=processors,
        stopping_criteria=StoppingCriteriaList([RowStop(rows)]),
        streamer=RowStreamer(tokenizer, rows, end_token_ids(model, tokenizer)),
    )
