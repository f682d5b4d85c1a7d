"""The ``t2 serve`` command: options refused before anything loads, and a real process that answers
and stops on SIGTERM after finishing the answer in flight."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from t2cli.cli.app import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without --api-key"),
        (["--host", "192.168.1.20", "--port", "9000"], "refusing to listen on 192.168.1.20 without --api-key"),
        (["--cache-memory", "lots"], "--cache-memory 'lots' is not a size"),
        (["--strategy", "magic"], "unknown strategy 'magic'"),
        (["--allow-private-image-hosts"], "--allow-private-image-hosts widens --allow-remote-images"),
        (["--max-image-size", "huge"], "--max-image-size 'huge' is not a size"),
    ],
)
def test_serve_refuses_bad_options_before_loading(args: list[str], message: str, t2_home: Path) -> None:
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2
    assert result.output.splitlines()[0].startswith(f"error: {message}")
    assert result.output.splitlines()[1].startswith("hint: ")
    assert not (t2_home / "registry.db").exists()  # refused before the registry was opened


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def test_t2_serve_answers_then_drains_on_sigterm(tiny_llama: Path, t2_home: Path) -> None:
    command = [sys.executable, "-m", "t2cli", "serve", "-m", str(tiny_llama), "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=os.environ)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                found = re.search(r"serving \S+ at (http://\S+/v1)", lines.get(timeout=1))
            except queue.Empty:
                continue
            url = found.group(1) if found else None
        assert url is not None, "t2 serve did not print its address"
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["t2-auto", tiny_llama.name]
        whole = client.completions.create(model=tiny_llama.name, prompt="Tell me", max_tokens=80, temperature=0)
        stream = client.completions.create(
            model=tiny_llama.name, prompt="Tell me", max_tokens=80, temperature=0, stream=True
        )
        chunks = iter(stream)
        pieces = [next(chunks).choices[0].text]
        proc.send_signal(signal.SIGTERM)  # stop accepting, finish this answer, exit
        pieces += [chunk.choices[0].text for chunk in chunks]
        assert "".join(pieces) == whole.choices[0].text
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
