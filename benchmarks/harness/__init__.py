"""crossrank.bench: how many candidates fit a latency budget, against what users would run instead.

    crossrank bench ./minilm --candidates 10,25,50,100,200,500 --budget-ms 50,100,200
    pytest benchmarks/ --benchmark-only

From Python::

    from crossrank.bench import BenchConfig, run_benchmark, gate, load_budgets
    results = run_benchmark(BenchConfig(model_dir=Path("./minilm")))
    gate(results, load_budgets()).raise_on_failure()

Needs the bench extra (``pip install "crossrank[bench]"``) for the peers and the plot. Names are
imported on first use, so ``import crossrank.bench`` (and registering ``crossrank bench``) is cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BenchConfig",
    "run_benchmark",
    "gate",
    "load_budgets",
    "budget_answers",
    "GateResult",
    "load_dataset",
    "ndcg_at_10",
    "mrr_at_10",
    "evaluate",
    "describe_machine",
    "write_outputs",
]

_WHERE = {
    "BenchConfig": "run",
    "run_benchmark": "run",
    "gate": "budgets",
    "load_budgets": "budgets",
    "budget_answers": "budgets",
    "GateResult": "budgets",
    "load_dataset": "data",
    "ndcg_at_10": "metrics",
    "mrr_at_10": "metrics",
    "evaluate": "metrics",
    "describe_machine": "machine",
    "write_outputs": "report",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
