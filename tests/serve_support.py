"""A live ``t2 serve`` on a tiny random model for the server tests: uvicorn on a free loopback port in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from registry import Registry
from t2cli.serve import scheduler
from t2cli.serve.app import create_app
from t2cli.serve.decode import Row
from t2cli.serve.service import ServeSettings, Service
from t2cli.svf.adaptable import Adaptable, load_adaptable
from tests.ask_support import add_expert

EXPERTS = ("alpha", "beta", "gamma")  # registered on the tiny model, z = 1 + 0.5 noise (seeds 1, 2, 3)


@dataclass
class Live:
    url: str  # http://127.0.0.1:PORT
    service: Service
    registry: Registry
    adaptable: Adaptable
    server: uvicorn.Server


@contextmanager
def serving(service: Service) -> Iterator[tuple[str, uvicorn.Server]]:
    """Run the app of ``service`` until the block ends (graceful shutdown, queue drained)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(service), log_level="warning", lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@contextmanager
def live_server(home: Path, model: Path, **settings) -> Iterator[Live]:
    """The tiny model with experts alpha, beta, gamma registered in ``home``, served with ``settings``."""
    with Registry.open(home) as registry:
        adaptable = load_adaptable(registry, str(model), device="cpu")
        for seed, name in enumerate(EXPERTS, 1):
            add_expert(registry, adaptable, name, category=None, seed=seed)
        service = Service(registry, adaptable, ServeSettings(**settings))
        with serving(service) as (url, server):
            yield Live(url, service, registry, adaptable, server)


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.005)


class HeldWorker:
    """Holds the model's worker at the start of its next generation until ``release``.

    Requests sent meanwhile wait in the queue, so a test can change the registry or drop a
    connection at a known moment. It wraps the real ``generate_rows`` and the continuous
    batch's ``admit`` where the scheduler calls them: once released, every batch (the held one included) is generated as usual.
    Leaving its ``with`` block releases it (put it last in a ``with`` that also holds a pool).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()
        self.rows: list[Row] = []  # the held batch's rows
        real = scheduler.generate_rows
        hold = self._hold

        def held(model, tokenizer, rows, **kwargs) -> None:
            hold(rows)
            real(model, tokenizer, rows, **kwargs)

        class HeldBatch(scheduler.ContinuousBatch):  # continuous batching: held where rows are first prefilled
            def admit(self, rows: Sequence[Row]) -> None:
                hold(rows)
                super().admit(rows)

        monkeypatch.setattr(scheduler, "generate_rows", held)
        monkeypatch.setattr(scheduler, "ContinuousBatch", HeldBatch)

    def _hold(self, rows: Sequence[Row]) -> None:
        if not self._open.is_set():
            self.rows = list(rows)
            self.entered.set()
            if not self._open.wait(60):
                raise RuntimeError("the test never released the worker")

    def release(self) -> None:
        self._open.set()

    def __enter__(self) -> HeldWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()  # also when the test failed: nothing stays blocked behind the held batch
