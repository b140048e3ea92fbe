"""Pair encoding with `tokenizers`: a query is cut only when its pair would overflow.

The folder's ``tokenizer.json`` is loaded once, with its truncation and padding switched off:
each pair is encoded whole and then cut here, on tokens, exactly as `tokenizers`' own truncation
cuts a sequence (first tokens kept, the template's special tokens kept). Batches are padded by
:mod:`crossrank.batching`, each only to its own longest pair.

Rules, per pair (``room`` = ``max_length`` minus the pair's special tokens):

* **Nothing is cut from a pair that fits.** A query of 340 tokens with a short document keeps
  all 340 tokens when the pair fits in ``max_length``.
* **Overflow.** The document keeps ``room`` minus the query's tokens; a query longer than
  ``max_query_tokens`` (default half of ``room``) is cut, but only as far as the document needs:
  it keeps ``max(max_query_tokens, room - document tokens)``. So ``max_query_tokens`` bounds how
  much of the budget a long query may take from the document; it never cuts a query alone.
* **``max_doc_tokens``** (per :meth:`PairEncoder.encode` call) caps the document's tokens first
  (Cohere's ``max_tokens_per_doc``); a cut it makes counts as truncation.
* **Flags.** :attr:`Encoded.query_cut` / :attr:`Encoded.doc_cut` say per pair which part lost
  tokens; :attr:`Encoded.truncated` is either of them.
* **Character pre-cut, bounded.** A document (or query) longer than ``need * CHARS_PER_TOKEN_GUESS
  + 256`` characters, ``need`` being the most tokens it could keep, is first cut on characters, so
  a 10 MB string costs what a long passage costs. A cut is *exact* when its encoding has more than
  ``need`` tokens and the last one kept lies at least two pre-tokenizer words before the end of
  the prefix (only the last word or two of a prefix can tokenize differently from the full text):
  the kept tokens are then those of the full text. Otherwise the cut is doubled, at most
  :data:`MAX_PRECUT_RETRIES` times. Text that still has no exact cut then (no word breaks: DNA,
  unspaced CJK through a Metaspace tokenizer, base64) is scored on its longest prefix tried and
  flagged as cut, since it was not read whole; a token-level check compares that prefix's kept
  tokens with those of the prefix half its size and logs a warning when they differ. Cost per
  pair is therefore at most ``(2 ** (MAX_PRECUT_RETRIES + 1) - 1)`` first cuts of characters,
  whatever the text's length.
"""
from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InvalidInputError, ModelFolderError
from .textio import scrub

__all__ = ["PairEncoder", "Encoded", "CHARS_PER_TOKEN_GUESS", "MAX_PRECUT_RETRIES", "scrub"]

log = logging.getLogger("crossrank.tokenize")

# Initial character cut per token a text may keep. English WordPiece averages ~4.5 characters per
# token; 8 leaves room for most texts to need no second try.
CHARS_PER_TOKEN_GUESS = 8
# Fixed slack added to every character cut (short budgets, long words).
_CUT_SLACK_CHARS = 256
# Doublings of a character cut that was not exact (first cut L, then 2L, 4L, 8L): bounds the
# characters tokenized per pair to 15 L, ~65,000 for a 512-token model.
MAX_PRECUT_RETRIES = 3
# Pairs tokenized per `encode_batch` call.
ENCODE_CHUNK = 1024
# Characters (after the pre-cut) tokenized per `encode_batch` call, at most. All `encode_batch`
# calls of a process share one `tokenizers` thread pool, which runs a call's pieces before a later
# call's: a small request tokenizing beside a megabyte one waits out one chunk, not all of it.
# 128 KiB is ~0.1 s with the MiniLM tokenizer on the 2-core EPYC (~1 MB/s, scheduler.py).
ENCODE_CHUNK_CHARS = 128 * 1024


@dataclass(frozen=True)
class Encoded:
    """Token ids of a list of pairs, unpadded: row ``i`` is ``ids[offsets[i]:offsets[i+1]]``.

    ``query_cut`` and ``doc_cut`` are None only when built by older code; :class:`PairEncoder`
    always fills them.
    """

    ids: np.ndarray  # int64, all pairs concatenated
    type_ids: np.ndarray  # int64, same layout
    offsets: np.ndarray  # int64, len(pairs) + 1
    truncated: np.ndarray  # bool per pair: the query or the document lost tokens (query_cut | doc_cut)
    query_truncated: int  # how many distinct queries lost tokens in at least one pair
    query_cut: np.ndarray | None = None  # bool per pair: the query lost tokens
    doc_cut: np.ndarray | None = None  # bool per pair: the document lost tokens (max_length or max_doc_tokens)

    def __post_init__(self) -> None:
        if self.query_cut is None:
            object.__setattr__(self, "query_cut", np.zeros(len(self.truncated), dtype=bool))
        if self.doc_cut is None:
            object.__setattr__(self, "doc_cut", np.asarray(self.truncated, dtype=bool).copy())

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True)
class _Query:
    text: str  # what is tokenized: the query, or a character prefix of it (pre-cut)
    tokens: int  # token count of ``text`` (no special tokens)
    partial: bool  # ``text`` is a prefix: the query loses tokens in every pair (flagged)


def _part_words(enc: Any, seq: int) -> list[Any]:
    """Pre-tokenizer word ids of the tokens of sequence ``seq`` (0 query, 1 document) of ``enc``."""
    return [w for s, w in zip(enc.sequence_ids, enc.word_ids) if s == seq]


def _cut_is_exact(words: list[Any], need: int) -> bool:
    """True when a prefix whose part has word ids ``words`` holds more than ``need`` tokens and the
    ``need``-th ends at least two words before the prefix's last word (so it is the full text's)."""
    if len(words) <= need:
        return False
    last_kept = words[need - 1]
    last_word = max((w for w in words if w is not None), default=None)
    return last_kept is not None and last_word is not None and last_kept < last_word - 1


class PairEncoder:
    """Encode (query, document) pairs for one model folder's tokenizer.

    The tokenizer runs without truncation or padding (one instance, loaded once); pairs are cut
    here (see the module docstring). Thread-safe: nothing is mutated after construction, and
    `tokenizers` encoding is re-entrant.
    """

    def __init__(
        self,
        tokenizer_file: str | Path,
        *,
        max_length: int,
        num_special_tokens_pair: int,
        max_query_tokens: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer  # noqa: PLC0415 - keeps `import crossrank` cheap

        try:
            tok = Tokenizer.from_file(str(tokenizer_file))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise ModelFolderError(f"{tokenizer_file}: cannot load the tokenizer: {err}", path=tokenizer_file) from err
        tok.no_padding()
        tok.no_truncation()
        self.max_length = int(max_length)
        self.num_special = int(num_special_tokens_pair)
        # What the tokenizer's post-processor really adds to a pair (the manifest should agree).
        self._pair_specials = int(tok.num_special_tokens_to_add(True))
        room = self.max_length - max(self.num_special, self._pair_specials)
        if room < 2:
            raise InvalidInputError(f"max_length {max_length} leaves no room for a query and a document")
        if max_query_tokens is None:
            max_query_tokens = room // 2
        if isinstance(max_query_tokens, bool) or not isinstance(max_query_tokens, int) or not 1 <= max_query_tokens < room:
            raise InvalidInputError(
                f"max_query_tokens must be an int between 1 and {room - 1} (max_length {max_length} minus "
                f"{self.num_special} special tokens, leaving at least one document token); got {max_query_tokens!r}"
            )
        self.max_query_tokens = int(max_query_tokens)
        self._room = room
        self._tok = tok

    # -- character pre-cut -----------------------------------------------------------------------
    @staticmethod
    def _char_limit(need: int) -> int:
        return need * CHARS_PER_TOKEN_GUESS + _CUT_SLACK_CHARS

    def _retry_cut(
        self, encode: Callable[[str], Any], text: str, need: int, seq: int, limit: int, tried: Any
    ) -> tuple[Any, bool, int]:
        """Encoding of a character prefix of ``text`` whose part ``seq`` holds the full text's first
        ``need`` tokens, after a cut at ``limit`` chars (encoded as ``tried``) was not exact.

        Returns ``(encoding, settled, chars)``: ``chars`` is the prefix length encoded;
        ``settled`` is False when :data:`MAX_PRECUT_RETRIES` doublings found no exact cut and the
        last prefix is used (the caller flags the part as cut: it was not read whole).
        """
        prev = tried
        for _ in range(MAX_PRECUT_RETRIES):
            limit *= 2
            if limit >= len(text):
                return encode(text), True, len(text)
            enc = encode(text[:limit])
            if _cut_is_exact(_part_words(enc, seq), need):
                return enc, True, limit
            prev, tried = tried, enc
        # Token-level check: the kept tokens should not move when the prefix doubles.
        if self._part_ids(tried, seq)[:need] != self._part_ids(prev, seq)[:need]:
            log.warning(
                "a text of %d characters has no word break where it could be cut exactly, and its first %d "
                "tokens differ between prefixes of %d and %d characters; it is scored on the longer one",
                len(text), need, limit // 2, limit,
            )
        else:
            log.debug("a text of %d characters has no exact cut: scored on its first %d characters", len(text), limit)
        return tried, False, limit

    @staticmethod
    def _part_ids(enc: Any, seq: int) -> list[int]:
        return [i for s, i in zip(enc.sequence_ids, enc.ids) if s == seq]

    def _fit_query(self, query: str) -> _Query:
        """The query's text to tokenize and its token count; a query longer than any pair can
        hold is pre-cut on characters like a document (exact for its first ``room`` tokens)."""
        need = self._room  # the most tokens a query can keep (with an empty document)
        limit = self._char_limit(need)

        def encode(text: str) -> Any:
            return self._tok.encode(scrub(text), add_special_tokens=False)

        if len(query) <= limit:
            return _Query(scrub(query), len(encode(query).ids), False)
        enc, settled, chars = encode(query[:limit]), True, limit
        if not _cut_is_exact(_part_words(enc, 0), need):
            enc, settled, chars = self._retry_cut(encode, query, need, 0, limit, enc)
        text = scrub(query[:chars])
        if chars >= len(query):  # a retry reached the end: the whole query
            return _Query(text, len(enc.ids), False)
        if settled:
            # Every pair tokenizes the query again: keep only up to two words past the last kept
            # token (the same first ``need`` tokens, by the exactness rule) instead of the prefix.
            kept_word = enc.word_ids[need - 1]
            end = max(e for (_, e), w in zip(enc.offsets, enc.word_ids) if w is not None and w <= kept_word + 2)
            text = text[:end]
            return _Query(text, len(encode(text).ids), True)
        return _Query(text, len(enc.ids), True)

    # -- pairs -----------------------------------------------------------------------------------
    def encode(self, pairs: Sequence[tuple[str, str]], *, max_doc_tokens: int | None = None) -> Encoded:
        """Encode pairs of already type-checked strings (see the module docstring for the rules).

        Args:
            pairs: ``(query, document)`` strings.
            max_doc_tokens: keyword-only; at most this many document tokens per pair (None: only
                ``max_length`` limits them). A document it cuts is flagged in ``doc_cut``.

        Returns:
            :class:`Encoded`: unpadded ids, per-pair lengths of at most ``max_length`` tokens, and
            the ``truncated`` / ``query_cut`` / ``doc_cut`` flags (bool per pair).

        Raises:
            InvalidInputError: ``max_doc_tokens`` is not None or an int >= 1.

        Pairs are tokenized in chunks of at most :data:`ENCODE_CHUNK` pairs and
        :data:`ENCODE_CHUNK_CHARS` characters, keeping only their token ids, so the tokenizer's
        per-pair objects never pile up for 10,000 candidates and a concurrent small call never
        waits behind a megabyte one.
        """
        if max_doc_tokens is not None and (
            isinstance(max_doc_tokens, (bool, np.bool_)) or not isinstance(max_doc_tokens, numbers.Integral) or max_doc_tokens < 1
        ):
            raise InvalidInputError(f"max_doc_tokens must be None or an int >= 1; got {max_doc_tokens!r}")
        cap = None if max_doc_tokens is None else int(max_doc_tokens)
        room, mqt = self._room, self.max_query_tokens
        n = len(pairs)
        fitted: dict[str, _Query] = {}
        cut_queries: set[str] = set()
        rows_ids: list[np.ndarray] = []
        rows_types: list[np.ndarray] = []
        query_cut = np.zeros(n, dtype=bool)
        doc_cut = np.zeros(n, dtype=bool)
        widest = self._char_limit(room)  # no document keeps more characters than this before encoding
        start = 0
        while start < n:
            stop, chars = start, 0
            while stop < n and stop - start < ENCODE_CHUNK and (stop == start or chars < ENCODE_CHUNK_CHARS):
                chars += len(pairs[stop][0]) + min(len(pairs[stop][1]), widest)
                stop += 1
            chunk = pairs[start:stop]
            batch: list[tuple[str, str]] = []
            queries: list[_Query] = []
            needs: list[int] = []
            precut: list[int] = []
            for j, (q, d) in enumerate(chunk):
                fq = fitted.get(q)
                if fq is None:
                    fq = fitted[q] = self._fit_query(q)
                queries.append(fq)
                # The most document tokens this pair can keep: the query keeps at least
                # min(its tokens, max_query_tokens).
                need = room - min(fq.tokens, mqt)
                if cap is not None:
                    need = min(need, cap)
                needs.append(need)
                limit = self._char_limit(need)
                if len(d) > limit:
                    precut.append(j)
                    d = d[:limit]
                batch.append((fq.text, scrub(d)))
            encs = self._tok.encode_batch(batch, add_special_tokens=True)
            settled = [True] * len(chunk)
            for j in precut:
                if not _cut_is_exact(_part_words(encs[j], 1), needs[j]):
                    qtext = batch[j][0]

                    def encode_pair(doc: str, qtext: str = qtext) -> Any:
                        return self._tok.encode(qtext, scrub(doc), add_special_tokens=True)

                    limit = self._char_limit(needs[j])
                    encs[j], settled[j], _ = self._retry_cut(encode_pair, chunk[j][1], needs[j], 1, limit, encs[j])
            for j, e in enumerate(encs):
                fq = queries[j]
                ids = np.asarray(e.ids, dtype=np.int64)
                types = np.asarray(e.type_ids, dtype=np.int64)
                qn = fq.tokens
                dn = len(ids) - qn - self._pair_specials
                avail = dn if cap is None else min(dn, cap)
                if qn + avail <= room:
                    q_keep, d_keep = qn, avail
                else:  # overflow: the query gives up tokens beyond max_query_tokens, only as many as needed
                    q_keep = min(qn, max(mqt, room - avail))
                    d_keep = min(avail, room - q_keep)
                if q_keep < qn or d_keep < dn:
                    seq = np.fromiter((-1 if s is None else s for s in e.sequence_ids), dtype=np.int64, count=len(ids))
                    keep = np.ones(len(ids), dtype=bool)
                    keep[np.flatnonzero(seq == 0)[q_keep:]] = False
                    keep[np.flatnonzero(seq == 1)[d_keep:]] = False
                    ids, types = ids[keep], types[keep]
                row = start + j
                query_cut[row] = q_keep < qn or fq.partial
                doc_cut[row] = d_keep < dn or not settled[j]
                if query_cut[row]:
                    cut_queries.add(chunk[j][0])
                rows_ids.append(ids)
                rows_types.append(types)
            del encs
            start = stop
        if cut_queries:
            log.warning(
                "%d of %d pairs lost query tokens (max_length=%d: an overflowing pair's query keeps "
                "max(max_query_tokens=%d, what its document leaves); a query without word breaks is read up to a "
                "bounded prefix)",
                int(query_cut.sum()), n, self.max_length, mqt,
            )
        lengths = np.fromiter((len(r) for r in rows_ids), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        empty = np.empty(0, dtype=np.int64)
        return Encoded(
            ids=np.concatenate(rows_ids) if rows_ids else empty,
            type_ids=np.concatenate(rows_types) if rows_types else empty,
            offsets=offsets,
            truncated=query_cut | doc_cut,
            query_truncated=len(cut_queries),
            query_cut=query_cut,
            doc_cut=doc_cut,
        )
