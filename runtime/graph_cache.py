"""A disk cache of onnxruntime-optimized graphs, so a CPU session is not re-optimized on every start.

onnxruntime rewrites a graph when a session starts (constant folding, LayerNorm/GELU fusions,
integer-kernel fusions of a quantized graph). The first :class:`~crossrank.Reranker` load of a variant saves the rewritten graph
(``SessionOptions.optimized_model_filepath``); later loads open that graph with optimization
switched off: session starts are shorter with identical logits (measurement: docs/graph-cache.md).

The cache key covers everything the rewritten graph depends on: the model file's recorded sha256,
size and modification time, the onnxruntime version, the optimization level and the CPU (machine
type and instruction-set flags: level "all" may emit CPU-specific kernels). Entries are written
to a temporary name (with the mode ``open`` gives under the umask, see :mod:`crossrank.atomic`)
and renamed into place, so concurrent processes never see a partial file.
Any failure (read-only disk, full disk, a stale or damaged entry) only logs at debug level and
falls back to a normal start.

A model whose weights are ONNX external data (over 2 GB) is cached the same way: onnxruntime
writes the optimized graph's weights to a side file named after the temporary graph
(:func:`data_file_for`), which the graph records and keeps after the rename into place.

Location: ``cache_dir=`` of :meth:`crossrank.Reranker.load`, else ``$CROSSRANK_CACHE``, else
``$XDG_CACHE_HOME/crossrank`` or ``~/.cache/crossrank``; ``cache_dir=False`` turns it off.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from .atomic import mkstemp
from .cpu import cpu_flags, cpu_model

__all__ = ["default_cache_dir", "cache_entry", "store_path", "commit"]

log = logging.getLogger("crossrank.graph_cache")

# Graphs larger than this would need external data files: not cached.
_MAX_CACHED_BYTES = 1_500_000_000


def default_cache_dir() -> Path:
    env = os.environ.get("CROSSRANK_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crossrank"


@lru_cache(maxsize=1)
def _cpu_fingerprint() -> str:
    # Level "all" may emit kernels for this CPU's instruction sets, so they enter the key; without
    # flags (no /proc/cpuinfo) the model name stands in for them.
    flags = cpu_flags()
    seen = " ".join(sorted(flags)) if flags else cpu_model()
    return f"{platform.system()}-{platform.machine()}-{hashlib.sha256(seen.encode()).hexdigest()[:12]}"


def cache_entry(
    cache_dir: Path, model_path: Path, *, sha256: str, level: str, ort_version: str, data_files: Sequence[Path] = ()
) -> Path | None:
    """Where the optimized graph of ``model_path`` lives (whether or not it exists yet), or None
    when this model is not cacheable.

    ``data_files``: the external data files the graph reads its weights from (a model over 2 GB);
    their size and modification time enter the key like the graph's own.
    """
    try:
        st = model_path.stat()
        data_stats = [Path(d).stat() for d in data_files]
    except OSError:
        return None
    if st.st_size > _MAX_CACHED_BYTES:
        return None
    parts = [sha256, str(st.st_size), str(st.st_mtime_ns)]
    parts += [f"{Path(d).name}:{ds.st_size}:{ds.st_mtime_ns}" for d, ds in zip(data_files, data_stats)]
    key = "|".join(parts + [ort_version, level, _cpu_fingerprint()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{model_path.stem}-{digest}.onnx"


def store_path(entry: Path) -> Path | None:
    """A fresh temporary path beside ``entry`` for onnxruntime to write to, or None if the cache
    folder cannot be created."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        return mkstemp(prefix=entry.stem + ".", suffix=".partial.onnx", dir=entry.parent)
    except OSError as err:
        log.debug("graph cache disabled for this load: cannot write to %s (%s)", entry.parent, err)
        return None


def data_file_for(tmp: Path) -> str:
    """The name (in the cache folder) under which onnxruntime writes the external weights of the
    graph being stored at ``tmp``: unique per store, so concurrent writers never share one, and
    kept when ``tmp`` is renamed to its entry (the graph records the name)."""
    return tmp.name + ".data"


def commit(tmp: Path, entry: Path) -> None:
    """Move a written temporary graph into place; drop it on any failure."""
    try:
        if tmp.is_file() and tmp.stat().st_size > 0:
            os.replace(tmp, entry)
            log.debug("cached the optimized graph in %s", entry)
            return
    except OSError as err:
        log.debug("could not store the optimized graph in %s: %s", entry, err)
    discard(tmp)


def discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
