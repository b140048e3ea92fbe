"""Query/passage pair files (validation and calibration sets).

A pairs file is JSON lines (optionally gzip-compressed, ``.gz``); each line is one of

    {"query": "...", "passage": "..."}                  one pair ("document"/"text"/"doc" also accepted)
    {"query": "...", "passages": ["...", "..."]}        one query, several passages ("documents"/"docs")
    {"queries": ["...", ...], "passages": ["...", ...]} every query with every passage

Pairs that share a query text form one group (per-query ranking figures are computed per group).
Blank lines are skipped. The built-in validation set, ``data/validation.jsonl``, is invented
English text written for crossrank (8 topics, 40 queries, 304 pairs, short to over 512 tokens).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from crossrank.errors import InvalidInputError

__all__ = ["PairSet", "read_pairs", "builtin_validation_path"]

_ONE = ("passage", "document", "text", "doc")
_MANY = ("passages", "documents", "docs")


@dataclass(frozen=True)
class PairSet:
    pairs: tuple[tuple[str, str], ...]
    groups: tuple[tuple[int, ...], ...]  # pair indices per distinct query, in first-seen order
    source: str  # "built-in" or the file's path

    @property
    def num_queries(self) -> int:
        return len(self.groups)


def builtin_validation_path() -> Path:
    return Path(str(resources.files("crossrank.export") / "data" / "validation.jsonl"))


def read_pairs(path: str | Path | None, *, what: str = "validation") -> PairSet:
    """Read a pairs file (``None``: the built-in validation set)."""
    builtin = path is None
    p = builtin_validation_path() if builtin else Path(path).expanduser()
    if not p.is_file():
        raise InvalidInputError(f"{what} file {str(p)!r} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    pairs: list[tuple[str, str]] = []
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InvalidInputError(f"{p}:{lineno}: not a JSON line ({err.msg})") from err
                pairs.extend(_pairs_of(row, f"{p}:{lineno}"))
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise InvalidInputError(f"cannot read {what} file {str(p)!r}: {err}") from err
    if not pairs:
        raise InvalidInputError(f"{what} file {str(p)!r} holds no query/passage pairs")
    order: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        order.setdefault(q, []).append(i)
    return PairSet(pairs=tuple(pairs), groups=tuple(tuple(v) for v in order.values()), source="built-in" if builtin else str(p))


def _pairs_of(row: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(row, dict):
        raise InvalidInputError(f"{where}: each line must be a JSON object with a query and passage(s)")
    queries = row.get("queries") if "queries" in row else [row.get("query")]
    if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
        raise InvalidInputError(f"{where}: 'query' must be a string (or 'queries' a list of strings)")
    one = next((k for k in _ONE if k in row), None)
    many = next((k for k in _MANY if k in row), None)
    if one is not None and isinstance(row[one], str):
        docs = [row[one]]
    elif many is not None and isinstance(row[many], list) and all(isinstance(d, str) for d in row[many]):
        docs = list(row[many])
    else:
        raise InvalidInputError(f"{where}: needs a string 'passage' or a list of strings 'passages'")
    return [(q, d) for q in queries for d in docs]
