"""`t2 serve` under load: throughput and latency at 1, 4 and 16 clients, against the same requests one at a time.

    T2_HOME=... python bench/serve.py [--model M] [--requests 64] [--max-tokens 64] [--clients 1,4,16]
        [--experts A,B | --weights W,...] [--max-batch 16] [--device cpu] [--threads N] [--tiny] [--json PATH]

The requests: ``--requests`` greedy chat requests (one user message each, ``max_tokens``
``--max-tokens``), spread in turn over the base weights and the experts (``--experts``, by
default every expert of the base model in the registry; with none, the base weights only)
and over a few short prompts. ``--weights`` names the weights instead (``base`` for the base
weights): ``--weights bank-addition`` sends every request to one expert, the traffic an
application with one hot expert (or ``t2-auto`` on prompts of one kind) sends, where batching
by weights has the most to share. The same list is answered:

* **one at a time, t2 ask**: in this process, one request after the other through t2's
  ``Asker`` (``t2cli/ask/engine.py``, what ``t2 ask --strategy expert:NAME`` / ``none`` runs),
  one model loaded once;
* **t2 serve, continuous**: a live ``t2 serve`` (a subprocess on a free loopback port,
  ``--batching continuous``: requests of the same weights join the running batch between
  decoding steps, up to ``--max-batch`` rows, and leave it when they end), by 1, 4 and 16
  concurrent clients (``--clients``) over HTTP, each sending its next request when the
  previous one is answered;
* **t2 serve, static batches**: the same with ``--batching static`` (the queued requests of the
  same weights generated together by one ``generate`` call; newcomers wait for it to end);
* **t2 serve, batching off**: ``--max-batch 1`` (one sequence per generation).

Before timing, each setup answers one request per weights (their composed weights cached, as
a server that has run a while holds them). Per row: requests/s and generated tokens/s over the
run's wall time; p50 and p95 of each request's latency (sent to answered); the throughput
against one at a time, the p95 against one at a time's p50 (a request served alone) and
against its p95 (the same percentile of the same requests served alone), the throughput against batching off at the same clients; the rows each decoding step computed
(the mean batch; static batches also count ended rows that ``generate`` pads along) and the
share of the worker's time spent switching weights (from the server's ``/metrics``); how many
answers equal one at a time's; the failed requests; the cores other processes used meanwhile
(on a shared machine, another job that takes a core slows two-thread OpenMP many times over:
trust rows where this is near 0, or use ``--threads 1``). Under the table: the first request
for an expert whose weights are not composed yet against the same request once they are cached
(1 token each, over HTTP).

``--tiny`` runs it all on a tiny random Llama with three random experts in a temporary T2_HOME
(about a minute; for checking the script, not for figures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from rich.console import Console
from rich.table import Table

from registry.queries import experts as expert_rows
from t2cli.ask.engine import Asker, AskSettings, prepare_model, targets_for
from t2cli.home import open_registry  # reads T2_HOME when called: --tiny sets it first
from t2cli.svf.adaptable import load_adaptable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # run as a script, Python puts bench/ on the path, not the checkout
from bench.reporting import cpu_busy_s, machine_line, write_json  # noqa: E402
from tests.expert_factory import make_expert  # noqa: E402 - the tests' tiny models and experts, for --tiny
from tests.tiny_models import build_tiny_model  # noqa: E402

JSON_FORMAT = "t2-bench-serve/1"
BASE = "base"
# Short, varied prompts (7: coprime with most weight counts, so every weights meets every prompt).
PROMPTS = (
    "What is 38 + 47?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
    "Give me a word that rhymes with cat.",
    "What is the capital of France?",
    "Explain a prime number briefly.",
)


@dataclass(frozen=True)
class Request:
    weights: str  # BASE or an expert's name
    prompt: str


@dataclass
class Answer:
    seconds: float
    tokens: int  # generated, the end token included (usage.completion_tokens; AskResult.tokens)
    text: str


@dataclass
class Run:
    """One row: the same requests answered by one setup at one concurrency."""

    setup: str
    clients: int
    wall_s: float
    answers: list[Answer | None]  # None: the request failed
    errors: list[str] = field(default_factory=list)
    batches: float | None = None  # from the server's /metrics, over the timed run
    batch_rows: float | None = None
    decode_steps: float | None = None
    decode_step_rows: float | None = None
    switch_s: float | None = None
    generate_s: float | None = None
    others_cores: float | None = None  # other processes' CPU during the run

    @property
    def done(self) -> list[Answer]:
        return [a for a in self.answers if a is not None]

    def requests_per_s(self) -> float:
        return len(self.done) / self.wall_s

    def tokens_per_s(self) -> float:
        return sum(a.tokens for a in self.done) / self.wall_s

    def latency(self, q: float) -> float:
        return percentile([a.seconds for a in self.done], q)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the two nearest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds of this process (``None``) or of process ``pid`` (Linux; 0 where unknown)."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class OthersMeter:
    """Cores that processes other than this one and ``pid`` used meanwhile: a busy machine shows here."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.busy, self.own, self.started = cpu_busy_s(), self._own(), time.perf_counter()

    def _own(self) -> float:
        return process_cpu_s(None) + (process_cpu_s(self.pid) if self.pid is not None else 0.0)

    def cores(self) -> float | None:
        busy = cpu_busy_s()
        if busy is None or self.busy is None:
            return None
        elapsed = time.perf_counter() - self.started
        return max(0.0, (busy - self.busy) - (self._own() - self.own)) / elapsed


def plan_requests(n: int, weights: Sequence[str]) -> list[Request]:
    return [Request(weights[i % len(weights)], PROMPTS[i % len(PROMPTS)]) for i in range(n)]


# --------------------------------------------------------------------------- one at a time: t2's Asker


def one_at_a_time(registry, adaptable, requests: Sequence[Request], max_tokens: int) -> Run:
    """Every request in turn through ``Asker`` on the already loaded model (after one untimed per weights)."""
    askers = {}
    for weights in dict.fromkeys(r.weights for r in requests):
        strategy = "none" if weights == BASE else f"expert:{weights}"
        settings = AskSettings(strategy=strategy, max_new_tokens=max_tokens, temperature=0.0)
        askers[weights] = Asker(registry, settings, adaptable=adaptable)
        askers[weights].ask(PROMPTS[0])  # warm-up: composes and caches the expert's weights
    answers: list[Answer | None] = []
    meter = OthersMeter()
    started = time.perf_counter()
    for request in requests:
        t0 = time.perf_counter()
        result = askers[request.weights].ask(request.prompt)
        answers.append(Answer(time.perf_counter() - t0, result.tokens, result.answer))
    wall = time.perf_counter() - started
    return Run("t2 ask, one at a time", 1, wall, answers, others_cores=meter.cores())


# --------------------------------------------------------------------------- a live t2 serve


class Server:
    """``t2 serve`` in a subprocess on a free loopback port; its address read from what it prints."""

    def __init__(
        self, model: str | None, device: str, max_batch: int, batching: str, queue_size: int, max_tokens: int
    ) -> None:
        command = [sys.executable, "-m", "t2cli", "serve", "--port", "0", "--device", device]
        command += ["--max-batch", str(max_batch), "--batching", batching]
        command += ["--queue-size", str(queue_size), "--max-tokens", str(max_tokens)]
        if model is not None:
            command += ["--model", model]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = self._wait_for_address(timeout=900)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def _wait_for_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            self.log.append(line)
            found = re.search(r"serving \S+ at (http://\S+)/v1", line)
            if found:
                return found.group(1)
        self.stop()
        raise SystemExit("t2 serve did not start:\n" + "".join(self.log[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}


def body(request: Request, base_name: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": base_name if request.weights == BASE else request.weights,
        "messages": [{"role": "user", "content": request.prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


async def send_all(
    url: str, bodies: Sequence[dict[str, Any]], clients: int
) -> tuple[float, list[Answer | None], list[str]]:
    """``clients`` concurrent clients, each sending the next request once its last one is answered."""
    answers: list[Answer | None] = [None] * len(bodies)
    errors: list[str] = []
    pending = iter(range(len(bodies)))  # shared by the clients (one event loop: no lock needed)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as http:

        async def client() -> None:
            for i in pending:
                t0 = time.perf_counter()
                response = await http.post("/v1/chat/completions", json=bodies[i])
                seconds = time.perf_counter() - t0
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                data = response.json()
                text = data["choices"][0]["message"]["content"] or ""
                answers[i] = Answer(seconds, int(data["usage"]["completion_tokens"]), text)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - started, answers, errors


def serve_runs(
    server: Server, setup: str, requests: Sequence[Request], base_name: str, max_tokens: int, levels: Sequence[int]
) -> list[Run]:
    bodies = [body(r, base_name, max_tokens) for r in requests]
    warm = {r.weights: body(r, base_name, max_tokens) for r in requests}  # one per weights, untimed
    asyncio.run(send_all(server.url, list(warm.values()), 1))
    runs = []
    for clients in levels:
        before = metrics(server.url)
        meter = OthersMeter(server.proc.pid)
        wall, answers, errors = asyncio.run(send_all(server.url, bodies, clients))
        others = meter.cores()
        after = metrics(server.url)
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        runs.append(
            Run(
                setup,
                clients,
                wall,
                answers,
                errors,
                batches=delta["t2_batches_total"],
                batch_rows=delta["t2_batch_rows_total"],
                decode_steps=delta.get("t2_decode_steps_total"),
                decode_step_rows=delta.get("t2_decode_step_rows_total"),
                switch_s=delta["t2_switch_seconds_total"],
                generate_s=delta["t2_generate_seconds_total"],
                others_cores=others,
            )
        )
    return runs


def cold_and_cached(
    server: Server, experts: Sequence[str], base_name: str, prompt: str
) -> dict[str, tuple[float, float]]:
    """Per expert: seconds of a 1-token request while its composed weights are not cached, then once they are."""
    times = {}
    with httpx.Client(base_url=server.url, timeout=600) as http:
        first = {"model": base_name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
        http.post("/v1/chat/completions", json=first).raise_for_status()  # the server's own first-request costs
        for name in experts:
            request = {"model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
            pair = []
            for _ in range(2):
                t0 = time.perf_counter()
                http.post("/v1/chat/completions", json={**request, "temperature": 0}).raise_for_status()
                pair.append(time.perf_counter() - t0)
            times[name] = (pair[0], pair[1])
    return times


# --------------------------------------------------------------------------- the table


# The table's columns (bench/README.md explains each).
COLUMNS = (
    "setup",
    "clients",
    "req/s",
    "tok/s",
    "p50 s",
    "p95 s",
    "req/s vs ask",
    "p95 vs alone",
    "p95 vs alone p95",
    "vs off",
    "rows/step",
    "switching",
    "same",
    "errors",
    "others",
)


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def render(runs: Sequence[Run], baseline: Run, total: int, title: str) -> Table:
    table = Table(title=title)
    table.add_column("setup", no_wrap=True)
    for column in COLUMNS[1:]:
        table.add_column(column, justify="right")
    off = {run.clients: run for run in runs if run.setup.endswith("batching off")}
    alone, alone_p95 = baseline.latency(50), baseline.latency(95)
    for run in runs:
        same = sum(
            1 for mine, theirs in zip(run.answers, baseline.answers) if mine and theirs and mine.text == theirs.text
        )
        versus_off = off.get(run.clients) if run.setup.startswith("t2 serve") and run not in off.values() else None
        per_step = run.decode_step_rows / run.decode_steps if run.decode_steps else None
        switching = (
            run.switch_s / (run.switch_s + run.generate_s) if run.switch_s is not None and run.generate_s else None
        )
        table.add_row(
            run.setup,
            str(run.clients),
            f"{run.requests_per_s():.2f}",
            f"{run.tokens_per_s():.1f}",
            f"{run.latency(50):.2f}",
            f"{run.latency(95):.2f}",
            _x(run.requests_per_s() / baseline.requests_per_s()),
            _x(run.latency(95) / alone),
            _x(run.latency(95) / alone_p95),
            _x(run.requests_per_s() / versus_off.requests_per_s() if versus_off else None),
            "" if per_step is None else f"{per_step:.1f}",
            "" if switching is None else f"{100 * switching:.2f}%",
            f"{same}/{total}",
            str(len(run.errors)),
            "" if run.others_cores is None else f"{run.others_cores:.2f}",
        )
    return table


# --------------------------------------------------------------------------- setup and main


def tiny_home(root: Path) -> str:
    """A tiny random Llama with experts alpha, beta, gamma (random z) registered in ``root``/home (T2_HOME)."""
    os.environ["T2_HOME"] = str(root / "home")
    model = build_tiny_model("llama", root / "tiny-llama", seed=0)
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(model), device="cpu")
        for seed, name in enumerate(("alpha", "beta", "gamma"), 1):
            make_expert(registry, adaptable, name, seed=seed, scale=0.5, task=None, category=None)
    return str(model)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="the base model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--requests", type=int, default=64, help="requests per row (default 64)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default 64)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated (default 1,4,16)")
    parser.add_argument("--experts", default=None, help="experts to spread over, A,B,... (default: all of the model)")
    parser.add_argument(
        "--weights", default=None, help="weights to spread over instead, W,... (an expert or base), e.g. bank-addition"
    )
    parser.add_argument("--max-batch", type=int, default=16, help="t2 serve --max-batch when batching (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads, here and in t2 serve")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model with 3 random experts (a check)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure and latency here")
    args = parser.parse_args(argv)
    for option in ("requests", "max_tokens", "max_batch", "threads"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    try:
        args.levels = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients takes numbers, e.g. 1,4,16 (got {args.clients!r})")
    if not args.levels or min(args.levels) < 1:
        parser.error("--clients takes numbers of at least 1")
    if args.weights is not None and args.experts is not None:
        parser.error("--weights names every weights to spread over: give --experts or --weights, not both")
    if args.tiny and args.model:
        parser.error("--tiny builds its own model: give --model or --tiny, not both")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # t2 serve's torch
    console = Console(width=180)
    with tempfile.TemporaryDirectory(prefix="t2-bench-serve-") as scratch:
        model = tiny_home(Path(scratch)) if args.tiny else args.model
        return measure(args, model, console)


def measure(args: argparse.Namespace, model: str | None, console: Console) -> int:
    machine = machine_line(args.device)
    with open_registry() as registry:
        prepared = prepare_model(registry, model, None)
        known = [r.name for r in expert_rows.of_base_model(registry, prepared.base_model_id)]
        experts = [n.strip() for n in args.experts.split(",") if n.strip()] if args.experts else known
        missing = sorted(set(experts) - set(known))
        if missing:
            raise SystemExit(f"no expert {', '.join(missing)} for {prepared.model_name} in {registry.home}")
        weights = [BASE, *experts]
        if args.weights:
            weights = [n.strip() for n in args.weights.split(",") if n.strip()]
            unknown = sorted(set(weights) - {BASE, *known})
            if unknown:
                raise SystemExit(f"no expert {', '.join(unknown)} for {prepared.model_name} in {registry.home}")
            experts = [w for w in weights if w != BASE]
        requests = plan_requests(args.requests, weights)
        console.print(f"{machine}; model {prepared.model_name}; weights: {', '.join(weights)}", highlight=False)
        console.print(f"{args.requests} requests of max_tokens {args.max_tokens}, greedy", highlight=False)
        adaptable = load_adaptable(
            registry, model, targets=targets_for(registry, prepared.base_model_id), device=args.device
        )
        base_name = adaptable.identity.ref.name
        console.print("one at a time (t2 ask)...", highlight=False)
        baseline = one_at_a_time(registry, adaptable, requests, args.max_tokens)
    del adaptable  # the servers load their own copy

    runs: list[Run] = []
    cold: dict[str, tuple[float, float]] = {}
    queue_size = max(64, args.requests)
    setups = (
        ("t2 serve, continuous", args.max_batch, "continuous"),
        ("t2 serve, static batches", args.max_batch, "static"),
        ("t2 serve, batching off", 1, "static"),
    )
    for setup, max_batch, batching in setups:
        console.print(f"{setup} (--max-batch {max_batch} --batching {batching})...", highlight=False)
        server = Server(model, args.device, max_batch, batching, queue_size, max(args.max_tokens, 1))
        try:
            if not cold and experts:
                cold = cold_and_cached(server, experts, base_name, PROMPTS[0])
            runs += serve_runs(server, setup, requests, base_name, args.max_tokens, args.levels)
        finally:
            server.stop()

    title = (
        f"t2 serve against t2 ask one at a time: {prepared.model_name}, {args.requests} requests of "
        f"max_tokens {args.max_tokens} over {len(weights)} weights, --max-batch {args.max_batch} when batching"
    )
    console.print(render([baseline, *runs], baseline, args.requests, title))
    if cold:
        first = statistics.median(c for c, _ in cold.values())
        again = statistics.median(c for _, c in cold.values())
        console.print(
            f"first request for an expert (its weights composed): {1000 * first:.1f} ms; the same once cached: "
            f"{1000 * again:.1f} ms (1 token, over HTTP, median of {len(cold)} experts)",
            highlight=False,
        )
    failed = sum(len(run.errors) for run in runs)
    if failed:
        console.print(f"{failed} requests failed; the first: {next(e for r in runs for e in r.errors)}")
    if args.json is not None:
        write_json(
            args.json,
            {
                "format": JSON_FORMAT,
                "machine": machine,
                "model": prepared.model_name,
                "settings": {k: v for k, v in vars(args).items() if k != "json"},
                "weights": weights,
                "requests": [asdict(r) for r in requests],
                "runs": [
                    {
                        "setup": run.setup,
                        "clients": run.clients,
                        "wall_s": run.wall_s,
                        "requests_per_s": run.requests_per_s(),
                        "tokens_per_s": run.tokens_per_s(),
                        "p50_s": run.latency(50),
                        "p95_s": run.latency(95),
                        "batches": run.batches,
                        "batch_rows": run.batch_rows,
                        "decode_steps": run.decode_steps,
                        "decode_step_rows": run.decode_step_rows,
                        "switch_s": run.switch_s,
                        "generate_s": run.generate_s,
                        "errors": run.errors,
                        "others_cores": run.others_cores,
                        "answers": [None if a is None else asdict(a) for a in run.answers],
                    }
                    for run in [baseline, *runs]
                ],
                "cold_vs_cached_s": cold,
            },
        )
        console.print(f"wrote {args.json}", highlight=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
