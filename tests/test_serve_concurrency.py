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
import torch
from typer.testing import CliRunner

from registry import Registry
from t2cli.cli.app import app
from t2cli.experts.catalog import remove_expert
from tests.ask_support import add_expert
from tests.serve_support import EXPERTS, HeldWorker, live_server, wait_until

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


def test_an_expert_imported_or_removed_by_the_cli_while_serving(
    tiny_model_dirs: dict[str, Path], t2_home: Path, tmp_path: Path
) -> None:
    runner = CliRunner()  # `t2 export`, `t2 import`, `t2 experts rm` as another terminal would run them
    with live_server(t2_home, tiny_model_dirs["llama"]) as live:
        client = _client(live.url)
        folder = tmp_path / "alpha-folder"
        assert runner.invoke(app, ["export", "alpha", str(folder)]).exit_code == 0
        imported = runner.invoke(app, ["import", str(folder), "--name", "alpha-copy"])
        assert imported.exit_code == 0, imported.output
        assert "alpha-copy" in [m.id for m in client.models.list()]
        assert client.models.retrieve("alpha-copy").model_extra["t2"]["kind"] == "imported"
        assert _answer(client, "alpha-copy", "Hi there") == _answer(client, "alpha", "Hi there")

        assert runner.invoke(app, ["experts", "rm", "alpha-copy", "--yes"]).exit_code == 0
        assert "alpha-copy" not in [m.id for m in client.models.list()]
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("alpha-copy")
        with pytest.raises(openai.NotFoundError):
            _answer(client, "alpha-copy", "Hi there")


def test_an_expert_removed_while_its_requests_wait_is_a_clean_404(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    with live_server(home, tiny_model_dirs["llama"]) as live, Registry.open(home) as other:
        client, base = _client(live.url), live.service.base_name
        add_expert(other, live.adaptable, "delta", category=None, seed=11)
        expected = {model: _answer(client, model, "Hi there") for model in (base, "alpha", "delta")}
        expected_blocker = _answer(client, base, "Tell me")
        base_weights = {name: p.detach().clone() for name, p in live.adaptable.model.named_parameters()}
        mix = {"extra_body": {"t2": {"experts": {"delta": 0.5, "alpha": 0.5}}}}

        with ThreadPoolExecutor(6) as pool, HeldWorker(monkeypatch) as held:
            blocker = pool.submit(_answer, client, base, "Tell me")
            assert held.entered.wait(30)  # the worker generates the blocker's answer; what follows waits
            waiting = [pool.submit(_answer, client, "delta", "Hi there") for _ in range(2)]
            waiting.append(pool.submit(_answer, client, "t2-auto", "Hi there", **mix))
            unrelated = pool.submit(_answer, client, "alpha", "Hi there")
            wait_until(lambda: live.service.scheduler.queue_length == 4, what="4 requests queued")
            remove_expert(other, "delta")  # as `t2 experts rm delta` in another terminal
            with pytest.raises(openai.NotFoundError):  # a new request is refused before it is queued
                _answer(client, "delta", "Hi there")
            held.release()
            assert blocker.result(30) == expected_blocker
            for future in waiting:
                with pytest.raises(openai.NotFoundError) as gone:
                    future.result(30)
                assert "was removed or replaced while this request waited" in gone.value.message
                assert "Traceback" not in gone.value.message
            assert unrelated.result(30) == expected["alpha"]
        # Nothing of delta stayed applied: the base weights are back, exactly, and answer as before.
        for name, param in live.adaptable.model.named_parameters():
            assert torch.equal(param, base_weights[name]), name
        assert _answer(client, base, "Hi there") == expected[base]
        assert live.service.scheduler.in_flight == 0


def test_a_client_gone_mid_answer_frees_its_rows_and_the_server_goes_on(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with live_server(tmp_path / "home", tiny_model_dirs["llama"]) as live:
        client = _client(live.url)
        question = [{"role": "user", "content": "Why is the sky blue?"}]
        ask = {"model": "gamma", "messages": question, "max_tokens": 60, "temperature": 0}
        expected = client.chat.completions.create(**ask)
        assert expected.usage.completion_tokens >= 40  # a long answer: a cancelled one is visibly shorter
        before = _metrics(live.url)

        with HeldWorker(monkeypatch) as held:
            with (
                httpx.Client(base_url=live.url, timeout=30) as http,
                http.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as response,
            ):
                first = next(response.iter_lines())  # the role chunk, sent once the weights are applied
                assert first.startswith("data: ") and '"role": "assistant"' in first
                assert held.entered.wait(30)
            # The connection is closed mid-answer: the server notices and cancels the row.
            wait_until(lambda: all(row.cancelled() for row in held.rows), what="the abandoned row cancelled")
        wait_until(lambda: live.service.scheduler.in_flight == 0, what="the batch finished")
        after = _metrics(live.url)
        assert after["t2_completion_tokens_total"] == before["t2_completion_tokens_total"]  # nothing generated

        # A client that stops waiting for a non-streamed answer: the same.
        with HeldWorker(monkeypatch) as held:
            impatient = _client(live.url).with_options(timeout=1.0)
            with pytest.raises(openai.APITimeoutError):
                impatient.chat.completions.create(**ask)
            assert held.entered.wait(30)
            wait_until(lambda: all(row.cancelled() for row in held.rows), what="the abandoned row cancelled")
        wait_until(lambda: live.service.scheduler.in_flight == 0, what="the batch finished")
        assert _metrics(live.url)["t2_completion_tokens_total"] == after["t2_completion_tokens_total"]

        # Later requests, streamed and not, are answered as before.
        again = client.chat.completions.create(**ask)
        assert again.choices[0].message.content == expected.choices[0].message.content
        streamed = client.chat.completions.create(**ask, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected.choices[0].message.content
        errors = [k for k in _metrics(live.url) if k.startswith("t2_requests_total") and 'status="5' in k]
        assert errors == []


def test_limits_and_failures_raise_the_openai_clients_exceptions(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with live_server(tmp_path / "home", tiny_model_dirs["llama"], max_queue=1, max_body_bytes=4096) as live:
        client, base = _client(live.url), live.service.base_name
        expected, expected_alpha = _answer(client, base, "Hi there"), _answer(client, "alpha", "Hi there")

        with pytest.raises(openai.APIStatusError) as too_large:  # the client has no class of its own for 413
            client.completions.create(model=base, prompt="x" * 5000, max_tokens=4)
        assert too_large.value.status_code == 413 and too_large.value.body["code"] == "request_too_large"

        with ThreadPoolExecutor(2) as pool, HeldWorker(monkeypatch) as held:
            generating = pool.submit(_answer, client, base, "Hi there")
            assert held.entered.wait(30)
            queued = pool.submit(_answer, client, "alpha", "Hi there")
            wait_until(lambda: live.service.scheduler.queue_length == 1, what="one request queued")
            with pytest.raises(openai.RateLimitError) as full:  # --queue-size 1: the next one is refused
                _answer(client, "beta", "Hi there")
            assert full.value.status_code == 429 and full.value.body["code"] == "queue_full"
            held.release()
            assert generating.result(30) == expected and queued.result(30) == expected_alpha

        # A failure inside generation (a bug, out of memory) is a one-line 500; the next request is served.
        real = live.adaptable.model.forward  # what generate() and the continuous batch both call

        def broken(*args, **kwargs):
            monkeypatch.setattr(live.adaptable.model, "forward", real)
            raise RuntimeError("simulated failure with secret details")

        monkeypatch.setattr(live.adaptable.model, "forward", broken)
        with pytest.raises(openai.InternalServerError) as failed:
            _answer(client, base, "Hi there")
        assert failed.value.status_code == 500 and failed.value.body["code"] == "internal_error"
        assert "secret" not in failed.value.message and "Traceback" not in failed.value.message
        assert _answer(client, base, "Hi there") == expected

        # Once the server stops accepting work (SIGTERM), a request is a 503 while the answer in flight finishes.
        with ThreadPoolExecutor(2) as pool, HeldWorker(monkeypatch) as held:
            last = pool.submit(_answer, client, base, "Hi there")
            assert held.entered.wait(30)
            closing = pool.submit(live.service.scheduler.close)  # what the app's shutdown does first
            wait_until(lambda: live.service.scheduler._closing, what="the scheduler closing")
            with pytest.raises(openai.InternalServerError) as stopping:
                _answer(client, "alpha", "Hi there")
            assert stopping.value.status_code == 503 and stopping.value.body["code"] == "shutting_down"
            held.release()
            assert last.result(30) == expected
            closing.result(30)
