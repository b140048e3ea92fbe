"""The Reranker: load a crossrank model folder, score and rank (query, document) pairs.

    from crossrank import Reranker
    rr = Reranker.load("./minilm")                    # int8 on CPU, fp16 on CUDA
    rr.rerank("How do I export my data?", docs, top_k=3)
    rr.score("How do I export my data?", docs)        # np.ndarray, input order

One Reranker holds one onnxruntime session for its whole life and is safe to share between
threads: every call keeps its state local (no "last call" attributes).
"""
from __future__ import annotations

import logging
import numbers
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence, overload

import numpy as np

from .activation import apply_activation
from .batching import BatchingOptions, plan_batches
from .budget import ENCODE_SLICE, calibrated, check_budget_ms, next_batch_end
from .chunking import LongDocOptions, Unit, aggregate as aggregate_windows, plan_units
from .costmodel import CostModel
from .checks import flag, positive_int
from .errors import InputTypeError, InvalidInputError, ModelFolderError, ProviderError
from .manifest import Manifest, load_manifest, resolve_variant, verify_file
from .session import OnnxSession, SessionOptions, candidate_providers
from .tokenize import PairEncoder

__all__ = ["Reranker", "Result", "ScoreInfo", "DEFAULT_BATCHING", "DYNAMIC_INT8_MAX_BATCH_SIZE"]

log = logging.getLogger("crossrank.reranker")

# Batching defaults per provider: (batch_tokens, max_batch_size). CPU: 512 padded tokens per run was
# fastest or within noise at 10-100 candidates (measurements: docs/batching-defaults.md). CUDA: not
# measured (no GPU); larger batches keep a GPU busy, so its budget is 64x the CPU's.
DEFAULT_BATCHING = {"cpu": (512, 64), "cuda": (32768, 256)}
# A dynamically quantized int8 graph computes activation scales over the whole padded batch, so
# a pair's score moves with its batch mates (measured on the real model: up to 0.1 in sigmoid
# score). Its default is one pair per run: exactly batch-invariant, ~15-25% slower than batching.
DYNAMIC_INT8_MAX_BATCH_SIZE = 1


@dataclass(frozen=True)
class Result:
    """One ranked document: its position in the caller's list, its score and the text."""

    index: int
    score: float
    document: str
    truncated: bool = False  # the pair lost tokens: its query, its document or both were cut (below)
    scored: bool = True  # False: left unscored by a deadline (score is NaN, ranked after every scored one)
    query_cut: bool = False  # the query lost tokens (the pair overflowed max_length)
    doc_cut: bool = False  # the document lost tokens (chunked: some of its text was not in a scored window)
    passage: tuple[int, int] | None = None  # long_documents="chunk": (start_char, end_char) of the deciding window
    windows: int = 1  # pairs (windows) scored for this document; 0 when unscored


@dataclass(frozen=True)
class ScoreInfo:
    """What happened to the pairs of one call (returned by ``score(..., return_info=True)``)."""

    truncated: np.ndarray  # bool per pair, input order: the query or the document lost tokens
    query_truncated: int  # distinct queries that lost tokens in at least one pair
    batch_shapes: tuple[tuple[int, int], ...]  # (batch size, padded length) of each ORT run, in run order
    query_cut: np.ndarray | None = None  # bool per pair, input order: the query lost tokens
    doc_cut: np.ndarray | None = None  # bool per pair, input order: the document lost tokens
    scored: np.ndarray | None = None  # bool per document: scored (False: left out by budget_ms)
    passages: tuple[tuple[int, int] | None, ...] | None = None  # per document (chunk mode): deciding window's characters
    windows: np.ndarray | None = None  # int per document: pairs (windows) scored for it

    def __post_init__(self) -> None:
        n = len(self.truncated)
        if self.query_cut is None:
            object.__setattr__(self, "query_cut", np.zeros(n, dtype=bool))
        if self.doc_cut is None:
            object.__setattr__(self, "doc_cut", np.asarray(self.truncated, dtype=bool).copy())
        if self.scored is None:
            object.__setattr__(self, "scored", np.ones(n, dtype=bool))
        if self.passages is None:
            object.__setattr__(self, "passages", (None,) * n)
        if self.windows is None:
            object.__setattr__(self, "windows", np.ones(n, dtype=np.int64))

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())


class Reranker:
    """A cross-encoder reranker over one variant of a crossrank model folder.

    Create it with :meth:`load`. Attributes: ``path``, ``manifest``, ``variant`` (the loaded
    variant name), ``providers`` (the execution providers onnxruntime actually granted),
    ``max_length``, ``batch_tokens``, ``max_batch_size``.
    """

    def __init__(
        self,
        *,
        path: Path,
        manifest: Manifest,
        variant: str,
        session: OnnxSession,
        encoder: PairEncoder,
        batch_tokens: int,
        max_batch_size: int,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.variant = variant
        self._session = session
        self._encoder = encoder
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        # What one run costs on this machine (crossrank.costmodel), fed by every run but the
        # session's first; budget_ms sizes its runs with it.
        self.cost = CostModel()
        self._warm = False
        self._warm_lock = threading.Lock()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        variant: str = "auto",
        provider: str = "auto",
        threads: int | None = None,
        max_length: int | None = None,
        max_query_tokens: int | None = None,
        batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        verify: bool = True,
        graph_optimization: str = "all",
        spinning: bool = True,
        memory_arena: bool = True,
        device_id: int = 0,
        cache_dir: str | Path | None | Literal[False] = None,
        session_options: Any = None,
    ) -> "Reranker":
        """Load a model folder written by ``crossrank export``.

        Enumerated options (``variant``, ``provider``, ``graph_optimization``) are matched in any
        case with surrounding whitespace ignored (:mod:`crossrank.choices`).

        Args:
            path: the model folder (holding ``crossrank.json``).
            variant: ``"auto"`` (int8 on CPU; fp16, else optimized, else fp32 on CUDA) or a
                variant name the folder has (``fp32``, ``optimized``, ``int8``, ``fp16``).
            provider: ``"auto"`` (CUDA when usable, else CPU, logged), ``"cpu"`` or ``"cuda"``
                (an error when onnxruntime has no usable CUDA provider).
            threads: onnxruntime intra-op threads; None = onnxruntime's default (one per
                physical core). Give 1-2 per Reranker when a service runs several.
            max_length: tokens per pair, special tokens included; at most (and by default) the
                manifest's ``max_length``.
            max_query_tokens: how much of the budget a long query may take from the document
                when a pair overflows ``max_length``: the query then keeps max(this, what the
                document leaves) tokens (cut with a warning). A pair that fits is never cut.
                Default half of what ``max_length`` leaves after special tokens, so a document
                always keeps at least the other half.
            batch_tokens: padded-token budget of one onnxruntime run (batch size x padded
                length); bounds peak memory whatever the candidate count. Default
                ``DEFAULT_BATCHING[provider][0]`` (512 on CPU, measured; 32768 on CUDA).
            max_batch_size: most pairs per run (default 64 on CPU, 256 on CUDA; 1 for an int8
                variant quantized with the ``dynamic`` scheme, whose scores otherwise depend on
                their batch mates).
            verify: check the sha256 of the chosen ONNX file and of tokenizer.json against the
                manifest (costs ~0.1 s per 100 MB); False skips it.
            graph_optimization: onnxruntime graph optimization level at session start,
                ``"disable" | "basic" | "extended" | "all"``. "all" (default) also applies the
                CPU-specific fusions of onnxruntime; with the graph cache
                this work is done once per model, onnxruntime version and CPU, not on every start.
            spinning: let idle onnxruntime worker threads spin for new work (lowest latency; burns
                CPU between calls). False for services that share cores with other work.
            memory_arena: keep onnxruntime's CPU memory arena (faster repeated calls; holds the
                peak batch's memory, which ``batch_tokens`` bounds).
            device_id: CUDA device to use.
            cache_dir: where CPU sessions keep onnxruntime's optimized graph between starts (see
                :mod:`crossrank.graph_cache`): None = ``$CROSSRANK_CACHE`` or
                ``~/.cache/crossrank``; False = no cache (every start re-optimizes).
            session_options: an ``onnxruntime.SessionOptions`` of your own, for settings crossrank
                does not expose (profiling, custom op libraries, ``add_session_config_entry``...).
                It is used as given (never changed) instead of the one crossrank builds, so it
                replaces ``threads``, ``graph_optimization``, ``spinning``, ``memory_arena`` and
                crossrank's fixed settings (one inter-op thread, sequential execution, errors-only
                onnxruntime logging). Giving ``threads`` with it, or any of the other three with a
                value other than its default, is an ``InvalidInputError`` (set the field on your
                options instead). The graph cache is off with it (its key covers only crossrank's
                own settings), so a ``cache_dir`` path is refused too. ``provider``,
                ``device_id``, ``variant``, batching and tokenization apply as usual.

        Returns:
            A :class:`Reranker` holding one onnxruntime session for its whole life.

        Raises:
            ModelFolderError: folder or file missing, unreadable model file, graph inputs not
                matching the manifest (each naming the file).
            ManifestError: invalid crossrank.json or one from a newer schema.
            IntegrityError: a file's sha256 differs from the manifest (with ``verify=True``).
            VariantNotFoundError: ``variant`` is not in the folder (the message lists those it has).
            ProviderError: ``provider="cuda"`` without a usable CUDA execution provider
                (``provider="auto"`` falls back to the CPU instead, with a warning).
            InvalidInputError: an option out of range, or conflicting with ``session_options``.
        """
        folder = Path(path).expanduser()
        manifest = load_manifest(folder)
        if not isinstance(verify, bool):
            raise InvalidInputError(f"verify must be True or False; got {verify!r}")
        if session_options is not None and cache_dir not in (None, False):
            raise InvalidInputError(f"cache_dir={cache_dir!r} conflicts with session_options: the graph cache is off with your own SessionOptions")
        if cache_dir is False or session_options is not None:
            cache: Path | None = None
        elif cache_dir is None:
            from .graph_cache import default_cache_dir  # noqa: PLC0415

            cache = default_cache_dir()
        elif isinstance(cache_dir, (str, Path)):
            cache = Path(cache_dir)
        else:
            raise InvalidInputError(f"cache_dir must be a folder path, None (default location) or False (off); got {cache_dir!r}")
        options = SessionOptions(
            threads=threads,
            graph_optimization=graph_optimization,
            spinning=spinning,
            memory_arena=memory_arena,
            device_id=device_id,
            cache_dir=cache,
            custom=session_options,
        )
        length = _check_max_length(max_length, manifest)
        for name, value in (("batch_tokens", batch_tokens), ("max_batch_size", max_batch_size)):
            if value is not None:
                positive_int(name, value)  # refused before any file is read; BatchingOptions stores them

        candidates = candidate_providers(provider)
        resolve_variant(manifest, variant, provider=candidates[0])  # a missing variant is refused before any file is read
        tok_path = _check_file(folder, manifest.tokenizer.file, manifest.tokenizer.sha256, verify)
        encoder = PairEncoder(
            tok_path,
            max_length=length,
            num_special_tokens_pair=manifest.tokenizer.num_special_tokens_pair,
            max_query_tokens=max_query_tokens,
        )
        # provider="auto" with a CUDA build tries CUDA, then the CPU (each with its own variant).
        for attempt, prov in enumerate(candidates):
            chosen = resolve_variant(manifest, variant, provider=prov)
            spec = manifest.variants[chosen]
            model_path = _check_file(folder, spec.file, spec.sha256, verify)
            try:
                session = OnnxSession(model_path, manifest=manifest, sha256=spec.sha256, provider=prov, options=options)
                break
            except ProviderError as why:
                if attempt + 1 == len(candidates):
                    raise
                log.warning("provider auto: CUDA is not usable (%s); falling back to the CPU", why)
        default_tokens, default_batch = DEFAULT_BATCHING[session.provider]
        if spec.precision == "int8" and spec.settings.get("scheme") == "dynamic":
            default_batch = DYNAMIC_INT8_MAX_BATCH_SIZE
        batching = BatchingOptions(
            batch_tokens=default_tokens if batch_tokens is None else batch_tokens,
            max_batch_size=default_batch if max_batch_size is None else max_batch_size,
        )
        log.debug("loaded %s variant %s on %s", folder, chosen, ", ".join(session.providers))
        return cls(
            path=folder,
            manifest=manifest,
            variant=chosen,
            session=session,
            encoder=encoder,
            batch_tokens=batching.batch_tokens,
            max_batch_size=batching.max_batch_size,
        )

    # -- properties ------------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        """Execution providers onnxruntime granted to the session, in priority order."""
        return list(self._session.providers)

    @property
    def provider(self) -> str:
        """``"cpu"`` or ``"cuda"``: where the batches run."""
        return self._session.provider

    @property
    def max_length(self) -> int:
        return self._encoder.max_length

    @property
    def max_query_tokens(self) -> int:
        return self._encoder.max_query_tokens

    def __repr__(self) -> str:
        return f"Reranker({str(self.path)!r}, variant={self.variant!r}, providers={self.providers}, max_length={self.max_length})"

    # -- scoring ---------------------------------------------------------------------------------
    @overload
    def score(
        self, query: str, documents: Iterable[str], *, raw: bool = ..., return_info: Literal[False] = ..., **options: Any
    ) -> np.ndarray: ...
    @overload
    def score(
        self, query: str, documents: Iterable[str], *, raw: bool = ..., return_info: Literal[True], **options: Any
    ) -> tuple[np.ndarray, ScoreInfo]: ...

    def score(
        self,
        query: str,
        documents: Iterable[str],
        *,
        raw: bool = False,
        return_info: bool = False,
        long_documents: str = "truncate",
        max_chunks_per_doc: int | None = None,
        chunk_overlap: int | None = None,
        aggregate: str | None = None,
        max_tokens_per_doc: int | None = None,
        budget_ms: float | None = None,
    ) -> Any:
        """Scores of ``documents`` for ``query``, in input order.

        Args:
            query: the query text.
            documents: the candidate texts (any iterable of str; copied, never changed).
            raw: False (default): the manifest's activation applied (sigmoid, softmax over the
                labels, or identity); True: the positive label's logit.
            return_info: also return a :class:`ScoreInfo` with per-document truncation flags, the
                (batch size, padded length) of each onnxruntime run, and (chunk mode) each
                document's deciding passage.
            long_documents: ``"truncate"`` (default: a document is cut to what its pair leaves)
                or ``"chunk"`` (a longer document is scored as overlapping token windows; see
                :mod:`crossrank.chunking`).
            max_chunks_per_doc: chunk mode, windows kept per document, the first ones (default 8).
            chunk_overlap: chunk mode, tokens shared by consecutive windows (default 32, at most
                half a window is used).
            aggregate: chunk mode, ``"max"`` (default), ``"first"``, ``"mean"`` or ``"top2_mean"``
                of the windows' scores.
            max_tokens_per_doc: at most this many document tokens per pair (cuts earlier; in
                chunk mode, the window size).
            budget_ms: score in the given order within this many milliseconds (wall clock from
                the call, tokenization included; see :mod:`crossrank.budget`); candidates left
                over get a NaN score (``ScoreInfo.scored`` False).

        Returns:
            float32 array of shape (len(documents),); with ``return_info=True`` the tuple
            ``(scores, ScoreInfo)``.

        Raises:
            InputTypeError: a non-str query or document (the message names its index).
            InvalidInputError: an option out of range, or a chunk option without
                ``long_documents="chunk"`` (the message names it).
            InferenceError: onnxruntime failed on a batch.
        """
        t0 = time.monotonic()
        _check_query(query)
        docs = _check_documents(documents)
        raw = _check_flag("raw", raw)
        opts = LongDocOptions.from_call(
            long_documents=long_documents, max_chunks_per_doc=max_chunks_per_doc, chunk_overlap=chunk_overlap,
            aggregate=aggregate, max_tokens_per_doc=max_tokens_per_doc,
        )
        scores, info = self._score_documents(query, docs, raw=raw, opts=opts, budget_ms=check_budget_ms(budget_ms), t0=t0)
        return (scores, info) if return_info else scores

    def score_pairs(self, pairs: Iterable[Sequence[str]], *, raw: bool = False, return_info: bool = False) -> Any:
        """Scores of ``(query, document)`` pairs, in input order; the pairs share batches.

        Args:
            pairs: ``(query, document)`` pairs of str (any iterable; copied, never changed).
            raw: as :meth:`score`.
            return_info: as :meth:`score` (truncation flags per pair).

        Returns:
            float32 array of shape (len(pairs),); with ``return_info=True`` ``(scores, ScoreInfo)``.

        Raises:
            InputTypeError: an item that is not a pair of str (the message names its index).
            InvalidInputError: ``raw`` or ``return_info`` not a bool.
            InferenceError: onnxruntime failed on a batch.
        """
        checked = _check_pairs(pairs)
        scores, info = self._score_pairs(checked, raw=_check_flag("raw", raw))
        return (scores, info) if return_info else scores

    def rerank(
        self,
        query: str,
        documents: Iterable[str],
        *,
        top_k: int | None = None,
        raw: bool = False,
        long_documents: str = "truncate",
        max_chunks_per_doc: int | None = None,
        chunk_overlap: int | None = None,
        aggregate: str | None = None,
        max_tokens_per_doc: int | None = None,
        budget_ms: float | None = None,
    ) -> list[Result]:
        """``documents`` ranked best first (ties by input position), at most ``top_k`` of them.

        Args:
            query: the query text.
            documents: the candidate texts (any iterable of str; copied, never changed).
            top_k: how many results to return, best first; None (default) = all.
            raw: rank by, and report, the positive label's logit instead of the activated score.
            long_documents, max_chunks_per_doc, chunk_overlap, aggregate, max_tokens_per_doc,
                budget_ms: as :meth:`score`.

        Returns:
            A list of :class:`Result`, best first: each with the document's input ``index``, its
            ``score``, the ``document`` text, whether the pair was ``truncated`` (``query_cut`` /
            ``doc_cut`` say which part), and with ``long_documents="chunk"`` the ``passage``
            (character span) of the window that decided its score. Under ``budget_ms``,
            documents left unscored follow the scored ones in their given order with
            ``scored=False`` and a NaN score.

        Raises:
            InputTypeError: a non-str query or document (the message names its index).
            InvalidInputError: ``top_k`` not None or an int >= 1, or another option out of range
                (the message names it).
            InferenceError: onnxruntime failed on a batch.
        """
        t0 = time.monotonic()
        _check_query(query)
        docs = _check_documents(documents)
        k = _check_top_k(top_k)
        raw = _check_flag("raw", raw)
        opts = LongDocOptions.from_call(
            long_documents=long_documents, max_chunks_per_doc=max_chunks_per_doc, chunk_overlap=chunk_overlap,
            aggregate=aggregate, max_tokens_per_doc=max_tokens_per_doc,
        )
        scores, info = self._score_documents(query, docs, raw=raw, opts=opts, budget_ms=check_budget_ms(budget_ms), t0=t0)
        return _rank(docs, scores, info, k)

    def rerank_many(
        self, requests: Iterable[tuple[str, Iterable[str]]], *, top_k: int | None = None, raw: bool = False
    ) -> list[list[Result]]:
        """Rerank several ``(query, documents)`` requests at once; their pairs share batches.

        Args:
            requests: ``(query, documents)`` pairs, ``documents`` an iterable of str each.
            top_k: per request, how many results to return; None (default) = all.
            raw: as :meth:`rerank`.

        Returns:
            One list of :class:`Result` per request, in request order, each ranked as
            :meth:`rerank` ranks (``Result.index`` is the position in that request's documents).

        Raises:
            InputTypeError: ``requests`` or an item of it of the wrong shape or type (the message
                names ``requests[i]``).
            InvalidInputError: ``top_k`` or ``raw`` out of range.
            InferenceError: onnxruntime failed on a batch.
        """
        if isinstance(requests, (str, bytes)) or not isinstance(requests, Iterable):
            raise InputTypeError(f"requests must be a list of (query, documents) pairs, not {type(requests).__name__}")
        k = _check_top_k(top_k)
        items: list[tuple[str, tuple[str, ...]]] = []
        for i, req in enumerate(requests):
            if isinstance(req, (str, bytes)) or not isinstance(req, Sequence) or len(req) != 2:
                raise InputTypeError(f"requests[{i}] must be a (query, documents) pair, not {type(req).__name__}")
            q, docs = req
            _check_query(q, where=f"requests[{i}] query")
            items.append((q, _check_documents(docs, where=f"requests[{i}] documents")))
        pairs = [(q, d) for q, docs in items for d in docs]
        scores, info = self._score_pairs(pairs, raw=_check_flag("raw", raw))
        out: list[list[Result]] = []
        start = 0
        for _, docs in items:
            end = start + len(docs)
            out.append(_rank(docs, scores[start:end], info, k, offset=start))
            start = end
        return out

    def calibrate(self, *, rounds: int = 2) -> None:
        """Feed the cost model (:attr:`cost`) a short and a full-budget run ``rounds`` times, so
        that a first ``budget_ms`` call does not calibrate on its own pairs."""
        _check_positive_int("rounds", rounds)
        filler = " ".join(["a"] * (self.max_length // 2))  # about half of max_length tokens: fits, nothing cut
        n = max(1, min(self.max_batch_size, 8))
        for _ in range(rounds):
            self._score_pairs([("calibrate", "a short candidate")], raw=True)
            self._score_pairs([("calibrate", filler)] * n, raw=True)

    # -- the one inference path ------------------------------------------------------------------
    def _run_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One onnxruntime run, timed into the cost model (except the session's first run)."""
        t = time.perf_counter()
        logits = self._session.run(feeds)
        dt = time.perf_counter() - t
        with self._warm_lock:
            warm, self._warm = self._warm, True
        if warm:
            ids = feeds.get("input_ids")
            self.cost.observe(int(ids.size) if ids is not None else len(logits), dt)
        return logits

    def _feeds(self, enc: Any, batch: Any) -> dict[str, np.ndarray]:
        return self._session.feed.pad([(enc, batch.rows)])

    def _feeds_rows(self, parts: Sequence[tuple[Any, Any]]) -> dict[str, np.ndarray]:
        """Feeds of rows drawn from several encodings (a budgeted call tokenizes in slices)."""
        return self._session.feed.pad(parts)

    def _activate(self, logits: np.ndarray, raw: bool) -> np.ndarray:
        m = self.manifest
        if raw:
            return np.ascontiguousarray(logits[:, m.positive_label], dtype=np.float32)
        return apply_activation(logits, m.activation, m.positive_label)

    def _score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, raw: bool, max_doc_tokens: int | None = None
    ) -> tuple[np.ndarray, ScoreInfo]:
        m = self.manifest
        enc = self._encoder.encode(pairs) if max_doc_tokens is None else self._encoder.encode(pairs, max_doc_tokens=max_doc_tokens)
        batches = plan_batches(enc.lengths, batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size)
        logits = np.empty((len(pairs), m.num_labels), dtype=np.float32)
        for b in batches:
            logits[b.rows] = self._run_feeds(self._feeds(enc, b))
        scores = self._activate(logits, raw)
        info = ScoreInfo(
            truncated=enc.truncated,
            query_truncated=enc.query_truncated,
            batch_shapes=tuple(b.shape for b in batches),
            query_cut=enc.query_cut,
            doc_cut=enc.doc_cut,
        )
        self._log_truncation(info, len(pairs))
        return scores, info

    def _log_truncation(self, info: ScoreInfo, pairs: int) -> None:
        if info.num_truncated:
            log.info(
                "%d of %d pairs were longer than max_length=%d tokens and were truncated (%d documents, %d queries cut)",
                info.num_truncated, pairs, self.max_length, int(np.sum(info.doc_cut)), int(np.sum(info.query_cut)),
            )

    def _score_documents(
        self, query: str, docs: tuple[str, ...], *, raw: bool, opts: LongDocOptions, budget_ms: float | None, t0: float
    ) -> tuple[np.ndarray, ScoreInfo]:
        """Scores per document for one query: truncated pairs, or windows aggregated, all of them
        or as many as ``budget_ms`` allows (caller's order)."""
        if budget_ms is None and opts.mode == "truncate":
            return self._score_pairs([(query, d) for d in docs], raw=raw, max_doc_tokens=opts.max_tokens_per_doc)
        enc_kw = {} if opts.max_tokens_per_doc is None else {"max_doc_tokens": opts.max_tokens_per_doc}
        num_labels = self.manifest.num_labels
        if budget_ms is None:
            units, unread = plan_units(self._encoder, query, docs, opts)
            enc = self._encoder.encode([(query, u.text) for u in units], **enc_kw)
            batches = plan_batches(enc.lengths, batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size)
            logits = np.empty((len(units), num_labels), dtype=np.float32)
            for b in batches:
                logits[b.rows] = self._run_feeds(self._feeds(enc, b))
            shapes = [b.shape for b in batches]
            unit_q, unit_d = enc.query_cut, enc.doc_cut
        else:
            if not calibrated(self.cost):  # calibrated at first use, before this call's clock starts
                self.calibrate()
                t0 = time.monotonic()
            units, unread, logits, unit_q, unit_d, shapes = self._score_in_order(query, docs, opts, enc_kw, deadline=t0 + budget_ms / 1000.0)
        unit_scores = self._activate(logits, raw) if len(logits) else np.empty(0, dtype=np.float32)
        return self._documents_info(docs, units, unread, unit_scores, unit_q, unit_d, shapes, opts)

    def _score_in_order(
        self, query: str, docs: tuple[str, ...], opts: LongDocOptions, enc_kw: dict[str, Any], *, deadline: float
    ) -> tuple[list[Unit], np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Score units in the caller's order until the next run would overrun ``deadline``
        (monotonic seconds); see :mod:`crossrank.budget`. Returns only the scored units' rows."""
        units: list[Unit] = []
        unread = np.zeros(len(docs), dtype=bool)
        parts: list[tuple[Any, int]] = []  # (Encoded, index of its first unit)
        lengths: list[int] = []
        qcut: list[np.ndarray] = []
        dcut: list[np.ndarray] = []
        out: list[np.ndarray] = []
        shapes: list[tuple[int, int]] = []
        next_doc, done = 0, 0
        slice_s = 0.0  # how long the last slice took to tokenize
        while True:
            # Tokenize ahead, in order, only as far as one more run can reach, and only while a
            # slice and one pair still fit before the deadline.
            while next_doc < len(docs) and (
                len(units) - done < self.max_batch_size and sum(lengths[done:]) < self.batch_tokens
            ):
                shortest = min(lengths[done:], default=1)
                t_slice = time.monotonic()
                if t_slice + slice_s + self.cost.estimate(shortest) > deadline:
                    break
                sl = docs[next_doc : next_doc + (1 if opts.mode == "chunk" else ENCODE_SLICE)]
                u, ur = plan_units(self._encoder, query, sl, opts, first_doc=next_doc)
                enc = self._encoder.encode([(query, x.text) for x in u], **enc_kw)
                unread[next_doc : next_doc + len(sl)] = ur
                parts.append((enc, len(units)))
                units.extend(u)
                lengths.extend(int(x) for x in enc.lengths)
                qcut.append(enc.query_cut)
                dcut.append(enc.doc_cut)
                next_doc += len(sl)
                slice_s = time.monotonic() - t_slice
            if done >= len(units):
                break
            end = next_batch_end(
                np.asarray(lengths, dtype=np.int64), done, batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size,
                cost=self.cost, now=time.monotonic(), deadline=deadline,
            )
            if end == done:
                break
            rows = [(enc, np.arange(max(done, first), min(end, first + len(enc))) - first) for enc, first in parts if first < end and first + len(enc) > done]
            feeds = self._feeds_rows(rows)
            out.append(self._run_feeds(feeds))
            shapes.append((end - done, int(feeds["input_ids"].shape[1]) if "input_ids" in feeds else 0))
            done = end
        logits = np.concatenate(out) if out else np.empty((0, self.manifest.num_labels), dtype=np.float32)
        unit_q = np.concatenate(qcut)[:done] if qcut else np.zeros(0, dtype=bool)
        unit_d = np.concatenate(dcut)[:done] if dcut else np.zeros(0, dtype=bool)
        return units, unread, logits, unit_q, unit_d, shapes

    def _documents_info(
        self,
        docs: tuple[str, ...],
        units: list[Unit],
        unread: np.ndarray,
        unit_scores: np.ndarray,
        unit_q: np.ndarray,
        unit_d: np.ndarray,
        shapes: list[tuple[int, int]],
        opts: LongDocOptions,
    ) -> tuple[np.ndarray, ScoreInfo]:
        """Aggregate unit scores (the first ``len(unit_scores)`` units were scored) per document."""
        n = len(docs)
        scores = np.full(n, np.nan, dtype=np.float32)
        scored = np.zeros(n, dtype=bool)
        windows = np.zeros(n, dtype=np.int64)
        qc = np.zeros(n, dtype=bool)
        dc = np.zeros(n, dtype=bool)
        passages: list[tuple[int, int] | None] = [None] * n
        ns = len(unit_scores)
        i = 0
        while i < len(units):  # units are grouped by document, in document order
            d = units[i].doc
            j = i
            while j < len(units) and units[j].doc == d:
                j += 1
            got = min(j, ns) - i
            if got > 0:
                value, k = aggregate_windows(unit_scores[i : i + got], opts.aggregate)
                scores[d], scored[d], windows[d] = value, True, got
                qc[d] = bool(unit_q[i : i + got].any())
                dc[d] = bool(unread[d] or unit_d[i : i + got].any() or got < j - i)
                if opts.mode == "chunk":
                    span = units[i + k].span
                    passages[d] = span if span is not None else (0, len(docs[d]))
            i = j
        info = ScoreInfo(
            truncated=qc | dc,
            query_truncated=int(qc.any()),
            batch_shapes=tuple(shapes),
            query_cut=qc,
            doc_cut=dc,
            scored=scored,
            passages=tuple(passages),
            windows=windows,
        )
        self._log_truncation(info, n)
        return scores, info


# -- argument checks (module level: no state) --------------------------------------------------------
def _check_file(folder: Path, name: str, sha256: str, verify: bool) -> Path:
    p = folder / name
    if not p.is_file():
        raise ModelFolderError(f"{p}: file named in crossrank.json is missing", path=p)
    if verify:
        if not sha256:
            log.warning("%s: the manifest records no sha256 for this file; it cannot be verified", p)
            return p
        verify_file(folder, name, sha256)
    return p


def _check_max_length(max_length: int | None, manifest: Manifest) -> int:
    if max_length is None:
        return manifest.max_length
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
        raise InvalidInputError(f"max_length must be an int; got {max_length!r}")
    special = manifest.tokenizer.num_special_tokens_pair
    if not special + 2 <= max_length <= manifest.max_length:
        raise InvalidInputError(
            f"max_length must be between {special + 2} and the model folder's max_length {manifest.max_length}; got {max_length}"
        )
    return int(max_length)


# The one option rules (crossrank.checks) under the names crossrank.scheduler imports.
_check_positive_int = positive_int
_check_flag = flag


def _check_query(query: Any, *, where: str = "query") -> None:
    if not isinstance(query, str):
        raise InputTypeError(f"{where} must be a str, not {type(query).__name__}")


def _check_documents(documents: Any, *, where: str = "documents") -> tuple[str, ...]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Iterable):
        raise InputTypeError(f"{where} must be a list of str, not {type(documents).__name__}")
    docs = tuple(documents)  # a copy: the caller's list is never touched
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise InputTypeError(f"{where}[{i}] must be a str, not {type(d).__name__}")
    return docs


def _check_pairs(pairs: Any) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise InputTypeError(f"pairs must be a list of (query, document) pairs, not {type(pairs).__name__}")
    out: list[tuple[str, str]] = []
    for i, p in enumerate(pairs):
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) != 2:
            raise InputTypeError(f"pairs[{i}] must be a (query, document) pair, not {type(p).__name__}")
        q, d = p
        if not isinstance(q, str):
            raise InputTypeError(f"pairs[{i}] query must be a str, not {type(q).__name__}")
        if not isinstance(d, str):
            raise InputTypeError(f"pairs[{i}] document must be a str, not {type(d).__name__}")
        out.append((q, d))
    return out


def _check_top_k(top_k: Any) -> int | None:
    if top_k is None:
        return None
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, numbers.Integral):
        raise InvalidInputError(f"top_k must be None or an int >= 1; got {top_k!r}")
    if top_k < 1:
        raise InvalidInputError(f"top_k must be None or an int >= 1; got {top_k}")
    return int(top_k)


def _rank(docs: Sequence[str], scores: np.ndarray, info: ScoreInfo, k: int | None, *, offset: int = 0) -> list[Result]:
    # Best first; equal scores keep input order (lexsort: last key is primary). Documents a
    # budget left unscored follow, in their given order.
    n = len(docs)
    scored = np.asarray(info.scored[offset : offset + n], dtype=bool) if info.scored is not None else np.ones(n, dtype=bool)
    idx = np.arange(n)
    if scored.all():
        order = np.lexsort((idx, -scores.astype(np.float64)))
    else:
        sc = idx[scored]
        order = np.concatenate([sc[np.lexsort((sc, -scores[sc].astype(np.float64)))], idx[~scored]]).astype(np.int64)
    if k is not None:
        order = order[:k]
    qcut, dcut = info.query_cut, info.doc_cut
    assert qcut is not None and dcut is not None and info.passages is not None and info.windows is not None
    return [
        Result(
            index=int(i),
            score=float(scores[i]),
            document=docs[i],
            truncated=bool(qcut[offset + i] or dcut[offset + i]),
            scored=bool(scored[i]),
            query_cut=bool(qcut[offset + i]),
            doc_cut=bool(dcut[offset + i]),
            passage=info.passages[offset + i],
            windows=int(info.windows[offset + i]),
        )
        for i in order
    ]
