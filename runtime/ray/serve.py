"""``crossrank serve`` as a Ray Serve deployment: the same app, routes and schemas, N replicas.

    serve run crossrank.ray.serve:app model=./minilm num_replicas=4
    serve run crossrank.ray.serve:app model=/models/minilm min_replicas=1 max_replicas=8 target_ongoing_requests=4

or from Python::

    from ray import serve
    from crossrank.ray.serve import app
    serve.run(app({"model": "/models/minilm", "num_replicas": 2}))

What runs where
---------------
* Each replica is one Ray actor holding one :class:`~crossrank.Reranker` (loaded in the replica's
  constructor from the folder *path*, with ``verify=True``: the sha256 of the ONNX file and of
  ``tokenizer.json`` are checked against ``crossrank.json`` on every replica start, so a replica
  never serves a corrupt or half-copied folder) and one :class:`~crossrank.scheduler.Scheduler`.
* The HTTP app is :func:`crossrank.serve.app.create_app` itself (``@serve.ingress``, built in the
  replica by ``__serve_build_asgi_app__``), so ``/v1/rerank``, ``/v2/rerank``, ``/rerank``,
  ``/health``, ``/ready``, ``/info``, ``/metrics`` and ``/docs`` answer exactly as under
  ``crossrank serve``. Ray Serve runs the app's lifespan in the replica: the scheduler starts and
  warms up before the replica reports healthy, and drains on replica shutdown.
* **Batching** is crossrank's own scheduler inside each replica, not ``@serve.batch``: the
  requests Ray routes to a replica concurrently (up to ``max_ongoing_requests``) are packed into
  shared onnxruntime runs by padded-token budget, with no wait window at idle, deadlines and
  backpressure (429) as in ``crossrank serve``. See ``docs/ray-scaling.md`` for the measurement.
* **Thread budget**: a replica reserves ``threads`` Ray CPUs (``num_cpus``, default 1) and
  runs onnxruntime with ``threads`` intra-op threads; tokenization runs on the scheduler's
  2-thread executor with ``RAYON_NUM_THREADS=threads``. So ``replicas x threads`` is what the
  cluster's CPUs must hold; on a node with C cores run C / threads replicas.
* **Health**: ``check_health`` fails when the app's scheduler is missing or its worker thread
  died, or when pairs have been queued for ``stall_s`` seconds without any run finishing (a
  stuck session); Ray Serve then replaces the replica.
* **Metrics**: ``/metrics`` keeps crossrank's Prometheus text (that replica's registry), and the
  same events are recorded as Ray metrics (``ray.serve.metrics``, tagged with deployment,
  replica and application; Ray exports them with a ``ray_`` prefix): ``crossrank_pairs``,
  ``crossrank_truncated_pairs``, ``crossrank_partial_responses``, ``crossrank_unscored_pairs``,
  ``crossrank_batch_pairs``, ``crossrank_batch_seconds``, ``crossrank_queue_seconds``,
  ``crossrank_queue_pairs``. Ray Serve's own request counters and latencies cover HTTP status.

Arguments (``key=value`` after the import path, or a dict): see :class:`RayServeArgs`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import metrics as ray_metrics

from ..serve.config import API_KEY_ENV, ServeConfig
from ..serve.metrics import ServiceMetrics

__all__ = ["app", "build", "RayServeArgs", "CrossrankDeployment", "health_problem"]

# The ServeConfig fields that make sense under Ray (host/port/workers belong to Ray's proxy).
_CONFIG_FIELDS = (
    "variant", "provider", "max_length", "batch_tokens", "max_batch_size", "served_model_name", "api_key",
    "max_documents", "max_body_bytes", "max_text_chars", "max_queue_pairs", "request_timeout_s", "batching",
    "grace_s", "warmup", "cache_dir",
)


class RayServeArgs(BaseModel):
    """Arguments of :func:`app` (``serve run crossrank.ray.serve:app key=value ...``).

    Replicas: ``num_replicas=N`` for a fixed count (default 1), or autoscaling with any of
    ``min_replicas`` (default 1), ``max_replicas`` (default 8), ``target_ongoing_requests``
    (default 4) and ``initial_replicas`` (or ``num_replicas=auto``). ``max_ongoing_requests``
    (default 32) is how many requests Ray hands one replica at once: its scheduler packs those
    into shared runs and sheds beyond ``max_queue_pairs`` with 429.

    Per replica: ``threads`` (default 1: Ray CPUs reserved = onnxruntime threads),
    ``spinning`` (default False: replicas share a node's cores), ``stall_s`` (health check).

    The rest are ``crossrank serve``'s settings (:class:`crossrank.serve.ServeConfig`):
    ``variant``, ``provider``, ``max_length``, ``batch_tokens``, ``max_batch_size``,
    ``served_model_name``, ``api_key`` (default: ``$CROSSRANK_API_KEY`` in the replica's environment,
    which keeps the key out of Ray's stored config),
    ``max_documents``, ``max_body_bytes``, ``max_text_chars``, ``max_queue_pairs``,
    ``request_timeout_s``, ``batching``, ``grace_s``, ``warmup``, ``cache_dir``.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the model folder; the same path must exist on every node")
    name: str = "crossrank"
    num_replicas: Optional[Union[int, Literal["auto"]]] = None
    min_replicas: Optional[int] = Field(None, ge=0)
    max_replicas: Optional[int] = Field(None, ge=1)
    initial_replicas: Optional[int] = Field(None, ge=0)
    target_ongoing_requests: Optional[float] = Field(None, gt=0)
    max_ongoing_requests: int = Field(32, ge=1)
    threads: int = Field(1, ge=1)
    spinning: bool = False
    stall_s: float = Field(60.0, gt=0)
    variant: str = "auto"
    provider: str = "auto"
    max_length: Optional[int] = None
    batch_tokens: Optional[int] = None
    max_batch_size: Optional[int] = None
    served_model_name: Optional[str] = None
    api_key: Optional[str] = None
    max_documents: int = 1000
    max_body_bytes: int = 10 * 1024 * 1024
    max_text_chars: int = 100_000
    max_queue_pairs: Optional[int] = None
    request_timeout_s: float = 30.0
    batching: bool = True
    grace_s: float = 30.0
    warmup: bool = True
    cache_dir: Optional[str] = None

    @model_validator(mode="after")
    def _check(self) -> "RayServeArgs":
        if isinstance(self.num_replicas, int) and self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1 or 'auto'; got {self.num_replicas}")
        if isinstance(self.num_replicas, int) and self.autoscaling:
            raise ValueError("give either num_replicas=N (fixed) or min/max_replicas, target_ongoing_requests (autoscaling), not both")
        if self.min_replicas is not None and self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.num_replicas == "auto" or any(
            v is not None for v in (self.min_replicas, self.max_replicas, self.initial_replicas, self.target_ongoing_requests)
        )

    def autoscaling_config(self) -> Optional[Dict[str, Any]]:
        if not self.autoscaling:
            return None
        lo = 1 if self.min_replicas is None else self.min_replicas
        hi = max(8, lo) if self.max_replicas is None else self.max_replicas
        out: Dict[str, Any] = {
            "min_replicas": lo,
            "max_replicas": hi,
            "target_ongoing_requests": 4.0 if self.target_ongoing_requests is None else self.target_ongoing_requests,
        }
        if self.initial_replicas is not None:
            out["initial_replicas"] = self.initial_replicas
        return out

    def serve_config(self) -> ServeConfig:
        """The replica's ServeConfig (validated here, on the driver, so a bad setting fails before deploying)."""
        values = {k: getattr(self, k) for k in _CONFIG_FIELDS}
        if values["max_queue_pairs"] is None:
            del values["max_queue_pairs"]
        # An absolute path: replicas do not start in the driver's working directory.
        return ServeConfig(model_dir=str(Path(self.model).expanduser().resolve()), **values)


class _RayServiceMetrics(ServiceMetrics):
    """crossrank's Prometheus registry (``/metrics``), and the same events as Ray metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.last_progress = time.monotonic()
        self._scheduler: Any = None
        self.r_pairs = ray_metrics.Counter("crossrank_pairs", description="Pairs scored")
        self.r_truncated = ray_metrics.Counter("crossrank_truncated_pairs", description="Pairs whose query or document was cut")
        self.r_partial = ray_metrics.Counter("crossrank_partial_responses", description="Answers cut short by a deadline")
        self.r_unscored = ray_metrics.Counter("crossrank_unscored_pairs", description="Candidates left unscored by deadlines")
        self.r_batch_pairs = ray_metrics.Histogram(
            "crossrank_batch_pairs", description="Pairs per onnxruntime run", boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256]
        )
        self.r_batch_seconds = ray_metrics.Histogram(
            "crossrank_batch_seconds", description="Duration of one onnxruntime run",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0],
        )
        self.r_queue_seconds = ray_metrics.Histogram(
            "crossrank_queue_seconds", description="Admission to a request's first run",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
        )
        self.r_queue_pairs = ray_metrics.Gauge("crossrank_queue_pairs", description="Pairs admitted and not yet answered")

    def bind(self, scheduler: Any) -> None:
        super().bind(scheduler)
        self._scheduler = scheduler

    def _gauge(self) -> None:
        if self._scheduler is not None:
            self.r_queue_pairs.set(self._scheduler.queued_pairs)

    def on_batch(self, stats: Any) -> None:
        super().on_batch(stats)
        self.last_progress = time.monotonic()
        self.r_batch_pairs.observe(stats.pairs)
        self.r_batch_seconds.observe(stats.seconds)
        self._gauge()

    def on_outcome(self, outcome: Any) -> None:
        super().on_outcome(outcome)
        self.last_progress = time.monotonic()
        scored = int(outcome.scored.sum())
        if scored:
            self.r_pairs.inc(scored)
        truncated = int(outcome.truncated.sum())
        if truncated:
            self.r_truncated.inc(truncated)
        if outcome.partial:
            self.r_partial.inc()
            self.r_unscored.inc(outcome.num_unscored)
        self.r_queue_seconds.observe(outcome.timings.queue_s)
        self._gauge()


@serve.deployment(name="crossrank", health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress()
class CrossrankDeployment:
    """One replica: one Reranker (sha256-verified on load), the crossrank app around it."""

    def __init__(self, config: Dict[str, Any], threads: int = 1, spinning: bool = False, stall_s: float = 60.0) -> None:
        if config.get("api_key") is None and os.environ.get(API_KEY_ENV):
            # From the replica's own environment (a Kubernetes Secret, runtime_env): the key then
            # never enters Ray's stored application config.
            config = dict(config, api_key=os.environ[API_KEY_ENV])
        # The replica's own threads/spinning replace the config's (replicas share a node's cores);
        # then one load path with `crossrank serve` (ServeConfig.load_reranker, sha256-verified).
        self._config = ServeConfig(**config).with_(threads=threads, spinning=spinning)
        self._stall_s = float(stall_s)
        self._reranker = self._config.load_reranker()
        self._state: Any = None
        self._metrics: _RayServiceMetrics | None = None

    def __serve_build_asgi_app__(self) -> Any:
        from ..serve.app import create_app  # noqa: PLC0415

        app = create_app(self._config, reranker=self._reranker)
        # create_app reads state.metrics when its lifespan starts the scheduler (on_batch, bind) and
        # on every request, so a ServiceMetrics subclass put there before start-up records both
        # crossrank's /metrics and Ray's metrics.
        state = app.state.crossrank
        self._metrics = state.metrics = _RayServiceMetrics()
        self._state = state
        return app

    def check_health(self) -> None:
        problem = health_problem(self._state, self._metrics, self._stall_s)
        if problem:
            raise RuntimeError(f"crossrank: {problem}")


def health_problem(state: Any, metrics: Optional[_RayServiceMetrics], stall_s: float) -> Optional[str]:
    """Why a replica is unhealthy (None when it is healthy): no scheduler, its worker thread gone
    (closed or crashed), or pairs queued with no run finished for ``stall_s`` seconds."""
    if state is None or getattr(state, "scheduler", None) is None:
        return "the app has not started its scheduler"
    sched = state.scheduler
    worker = getattr(sched, "_thread", None)
    if worker is None or not worker.is_alive():
        return "the scheduler's worker thread is not running"
    if metrics is not None and sched.queued_pairs and time.monotonic() - metrics.last_progress > stall_s:
        return f"{sched.queued_pairs} pairs queued and no run finished for {stall_s:.0f} s (stuck session)"
    return None


def build(args: Union[Dict[str, Any], RayServeArgs]) -> Any:
    """The Ray Serve application for ``args`` (a dict of ``key=value`` strings or :class:`RayServeArgs`)."""
    a = args if isinstance(args, RayServeArgs) else RayServeArgs.model_validate(dict(args))
    config = a.serve_config()
    from ..manifest import load_manifest  # noqa: PLC0415

    load_manifest(config.model_dir)  # a wrong path fails here, in one line, not in every replica
    auto = a.autoscaling_config()
    options: Dict[str, Any] = {
        "name": a.name,
        "max_ongoing_requests": a.max_ongoing_requests,
        "ray_actor_options": {
            "num_cpus": a.threads,
            "runtime_env": {"env_vars": {"RAYON_NUM_THREADS": str(a.threads), "OMP_NUM_THREADS": str(a.threads)}},
        },
        # Ray waits this long for the replica's shutdown: the scheduler's drain gets grace_s.
        "graceful_shutdown_timeout_s": config.grace_s + 5.0,
    }
    if auto is not None:
        options["autoscaling_config"] = auto
    else:
        options["num_replicas"] = 1 if a.num_replicas is None else a.num_replicas
    from dataclasses import asdict  # noqa: PLC0415

    return CrossrankDeployment.options(**options).bind(asdict(config), a.threads, a.spinning, a.stall_s)


def app(args: Dict[str, Any]) -> Any:
    """Application builder for ``serve run crossrank.ray.serve:app model=DIR [key=value ...]``."""
    return build(args)
