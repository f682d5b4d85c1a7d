"""Continuous batching in ``t2 serve``: rows join a running batch between steps and leave it when they end.

The unit half drives ``ContinuousBatch`` on tiny random models and compares every row with
the same row generated alone by ``generate_rows`` (transformers' ``generate``). The server
half uses uvicorn on loopback and the official openai client, as a user would.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from t2cli.runtime.generation import prepare_tokenizer
from t2cli.serve import scheduler
from t2cli.serve.continuous import ContinuousBatch, supports
from t2cli.serve.decode import Row, generate_rows
from tests.serve_support import live_server, wait_until


def _load(folder: Path):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, prepare_tokenizer(AutoTokenizer.from_pretrained(folder))


def _prompts(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 20, (n,), generator=g).tolist()
    return [torch.randint(3, 60, (length,), generator=g).tolist() for length in lengths]


def _rows(prompts: Sequence[list[int]]) -> list[Row]:
    return [
        Row(prompt_ids=p, max_tokens=10 + i, stops=[], sample_key=100 + i, on_text=lambda text: None)
        for i, p in enumerate(prompts)
    ]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_rows_that_join_mid_generation_get_the_tokens_they_get_alone(
    tiny_model_dirs: dict[str, Path], arch: str, temperature: float
) -> None:
    model, tokenizer = _load(tiny_model_dirs[arch])
    prompts = _prompts(7)
    alone = []
    for row in _rows(prompts):
        generate_rows(model, tokenizer, [row], temperature=temperature, top_p=0.9)
        alone.append(row.ids)

    rows = _rows(prompts)
    batch = ContinuousBatch(model, tokenizer, temperature=temperature, top_p=0.9)
    batch.admit(rows[:3])  # prompts of other lengths join after 2 and 7 steps: both caches are re-padded
    batch.step()
    batch.step()
    batch.admit(rows[3:5])
    for _ in range(5):
        batch.step()
    batch.admit(rows[5:])
    while len(batch):
        batch.step()

    assert [row.ids for row in rows] == alone
    assert all(row.done for row in rows)
    # Rows leave when they end: fewer rows per step than generate() computing all 7 until the longest ends.
    assert batch.step_rows < batch.steps * len(rows)


def test_a_row_that_ends_leaves_and_the_others_go_on_unchanged(tiny_model_dirs: dict[str, Path]) -> None:
    model, tokenizer = _load(tiny_model_dirs["llama"])
    prompts = _prompts(4, seed=3)
    rows = _rows(prompts)
    rows[0].max_tokens = 1  # ends at its first token, in the prefill that admitted it
    alone = []
    for row in _rows(prompts)[1:]:
        generate_rows(model, tokenizer, [row], temperature=0.0, top_p=1.0)
        alone.append(row.ids)
    batch = ContinuousBatch(model, tokenizer, temperature=0.0, top_p=1.0)
    batch.admit(rows)
    assert len(batch) == 3 and rows[0].finish_reason == "length" and len(rows[0].ids) == 1
    while len(batch):
        batch.step()
    assert [row.ids for row in rows[1:]] == alone


def test_models_whose_cache_cannot_be_spliced_fall_back_to_one_generate_per_batch(
    tiny_model_dirs: dict[str, Path], tiny_vlm_dirs: dict[str, Path], tmp_path: Path
) -> None:
    assert supports(_load(tiny_model_dirs["llama"])[0]) and supports(_load(tiny_model_dirs["qwen2"])[0])
    assert not supports(_load(tiny_model_dirs["mistral"])[0])  # a sliding-window cache
    assert not supports(_load(tiny_model_dirs["gemma3"])[0])  # sliding and full layers mixed
    with live_server(tmp_path / "home", tiny_model_dirs["mistral"]) as live:
        assert not live.service.scheduler.continuous
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model=live.service.base_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
        )
        assert reply.usage.completion_tokens >= 1


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_a_short_request_sent_mid_answer_joins_the_running_batch_and_ends_first(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batching: str
) -> None:
    with live_server(tmp_path / "home", tiny_model_dirs["llama"], batching=batching) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)

        def ask(max_tokens: int) -> tuple[str, int]:
            reply = client.chat.completions.create(
                model="gamma",
                messages=[{"role": "user", "content": "Why is the sky blue?"}],
                max_tokens=max_tokens,
                temperature=0,
            )
            return reply.choices[0].message.content or "", reply.usage.completion_tokens

        long_alone, long_tokens = ask(60)
        short_alone = ask(3)[0]
        assert long_tokens >= 40  # a long answer: many steps after the short one joins

        # The worker pauses inside the long answer's generation (a decoding step, or its first streamed token
        # with static batching) until the short request is queued: it arrives while the long one runs.
        short_sent, short_queued = threading.Event(), threading.Event()

        def wait_for_short() -> None:
            if not short_queued.is_set():
                short_sent.set()
                wait_until(lambda: live.service.scheduler.queue_length == 1, what="the short request queued")
                short_queued.set()

        class PausingBatch(scheduler.ContinuousBatch):
            def step(self) -> None:
                if self.steps == 5:
                    wait_for_short()
                super().step()

        real_generate = scheduler.generate_rows

        def pausing_generate(model, tokenizer, rows, **kwargs) -> None:
            on_text = rows[0].on_text

            def pause_then_stream(text: str) -> None:
                wait_for_short()
                on_text(text)

            rows[0].on_text = pause_then_stream
            real_generate(model, tokenizer, rows, **kwargs)

        answered: list[int] = []  # the max_tokens of each request, in the order the worker answers them
        finish = live.service.scheduler._finish

        def recording_finish(job, rows) -> None:
            answered.append(job.max_tokens)
            finish(job, rows)

        monkeypatch.setattr(live.service.scheduler, "_finish", recording_finish)
        monkeypatch.setattr(scheduler, "ContinuousBatch", PausingBatch)
        monkeypatch.setattr(scheduler, "generate_rows", pausing_generate)
        with ThreadPoolExecutor(2) as pool:
            long = pool.submit(ask, 60)
            assert short_sent.wait(30)
            short = pool.submit(ask, 3)
            (long_text, _), (short_text, _) = long.result(30), short.result(30)

        assert long_text == long_alone and short_text == short_alone  # joining changes no answer
        # Continuous: answered while the long one still runs. Static: it waited for the whole long answer.
        assert answered == ([3, 60] if batching == "continuous" else [60, 3])
