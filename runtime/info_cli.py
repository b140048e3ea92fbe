"""`crossrank info DIR [--json]`: what a model folder holds, from its manifest.

Lean on purpose: only the manifest module and the standard library (no onnxruntime session, no
hashing), so it answers instantly even for large folders. ``--json`` prints the manifest itself.
Output goes through :mod:`crossrank.textio`: any text the manifest or the folder's path holds
(a ``"\\ud800"`` escape, a non-UTF-8 file name) is printed, as U+FFFD where UTF-8 cannot carry it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from .manifest import MANIFEST_NAME, Manifest, VariantSpec, load_manifest
from .textio import dumps, write_text

__all__ = ["register", "format_summary", "human_bytes"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "info",
        help="summarise a crossrank model folder (variants, sizes, validation figures)",
        description="Print what a crossrank model folder holds: source, labels, activation, inputs, and each variant "
        "with its size, settings and validation figures against PyTorch.",
    )
    p.add_argument("folder", metavar="DIR", help="a model folder written by `crossrank export`")
    p.add_argument("--json", action="store_true", help="print the manifest (crossrank.json) as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    manifest = load_manifest(folder)  # validates; raises ModelFolderError/ManifestError with one line
    if args.json:
        raw = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        write_text(dumps(raw, indent=2) + "\n", sys.stdout)
    else:
        write_text(format_summary(manifest, folder) + "\n", sys.stdout)
    return 0


def human_bytes(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def format_summary(manifest: Manifest, folder: str | Path | None = None) -> str:
    """A readable, multi-line description of ``manifest`` (file sizes from ``folder`` when given)."""
    m = manifest
    src = dict(m.source)
    if src.get("local"):
        source = f"local folder {src.get('id')}"
    else:
        extra = ", ".join(f"{k} {src[k]}" for k in ("revision", "commit") if src.get(k))
        source = f"{src.get('id')} (Hugging Face hub{', ' + extra if extra else ''})"
    labels = ", ".join(f"{i}={name}" for i, name in enumerate(m.labels))
    positive = m.labels[m.positive_label] if 0 <= m.positive_label < len(m.labels) else "?"
    activation = {
        "identity": "identity (raw logit of the positive label)",
        "sigmoid": "sigmoid (of the positive label's logit)",
        "softmax": "softmax over all labels, positive label's probability",
    }.get(m.activation, m.activation)
    inputs = ", ".join(f"{i.name}:{i.dtype}" for i in m.inputs)
    versions = ", ".join(f"{k} {v}" for k, v in m.versions.items())
    lines = [
        f"crossrank model folder {folder}" if folder is not None else "crossrank model",
        f"  source        {source}",
        f"  architecture  {m.architecture} ({m.model_type})",
        f"  labels        {labels}  (positive: {m.positive_label}={positive})",
        f"  activation    {activation}",
        f"  max_length    {m.max_length} tokens per pair; {m.tokenizer.file} truncates {_truncation(m.tokenizer.truncation)}",
        f"  graph         inputs {inputs} -> {m.output.name}:{m.output.dtype}; opset {m.opset}",
        f"  made          {m.created or 'unknown date'} with {versions or 'unknown versions'}",
        f"  variants      {len(m.variants)}",
    ]
    for name, v in m.variants.items():
        lines.extend(_variant_lines(name, v, Path(folder) if folder is not None else None))
    return "\n".join(lines)


def _truncation(strategy: str) -> str:
    return "the document, never the query" if strategy == "only_second" else f"with strategy {strategy}"


def _variant_lines(name: str, v: VariantSpec, folder: Path | None) -> list[str]:
    size = v.bytes
    state = ""
    if folder is not None:
        p = folder / v.file
        if p.is_file():
            size = p.stat().st_size
        else:
            state = "  MISSING"
    head = f"    {name:<10} {v.file:<17} {human_bytes(size):>10}  {v.precision:<5} for {','.join(v.providers)}{state}"
    out = [head]
    settings = _settings_highlights(v.settings)
    if settings:
        out.append(f"               settings:   {settings}")
    out.append(f"               validation: {validation_line(v.validation)}")
    return out


def _settings_highlights(settings: Mapping[str, Any]) -> str:
    parts: list[str] = []
    fused = settings.get("fused_operators")
    if isinstance(fused, Mapping):
        parts.append("fused " + (", ".join(f"{k} {v}" for k, v in fused.items()) if fused else "nothing"))
    for key in ("fallback_reason", "note"):
        if settings.get(key):
            parts.append(str(settings[key]))
    for key, value in settings.items():
        if key in ("fused_operators", "fallback_reason", "note", "num_heads", "hidden_size", "use_gpu", "dynamic_axes"):
            continue
        if isinstance(value, (str, int, float, bool)):
            parts.append(f"{key} {value}")
        elif isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(x, (str, int, float)) for x in value):
            parts.append(f"{key} {','.join(str(x) for x in value)}")
    return "; ".join(parts)


def validation_line(val: Mapping[str, Any]) -> str:
    """One line of validation figures: max|Δ|, Spearman, top-1/top-5 agreement, verdict."""
    if not val:
        return "not validated"
    if val.get("error"):
        return f"FAILED: {val['error']}"
    parts = []
    for key, label, fmt in (
        ("max_abs_diff", "max|Δ logit|", "{:.2e}"),
        ("spearman", "Spearman", "{:.4f}"),
        ("top1_agreement", "top-1", "{:.3f}"),
        ("top5_agreement", "top-5", "{:.3f}"),
    ):
        value = val.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{label} {fmt.format(value)}")
    if val.get("pairs"):
        where = f"{val['pairs']} pairs" + (f", {val['queries']} queries" if val.get("queries") else "")
        if val.get("dataset"):
            where += f", {val['dataset']} set" if val["dataset"] == "built-in" else f", {val['dataset']}"
        if val.get("provider"):
            where += f", {val['provider']}"
        parts.append(f"({where})")
    verdict = {True: "passed", False: "FAILED"}.get(val.get("passed"), "")
    thresholds = val.get("thresholds")
    if verdict and isinstance(thresholds, Mapping) and thresholds:
        verdict += " [" + ", ".join(f"{k} {'≥' if k == 'spearman' else '≤'} {v:g}" for k, v in thresholds.items()) + "]"
    return "  ".join(parts + ([verdict] if verdict else []))
