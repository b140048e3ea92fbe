"""`crossrank rerank DIR --query Q [--docs FILE|-] [--top-k K] ...`: rank documents from a file or stdin.

Documents, one of two formats (``--format auto`` sniffs the first non-blank line):

* ``lines``: one text per line; blank lines are skipped.
* ``jsonl``: one JSON value per line, an object holding the text in ``--text-field`` (default
  ``text``) or a JSON string; blank lines are skipped.

Input bytes, the same rules for a file and for stdin: the input must be UTF-8. A UTF-8 byte-order
mark at its start is dropped (so BOM-prefixed JSONL is still JSONL). Invalid UTF-8 is refused
with an error naming the line, the byte offset and the byte, and nothing is scored (no silent
U+FFFD). Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r``, as in text mode.

``index`` in the output is the document's position among the documents read (0-based); one JSON
object per line is written, best first:
``{"rank", "index", "score", "text", "truncated", "query_cut", "doc_cut"}`` where ``truncated``
says the pair lost tokens to ``max_length``, ``query_cut`` / ``doc_cut`` which part lost them.
With ``--long-documents chunk`` each line adds ``passage`` (``[start_char, end_char]`` of the
window that decided the score) and ``windows``; with ``--budget-ms B`` it adds ``scored`` (an
unscored document's ``score`` is null).
Output is UTF-8 JSON; text the input held that UTF-8 cannot carry (a lone surrogate from a
``"\\ud800"`` escape) is written as U+FFFD (:mod:`crossrank.textio`), so everything scored is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

from .choices import canonical_choice, cli_choice
from .errors import InvalidInputError
from .textio import dumps, write_text

__all__ = ["register", "read_documents"]

FORMATS = ("auto", "lines", "jsonl")
PROVIDERS = ("auto", "cpu", "cuda")  # crossrank.session.PROVIDERS, without importing numpy to register


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
    p.add_argument("--format", type=cli_choice(FORMATS, what="format"), default="auto", metavar="{auto,lines,jsonl}",
                   help="documents format (default: auto-detect)")
    p.add_argument("--text-field", metavar="F", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--top-k", metavar="K", type=int, help="print only the K best documents")
    p.add_argument("--variant", metavar="V", default="auto", help="model variant (default: auto = int8 on CPU, fp16 on CUDA)")
    p.add_argument("--provider", type=cli_choice(PROVIDERS, what="provider"), default="auto", metavar="{auto,cpu,cuda}",
                   help="execution provider (default: auto; any case)")
    p.add_argument("--threads", metavar="N", type=int, help="onnxruntime intra-op threads (default: one per core)")
    p.add_argument("--max-length", metavar="N", type=int, help="tokens per pair (default and maximum: the folder's)")
    p.add_argument("--raw", action="store_true", help="print (and rank by) raw logits instead of activated scores")
    p.add_argument("--long-documents", metavar="{truncate,chunk}", default="truncate",
                   help="chunk: score a long document as overlapping windows and print its deciding passage (default truncate)")
    p.add_argument("--max-chunks-per-doc", metavar="N", type=int, help="chunk: windows per document, the first ones (default 8)")
    p.add_argument("--chunk-overlap", metavar="N", type=int, help="chunk: tokens shared by consecutive windows (default 32)")
    p.add_argument("--aggregate", metavar="{max,first,mean,top2_mean}", help="chunk: how windows make a score (default max)")
    p.add_argument("--max-tokens-per-doc", metavar="N", type=int, help="at most N document tokens per pair")
    p.add_argument("--budget-ms", metavar="B", type=float,
                   help="score in the given order within B ms; the rest follow unscored (score null, scored false)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    source = args.docs
    if source is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InvalidInputError("no documents: give --docs FILE, or pipe them on stdin (--docs -)")
        source = "-"
    if source == "-":
        # The bytes, not the locale's decoding: stdin follows the same UTF-8 rules as a file.
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        docs = read_documents(stream, fmt=args.format, text_field=args.text_field, name="<stdin>")
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"--docs {source!r}: no such file")
        fmt = args.format
        if fmt == "auto" and path.suffix.lower() in (".jsonl", ".ndjson"):
            fmt = "jsonl"
        with open(path, "rb") as f:
            docs = read_documents(f, fmt=fmt, text_field=args.text_field, name=str(path))

    from .reranker import Reranker  # noqa: PLC0415 - onnxruntime loads only when the command runs

    rr = Reranker.load(
        args.folder, variant=args.variant, provider=args.provider, threads=args.threads, max_length=args.max_length
    )
    results = rr.rerank(
        args.query, docs, top_k=args.top_k, raw=args.raw, long_documents=args.long_documents,
        max_chunks_per_doc=args.max_chunks_per_doc, chunk_overlap=args.chunk_overlap, aggregate=args.aggregate,
        max_tokens_per_doc=args.max_tokens_per_doc, budget_ms=args.budget_ms,
    )
    chunked = args.long_documents.strip().casefold() == "chunk"
    out = sys.stdout
    for rank, r in enumerate(results, start=1):
        row = {
            "rank": rank,
            "index": r.index,
            "score": r.score,
            "text": r.document,
            "truncated": r.truncated,
            "query_cut": r.query_cut,
            "doc_cut": r.doc_cut,
        }
        if chunked:
            row["passage"] = list(r.passage) if r.passage is not None else None
            row["windows"] = r.windows
        if args.budget_ms is not None:
            row["scored"] = r.scored
            if not r.scored:
                row["score"] = None
        write_text(dumps(row) + "\n", out)
    out.flush()
    return 0


def _decode(line: str | bytes, lineno: int, offset: int, name: str) -> str:
    """One input line as text: bytes are strict UTF-8, the first line loses a UTF-8 BOM."""
    if isinstance(line, str):
        return line[1:] if lineno == 1 and line.startswith("\ufeff") else line
    if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
        offset += 3
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = line[err.start : err.start + 1].hex()
        hint = ""
        if lineno == 1 and err.start == 0 and line[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = " (it starts with a UTF-16 byte-order mark: convert it to UTF-8, e.g. with iconv)"
        raise InvalidInputError(
            f"{name} line {lineno}: not UTF-8 text: byte 0x{bad} at byte offset {offset + err.start} "
            f"(byte {err.start + 1} of the line): {err.reason}{hint}; the input must be UTF-8"
        ) from err


def _lines(stream: Iterable[str] | Iterable[bytes]) -> Iterator[str | bytes]:
    """Lines as text mode's universal newlines cut them (\\n, \\r\\n or a lone \\r), also for bytes."""
    for chunk in stream:
        if isinstance(chunk, bytes) and b"\r" in chunk:
            yield from chunk.splitlines(keepends=True)  # bytes: only \r, \n and \r\n end a line
        else:
            yield chunk


def read_documents(
    stream: TextIO | Iterable[str] | Iterable[bytes], *, fmt: str = "auto", text_field: str = "text", name: str = "documents"
) -> list[str]:
    """Read documents from lines of bytes (a binary file, ``sys.stdin.buffer``) or of text.

    See the module docstring for the formats and the input rules. Byte lines are decoded as
    strict UTF-8; a UTF-8 BOM at the start of the input is dropped (for text lines too).

    Raises:
        InvalidInputError: invalid UTF-8 (naming the line, byte offset and byte), a line that is
            not the JSON the format needs, or a missing/non-string text field (naming the line).
    """
    fmt = canonical_choice(fmt, FORMATS, what="format")
    docs: list[str] = []
    offset = 0
    try:
        for lineno, raw in enumerate(_lines(stream), start=1):
            line = _decode(raw, lineno, offset, name)
            offset += len(raw)
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
