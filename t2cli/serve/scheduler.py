"""The model-owner worker: one thread owns the model, pulls requests from a bounded queue and
answers those that need the same weights in one batched generation.

Nothing else touches the model. The worker runs pass 1 for the requests that leave the
choice to a strategy (with the base weights applied), then takes the oldest request and
every queued request with the same weights and decoding (and image tensors that stack:
``Job.image_layout``) into one batch, applies the
weights (the composed-weight LRU cache makes a hot expert free), generates, and restores
the base weights. Different weights therefore never share a forward pass.

With continuous batching (the default where ``continuous.supports`` the model) the batch
stays open while it runs: between two decoding steps, requests of the same group queued
meanwhile join it (up to ``max_batch`` rows), and a request is answered the step its rows
end. Requests join only in arrival order: once a request for other weights (or one waiting
for pass 1) is at the head of the queue nobody overtakes it, the batch drains and the worker
switches. Events go back to each request's handler through its ``emit`` (thread-safe);
``close`` stops accepting and finishes what is queued.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from t2cli.errors import T2Error
from t2cli.runtime.generation import sample_key
from t2cli.serve import continuous
from t2cli.serve.continuous import ContinuousBatch
from t2cli.serve.decode import Row, generate_rows
from t2cli.serve.errors import APIError, internal, queue_full, unavailable
from t2cli.serve.metrics import Metrics
from t2cli.serve.options import BATCHING
from t2cli.serve.weights import Pass1, Weights, WeightsResolver

if TYPE_CHECKING:
    from PIL.Image import Image

    from t2cli.runtime.multimodal import ImagePrompt
    from t2cli.svf.adaptable import Adaptable

log = logging.getLogger("t2.serve")


# --------------------------------------------------------------------------- events a handler receives


@dataclass(frozen=True)
class Started:
    """The weights are applied and generation begins."""

    weights: Weights


@dataclass(frozen=True)
class Text:
    index: int  # which of the request's n choices
    text: str


@dataclass(frozen=True)
class Finished:
    index: int
    reason: str  # "stop" | "length" | "cancelled"
    text: str
    tokens: int


@dataclass(frozen=True)
class Failed:
    error: APIError


@dataclass(frozen=True)
class Completed:
    prompt_tokens: int
    completion_tokens: int


Event = Started | Text | Finished | Failed | Completed


@dataclass
class Job:
    """One request waiting for the model."""

    prompt_ids: list[int]
    dispatch_prompt: str  # what pass 1 reads (the last user message, or the prompt)
    target: Weights | Pass1
    emit: Callable[[Event], None]
    n: int = 1
    max_tokens: int = 16
    stops: list[str] = field(default_factory=list)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    image_prompt: ImagePrompt | None = None  # the prompt encoded with its images (ids = prompt_ids); None: text
    images: tuple[Image, ...] = ()  # the request's pictures while a pass 1 (that may read them) is to run
    cancelled: threading.Event = field(default_factory=threading.Event)
    released: bool = False  # no longer counted in flight (answered or failed)

    def group(self) -> tuple[str, float, float]:
        """Requests with the same group share a batch: the same weights and the same decoding."""
        if not isinstance(self.target, Weights):
            raise RuntimeError("a request is grouped only once its weights are known")
        return (self.target.key, 0.0, 1.0) if self.temperature == 0 else (self.target.key, self.temperature, self.top_p)

    def image_layout(self) -> tuple[tuple[str, tuple[int, ...]], ...] | None:
        """The shapes of the image tensors past the batch dimension (None: a text request).

        Image rows share a batch only where these agree, so their tensors concatenate (Idefics3
        pads its images per prompt: prompts with different numbers of images or tiles do not stack).
        A text row joins any batch: it adds ids, no image tensors.
        """
        if self.image_prompt is None or not self.image_prompt.tensors:
            return None
        return tuple(sorted((key, tuple(value.shape[1:])) for key, value in self.image_prompt.tensors.items()))


class Scheduler:
    """The bounded queue and the one worker thread that owns the model."""

    def __init__(
        self,
        adaptable: Adaptable,
        resolver: WeightsResolver,
        metrics: Metrics,
        *,
        max_queue: int = 64,
        max_batch: int = 16,
        gather_s: float = 0.002,
        batching: str = "continuous",
        suppress: tuple[int, ...] = (),
    ) -> None:
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)} (got {batching!r})")
        self.adaptable, self.resolver, self.metrics = adaptable, resolver, metrics
        self.suppress = suppress  # token ids never generated (image placeholders)
        self.max_queue, self.max_batch, self.gather_s = max_queue, max_batch, gather_s
        # Models whose cache the continuous batch cannot splice are answered one generate() per batch.
        self.continuous = batching == "continuous" and continuous.supports(adaptable.model)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._in_flight = 0
        self._thread = threading.Thread(target=self._run, name="t2-model-owner", daemon=True)

    # ------------------------------------------------------------------ the handlers' side

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a request; 429 when the queue is full, 503 once the server is shutting down."""
        with self._cond:
            if self._closing:
                raise unavailable("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise queue_full(
                    f"{len(self._queue)} requests are waiting (--queue-size {self.max_queue}); retry later"
                )
            self._queue.append(job)
            self._cond.notify()

    def close(self, timeout: float | None = None) -> None:
        """Accept nothing more, answer what is queued, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
            time.sleep(self.gather_s)  # let requests sent together arrive together
            try:
                self._choose_weights()
                jobs = self._take_batch()
            except Exception:  # a bug: fail what waits rather than let the worker die and requests hang
                log.exception("the scheduler failed")
                self._fail_queued(internal("the scheduler failed: this is a bug in t2"))
                continue
            if jobs:
                try:
                    self._answer(jobs)
                finally:
                    self._release(jobs)

    def _release(self, jobs: list[Job]) -> None:
        """Count answered (or failed) requests out of the in-flight gauge, each once."""
        with self._cond:
            for job in jobs:
                if not job.released:
                    job.released = True
                    self._in_flight -= 1

    def _fail_queued(self, error: APIError) -> None:
        with self._cond:
            jobs = list(self._queue)
            self._queue.clear()
        for job in jobs:
            job.emit(Failed(error))

    def _choose_weights(self) -> None:
        """Pass 1 for every queued request that leaves the choice to a strategy (base weights applied)."""
        with self._cond:
            pending = [job for job in self._queue if isinstance(job.target, Pass1)]
        for job in pending:
            if not isinstance(job.target, Pass1):
                continue
            failure: APIError | None = None
            if job.cancelled.is_set():
                failure = internal("the client went away")
            else:
                self.adaptable.svf.restore()
                try:
                    job.target = self.resolver.choose(job.target.strategy, job.dispatch_prompt, job.images)
                    job.images = ()  # pass 1 is done with them: the encoded prompt is what generation needs
                    self.metrics.pass1(job.target.pass1_seconds)
                except APIError as exc:
                    failure = exc
                except Exception as exc:  # a bug: one line to the client, the traceback to the log
                    log.exception("pass 1 failed")
                    failure = internal(f"pass 1 failed: {type(exc).__name__}")
                finally:
                    self.adaptable.svf.restore()
            if failure is not None:
                with self._cond:
                    self._queue.remove(job)
                job.emit(Failed(failure))

    def _take_batch(self) -> list[Job]:
        """The oldest ready request and every queued one of its group, up to ``max_batch`` sequences."""
        with self._cond:
            ready = [job for job in self._queue if isinstance(job.target, Weights)]
            if not ready:
                return []
            group = ready[0].group()
            jobs: list[Job] = []
            rows = 0
            layout = None  # the image rows' layout, once one is in
            for job in ready:
                mine = job.image_layout()
                if job.group() != group or (mine is not None and layout is not None and mine != layout):
                    continue
                if not jobs or rows + job.n <= self.max_batch:
                    jobs.append(job)
                    rows += job.n
                    layout = layout or mine
            for job in jobs:
                self._queue.remove(job)
            self._in_flight += len(jobs)
            return jobs

    def _answer(self, jobs: list[Job]) -> None:
        weights = jobs[0].target
        if not isinstance(weights, Weights):
            raise RuntimeError("a batch is answered only once its weights are known")
        svf = self.adaptable.svf
        started = time.perf_counter()
        try:
            self.resolver.check_current(weights)  # an expert removed while its requests waited: a clean 404
            self._apply(weights)
        except Exception as exc:  # gone, non-finite weights, out of memory: the base weights stay, the batch fails
            if isinstance(exc, APIError):
                error = exc
            elif isinstance(exc, T2Error):
                error = internal(f"applying {weights.choice} failed: {exc.message}")
            else:
                log.exception("applying %s failed", weights.choice)
                error = internal(f"applying {weights.choice} failed: {type(exc).__name__}")
            svf.restore()
            for job in jobs:
                job.emit(Failed(error))
            return
        applied = time.perf_counter()
        if self.continuous:
            try:
                self._generate_continuously(jobs, weights)
            finally:
                generated = time.perf_counter()
                svf.restore()
            self.metrics.batch_seconds(applied - started + time.perf_counter() - generated, generated - applied)
            return
        rows_of: list[list[Row]] = []
        for job in jobs:
            job.emit(Started(weights))
            rows_of.append([self._row(job, index) for index in range(job.n)])
        rows = [row for job_rows in rows_of for row in job_rows]
        try:
            generate_rows(
                self.adaptable.model,
                self.adaptable.tokenizer,
                rows,
                temperature=jobs[0].temperature,
                top_p=jobs[0].top_p,
                suppress=self.suppress,
            )
        except Exception as exc:  # a bug or out of memory: every request of the batch fails cleanly
            log.exception("generation failed")
            for job in jobs:
                job.emit(Failed(internal(f"generation failed: {type(exc).__name__}")))
            return
        finally:
            generated = time.perf_counter()
            svf.restore()
        self.metrics.batch(len(rows))
        steps = max(len(row.ids) for row in rows)  # generate() computes every row until the longest ends
        self.metrics.steps(steps, steps * len(rows))
        self.metrics.batch_seconds(applied - started + time.perf_counter() - generated, generated - applied)
        for job, job_rows in zip(jobs, rows_of):
            self._finish(job, job_rows)

    def _finish(self, job: Job, rows: list[Row]) -> None:
        for index, row in enumerate(rows):
            job.emit(Finished(index, row.finish_reason or "length", row.text, len(row.ids)))
        completion = sum(len(row.ids) for row in rows)
        self.metrics.tokens(len(job.prompt_ids), completion)
        self._release([job])  # before the answer goes out: a client that sees it never sees it still in flight
        job.emit(Completed(len(job.prompt_ids), completion))

    def _generate_continuously(self, jobs: list[Job], weights: Weights) -> None:
        """One continuous batch: ``jobs`` start it, queued requests of their group join between steps."""
        batch = ContinuousBatch(
            self.adaptable.model, self.adaptable.tokenizer, temperature=jobs[0].temperature, top_p=jobs[0].top_p
        )
        group = jobs[0].group()
        running: list[tuple[Job, list[Row]]] = []
        total_rows = 0
        try:
            joining = jobs
            while joining:  # ends once the batch has drained and nobody of the group waits
                rows: list[Row] = []
                for job in joining:
                    job.emit(Started(weights))
                    job_rows = [self._row(job, index) for index in range(job.n)]
                    running.append((job, job_rows))
                    rows.extend(job_rows)
                batch.admit(rows)
                total_rows += len(rows)
                while True:
                    running = self._finish_ended(running)
                    joining = self._take_joining(group, weights, self.max_batch - len(batch))
                    if joining or not len(batch):
                        break
                    batch.step()
        except Exception as exc:  # a bug or out of memory: every request still running fails cleanly
            log.exception("generation failed")
            for job, _ in running:
                job.emit(Failed(internal(f"generation failed: {type(exc).__name__}")))
            self._release([job for job, _ in running])
        finally:
            self.metrics.batch(total_rows)
            self.metrics.steps(batch.steps, batch.step_rows)

    def _finish_ended(self, running: list[tuple[Job, list[Row]]]) -> list[tuple[Job, list[Row]]]:
        """Answer the requests whose rows have all ended; returns those still running."""
        still = []
        for job, rows in running:
            if all(row.done for row in rows):
                self._finish(job, rows)
            else:
                still.append((job, rows))
        return still

    def _take_joining(self, group: tuple[str, float, float], weights: Weights, room: int) -> list[Job]:
        """Queued requests of the running group that fit in ``room`` rows, taken in arrival order.

        Stops at the first request of another group or one still waiting for pass 1: a request
        is never overtaken by later ones, so a busy expert cannot starve the others.
        """
        taken: list[Job] = []
        with self._cond:
            rows = 0
            for job in self._queue:
                if not isinstance(job.target, Weights) or job.group() != group or rows + job.n > room:
                    break
                taken.append(job)
                rows += job.n
            for job in taken:
                self._queue.remove(job)
            self._in_flight += len(taken)
        if not taken:
            return taken
        try:
            self.resolver.check_current(weights)  # an expert removed meanwhile: a clean 404 for each
        except APIError as exc:
            self._release(taken)
            for job in taken:
                job.emit(Failed(exc))
            return []
        return taken

    def _apply(self, weights: Weights) -> None:
        svf = self.adaptable.svf
        parts = weights.parts
        if not parts:
            svf.restore()
        elif len(parts) == 1 and parts[0].alpha == 1.0:
            svf.apply(parts[0].z, key=parts[0].key)
        else:
            svf.apply_mixture({p.key: (p.alpha, p.z) for p in parts}, label=weights.key)

    @staticmethod
    def _row(job: Job, index: int) -> Row:
        key = sample_key(job.seed, index) if job.seed is not None else secrets.randbits(63)
        return Row(
            prompt_ids=job.prompt_ids,
            max_tokens=job.max_tokens,
            stops=job.stops,
            sample_key=key,
            on_text=lambda text: job.emit(Text(index, text)),
            cancelled=job.cancelled.is_set,
            images=job.image_prompt,
        )
