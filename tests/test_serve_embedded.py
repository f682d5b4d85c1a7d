"""`t2 serve` end to end on the embedded model, as a new user starts it: a fresh home, the starter bank, t2-auto.

The server is the real command in its own process (`python -m t2cli serve --port 0`); the
client is the official `openai` package. On first start the server installs the model's
starter bank, so `t2-auto` routes a sum to the math expert and an email to the base weights
with no training first (docs/serving.md).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

pytestmark = pytest.mark.slow

SERVING = re.compile(r"serving (\S+) at (http://127\.0\.0\.1:\d+)/v1")


def _start(home: Path) -> tuple[subprocess.Popen[str], str, str, list[str]]:
    """The server process, its base URL and model name, and the stderr lines read so far (kept growing)."""
    env = {**os.environ, "T2_HOME": str(home), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    process = subprocess.Popen(
        [sys.executable, "-m", "t2cli", "serve", "--port", "0", "--max-batch", "4"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: list[str] = []
    found: list[tuple[str, str]] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            match = SERVING.search(line)
            if match:
                found.append((match.group(1), match.group(2)))
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(600) or not found:  # the first start decomposes the model
        process.kill()
        raise AssertionError("t2 serve did not start:\n" + "".join(lines))
    name, url = found[0]
    return process, url, name, lines


def test_a_fresh_server_installs_the_bank_and_t2_auto_adapts_per_prompt(t2_home: Path) -> None:
    process, url, base_name, lines = _start(t2_home)
    try:
        assert any("installed the starter bank" in line and "bank-addition" in line for line in lines), lines
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        models = {m.id for m in client.models.list().data}
        assert {"t2-auto", base_name, "bank-addition", "bank-types", "bank-possession"} <= models

        def ask(prompt: str) -> tuple[str, str, str]:
            raw = client.chat.completions.with_raw_response.create(
                model="t2-auto", messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0
            )
            answer = raw.parse().choices[0].message.content or ""
            return raw.headers["x-t2-choice"], raw.headers["x-t2-weights"], answer

        choice, _, answer = ask("What is 38 + 47?")
        assert choice == "bank-addition" and "85" in answer, (choice, answer)
        choice, weights, _ = ask("Write a polite email declining a meeting.")
        assert choice == "base", (choice, weights)
        named = client.completions.create(model="bank-addition", prompt="What is 12 + 30? ", max_tokens=4)
        assert named.model == "bank-addition" and named.usage is not None and named.usage.completion_tokens >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = process.wait(60)
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM (the exit a process manager expects)
    assert code in (0, -signal.SIGTERM) and time.monotonic() - started < 60, "".join(lines)
