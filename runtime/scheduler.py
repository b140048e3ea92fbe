"""Cross-request batching with deadlines: one worker thread owns a Reranker's session.

    from crossrank import Reranker
    from crossrank.scheduler import Scheduler

    with Scheduler(Reranker.load("./minilm")) as sched:          # starts its worker thread
        out = sched.rerank("How do I export my data?", docs)      # blocking, from any thread
        out = await sched.arerank(q, docs, deadline_ms=80)        # asyncio, from any event loop

A service calls :meth:`Scheduler.arerank` from its request handlers; the HTTP layer of
``crossrank serve`` is a thin shell over exactly this object, so an application embedding crossrank
in its own asyncio app gets the same batching, deadlines and backpressure.

How a request flows
-------------------
1. **Admission** (caller's thread): a request whose pairs would take the queue past
   ``max_queue_pairs`` is refused at once with :class:`~crossrank.errors.QueueFullError` carrying
   ``retry_after_s`` (the queue's drain time from the cost model) - load is shed instead of growing
   every request's latency without bound.
2. **Tokenization** (caller's thread, or a small executor for :meth:`arerank`): the Reranker's own
   :class:`~crossrank.tokenize.PairEncoder`, so scores are those of ``Reranker.rerank``.
3. **Scheduling** (worker thread): every pass forms *one* onnxruntime run of at most
   ``batch_tokens`` padded tokens and ``max_batch_size`` pairs (the Reranker's settings), filled
   from the queued requests in priority order:

   * requests with a deadline first, earliest deadline first; their pairs are taken in the
     caller's order (the first stage's ranking), so a partial answer has scored the top of it;
   * then every other request by its current *slowdown*, ``(waited + remaining work) / remaining
     work`` (highest response ratio next, work in padded tokens, waiting converted to tokens with
     the measured throughput), largest first; their pairs are taken shortest first, as
     :func:`~crossrank.batching.plan_batches` does. A 10-pair request that arrives behind a
     1,000-pair one has the larger slowdown after waiting a few milliseconds, so its pairs go into
     the next run and it finishes in about its own cost; the big request keeps aging and is never
     starved.

   A request that arrives at an idle worker runs at once: there is no wait window. Requests that
   arrive while a run is in flight are packed into the next runs. Because the int8 (static) and
   fp32 variants are batch-invariant, a pair's score does not depend on its batch mates.
4. **Deadlines.** Before adding a deadline request's pair to a run, the cost model estimates the
   run; a request whose next pair cannot finish in time is answered at once with what it has:
   scored candidates ranked, the others after them in their given order, ``scored=False``. The
   waiting side also answers at the deadline itself even if a run is still in flight, so the
   answer is on time whatever the estimate's error. Requests without a deadline that are not
   done after ``request_timeout_s`` fail with :class:`~crossrank.errors.RequestTimeoutError`.

With ``batching=False`` each run holds pairs of one request only and requests are served in
arrival order: the one-request-per-run baseline the benchmarks compare against.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from .activation import apply_activation
from .batching import pad_rows
from .costmodel import CostModel
from .errors import (
    CrossrankError,
    InvalidInputError,
    QueueFullError,
    RequestTimeoutError,
    SchedulerClosedError,
)
from .reranker import Reranker, Result, _check_documents, _check_flag, _check_positive_int, _check_query, _check_top_k
from .tokenize import Encoded

__all__ = ["Scheduler", "RerankOutcome", "Timings", "BatchStats", "PairTooLongError", "DEFAULT_MAX_QUEUE_PAIRS"]

log = logging.getLogger("crossrank.scheduler")

# Queue bound in pairs. MiniLM-L6 int8 scores ~90 TREC DL pairs/s on the 2-core AVX2 EPYC
# (benchmarks/results/epyc-2core-avx2: 50 candidates in 573 ms), so 2,048 queued pairs is about
# 20 s of work there: the most a default 30 s timeout can still serve. Raise it with the machine.
DEFAULT_MAX_QUEUE_PAIRS = 2048
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# Requests with more characters than this are tokenized on a thread of their own, so that their
# tokenization (seconds for megabytes) never queues small requests behind it. 256 KiB is ~100
# passages of a first stage; real MiniLM tokenizer on the 2-core EPYC: ~1 s per 1 MB.
LARGE_REQUEST_CHARS = 256 * 1024


class PairTooLongError(InvalidInputError):
    """``allow_truncation=False`` and a pair is longer than ``max_length``: ``index`` of the
    document, ``tokens`` of the whole pair, ``part`` that would be cut (``"query"``/``"document"``)."""

    def __init__(self, message: str, *, index: int, tokens: int, part: str = "document") -> None:
        super().__init__(message)
        self.index = index
        self.tokens = tokens
        self.part = part


@dataclass(frozen=True)
class Timings:
    """Where one request's time went, seconds. ``inference_s`` sums the runs its pairs were in
    (shared with the other requests of those runs); ``queue_s`` is from admission to its first run."""

    tokenize_s: float
    queue_s: float
    inference_s: float
    total_s: float


@dataclass(frozen=True)
class RerankOutcome:
    """One request's answer.

    ``results``: scored candidates best first (ties by input position), then unscored ones in
    their given order, cut to ``top_k``. ``scores``: float32 per input position (NaN where
    unscored). ``scored``/``truncated``: bool per input position. ``total_tokens``: tokens of
    every pair of the request (special tokens included, unpadded).
    """

    results: list[Result]
    scores: np.ndarray
    scored: np.ndarray
    truncated: np.ndarray
    total_tokens: int
    timings: Timings

    @property
    def num_unscored(self) -> int:
        return int((~self.scored).sum())

    @property
    def partial(self) -> bool:
        return bool(self.num_unscored)


@dataclass(frozen=True)
class BatchStats:
    """One onnxruntime run, as reported to ``on_batch``."""

    pairs: int
    padded_tokens: int
    requests: int
    seconds: float


_seq = itertools.count()


@dataclass(eq=False)
class _Job:
    enc: Encoded
    docs: tuple[str, ...]
    raw: bool
    top_k: int | None
    deadline: float | None  # monotonic seconds; None: no latency budget
    expires: float  # monotonic seconds: the deadline, or admission + request timeout
    t_submit: float
    t_admitted: float
    pending: deque = field(default_factory=deque)  # rows not yet in a run, in take order
    in_flight: int = 0
    pending_tokens: int = 0
    t_first_run: float | None = None
    inference_s: float = 0.0
    finished: bool = False
    seq: int = 0  # admission order (arrival, for FIFO and ties)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    def __post_init__(self) -> None:
        n = len(self.enc)
        self.lengths = self.enc.lengths
        self.logits: np.ndarray | None = None
        self.done = np.zeros(n, dtype=bool)


class Scheduler:
    """Serve many concurrent rerank requests with one :class:`~crossrank.Reranker`.

    Args (keyword-only after ``reranker``):
        reranker: the loaded model; the scheduler uses its tokenizer, session and batching
            settings (``batch_tokens``, ``max_batch_size``). Do not call the same Reranker's
            ``rerank`` from other threads meanwhile if latency matters: both share its cores.
        max_queue_pairs: pairs admitted but not yet scored, at most (default
            :data:`DEFAULT_MAX_QUEUE_PAIRS`); beyond it requests get ``QueueFullError``.
        request_timeout_s: a request without a deadline fails with ``RequestTimeoutError`` after
            this many seconds (default 30; None = never).
        batching: False = one request per run, in arrival order (the no-batching baseline).
        on_batch: called after every run with its :class:`BatchStats` (metrics); must be quick.
        start: start the worker thread now (else call :meth:`start`).

    Raises:
        InvalidInputError: an option out of range.
    """

    def __init__(
        self,
        reranker: Reranker,
        *,
        max_queue_pairs: int = DEFAULT_MAX_QUEUE_PAIRS,
        request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
        batching: bool = True,
        on_batch: Callable[[BatchStats], None] | None = None,
        start: bool = True,
    ) -> None:
        if not isinstance(reranker, Reranker):
            raise InvalidInputError(f"reranker must be a crossrank.Reranker; got {type(reranker).__name__}")
        _check_positive_int("max_queue_pairs", max_queue_pairs)
        if request_timeout_s is not None and not (isinstance(request_timeout_s, (int, float)) and not isinstance(request_timeout_s, bool) and request_timeout_s > 0):
            raise InvalidInputError(f"request_timeout_s must be None or a number of seconds > 0; got {request_timeout_s!r}")
        self.reranker = reranker
        self.max_queue_pairs = int(max_queue_pairs)
        self.request_timeout_s = None if request_timeout_s is None else float(request_timeout_s)
        self.batching = _check_flag("batching", batching)
        self.cost = CostModel()
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []
        self._queued_pairs = 0  # admitted, not yet finished
        self._closing = False
        self._drain = True
        self._thread: threading.Thread | None = None
        # arerank tokenizes here, off the event loop; `tokenizers` releases the GIL while it encodes.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="crossrank-tokenize")
        self._executor_large = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="crossrank-tokenize-large")
        if start:
            self.start()

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._closing:
                raise SchedulerClosedError("this scheduler was closed; create a new one")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="crossrank-scheduler", daemon=True)
                self._thread.start()
        return self

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; with ``drain`` finish the queued ones first, else fail them with
        :class:`~crossrank.errors.SchedulerClosedError`. Waits up to ``timeout`` seconds for the
        worker (None: as long as it takes)."""
        with self._cond:
            self._closing = True
            self._drain = bool(drain)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:  # a drain cut short by the timeout still answers every request
            for job in list(self._jobs):
                self._fail_locked(job, SchedulerClosedError("the scheduler closed before this request was scored"))
        self._executor.shutdown(wait=False)
        self._executor_large.shutdown(wait=False)

    def __enter__(self) -> "Scheduler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def queued_pairs(self) -> int:
        """Pairs admitted and not yet answered."""
        return self._queued_pairs

    @property
    def queued_requests(self) -> int:
        return len(self._jobs)

    def warmup(self, *, rounds: int = 2) -> None:
        """Run a short and a full-budget batch ``rounds`` times (first-run allocations, and two
        sizes for the cost model) before the first request; synchronous."""
        rr = self.reranker
        filler = "warm up the reranker " * 64
        for _ in range(rounds):
            self.rerank("warm up", ["a short candidate"])
            n = max(1, min(rr.max_batch_size, 8))
            self.rerank("warm up", [filler] * n)

    # -- submitting ------------------------------------------------------------------------------
    def rerank(
        self,
        query: str,
        documents: Iterable[str],
        *,
        top_k: int | None = None,
        raw: bool = False,
        deadline_ms: float | None = None,
        max_doc_tokens: int | None = None,
        allow_truncation: bool = True,
    ) -> RerankOutcome:
        """Blocking form of :meth:`arerank`, callable from any thread."""
        job = self._submit(query, documents, top_k=top_k, raw=raw, deadline_ms=deadline_ms, max_doc_tokens=max_doc_tokens, allow_truncation=allow_truncation)
        try:
            return job.future.result(timeout=_remaining(job))
        except concurrent.futures.TimeoutError:
            return self._expire(job)

    async def arerank(
        self,
        query: str,
        documents: Iterable[str],
        *,
        top_k: int | None = None,
        raw: bool = False,
        deadline_ms: float | None = None,
        max_doc_tokens: int | None = None,
        allow_truncation: bool = True,
        started_at: float | None = None,
    ) -> RerankOutcome:
        """Rank ``documents`` for ``query`` through the shared queue (see the module docstring).

        Args:
            query, documents: as :meth:`crossrank.Reranker.rerank` (``documents`` is copied).
            top_k: at most this many results (None: all).
            raw: scores are the positive logit instead of the activated score.
            deadline_ms: latency budget in milliseconds from ``started_at``; when it cannot all be
                scored in time the answer is partial (``RerankOutcome.partial``), never late - also
                when the deadline passes while the request is still being tokenized.
            max_doc_tokens: at most this many document tokens per pair (cheaper; counted as
                truncation when it cuts).
            allow_truncation: False raises :class:`PairTooLongError` for a pair longer than
                ``max_length`` instead of cutting it.
            started_at: ``time.monotonic()`` when the request arrived (a server passes the time
                it started reading it); default: now.

        Returns:
            :class:`RerankOutcome`.

        Raises:
            InputTypeError / InvalidInputError: bad arguments (before anything is queued).
            PairTooLongError: see ``allow_truncation``.
            QueueFullError: the queue is full (``retry_after_s`` says when to retry).
            RequestTimeoutError: no deadline, and not done within ``request_timeout_s``.
            SchedulerClosedError: the scheduler is closing.
            InferenceError: onnxruntime failed on a run holding this request's pairs.
        """
        t0 = time.monotonic() if started_at is None else float(started_at)
        docs = _check_documents(documents)  # a tuple: the worker thread sees the caller's list as it was
        kwargs = dict(top_k=top_k, raw=raw, deadline_ms=deadline_ms, max_doc_tokens=max_doc_tokens,
                      allow_truncation=allow_truncation, t0=t0)
        # Tokenization off the event loop (`tokenizers` releases the GIL); big requests on their
        # own thread so that a 5 MB request does not hold up the small ones behind it.
        size = len(query) + sum(map(len, docs)) if isinstance(query, str) else 0
        executor = self._executor_large if size > LARGE_REQUEST_CHARS else self._executor
        submitted = executor.submit(lambda: self._submit(query, docs, **kwargs))
        wrapped = _quiet(asyncio.wrap_future(submitted))
        limit = None
        if isinstance(deadline_ms, (int, float)) and not isinstance(deadline_ms, bool) and math.isfinite(deadline_ms) and deadline_ms > 0:
            limit = max(0.0, t0 + deadline_ms / 1000.0 - time.monotonic())
        try:
            job = await asyncio.wait_for(asyncio.shield(wrapped), timeout=limit)
        except asyncio.TimeoutError:  # the deadline passed while tokenizing: on time, nothing scored
            submitted.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self._cancel(f.result()))
            return self._unscored(docs, top_k, time.monotonic() - t0)
        except asyncio.CancelledError:  # cancelled while tokenizing: withdraw the job once it exists
            submitted.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self._cancel(f.result()))
            raise
        fut = _quiet(asyncio.wrap_future(job.future))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=_remaining(job))
        except asyncio.TimeoutError:
            return self._expire(job)
        except asyncio.CancelledError:  # the client went away: its pairs leave the queue
            self._cancel(job)
            raise

    def _unscored(self, docs: tuple[str, ...], top_k: Any, elapsed: float) -> RerankOutcome:
        n = len(docs)
        k = _check_top_k(top_k)
        order = range(n if k is None else min(n, k))
        nope = np.zeros(n, dtype=bool)
        return RerankOutcome(
            results=[Result(index=i, score=float("nan"), document=docs[i], scored=False, windows=0) for i in order],
            scores=np.full(n, np.nan, dtype=np.float32),
            scored=nope,
            truncated=nope.copy(),
            total_tokens=0,
            timings=Timings(tokenize_s=elapsed, queue_s=0.0, inference_s=0.0, total_s=elapsed),
        )

    def _submit(
        self,
        query: Any,
        documents: Any,
        *,
        top_k: Any,
        raw: Any,
        deadline_ms: Any,
        max_doc_tokens: Any,
        allow_truncation: Any,
        t0: float | None = None,
    ) -> _Job:
        t0 = time.monotonic() if t0 is None else t0
        _check_query(query)
        docs = _check_documents(documents)
        k = _check_top_k(top_k)
        raw = _check_flag("raw", raw)
        allow_truncation = _check_flag("allow_truncation", allow_truncation)
        if deadline_ms is not None:
            if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float)) or not math.isfinite(deadline_ms) or deadline_ms <= 0:
                raise InvalidInputError(f"deadline_ms must be None or a number of milliseconds > 0; got {deadline_ms!r}")
        if max_doc_tokens is not None:
            _check_positive_int("max_doc_tokens", max_doc_tokens)
        n = len(docs)
        with self._cond:
            if self._closing:
                raise SchedulerClosedError("the scheduler is closing and takes no new requests")
            if n > self.max_queue_pairs:
                raise InvalidInputError(
                    f"a request of {n} pairs can never fit the queue of {self.max_queue_pairs} pairs (max_queue_pairs); split it"
                )
            if self._queued_pairs + n > self.max_queue_pairs:
                raise QueueFullError(
                    f"queue full: {self._queued_pairs} pairs queued, this request adds {n}, limit {self.max_queue_pairs} "
                    "(max_queue_pairs); retry later",
                    retry_after_s=self._drain_estimate_locked(),
                )
            self._queued_pairs += n  # reserved before tokenizing, so concurrent admissions see it
            seq = next(_seq)
        try:
            pairs = [(query, d) for d in docs]
            enc = (
                self.reranker._encoder.encode(pairs)
                if max_doc_tokens is None
                else self.reranker._encoder.encode(pairs, max_doc_tokens=int(max_doc_tokens))
            )
            if not allow_truncation and enc.truncated.any():
                i = int(np.flatnonzero(enc.truncated)[0])
                full = self._full_length(query, docs[i])
                part = "query" if enc.query_cut[i] else "document"
                raise PairTooLongError(
                    f"the pair of the query and document {i} is {full} tokens, longer than max_length "
                    f"{self.reranker.max_length}; shorten the {part} or allow truncation",
                    index=i,
                    tokens=full,
                    part=part,
                )
        except BaseException:
            with self._cond:
                self._queued_pairs -= n
            raise
        now = time.monotonic()
        deadline = None if deadline_ms is None else t0 + float(deadline_ms) / 1000.0
        if deadline is not None:
            expires = deadline
        elif self.request_timeout_s is not None:
            expires = t0 + self.request_timeout_s
        else:
            expires = math.inf
        job = _Job(enc=enc, docs=docs, raw=raw, top_k=k, deadline=deadline, expires=expires, t_submit=t0, t_admitted=now, seq=seq)
        lengths = job.lengths
        # Deadline: the caller's (first-stage) order; otherwise shortest first for tight padding.
        order = np.arange(n) if deadline is not None else np.argsort(lengths, kind="stable")
        job.pending.extend(int(r) for r in order)
        job.pending_tokens = int(lengths.sum())
        job.logits = np.empty((n, self.reranker.manifest.num_labels), dtype=np.float32)
        with self._cond:
            if self._closing:
                self._queued_pairs -= n
                raise SchedulerClosedError("the scheduler is closing and takes no new requests")
            if n == 0:
                self._jobs.append(job)
                self._finish_locked(job)
            else:
                self._jobs.append(job)
                self._cond.notify_all()
        return job

    def _full_length(self, query: str, doc: str) -> int:
        tok = self.reranker._encoder._tok
        return len(tok.encode(query, doc, add_special_tokens=True).ids)

    # -- answering -------------------------------------------------------------------------------
    def _expire(self, job: _Job) -> RerankOutcome:
        """The waiter's deadline/timeout passed: answer now (partial with a deadline, else error)."""
        with self._cond:
            if not job.finished:
                if job.deadline is not None:
                    self._finish_locked(job)
                else:
                    self._fail_locked(
                        job,
                        RequestTimeoutError(
                            f"not scored within the request timeout of {self.request_timeout_s:g} s "
                            f"({int(job.done.sum())} of {len(job.docs)} pairs done); the server is overloaded"
                        ),
                    )
        return job.future.result(timeout=0)

    def _cancel(self, job: _Job) -> None:
        with self._cond:
            if not job.finished:
                self._fail_locked(job, SchedulerClosedError("the request was cancelled"))

    def _retire_locked(self, job: _Job) -> None:
        if job.finished:
            return
        job.finished = True
        self._queued_pairs -= len(job.docs)
        job.pending.clear()
        try:
            self._jobs.remove(job)
        except ValueError:
            pass

    def _fail_locked(self, job: _Job, err: BaseException) -> None:
        if job.finished:
            return
        self._retire_locked(job)
        job.future.set_exception(err)

    def _finish_locked(self, job: _Job) -> None:
        if job.finished:
            return
        self._retire_locked(job)
        job.future.set_result(self._outcome(job))

    def _outcome(self, job: _Job) -> RerankOutcome:
        m = self.reranker.manifest
        n = len(job.docs)
        scored = job.done.copy()
        scores = np.full(n, np.nan, dtype=np.float32)
        if scored.any():
            logits = job.logits[scored]
            if job.raw:
                s = np.ascontiguousarray(logits[:, m.positive_label], dtype=np.float32)
            else:
                s = apply_activation(logits, m.activation, m.positive_label)
            scores[scored] = s
        idx = np.arange(n)
        sc = idx[scored]
        ranked = sc[np.lexsort((sc, -scores[sc].astype(np.float64)))] if len(sc) else sc
        order = np.concatenate([ranked, idx[~scored]]).astype(np.int64)
        if job.top_k is not None:
            order = order[: job.top_k]
        enc = job.enc
        results = [
            Result(
                index=int(i),
                score=float(scores[i]),
                document=job.docs[i],
                truncated=bool(enc.truncated[i]),
                scored=bool(scored[i]),
                query_cut=bool(enc.query_cut[i]),
                doc_cut=bool(enc.doc_cut[i]),
                windows=int(scored[i]),  # one truncated pair per scored document, none for the rest
            )
            for i in order
        ]
        now = time.monotonic()
        first = job.t_first_run if job.t_first_run is not None else now
        timings = Timings(
            tokenize_s=job.t_admitted - job.t_submit,
            queue_s=max(0.0, first - job.t_admitted),
            inference_s=job.inference_s,
            total_s=now - job.t_submit,
        )
        return RerankOutcome(
            results=results,
            scores=scores,
            scored=scored,
            truncated=enc.truncated.copy(),
            total_tokens=int(job.lengths.sum()),
            timings=timings,
        )

    def _drain_estimate_locked(self) -> float:
        tokens = sum(j.pending_tokens for j in self._jobs)
        runs = math.ceil(tokens / max(1, self.reranker.batch_tokens)) + 1  # + the run in flight
        in_flight = self.cost.estimate(self.reranker.batch_tokens)
        return max(1.0, math.ceil(self.cost.seconds_per_token * tokens + self.cost.overhead_s * runs + in_flight))

    # -- the worker ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    self._expire_due_locked(now)
                    if self._closing and (not self._drain or not self._jobs):
                        for job in list(self._jobs):
                            self._fail_locked(job, SchedulerClosedError("the scheduler closed before this request was scored"))
                        return
                    if any(j.pending for j in self._jobs):
                        break
                    # Only deadline requests are answered by the worker when they expire.
                    wake = min((j.expires for j in self._jobs if j.deadline is not None), default=math.inf)
                    self._cond.wait(None if wake == math.inf else max(0.0, wake - now))
                picks = self._select_locked(now)
                if not picks:
                    continue
                for job, rows in picks:
                    job.in_flight += len(rows)
                    job.pending_tokens -= int(job.lengths[rows].sum())
                    if job.t_first_run is None:
                        job.t_first_run = now
            self._run(picks)

    def _expire_due_locked(self, now: float) -> None:
        for job in list(self._jobs):
            if job.expires <= now:
                if job.deadline is not None:
                    self._finish_locked(job)
                # Timeouts without a deadline are answered by the waiter (_expire), which raises.

    def _select_locked(self, now: float) -> list[tuple[_Job, np.ndarray]]:
        rr = self.reranker
        budget, max_bs = rr.batch_tokens, rr.max_batch_size
        ready = [j for j in self._jobs if j.pending]
        if not self.batching:
            ordered = [min(ready, key=lambda j: j.seq)]
        else:
            per_token = self.cost.seconds_per_token

            def slowdown(j: _Job) -> float:
                rem = max(1, j.pending_tokens)
                return ((now - j.t_admitted) / per_token + rem) / rem

            with_deadline = sorted((j for j in ready if j.deadline is not None), key=lambda j: (j.deadline, j.seq))
            others = sorted((j for j in ready if j.deadline is None), key=lambda j: (-slowdown(j), j.seq))
            ordered = with_deadline + others
        picks: list[tuple[_Job, list[int]]] = []
        count, width = 0, 0
        for job in ordered:
            taken: list[int] = []
            while job.pending and count < max_bs:
                r = job.pending[0]
                w = max(width, int(job.lengths[r]))
                if count and (count + 1) * w > budget:
                    break
                if job.deadline is not None and now + self.cost.estimate((count + 1) * w) > job.deadline:
                    if count == 0:
                        # Not even its next pair fits before its deadline: answer with what it has.
                        self._finish_locked(job)
                    break
                job.pending.popleft()
                taken.append(r)
                count += 1
                width = w
            if taken:
                picks.append((job, taken))
            if count >= max_bs or not self.batching or (count and (count + 1) * width > budget):
                break
        return [(job, np.asarray(rows, dtype=np.int64)) for job, rows in picks]

    def _run(self, picks: list[tuple[_Job, np.ndarray]]) -> None:
        rr = self.reranker
        sess = rr._session
        pairs = sum(len(r) for _, r in picks)
        err: BaseException | None = None
        try:
            feeds = pad_rows(
                [(job.enc, rows) for job, rows in picks],
                input_names=sess.input_names,
                input_dtypes=sess.input_dtypes,
                pad_token_id=rr.manifest.tokenizer.pad_token_id,
            )
            padded = int(feeds["input_ids"].size) if "input_ids" in feeds else pairs
            t0 = time.perf_counter()
            logits = sess.run(feeds)
            dt = time.perf_counter() - t0
        except CrossrankError as e:
            err = e
        except Exception as e:  # noqa: BLE001 - never let the worker die: fail this run's requests
            err = e
        with self._cond:
            if err is not None:
                for job, rows in picks:
                    job.in_flight -= len(rows)
                    self._fail_locked(job, err)
                return
            self.cost.observe(padded, dt)
            start = 0
            for job, rows in picks:
                job.in_flight -= len(rows)
                part = logits[start : start + len(rows)]
                start += len(rows)
                if job.finished:
                    continue  # answered at its deadline while this run was in flight
                job.logits[rows] = part
                job.done[rows] = True
                job.inference_s += dt
                if not job.pending and job.in_flight == 0:
                    self._finish_locked(job)
        if self._on_batch is not None:
            try:
                self._on_batch(BatchStats(pairs=pairs, padded_tokens=padded, requests=len(picks), seconds=dt))
            except Exception:  # noqa: BLE001 - a metrics hook must not break scoring
                log.exception("on_batch hook failed")


def _remaining(job: _Job) -> float | None:
    """Seconds until the job's deadline or timeout; None when it has neither."""
    return None if job.expires == math.inf else max(0.0, job.expires - time.monotonic())


def _quiet(fut: "asyncio.Future[Any]") -> "asyncio.Future[Any]":
    """``fut`` with its exception marked retrieved: a waiter that already answered (deadline,
    cancellation) must not leave "exception was never retrieved" in the log."""
    fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())
    return fut
