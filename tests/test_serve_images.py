"""Images in ``t2 serve``: OpenAI ``image_url`` parts through the official openai client.

Real parts: uvicorn on a loopback port, the openai client, a tiny random LLaVA (and Idefics3)
with its processor built from local parts (tests/vlm_models.py), experts alpha, beta and gamma
registered on it. Remote URLs are served by a plain HTTP server on loopback.
"""

from __future__ import annotations

import base64
import io
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image, ImageDraw

from t2cli.ask import strategies
from t2cli.runtime.generation import generate
from t2cli.runtime.multimodal import encode_chat
from t2cli.serve import scheduler
from t2cli.serve.errors import APIError
from t2cli.serve.images import ImageLimits, data_url_bytes, is_public, open_image
from tests.serve_support import HeldWorker, Live, live_server, wait_until
from tests.vlm_models import IMAGE_TOKEN, drawn_image

LIMITS = ImageLimits(max_bytes=24_000, max_pixels=200 * 200, max_images=2)


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def other_picture() -> Image.Image:
    """A wider picture than ``drawn_image``: a yellow disc on green (another aspect ratio, another answer)."""
    image = Image.new("RGB", (48, 40), "green")
    ImageDraw.Draw(image).ellipse([8, 6, 30, 28], fill="yellow")
    return image


A, B = data_url(drawn_image()), data_url(other_picture(), "JPEG")


def shown(text: str, *urls: str, role: str = "user") -> list[dict]:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": url, "detail": "low"}} for url in urls]
    return [{"role": role, "content": [*parts, {"type": "text", "text": text}]}]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(client: openai.OpenAI, model: str, messages: list[dict], **kw):
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(model=model, messages=messages, temperature=0, **kw)


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("serve-vlm-home")
    with live_server(home, tiny_vlm_dirs["llava"], max_tokens=64, images=LIMITS) as running:
        yield running


@pytest.fixture()
def client(vlm: Live) -> openai.OpenAI:
    return _client(vlm.url)


# --------------------------------------------------------------------------- answers with images


def test_chat_with_an_image_answers_from_the_picture_streamed_or_not(client: openai.OpenAI, vlm: Live) -> None:
    base = vlm.service.base_name
    reply = _ask(client, base, shown("What is this?", A))
    text = reply.choices[0].message.content
    assert reply.model_extra["t2"]["choice"] == "base" and "pass1_images" not in reply.model_extra["t2"]
    # The answer is the model's own greedy answer to the prompt its processor encodes with the picture...
    processor = vlm.adaptable.processor()
    prompt = encode_chat(
        processor,
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        [drawn_image()],
    )
    expected = generate(vlm.adaptable.model, vlm.adaptable.tokenizer, [prompt], max_new_tokens=8).texts[0]
    assert text == expected
    assert reply.usage.prompt_tokens == len(prompt.ids)  # the image's 16 placeholder tokens included
    # ... which the picture changes: another picture, or none, is another answer.
    assert _ask(client, base, shown("What is this?", B)).choices[0].message.content != text
    assert _ask(client, base, shown("What is this?")).usage.prompt_tokens < reply.usage.prompt_tokens
    # Streamed: the same answer in chunks.
    chunks = list(_ask(client, base, shown("What is this?", A), stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens


def test_an_expert_answers_with_the_image_and_t2_auto_says_pass_1_read_the_text_only(
    client: openai.OpenAI, vlm: Live
) -> None:
    base = _ask(client, vlm.service.base_name, shown("What is this?", A)).choices[0].message.content
    experts = {name: _ask(client, name, shown("What is this?", A)) for name in ("alpha", "beta", "gamma")}
    assert all(reply.model_extra["t2"]["choice"] == name for name, reply in experts.items())
    assert any(reply.choices[0].message.content != base for reply in experts.values())
    routed = _ask(client, "t2-auto", shown("What is this?", A), extra_body={"t2": {"strategy": "expert:gamma"}})
    t2 = routed.model_extra["t2"]
    assert t2["choice"] == "gamma" and t2["pass1_images"] is False and "text only" in t2["reason"]
    assert routed.choices[0].message.content == experts["gamma"].choices[0].message.content
    assert "pass1_images" not in _ask(client, "t2-auto", shown("Hi")).model_extra["t2"]  # no images: not said


def test_t2_auto_shows_the_pictures_to_a_pass_1_that_reads_them(
    client: openai.OpenAI, vlm: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, list[tuple[int, int]]]] = []

    def by_picture(ctx: strategies.DispatchContext, arg: str | None) -> strategies.Dispatcher:
        def dispatch(prompt: str, images=()) -> strategies.Dispatch:
            seen.append((prompt, [image.size for image in images]))
            name = "gamma" if images else "alpha"
            return strategies.Dispatch(choice=name, weights={name: 1.0}, reason=f"{len(images)} pictures")

        return dispatch

    info = strategies.StrategyInfo("by-picture", by_picture, False, "picks gamma when shown a picture")
    monkeypatch.setitem(strategies._STRATEGIES, "by-picture", info)
    chosen = {"extra_body": {"t2": {"strategy": "by-picture"}}}
    routed = _ask(client, "t2-auto", shown("What is this?", A), **chosen)
    t2 = routed.model_extra["t2"]
    assert t2["choice"] == "gamma" and t2["pass1_images"] is True and t2["reason"] == "1 pictures"
    assert seen == [("What is this?", [drawn_image().size])]  # pass 1 got the decoded picture with the text
    assert _ask(client, "t2-auto", shown("What is this?"), **chosen).model_extra["t2"]["choice"] == "alpha"


def test_two_images_in_one_message_and_formats(client: openai.OpenAI, vlm: Live) -> None:
    base = vlm.service.base_name
    both = _ask(client, base, shown("Compare", A, B))
    assert both.usage.prompt_tokens == _ask(client, base, shown("Compare", A)).usage.prompt_tokens + 16
    for fmt in ("WEBP", "GIF"):  # the same picture in another container: an answer, not an error
        assert _ask(client, base, shown("What is this?", data_url(drawn_image(), fmt))).choices


# --------------------------------------------------------------------------- alone == batched


class BatchSpy:
    """Records, for every generation, which of its rows carried images."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[list[bool]] = []
        self.suppressed: set[tuple[int, ...]] = set()
        real = scheduler.generate_rows

        def spy(model, tokenizer, rows, **kwargs) -> None:
            self.batches.append([row.images is not None for row in rows])
            self.suppressed.add(tuple(kwargs["suppress"]))
            real(model, tokenizer, rows, **kwargs)

        monkeypatch.setattr(scheduler, "generate_rows", spy)


REQUESTS = (("What is this?", (A,)), ("Describe it", (B,)), ("Compare", (A, B)), ("Hi there", ()), ("abc", ()))


@pytest.mark.parametrize("family", ["llava", "idefics3", "gemma3"])  # Gemma 3: sliding windows, token types
def test_an_answer_is_the_same_alone_or_batched_with_images_and_without(
    family: str, tiny_vlm_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with live_server(tmp_path / "home", tiny_vlm_dirs[family], images=LIMITS) as live:
        client = _client(live.url)
        cases = [(model, text, urls) for model in (live.service.base_name, "alpha") for text, urls in REQUESTS]

        def answer(case: tuple[str, str, tuple[str, ...]]) -> str:
            model, text, urls = case
            return _ask(client, model, shown(text, *urls)).choices[0].message.content or ""

        solo = {case: answer(case) for case in cases}  # one at a time: every batch holds one request
        assert len(set(solo.values())) > 3
        spy = BatchSpy(monkeypatch)
        with ThreadPoolExecutor(2 * len(cases) + 1) as pool, HeldWorker(monkeypatch) as held:
            first = pool.submit(answer, cases[0])  # holds the worker: what follows queues behind it
            assert held.entered.wait(20)
            futures = {pool.submit(answer, case): case for case in cases * 2}
            wait_until(lambda: live.service.scheduler.queue_length == len(futures), what="every request queued")
            held.release()
            results = [(case, future.result()) for future, case in futures.items()]
            assert first.result() == solo[cases[0]]
    assert [case for case, text in results if text != solo[case]] == []
    batched = spy.batches[1:]  # after the held one
    assert len(batched) < len(futures)
    # Measured: LLaVA answers the 20 in two batches of 10 (one per model), text and image rows together;
    # Idefics3 puts the two-picture requests (another pixel_values shape) in batches of their own.
    assert any(sum(rows) > 1 for rows in batched)  # image rows shared a batch...
    assert any(any(rows) and not all(rows) for rows in batched)  # ... and text rows joined them
    assert spy.suppressed == {(IMAGE_TOKEN,)}  # the image placeholder is never generated, on every row alike


# --------------------------------------------------------------------------- refusals, each an OpenAI error


def tall_png(width: int, height: int) -> str:
    return data_url(Image.new("L", (width, height), 255))  # a few hundred bytes


def noisy_png(side: int) -> str:
    return data_url(Image.frombytes("RGB", (side, side), random.Random(0).randbytes(3 * side * side)))  # incompressible


_PNG = A.partition(",")[2]
TRUNCATED = "data:image/png;base64," + _PNG[: len(_PNG) // 2 // 4 * 4]  # valid base64, a PNG cut in half
NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"GIF89a? no").decode()

BAD = 400, openai.BadRequestError
LARGE = 413, openai.APIStatusError


@pytest.mark.parametrize(
    ("messages", "expected", "code", "says"),
    [
        (shown("x", "https://example.com/cat.png"), BAD, "remote_images_disabled", "--allow-remote-images"),
        (shown("x", "http://127.0.0.1:1/cat.png"), BAD, "remote_images_disabled", "--allow-remote-images"),
        (shown("x", "file:///etc/passwd"), BAD, "invalid_image", "scheme 'file' are not accepted"),
        (shown("x", "data:image/png;base64,iVBO!Rw0K"), BAD, "invalid_image", "not valid base64"),
        (shown("x", NOT_AN_IMAGE), BAD, "invalid_image", "not a PNG, JPEG, WebP or GIF"),
        (shown("x", TRUNCATED), BAD, "invalid_image", "cannot be decoded"),
        (shown("x", "data:text/plain;base64,aGk="), BAD, "invalid_image", "not an image type"),
        (shown("x", "data:image/png,rawbytes"), BAD, "invalid_image", "must be base64"),
        (shown("x", noisy_png(100)), LARGE, "request_too_large", "over 24000 bytes"),  # 10,000 px, 30 kB
        (shown("x", tall_png(20, 2100)), LARGE, "request_too_large", "20x2100 pixels"),  # 42,000 px > 40,000
        (shown("x", A, A, A), BAD, "invalid_value", "at most 2 per request"),
        (shown("x", A, role="assistant"), BAD, "invalid_value", "user messages only"),
        (shown("what is <image> here?", A), BAD, "invalid_value", "image placeholder"),
        (shown("what is <image> here?"), BAD, "invalid_value", "image placeholder"),
    ],
)
def test_bad_images_are_openai_errors(client: openai.OpenAI, messages, expected, code, says) -> None:
    status, error = expected
    with pytest.raises(error) as caught:
        _ask(client, "alpha", messages)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == code and says in body["message"], body
    assert "Traceback" not in body["message"] and body["param"]


def test_a_completion_holding_the_image_placeholder_is_refused_too(client: openai.OpenAI, vlm: Live) -> None:
    with pytest.raises(openai.BadRequestError) as caught:  # it could share a batch with image rows
        client.completions.create(model="alpha", prompt="a <image> b", max_tokens=4)
    assert caught.value.body["param"] == "prompt" and "image placeholder" in caught.value.body["message"]
    assert client.completions.create(model="alpha", prompt="a b", max_tokens=4).choices


def test_the_worker_still_answers_after_refusals(client: openai.OpenAI, vlm: Live) -> None:
    assert _ask(client, "alpha", shown("What is this?", A)).choices[0].finish_reason in ("stop", "length")
    assert vlm.service.scheduler.queue_length == 0


def test_the_body_limit_makes_room_for_images_on_a_vision_language_model(vlm: Live) -> None:
    assert vlm.service.body_limit > (1 << 20) + 2 * 24_000
    with httpx.Client(base_url=vlm.url, timeout=30) as http:
        huge = http.post(
            "/v1/chat/completions", json={"model": "alpha", "messages": shown("x" * vlm.service.body_limit)}
        )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"


def test_an_image_for_a_text_model_is_a_clear_400(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    with live_server(tmp_path / "home", tiny_model_dirs["llama"]) as live:
        with pytest.raises(openai.BadRequestError) as caught:
            _ask(_client(live.url), "alpha", shown("What is this?", A))
        assert live.service.body_limit == 1 << 20  # no room made for images
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "images_unsupported"
    assert "text-only model" in body["message"] and body["param"] == "messages.0.content.0.image_url.url"


# --------------------------------------------------------------------------- remote URLs, when allowed


@contextmanager
def picture_host(files: dict[str, bytes]) -> Iterator[str]:
    """A plain HTTP server on loopback serving ``files`` (and /redirect -> /a.png)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/a.png")
                self.end_headers()
                return
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()  # no Content-Length: the size is found while streaming
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_remote_images_when_allowed_and_private_hosts_only_when_allowed_too(
    tiny_vlm_dirs: dict[str, Path], tmp_path: Path
) -> None:
    png = base64.b64decode(A.partition(",")[2])
    files = {"/a.png": png, "/big.png": png + b"\0" * 30_000, "/text": b"hello"}
    remote = ImageLimits(max_bytes=24_000, max_images=2, allow_remote=True)
    with picture_host(files) as host, live_server(tmp_path / "h1", tiny_vlm_dirs["llava"], images=remote) as live:
        with pytest.raises(openai.BadRequestError) as private:
            _ask(_client(live.url), "alpha", shown("What is this?", f"{host}/a.png"))
        expected = _ask(_client(live.url), "alpha", shown("What is this?", A)).choices[0].message.content
    assert "non-public address" in private.value.message and "--allow-private-image-hosts" in private.value.message
    opened = ImageLimits(max_bytes=24_000, max_images=2, allow_remote=True, allow_private=True)
    with picture_host(files) as host, live_server(tmp_path / "h2", tiny_vlm_dirs["llava"], images=opened) as live:
        client = _client(live.url)
        assert _ask(client, "alpha", shown("What is this?", f"{host}/a.png")).choices[0].message.content == expected
        assert _ask(client, "alpha", shown("What is this?", f"{host}/redirect")).choices[0].message.content == expected
        with pytest.raises(openai.APIStatusError) as big:
            _ask(client, "alpha", shown("x", f"{host}/big.png"))
        with pytest.raises(openai.BadRequestError) as missing:
            _ask(client, "alpha", shown("x", f"{host}/nothing.png"))
        with pytest.raises(openai.BadRequestError) as text:
            _ask(client, "alpha", shown("x", f"{host}/text"))
    assert big.value.status_code == 413 and "24000" in big.value.message
    assert "HTTP 404" in missing.value.message and "PNG, JPEG" in text.value.message


# --------------------------------------------------------------------------- the checks themselves


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("172.16.5.4", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
    ],
)
def test_only_global_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_data_urls_and_pixels_are_checked_before_decoding() -> None:
    small = ImageLimits(max_bytes=100, max_pixels=50 * 50)
    with pytest.raises(APIError) as big:
        data_url_bytes("data:image/png;base64," + "A" * 1000, small, "p")
    assert big.value.status == 413 and big.value.param == "p"
    assert data_url_bytes("data:image/png;BASE64,aGk=", small, "p") == b"hi"
    bomb = io.BytesIO()
    Image.new("1", (4000, 4000)).save(bomb, format="PNG")  # 2 kB on the wire, 16 million pixels
    with pytest.raises(APIError) as pixels:
        open_image(bomb.getvalue(), small, "p")
    assert pixels.value.status == 413 and "4000x4000" in pixels.value.message
    assert open_image(base64.b64decode(A.partition(",")[2]), small, "p").mode == "RGB"
