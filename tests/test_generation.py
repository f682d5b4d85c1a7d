"""Batched generation: text-based stopping (what pass 1 uses to stop at its boxed category)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from t2cli.runtime.generation import generate, render_prompt

PROMPTS = ["What is 2 + 3?", "Name a colour, please."]


@pytest.fixture()
def model_and_tokenizer(tiny_llama: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def test_stop_when_ends_each_row_at_the_first_prefix_that_satisfies_it(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    texts = [render_prompt(tokenizer, p) for p in PROMPTS]
    full = generate(model, tokenizer, texts, max_new_tokens=10)
    lengths = [min(2, len(full.completion_ids[0])), min(6, len(full.completion_ids[1]))]
    targets = {tokenizer.decode(ids[:k], skip_special_tokens=True) for ids, k in zip(full.completion_ids, lengths)}

    stopped = generate(model, tokenizer, texts, max_new_tokens=10, stop_when=lambda text: text in targets)

    # greedy decoding is the same up to the stop; rows end at different lengths, and the
    # shorter row's padding is not part of its completion
    for ids, k, got in zip(full.completion_ids, lengths, stopped.completion_ids):
        first = next(j for j in range(1, k + 1) if tokenizer.decode(ids[:j], skip_special_tokens=True) in targets)
        assert got == ids[:first]
    assert stopped.new_tokens == sum(len(ids) for ids in stopped.completion_ids) < full.new_tokens


def test_without_a_stop_generation_runs_to_the_budget_or_an_end_token(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    text = render_prompt(tokenizer, PROMPTS[0])
    never = generate(model, tokenizer, [text], max_new_tokens=8, stop_when=lambda text: False)
    plain = generate(model, tokenizer, [text], max_new_tokens=8)
    assert never.completion_ids == plain.completion_ids
