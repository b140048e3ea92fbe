"""Latency budgets: ``rerank(q, docs, budget_ms=B)`` ranks as well as it can within B ms.

Policy (the same one the scheduler applies to deadline requests):

* **Order.** Candidates are scored in the caller's order (the first stage's ranking), so what a
  budget leaves unscored is the tail of that ranking. They are tokenized in that order too, a few
  documents at a time (:data:`ENCODE_SLICE`; one when chunking), only as far as the next batch needs, so a budget
  that scores 10 of 1,000 candidates does not pay for tokenizing 1,000.
* **Batches.** Each onnxruntime run takes the next pairs in that order (all windows of a chunked
  document, in document order) while the run stays within ``batch_tokens`` padded tokens and
  ``max_batch_size`` pairs **and** its cost estimate still ends before the deadline. When not even
  the next pair fits, scoring stops: nothing is started that the estimate says would overrun.
* **Cost model.** :class:`crossrank.costmodel.CostModel` (seconds = overhead + slope x padded
  tokens, least squares over the last 64 runs), one per Reranker (``rr.cost``), fed by *every*
  run of that Reranker (budgeted or not) except the session's first (one-off allocations), so it
  follows the machine's current speed. It is calibrated at first use: the first ``budget_ms``
  call of a Reranker whose model holds fewer than two runs first runs ``Reranker.calibrate()``
  (a short and a full-budget run, twice) *before* its clock starts, so that call alone takes
  longer than its budget; call ``rr.calibrate()`` after loading to keep that out of every
  request. Should the model still hold fewer than two runs, batches hold one pair each (each
  measured) until it does.
* **Answer.** Scored candidates ranked by score (ties by input position), then the unscored
  ones in their given order with ``scored=False`` and a NaN score. A chunked document whose
  first windows were scored but not all of them counts as scored: its score aggregates the
  windows that were scored, and it is flagged ``doc_cut``.
* **Degrading.** Candidates are dropped from the tail; documents are not shortened on their own.
  The caller's lever is ``max_tokens_per_doc`` (shorter pairs: more candidates per ms).
* **Tolerance.** The call returns within ``B + max(TOLERANCE_MS, TOLERANCE_FRACTION x B)``
  milliseconds of *its own* time: the clock starts when the call starts (argument checks and
  tokenization count); the overrun is the last run's estimation error, the tokenization of one
  slice, and ranking (well under a millisecond). Tested over many calls with a session that
  sleeps a fixed time per padded token (tests/test_budget.py). Time the calling thread spends
  runnable but waiting for a CPU that other processes hold is outside any policy (on the shared
  2-core test machine 5 ms of work took up to 160 ms of wall time); the test reads it from
  ``/proc/self/task/<tid>/schedstat`` and allows it on top, and the bench reports plain p99
  wall-clock latency against B.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .costmodel import CostModel
from .errors import InvalidInputError

__all__ = ["TOLERANCE_MS", "TOLERANCE_FRACTION", "ENCODE_SLICE", "check_budget_ms", "tolerance_ms", "next_batch_end", "calibrated"]

TOLERANCE_MS = 10.0  # absolute part: a busy machine deschedules a thread for milliseconds
TOLERANCE_FRACTION = 0.10
# Documents tokenized at a time under a budget (~0.4 ms each for TREC DL passages on 2 busy cores).
ENCODE_SLICE = 4


def check_budget_ms(value: Any) -> float | None:
    """``budget_ms`` as float milliseconds, or None; anything else is an ``InvalidInputError``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"budget_ms must be None or a finite number of milliseconds > 0; got {value!r}")
    return float(value)


def tolerance_ms(budget_ms: float) -> float:
    """The stated overrun allowance of a call with this budget, milliseconds."""
    return max(TOLERANCE_MS, TOLERANCE_FRACTION * budget_ms)


def calibrated(cost: CostModel) -> bool:
    """True when the cost model holds enough real runs to size a batch (two)."""
    return cost.observations >= 2


def next_batch_end(
    lengths: np.ndarray,
    start: int,
    *,
    batch_tokens: int,
    max_batch_size: int,
    cost: CostModel,
    now: float,
    deadline: float,
) -> int:
    """End (exclusive) of the next run over ``lengths[start:]`` in their order: the longest prefix
    within ``batch_tokens``/``max_batch_size`` whose estimated run ends by ``deadline``
    (monotonic seconds); ``start`` when not even one pair fits. One pair at most while the cost
    model is not :func:`calibrated`."""
    most = max_batch_size if calibrated(cost) else 1
    end, width = start, 0
    n = len(lengths)
    while end < n and end - start < most:
        w = max(width, int(lengths[end]))
        count = end - start + 1
        if count > 1 and count * w > batch_tokens:
            break
        if now + cost.estimate(count * w) > deadline:
            break
        end += 1
        width = w
    return end
