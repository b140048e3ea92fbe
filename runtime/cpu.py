"""What CPU this process runs on: its model name and instruction-set flags, read once.

The one place crossrank reads CPU features: the graph cache keys optimized graphs on them
(:mod:`crossrank.graph_cache`), the benchmark harness records them with every figure
(``crossrank.bench.machine``), and the exporter names the int8 instruction-set target from them.

Source: Linux ``/proc/cpuinfo`` (x86 ``model name`` / ``flags``; ARM ``Hardware`` or
``CPU model`` / ``Features``). Elsewhere, or when the file cannot be read, the fallback is
``platform.processor()`` for the model and no flags (an empty set: "unknown", never a guess);
callers that need flags on macOS or Windows can add ``py-cpuinfo`` on top (the bench does).
"""
from __future__ import annotations

import platform
from functools import lru_cache

__all__ = ["cpu_flags", "cpu_model", "CPUINFO"]

CPUINFO = "/proc/cpuinfo"
_MODEL_KEYS = ("model name", "hardware", "cpu model")
_FLAG_KEYS = ("flags", "features")


@lru_cache(maxsize=1)
def _read_cpuinfo() -> tuple[str, frozenset[str]]:
    """(model, flags) from the first processor entry of /proc/cpuinfo; ("", empty) without it."""
    model, flags = "", frozenset[str]()
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in _MODEL_KEYS and not model:
                    model = value.strip()
                elif key in _FLAG_KEYS and not flags:
                    flags = frozenset(value.lower().split())
                if model and flags:  # every core repeats the same entry: the first one is enough
                    break
    except OSError:  # not Linux, or /proc not mounted (some sandboxes)
        pass
    return model, flags


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the OS reports, lower case (e.g. ``{"avx2", "fma", ...}``).

    Returns:
        The flags of the first processor in ``/proc/cpuinfo`` (x86 ``flags``, ARM
        ``Features``); an empty set where that file is absent or unreadable. Read once per
        process (cached).
    """
    return _read_cpuinfo()[1]


def cpu_model() -> str:
    """The CPU's model name, e.g. ``"AMD EPYC 7B13"``.

    Returns:
        ``model name`` (x86) or ``Hardware`` / ``CPU model`` (ARM) from ``/proc/cpuinfo``; else
        ``platform.processor()``; else ``"unknown"``. Read once per process (cached).
    """
    return _read_cpuinfo()[0] or platform.processor() or "unknown"
