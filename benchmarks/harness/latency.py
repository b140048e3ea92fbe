"""End-to-end rerank latency against candidate count, every system in the same run.

How it is measured (and why):

* Requests are real queries with ``count`` real candidates each (:func:`.data.latency_workload`),
  the same requests for every system.
* For each count, each system first serves ``warmup`` requests untimed (lazy allocations, arena
  growth, thread-pool start; a second warm-up call is skipped once warming up took a quarter of
  ``max_seconds``). Then rounds run *interleaved*: in round ``r`` every system reranks the
  same request, in an order rotated by one each round. A machine shared with other work slows all
  systems alike, so the ratios between systems (the speedups, and what the gate relies on first)
  stay meaningful even when absolute figures are noisy.
* A system stops taking rounds at a count once it has ``min_rounds`` samples and has spent
  ``max_seconds`` there, so a slow peer at 500 candidates cannot make a run last an hour; the number
  of samples behind every figure is reported (``n``). With few samples p95/p99 approach the maximum.
* Timings are wall-clock ``time.perf_counter`` around the full ``rerank`` call.
* Throughput: pairs/s and tokens/s are totals over the timed calls divided by their total time;
  tokens are the real (unpadded, truncated) tokens of each pair under the model's tokenizer.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from crossrank.errors import BenchmarkError

from .systems import System

__all__ = ["LatencyPlan", "summarize", "measure_latency", "speedups", "cycling", "Request"]

Request = tuple[str, list[str]]


@dataclass(frozen=True)
class LatencyPlan:
    counts: tuple[int, ...]
    rounds: int = 30  # the most timed calls per (system, count)
    min_rounds: int = 3  # the fewest, whatever the time
    warmup: int = 2
    max_seconds: float = 8.0  # per (system, count): stop adding rounds past this (after min_rounds)

    def __post_init__(self) -> None:
        if not self.counts or any(c < 1 for c in self.counts):
            raise BenchmarkError(f"candidate counts must be positive integers, got {self.counts}")
        if self.rounds < 1 or self.min_rounds < 1 or self.warmup < 0:
            raise BenchmarkError("rounds and min_rounds must be >= 1 and warmup >= 0")


def summarize(samples_s: Sequence[float], *, pairs: int, tokens: Sequence[int] | None = None) -> dict:
    """p50/p95/p99 (linear interpolation), mean, min, max in ms; pairs/s and tokens/s."""
    x = np.asarray(samples_s, dtype=np.float64)
    if x.size == 0:
        raise BenchmarkError("no timing samples to summarize")
    total = float(x.sum())
    out = {
        "n": int(x.size),
        "p50_ms": float(np.percentile(x, 50) * 1e3),
        "p95_ms": float(np.percentile(x, 95) * 1e3),
        "p99_ms": float(np.percentile(x, 99) * 1e3),
        "mean_ms": float(x.mean() * 1e3),
        "min_ms": float(x.min() * 1e3),
        "max_ms": float(x.max() * 1e3),
        "pairs_per_s": pairs * x.size / total if total > 0 else None,
    }
    if tokens is not None:
        out["tokens_per_s"] = float(sum(tokens)) / total if total > 0 else None
        out["tokens_per_request"] = float(np.mean(tokens))
    out["samples_ms"] = [round(v * 1e3, 3) for v in x.tolist()]
    return out


def measure_latency(
    systems: Sequence[System],
    requests: dict[int, list[Request]],
    plan: LatencyPlan,
    *,
    tokens: dict[int, list[int]] | None = None,
    counts_for: Callable[[System], Sequence[int]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict]]:
    """Time ``system.rerank`` on ``requests[count]``; returns ``{system: {str(count): summary}}``.

    ``requests[count]`` must hold at least ``warmup + 1`` requests; round ``r`` uses request
    ``warmup + r`` (cycling). ``tokens[count][i]`` is the token total of request ``i``.
    ``counts_for(system)`` restricts a system to some counts (default: all).
    """
    results: dict[str, dict[str, dict]] = {s.name: {} for s in systems}
    say = progress or (lambda _m: None)
    for count in plan.counts:
        reqs = requests[count]
        if len(reqs) < plan.warmup + 1:
            raise BenchmarkError(f"need at least {plan.warmup + 1} requests for {count} candidates, got {len(reqs)}")
        active = [s for s in systems if counts_for is None or count in counts_for(s)]
        if not active:
            continue
        gc.collect()
        for s in active:
            t_warm = time.perf_counter()
            for i in range(plan.warmup):
                if i and time.perf_counter() - t_warm > plan.max_seconds / 4:
                    break  # one warm-up call of a slow system at a big count is enough
                say(f"{count:>4} candidates: warm-up {s.name}")
                s.rerank(*reqs[i % len(reqs)])
        samples: dict[str, list[float]] = {s.name: [] for s in active}
        used: dict[str, list[int]] = {s.name: [] for s in active}
        spent = {s.name: 0.0 for s in active}
        for r in range(plan.rounds):
            k = r % len(active)
            order = active[k:] + active[:k]
            live = [s for s in order if len(samples[s.name]) < plan.min_rounds or spent[s.name] < plan.max_seconds]
            if not live:
                break
            idx = (plan.warmup + r) % len(reqs)
            query, docs = reqs[idx]
            for s in live:
                t0 = time.perf_counter()
                s.rerank(query, docs)
                dt = time.perf_counter() - t0
                samples[s.name].append(dt)
                used[s.name].append(idx)
                spent[s.name] += dt
            say(f"{count:>4} candidates: round {r + 1}/{plan.rounds} ({', '.join(s.name for s in live)})")
        for s in active:
            toks = [tokens[count][i] for i in used[s.name]] if tokens is not None else None
            results[s.name][str(count)] = summarize(samples[s.name], pairs=count, tokens=toks)
    return results


def speedups(latency: dict[str, dict[str, dict]], *, stat: str = "p50_ms") -> dict[str, dict[str, dict[str, float]]]:
    """``{crossrank system: {peer: {count: peer median / crossrank median}}}`` for shared counts."""
    crs = [n for n in latency if n.startswith("crossrank-")]
    prs = [n for n in latency if not n.startswith("crossrank-")]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for c in crs:
        for p in prs:
            shared = sorted(set(latency[c]) & set(latency[p]), key=int)
            for count in shared:
                out.setdefault(c, {}).setdefault(p, {})[count] = latency[p][count][stat] / latency[c][count][stat]
    return out


def cycling(requests: Sequence[Request]) -> Callable[[], tuple[tuple[str, list[str]], dict]]:
    """A pytest-benchmark ``pedantic`` setup handing out ``requests`` in turn (a new query each round)."""
    if not requests:
        raise BenchmarkError("cycling() needs at least one request")
    state = {"i": 0}

    def setup() -> tuple[tuple[str, list[str]], dict]:
        q, docs = requests[state["i"] % len(requests)]
        state["i"] += 1
        return (q, docs), {}

    return setup
