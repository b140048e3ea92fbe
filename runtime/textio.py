"""Text that leaves crossrank: every output path writes any ``str`` it was given.

A Python ``str`` may hold lone UTF-16 surrogates (a JSON ``"\\ud800"`` escape, half of an emoji cut
by a chunker, a file name decoded with ``surrogateescape``); UTF-8 cannot encode them, so a plain
``write`` dies with ``UnicodeEncodeError`` after the work is done. The one rule, used by the CLI's
JSON lines, ``crossrank info`` and the benchmark files:

* lone surrogates become U+FFFD (the replacement character); a surrogate *pair* held as two code
  units becomes the character it encodes (:func:`scrub`);
* files are written as UTF-8; a stream whose encoding cannot hold a character (a non-UTF-8
  locale) gets that encoding's replacement (``?``) for it instead of an exception
  (:func:`write_text`).

Nothing here raises on text content, so a command that scored its input also prints it, exit 0.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["scrub", "scrub_all", "dumps", "write_text", "write_text_file"]


def scrub(text: str) -> str:
    """``text`` encodable as UTF-8: lone UTF-16 surrogates become U+FFFD; surrogate pairs become
    the character they encode. Returns ``text`` itself (no copy) when there is nothing to fix."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def scrub_all(obj: Any) -> Any:
    """``obj`` with :func:`scrub` applied to every str in it, keys included (dicts, lists and
    tuples are rebuilt; anything else is returned as is). For outputs that are not one string,
    e.g. a plot's labels."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {scrub_all(k): scrub_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_all(v) for v in obj) if type(obj) in (list, tuple) else obj
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False, **kwargs)`` made encodable (:func:`scrub`).

    Non-ASCII text stays readable; a lone surrogate anywhere in ``obj`` (keys included) comes out
    as U+FFFD instead of making the later write fail.
    """
    kwargs.setdefault("ensure_ascii", False)
    return scrub(json.dumps(obj, **kwargs))


def write_text(text: str, stream: TextIO | None = None) -> None:
    """Write ``text`` to ``stream`` (default: the current ``sys.stdout``) without ever failing on
    its content: scrubbed, and characters the stream's encoding cannot hold replaced."""
    out = sys.stdout if stream is None else stream
    text = scrub(text)
    try:
        out.write(text)
    except UnicodeEncodeError:
        enc = getattr(out, "encoding", None) or "utf-8"
        out.write(text.encode(enc, "replace").decode(enc, "replace"))


def write_text_file(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8 (scrubbed); returns the path."""
    p = Path(path)
    p.write_text(scrub(text), encoding="utf-8")
    return p
