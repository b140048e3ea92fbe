"""Query/passage pair files (validation and calibration sets) and the one path from pairs to inputs.

A pairs file is JSON lines (optionally gzip-compressed, ``.gz``); each line is one of

    {"query": "...", "passage": "..."}                  one pair ("document"/"text"/"doc" also accepted)
    {"query": "...", "passages": ["...", "..."]}        one query, several passages ("documents"/"docs")
    {"queries": ["...", ...], "passages": ["...", ...]} every query with every passage

Other keys (a ``label``, say) are ignored; blank lines are skipped; a query must hold some text.
Pairs that share a query text form one group (per-query ranking figures are computed per group).
The same reader serves ``--validation`` and ``--calibration`` files; every problem is one
:class:`PairsFileError` naming the file and line. The built-in validation set,
``data/validation.jsonl``, is invented English text written for crossrank (8 topics, 40 queries,
304 pairs, short to over 512 tokens); the built-in calibration set is ``data/calibration.jsonl``.

:func:`encode_batches` turns pairs into model inputs exactly as the runtime does
(:class:`crossrank.tokenize.PairEncoder`, :func:`crossrank.batching.plan_batches`,
:func:`crossrank.batching.pad_batch`), so the figures export records describe the path users run.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crossrank.errors import ExportError, InvalidInputError

__all__ = [
    "PairSet",
    "PairsFileError",
    "read_pairs",
    "builtin_validation_path",
    "builtin_calibration_path",
    "FeedBatch",
    "encode_batches",
]

_ONE = ("passage", "document", "text", "doc")
_MANY = ("passages", "documents", "docs")


class PairsFileError(InvalidInputError, ExportError):
    """A validation or calibration pairs file is missing, unreadable or malformed.

    Both an :class:`~crossrank.errors.InvalidInputError` (the caller's input is wrong) and an
    :class:`~crossrank.errors.ExportError` (it stops an export), so code catching either keeps working.
    """


@dataclass(frozen=True)
class PairSet:
    """The pairs of one file, in file order.

    Attributes:
        pairs: ``(query, passage)`` strings.
        groups: pair indices per distinct query, in first-seen order.
        source: ``"built-in"`` or the file's path.
    """

    pairs: tuple[tuple[str, str], ...]
    groups: tuple[tuple[int, ...], ...]
    source: str

    @property
    def num_queries(self) -> int:
        return len(self.groups)


def builtin_validation_path() -> Path:
    return Path(str(resources.files("crossrank.export") / "data" / "validation.jsonl"))


def builtin_calibration_path() -> Path:
    return Path(str(resources.files("crossrank.export") / "data" / "calibration.jsonl"))


def read_pairs(path: str | Path | None, *, what: str = "validation") -> PairSet:
    """Read a pairs file (format in the module docstring).

    Args:
        path: the file (``.gz``: gzip); None reads the built-in set of ``what``.
        what: ``"validation"`` or ``"calibration"``: which built-in set None means, and the word
            error messages use.

    Returns:
        :class:`PairSet` with ``source`` "built-in" or the file's path.

    Raises:
        PairsFileError: the file is missing, unreadable, not UTF-8 JSON lines, a line is not an
            object with a non-empty string query and string passage(s), or it holds no pair.
    """
    if what not in ("validation", "calibration"):
        raise InvalidInputError(f"what must be 'validation' or 'calibration', not {what!r}")
    builtin = path is None
    if builtin:
        p = builtin_validation_path() if what == "validation" else builtin_calibration_path()
    else:
        p = Path(path).expanduser()
    if not p.is_file():
        raise PairsFileError(f"{what} file {str(p)!r} does not exist")
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
                    raise PairsFileError(f"{p}:{lineno}: not a JSON line ({err.msg})") from err
                pairs.extend(_pairs_of(row, f"{p}:{lineno}"))
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise PairsFileError(f"cannot read {what} file {str(p)!r}: {err}") from err
    if not pairs:
        raise PairsFileError(f"{what} file {str(p)!r} holds no query/passage pairs")
    order: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        order.setdefault(q, []).append(i)
    return PairSet(pairs=tuple(pairs), groups=tuple(tuple(v) for v in order.values()), source="built-in" if builtin else str(p))


def _pairs_of(row: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(row, dict):
        raise PairsFileError(f"{where}: each line must be a JSON object with a query and passage(s), not a {type(row).__name__}")
    queries = row.get("queries") if "queries" in row else [row.get("query")]
    if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
        raise PairsFileError(f"{where}: 'query' must be a string (or 'queries' a list of strings)")
    if not all(q.strip() for q in queries):
        raise PairsFileError(f"{where}: 'query' is empty")  # nothing to rank against
    one = next((k for k in _ONE if k in row), None)
    many = next((k for k in _MANY if k in row), None)
    if one is not None and isinstance(row[one], str):
        docs = [row[one]]
    elif many is not None and isinstance(row[many], list) and all(isinstance(d, str) for d in row[many]):
        docs = list(row[many])
    else:
        raise PairsFileError(f"{where}: needs a string 'passage' or a list of strings 'passages'")
    return [(q, d) for q in queries for d in docs]


# -- pairs -> model inputs -----------------------------------------------------------------------
@dataclass(frozen=True)
class FeedBatch:
    """One padded batch of model inputs.

    Attributes:
        rows: indices of its pairs in the encoded list, shortest first (int64, shape ``[b]``).
        feed: the graph's declared inputs, each ``[b, padded_length]`` in its declared dtype.
    """

    rows: np.ndarray
    feed: dict[str, np.ndarray]


def encode_batches(
    pairs: Sequence[tuple[str, str]],
    tokenizer_json: str | Path,
    *,
    max_length: int,
    num_special_tokens_pair: int,
    input_names: Sequence[str],
    input_dtypes: Sequence[str],
    pad_token_id: int,
    batch_tokens: int,
    max_batch_size: int,
) -> tuple[list[FeedBatch], Any]:
    """Encode ``pairs`` with the runtime's own encoder and batcher.

    Args:
        pairs: ``(query, passage)`` strings.
        tokenizer_json: the model folder's ``tokenizer.json``.
        max_length: tokens per pair, special tokens included.
        num_special_tokens_pair: the manifest's count of template tokens per pair.
        input_names: the graph inputs to feed, in order.
        input_dtypes: ``"int64"`` or ``"int32"`` per input.
        pad_token_id: id right padding uses (masked out).
        batch_tokens: padded tokens per batch at most (a longer pair gets a batch of its own).
        max_batch_size: pairs per batch at most.

    Returns:
        ``(batches, encoded)``: the :class:`FeedBatch` list (every pair in exactly one) and the
        :class:`crossrank.tokenize.Encoded` (lengths, per-pair truncation flags).

    Raises:
        ExportError: the tokenizer cannot be loaded or ``max_length`` leaves no room for a pair.
    """
    from crossrank.batching import pad_batch, plan_batches
    from crossrank.errors import ModelFolderError
    from crossrank.tokenize import PairEncoder

    # the runtime's errors say "model folder"/"input": here they stop an export, so ExportError
    try:
        encoder = PairEncoder(tokenizer_json, max_length=max_length, num_special_tokens_pair=num_special_tokens_pair)
    except ModelFolderError as err:
        raise ExportError(f"cannot load tokenizer {tokenizer_json}: {err}") from err
    except InvalidInputError as err:
        raise ExportError(f"cannot encode pairs with max_length {max_length}: {err}") from err
    encoded = encoder.encode(list(pairs))
    dtypes = [np.dtype(np.int32 if d == "int32" else np.int64) for d in input_dtypes]
    batches = [
        FeedBatch(
            rows=b.rows,
            feed=pad_batch(encoded, b, input_names=list(input_names), input_dtypes=dtypes, pad_token_id=pad_token_id),
        )
        for b in plan_batches(encoded.lengths, batch_tokens=batch_tokens, max_batch_size=max_batch_size)
    ]
    return batches, encoded
