"""Load generator for reranking services on loopback: ``python -m crossrank.bench.load``.

Starts each system under test as a subprocess on a free port of **127.0.0.1** (never any other
address), waits until it answers its readiness route, sends a few warm-up requests, then measures

* **open loop**: Poisson arrivals at fixed offered rates (req/s); a request is sent at its
  scheduled time whether or not earlier ones have been answered, and its latency is counted from
  that scheduled time (no coordinated omission). Each rate is bounded by a request count
  (``--requests``) and a time limit (``--max-seconds``); requests still unanswered
  ``--timeout`` seconds after the last send are cancelled and counted as errors.
* **closed loop**: N concurrent clients, each sending its next request as soon as the previous
  one is answered, bounded by the same count and time limit.

Requests are real TREC DL 2020 queries with their own BM25 candidates (read with
:mod:`crossrank.bench.data`), of a fixed size (``--sizes 50``) or of mixed sizes drawn uniformly
(``--sizes 10-100``). The sequence is seeded and identical for every system and every load point;
the Poisson gaps are seeded per rate and identical for every system too.

Systems (``--systems``):

* ``crossrank``          ``crossrank serve MODEL_DIR --batching on`` (cross-request batching);
* ``crossrank-nobatch``  the same with ``--batching off`` (one request per inference run, FIFO);
* ``st-fastapi``         the usual hand-written FastAPI + sentence-transformers ``CrossEncoder``
  server (``benchmarks/serve_peers/st_server.py``) on the source Hugging Face folder;
* ``infinity``           infinity (``infinity_emb v2``) on the same Hugging Face folder, from its own
  virtualenv (``benchmarks/serve_peers/infinity_venv.sh``), in its fastest CPU configuration here
  (``infinity-optimum-int8``); ``infinity-torch``, ``infinity-optimum`` (ONNX fp32) and
  ``infinity-optimum-int8`` pick one explicitly (benchmarks/serve_peers/README.md). Skipped, with
  the reason, when its virtualenv is missing.

Systems are started one after the other, and all stay up for the run; load points are
**interleaved** (every system at rate r, then every system at the next rate), and after each point
the loader waits until the server's processes are idle again (a server that kept working on
requests the client gave up on would otherwise slow the next system down). By default a system
is not offered higher rates once its p99 passed ``--saturation-factor`` × the SLO (1 s).

Outputs in ``--out``: ``results.json`` (every figure, the machine, the settings), ``table.md`` and
``load.png`` (latency against offered load, and closed-loop latency against throughput). The
summary gives, per system, the **maximum sustainable throughput at p99 ≤ 1 s** (the highest
offered rate whose p99 is within the SLO with no error, and the throughput achieved there) and
the **low-load p50** (lowest offered rate), next to the in-process ``Reranker.rerank`` p50 on the
same requests when crossrank is measured.

    python -m crossrank.bench.load --smoke --systems st-fastapi --out /tmp/load-smoke
    python -m crossrank.bench.load --systems crossrank,crossrank-nobatch,st-fastapi,infinity \\
        --model-dir .cache/demo/minilm --hf-model .cache/demo/hf --sizes 50 --out bench-out/load
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from crossrank.errors import BenchmarkError

__all__ = ["SYSTEMS", "LoadSettings", "build_requests", "run_load", "summarize", "markdown", "plot_load",
           "write_outputs", "main"]

HOST = "127.0.0.1"  # the only address this module ever binds a server to or sends a request to
DEFAULT_SLO_MS = 1000.0
SECONDARY_SLOS_MS = (2000.0, 5000.0)  # also reported, for comparisons at equal p99
REPO = Path(__file__).resolve().parents[2]
PEERS_DIR = REPO / "benchmarks" / "serve_peers"
# ``infinity`` is the fastest of infinity's CPU configurations on this model (see
# benchmarks/serve_peers/README.md for the measurement).
INFINITY_DEFAULT = "infinity-optimum-int8"

SYSTEMS: dict[str, str] = {
    "crossrank": "crossrank serve (batching on)",
    "crossrank-nobatch": "crossrank serve (batching off)",
    "st-fastapi": "FastAPI + sentence-transformers",
    "infinity": "infinity (optimum engine, ONNX int8)",
    "infinity-torch": "infinity (torch engine)",
    "infinity-optimum": "infinity (optimum engine, ONNX fp32)",
    "infinity-optimum-int8": "infinity (optimum engine, ONNX int8)",
}
PEER_NAMES = ("st-fastapi", "infinity", "infinity-torch", "infinity-optimum", "infinity-optimum-int8")
INFINITY_ENGINES = {"infinity-torch": ("torch", None), "infinity-optimum": ("optimum", "fp32"),
                    "infinity-optimum-int8": ("optimum", "int8")}


# --------------------------------------------------------------------------- settings and requests


@dataclass
class LoadSettings:
    systems: tuple[str, ...] = ("crossrank", "crossrank-nobatch", "st-fastapi", "infinity")
    model_dir: str | None = None  # crossrank model folder (crossrank systems)
    hf_model: str | None = None  # Hugging Face folder (st-fastapi, infinity)
    # sized for 50-candidate requests on a 2-core CPU (one request takes ~0.3-2 s there)
    rates: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
    clients: tuple[int, ...] = (1, 4, 16)
    requests: int = 100  # per load point
    max_seconds: float = 90.0  # per load point: no request is sent later than this
    timeout: float = 30.0  # per request; also how long a point waits for its stragglers
    sizes: str = "50"  # "50" or "10-100"
    seed: int = 0
    threads: int | None = None  # per server; default: the cores this process may use
    warmup: int = 5
    top_n: int | None = None
    dataset: str = "trec-dl-2020"
    data_dir: str | None = None
    infinity_venv: str | None = None
    infinity_batch_size: int | None = None
    startup_timeout: float = 300.0
    slo_ms: float = DEFAULT_SLO_MS  # "sustainable": p99 within this, no error
    saturation_factor: float = 3.0  # stop raising the rate once p99 > factor × SLO (0: never)
    quiesce_seconds: float = 300.0  # after a point, wait (at most this) until the server is idle
    inprocess: bool = True
    smoke: bool = False
    modes: tuple[str, ...] = ("open", "closed")
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_threads(self) -> int:
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1


def smoke_settings(**overrides: Any) -> LoadSettings:
    """A few seconds per system: 2 rates × 10 requests, 2 client counts × 10 requests."""
    base = dict(rates=(1.0, 2.0), clients=(1, 4), requests=10, max_seconds=10.0, timeout=20.0, sizes="5-15",
                warmup=2, smoke=True, saturation_factor=0.0, quiesce_seconds=15.0, startup_timeout=240.0)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return LoadSettings(**base)


def parse_sizes(text: str) -> tuple[int, int]:
    text = str(text).strip()
    try:
        if "-" in text:
            a, b = (int(x) for x in text.split("-", 1))
        else:
            a = b = int(text)
    except ValueError:
        raise BenchmarkError(f"--sizes: expected N or A-B (e.g. 50 or 10-100), got {text!r}") from None
    if not 1 <= a <= b:
        raise BenchmarkError(f"--sizes: expected 1 <= A <= B, got {text!r}")
    return a, b


def build_requests(n: int, sizes: str, *, seed: int = 0, dataset: str = "trec-dl-2020",
                   data_dir: str | None = None) -> list[tuple[str, list[str]]]:
    """``n`` (query, documents) requests: query ``i`` of the set (cycling) with its own first-stage
    candidates, ``size_i`` of them (fixed, or uniform in ``A-B`` from a ``seed``-ed generator).

    Built with :func:`crossrank.bench.data.latency_workload`, so a size beyond a query's own
    candidates is topped up with the next queries' candidates, reproducibly.
    """
    from .data import latency_workload, load_dataset  # noqa: PLC0415

    ds = load_dataset(dataset, data_dir)
    lo, hi = parse_sizes(sizes)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = lo if lo == hi else rng.randint(lo, hi)
        out.extend(latency_workload(ds, size, 1, offset=i))
    return out


# --------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class Protocol:
    """How to talk to one kind of server: readiness route, rerank route, body, result list."""

    ready_path: str
    rerank_path: str
    body: Callable[[str, list[str], int | None], dict]
    results: Callable[[Any], list | None]


def _v1_body(query: str, docs: list[str], top_n: int | None) -> dict:
    b: dict[str, Any] = {"query": query, "documents": docs, "return_documents": False}
    if top_n is not None:
        b["top_n"] = top_n
    return b


def _results(payload: Any) -> list | None:
    r = payload.get("results") if isinstance(payload, dict) else None
    return r if isinstance(r, list) else None


V1 = Protocol("/ready", "/v1/rerank", _v1_body, _results)
# infinity 0.0.7x: POST /rerank {"query", "documents", "top_n", "return_documents", "model"?}
#   -> {"object": "rerank", "results": [{"relevance_score", "index", "document"}], "model", "usage", "id", "created"}
# It has no /ready; /health answers once the model is loaded (the port opens after start-up).
INFINITY = Protocol("/health", "/rerank", _v1_body, _results)


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def default_infinity_venv() -> Path:
    return Path(os.environ.get("CROSSRANK_INFINITY_VENV", REPO / ".cache" / "venv-infinity"))


def _folder_key(folder: Path) -> str:
    import hashlib  # noqa: PLC0415

    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def prepare_infinity_onnx(hf_model: Path, venv: Path, variant: str) -> Path:
    """The HF folder plus one ONNX file (``fp32`` or ``int8``), built once with infinity's own optimum
    (``benchmarks/serve_peers/infinity_onnx.py``) into ``<repo>/.cache/infinity-onnx``."""
    out = REPO / ".cache" / "infinity-onnx" / f"{hf_model.name}-{_folder_key(hf_model)}-{variant}"
    if not any(out.glob("*.onnx")):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env.pop("PYTHONPATH", None)
        r = subprocess.run([str(venv / "bin" / "python"), str(PEERS_DIR / "infinity_onnx.py"), str(hf_model), str(out),
                            "--variant", variant], env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise BenchmarkError(f"could not export an ONNX model for infinity's optimum engine:\n{r.stderr[-2000:]}")
    return out


@dataclass
class Launch:
    name: str
    argv: list[str]
    env: dict[str, str]
    protocol: Protocol
    info: dict[str, Any]
    cwd: str | None = None


def plan_system(name: str, s: LoadSettings, port: int) -> Launch:
    """The command that starts ``name`` on ``127.0.0.1:port``; :class:`BenchmarkError` (the skip
    reason) when it cannot be started here."""
    threads = s.resolved_threads()
    env = dict(os.environ)
    # every server gets the same thread count; torch and MKL/OpenMP read these at start-up
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    if name in ("crossrank", "crossrank-nobatch"):
        if not s.model_dir or not Path(s.model_dir).is_dir():
            raise BenchmarkError(f"no crossrank model folder (--model-dir {s.model_dir})")
        if find_spec("crossrank.serve") is None:
            raise BenchmarkError("crossrank serve is not in this installation (no crossrank.serve module)")
        argv = [sys.executable, "-m", "crossrank.cli", "serve", str(s.model_dir), "--host", HOST, "--port", str(port),
                "--threads", str(threads), "--batching", "on" if name == "crossrank" else "off"]
        return Launch(name, argv, env, V1, {"model": str(s.model_dir), "threads": threads})
    if name == "st-fastapi":
        script = PEERS_DIR / "st_server.py"
        if not script.is_file():
            raise BenchmarkError(f"{script} is missing (run from a source checkout)")
        if not s.hf_model or not (Path(s.hf_model) / "config.json").is_file():
            raise BenchmarkError(f"no Hugging Face model folder (--hf-model {s.hf_model})")
        if find_spec("sentence_transformers") is None or find_spec("fastapi") is None:
            raise BenchmarkError('st-fastapi needs sentence-transformers, fastapi and uvicorn: pip install "crossrank[bench]" fastapi uvicorn')
        argv = [sys.executable, str(script), str(s.hf_model), "--host", HOST, "--port", str(port), "--threads", str(threads)]
        return Launch(name, argv, env, V1, {"model": str(s.hf_model), "threads": threads})
    if name.startswith("infinity"):
        engine, onnx = INFINITY_ENGINES[INFINITY_DEFAULT if name == "infinity" else name]
        venv = Path(s.infinity_venv) if s.infinity_venv else default_infinity_venv()
        exe = venv / "bin" / "infinity_emb"
        if not exe.is_file():
            raise BenchmarkError(f"infinity is not installed ({exe} missing): run bash benchmarks/serve_peers/infinity_venv.sh")
        if not s.hf_model or not (Path(s.hf_model) / "config.json").is_file():
            raise BenchmarkError(f"no Hugging Face model folder (--hf-model {s.hf_model})")
        model, model_id, cwd = Path(s.hf_model), str(s.hf_model), None
        if onnx:
            # the optimum engine serves an ONNX file it finds in the folder (it does not export), and
            # with optimum 2 only when started inside that folder as "." (see infinity_onnx.py)
            model = prepare_infinity_onnx(model, venv, onnx)
            model_id, cwd = ".", str(model)
        env.update({"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
                    # where infinity would write an ORT-optimized graph: private, per configuration
                    "HF_HUB_CACHE": str(REPO / ".cache" / "infinity-hf-cache" / name)})
        env.pop("PYTHONPATH", None)
        argv = [str(exe), "v2", "--model-id", model_id, "--engine", engine, "--device", "cpu",
                "--host", HOST, "--port", str(port), "--no-model-warmup", "--log-level", "warning"]
        if s.infinity_batch_size:
            argv += ["--batch-size", str(s.infinity_batch_size)]
        return Launch(name, argv, env, INFINITY, {"model": str(model), "engine": engine, "onnx": onnx,
                                                  "threads": threads, "venv": str(venv)}, cwd=cwd)
    raise BenchmarkError(f"unknown system {name!r}; expected one of {', '.join(SYSTEMS)}")


class Server:
    """One system under test running as a subprocess on loopback (its own process group)."""

    def __init__(self, launch: Launch, port: int, log_path: Path) -> None:
        self.launch = launch
        self.port = port
        self.base_url = f"http://{HOST}:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, timeout: float) -> None:
        import httpx  # noqa: PLC0415

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.launch.argv, env=self.launch.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     cwd=self.launch.cwd or str(REPO))
        log.close()
        url = self.base_url + self.launch.protocol.ready_path
        with httpx.Client(trust_env=False, timeout=2.0) as c:
            while True:
                if self.proc.poll() is not None:
                    raise BenchmarkError(f"{self.launch.name} exited with code {self.proc.returncode} before it was ready; "
                                         f"log {self.log_path}:\n{self.log_tail()}")
                try:
                    if c.get(url).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - t0 > timeout:
                    self.stop()
                    raise BenchmarkError(f"{self.launch.name} was not ready after {timeout:.0f} s; log {self.log_path}:\n"
                                         f"{self.log_tail()}")
                time.sleep(0.25)
        self.startup_s = time.perf_counter() - t0

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _processes(self) -> list:
        import psutil  # noqa: PLC0415

        try:
            p = psutil.Process(self.proc.pid)
            return [p, *p.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_seconds(self) -> float:
        import psutil  # noqa: PLC0415

        total = 0.0
        for p in self._processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def quiesce(self, limit_s: float, window_s: float = 0.5, idle_fraction: float = 0.1) -> float:
        """Wait until the server uses under ``idle_fraction`` of a core over ``window_s``; seconds waited."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit_s and self.alive():
            a = self.cpu_seconds()
            time.sleep(window_s)
            if self.cpu_seconds() - a < idle_fraction * window_s:
                break
        return time.perf_counter() - t0

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group of the process we started
        except ProcessLookupError:
            return
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


# --------------------------------------------------------------------------- load


@dataclass
class Sample:
    scheduled: float  # when the request was due (open loop) or sent (closed loop)
    sent: float
    end: float
    status: int  # HTTP status; 0 for a transport error or timeout
    ok: bool
    pairs: int
    error: str | None = None


async def _one(client: Any, url: str, body: bytes, expect: int, pairs: int, scheduled: float,
               results: Callable[[Any], list | None], loop: asyncio.AbstractEventLoop) -> Sample:
    sent = loop.time()
    try:
        r = await client.post(url, content=body, headers={"content-type": "application/json"})
    except asyncio.CancelledError:
        return Sample(scheduled, sent, loop.time(), 0, False, pairs, "cancelled (unanswered at the end of the point)")
    except Exception as err:  # noqa: BLE001 - every failure is a counted error
        return Sample(scheduled, sent, loop.time(), 0, False, pairs, f"{type(err).__name__}: {err}"[:200])
    end = loop.time()
    if r.status_code != 200:
        return Sample(scheduled, sent, end, r.status_code, False, pairs, r.text[:200])
    try:
        res = results(r.json())
    except ValueError:
        res = None
    if res is None or len(res) != expect:
        return Sample(scheduled, sent, end, r.status_code, False, pairs,
                      f"malformed answer: {len(res) if res is not None else 'no'} results, expected {expect}")
    return Sample(scheduled, sent, end, 200, True, pairs)


def _client(timeout: float, connections: int) -> Any:
    import httpx  # noqa: PLC0415

    return httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(timeout),
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


def _expect(n_docs: int, top_n: int | None) -> int:
    return n_docs if top_n is None else max(0, min(top_n, n_docs))


def poisson_schedule(rate: float, n: int, max_seconds: float, seed: int) -> list[float]:
    """Send times (s from the start) of up to ``n`` Poisson arrivals at ``rate``/s within ``max_seconds``."""
    rng = random.Random(f"{seed}:{rate!r}")
    t, out = 0.0, []
    for _ in range(n):
        if t > max_seconds:
            break
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def open_loop(base_url: str, proto: Protocol, bodies: Sequence[bytes], sizes: Sequence[int], rate: float,
                    s: LoadSettings) -> tuple[list[Sample], float]:
    loop = asyncio.get_running_loop()
    times = poisson_schedule(rate, s.requests, s.max_seconds, s.seed)
    url = base_url + proto.rerank_path
    async with _client(s.timeout, max(64, len(times))) as client:
        t0 = loop.time() + 0.05
        tasks = []
        for i, at in enumerate(times):
            delay = t0 + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, url, bodies[i], _expect(sizes[i], s.top_n), sizes[i], t0 + at,
                                                  proto.results, loop)))
        done, pending = await asyncio.wait(tasks, timeout=s.timeout + 1.0) if tasks else (set(), set())
        for p in pending:
            p.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
    return [t.result() for t in tasks if t.done() and not t.cancelled()] + \
           [Sample(t0 + times[i], t0 + times[i], loop.time(), 0, False, sizes[i], "cancelled")
            for i, t in enumerate(tasks) if t.cancelled()], t0


async def closed_loop(base_url: str, proto: Protocol, bodies: Sequence[bytes], sizes: Sequence[int], n_clients: int,
                      s: LoadSettings) -> tuple[list[Sample], float]:
    loop = asyncio.get_running_loop()
    url = base_url + proto.rerank_path
    samples: list[Sample] = []
    counter = iter(range(s.requests))
    async with _client(s.timeout, n_clients) as client:
        t0 = loop.time()
        stop_at = t0 + s.max_seconds

        async def worker() -> None:
            for i in counter:
                if loop.time() > stop_at:
                    return
                now = loop.time()
                samples.append(await _one(client, url, bodies[i], _expect(sizes[i], s.top_n), sizes[i], now,
                                          proto.results, loop))

        await asyncio.gather(*(worker() for _ in range(n_clients)))
    return samples, t0


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    f, c = math.floor(k), math.ceil(k)
    return v[f] if f == c else v[f] + (v[c] - v[f]) * (k - f)


def point_stats(samples: Sequence[Sample], t0: float, *, offered: float | None = None, clients: int | None = None,
                cpu_s: float | None = None) -> dict[str, Any]:
    ok = [x for x in samples if x.ok]
    lat = [(x.end - x.scheduled) * 1000 for x in ok]
    lag = [(x.sent - x.scheduled) * 1000 for x in samples]
    last = max((x.end for x in samples), default=t0)
    window = max(last - t0, 1e-9)
    statuses: dict[str, int] = {}
    for x in samples:
        if not x.ok:
            statuses[str(x.status)] = statuses.get(str(x.status), 0) + 1
    errors = [x.error for x in samples if not x.ok and x.error]
    send_span = (max(x.scheduled for x in samples) - t0) if len(samples) > 1 else None
    d: dict[str, Any] = {
        "issued": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "rejected_429": statuses.get("429", 0),
        "error_statuses": statuses,
        "first_errors": errors[:3],
        "duration_s": round(window, 4),
        "throughput_rps": len(ok) / window,
        "pairs_per_s": sum(x.pairs for x in ok) / window,
        "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "p99_ms": _pct(lat, 99),
        "mean_ms": sum(lat) / len(lat) if lat else None, "max_ms": max(lat) if lat else None,
        "client_lag_p99_ms": _pct(lag, 99),
        "pairs": sum(x.pairs for x in ok),
    }
    if offered is not None:
        d["offered_rps"] = offered
        d["sent_rate_rps"] = (len(samples) - 1) / send_span if send_span else None
    if clients is not None:
        d["clients"] = clients
    if cpu_s is not None:
        d["server_cpu_s"] = round(cpu_s, 3)
        d["server_cpu_ms_per_request"] = 1000 * cpu_s / len(ok) if ok else None
    return d


# --------------------------------------------------------------------------- the run


def _inprocess_reference(s: LoadSettings, reqs: Sequence[tuple[str, list[str]]]) -> dict[str, Any]:
    """p50 of crossrank's in-process ``Reranker.rerank`` on the first requests, serially (same threads)."""
    from crossrank import Reranker  # noqa: PLC0415

    rr = Reranker.load(s.model_dir, threads=s.resolved_threads())
    n = min(len(reqs), 20 if s.smoke else 100)
    for q, d in reqs[: min(3, n)]:
        rr.rerank(q, d)
    lat = []
    for q, d in reqs[:n]:
        t = time.perf_counter()
        rr.rerank(q, d)
        lat.append((time.perf_counter() - t) * 1000)
    return {"n": n, "variant": rr.variant, "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "p99_ms": _pct(lat, 99)}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def time_bound_s(s: LoadSettings) -> float:
    """An upper bound on the measuring time (start-up, warm-up and quiescing not counted): per system,
    every open-loop rate sends for at most min(requests / rate, max_seconds) (+ Poisson slack) and
    every closed-loop point for max_seconds, each followed by at most ``timeout`` of draining."""
    per = 0.0
    if "open" in s.modes:
        per += sum(min(1.5 * s.requests / r, s.max_seconds) + s.timeout for r in s.rates)
    if "closed" in s.modes:
        per += len(s.clients) * (s.max_seconds + s.timeout)
    return per * len(s.systems)


def run_load(s: LoadSettings, out_dir: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start every system, measure every load point (interleaved), stop them; returns the results."""
    from .machine import describe_machine  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"load test of {', '.join(s.systems)} on {HOST}: at most {time_bound_s(s) / 60:.0f} min of load "
        f"(plus start-up, warm-up and waiting for idle servers)")
    n_req = max(s.requests, s.warmup, 1)
    reqs = build_requests(n_req, s.sizes, seed=s.seed, dataset=s.dataset, data_dir=s.data_dir)
    sizes = [len(d) for _, d in reqs]
    bodies = [json.dumps(V1.body(q, d, s.top_n)).encode() for q, d in reqs]  # same body for both protocols
    results: dict[str, Any] = {
        "kind": "crossrank-load",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "load_average": {"start": _loadavg(), "usable_cores": s.resolved_threads()},
        "settings": {k: v for k, v in vars(s).items() if k != "extra"} | {"host": HOST,
                                                                         "threads": s.resolved_threads(),
                                                                         "mean_size": sum(sizes) / len(sizes)},
        "labels": {},
        "systems": {},
    }
    servers: dict[str, Server] = {}
    try:
        for name in s.systems:
            entry: dict[str, Any] = {"label": SYSTEMS.get(name, name), "open": [], "closed": []}
            results["labels"][name] = entry["label"]
            results["systems"][name] = entry
            port = free_port()
            try:
                launch = plan_system(name, s, port)
            except BenchmarkError as err:
                entry["skipped"] = str(err)
                log(f"[{name}] skipped: {err}")
                continue
            entry.update(command=launch.argv, info=launch.info)
            srv = Server(launch, port, out / "logs" / f"{name}.log")
            log(f"[{name}] starting on {srv.base_url}: {' '.join(launch.argv)}")
            try:
                srv.start(s.startup_timeout)
            except BenchmarkError as err:
                entry["skipped"] = str(err)
                log(f"[{name}] failed to start: {err}")
                continue
            entry["startup_s"] = round(srv.startup_s or 0.0, 2)
            warm = asyncio.run(_warmup(srv, bodies, sizes, s))
            if warm:
                entry["skipped"] = f"warm-up failed: {warm}"
                log(f"[{name}] warm-up failed: {warm}")
                srv.stop()
                continue
            servers[name] = srv
            entry["seed_example"] = asyncio.run(_seed_probe(srv))
            log(f"[{name}] ready in {entry['startup_s']:.1f} s; seed example scores {entry['seed_example'].get('scores')}")

        if s.inprocess and any(n.startswith("crossrank") for n in servers):
            try:
                results["inprocess"] = _inprocess_reference(s, reqs)
            except Exception as err:  # noqa: BLE001 - a reference figure, not the run
                results["inprocess"] = {"error": f"{type(err).__name__}: {err}"}

        saturated: dict[str, float] = {}
        if "open" in s.modes:
            for rate in s.rates:
                for name, srv in servers.items():
                    entry = results["systems"][name]
                    if name in saturated:
                        entry["open"].append({"offered_rps": rate, "skipped": f"saturated at {saturated[name]:g} req/s"})
                        continue
                    d = _measure(srv, s, lambda: open_loop(srv.base_url, srv.launch.protocol, bodies, sizes, rate, s),
                                 offered=rate)
                    entry["open"].append(d)
                    log(f"[{name}] open {rate:g} req/s: {_brief(d)}")
                    if s.saturation_factor and (d["p99_ms"] is None or d["p99_ms"] > s.saturation_factor * s.slo_ms):
                        saturated[name] = rate
        if "closed" in s.modes:
            for n_clients in s.clients:
                for name, srv in servers.items():
                    d = _measure(srv, s, lambda: closed_loop(srv.base_url, srv.launch.protocol, bodies, sizes,
                                                             n_clients, s), clients=n_clients)
                    results["systems"][name]["closed"].append(d)
                    log(f"[{name}] closed {n_clients} clients: {_brief(d)}")
    finally:
        for name, srv in servers.items():
            alive = srv.alive()
            srv.stop()
            if not alive:
                results["systems"][name]["crashed"] = f"exited with {srv.proc.returncode if srv.proc else '?'} during the run"
    results["load_average"]["end"] = _loadavg()
    results["summary"] = summarize(results)
    return results


async def _warmup(srv: Server, bodies: Sequence[bytes], sizes: Sequence[int], s: LoadSettings) -> str | None:
    loop = asyncio.get_running_loop()
    async with _client(max(s.timeout, 60.0), 1) as client:
        for i in range(max(s.warmup, 1)):
            x = await _one(client, srv.base_url + srv.launch.protocol.rerank_path, bodies[i], _expect(sizes[i], s.top_n),
                           sizes[i], loop.time(), srv.launch.protocol.results, loop)
            if not x.ok:
                return f"HTTP {x.status}: {x.error}"
    return None


SEED_QUERY = "How do I export my data?"
SEED_DOCS = ["You can export data as CSV or JSON from the Settings page.",
             "Our platform supports multiple file formats for import operations.",
             "Billing invoices can be downloaded from the account portal."]


async def _seed_probe(srv: Server) -> dict[str, Any]:
    """The README's seed example through the server: scores in input order (a sanity check that every
    system serves the same model: the export document must come first)."""
    try:
        async with _client(60.0, 1) as client:
            r = await client.post(srv.base_url + srv.launch.protocol.rerank_path,
                                  json=V1.body(SEED_QUERY, SEED_DOCS, None))
            res = srv.launch.protocol.results(r.json()) or []
        scores = [None] * len(SEED_DOCS)
        for x in res:
            scores[int(x["index"])] = round(float(x["relevance_score"]), 4)
        return {"scores": scores, "top_index": int(res[0]["index"]) if res else None}
    except Exception as err:  # noqa: BLE001 - informative only
        return {"error": f"{type(err).__name__}: {err}"[:200]}


def _measure(srv: Server, s: LoadSettings, make: Callable[[], Any], **kw: Any) -> dict[str, Any]:
    if not srv.alive():
        return {**kw, "skipped": "server not running", "errors": None}
    srv.quiesce(s.quiesce_seconds)
    c0 = srv.cpu_seconds()
    la = _loadavg()
    samples, t0 = asyncio.run(make())
    d = point_stats(samples, t0, cpu_s=srv.cpu_seconds() - c0, **kw)
    d["loadavg_1m"] = la[0] if la else None
    d["quiesce_after_s"] = round(srv.quiesce(s.quiesce_seconds), 2)  # time the server kept working after the point
    return d


def _brief(d: Mapping[str, Any]) -> str:
    def ms(x: Any) -> str:
        return "–" if x is None else f"{x:.0f}"

    if d.get("skipped"):
        return f"skipped: {d['skipped']}"
    return (f"{d['ok']}/{d['issued']} ok, {d['throughput_rps']:.2f} req/s, {d['pairs_per_s']:.0f} pairs/s, "
            f"p50 {ms(d['p50_ms'])} p95 {ms(d['p95_ms'])} p99 {ms(d['p99_ms'])} ms"
            + (f", {d['errors']} errors {d['error_statuses']}" if d["errors"] else ""))


# --------------------------------------------------------------------------- summary and outputs


def _sustainable(point: Mapping[str, Any], slo_ms: float) -> bool:
    return (not point.get("skipped") and not point.get("errors") and point.get("p99_ms") is not None
            and point["p99_ms"] <= slo_ms)


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    """Per system: max sustainable throughput at p99 ≤ 1 s, low-load p50, and p99 where st-fastapi saturates."""
    systems = results.get("systems", {})
    slo = float(results.get("settings", {}).get("slo_ms") or DEFAULT_SLO_MS)
    summary: dict[str, Any] = {}
    # where the hand-written server saturates: its first offered rate whose p99 is over the SLO or that
    # it could not keep up with (achieved < 90% of offered)
    ref_sat = None
    for p in systems.get("st-fastapi", {}).get("open", []):
        if p.get("skipped"):
            ref_sat = ref_sat or p["offered_rps"]
            break
        if not _sustainable(p, slo) or p["throughput_rps"] < 0.9 * p["offered_rps"]:
            ref_sat = p["offered_rps"]
            break
    for name, e in systems.items():
        if e.get("skipped"):
            summary[name] = {"skipped": e["skipped"]}
            continue
        pts = [p for p in e.get("open", []) if not p.get("skipped")]
        ok = [p for p in pts if _sustainable(p, slo)]
        best = max(ok, key=lambda p: p["offered_rps"]) if ok else None
        low = min(pts, key=lambda p: p["offered_rps"]) if pts else None
        closed = [p for p in e.get("closed", []) if not p.get("skipped")]
        one = next((p for p in closed if p.get("clients") == 1), None)
        at_ref = next((p for p in pts if ref_sat is not None and p["offered_rps"] == ref_sat), None)
        summary[name] = {
            "max_sustainable_offered_rps": best["offered_rps"] if best else None,
            "max_sustainable_throughput_rps": best["throughput_rps"] if best else None,
            "max_sustainable_pairs_per_s": best["pairs_per_s"] if best else None,
            "p99_at_max_sustainable_ms": best["p99_ms"] if best else None,
            "low_load_offered_rps": low["offered_rps"] if low else None,
            "low_load_p50_ms": low["p50_ms"] if low else None,
            "closed_1_client_p50_ms": one["p50_ms"] if one else None,
            "max_closed_throughput_rps": max((p["throughput_rps"] for p in closed), default=None),
            "st_fastapi_saturation_rps": ref_sat,
            "p99_at_st_fastapi_saturation_ms": at_ref["p99_ms"] if at_ref else None,
            "errors": sum((p.get("errors") or 0) for p in pts + closed),
            "rejected_429": sum((p.get("rejected_429") or 0) for p in pts + closed),
        }
        if best and not any(p["offered_rps"] > best["offered_rps"] for p in pts):
            summary[name]["note"] = "sustained every offered rate: the maximum is at least this (offer higher rates)"
        # the same at other p99 objectives, for comparisons at equal p99 where a system never meets the main one
        by_slo = {}
        for o in sorted({slo, *SECONDARY_SLOS_MS}):
            good = [p for p in pts if _sustainable(p, o)]
            b = max(good, key=lambda p: p["offered_rps"]) if good else None
            by_slo[str(int(o))] = {"offered_rps": b["offered_rps"], "throughput_rps": b["throughput_rps"],
                                   "p99_ms": b["p99_ms"]} if b else None
        summary[name]["sustainable_by_slo_ms"] = by_slo
    for peer in PEER_NAMES:
        ref = summary.get(peer, {}).get("max_sustainable_throughput_rps")
        if ref:
            for name, v in summary.items():
                if name != peer and v.get("max_sustainable_throughput_rps"):
                    v[f"throughput_vs_{peer}"] = v["max_sustainable_throughput_rps"] / ref
    return summary


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown(results: Mapping[str, Any]) -> str:
    from .report import machine_line  # noqa: PLC0415

    st = results.get("settings", {})
    labels = results.get("labels", {})
    systems = results.get("systems", {})
    out = [f"## crossrank serve load test ({results.get('created', '')})", ""]
    out.append(f"**Machine:** {machine_line(results.get('machine', {}))}")
    out.append("")
    la = results.get("load_average") or {}
    if la.get("start") and la.get("end"):
        cores = la.get("usable_cores") or 1
        busy = max(la["start"][0], la["end"][0])
        out.append(f"**Load:** 1-minute load average {la['start'][0]:.1f} at the start, {la['end'][0]:.1f} at the end on "
                   f"{cores} cores (the load generator itself shares them)"
                   + (" — other processes were competing for the CPU: figures are inflated." if busy > 1.5 * cores + 1 else "."))
        out.append("")
    lo, hi = parse_sizes(st.get("sizes", "50"))
    size_txt = f"{lo} candidates" if lo == hi else f"{lo}–{hi} candidates (uniform, mean {st.get('mean_size', 0):.1f})"
    out.append(f"**Workload:** {st.get('dataset')} queries with their own BM25 candidates, {size_txt} per request; the "
               f"same seeded sequence (seed {st.get('seed')}) for every system; every server on {st.get('host')} with "
               f"{st.get('threads')} threads; {st.get('warmup')} warm-up requests; per load point at most "
               f"{st.get('requests')} requests and {st.get('max_seconds'):g} s of sending, request timeout "
               f"{st.get('timeout'):g} s. Open loop: Poisson arrivals, latency from the scheduled send time. "
               f"Closed loop: N clients back to back."
               + (" **Smoke mode: tiny counts, figures indicative only.**" if st.get("smoke") else ""))
    out.append("")
    skipped = {n: e["skipped"] for n, e in systems.items() if e.get("skipped")}
    for n, why in skipped.items():
        out.append(f"- **{labels.get(n, n)}** not measured: {why.splitlines()[0]}")
    if skipped:
        out.append("")
    summary = results.get("summary", {})
    measured = [n for n in systems if n not in skipped]
    seeds = {n: systems[n].get("seed_example") for n in measured if systems[n].get("seed_example")}
    if seeds:
        out.append("**Seed example** (\"How do I export my data?\", 3 documents; scores in input order, the export "
                   "document is index 0): " + "; ".join(
                       f"{labels.get(n, n)}: " + (", ".join(_f(x, 4) for x in v["scores"]) if v.get("scores") else v.get("error", "?"))
                       for n, v in seeds.items()))
        out.append("")
    if measured:
        out.append(f"### Summary (SLO: p99 ≤ {float(st.get('slo_ms') or DEFAULT_SLO_MS):.0f} ms)")
        out.append("")
        ref_sat = next((v.get("st_fastapi_saturation_rps") for v in summary.values() if v.get("st_fastapi_saturation_rps")), None)
        head = ["system", "max sustainable offered req/s", "throughput there req/s", "pairs/s", "p99 there ms",
                "low-load p50 ms", "1-client p50 ms", "best closed-loop req/s"]
        if ref_sat:
            head.append(f"p99 at {ref_sat:g} req/s (st-fastapi saturates) ms")
        peers = [p for p in PEER_NAMES
                 if summary.get(p, {}).get("max_sustainable_throughput_rps")]
        head += [f"× {p}" for p in peers]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for n in measured:
            v = summary.get(n, {})
            row = [labels.get(n, n), _f(v.get("max_sustainable_offered_rps"), 1)
                   + (" (all)" if v.get("note") else ""), _f(v.get("max_sustainable_throughput_rps"), 2),
                   _f(v.get("max_sustainable_pairs_per_s"), 0), _f(v.get("p99_at_max_sustainable_ms")),
                   _f(v.get("low_load_p50_ms")), _f(v.get("closed_1_client_p50_ms")), _f(v.get("max_closed_throughput_rps"), 2)]
            if ref_sat:
                row.append(_f(v.get("p99_at_st_fastapi_saturation_ms")))
            row += ["–" if n == p or not v.get(f"throughput_vs_{p}") else f"{v[f'throughput_vs_{p}']:.2f}×" for p in peers]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        out.append("Max sustainable: the highest offered rate whose p99 is within the SLO with no error (\"(all)\": every "
                   "offered rate was sustained, so the true maximum is higher). × columns: ratio of those throughputs.")
        slos = sorted({int(k) for v in summary.values() for k in (v.get("sustainable_by_slo_ms") or {})})
        if slos:
            out.append("")
            out.append("Max sustainable throughput (req/s, at the highest offered rate that met it) by p99 objective:")
            out.append("")
            out.append("| system | " + " | ".join(f"p99 ≤ {o:,} ms" for o in slos) + " |")
            out.append("|---|" + "---|" * len(slos))
            for n in measured:
                by = summary.get(n, {}).get("sustainable_by_slo_ms") or {}
                out.append(f"| {labels.get(n, n)} | " + " | ".join(
                    "none" if not by.get(str(o)) else f"{by[str(o)]['throughput_rps']:.2f} (offered {by[str(o)]['offered_rps']:g})"
                    for o in slos) + " |")
        ip = results.get("inprocess")
        if ip and ip.get("p50_ms") is not None:
            out.append("")
            out.append(f"In-process reference: crossrank `Reranker.rerank` ({ip.get('variant')}) on the same requests, serially: "
                       f"p50 {_f(ip['p50_ms'])} ms, p95 {_f(ip['p95_ms'])} ms ({ip['n']} calls).")
        elif ip and ip.get("error"):
            out.append("")
            out.append(f"In-process reference failed: {ip['error']}")
        out.append("")
    for mode, title, key in (("open", "Open loop (Poisson arrivals)", "offered_rps"), ("closed", "Closed loop", "clients")):
        rows = [(n, p) for n in measured for p in systems[n].get(mode, [])]
        if not rows:
            continue
        out.append(f"### {title}")
        out.append("")
        head = ["system", "offered req/s" if mode == "open" else "clients", "ok/sent", "req/s", "pairs/s", "p50 ms",
                "p95 ms", "p99 ms", "errors (429)", "server CPU ms/req"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for n, p in sorted(rows, key=lambda r: (measured.index(r[0]), r[1].get(key) or 0)):
            if p.get("skipped"):
                out.append(f"| {labels.get(n, n)} | {_f(p.get(key))} | skipped: {p['skipped']} |" + " |" * (len(head) - 3))
                continue
            out.append(f"| {labels.get(n, n)} | {_f(p.get(key))} | {p['ok']}/{p['issued']} | {_f(p['throughput_rps'], 2)} | "
                       f"{_f(p['pairs_per_s'], 0)} | {_f(p['p50_ms'])} | {_f(p['p95_ms'])} | {_f(p['p99_ms'])} | "
                       f"{p['errors']} ({p['rejected_429']}) | {_f(p.get('server_cpu_ms_per_request'), 0)} |")
        out.append("")
    return "\n".join(out) + "\n"


def plot_load(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """Left: p50 (dashed) and p99 (solid) against offered rate; middle: achieved against offered
    throughput (the diagonal: keeping up); right: closed loop, latency against throughput."""
    systems = {n: e for n, e in results.get("systems", {}).items() if not e.get("skipped")}
    if not any(e.get("open") or e.get("closed") for e in systems.values()):
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels = results.get("labels", {})
    fig, (a1, a3, a2) = plt.subplots(1, 3, figsize=(17, 5.5), dpi=110, gridspec_kw={"width_ratios": [4, 3, 4]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (n, e) in enumerate(systems.items()):
        color = colors[i % len(colors)]
        width = 2.2 if n.startswith("crossrank") else 1.3
        pts = [p for p in e.get("open", []) if not p.get("skipped") and p.get("p99_ms") is not None]
        if pts:
            x = [p["offered_rps"] for p in pts]
            a1.plot(x, [p["p99_ms"] for p in pts], "-o", color=color, lw=width, ms=3, label=f"{labels.get(n, n)} p99")
            a1.plot(x, [p["p50_ms"] for p in pts], "--", color=color, lw=width * 0.7, label=f"{labels.get(n, n)} p50")
            a3.plot(x, [p["throughput_rps"] for p in pts], "-o", color=color, lw=width, ms=3, label=labels.get(n, n))
        pts = [p for p in e.get("closed", []) if not p.get("skipped") and p.get("p99_ms") is not None]
        if pts:
            x = [p["throughput_rps"] for p in pts]
            a2.plot(x, [p["p99_ms"] for p in pts], "-o", color=color, lw=width, ms=3, label=f"{labels.get(n, n)} p99")
            a2.plot(x, [p["p50_ms"] for p in pts], "--", color=color, lw=width * 0.7, label=f"{labels.get(n, n)} p50")
            for p in pts:
                a2.annotate(str(p["clients"]), xy=(p["throughput_rps"], p["p99_ms"]), xytext=(2, 2),
                            textcoords="offset points", fontsize=6, color=color)
    slo = float(results.get("settings", {}).get("slo_ms") or DEFAULT_SLO_MS)
    for ax in (a1, a2):
        ax.axhline(slo, color="0.35", ls=":", lw=1)
        ax.annotate(f"p99 SLO {slo:.0f} ms", xy=(0.0, slo), xycoords=("axes fraction", "data"),
                    xytext=(4, 3), textcoords="offset points", fontsize=8, color="0.3")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_ylabel("latency (ms)")
    rates = [p["offered_rps"] for e in systems.values() for p in e.get("open", []) if p.get("offered_rps")]
    if rates:
        a3.plot([0, max(rates)], [0, max(rates)], ":", color="0.5", lw=1, label="offered")
    a3.set_xlabel("offered load (req/s)")
    a3.set_ylabel("achieved throughput (req/s)")
    a3.set_title("open loop: throughput vs offered load", fontsize=10)
    a3.grid(True, alpha=0.25)
    a3.legend(fontsize=7, loc="upper left")
    a1.set_xlabel("offered load (req/s, Poisson)")
    a1.set_title("open loop: latency vs offered load", fontsize=10)
    a2.set_xlabel("achieved throughput (req/s); labels: concurrent clients")
    a2.set_title("closed loop: latency vs throughput", fontsize=10)
    m, st = results.get("machine", {}), results.get("settings", {})
    fig.suptitle(f"rerank service load test · {st.get('dataset')} · sizes {st.get('sizes')} · {m.get('cpu')}, "
                 f"{m.get('usable_cores')} cores" + (" · SMOKE" if st.get("smoke") else ""), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, table.md and load.png into ``out_dir``; returns their paths."""
    from .report import _atomic_write  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "table": out / "table.md", "plot": out / "load.png"}
    _atomic_write(paths["json"], json.dumps(results, indent=2) + "\n")
    _atomic_write(paths["table"], markdown(results))
    if plot_load(results, paths["plot"]) is None:
        paths.pop("plot")
    return paths


# --------------------------------------------------------------------------- CLI


def _floats(text: str) -> tuple[float, ...]:
    try:
        v = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not v or any(x <= 0 for x in v):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return v


def _ints(text: str) -> tuple[int, ...]:
    v = _floats(text)
    if any(x != int(x) for x in v):
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}")
    return tuple(int(x) for x in v)


def _names(text: str) -> tuple[str, ...]:
    v = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in v if x not in SYSTEMS]
    if not v or bad:
        raise argparse.ArgumentTypeError(f"unknown system(s) {bad}; expected some of {', '.join(SYSTEMS)}")
    return v


def _default_model_paths() -> tuple[str | None, str | None]:
    """The folders ``scripts/demo.sh`` builds: ``.cache/demo/minilm`` (crossrank) and ``.cache/demo/hf``."""
    d = REPO / ".cache" / "demo"
    return (str(d / "minilm") if (d / "minilm").is_dir() else None,
            str(d / "hf") if (d / "hf" / "config.json").is_file() else None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m crossrank.bench.load",
                                description="Load-test reranking services on loopback (open and closed loop).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example (full comparison):\n  python -m crossrank.bench.load --model-dir .cache/demo/minilm "
                                       "--hf-model .cache/demo/hf --sizes 50 --out bench-out/load")
    p.add_argument("--systems", type=_names, default=None,
                   help=f"comma-separated, of {', '.join(SYSTEMS)} (default crossrank,crossrank-nobatch,st-fastapi,infinity)")
    p.add_argument("--model-dir", help="crossrank model folder (default: .cache/demo/minilm)")
    p.add_argument("--hf-model", help="Hugging Face folder for st-fastapi and infinity (default: .cache/demo/hf)")
    p.add_argument("--rates", type=_floats, help="open-loop offered rates, req/s (default 0.25,0.5,1,1.5,2,3,4)")
    p.add_argument("--clients", type=_ints, help="closed-loop client counts (default 1,4,16)")
    p.add_argument("--mode", choices=("both", "open", "closed"), default="both")
    p.add_argument("--requests", type=int, help="requests per load point (default 100)")
    p.add_argument("--max-seconds", type=float, help="sending time limit per load point, s (default 90)")
    p.add_argument("--timeout", type=float, help="per-request timeout, s (default 30)")
    p.add_argument("--sizes", help="candidates per request: N or A-B uniform (default 50)")
    p.add_argument("--top-n", type=int, help="top_n sent with every request (default: none, all results)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, help="threads per server (default: the usable cores)")
    p.add_argument("--warmup", type=int, help="warm-up requests per system (default 5)")
    p.add_argument("--slo-ms", type=float, help="p99 latency objective for 'max sustainable throughput' (default 1000)")
    p.add_argument("--saturation-factor", type=float,
                   help="stop raising a system's rate once its p99 > this × the SLO (default 3; 0: never)")
    p.add_argument("--infinity-venv", help="infinity's virtualenv (default .cache/venv-infinity)")
    p.add_argument("--infinity-batch-size", type=int, help="infinity --batch-size (default: its own, 32)")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process Reranker.rerank reference")
    p.add_argument("--data", dest="data_dir", help="the shared/data folder (default ../shared/data)")
    p.add_argument("--smoke", action="store_true", help="CI size: 2 rates × 10 requests, 2 client counts × 10 requests")
    p.add_argument("--out", default="bench-out/load", help="output folder (default bench-out/load)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir, hf = _default_model_paths()
    kw = dict(systems=args.systems, model_dir=args.model_dir or model_dir, hf_model=args.hf_model or hf,
              rates=args.rates, clients=args.clients, requests=args.requests, max_seconds=args.max_seconds,
              timeout=args.timeout, sizes=args.sizes, top_n=args.top_n, seed=args.seed, threads=args.threads,
              warmup=args.warmup, slo_ms=args.slo_ms, saturation_factor=args.saturation_factor, infinity_venv=args.infinity_venv,
              infinity_batch_size=args.infinity_batch_size, data_dir=args.data_dir,
              modes=("open", "closed") if args.mode == "both" else (args.mode,),
              inprocess=not args.no_inprocess)
    kw = {k: v for k, v in kw.items() if v is not None}
    s = smoke_settings(**kw) if args.smoke else LoadSettings(**kw)
    for n in (k for k, v in vars(s).items() if isinstance(v, (int, float)) and not isinstance(v, bool)):
        if n in ("requests", "max_seconds", "timeout") and getattr(s, n) <= 0:
            print(f"error: --{n.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    try:
        results = run_load(s, args.out, log=lambda m: print(m, flush=True))
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    paths = write_outputs(results, args.out)
    print(markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    measured = [n for n, e in results["systems"].items() if not e.get("skipped")]
    return 0 if measured else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
