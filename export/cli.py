"""`crossrank export SOURCE OUT [...]`: the exporter's command line.

Registering is cheap (argparse only); torch/optimum load when the command runs. Progress goes to
stderr when it is a terminal and stays quiet when piped; the summary goes to stdout.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from crossrank.manifest import ACTIVATIONS

from .quantize import DEFAULT_FP32_FFN_DOWN_LAYERS, DEFAULT_SMOOTHING_ALPHA, INT8_SCHEMES  # argparse-cheap: onnx/onnxruntime load only when quantizing

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a Hugging Face cross-encoder to a validated crossrank model folder",
        description="Export a Hugging Face sequence-classification cross-encoder (hub id or local folder) to ONNX: "
        "fp32 and optimized variants, optionally int8 (CPU) and fp16 (CUDA), each validated against PyTorch. "
        'Needs the export extra: pip install "crossrank[export]".',
    )
    p.add_argument("source", metavar="SOURCE", help="Hugging Face hub id (org/name) or local model folder (with --add: the FOLDER)")
    p.add_argument("out", metavar="OUT", nargs="?", help="output folder; an existing non-crossrank folder is never overwritten")
    p.add_argument("--revision", metavar="R", help="hub revision (branch, tag or commit) to export")
    p.add_argument("--int8", action="store_true", help="add the int8 variant for the CPU")
    p.add_argument("--int8-scheme", choices=INT8_SCHEMES, help="int8 scheme: static (calibrated) or dynamic (default: crossrank's measured choice)")
    p.add_argument("--calibration", metavar="FILE", help="query/passage pairs (JSONL) to calibrate static int8 (default: built-in)")
    p.add_argument("--int8-smoothing-alpha", metavar="A", type=float,
                   help=f"static int8: SmoothQuant-style scale migration with alpha A in [0, 1], 0 = off "
                   f"(default {DEFAULT_SMOOTHING_ALPHA}; docs/int8-fidelity.md)")
    p.add_argument("--int8-calibration-percentile", metavar="P", type=float,
                   help="static int8: clip activation ranges at percentile P in (50, 100] (default MinMax)")
    p.add_argument("--int8-fp32-ffn-down-layers", metavar="N", type=int,
                   help="int8: leave the feed-forward down-projection of the first N encoder layers in fp32 "
                   f"(default {DEFAULT_FP32_FFN_DOWN_LAYERS}; the per-layer measurement: docs/int8-fidelity.md)")
    p.add_argument("--fp16", action="store_true", help="add the fp16 variant for the CUDA execution provider")
    p.add_argument("--activation", choices=ACTIVATIONS, help="override the score activation read from config.json")
    p.add_argument("--positive-label", metavar="L", help="label name or index that means relevant (multi-label models)")
    p.add_argument("--max-length", metavar="N", type=int, help="tokens per pair (default: what the model can read)")
    p.add_argument("--validation", metavar="FILE", help="query/passage pairs (JSONL) to validate with (default: built-in)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights; only for sources you trust")
    p.add_argument("--force", action="store_true", help="replace OUT if it is a crossrank model folder")
    p.add_argument("--keep-failed", action="store_true", help="keep variants that miss their validation thresholds (marked failed)")
    p.add_argument("--no-prune-last-layer", dest="prune_last_layer", action="store_false",
                   help="compute the last layer for every token (default: for [CLS] only when the head reads only [CLS])")
    p.add_argument("--opset", metavar="N", type=int, help="ONNX opset (default: optimum's for the architecture; 17 with torch.onnx)")
    p.add_argument("--exporter", choices=("auto", "optimum", "torch"), default="auto",
                   help="fp32 exporter: auto = optimum where optimum-onnx is installed and fits the installed transformers, else torch.onnx")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a custom architecture (config auto_map) to run its own Python code; only for sources you trust")
    _register_add(p)
    p.set_defaults(func=_run)


def _register_add(p: argparse.ArgumentParser) -> None:
    """`crossrank export --add VARIANT FOLDER [--source SRC] [--no-validate]` (see add_variant)."""
    from .pipeline import ADDABLE_VARIANTS

    p.add_argument("--add", metavar="VARIANT", choices=tuple(ADDABLE_VARIANTS),
                   help="add or replace one variant (optimized, int8, fp16) of the existing crossrank folder given as "
                   "SOURCE, all or nothing; --int8-scheme, --calibration, --int8-smoothing-alpha, --int8-calibration-percentile, --int8-fp32-ffn-down-layers, --validation, --keep-failed, "
                   "--no-prune-last-layer and --allow-pickle apply")
    p.add_argument("--source", dest="add_source", metavar="SRC",
                   help="with --add: the Hugging Face model the folder came from, for the PyTorch reference "
                   "(default: the source its manifest records)")
    p.add_argument("--no-validate", dest="add_validate", action="store_false",
                   help="with --add: write the variant without validating it against PyTorch (recorded as skipped)")


# options of a full export that --add does not take (it reads them from the folder's manifest)
_NOT_WITH_ADD = ("int8", "fp16", "force", "activation", "positive_label", "max_length", "opset")


class _TerminalProgress:
    """`[3/10] Exporting ...` lines on a terminal; the previous step's time is shown on the next line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.t0 = time.perf_counter()

    def __call__(self, message: str, step: int, total: int) -> None:
        elapsed = time.perf_counter() - self.t0
        self.stream.write(f"[{step}/{total}] {message}  ({elapsed:.0f} s)\n")
        self.stream.flush()


def _options(args: argparse.Namespace) -> Any:
    """The command line's ExportOptions (validated there, like the Python API's)."""
    from .options import ExportOptions

    return ExportOptions(**{name: getattr(args, name) for name in ExportOptions.field_names()})


def _run(args: argparse.Namespace) -> int:
    from crossrank.errors import InvalidInputError
    from crossrank.info_cli import format_summary

    from . import export_model

    if getattr(args, "add", None):
        return _run_add(args)
    if args.out is None:
        raise InvalidInputError("crossrank export needs SOURCE and OUT (or --add VARIANT FOLDER)")
    if args.add_source is not None or args.add_validate is False:
        raise InvalidInputError("--source and --no-validate apply only with --add")
    interactive = sys.stderr.isatty() and not getattr(args, "quiet", False)
    started = time.perf_counter()
    manifest = export_model(
        args.source,
        args.out,
        options=_options(args),
        progress=_TerminalProgress(sys.stderr) if interactive else None,
    )
    seconds = time.perf_counter() - started
    from pathlib import Path

    out = Path(args.out).expanduser().absolute()
    failed = [name for name, v in manifest.variants.items() if v.validation.get("passed") is False]
    print(f"exported {args.source} to {out} in {seconds:.1f} s")
    print(format_summary(manifest, out))
    if failed:
        print(f"warning: kept variants that FAILED validation: {', '.join(failed)}", file=sys.stderr)
    return 0


def _run_add(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crossrank.errors import InvalidInputError
    from crossrank.info_cli import format_summary

    from . import add_variant

    if args.out is not None:
        raise InvalidInputError(f"--add takes one FOLDER, not also {args.out!r}")
    defaults = {"int8": False, "fp16": False, "force": False, "activation": None, "positive_label": None,
                "max_length": None, "opset": None}
    wrong = [f"--{k.replace('_', '-')}" for k in _NOT_WITH_ADD if getattr(args, k) != defaults[k]]
    if wrong:
        raise InvalidInputError(f"{', '.join(wrong)} do not apply with --add (the folder's manifest decides them)")
    interactive = sys.stderr.isatty() and not getattr(args, "quiet", False)
    started = time.perf_counter()
    manifest = add_variant(
        args.source,
        args.add,
        source=args.add_source,
        revision=args.revision,
        validate=args.add_validate,
        int8_scheme=args.int8_scheme,
        calibration=args.calibration,
        int8_smoothing_alpha=args.int8_smoothing_alpha,
        int8_calibration_percentile=args.int8_calibration_percentile,
        int8_fp32_ffn_down_layers=args.int8_fp32_ffn_down_layers,
        prune_last_layer=args.prune_last_layer,
        validation=args.validation,
        allow_pickle=args.allow_pickle,
        keep_failed=args.keep_failed,
        progress=_TerminalProgress(sys.stderr) if interactive else None,
    )
    folder = Path(args.source).expanduser().absolute()
    print(f"added {args.add} to {folder} in {time.perf_counter() - started:.1f} s")
    print(format_summary(manifest, folder))
    if manifest.variants.get(args.add) is not None and manifest.variants[args.add].validation.get("passed") is False:
        print(f"warning: kept variant {args.add} that FAILED validation", file=sys.stderr)
    return 0
