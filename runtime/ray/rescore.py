"""Offline rescoring of (query, document) pair files with a Ray Data actor pool.

    python -m crossrank.ray.rescore pairs/*.jsonl --model ./minilm --out scored/ --actors 8

Input: JSONL (``.jsonl``, ``.json``: one object per line, blank lines skipped) or Parquet
(``.parquet``, ``.pq``) files whose rows have ``query`` and ``document`` strings and optionally an
``id`` (any JSON value / Parquet type).

Output, under ``--out``, per *shard* of one input file (``--shard-pairs`` rows, default 10,000,
a few minutes of one 1-thread actor: JSONL by line ranges, exactly; Parquet by whole row groups,
so a shard closes at the first row-group boundary at or past it):

* ``<input name>.<shard:05d>.scored.jsonl`` (or ``.parquet``; by default the input's format): one
  row per scored pair, in input order: ``{"id", "row", "score", "truncated"}`` - ``id`` as given
  (null when the row had none; JSONL ids become strings in Parquet output), ``row`` the 0-based
  line (JSONL) or row (Parquet) of the pair in its input file, ``score`` the model's activated
  score (``--raw``: the logit), ``truncated`` whether the pair was cut to ``max_length``.
* ``<input name>.<shard:05d>.done.json``: the shard's manifest (input name, rows, the sha256 of the
  shard's bytes for JSONL or of the whole file for Parquet, the model variant's sha256 and the
  scoring options, the output's size, pairs, seconds).

How it runs
-----------
1. The driver plans shards (one pass over each input: line offsets and sha256) and drops those
   whose manifest matches and whose output file is there with the recorded size: **a rerun
   skips finished shards** and redoes any shard whose input, model or options changed, or that
   an interrupted run left without a manifest.
2. The rest become a Ray Dataset of shard descriptors (``ray.data.from_items``, one block each,
   largest first), mapped with ``map_batches`` over an actor pool
   (``ActorPoolStrategy(size=--actors)``, one task in flight per actor so a free actor always
   takes the next shard). Each actor holds one :class:`~crossrank.Reranker` (``--threads``
   onnxruntime threads = its Ray CPUs; sha256-verified on load).
3. An actor streams its shard in chunks of ``--chunk-pairs`` pairs (memory bounded by the chunk,
   whatever the file's size), scores each chunk with :meth:`crossrank.Reranker.score_pairs` - which
   sorts the chunk's pairs by token length and packs them into token-budgeted batches - appends
   the scores to a temporary file, and at the end renames it into place (atomic on one file
   system) and then writes the manifest the same way. A shard is finished exactly when its
   manifest exists; its pairs are written once.
4. Each finished shard is reported on stderr as it completes (pairs, pairs/s, totals, ETA); the
   last line on stdout is a JSON summary with ``pairs_per_s`` (scored pairs over the job's wall
   time, actor start-up included) and ``steady_pairs_per_s`` (over the window from the first
   shard's start to the last one's end).

A shard that fails (a row without a string ``query``/``document``, unreadable file) is reported
with its file and line and leaves no output; the others finish, the command exits 1, and a
rerun retries only what is missing.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["Shard", "plan", "run", "main", "ShardScorer"]

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_SHARD_PAIRS = 10_000
DEFAULT_CHUNK_PAIRS = 2_048
_BLOCK = 8 << 20


@dataclass(frozen=True)
class Shard:
    """One unit of work and of resumption: rows ``[first_row, first_row + rows)`` of one input."""

    input: str  # absolute path
    name: str  # output stem: "<input file name>.<index:05d>"
    index: int
    kind: str  # "jsonl" | "parquet"
    first_row: int
    rows: int  # JSONL: lines (blank ones included); Parquet: rows
    byte_start: int = 0  # JSONL: the shard's bytes
    byte_end: int = 0
    row_groups: tuple[int, ...] = ()  # Parquet
    input_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> "Shard":
        d = json.loads(s)
        d["row_groups"] = tuple(d["row_groups"])
        return cls(**d)


# -- planning (driver) -----------------------------------------------------------------------------
def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise SystemExit(f"error: {path}: not a pair file (expected {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)})")


def _plan_jsonl(path: Path, shard_pairs: int) -> list[Shard]:
    """Shards of ``shard_pairs`` lines: one buffered pass recording offsets and hashing each shard."""
    shards: list[Shard] = []
    start_byte = 0
    first_line = 0
    lines = 0
    pos = 0
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for line in f:
            h.update(line)
            pos += len(line)
            lines += 1
            if lines == shard_pairs:
                shards.append(Shard(str(path), f"{path.name}.{len(shards):05d}", len(shards), "jsonl", first_line, lines,
                                    start_byte, pos, (), h.hexdigest()))
                start_byte, first_line, lines, h = pos, first_line + lines, 0, hashlib.sha256()
    if lines or not shards:
        shards.append(Shard(str(path), f"{path.name}.{len(shards):05d}", len(shards), "jsonl", first_line, lines,
                            start_byte, pos, (), h.hexdigest()))
    return shards


def _plan_parquet(path: Path, shard_pairs: int) -> list[Shard]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    md = pq.ParquetFile(path).metadata
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    digest = h.hexdigest()
    shards: list[Shard] = []
    groups: list[int] = []
    first = rows = 0
    for g in range(md.num_row_groups):
        groups.append(g)
        rows += md.row_group(g).num_rows
        if rows >= shard_pairs:
            shards.append(Shard(str(path), f"{path.name}.{len(shards):05d}", len(shards), "parquet", first, rows, 0, 0, tuple(groups), digest))
            first, rows, groups = first + rows, 0, []
    if groups or not shards:
        shards.append(Shard(str(path), f"{path.name}.{len(shards):05d}", len(shards), "parquet", first, rows, 0, 0, tuple(groups), digest))
    return shards


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named or matched (a pattern the shell did not expand is globbed here), in order, once each."""
    out: list[Path] = []
    seen: set[Path] = set()
    for p in patterns:
        matches = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
        if not matches:
            raise SystemExit(f"error: {p}: no file matches")
        for m in matches:
            path = Path(m).expanduser().resolve()
            if not path.is_file():
                raise SystemExit(f"error: {m}: not a file")
            if path not in seen:
                seen.add(path)
                out.append(path)
    names: dict[str, Path] = {}
    for path in out:
        if path.name in names:
            raise SystemExit(f"error: {names[path.name]} and {path} have the same file name; their outputs would collide "
                             "(rescore them into separate --out folders)")
        names[path.name] = path
    return out


def plan(inputs: list[Path], shard_pairs: int = DEFAULT_SHARD_PAIRS) -> list[Shard]:
    shards: list[Shard] = []
    for path in inputs:
        shards += _plan_jsonl(path, shard_pairs) if _kind(path) == "jsonl" else _plan_parquet(path, shard_pairs)
    return shards


def model_fingerprint(model: Path, variant: str, provider: str) -> dict[str, Any]:
    """What the scores depend on: the variant's file and tokenizer hashes (from the manifest, which
    ``Reranker.load(verify=True)`` checks against the files in every actor)."""
    from ..manifest import load_manifest  # noqa: PLC0415
    from ..session import choose_variant, resolve_provider  # noqa: PLC0415

    m = load_manifest(model)
    chosen = choose_variant(m, variant, resolve_provider(provider))
    spec = m.variants[chosen]
    return {"variant": chosen, "model_sha256": spec.sha256, "tokenizer_sha256": m.tokenizer.sha256}


def _output_path(out: Path, shard: Shard, fmt: str) -> Path:
    return out / f"{shard.name}.scored.{fmt}"


def _manifest_path(out: Path, shard: Shard) -> Path:
    return out / f"{shard.name}.done.json"


def _expected(shard: Shard, fmt: str, scoring: dict[str, Any]) -> dict[str, Any]:
    return {
        "input": Path(shard.input).name,
        "shard": shard.index,
        "first_row": shard.first_row,
        "rows": shard.rows,
        "input_sha256": shard.input_sha256,
        "format": fmt,
        "scoring": scoring,
    }


def is_done(out: Path, shard: Shard, fmt: str, scoring: dict[str, Any]) -> bool:
    """The shard's manifest matches this input, model and options, and its output is whole."""
    try:
        done = json.loads(_manifest_path(out, shard).read_text())
    except (OSError, ValueError):
        return False
    want = _expected(shard, fmt, scoring)
    if any(done.get(k) != v for k, v in want.items()):
        return False
    p = _output_path(out, shard, fmt)
    return p.is_file() and p.stat().st_size == done.get("output_bytes")


# -- reading and writing a shard (actors) ----------------------------------------------------------
class ShardError(Exception):
    pass


def _iter_rows(shard: Shard) -> Iterator[tuple[int, Any, Any, Any]]:
    """``(row, id, query, document)`` of the shard, in input order."""
    if shard.kind == "jsonl":
        with open(shard.input, "rb") as f:
            f.seek(shard.byte_start)
            row = shard.first_row
            h = hashlib.sha256()
            for _ in range(shard.rows):
                line = f.readline()
                h.update(line)
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except ValueError as err:
                        raise ShardError(f"{shard.input}:{row + 1}: not a JSON object ({err})") from err
                    if not isinstance(obj, dict):
                        raise ShardError(f"{shard.input}:{row + 1}: not a JSON object")
                    yield row, obj.get("id"), obj.get("query"), obj.get("document")
                row += 1
        if h.hexdigest() != shard.input_sha256:  # the manifest must describe what was scored
            raise ShardError(f"{shard.input}: lines {shard.first_row + 1}-{shard.first_row + shard.rows} changed while the job ran; rerun")
        return
    import pyarrow.parquet as pq  # noqa: PLC0415

    pf = pq.ParquetFile(shard.input)
    names = pf.schema_arrow.names
    missing = [c for c in ("query", "document") if c not in names]
    if missing:
        raise ShardError(f"{shard.input}: no column {' or '.join(map(repr, missing))} (columns: {names})")
    cols = ["query", "document"] + (["id"] if "id" in names else [])
    row = shard.first_row
    for batch in pf.iter_batches(batch_size=DEFAULT_CHUNK_PAIRS, row_groups=list(shard.row_groups), columns=cols):
        q = batch.column("query").to_pylist()
        d = batch.column("document").to_pylist()
        ids = batch.column("id").to_pylist() if "id" in cols else [None] * len(q)
        for i in range(len(q)):
            yield row, ids[i], q[i], d[i]
            row += 1


def _chunks(shard: Shard, size: int) -> Iterator[list[tuple[int, Any, str, str]]]:
    chunk: list[tuple[int, Any, str, str]] = []
    where = (lambda r: f"{shard.input}:{r + 1}") if shard.kind == "jsonl" else (lambda r: f"{shard.input} row {r}")
    for row, id_, q, d in _iter_rows(shard):
        if not isinstance(q, str):
            raise ShardError(f"{where(row)}: 'query' must be a string, got {type(q).__name__}")
        if not isinstance(d, str):
            raise ShardError(f"{where(row)}: 'document' must be a string, got {type(d).__name__}")
        chunk.append((row, id_, q, d))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "w", encoding="utf-8")

    def write(self, ids: list[Any], rows: list[int], scores: np.ndarray, truncated: np.ndarray) -> None:
        for i, r, s, t in zip(ids, rows, scores.tolist(), truncated.tolist()):
            self.f.write(json.dumps({"id": i, "row": r, "score": s, "truncated": t}, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


class _ParquetWriter:
    def __init__(self, path: Path, id_type: Any) -> None:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415

        self.pa = pa
        self.schema = pa.schema([("id", id_type), ("row", pa.int64()), ("score", pa.float32()), ("truncated", pa.bool_())])
        self.w = pq.ParquetWriter(path, self.schema)
        self.path = path
        self.stringify = pa.types.is_string(id_type)

    def write(self, ids: list[Any], rows: list[int], scores: np.ndarray, truncated: np.ndarray) -> None:
        pa = self.pa
        if self.stringify:
            ids = [None if i is None else (i if isinstance(i, str) else json.dumps(i, default=str)) for i in ids]
        t = pa.table({"id": pa.array(ids, type=self.schema.field("id").type), "row": pa.array(rows, type=pa.int64()),
                      "score": pa.array(scores, type=pa.float32()), "truncated": pa.array(truncated, type=pa.bool_())}, schema=self.schema)
        self.w.write_table(t)

    def close(self) -> None:
        self.w.close()
        with open(self.path, "rb+") as f:
            os.fsync(f.fileno())


def _id_type(shard: Shard) -> Any:
    import pyarrow as pa  # noqa: PLC0415

    if shard.kind == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        schema = pq.ParquetFile(shard.input).schema_arrow
        if "id" in schema.names:
            return schema.field("id").type
    return pa.string()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def score_shard(rr: Any, shard: Shard, out: Path, fmt: str, scoring: dict[str, Any], *, chunk_pairs: int, raw: bool) -> dict[str, Any]:
    """Score one shard into its output file and manifest (atomically); return its summary."""
    final = _output_path(out, shard, fmt)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    t0 = time.time()
    pairs = 0
    writer: Any = _JsonlWriter(tmp) if fmt == "jsonl" else _ParquetWriter(tmp, _id_type(shard))
    try:
        for chunk in _chunks(shard, chunk_pairs):
            scores, info = rr.score_pairs([(q, d) for _, _, q, d in chunk], raw=raw, return_info=True)
            writer.write([c[1] for c in chunk], [c[0] for c in chunk], scores, info.truncated)
            pairs += len(chunk)
        writer.close()
        os.replace(tmp, final)
    except BaseException:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the original error is what matters
            pass
        tmp.unlink(missing_ok=True)
        raise
    t1 = time.time()
    done = _expected(shard, fmt, scoring) | {
        "output": final.name,
        "output_bytes": final.stat().st_size,
        "pairs": pairs,
        "seconds": round(t1 - t0, 3),
    }
    _atomic_write_text(_manifest_path(out, shard), json.dumps(done, indent=1))
    return {"pairs": pairs, "t_start": t0, "t_end": t1}


class ShardScorer:
    """The ``map_batches`` callable class: one Reranker per actor; each input row is one shard."""

    def __init__(self, model: str, load: dict[str, Any], out: str, scoring: dict[str, Any], chunk_pairs: int, raw: bool) -> None:
        from ..reranker import Reranker  # noqa: PLC0415

        self.rr = Reranker.load(model, verify=True, **load)
        self.out, self.scoring, self.chunk_pairs, self.raw = Path(out), scoring, chunk_pairs, raw

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names, pairs, t0, t1, errors = [], [], [], [], []
        for s, fmt in zip(batch["shard"], batch["fmt"]):
            shard = Shard.from_json(str(s))
            try:
                r = score_shard(self.rr, shard, self.out, str(fmt), self.scoring, chunk_pairs=self.chunk_pairs, raw=self.raw)
                err = ""
            except Exception as e:  # noqa: BLE001 - reported per shard; the others go on
                now = time.time()
                r, err = {"pairs": 0, "t_start": now, "t_end": now}, f"{type(e).__name__}: {e}"
            names.append(shard.name)
            pairs.append(r["pairs"])
            t0.append(r["t_start"])
            t1.append(r["t_end"])
            errors.append(err)
        return {"name": np.array(names, dtype=object), "pairs": np.array(pairs, dtype=np.int64),
                "t_start": np.array(t0), "t_end": np.array(t1), "error": np.array(errors, dtype=object)}


# -- the job ---------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(
    inputs: list[str],
    *,
    model: str,
    out: str,
    actors: int = 1,
    threads: int = 1,
    variant: str = "auto",
    provider: str = "cpu",
    raw: bool = False,
    fmt: str = "auto",
    shard_pairs: int = DEFAULT_SHARD_PAIRS,
    chunk_pairs: int = DEFAULT_CHUNK_PAIRS,
    max_length: int | None = None,
    batch_tokens: int | None = None,
    progress: bool = True,
    ray_init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rescore ``inputs`` into ``out``; return the summary (see the module docstring). Runs on the
    Ray instance this process is connected to; when there is none and there is work to do, it
    calls ``ray.init(**ray_init)`` (a local instance by default)."""
    import ray  # noqa: PLC0415

    t_job = time.time()
    for name, v in (("actors", actors), ("threads", threads), ("shard_pairs", shard_pairs), ("chunk_pairs", chunk_pairs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1; got {v!r}")
    if fmt not in ("auto", "jsonl", "parquet"):
        raise ValueError(f"format must be auto, jsonl or parquet; got {fmt!r}")
    model_dir = Path(model).expanduser().resolve()
    fp = model_fingerprint(model_dir, variant, provider)
    scoring = fp | {"raw": bool(raw), "max_length": max_length}
    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = expand_inputs(inputs)
    shards = plan(files, shard_pairs)
    fmt_of = {s.name: (s.kind if fmt == "auto" else fmt) for s in shards}
    todo = [s for s in shards if not is_done(out_dir, s, fmt_of[s.name], scoring)]
    skipped = len(shards) - len(todo)
    total_rows = sum(s.rows for s in todo)
    if progress:
        _log(f"crossrank rescore: {len(files)} files, {len(shards)} shards; {skipped} already done, "
             f"{len(todo)} to score ({total_rows} rows) with {actors} actors x {threads} threads, variant {fp['variant']}")
    summary: dict[str, Any] = {"files": len(files), "shards": len(shards), "skipped": skipped, "scored_shards": 0,
                               "failed": [], "pairs": 0, "seconds": 0.0, "pairs_per_s": 0.0, "steady_pairs_per_s": 0.0,
                               "actors": actors, "threads": threads, "variant": fp["variant"], "out": str(out_dir)}
    if not todo:
        summary["seconds"] = round(time.time() - t_job, 3)
        return summary
    if not ray.is_initialized():
        ray.init(**(ray_init or {}))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the per-shard lines below are the progress report
    todo.sort(key=lambda s: -s.rows)  # largest first: fewer stragglers at the end
    load: dict[str, Any] = {"variant": variant, "provider": provider, "threads": threads}
    if max_length is not None:
        load["max_length"] = max_length
    if batch_tokens is not None:
        load["batch_tokens"] = batch_tokens
    ds = ray.data.from_items([{"shard": s.to_json(), "fmt": fmt_of[s.name]} for s in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        ShardScorer,
        fn_constructor_kwargs={"model": str(model_dir), "load": load, "out": str(out_dir), "scoring": scoring,
                               "chunk_pairs": chunk_pairs, "raw": bool(raw)},
        batch_size=1,
        batch_format="numpy",
        # One shard in flight per actor: a free actor always takes the next shard.
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        num_cpus=threads,
        runtime_env={"env_vars": {"RAYON_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}},
    )
    rows_of = {s.name: s.rows for s in todo}
    done_rows = 0
    first_start, last_end = float("inf"), 0.0
    t_run = time.time()
    for i, row in enumerate(ds.iter_rows(), start=1):
        name, err = str(row["name"]), str(row["error"])
        done_rows += rows_of.get(name, 0)
        if err:
            summary["failed"].append({"shard": name, "error": err})
            if progress:
                _log(f"[{i}/{len(todo)}] {name}: FAILED: {err}")
            continue
        n = int(row["pairs"])
        summary["scored_shards"] += 1
        summary["pairs"] += n
        first_start, last_end = min(first_start, float(row["t_start"])), max(last_end, float(row["t_end"]))
        if progress:
            el = time.time() - t_run
            rate = done_rows / el if el > 0 else 0.0  # rows (lines) per second, for the ETA
            left = total_rows - done_rows
            eta = f", ETA {left / rate:.0f} s" if rate > 0 and left > 0 else ""
            _log(f"[{i}/{len(todo)}] {name}: {n} pairs in {float(row['t_end']) - float(row['t_start']):.1f} s; "
                 f"{done_rows}/{total_rows} rows done, {summary['pairs'] / el if el > 0 else 0.0:.1f} pairs/s{eta}")
    wall = time.time() - t_job
    summary["seconds"] = round(wall, 3)
    summary["pairs_per_s"] = round(summary["pairs"] / wall, 2) if wall > 0 else 0.0
    window = last_end - first_start
    summary["steady_pairs_per_s"] = round(summary["pairs"] / window, 2) if window > 0 else 0.0
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m crossrank.ray.rescore",
        description="Score (query, document) pair files (JSONL/Parquet: query, document, optional id) with a Ray Data "
        "pool of crossrank actors; one output file and manifest per input shard; a rerun skips finished shards.",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help="pair files (.jsonl/.json or .parquet/.pq); globs are expanded")
    p.add_argument("--model", required=True, metavar="DIR", help="crossrank model folder (same path on every node)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--actors", type=int, default=1, metavar="N", help="scoring actors, each with one Reranker (default 1)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="onnxruntime threads = Ray CPUs per actor (default 1)")
    p.add_argument("--variant", default="auto", help="model variant (default auto: int8 on CPU)")
    p.add_argument("--provider", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--raw", action="store_true", help="write the positive logit instead of the activated score")
    p.add_argument("--format", default="auto", choices=("auto", "jsonl", "parquet"), help="output format (default: the input's)")
    p.add_argument("--shard-pairs", type=int, default=DEFAULT_SHARD_PAIRS, metavar="N",
                   help=f"rows per shard, the unit of work and of resumption (default {DEFAULT_SHARD_PAIRS})")
    p.add_argument("--chunk-pairs", type=int, default=DEFAULT_CHUNK_PAIRS, metavar="N",
                   help=f"pairs an actor reads and scores at once; bounds its memory (default {DEFAULT_CHUNK_PAIRS})")
    p.add_argument("--max-length", type=int, metavar="N", help="tokens per pair (default: the folder's)")
    p.add_argument("--batch-tokens", type=int, metavar="N", help="padded tokens per onnxruntime run (default: the runtime's)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--quiet", action="store_true", help="no per-shard progress lines")
    args = p.parse_args(argv)
    import ray  # noqa: PLC0415

    from ..errors import CrossrankError  # noqa: PLC0415

    if args.address or os.environ.get("RAY_ADDRESS"):
        init: dict[str, Any] = {"address": args.address or os.environ["RAY_ADDRESS"], "log_to_driver": False}
    else:
        init = {"num_cpus": args.num_cpus, "include_dashboard": False, "log_to_driver": False}
    started_here = not ray.is_initialized()
    try:
        summary = run(args.inputs, model=args.model, out=args.out, actors=args.actors, threads=args.threads, variant=args.variant,
                      provider=args.provider, raw=args.raw, fmt=args.format, shard_pairs=args.shard_pairs,
                      chunk_pairs=args.chunk_pairs, max_length=args.max_length, batch_tokens=args.batch_tokens,
                      progress=not args.quiet, ray_init=init)
    except (CrossrankError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    print(json.dumps(summary))
    if summary["failed"]:
        print(f"error: {len(summary['failed'])} shards failed (see above); rerun to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
