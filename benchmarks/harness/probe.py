"""Start-up and memory of one system, measured in a fresh process.

Peak RSS is a per-process high-water mark: measured inside the benchmark process it would hold
every model loaded so far (and PyTorch's allocations would count against crossrank). So each system
gets its own interpreter, which reports:

* ``import_s``    importing the library (crossrank, sentence-transformers + torch, fastembed, flashrank);
* ``load_s``      ``Reranker.load`` / ``CrossEncoder(...)``;
* ``first_call_ms`` the first ``rerank`` on a fresh model (one request of ``first_count`` candidates);
* ``rss_loaded_mb`` resident memory after loading, ``peak_rss_mb`` the process's peak resident memory
  after one more ``rerank`` of ``peak_count`` candidates (``getrusage`` ``ru_maxrss``).

:func:`probe_in_subprocess` starts ``python -c`` with a bootstrap that imports the library under test
first (so ``import_s`` is a cold import), then calls :func:`main`, which prints one JSON object.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from crossrank.errors import BenchmarkError

__all__ = ["run_probe", "probe_in_subprocess"]


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


def _peak_rss_mb() -> float:
    """The process's resident-memory high-water mark.

    On Linux this is ``VmHWM`` from /proc/self/status, which starts afresh at ``exec``;
    ``getrusage().ru_maxrss`` would not do: it carries over the parent's peak from before the fork.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource  # noqa: PLC0415 - POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


_BOOTSTRAP = (
    "import sys, time; t0 = time.perf_counter(); import {module}; dt = time.perf_counter() - t0; "
    "from crossrank.bench.probe import main; sys.exit(main(sys.argv[1:], import_s=dt))"
)


def run_probe(spec: dict[str, Any], *, import_s: float | None = None) -> dict[str, Any]:
    from .data import latency_workload, load_dataset  # noqa: PLC0415
    from .systems import load_crossrank, load_peer_system  # noqa: PLC0415

    ds = load_dataset(spec["dataset"], spec.get("data_dir"))
    first = latency_workload(ds, spec["first_count"], 1, offset=spec.get("offset", 0))[0]
    peak = latency_workload(ds, spec["peak_count"], 1, offset=spec.get("offset", 0) + 1)[0]
    if spec["kind"] == "crossrank":
        system = load_crossrank(spec["model_dir"], spec["variant"], provider=spec.get("provider", "cpu"))
    else:
        system = load_peer_system(spec["name"], max_length=spec["max_length"], prepared=spec.get("prepared"),
                                  hf_model=spec.get("hf_model"), provider=spec.get("provider", "cpu"))
    rss_loaded = _rss_mb()
    t1 = time.perf_counter()
    system.rerank(*first)
    first_call_ms = (time.perf_counter() - t1) * 1e3
    system.rerank(*peak)
    return {
        "import_s": import_s,
        "load_s": system.load_s,
        "first_call_ms": first_call_ms,
        "first_count": spec["first_count"],
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_count": spec["peak_count"],
    }


def probe_in_subprocess(spec: dict[str, Any], *, timeout: float = 600.0) -> dict[str, Any]:
    """Run :func:`run_probe` in a fresh interpreter; a failure is a :class:`BenchmarkError`."""
    if spec["kind"] == "crossrank":
        module = "crossrank"
    else:  # the peer's own library (sentence_transformers, fastembed, flashrank) is the cold import
        from .peers import PEERS  # noqa: PLC0415

        module = PEERS[spec["name"]].modules[0]
    cmd = [sys.executable, "-c", _BOOTSTRAP.format(module=module), json.dumps(spec)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        raise BenchmarkError(f"start-up probe of {spec.get('name')} took over {timeout:.0f} s") from err
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise BenchmarkError(f"start-up probe of {spec.get('name')} failed: {' | '.join(tail)}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as err:
        raise BenchmarkError(f"start-up probe of {spec.get('name')} printed no result") from err


def main(argv: list[str], *, import_s: float | None = None) -> int:
    if len(argv) != 1:
        print("usage: probe SPEC_JSON", file=sys.stderr)
        return 2
    result = run_probe(json.loads(argv[0]), import_s=import_s)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0
