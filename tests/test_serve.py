"""``t2 serve`` through the official openai client: endpoints, the model field, mixing, errors, security.

One live server (uvicorn on a free loopback port, a tiny random Llama with experts alpha, beta and
gamma) serves the whole module; the tests only send requests to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from t2cli.serve.errors import APIError
from t2cli.serve.metrics import Metrics
from t2cli.serve.scheduler import Job, Scheduler
from t2cli.serve.weights import BASE_WEIGHTS
from tests.ask_support import add_expert
from tests.serve_support import EXPERTS, Live, live_server

HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def live(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("serve-home")
    with live_server(home, tiny_model_dirs["llama"], max_n=4, max_tokens=64, max_body_bytes=4096) as running:
        yield running


@pytest.fixture()
def client(live: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=30)


def _chat(client: openai.OpenAI, model: str, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=kw.pop("messages", HI), **kw)


def test_models_lists_auto_base_and_every_expert(client: openai.OpenAI, live: Live) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == ["t2-auto", live.service.base_name]
    assert set(EXPERTS) <= set(ids)
    assert client.models.retrieve("beta").id == "beta"


def test_chat_with_a_named_expert_says_which_weights_answered(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI, max_tokens=8, temperature=0)
    assert raw.headers["x-t2-weights"] == "alpha" and raw.headers["x-t2-choice"] == "alpha"
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.model == "alpha"
    t2 = reply.model_extra["t2"]
    assert t2["choice"] == "alpha" and t2["weights"] == {"alpha": 1.0} and t2["strategy"] is None
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reply.choices[0].finish_reason in ("stop", "length")
    # This random expert ends its answer to this prompt with the end token, well before the budget.
    ended = _chat(client, "alpha", messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=16)
    assert ended.choices[0].finish_reason == "stop" and ended.usage.completion_tokens < 16


def test_experts_answer_differently_from_the_base(client: openai.OpenAI, live: Live) -> None:
    base = _chat(client, live.service.base_name, max_tokens=16).choices[0].message.content
    answers = {name: _chat(client, name, max_tokens=16).choices[0].message.content for name in EXPERTS}
    assert any(answer != base for answer in answers.values())
    assert _chat(client, live.service.base_name, max_tokens=16).choices[0].message.content == base


def test_streamed_chat_is_the_same_answer_in_openai_chunks(client: openai.OpenAI) -> None:
    whole = _chat(client, "beta", max_tokens=12)
    chunks = list(_chat(client, "beta", max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.model_extra["t2"]["choice"] == "beta" for c in chunks)


def test_completions_streamed_and_not(client: openai.OpenAI, live: Live) -> None:
    base = live.service.base_name
    whole = client.completions.create(model=base, prompt="The sky is", max_tokens=10, temperature=0)
    assert whole.object == "text_completion" and whole.model_extra["t2"]["choice"] == "base"
    streamed = client.completions.create(model=base, prompt="The sky is", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert whole.usage.completion_tokens <= 10


def test_per_request_mixture_is_reported_and_one_expert_at_one_is_that_expert(client: openai.OpenAI) -> None:
    mixed = _chat(client, "t2-auto", extra_body={"t2": {"experts": {"alpha": 0.7, "beta": 0.3}}}, max_tokens=12)
    t2 = mixed.model_extra["t2"]
    assert t2["weights"] == {"alpha": 0.7, "beta": 0.3} and t2["choice"] == "mix[alpha=0.7,beta=0.3]"
    again = _chat(client, "t2-auto", extra_body={"t2": {"experts": {"beta": 0.3, "alpha": 0.7}}}, max_tokens=12)
    assert again.choices[0].message.content == mixed.choices[0].message.content
    one = _chat(client, "t2-auto", extra_body={"t2": {"experts": {"gamma": 1.0}}}, max_tokens=12)
    named = _chat(client, "gamma", max_tokens=12)
    assert one.model_extra["t2"]["choice"] == "gamma"
    assert one.choices[0].message.content == named.choices[0].message.content


def test_t2_auto_runs_the_servers_strategy_and_a_request_may_name_another(client: openai.OpenAI) -> None:
    auto = _chat(client, "t2-auto").model_extra["t2"]
    assert auto["strategy"] == "none" and auto["choice"] == "base"  # no router registered: base weights
    raw = client.chat.completions.with_raw_response.create(
        model="t2-auto", messages=HI, max_tokens=8, temperature=0, extra_body={"t2": {"strategy": "expert:gamma"}}
    )
    t2 = raw.parse().model_extra["t2"]
    assert t2["strategy"] == "expert:gamma" and t2["choice"] == "gamma" and t2["pass1_seconds"] >= 0
    assert raw.headers["x-t2-weights"] == "gamma" and float(raw.headers["x-t2-pass1-seconds"]) >= 0


def test_seeded_sampling_repeats_and_n_gives_n_choices(client: openai.OpenAI) -> None:
    first = _chat(client, "alpha", temperature=1.0, seed=7, n=3, max_tokens=10)
    second = _chat(client, "alpha", temperature=1.0, seed=7, n=3, max_tokens=10, top_p=1.0)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in second.choices]
    assert len(set(texts)) > 1  # each choice samples its own stream


def test_stop_sequence_cuts_the_answer_streamed_or_not(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Tell me"}]
    full = _chat(client, "gamma", messages=ask, max_tokens=16).choices[0].message.content
    assert len(full) >= 6  # the tiny random model's greedy answer to this prompt is long enough to cut
    stop = full[3:5]  # two characters: the stream holds back a first one that may start the stop sequence
    cut = _chat(client, "gamma", messages=ask, max_tokens=16, stop=["zzz", stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = _chat(client, "gamma", messages=ask, max_tokens=16, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[: full.index(stop)]


LONG = [{"role": "user", "content": "x" * 200}]  # the tiny model's window is 128 tokens (one per character)


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "no-such-expert"}, openai.NotFoundError, "model"),
        ({"model": "alpha", "temperature": 3}, openai.BadRequestError, "temperature"),
        ({"model": "alpha", "n": 9}, openai.BadRequestError, "n"),
        ({"model": "alpha", "max_tokens": 65}, openai.BadRequestError, "max_tokens"),
        ({"model": "alpha", "messages": LONG}, openai.BadRequestError, "messages"),
        ({"model": "alpha", "stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "stop"),
        (
            {"model": "t2-auto", "extra_body": {"t2": {"experts": {"alpha": 1, "nope": 1}}}},
            openai.NotFoundError,
            "t2.experts",
        ),
        ({"model": "t2-auto", "extra_body": {"t2": {"experts": {"alpha": -1}}}}, openai.BadRequestError, "t2.experts"),
        ({"model": "t2-auto", "extra_body": {"t2": {"strategy": "magic"}}}, openai.BadRequestError, "t2.strategy"),
        (
            {"model": "t2-auto", "extra_body": {"t2": {"strategy": "none", "experts": {"a": 1}}}},
            openai.BadRequestError,
            "t2",
        ),
        ({"model": "t2-auto", "extra_body": {"t2": {"strategy": "router"}}}, openai.BadRequestError, "t2.strategy"),
    ],
)
def test_bad_requests_are_openai_errors(client: openai.OpenAI, kwargs, error, param) -> None:
    kwargs = {"messages": HI, "max_tokens": 4, **kwargs}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**kwargs)
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["param"] == param
    assert "Traceback" not in body["message"]


def test_raw_http_errors_are_openai_json(live: Live) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as http:
        bad_json = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        huge = http.post("/v1/completions", json={"model": "alpha", "prompt": "x" * 5000})
        nowhere = http.get("/v2/nothing")
        wrong_kind = http.post("/v1/completions", json={"model": "alpha", "prompt": ["a", "b"]})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    assert nowhere.status_code == 404 and set(nowhere.json()["error"]) == {"message", "type", "param", "code"}
    assert wrong_kind.status_code == 400 and wrong_kind.json()["error"]["param"] == "prompt"


def test_metrics_and_playground(live: Live, client: openai.OpenAI) -> None:
    _chat(client, "alpha")
    _chat(client, "alpha")
    with httpx.Client(base_url=live.url, timeout=30) as http:
        text = http.get("/metrics").text
        page = http.get("/")
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values['t2_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 2
    assert values["t2_cache_entries"] >= 1 and values["t2_cache_bytes"] > 0 and values["t2_cache_hits_total"] >= 1
    assert values["t2_completion_tokens_total"] > 0 and values["t2_queue_length"] == 0
    # Both clocks run (their ratio is bench/serve.py's figure: on a tiny model composing an expert can
    # take longer than generating its few tokens, so no order between them is asserted here).
    assert values["t2_switch_seconds_total"] > 0 and values["t2_generate_seconds_total"] > 0
    assert page.status_code == 200 and "/v1/chat/completions" in page.text and "t2-auto" in page.text


def test_a_key_is_required_when_set(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    with live_server(tmp_path / "home", tiny_model_dirs["llama"], api_key="s3cret") as secured:
        anonymous = openai.OpenAI(base_url=f"{secured.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        with httpx.Client(base_url=secured.url) as http:
            assert http.get("/metrics").status_code == 401
            assert http.get("/").status_code == 200  # the page itself asks for the key
        keyed = openai.OpenAI(base_url=f"{secured.url}/v1", api_key="s3cret", max_retries=0)
        assert _chat(keyed, "alpha").choices[0].message.content is not None


def test_a_full_queue_is_429_and_a_closing_one_503(live: Live) -> None:
    scheduler = Scheduler(live.adaptable, live.service.resolver, Metrics(live.service._gauges), max_queue=1)
    job = lambda: Job(prompt_ids=[1, 2], dispatch_prompt="hi", target=BASE_WEIGHTS, emit=lambda event: None)
    scheduler.submit(job())
    with pytest.raises(APIError) as full:
        scheduler.submit(job())
    assert full.value.status == 429 and full.value.body()["error"]["type"] == "rate_limit_error"
    scheduler._queue.clear()  # never started: nothing to drain
    scheduler.close()
    with pytest.raises(APIError) as closing:
        scheduler.submit(job())
    assert closing.value.status == 503


def test_the_composed_weight_cache_is_bounded_by_bytes(tiny_llama: Path, reg) -> None:
    from t2cli.svf.adaptable import load_adaptable

    adaptable = load_adaptable(reg, str(tiny_llama), device="cpu")
    svf = adaptable.svf
    zs = {name: add_expert(reg, adaptable, name, category=None, seed=seed) for seed, name in enumerate(EXPERTS, 1)}
    svf.apply(zs["alpha"], key="alpha")
    one = svf.cache_nbytes()
    assert one > 0 and svf.cache_entries() == 1
    svf.set_cache_limits(entries=100, nbytes=2 * one)
    for name in EXPERTS:
        svf.apply(zs[name], key=name)
    svf.apply({}, key="gamma")
    assert svf.cache_entries() == 2 and svf.cache_nbytes() == 2 * one
    assert not svf.is_cached("alpha") and svf.is_cached("beta")  # the least recently used went
    assert (svf.cache_hits, svf.cache_misses) == (2, 3)  # alpha and gamma again; alpha, beta, gamma composed
    svf.set_cache_limits(nbytes=0)
    assert svf.cache_entries() == 0
    svf.restore()
