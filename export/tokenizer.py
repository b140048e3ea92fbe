"""The folder's one ``tokenizer.json``: the source's fast tokenizer, pair truncation baked in.

The saved tokenizer truncates only the second sequence (the document, never the query) at
``max_length`` and does no padding (the runtime pads each batch to its own longest pair).
``max_length`` is the tokenizer's ``model_max_length`` capped by the model's position embeddings
(RoBERTa-family models lose ``pad_token_id + 1`` positions to their offset); the user may lower it.
After writing, :func:`check_tokenizer` proves the file encodes pairs exactly like the source's
Hugging Face tokenizer does.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from crossrank.errors import ExportError, InvalidInputError, SourceModelError
from crossrank.manifest import TokenizerSpec

from .source import SourceModel, first_line

__all__ = [
    "load_hf_tokenizer",
    "resolve_max_length",
    "write_tokenizer",
    "check_tokenizer",
    "check_vocabulary",
    "check_token_types",
    "highest_token_id",
    "MIN_MAX_LENGTH",
]

log = logging.getLogger("crossrank.export")

MIN_MAX_LENGTH = 8
_UNBOUNDED = 1_000_000  # transformers uses ~1e30 for "no limit"
_FALLBACK_MAX_LENGTH = 512


def load_hf_tokenizer(src: SourceModel) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src.folder, use_fast=True, local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - tokenizer loading raises OSError/ValueError/ImportError...
        raise SourceModelError(f"cannot load the tokenizer of {src.id!r}: {first_line(err)}") from err
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise SourceModelError(
            f"{src.id!r} has no fast (tokenizers) tokenizer and transformers cannot convert its {type(tok).__name__}; "
            "crossrank needs a tokenizer.json"
        )
    return tok


def resolve_max_length(hf_tok: Any, src: SourceModel, requested: int | None) -> tuple[int, str]:
    """(max_length, how it was decided)."""
    tok_limit = getattr(hf_tok, "model_max_length", None)
    tok_limit = int(tok_limit) if isinstance(tok_limit, (int, float)) and 0 < tok_limit < _UNBOUNDED else None
    pos_limit = src.position_limit()
    limits = [x for x in (tok_limit, pos_limit) if x is not None]
    if limits:
        limit = min(limits)
        why = " and ".join(
            part
            for part in (
                f"tokenizer model_max_length {tok_limit}" if tok_limit is not None else "",
                f"{pos_limit} usable position embeddings" if pos_limit is not None else "",
            )
            if part
        )
    else:
        limit, why = _FALLBACK_MAX_LENGTH, "no limit in the tokenizer or config; crossrank's default"
        log.warning("neither the tokenizer nor the config gives a maximum length; using %d tokens", limit)
    if requested is None:
        return limit, why
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise InvalidInputError(f"max_length must be an integer, not {requested!r}")
    specials = int(hf_tok.num_special_tokens_to_add(pair=True))
    if requested < max(MIN_MAX_LENGTH, specials + 2):
        raise InvalidInputError(f"max_length {requested} is too small: a pair needs at least {max(MIN_MAX_LENGTH, specials + 2)} tokens")
    if requested > limit:
        raise InvalidInputError(f"max_length {requested} exceeds what {src.id!r} can read ({limit}: {why})")
    return requested, f"set by the user (model limit {limit})"


def write_tokenizer(hf_tok: Any, dst: Path, *, max_length: int) -> TokenizerSpec:
    """Save the backend tokenizer with pair truncation ``only_second`` at ``max_length``, no padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, strategy="only_second", direction="right")
    tok.save(str(dst), pretty=False)
    pad_id = hf_tok.pad_token_id
    pad = hf_tok.pad_token
    if pad_id is None:
        pad_id, pad = 0, tok.id_to_token(0) or ""
        log.warning("the tokenizer has no padding token; padding with id 0 (%r), which the attention mask hides", pad)
    return TokenizerSpec(
        file=dst.name,
        sha256="",  # filled in by the writer once the file is final
        truncation="only_second",
        pad_token_id=int(pad_id),
        pad_token=str(pad),
        num_special_tokens_pair=int(hf_tok.num_special_tokens_to_add(pair=True)),
    )


def check_tokenizer(
    hf_tok: Any, tokenizer_json: Path, pairs: Sequence[tuple[str, str]], *, input_names: Sequence[str], max_length: int
) -> int:
    """Encode ``pairs`` with the saved file and with the HF tokenizer; raise on any difference.

    Pairs whose query alone overflows ``max_length`` are skipped (the runtime cuts those queries
    itself). Returns how many pairs were compared.

    This checks the tokenizer *file* (its vocabulary, template and baked ``only_second`` truncation)
    against the source's, so it encodes with the file's own settings, not through the runtime's
    ``PairEncoder``; validation and calibration use the runtime path (:mod:`crossrank.export.pairs`).
    """
    from tokenizers import Tokenizer

    saved = Tokenizer.from_file(str(tokenizer_json))
    untruncated = Tokenizer.from_file(str(tokenizer_json))
    untruncated.no_truncation()  # "only_second" refuses a lone query longer than max_length
    specials = int(hf_tok.num_special_tokens_to_add(pair=True))
    fitting = [
        (q, d) for q, d in pairs if len(untruncated.encode(q, add_special_tokens=False).ids) + specials + 1 <= max_length
    ]
    if not fitting:
        return 0
    queries = [q for q, _ in fitting]
    docs = [d for _, d in fitting]
    ref = hf_tok(queries, docs, truncation="only_second", max_length=max_length, padding=False)
    ours = saved.encode_batch(fitting)
    for i, enc in enumerate(ours):
        checks = [("input_ids", enc.ids), ("attention_mask", enc.attention_mask)]
        if "token_type_ids" in input_names and "token_type_ids" in ref:
            checks.append(("token_type_ids", enc.type_ids))
        for name, got in checks:
            want = list(ref[name][i])
            if list(got) != want:
                q, d = fitting[i]
                raise ExportError(
                    f"the saved tokenizer.json encodes pair {i} ({q[:40]!r}, {d[:40]!r}) differently from the model's "
                    f"{type(hf_tok).__name__} ({name}: {len(got)} vs {len(want)} tokens, first difference at "
                    f"{next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))})"
                )
    return len(fitting)


def highest_token_id(hf_tok: Any) -> tuple[int, str]:
    """(the highest id the tokenizer can emit, its token): vocabulary and added tokens alike.

    A vocabulary listing a piece twice maps it to one id but still emits the other, so the id
    count of the model is also consulted, not only the piece-to-id map.
    """
    backend = hf_tok.backend_tokenizer
    vocab = backend.get_vocab(with_added_tokens=True)
    top = max(vocab.values()) if vocab else -1
    size = int(backend.get_vocab_size(with_added_tokens=True))
    for i in range(size - 1, top, -1):  # ids the map lost (duplicate pieces)
        if backend.id_to_token(i) is not None:
            top = i
            break
    return top, str(backend.id_to_token(top))


def check_vocabulary(hf_tok: Any, model: Any, *, ident: str) -> int:
    """Refuse a tokenizer that can emit a token id the model's embedding table has no row for.

    Validation pairs rarely hit the highest ids, so such a model would export "validated" and
    then fail a whole runtime call on a text that does. Returns the table's row count; raises
    :class:`SourceModelError` naming the id, its token and the row count.
    """
    rows = int(model.get_input_embeddings().num_embeddings)
    top, token = highest_token_id(hf_tok)
    if top >= rows:
        raise SourceModelError(
            f"{ident!r}: its tokenizer can emit token id {top} ({token!r}) but the model's embedding table has "
            f"{rows} rows (ids 0-{rows - 1}); any text holding that token would fail at run time. The tokenizer and "
            "the weights do not match: save the model with the tokenizer it was trained with, or resize its "
            "embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer))) and fine-tune it"
        )
    return rows


def check_token_types(hf_tok: Any, model: Any, input_names: Sequence[str], *, ident: str) -> None:
    """Refuse a tokenizer whose pairs carry a token type the model's type table has no row for.

    Applies only when the graph takes ``token_type_ids`` and the model has a type table
    (``type_vocab_size`` > 0); e.g. a BERT with ``type_vocab_size=1`` whose tokenizer marks the
    document as type 1. Raises :class:`SourceModelError` naming both numbers.
    """
    rows = getattr(getattr(model, "config", None), "type_vocab_size", None)
    if "token_type_ids" not in input_names or not isinstance(rows, int) or rows <= 0:
        return
    enc = hf_tok.backend_tokenizer.encode("query", "document", add_special_tokens=True)
    top = max(enc.type_ids, default=0)
    if top >= rows:
        raise SourceModelError(
            f"{ident!r}: its tokenizer gives the document token type {top} but the model has type_vocab_size={rows} "
            f"(types 0-{rows - 1}); PyTorch would fail on every pair. The tokenizer does not belong to this model: "
            "use the tokenizer it was trained with (one whose pair template marks every token as type 0)"
        )
