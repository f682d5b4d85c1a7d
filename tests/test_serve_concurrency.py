"""``t2 serve`` under load and while the registry changes: batching never mixes weights, experts come and go.

Real parts throughout: uvicorn on a loopback port, the official openai client, the tiny random
Llama with experts registered in the test's registry.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from registry import Registry
from t2cli.experts.catalog import remove_expert
from tests.ask_support import add_expert
from tests.serve_support import EXPERTS, live_server

PROMPTS = ("Hi there", "What is 2+2?", "abc", "Tell me")


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def _answer(client: openai.OpenAI, model: str, prompt: str, **kw) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0, **kw
    )
    if "extra_body" not in kw and model != "t2-auto":
        assert reply.model_extra["t2"]["choice"] in (model, "base")
    return reply.choices[0].message.content or ""


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}


def test_concurrent_clients_get_the_answers_each_request_gets_alone(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    with live_server(tmp_path / "home", tiny_model_dirs["llama"], max_batch=8) as live:
        client = _client(live.url)
        models = [live.service.base_name, *EXPERTS, "t2-auto"]
        mix = {"t2": {"experts": {"alpha": 0.6, "gamma": 0.4}}}
        cases = [(m, p) for m in models for p in PROMPTS]
        solo = {}
        for model, prompt in cases:  # one at a time: every batch holds one request
            solo[model, prompt] = _answer(client, model, prompt, **({"extra_body": mix} if model == "t2-auto" else {}))
        assert len({solo[m, PROMPTS[0]] for m in models}) > 1  # the weights matter for this prompt

        def one_client(worker: int) -> list[tuple[str, str, str]]:
            own = _client(live.url)
            answers = []
            for i in range(25):
                model, prompt = cases[(worker * 7 + i * 3) % len(cases)]
                extra = {"extra_body": mix} if model == "t2-auto" else {}
                answers.append((model, prompt, _answer(own, model, prompt, **extra)))
            return answers

        before = _metrics(live.url)
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = [answer for answers in pool.map(one_client, range(8)) for answer in answers]
        elapsed = time.monotonic() - started
        after = _metrics(live.url)
    assert len(results) == 200
    mismatches = [(m, p) for m, p, text in results if text != solo[m, p]]
    assert mismatches == []
    assert elapsed < 45
    batches = after["t2_batches_total"] - before["t2_batches_total"]
    rows = after["t2_batch_rows_total"] - before["t2_batch_rows_total"]
    assert rows == 200 and batches < 200  # requests that needed the same weights were answered together
    errors = sum(v for k, v in after.items() if k.startswith("t2_requests_total") and 'status="200"' not in k)
    assert errors == 0


def test_experts_registered_or_removed_while_serving(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "home"
    with live_server(home, tiny_model_dirs["llama"]) as live, Registry.open(home) as other:  # another process's view
        client = _client(live.url)
        assert "delta" not in [m.id for m in client.models.list()]
        add_expert(other, live.adaptable, "delta", category=None, seed=11)
        add_expert(other, live.adaptable, "delta-twin", category=None, seed=11)
        assert "delta" in [m.id for m in client.models.list()]
        first = _answer(client, "delta", "Hi there")
        assert first == _answer(client, "delta-twin", "Hi there")

        remove_expert(other, "delta")
        assert "delta" not in [m.id for m in client.models.list()]
        with pytest.raises(openai.NotFoundError):
            _answer(client, "delta", "Hi there")
        with pytest.raises(openai.NotFoundError):
            _answer(client, "t2-auto", "Hi there", extra_body={"t2": {"experts": {"delta": 0.5, "alpha": 0.5}}})

        # The same name again, other z: the answer follows the new expert, not the cached composed weights.
        add_expert(other, live.adaptable, "delta", category=None, seed=12)
        add_expert(other, live.adaptable, "delta-new-twin", category=None, seed=12)
        assert _answer(client, "delta", "Hi there") == _answer(client, "delta-new-twin", "Hi there")


def test_shutdown_finishes_the_answer_in_flight(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    with live_server(tmp_path / "home", tiny_model_dirs["llama"]) as live:
        client = _client(live.url)
        expected = client.completions.create(model="beta", prompt="abc", max_tokens=60, temperature=0, seed=3)
        stream = client.completions.create(model="beta", prompt="abc", max_tokens=60, temperature=0, stream=True)
        pieces = [next(iter(stream)).choices[0].text]
        live.server.should_exit = True  # what uvicorn's SIGTERM handler does
        pieces += [chunk.choices[0].text for chunk in stream]
    assert "".join(pieces) == expected.choices[0].text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{live.url}/health")
    assert live.service.scheduler.queue_length == 0
