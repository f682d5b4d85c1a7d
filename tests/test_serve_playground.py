"""The playground page at ``/`` in a real headless Chromium (Selenium), against a live ``t2 serve``.

The browser types a prompt, sends it, and the test watches the answer stream in, the weights
that answered (a mixture, then one expert) and the experts listed. Needs the OS's Chromium and
its driver (Debian/Ubuntu: ``apt-get install chromium chromium-driver``) and the ``selenium``
package (the ``test`` extra); skipped with that reason where either is missing.

``T2_PLAYGROUND_SCREENSHOT=docs/img/playground.png pytest tests/test_serve_playground.py``
also saves a screenshot of the page after the mixture's answer (docs/serving.md shows it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.serve_support import EXPERTS, Live, live_server

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
from selenium.webdriver.common.by import By  # noqa: E402 - after the skip above
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402 - after the skip above

PROMPT = "Hello!"  # the tiny random model answers it at some length with both weights below
MAX_TOKENS = 40  # the tiny model's window is 128 tokens: the page's default of 256 would not fit
MIX = {"alpha": 0.7, "beta": 0.3}
# Headless, as root in a container (no sandbox, small /dev/shm), at the size of the docs' screenshot.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--window-size=1100,760",
)
NO_BROWSER = "no headless browser: install the OS's Chromium and its driver (apt-get install chromium chromium-driver)"

# Every text the answer box held, one per change the page made (each change replaces the box's text
# node, and the replaced node keeps its text): the answer is built from the stream's pieces, not at once.
RECORD_ANSWER = """
window.t2Seen = [];
new MutationObserver((records) => {
  for (const record of records) for (const node of record.addedNodes) window.t2Seen.push(node.textContent);
}).observe(document.getElementById("answer"), {childList: true});
"""


def _browser_paths() -> tuple[str, str]:
    browser = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(NO_BROWSER)
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # The driver from the OS, given by path: Selenium Manager never downloads one.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def live(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_server(tmp_path_factory.mktemp("playground-home"), tiny_model_dirs["llama"]) as running:
        yield running


def _expected(live: Live, model: str, extra: dict | None = None) -> str:
    """The same request through the openai client: the answer the page must show."""
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=30)
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body=extra,
    )
    return reply.choices[0].message.content or ""


def _send(browser: webdriver.Chrome, model: str, mixture: dict[str, float]) -> str:
    """Choose the weights, type the prompt, send, wait for the end; returns the status line."""
    Select(browser.find_element(By.ID, "model")).select_by_value(model)
    for field in browser.find_elements(By.CSS_SELECTOR, "#experts input"):
        field.clear()
        name = field.get_attribute("data-expert")
        if name in mixture:
            field.send_keys(str(mixture[name]))
    tokens = browser.find_element(By.ID, "max_tokens")
    tokens.clear()
    tokens.send_keys(str(MAX_TOKENS))
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    browser.execute_script(RECORD_ANSWER)
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "status").text.endswith("tokens"))
    return browser.find_element(By.ID, "status").text


def test_the_playground_streams_an_answer_and_shows_the_weights(browser: webdriver.Chrome, live: Live) -> None:
    browser.get(f"{live.url}/")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#experts label")) == 3)

    # The experts of the bank: in the model menu (after t2-auto and the base model) and as mixture fields.
    options = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "model")).options]
    assert options[:2] == ["t2-auto", live.service.base_name] and sorted(options[2:]) == sorted(EXPERTS)
    labels = [label.text for label in browser.find_elements(By.CSS_SELECTOR, "#experts label")]
    assert sorted(labels) == sorted(EXPERTS)

    # A mixture: the answer streams in piece by piece and the weights that answered are shown.
    status = _send(browser, "t2-auto", MIX)
    answer = browser.find_element(By.ID, "answer").text
    expected = _expected(live, "t2-auto", {"t2": {"experts": MIX}})
    assert len(expected) >= 10  # long enough to arrive in many pieces
    assert answer == expected
    seen = [text for text in browser.execute_script("return window.t2Seen;") if text]
    assert len(set(seen)) >= 5 and all(expected.startswith(text) for text in seen)  # growing prefixes
    assert seen == sorted(seen, key=len) and seen[-1] == expected
    info = browser.find_element(By.ID, "info").text
    assert "answered by: mix[alpha=0.7,beta=0.3]" in info and "weights: alpha=0.7, beta=0.3" in info
    assert status.endswith(" tokens") and "error" not in status
    screenshot = os.environ.get("T2_PLAYGROUND_SCREENSHOT")
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(screenshot)

    # One expert by name, the mixture fields emptied: that expert answers.
    _send(browser, "gamma", {})
    assert browser.find_element(By.ID, "answer").text == _expected(live, "gamma")
    info = browser.find_element(By.ID, "info").text
    assert info.startswith("answered by: gamma") and "weights: gamma=1" in info


def test_the_playground_shows_an_error_in_one_line(browser: webdriver.Chrome, live: Live) -> None:
    browser.get(f"{live.url}/")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#experts label")) == 3)
    Select(browser.find_element(By.ID, "model")).select_by_value("alpha")
    tokens = browser.find_element(By.ID, "max_tokens")
    tokens.clear()
    tokens.send_keys("500")  # beyond the tiny model's 128-token window
    browser.find_element(By.ID, "prompt").send_keys(PROMPT)
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#status .error"))
    error = browser.find_element(By.CSS_SELECTOR, "#status .error").text
    assert error.startswith("error: ") and "context window" in error and "Traceback" not in error
    assert browser.find_element(By.ID, "answer").text == ""
