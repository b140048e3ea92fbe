"""`crossrank rerank DIR --query Q [--docs FILE|-] [--top-k K] ...`: rank documents from a file or stdin.

Documents, one of two formats (``--format auto`` sniffs the first non-blank line):

* ``lines``: one text per line; blank lines are skipped.
* ``jsonl``: one JSON value per line, an object holding the text in ``--text-field`` (default
  ``text``) or a JSON string; blank lines are skipped.

``index`` in the output is the document's position among the documents read (0-based); one JSON
object per line is written, best first: ``{"rank", "index", "score", "text"}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, TextIO

from .errors import InvalidInputError

__all__ = ["register", "read_documents"]

FORMATS = ("auto", "lines", "jsonl")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rerank",
        help="rank documents for a query with a crossrank model folder (JSON lines out)",
        description="Score documents against a query and print them best first, one JSON object per line: "
        '{"rank", "index", "score", "text"}. Documents come from --docs FILE (one text per line, or JSONL) '
        "or from stdin.",
    )
    p.add_argument("folder", metavar="DIR", help="a model folder written by `crossrank export`")
    p.add_argument("--query", "-q", required=True, metavar="Q", help="the query")
    p.add_argument("--docs", metavar="FILE", help="documents file; '-' or omitted with piped stdin reads stdin")
    p.add_argument("--format", choices=FORMATS, default="auto", help="documents format (default: auto-detect)")
    p.add_argument("--text-field", metavar="F", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--top-k", metavar="K", type=int, help="print only the K best documents")
    p.add_argument("--variant", metavar="V", default="auto", help="model variant (default: auto = int8 on CPU, fp16 on CUDA)")
    p.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto", help="execution provider (default: auto)")
    p.add_argument("--threads", metavar="N", type=int, help="onnxruntime intra-op threads (default: one per core)")
    p.add_argument("--max-length", metavar="N", type=int, help="tokens per pair (default and maximum: the folder's)")
    p.add_argument("--raw", action="store_true", help="print (and rank by) raw logits instead of activated scores")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    source = args.docs
    if source is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InvalidInputError("no documents: give --docs FILE, or pipe them on stdin (--docs -)")
        source = "-"
    if source == "-":
        docs = read_documents(sys.stdin, fmt=args.format, text_field=args.text_field, name="<stdin>")
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"--docs {source!r}: no such file")
        fmt = args.format
        if fmt == "auto" and path.suffix.lower() in (".jsonl", ".ndjson"):
            fmt = "jsonl"
        with open(path, encoding="utf-8", errors="strict") as f:
            docs = read_documents(f, fmt=fmt, text_field=args.text_field, name=str(path))

    from .reranker import Reranker  # noqa: PLC0415 - onnxruntime loads only when the command runs

    rr = Reranker.load(
        args.folder, variant=args.variant, provider=args.provider, threads=args.threads, max_length=args.max_length
    )
    results = rr.rerank(args.query, docs, top_k=args.top_k, raw=args.raw)
    out = sys.stdout
    for rank, r in enumerate(results, start=1):
        out.write(json.dumps({"rank": rank, "index": r.index, "score": r.score, "text": r.document}, ensure_ascii=False) + "\n")
    out.flush()
    return 0


def read_documents(stream: TextIO | Iterable[str], *, fmt: str = "auto", text_field: str = "text", name: str = "documents") -> list[str]:
    """Read documents from text lines (see the module docstring); errors name the line."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    docs: list[str] = []
    try:
        for lineno, line in enumerate(stream, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if fmt == "auto":
                fmt = "jsonl" if _looks_like_json(text) else "lines"
            if fmt == "lines":
                docs.append(text)
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise InvalidInputError(f"{name} line {lineno}: not valid JSON ({err.msg}); use --format lines for plain text") from err
            if isinstance(value, str):
                docs.append(value)
            elif isinstance(value, dict):
                if text_field not in value:
                    raise InvalidInputError(f"{name} line {lineno}: no {text_field!r} field (fields: {', '.join(map(str, value)) or 'none'}); see --text-field")
                if not isinstance(value[text_field], str):
                    raise InvalidInputError(f"{name} line {lineno}: field {text_field!r} is {type(value[text_field]).__name__}, not a string")
                docs.append(value[text_field])
            else:
                raise InvalidInputError(f"{name} line {lineno}: expected a JSON object or string, got {type(value).__name__}")
    except UnicodeDecodeError as err:
        raise InvalidInputError(f"{name}: not UTF-8 text ({err})") from err
    return docs


def _looks_like_json(line: str) -> bool:
    s = line.lstrip()
    if not s.startswith(("{", '"')):
        return False
    try:
        value = json.loads(s)
    except json.JSONDecodeError:
        return False
    return isinstance(value, (dict, str))
