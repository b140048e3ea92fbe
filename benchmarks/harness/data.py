"""Relevance sets read in place from ``../shared/data`` (never copied: research-only licences).

Each file is gzip-compressed JSON Lines, one query per line (see ``../shared/data/README.md``)::

    {"qid": ..., "query": ..., "candidates": [{"docid", "text", "label"}, ...], "ideal_top10": [...]}

The folder is, in order: the ``data_dir`` argument, ``$CROSSRANK_DATA``, ``<repo>/../shared/data``.

Latency workloads (:func:`latency_workload`) take real queries with their own first-stage
candidates; a count beyond what a query has (TREC DL has 100 per query, SciFact 20) is filled with
candidates of the following queries, in file order, so every count is reproducible and made of real
passages of the set's typical length.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from crossrank.errors import BenchmarkError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "Query",
    "Dataset",
    "default_data_dir",
    "load_dataset",
    "latency_workload",
]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    file: str
    mrr_threshold: int  # a label >= this counts as relevant for MRR@10
    has_ideal: bool  # ideal_top10 present (else the ideal DCG comes from the candidates' labels)
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "trec-dl-2020": DatasetInfo(
        "trec-dl-2020", "trec-dl-2020.jsonl.gz", 2, True, "TREC DL 2020 passages, BM25 top-100 (~60 words)"
    ),
    "wikiqa": DatasetInfo("wikiqa", "wikiqa-test.jsonl.gz", 1, False, "WikiQA test, answer sentences (short)"),
    "scifact": DatasetInfo(
        "scifact", "scifact-test-bm25top20.jsonl.gz", 1, True, "SciFact claims vs abstracts, BM25 top-20 (~200 words)"
    ),
}


@dataclass(frozen=True)
class Query:
    qid: str
    query: str
    docs: tuple[str, ...]
    labels: tuple[int, ...]
    ideal_top10: tuple[int, ...] | None


@dataclass(frozen=True)
class Dataset:
    info: DatasetInfo
    path: Path
    queries: tuple[Query, ...]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_pairs(self) -> int:
        return sum(len(q.docs) for q in self.queries)

    def head(self, n: int | None) -> "Dataset":
        """The first ``n`` queries (all when ``n`` is None)."""
        if n is None or n >= len(self.queries):
            return self
        return Dataset(self.info, self.path, self.queries[:n])


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir is not None:
        d = Path(data_dir)
    elif os.environ.get("CROSSRANK_DATA"):
        d = Path(os.environ["CROSSRANK_DATA"])
    else:
        d = _repo_root().parent / "shared" / "data"
    return d.resolve()


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Read one relevance set; a wrong name or a missing file is a :class:`BenchmarkError`."""
    if name not in DATASETS:
        raise BenchmarkError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    path = default_data_dir(data_dir) / DATASETS[name].file
    if not path.is_file():
        raise BenchmarkError(
            f"relevance data {path} is missing; point --data or $CROSSRANK_DATA at the shared/data folder"
        )
    return _load(name, str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _load(name: str, path: str, _mtime: int) -> Dataset:
    info = DATASETS[name]
    queries: list[Query] = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                cands = row["candidates"]
                ideal = row.get("ideal_top10")
                queries.append(
                    Query(
                        qid=str(row["qid"]),
                        query=str(row["query"]),
                        docs=tuple(str(c["text"]) for c in cands),
                        labels=tuple(int(c.get("label", 0)) for c in cands),
                        ideal_top10=tuple(int(x) for x in ideal) if ideal is not None else None,
                    )
                )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BenchmarkError(f"cannot read relevance data {path} (line {locals().get('lineno', '?')}): {err}") from err
    if not queries:
        raise BenchmarkError(f"relevance data {path} holds no queries")
    return Dataset(info, Path(path), tuple(queries))


def latency_workload(dataset: Dataset, count: int, n_queries: int, *, offset: int = 0) -> list[tuple[str, list[str]]]:
    """``n_queries`` (query, documents) requests of exactly ``count`` real candidates each.

    Query ``i`` is the dataset's query ``(offset + i) mod len``; its candidates are its own, in
    first-stage order, topped up from the following queries' candidates when it has fewer than
    ``count``. Deterministic: the same arguments give the same requests.
    """
    if count < 1 or n_queries < 1:
        raise BenchmarkError(f"candidate count and query count must be >= 1 (got {count}, {n_queries})")
    qs = dataset.queries
    requests: list[tuple[str, list[str]]] = []
    for i in range(n_queries):
        j = (offset + i) % len(qs)
        docs: list[str] = []
        k = j
        while len(docs) < count:
            need = count - len(docs)
            docs.extend(qs[k].docs[:need])
            k = (k + 1) % len(qs)
        requests.append((qs[j].query, docs))
    return requests
