"""Counters of the server, rendered in Prometheus' text format at ``GET /metrics``."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Gauges:
    """Values read when ``/metrics`` is scraped."""

    queue_length: int
    in_flight: int
    cache_entries: int
    cache_bytes: int
    cache_hits: int
    cache_misses: int


class Metrics:
    """Thread-safe counters; ``render`` adds the gauges read at scrape time."""

    def __init__(self, gauges: Callable[[], Gauges]) -> None:
        self._gauges = gauges
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.batches = 0
        self.batch_rows = 0
        self.decode_steps = 0  # forward passes that generated a token for every running row
        self.decode_step_rows = 0  # rows those passes computed (with generate(), ended rows padded along)
        self.pass1_seconds = 0.0
        self.pass1_runs = 0
        self.switch_seconds = 0.0  # applying a batch's weights and restoring the base weights after it
        self.generate_seconds = 0.0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def batch(self, rows: int) -> None:
        with self._lock:
            self.batches += 1
            self.batch_rows += rows

    def steps(self, steps: int, rows: int) -> None:
        with self._lock:
            self.decode_steps += steps
            self.decode_step_rows += rows

    def batch_seconds(self, switch: float, generate: float) -> None:
        with self._lock:
            self.switch_seconds += switch
            self.generate_seconds += generate

    def pass1(self, seconds: float) -> None:
        with self._lock:
            self.pass1_runs += 1
            self.pass1_seconds += seconds

    def render(self) -> str:
        g = self._gauges()
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        with self._lock:
            requests = sorted(self.requests.items())
            metric(
                "t2_requests_total",
                "counter",
                "HTTP requests answered, by endpoint and status.",
                [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in requests],
            )
            metric(
                "t2_prompt_tokens_total", "counter", "Prompt tokens of answered requests.", [("", self.prompt_tokens)]
            )
            metric(
                "t2_completion_tokens_total", "counter", "Tokens generated for answers.", [("", self.completion_tokens)]
            )
            metric("t2_batches_total", "counter", "Batched generations run.", [("", self.batches)])
            metric("t2_batch_rows_total", "counter", "Sequences generated in those batches.", [("", self.batch_rows)])
            metric("t2_decode_steps_total", "counter", "Decoding forward passes.", [("", self.decode_steps)])
            metric(
                "t2_decode_step_rows_total",
                "counter",
                "Rows those passes computed (divided by the passes: the mean batch).",
                [("", self.decode_step_rows)],
            )
            metric(
                "t2_switch_seconds_total",
                "counter",
                "Seconds spent applying batches' weights and restoring the base weights.",
                [("", self.switch_seconds)],
            )
            metric(
                "t2_generate_seconds_total",
                "counter",
                "Seconds spent generating batches.",
                [("", self.generate_seconds)],
            )
            metric("t2_pass1_total", "counter", "Pass-1 strategy runs.", [("", self.pass1_runs)])
            metric("t2_pass1_seconds_total", "counter", "Seconds spent in pass 1.", [("", self.pass1_seconds)])
        metric("t2_queue_length", "gauge", "Requests waiting for the model.", [("", g.queue_length)])
        metric("t2_in_flight", "gauge", "Requests being generated.", [("", g.in_flight)])
        metric("t2_cache_entries", "gauge", "Composed weight sets in the cache.", [("", g.cache_entries)])
        metric("t2_cache_bytes", "gauge", "Bytes of composed weights in the cache.", [("", g.cache_bytes)])
        metric("t2_cache_hits_total", "counter", "Composed weights found in the cache.", [("", g.cache_hits)])
        metric("t2_cache_misses_total", "counter", "Composed weights computed.", [("", g.cache_misses)])
        return "\n".join(lines) + "\n"
