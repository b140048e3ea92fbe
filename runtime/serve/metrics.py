"""Prometheus metrics of one service process (prometheus-client, one registry per app).

Names (all prefixed ``crossrank_``):

* ``requests_total{route,status}``                   requests answered, by route and HTTP status
* ``request_seconds{route}``                         end-to-end latency in the handler
* ``queue_seconds`` / ``tokenize_seconds`` / ``inference_seconds``   where a request's time went
  (inference is the summed duration of the runs its pairs were in)
* ``batch_pairs`` / ``batch_padded_tokens`` / ``batch_requests`` / ``batch_seconds``   per onnxruntime run
* ``queue_pairs`` / ``queue_requests``               gauges: admitted, not yet answered
* ``pairs_total``, ``truncated_pairs_total``          pairs scored and pairs whose text was cut
* ``partial_responses_total``, ``unscored_pairs_total``   deadline answers and what they left out
* ``rejected_total{reason}``                          shed requests (queue_full, timeout, ...)
* ``cost_seconds_per_token``                          the scheduler's current cost-model slope

With ``--workers N`` each worker process has its own registry, so a scrape sees the worker that
answered it; scrape each worker's port separately or run one worker per container.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ServiceMetrics", "CONTENT_TYPE"]

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets in seconds: 5 ms to 30 s (the default request timeout).
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_PAIRS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKENS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 32768)


class ServiceMetrics:
    """The service's metric objects over a private registry (``render()`` gives the scrape text)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("crossrank_requests_total", "Requests answered", ["route", "status"], registry=r)
        self.request_seconds = Histogram("crossrank_request_seconds", "End-to-end request latency", ["route"], buckets=_LATENCY, registry=r)
        self.queue_seconds = Histogram("crossrank_queue_seconds", "Admission to first run", buckets=_LATENCY, registry=r)
        self.tokenize_seconds = Histogram("crossrank_tokenize_seconds", "Tokenization of a request", buckets=_LATENCY, registry=r)
        self.inference_seconds = Histogram("crossrank_inference_seconds", "Runs holding a request's pairs", buckets=_LATENCY, registry=r)
        self.batch_pairs = Histogram("crossrank_batch_pairs", "Pairs per onnxruntime run", buckets=_PAIRS, registry=r)
        self.batch_tokens = Histogram("crossrank_batch_padded_tokens", "Padded tokens per run", buckets=_TOKENS, registry=r)
        self.batch_requests = Histogram("crossrank_batch_requests", "Requests sharing a run", buckets=(1, 2, 3, 4, 6, 8, 16, 32), registry=r)
        self.batch_seconds = Histogram("crossrank_batch_seconds", "Duration of one run", buckets=_LATENCY, registry=r)
        self.pairs = Counter("crossrank_pairs_total", "Pairs scored", registry=r)
        self.truncated = Counter("crossrank_truncated_pairs_total", "Pairs whose query or document was cut", registry=r)
        self.partial = Counter("crossrank_partial_responses_total", "Answers cut short by a deadline", registry=r)
        self.unscored = Counter("crossrank_unscored_pairs_total", "Candidates left unscored by deadlines", registry=r)
        self.rejected = Counter("crossrank_rejected_total", "Requests shed", ["reason"], registry=r)
        self.queue_pairs = Gauge("crossrank_queue_pairs", "Pairs admitted and not yet answered", registry=r)
        self.queue_requests = Gauge("crossrank_queue_requests", "Requests admitted and not yet answered", registry=r)
        self.cost_per_token = Gauge("crossrank_cost_seconds_per_token", "Cost model: seconds per padded token", registry=r)

    def bind(self, scheduler: Any) -> None:
        """Read the gauges from ``scheduler`` at scrape time."""
        self.queue_pairs.set_function(lambda: scheduler.queued_pairs)
        self.queue_requests.set_function(lambda: scheduler.queued_requests)
        self.cost_per_token.set_function(lambda: scheduler.cost.seconds_per_token)

    def on_batch(self, stats: Any) -> None:
        self.batch_pairs.observe(stats.pairs)
        self.batch_tokens.observe(stats.padded_tokens)
        self.batch_requests.observe(stats.requests)
        self.batch_seconds.observe(stats.seconds)

    def on_outcome(self, outcome: Any) -> None:
        t = outcome.timings
        self.queue_seconds.observe(t.queue_s)
        self.tokenize_seconds.observe(t.tokenize_s)
        self.inference_seconds.observe(t.inference_s)
        n_scored = int(outcome.scored.sum())
        self.pairs.inc(n_scored)
        self.truncated.inc(int(outcome.truncated.sum()))
        if outcome.partial:
            self.partial.inc()
            self.unscored.inc(outcome.num_unscored)

    def render(self) -> bytes:
        return generate_latest(self.registry)
