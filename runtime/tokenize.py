"""Pair encoding with `tokenizers`: the document is truncated, never the query.

The folder's ``tokenizer.json`` is loaded once, with its truncation and padding switched off:
the pair is encoded whole and the document is then truncated here, exactly as `tokenizers`'
``only_second`` strategy does (first document tokens kept, special tokens kept), which also lets
the same tokenizer measure queries. Batches are padded by :mod:`crossrank.batching`, each only to
its own longest pair.

Rules, per pair:

* **Query budget.** A query may use at most ``max_query_tokens`` tokens (default: half of
  ``max_length``, so the document always keeps at least the other half). A longer query is cut
  at a token boundary and a warning is logged; it is counted in :attr:`Encoded.query_truncated`.
* **Document truncation.** The document is cut to what remains of ``max_length`` after the
  query and the special tokens; :attr:`Encoded.truncated` flags every pair that lost tokens.
* **Character pre-cut, exact.** A document longer than ``doc_budget * CHARS_PER_TOKEN_GUESS``
  characters is first cut on characters so that a 10 MB string costs no more to tokenize than a
  long passage. The cut is only kept when it provably changes nothing: the prefix, encoded with
  the query, must already overflow the budget *and* the last kept token must lie at least two
  pre-tokenizer words before the end of the prefix (only the last word or two of a prefix can
  tokenize differently from the full text). Otherwise the cut is doubled and tried again, up to
  the full text. The scores are therefore the same as tokenizing the full text.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InvalidInputError, ModelFolderError

__all__ = ["PairEncoder", "Encoded", "CHARS_PER_TOKEN_GUESS", "scrub"]

log = logging.getLogger("crossrank.tokenize")

# Initial character cut per token of document budget. English WordPiece averages ~4.5
# characters per token; 8 leaves room for most texts to need no second try.
CHARS_PER_TOKEN_GUESS = 8
# Fixed slack added to every character cut (short budgets, long words).
_CUT_SLACK_CHARS = 256
# Pairs tokenized per `encode_batch` call.
ENCODE_CHUNK = 1024


@dataclass(frozen=True)
class Encoded:
    """Token ids of a list of pairs, unpadded: row ``i`` is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: np.ndarray  # int64, all pairs concatenated
    type_ids: np.ndarray  # int64, same layout
    offsets: np.ndarray  # int64, len(pairs) + 1
    truncated: np.ndarray  # bool per pair: the document lost tokens
    query_truncated: int  # how many distinct queries were cut to max_query_tokens

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def scrub(text: str) -> str:
    """``text`` ready for `tokenizers`: lone UTF-16 surrogates (which a Python str may hold but
    Rust cannot) become U+FFFD; surrogate pairs become the character they encode."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class PairEncoder:
    """Encode (query, document) pairs for one model folder's tokenizer.

    The tokenizer runs without truncation or padding (one instance, loaded once); the document is
    truncated here, exactly as `tokenizers`' ``only_second`` strategy would: its first tokens are
    kept, the template's special tokens around it stay. Thread-safe: nothing is mutated after
    construction, and `tokenizers` encoding is re-entrant.
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
        room = self.max_length - self.num_special
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
        self._tok = tok

    # -- queries ---------------------------------------------------------------------------------
    def fit_query(self, query: str) -> tuple[str, int, bool]:
        """Return (query text that fits the budget, its token count, whether it was cut)."""
        enc = self._tok.encode(query, add_special_tokens=False)
        n = len(enc.ids)
        if n <= self.max_query_tokens:
            return query, n, False
        offsets = enc.offsets
        keep = self.max_query_tokens
        while keep > 0:
            cut = query[: offsets[keep - 1][1]]
            m = len(self._tok.encode(cut, add_special_tokens=False).ids)
            if m <= self.max_query_tokens:
                log.warning(
                    "query of %d tokens cut to its first %d tokens (max_query_tokens) to leave room for the document", n, m
                )
                return cut, m, True
            keep -= 1
        return "", 0, True  # pragma: no cover - a single token can always be kept

    # -- documents -------------------------------------------------------------------------------
    @staticmethod
    def _char_limit(budget: int) -> int:
        return budget * CHARS_PER_TOKEN_GUESS + _CUT_SLACK_CHARS

    @staticmethod
    def _cut_is_exact(enc: Any, budget: int) -> bool:
        """True when the document of pair encoding ``enc`` (made from a character prefix) has more
        than ``budget`` tokens and the kept ones end at least two words before the prefix's end."""
        seq = enc.sequence_ids
        words = enc.word_ids
        doc_words = [w for s, w in zip(seq, words) if s == 1]
        if len(doc_words) <= budget:
            return False
        last_kept = doc_words[budget - 1]
        last_word = max((w for w in doc_words if w is not None), default=None)
        return last_kept is not None and last_word is not None and last_kept < last_word - 1

    def _encode_long(self, query: str, doc: str, budget: int) -> Any:
        """Pair encoding of (query, the shortest exact character prefix of doc)."""
        limit = self._char_limit(budget) * 2
        while limit < len(doc):
            enc = self._tok.encode(query, scrub(doc[:limit]), add_special_tokens=True)
            if self._cut_is_exact(enc, budget):
                return enc
            limit *= 2
        return self._tok.encode(query, scrub(doc), add_special_tokens=True)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> Encoded:
        """Encode pairs of already type-checked strings.

        Pairs are tokenized in chunks of :data:`ENCODE_CHUNK`, keeping only their token ids, so
        the tokenizer's per-pair objects never pile up for 10,000 candidates.
        """
        n = len(pairs)
        fitted: dict[str, tuple[str, int, bool]] = {}
        rows_ids: list[np.ndarray] = []
        rows_types: list[np.ndarray] = []
        truncated = np.zeros(n, dtype=bool)
        for start in range(0, n, ENCODE_CHUNK):
            chunk = pairs[start : start + ENCODE_CHUNK]
            batch: list[tuple[str, str]] = []
            budgets: list[int] = []
            precut: list[int] = []
            for j, (q, d) in enumerate(chunk):
                f = fitted.get(q)
                if f is None:
                    f = fitted[q] = self.fit_query(scrub(q))
                qtext, qlen, _ = f
                budget = self.max_length - self.num_special - qlen
                budgets.append(budget)
                limit = self._char_limit(budget)
                if len(d) > limit:
                    precut.append(j)
                    d = d[:limit]
                batch.append((qtext, scrub(d)))
            encs = self._tok.encode_batch(batch, add_special_tokens=True)
            for j in precut:
                if not self._cut_is_exact(encs[j], budgets[j]):
                    encs[j] = self._encode_long(batch[j][0], chunk[j][1], budgets[j])
            for j, e in enumerate(encs):
                ids = np.asarray(e.ids, dtype=np.int64)
                types = np.asarray(e.type_ids, dtype=np.int64)
                if len(ids) > self.max_length:
                    # only_second: keep the document's first tokens and every special token around it.
                    seq = e.sequence_ids
                    first = seq.index(1)
                    after = first + sum(1 for s in seq if s == 1)
                    keep = first + (len(ids) - after)  # tokens that are not the document's
                    cut_at = first + (self.max_length - keep)
                    ids = np.concatenate([ids[:cut_at], ids[after:]])
                    types = np.concatenate([types[:cut_at], types[after:]])
                    truncated[start + j] = True
                rows_ids.append(ids)
                rows_types.append(types)
            del encs
        lengths = np.fromiter((len(r) for r in rows_ids), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        empty = np.empty(0, dtype=np.int64)
        return Encoded(
            ids=np.concatenate(rows_ids) if rows_ids else empty,
            type_ids=np.concatenate(rows_types) if rows_types else empty,
            offsets=offsets,
            truncated=truncated,
            query_truncated=sum(1 for f in fitted.values() if f[2]),
        )
