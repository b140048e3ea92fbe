"""What one onnxruntime run costs on this machine, learnt from the runs themselves.

The cross-request scheduler needs two estimates: how long a batch of ``padded_tokens`` (batch size
x padded length) will take, to stop before a batch that would overrun a request's deadline, and
how fast the queue drains, for ``Retry-After``. Both come from one linear model

    seconds(batch) = overhead_s + seconds_per_token * padded_tokens

fitted by least squares over the most recent runs (a ring of :data:`WINDOW` observations), so it
follows the machine it runs on (thread count, other load, CPU frequency) instead of a figure
measured elsewhere. Until two runs of different sizes have been seen it falls back to a
proportional model through the origin, and before any run to :data:`PRIOR_SECONDS_PER_TOKEN`.
Attention makes the true cost slightly super-linear in the padded length; within the scheduler's
token budget (512 on CPU) the linear fit is what the deadline check needs, and its error is what
``fit_error`` reports.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np

__all__ = ["CostModel", "PRIOR_SECONDS_PER_TOKEN", "WINDOW"]

# Before the first run: ~0.1 ms per padded token, the order of MiniLM-L6 int8 on two AVX2 cores
# (573 ms for 50 TREC DL candidates of ~4,770 tokens in benchmarks/results/epyc-2core-avx2).
PRIOR_SECONDS_PER_TOKEN = 1.2e-4
# Observations kept: enough to average out noise, few enough to follow a change of load in seconds.
WINDOW = 64


class CostModel:
    """Linear cost of one run in padded tokens; thread-safe (one lock around a small ring)."""

    def __init__(self, *, window: int = WINDOW, prior_seconds_per_token: float = PRIOR_SECONDS_PER_TOKEN) -> None:
        self._obs: deque[tuple[float, float]] = deque(maxlen=int(window))
        self._lock = threading.Lock()
        self._overhead = 0.0
        self._per_token = float(prior_seconds_per_token)

    def observe(self, padded_tokens: int, seconds: float) -> None:
        """Record one run of ``padded_tokens`` that took ``seconds`` and refit."""
        if padded_tokens <= 0 or not seconds >= 0:
            return
        with self._lock:
            self._obs.append((float(padded_tokens), float(seconds)))
            self._refit()

    def _refit(self) -> None:
        x = np.fromiter((o[0] for o in self._obs), dtype=np.float64)
        y = np.fromiter((o[1] for o in self._obs), dtype=np.float64)
        if len(x) >= 2 and np.ptp(x) > 0.25 * x.mean():
            slope, intercept = np.polyfit(x, y, 1)
            if slope > 0 and intercept >= 0:
                self._per_token, self._overhead = float(slope), float(intercept)
                return
        # Too few or too similar sizes for two parameters: proportional model.
        self._per_token, self._overhead = float(y.sum() / x.sum()), 0.0

    def estimate(self, padded_tokens: int) -> float:
        """Expected seconds of one run of ``padded_tokens`` padded tokens."""
        with self._lock:
            return self._overhead + self._per_token * max(0, int(padded_tokens))

    @property
    def seconds_per_token(self) -> float:
        with self._lock:
            return self._per_token

    @property
    def overhead_s(self) -> float:
        with self._lock:
            return self._overhead

    @property
    def observations(self) -> int:
        with self._lock:
            return len(self._obs)

    def fit_error(self) -> float:
        """Median relative error |estimate - measured| / measured over the kept runs (0 if none)."""
        with self._lock:
            if not self._obs:
                return 0.0
            errs = [abs(self._overhead + self._per_token * t - s) / s for t, s in self._obs if s > 0]
        return float(np.median(errs)) if errs else 0.0
