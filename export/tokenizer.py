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

__all__ = ["load_hf_tokenizer", "resolve_max_length", "write_tokenizer", "check_tokenizer", "MIN_MAX_LENGTH"]

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
    """
    from tokenizers import Tokenizer

    saved = Tokenizer.from_file(str(tokenizer_json))
    specials = int(hf_tok.num_special_tokens_to_add(pair=True))
    fitting = [
        (q, d) for q, d in pairs if len(saved.encode(q, add_special_tokens=False).ids) + specials + 1 <= max_length
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
