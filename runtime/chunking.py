"""Long documents: overlapping token windows, each scored as its own pair, aggregated per document.

With ``long_documents="chunk"`` a document longer than what its pair leaves for it is cut into
token windows (this module plans them); every window becomes one ``(query, window text)`` pair
that goes through the one input path of the Reranker (:class:`~crossrank.tokenize.PairEncoder` ->
:func:`~crossrank.batching.plan_batches` -> :func:`~crossrank.batching.pad_batch`), in the same
length-sorted batches as every other pair, and the document's score aggregates its windows.

Rules (``W`` = the window size in document tokens: what a pair leaves for the document after the
query keeps ``min(query tokens, max_query_tokens)``, capped by ``max_tokens_per_doc``):

* **A document that fits is one window: itself.** Its pair is exactly the pair of
  ``long_documents="truncate"``, so its score is identical.
* **Windows** are planned over the document's own tokens (tokenized alone, with offsets): each
  holds at most ``W`` tokens; consecutive windows overlap by at least ``chunk_overlap`` tokens
  (default :data:`DEFAULT_CHUNK_OVERLAP`; at most ``W // 2`` is used), so the stride is at most
  ``W - chunk_overlap``. A window ends, and the next one starts, on a word boundary of the
  tokenizer's pre-tokenizer (its ``word_ids``), moving back inside the window; a single word
  longer than half a window is cut between tokens instead. Windows cover the document from its
  first to its last token.
* **max_chunks_per_doc** (default :data:`DEFAULT_MAX_CHUNKS_PER_DOC`) keeps the *first* windows;
  text after the last kept window is not read, and the document is flagged ``doc_cut``.
* **Aggregation** over the scores of a document's windows, in document order (the activated
  scores, or the logits with ``raw=True``): ``max`` (default), ``first``, ``mean``,
  ``top2_mean`` (mean of the two highest; the one score of a one-window document). The
  document's ``passage`` is the character span ``(start, end)`` of the window that decided the
  score: the highest-scoring one (first on ties) for ``max``, ``mean`` and ``top2_mean``, the
  first for ``first``.
* **Huge documents** are cut on characters before tokenizing, like the encoder does: only the
  characters the kept windows can reach are read (``tokens x 8 + 256``), and the tokens of the
  prefix's last two words are dropped (they may tokenize differently in the full text).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .choices import canonical_choice
from .errors import InvalidInputError
from .textio import scrub

__all__ = [
    "LONG_DOCUMENT_MODES",
    "AGGREGATES",
    "DEFAULT_MAX_CHUNKS_PER_DOC",
    "DEFAULT_CHUNK_OVERLAP",
    "LongDocOptions",
    "Unit",
    "plan_windows",
    "plan_units",
    "aggregate",
]

LONG_DOCUMENT_MODES = ("truncate", "chunk")
AGGREGATES = ("max", "first", "mean", "top2_mean")
# Eight windows of a 512-token model read ~3,600 document tokens (~2,700 words) per document.
DEFAULT_MAX_CHUNKS_PER_DOC = 8
# Tokens shared by consecutive windows: a sentence of ~25 words cut by one window is whole in the next.
DEFAULT_CHUNK_OVERLAP = 32
_CHARS_PER_TOKEN = 8  # as crossrank.tokenize.CHARS_PER_TOKEN_GUESS
_CUT_SLACK_CHARS = 256


def _int_option(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidInputError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LongDocOptions:
    """The checked long-document options of one call (see :meth:`from_call`)."""

    mode: str = "truncate"
    max_chunks_per_doc: int = DEFAULT_MAX_CHUNKS_PER_DOC
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    aggregate: str = "max"
    max_tokens_per_doc: int | None = None

    @classmethod
    def from_call(
        cls,
        *,
        long_documents: Any = "truncate",
        max_chunks_per_doc: Any = None,
        chunk_overlap: Any = None,
        aggregate: Any = None,
        max_tokens_per_doc: Any = None,
    ) -> "LongDocOptions":
        """Check a call's options; every error is an ``InvalidInputError`` naming the option.

        The chunk options (``max_chunks_per_doc``, ``chunk_overlap``, ``aggregate``) are refused
        with ``long_documents="truncate"``, where they would silently do nothing.
        """
        mode = canonical_choice(long_documents, LONG_DOCUMENT_MODES, what="long_documents")
        if mode == "truncate":
            for name, v in (("max_chunks_per_doc", max_chunks_per_doc), ("chunk_overlap", chunk_overlap), ("aggregate", aggregate)):
                if v is not None:
                    raise InvalidInputError(f"{name} applies only with long_documents='chunk'; got {name}={v!r} with long_documents='truncate'")
        chunks = DEFAULT_MAX_CHUNKS_PER_DOC if max_chunks_per_doc is None else _int_option("max_chunks_per_doc", max_chunks_per_doc, minimum=1)
        overlap = DEFAULT_CHUNK_OVERLAP if chunk_overlap is None else _int_option("chunk_overlap", chunk_overlap, minimum=0)
        agg = "max" if aggregate is None else canonical_choice(aggregate, AGGREGATES, what="aggregate")
        cap = None if max_tokens_per_doc is None else _int_option("max_tokens_per_doc", max_tokens_per_doc, minimum=1)
        return cls(mode=mode, max_chunks_per_doc=chunks, chunk_overlap=overlap, aggregate=agg, max_tokens_per_doc=cap)


def plan_windows(word_ids: Sequence[int | None], size: int, overlap: int, *, max_windows: int | None = None) -> list[tuple[int, int]]:
    """Token windows ``[(start, end), ...]`` over a document of ``len(word_ids)`` tokens.

    Each window has at most ``size`` tokens; consecutive windows share at least
    ``min(overlap, size // 2)`` tokens; windows end and start on word boundaries (a change of
    ``word_ids``) when one lies in the second half of the window, else between tokens. The
    windows cover ``[0, n)`` unless ``max_windows`` stops them first.
    """
    n = len(word_ids)
    if size < 1:
        raise InvalidInputError(f"window size must be >= 1; got {size}")
    ov = max(0, min(int(overlap), size // 2))

    def boundary(i: int) -> bool:  # a window may end before token i / start at token i
        return i <= 0 or i >= n or word_ids[i] is None or word_ids[i] != word_ids[i - 1]

    windows: list[tuple[int, int]] = []
    start = 0
    while start < n and (max_windows is None or len(windows) < max_windows):
        end = min(start + size, n)
        if end < n:
            e = end
            lowest = start + max(1, size // 2)  # never give up more than half a window to a word
            while e > lowest and not boundary(e):
                e -= 1
            if boundary(e) and e > start:
                end = e
        windows.append((start, end))
        if end >= n:
            break
        nxt = end - ov
        s = nxt
        while s > start + 1 and not boundary(s):
            s -= 1  # start at the word's beginning: more overlap, never less
        nxt = s if boundary(s) and s > start else max(nxt, start + 1)
        start = nxt
    return windows


@dataclass(frozen=True)
class Unit:
    """One pair to score: window ``text`` of document ``doc`` at characters ``span`` (None: the
    whole document, as given)."""

    doc: int
    text: str
    span: tuple[int, int] | None


def window_size(encoder: Any, query_tokens: int, max_tokens_per_doc: int | None) -> int:
    """Document tokens one window holds for a query of ``query_tokens`` tokens."""
    w = encoder._room - min(query_tokens, encoder.max_query_tokens)
    return max(1, w if max_tokens_per_doc is None else min(w, max_tokens_per_doc))


def plan_units(encoder: Any, query: str, docs: Sequence[str], opts: LongDocOptions, *, first_doc: int = 0) -> tuple[list[Unit], np.ndarray]:
    """The pairs to score for ``docs`` (document indices start at ``first_doc``) and, per
    document, whether its windows leave text unread (``max_chunks_per_doc`` or a character cut).

    ``truncate``: one unit per document, the document itself (the encoder cuts it).
    ``chunk``: a document that fits is one unit, itself; a longer one is its windows.
    """
    unread = np.zeros(len(docs), dtype=bool)
    if opts.mode == "truncate":
        return [Unit(first_doc + i, d, None) for i, d in enumerate(docs)], unread
    fq = encoder._fit_query(query)
    room = encoder._room
    size = window_size(encoder, fq.tokens, opts.max_tokens_per_doc)
    fits_room = room - fq.tokens  # a document of at most this many tokens fits beside the whole query
    ov = min(opts.chunk_overlap, size // 2)
    reach = size + (opts.max_chunks_per_doc - 1) * max(1, size - ov)  # most tokens the kept windows read
    limit = reach * _CHARS_PER_TOKEN + _CUT_SLACK_CHARS
    texts = [scrub(d if len(d) <= limit else d[:limit]) for d in docs]
    encs = encoder._tok.encode_batch(texts, add_special_tokens=False)
    units: list[Unit] = []
    for i, (d, enc) in enumerate(zip(docs, encs)):
        precut = len(d) > limit
        n = len(enc.ids)
        cap_ok = opts.max_tokens_per_doc is None or n <= opts.max_tokens_per_doc
        if not precut and n <= fits_room and cap_ok:
            units.append(Unit(first_doc + i, d, None))
            continue
        words = list(enc.word_ids)
        offsets = list(enc.offsets)
        if precut:
            # The prefix's last two words may tokenize differently in the whole text: drop them.
            last = max((w for w in words if w is not None), default=None)
            if last is not None:
                keep = [j for j, w in enumerate(words) if w is None or w < last - 1]
                if keep:
                    n = keep[-1] + 1
                    words, offsets = words[:n], offsets[:n]
        if n == 0:
            units.append(Unit(first_doc + i, d, None))
            continue
        wins = plan_windows(words, size, opts.chunk_overlap, max_windows=opts.max_chunks_per_doc)
        unread[i] = precut or wins[-1][1] < n
        for s, e in wins:
            a, b = int(offsets[s][0]), int(offsets[e - 1][1])
            units.append(Unit(first_doc + i, texts[i][a:b], (a, b)))
    return units, unread


def aggregate(scores: np.ndarray, how: str) -> tuple[float, int]:
    """``(document score, deciding window)`` from its windows' scores in document order."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        raise InvalidInputError("a document has no scored window to aggregate")
    best = int(np.argmax(s))  # first on ties
    if how == "first":
        return float(s[0]), 0
    if how == "max":
        return float(s[best]), best
    if how == "mean":
        return float(s.mean()), best
    if how == "top2_mean":
        top = np.sort(s)[::-1][:2]
        return float(top.mean()), best
    raise InvalidInputError(f"aggregate must be one of {', '.join(AGGREGATES)}; got {how!r}")
