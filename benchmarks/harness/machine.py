"""A description of the machine a benchmark ran on, stored with every figure.

CPU model, logical/physical cores and the cores this process may use, the instruction sets that
matter for inference (AVX2, AVX-512, VNNI, AMX, NEON...), memory, OS, Python, and the versions and
execution providers of onnxruntime (plus torch / sentence-transformers when installed).
"""
from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from importlib import metadata
from typing import Any

from crossrank.cpu import cpu_flags as runtime_cpu_flags, cpu_model

__all__ = ["describe_machine", "cpu_flags", "INTERESTING_FLAGS"]

# Flags that change which kernels onnxruntime / PyTorch can use.
INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd",
    "asimddp", "sve", "i8mm",
)


@lru_cache(maxsize=1)
def _cpu() -> tuple[str, tuple[str, ...]]:
    """(model, flags): the runtime's reader (crossrank.cpu), with py-cpuinfo (bench extra) filling
    in where /proc/cpuinfo does not exist (macOS, Windows)."""
    model, flags = cpu_model(), tuple(sorted(runtime_cpu_flags()))
    if not flags:  # no /proc/cpuinfo: py-cpuinfo's brand name beats platform.processor()
        try:
            import cpuinfo  # noqa: PLC0415

            info = cpuinfo.get_cpu_info()
            model = info.get("brand_raw") or model
            flags = tuple(sorted(str(f).lower() for f in info.get("flags", ())))
        except Exception:  # noqa: BLE001 - the description is best effort
            pass
    return model or "unknown", flags


def cpu_flags() -> tuple[str, ...]:
    """All CPU feature flags the OS reports (lower case)."""
    return _cpu()[1]


def dist_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``; None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _memory_bytes() -> int | None:
    try:
        import psutil  # noqa: PLC0415

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None


def _physical_cores() -> int | None:
    try:
        import psutil  # noqa: PLC0415

        return psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001
        return None


def describe_machine() -> dict[str, Any]:
    import onnxruntime as ort  # noqa: PLC0415

    model, _ = _cpu()
    flags = set(cpu_flags())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    versions = {
        name: dist_version(name)
        for name in ("crossrank", "onnxruntime", "onnxruntime-gpu", "tokenizers", "numpy", "torch",
                     "transformers", "sentence-transformers", "optimum", "optimum-onnx")
    }
    return {
        "cpu": model,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": usable,
        "isa": [f for f in INTERESTING_FLAGS if f in flags],
        "memory_bytes": _memory_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": list(ort.get_available_providers()),
        "versions": {k: v for k, v in versions.items() if v is not None},
    }


def isa_summary(machine: dict[str, Any]) -> str:
    """The most capable SIMD level, for profile names and table captions (e.g. ``avx2``)."""
    isa = set(machine.get("isa", ()))
    for level in ("amx_int8", "avx512_vnni", "avx512vnni", "avx512f", "avx_vnni", "avx2", "avx", "asimddp", "neon", "asimd"):
        if level in isa:
            return level
    return "generic"
