"""Length-sorted, token-budgeted batches: no pair is padded beyond its batch's longest pair.

:func:`plan_batches` sorts pairs by token length (ties by input position) and cuts the sorted
run greedily into batches such that ``batch_size * padded_length <= batch_tokens`` and
``batch_size <= max_batch_size``. A pair longer than ``batch_tokens`` on its own still gets a batch
of one. Peak activation memory is therefore bounded by the budget, whatever the candidate count,
except for attention scores, which grow with the square of the padded length: batch × heads ×
seq² × 4 bytes per layer (fp32), e.g. 4 GiB for one 8,192-token pair of a 16-head model; the
load-time ``max_length`` is what bounds them.
:func:`pad_batch` builds the padded arrays of one batch for exactly the graph's declared inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .checks import positive_int
from .tokenize import Encoded

__all__ = ["Batch", "BatchingOptions", "plan_batches", "pad_batch", "pad_rows"]


@dataclass(frozen=True)
class BatchingOptions:
    """How pairs are cut into onnxruntime runs, checked on construction.

    Fields (defaults: :data:`crossrank.reranker.DEFAULT_BATCHING` per provider):
        batch_tokens: padded-token budget of one run (batch size x padded length).
        max_batch_size: most pairs per run.

    Raises:
        InvalidInputError: a field that is not an int >= 1 (``np.int64`` is one; ``True`` is
            not), naming it.
    """

    batch_tokens: int
    max_batch_size: int

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "max_batch_size"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))  # stored as a plain int


@dataclass(frozen=True)
class Batch:
    """Row positions (into the encoded pairs) of one batch and the length it is padded to."""

    rows: np.ndarray  # int64 positions, shortest first
    padded_length: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), self.padded_length)


def plan_batches(lengths: Sequence[int] | np.ndarray, *, batch_tokens: int, max_batch_size: int) -> list[Batch]:
    """Cut pairs of the given token ``lengths`` into batches (see the module docstring)."""
    opts = BatchingOptions(batch_tokens=batch_tokens, max_batch_size=max_batch_size)  # the one rule for both
    batch_tokens, max_batch_size = opts.batch_tokens, opts.max_batch_size
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lens, kind="stable")
    batches: list[Batch] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        # Sorted ascending, so the batch's padded length is its last pair's length.
        while end < n and end - start < max_batch_size and (end - start + 1) * int(lens[order[end]]) <= batch_tokens:
            end += 1
        rows = order[start:end]
        batches.append(Batch(rows=rows, padded_length=int(lens[rows[-1]])))
        start = end
    return batches


def pad_batch(
    enc: Encoded,
    batch: Batch,
    *,
    input_names: Sequence[str],
    input_dtypes: Sequence[np.dtype],
    pad_token_id: int,
) -> dict[str, np.ndarray]:
    """Padded inputs of one batch, only the declared ``input_names`` in their declared dtypes."""
    return pad_rows([(enc, batch.rows)], input_names=input_names, input_dtypes=input_dtypes, pad_token_id=pad_token_id)


def pad_rows(
    parts: Sequence[tuple[Encoded, Sequence[int] | np.ndarray]],
    *,
    input_names: Sequence[str],
    input_dtypes: Sequence[np.dtype],
    pad_token_id: int,
) -> dict[str, np.ndarray]:
    """Padded inputs of rows drawn from one or more encodings, in the order given.

    ``parts`` is ``[(encoded, rows), ...]``; the batch is ``sum(len(rows))`` pairs padded on the
    right to the longest of them. :func:`pad_batch` (one request) and the cross-request scheduler
    (pairs of several requests in one run) both build their feeds here, so every caller feeds the
    graph the same way.
    """
    b = sum(len(rows) for _, rows in parts)
    width = max((int(enc.offsets[r + 1] - enc.offsets[r]) for enc, rows in parts for r in rows), default=0)
    ids = np.full((b, width), pad_token_id, dtype=np.int64)
    mask = np.zeros((b, width), dtype=np.int64)
    want_types = "token_type_ids" in input_names
    types = np.zeros((b, width), dtype=np.int64) if want_types else None
    out_row = 0
    for enc, rows in parts:
        for row in rows:
            a, e = int(enc.offsets[row]), int(enc.offsets[row + 1])
            n = e - a
            ids[out_row, :n] = enc.ids[a:e]
            mask[out_row, :n] = 1
            if types is not None:
                types[out_row, :n] = enc.type_ids[a:e]
            out_row += 1
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: np.ascontiguousarray(arrays[name], dtype=dt) for name, dt in zip(input_names, input_dtypes)}
