"""``export_model``: source model -> validated, self-describing crossrank model folder.

Steps: check the options (:class:`~crossrank.export.options.ExportOptions`); resolve and check the
source; load it (float32); export the fp32 graph with optimum; save the tokenizer and prove it
encodes like the source's; score the validation pairs with PyTorch; then a loop over the variant
builders (:data:`BUILDERS`: optimized, int8, fp16), each returning a
:class:`~crossrank.export.writer.VariantResult` that is validated once; the manifest is assembled
in :mod:`crossrank.export.writer` and written last; the folder moves into place. Heavy libraries
are imported only inside the call. :func:`add_variant` builds one variant into an existing folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from crossrank.errors import CrossrankError, ExportError, InvalidInputError, ValidationFailedError
from crossrank.manifest import Manifest

from .options import ExportOptions
from .source import first_line

if TYPE_CHECKING:
    from .writer import VariantResult

__all__ = ["export_model", "add_variant", "ProgressCallback", "VARIANT_FILES", "ADDABLE_VARIANTS", "BUILDERS", "BuildContext"]

log = logging.getLogger("crossrank.export")

#: progress(message, step, total): called at the start of each step (step counts from 1).
ProgressCallback = Callable[[str, int, int], None]

VARIANT_FILES = {
    "fp32": "model.onnx",
    "optimized": "model.opt.onnx",
    "int8": "model.int8.onnx",
    "fp16": "model.fp16.onnx",
}
_PRECISION = {"fp32": "fp32", "optimized": "fp32", "int8": "int8", "fp16": "fp16"}
_PROVIDERS = {"fp32": ("cpu", "cuda"), "optimized": ("cpu", "cuda"), "int8": ("cpu",), "fp16": ("cuda",)}


def export_model(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    int8: bool = False,
    int8_scheme: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    int8_smoothing_alpha: float | None = None,
    int8_calibration_percentile: float | None = None,
    int8_fp32_ffn_down_layers: int | None = None,
    fp16: bool = False,
    activation: str | None = None,
    positive_label: int | str | None = None,
    max_length: int | None = None,
    validation: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    force: bool = False,
    keep_failed: bool = False,
    opset: int | None = None,
    prune_last_layer: bool = True,
    exporter: str = "auto",
    trust_remote_code: bool = False,
    progress: ProgressCallback | None = None,
    options: ExportOptions | None = None,
) -> Manifest:
    """Export a Hugging Face cross-encoder into a crossrank model folder and return its manifest.

    The folder gets the ``fp32`` and ``optimized`` variants, plus ``int8`` and ``fp16`` when asked;
    every variant is checked against PyTorch; a variant that misses its threshold is left out (or
    kept and marked failed with ``keep_failed``). The folder is built beside ``out_dir`` and moved
    into place at the end: a failure leaves nothing.

    Args:
        source: a local Hugging Face model folder or a hub id.
        out_dir: the folder to write; an existing crossrank folder is replaced only with
            ``force``, any other existing non-empty folder never.
        revision: hub revision to export (hub ids only).
        int8: add the int8 variant (CPU).
        int8_scheme: "static" (calibrated, batch-invariant) or "dynamic"; None: crossrank's
            default, :data:`crossrank.export.quantize.DEFAULT_INT8_SCHEME`.
        calibration: pairs file (see :mod:`crossrank.export.pairs`) that calibrates static int8;
            None: the built-in set.
        int8_smoothing_alpha: static int8's SmoothQuant-style scale migration, alpha in [0, 1],
            0 = off (None: :data:`crossrank.export.quantize.DEFAULT_SMOOTHING_ALPHA`;
            docs/int8-fidelity.md has the measurement).
        int8_calibration_percentile: static int8 ranges clipped at this percentile in (50, 100]
            (None: MinMax, the default).
        int8_fp32_ffn_down_layers: feed-forward down-projections of this many leading layers
            left fp32 in int8 (None: :data:`crossrank.export.quantize.DEFAULT_FP32_FFN_DOWN_LAYERS`).
        fp16: add the fp16 variant (CUDA).
        activation: "identity", "sigmoid" or "softmax", overriding the one in the model's config.
        positive_label: name or index of the logit that means relevant (several labels).
        max_length: tokens per pair, special tokens included (None: what the model can read).
        validation: pairs file to validate with; None: the built-in set (304 pairs, 40 queries).
        allow_pickle: allow loading pickle ``.bin`` weights (only for sources you trust).
        force: replace ``out_dir`` if it is a crossrank model folder.
        keep_failed: keep variants that miss their thresholds, marked ``passed: false``.
        opset: ONNX opset, >= 14 (None: optimum's choice for the architecture).
        prune_last_layer: compute the optimized graph's last layer for the [CLS] position only
            where the head reads only that (:mod:`crossrank.export.prune`).
        exporter: the fp32 exporter: "auto" takes optimum's where optimum-onnx is installed and
            compatible with the installed transformers, else ``torch.onnx``
            (:mod:`crossrank.export.torch_export`); "optimum" or "torch" forces one.
        trust_remote_code: let a custom architecture (config ``auto_map``) load its own code;
            without it such a model is refused with :class:`SourceModelError`.
        progress: ``progress(message, step, total)``, called at the start of each step.
        options: all of the above but ``progress`` as one :class:`ExportOptions` (what the
            command line passes); given with any other option, :class:`InvalidInputError`.

    Returns:
        The :class:`~crossrank.manifest.Manifest` written to ``out_dir/crossrank.json``.

    Raises:
        InvalidInputError: an option is wrong (named), or a pairs file is (``PairsFileError``).
        MissingDependencyError: the export extra is not installed, or a forced exporter is unusable.
        SourceModelError: the source is missing, not a cross-encoder, or cannot be loaded.
        OutputExistsError: ``out_dir`` may not be replaced.
        ValidationFailedError: a variant missed its thresholds (``failures`` names each); when
            fp32 failed nothing is written, otherwise the folder holds the passing variants.
        ExportError: any other failure of a step (the library's error as ``__cause__``), a full
            disk, or running out of memory.
    """
    given = dict(
        revision=revision, int8=int8, int8_scheme=int8_scheme, calibration=calibration,
        int8_smoothing_alpha=int8_smoothing_alpha, int8_calibration_percentile=int8_calibration_percentile,
        int8_fp32_ffn_down_layers=int8_fp32_ffn_down_layers, fp16=fp16, activation=activation,
        positive_label=positive_label, max_length=max_length, validation=validation, allow_pickle=allow_pickle,
        force=force, keep_failed=keep_failed, opset=opset, prune_last_layer=prune_last_layer,
        exporter=exporter, trust_remote_code=trust_remote_code,
    )
    if options is None:
        options = ExportOptions(**given)  # validates every option, naming the wrong one
    elif not isinstance(options, ExportOptions):
        raise InvalidInputError(f"options must be an ExportOptions, not {type(options).__name__}")
    else:
        defaults = ExportOptions()
        changed = sorted(k for k, v in given.items() if v != getattr(defaults, k))
        if changed:  # two sources of truth for one option: refuse rather than pick one
            raise InvalidInputError(f"pass either options= or keyword options, not both (also given: {', '.join(changed)})")
    if progress is not None and not callable(progress):
        raise InvalidInputError("progress must be a callable(message, step, total) or None")
    return _export(source, out_dir, options, progress)


def _export(source: Any, out_dir: Any, opts: ExportOptions, progress: ProgressCallback | None) -> Manifest:
    from ._deps import choose_exporter, library_versions, require_export_deps
    from .pairs import read_pairs
    from .writer import StagedFolder, check_destination

    steps = Steps(progress, total=10 + int(opts.int8) + int(opts.fp16))
    steps("Loading the export libraries (torch, transformers, optimum)")
    require_export_deps()
    chosen_exporter, exporter_why = choose_exporter(opts.exporter)
    log.info("fp32 exporter: %s (%s)", chosen_exporter, exporter_why)
    out = Path(out_dir).expanduser().absolute()
    # pairs files are read now, so that a bad one fails before any heavy work
    pairset = read_pairs(opts.validation, what="validation")
    calibration_pairs = None
    if opts.int8:
        _quantize_module()
        calibration_pairs = list(read_pairs(opts.calibration, what="calibration").pairs) if opts.calibration is not None else None
    check_destination(out, force=opts.force)

    t_start = time.perf_counter()
    from .quiet import quiet_libraries

    try:
        with quiet_libraries(), StagedFolder(out, force=opts.force) as stage:
            manifest, failures = _run(
                stage=stage, steps=steps, source=source, opts=opts, exporter=chosen_exporter, pairset=pairset,
                calibration_pairs=calibration_pairs, versions=library_versions(),
            )
            if failures and ("fp32" in failures and not opts.keep_failed):
                raise ValidationFailedError(
                    f"validation failed, nothing written to {out}: " + "; ".join(f"{k}: {v}" for k, v in failures.items()),
                    failures=failures,
                )
            steps("Moving the model folder into place")
            stage.commit()
    except CrossrankError:
        raise
    except OSError as err:
        raise _os_error(err, out) from err
    except MemoryError as err:
        raise ExportError("out of memory while exporting; close other programs or use a machine with more memory") from err
    log.debug("export finished in %.1f s", time.perf_counter() - t_start)
    if failures and not opts.keep_failed:
        raise ValidationFailedError(
            f"validation failed: "
            + "; ".join(f"{k}: {v}" for k, v in failures.items())
            + f". Wrote {out} without {', '.join(failures)} (pass keep_failed=True / --keep-failed to keep failing variants)",
            failures=failures,
        )
    return manifest


class Steps:
    """Numbered progress steps, also logged at DEBUG with the previous step's duration (and a full
    garbage collection between steps)."""

    def __init__(self, callback: ProgressCallback | None, *, total: int) -> None:
        self.callback = callback
        self.total = total
        self.n = 0
        self.t = time.perf_counter()
        self.message = ""

    def __call__(self, message: str) -> None:
        # a step's graphs (2 GB protos for a large model) can sit in reference cycles of onnxruntime's
        # optimizer objects until a full collection: collect them before the next step allocates
        _release_memory()
        now = time.perf_counter()
        if self.n:
            log.debug("%s: %.1f s", self.message, now - self.t)
        self.n += 1
        self.t, self.message = now, message
        if self.callback is not None:
            self.callback(message, min(self.n, self.total), self.total)


def _release_memory() -> None:
    """Free what the previous step left: unreachable cycles, then the C heap's free pages (glibc).

    Measured on a 2.27 GB XLM-R-large export: without it the process grew by the size of each
    step's graphs (22.8 GB at the fp16 step); see docs/external-data.md.
    """
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _quantize_module() -> Any:
    try:
        from . import quantize
    except ImportError as err:
        raise ExportError(f"int8 quantization is unavailable: {first_line(err)}") from err
    return quantize


def _os_error(err: OSError, out: Path) -> ExportError:
    if err.errno == errno.ENOSPC:
        return ExportError(f"disk full while exporting to {out}: free some space and try again")
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return ExportError(f"cannot write the model folder {out}: {err.strerror or err}{where}")


@contextlib.contextmanager
def _step_errors(what: str) -> Iterator[None]:
    """Turn a library's exception inside a step into one ExportError line."""
    try:
        yield
    except (CrossrankError, OSError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - the boundary to torch/onnx/onnxruntime
        raise ExportError(f"{what} failed: {type(err).__name__}: {first_line(err)}") from err


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What every variant builder reads: where to write, and how the runtime will feed the graph.

    Attributes:
        folder: the (staged) model folder the variant files go into.
        work: scratch folder (deleted with the stage).
        model_type: the source's ``model_type`` (picks the optimizer's fusions).
        config: the source's Hugging Face config (heads and hidden size); None when unknown.
        tokenizer_json: the folder's tokenizer.json.
        input_names: the graph inputs the runtime feeds, in order.
        max_length: tokens per pair.
        num_special_tokens_pair: the manifest's template tokens per pair.
        int8_scheme: "static" or "dynamic" (None when int8 is not built).
        calibration_pairs: static int8's pairs (None: the built-in set).
        int8_smoothing_alpha / int8_calibration_percentile: static int8's levers (None: the
            quantizer's defaults, alpha 0.7 and MinMax).
        int8_fp32_ffn_down_layers: down-projections left fp32 (None: the quantizer's default).
        prune_last_layer: prune the optimized graph's last layer to [CLS].
    """

    folder: Path
    work: Path
    model_type: str
    config: Any
    tokenizer_json: Path
    input_names: tuple[str, ...]
    max_length: int
    num_special_tokens_pair: int
    int8_scheme: str | None = None
    calibration_pairs: tuple[tuple[str, str], ...] | None = None
    int8_smoothing_alpha: float | None = None
    int8_calibration_percentile: float | None = None
    int8_fp32_ffn_down_layers: int | None = None
    prune_last_layer: bool = True

    def path(self, variant: str) -> Path:
        return self.folder / VARIANT_FILES[variant]


def _build_optimized(ctx: BuildContext) -> "VariantResult":
    """onnxruntime's transformer fusions on the fp32 graph (settings: :func:`optimize.optimize_graph`)."""
    from . import optimize
    from .writer import VariantResult

    settings = optimize.optimize_graph(
        ctx.path("fp32"), ctx.path("optimized"), model_type=ctx.model_type, config=ctx.config,
        prune_last_layer=ctx.prune_last_layer,
    )
    return VariantResult("optimized", ctx.path("optimized"), _PRECISION["optimized"], _PROVIDERS["optimized"], settings)


def _build_int8(ctx: BuildContext) -> "VariantResult":
    """int8 for the CPU from the optimized graph (settings: :func:`quantize.quantize_int8`)."""
    from .writer import VariantResult

    quant = _quantize_module()
    scheme = ctx.int8_scheme or quant.DEFAULT_INT8_SCHEME
    settings = quant.quantize_int8(
        ctx.path(_int8_source(quant, scheme)),
        ctx.path("int8"),
        scheme=scheme,
        calibration_pairs=None if ctx.calibration_pairs is None else list(ctx.calibration_pairs),  # None: built-in set
        tokenizer_json=ctx.tokenizer_json,
        input_names=list(ctx.input_names),
        max_length=ctx.max_length,
        num_special_tokens_pair=ctx.num_special_tokens_pair,
        calibration_method="minmax" if ctx.int8_calibration_percentile is None else "percentile",
        calibration_percentile=ctx.int8_calibration_percentile,
        smoothing_alpha=ctx.int8_smoothing_alpha,
        fp32_ffn_down_layers=ctx.int8_fp32_ffn_down_layers,
    )
    return VariantResult("int8", ctx.path("int8"), _PRECISION["int8"], _PROVIDERS["int8"], dict(settings))


def _build_fp16(ctx: BuildContext) -> "VariantResult":
    """fp16 for CUDA from the optimized graph (settings: :func:`fp16.convert_fp16`); validated on
    CUDA where the exporting machine has it."""
    from .fp16 import convert_fp16, fp16_validation_providers
    from .writer import VariantResult

    settings = convert_fp16(ctx.path("optimized"), ctx.path("fp16"))
    return VariantResult(
        "fp16", ctx.path("fp16"), _PRECISION["fp16"], _PROVIDERS["fp16"], settings, tuple(fp16_validation_providers())
    )


#: variant -> (progress message, what failed, builder); fp32 comes from PyTorch, not from a graph.
BUILDERS: dict[str, tuple[str, str, Callable[[BuildContext], "VariantResult"]]] = {
    "optimized": ("Optimizing the graph (onnxruntime transformer fusions) and validating", "graph optimization", _build_optimized),
    "int8": ("Quantizing to int8 ({scheme}) and validating", "int8 quantization", _build_int8),
    "fp16": ("Converting to fp16 and validating", "fp16 conversion", _build_fp16),
}


def _run(
    *,
    stage: Any,
    steps: Steps,
    source: Any,
    opts: ExportOptions,
    exporter: str,  # the one chosen: "optimum" or "torch"
    pairset: Any,
    calibration_pairs: list[tuple[str, str]] | None,
    versions: dict[str, str],
) -> tuple[Manifest, dict[str, str]]:
    from ._deps import EXPORTER_NAMES, exporter_version
    from .onnx_export import check_exportable, export_fp32
    from .source import load_torch_model, resolve_activation, resolve_positive_label, resolve_source
    from .tokenizer import (
        check_token_types,
        check_tokenizer,
        check_vocabulary,
        load_hf_tokenizer,
        resolve_max_length,
        write_tokenizer,
    )
    from .validate import ValidationResult, Validator
    from .writer import VariantResult, assemble_manifest, write_manifest

    folder: Path = stage.path
    steps(f"Checking the source model {os.fspath(source)}")
    src = resolve_source(source, revision=opts.revision, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    if exporter == "optimum":
        check_exportable(src.model_type, src.id)
    act, act_origin = resolve_activation(src, opts.activation)
    positive = resolve_positive_label(src.labels, opts.positive_label)
    log.info("%s: %s, %d label(s), activation %s (%s)", src.id, src.architecture, src.num_labels, act, act_origin)

    steps("Loading the PyTorch model and tokenizer")
    model = load_torch_model(src)
    hf_tok = load_hf_tokenizer(src)
    max_len, max_len_origin = resolve_max_length(hf_tok, src, opts.max_length)
    log.info("max_length %d (%s)", max_len, max_len_origin)
    check_vocabulary(hf_tok, model, ident=src.id)

    steps(f"Exporting the fp32 ONNX graph ({EXPORTER_NAMES[exporter]})")
    fp32_path = folder / VARIANT_FILES["fp32"]
    with _step_errors("ONNX export"):
        if exporter == "optimum":
            graph = export_fp32(model, stage.work / "optimum", fp32_path, opset=opts.opset, max_length=max_len)
        else:
            from .torch_export import export_fp32_torch

            graph = export_fp32_torch(model, stage.work / "torch-onnx", fp32_path, opset=opts.opset, max_length=max_len)
    input_names = [i.name for i in graph.inputs]
    check_token_types(hf_tok, model, input_names, ident=src.id)

    steps("Writing tokenizer.json")
    tok_path = folder / "tokenizer.json"
    with _step_errors("saving the tokenizer"):
        tok_spec = write_tokenizer(hf_tok, tok_path, max_length=max_len)
        compared = check_tokenizer(hf_tok, tok_path, pairset.pairs, input_names=input_names, max_length=max_len)
    log.debug("tokenizer.json matches the source tokenizer on %d pairs", compared)

    steps(f"Scoring {len(pairset.pairs)} validation pairs with PyTorch")
    validator = Validator(
        pairset,
        tok_path,
        inputs=graph.inputs,
        pad_token_id=tok_spec.pad_token_id,
        num_special_tokens_pair=tok_spec.num_special_tokens_pair,
        max_length=max_len,
        activation=act,
        positive_label=positive,
    )
    with _step_errors("PyTorch scoring of the validation pairs"):
        validator.run_torch(model)
    del model  # the reference logits are all it was needed for; its weights are the model's size again

    fp32 = VariantResult(
        "fp32", fp32_path, _PRECISION["fp32"], _PROVIDERS["fp32"],
        {"exporter": EXPORTER_NAMES[exporter], "exporter_version": exporter_version(exporter),
         "task": "text-classification", "opset": graph.opset, "dynamic_axes": ["batch_size", "sequence_length"]},
    )
    steps("Validating fp32")
    built: list[tuple[VariantResult, ValidationResult]] = [(fp32, validator.validate("fp32", fp32.file, fp32.validation_providers))]
    ctx = BuildContext(
        folder=folder, work=stage.work, model_type=src.model_type, config=src.config, tokenizer_json=tok_path,
        input_names=tuple(input_names), max_length=max_len, num_special_tokens_pair=tok_spec.num_special_tokens_pair,
        int8_scheme=opts.int8_scheme, calibration_pairs=None if calibration_pairs is None else tuple(calibration_pairs),
        int8_smoothing_alpha=opts.int8_smoothing_alpha, int8_calibration_percentile=opts.int8_calibration_percentile,
        int8_fp32_ffn_down_layers=opts.int8_fp32_ffn_down_layers, prune_last_layer=opts.prune_last_layer,
    )
    for name in opts.variants[1:]:
        message, what, build = BUILDERS[name]
        steps(message.format(scheme=opts.int8_scheme))
        with _step_errors(what):
            result = build(ctx)
        built.append((result, validator.validate(name, result.file, result.validation_providers)))

    steps("Writing the manifest")
    source_info: dict[str, Any] = {"id": src.id, "revision": src.revision, "local": src.local}
    if src.commit:
        source_info["commit"] = src.commit
    template = Manifest(
        source=source_info,
        architecture=src.architecture,
        model_type=src.model_type,
        num_labels=src.num_labels,
        labels=src.labels,
        positive_label=positive,
        activation=act,
        max_length=max_len,
        inputs=graph.inputs,
        output=graph.output,
        tokenizer=tok_spec,
        variants={},
        opset=graph.opset,
        versions=versions,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    manifest, failures = assemble_manifest(template, folder, built, keep_failed=opts.keep_failed)
    if manifest.variants:
        write_manifest(folder, manifest)
    return manifest, failures


def _int8_source(quant: Any, scheme: str) -> str:
    """Which variant's graph quantize.py quantizes for ``scheme`` (its SOURCE_VARIANT; see its docstring)."""
    name = getattr(quant, "SOURCE_VARIANT", {}).get(scheme, "fp32")
    if name not in ("fp32", "optimized"):
        raise ExportError(f"internal error: quantize.py asks for source variant {name!r}")
    return name


#: The variants :func:`add_variant` can add or replace (fp32 is the folder's input) and the
#: variant each is built from.
ADDABLE_VARIANTS = {"optimized": "fp32", "int8": "optimized", "fp16": "optimized"}


def add_variant(
    folder: str | os.PathLike[str],
    variant: str,
    *,
    source: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    validate: bool = True,
    int8_scheme: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    int8_smoothing_alpha: float | None = None,
    int8_calibration_percentile: float | None = None,
    int8_fp32_ffn_down_layers: int | None = None,
    prune_last_layer: bool = True,
    validation: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    keep_failed: bool = False,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Add one variant to an existing crossrank model folder, or replace it, all or nothing.

    The variant is built from the folder's own graphs (optimized from ``model.onnx``; int8 and
    fp16 from ``model.opt.onnx``, as a full export builds them), each checked against its
    recorded sha256 first, and validated against PyTorch like a full export. The new folder is
    built beside the old one (its other files hard-linked, not copied), the manifest rewritten
    there atomically, and the two swapped at the end: any failure leaves the folder byte for byte
    as it was.

    Args:
        folder: a crossrank model folder.
        variant: "optimized", "int8" or "fp16" (:data:`ADDABLE_VARIANTS`).
        source: the Hugging Face model the folder was exported from, for the PyTorch reference
            (and, for "optimized", its attention heads and hidden size); None: the source the
            manifest records (a local path, or a hub id at its recorded revision).
        revision: hub revision of ``source``.
        validate: False writes the variant without validation (recorded as ``{"skipped": true}``);
            the only way to add one when the source model is unreachable.
        int8_scheme: "static" or "dynamic" (int8 only; None: the default scheme).
        calibration: pairs file calibrating static int8 (None: the built-in set).
        int8_smoothing_alpha / int8_calibration_percentile: static int8's levers
            (:class:`~crossrank.export.options.ExportOptions`; None: the defaults).
        int8_fp32_ffn_down_layers: down-projections of this many leading layers left fp32
            (int8 only; None: the default).
        prune_last_layer: prune the optimized graph's last layer to [CLS] (optimized only).
        validation: pairs file to validate with (None: the built-in set).
        allow_pickle: allow the source's pickle ``.bin`` weights.
        keep_failed: write a variant that misses its thresholds, marked ``passed: false``.
        progress: ``progress(message, step, total)`` at the start of each step.

    Returns:
        The folder's new :class:`~crossrank.manifest.Manifest`.

    Raises:
        InvalidInputError: an option is wrong (named), or a pairs file is (``PairsFileError``).
        ExportError: ``folder`` is not a valid crossrank folder, a graph the variant is built
            from is missing or changed, the source is unreachable or is not the folder's model,
            or a step failed.
        ValidationFailedError: the new variant missed its thresholds (folder unchanged).
    """
    if not isinstance(variant, str) or variant not in ADDABLE_VARIANTS:
        raise InvalidInputError(
            f"variant {variant!r} cannot be added: choose one of {', '.join(ADDABLE_VARIANTS)} (fp32 is the folder's input)"
        )
    if variant != "int8" and (int8_scheme is not None or calibration is not None or int8_smoothing_alpha is not None
                              or int8_calibration_percentile is not None or int8_fp32_ffn_down_layers is not None):
        raise InvalidInputError("int8_scheme, calibration, int8_smoothing_alpha, int8_calibration_percentile and "
                                "int8_fp32_ffn_down_layers apply only when adding int8")
    opts = ExportOptions(  # the one validated option object; names the wrong option
        revision=revision, int8=variant == "int8", int8_scheme=int8_scheme, calibration=calibration,
        int8_smoothing_alpha=int8_smoothing_alpha, int8_calibration_percentile=int8_calibration_percentile,
        int8_fp32_ffn_down_layers=int8_fp32_ffn_down_layers, fp16=variant == "fp16", validation=validation, allow_pickle=allow_pickle, keep_failed=keep_failed,
        prune_last_layer=prune_last_layer,
    )
    if not isinstance(validate, bool):
        raise InvalidInputError(f"validate must be True or False, not {validate!r}")
    if progress is not None and not callable(progress):
        raise InvalidInputError("progress must be a callable(message, step, total) or None")
    out = Path(folder).expanduser().absolute()
    try:
        return _add(out, variant, source, opts, validate, progress)
    except CrossrankError:
        raise
    except OSError as err:
        raise _os_error(err, out) from err
    except MemoryError as err:
        raise ExportError("out of memory while adding a variant") from err


def _add(
    out: Path, variant: str, source: Any, opts: ExportOptions, validate: bool, progress: ProgressCallback | None
) -> Manifest:
    import shutil

    from crossrank.errors import ModelFolderError
    from crossrank.manifest import load_manifest, verify_file

    from ._deps import library_versions, require_export_deps
    from .pairs import read_pairs
    from .quiet import quiet_libraries
    from .writer import StagedFolder, assemble_manifest, write_manifest

    steps = Steps(progress, total=6 + int(validate))
    steps(f"Reading the model folder {out}")
    try:
        manifest = load_manifest(out)
    except ModelFolderError as err:
        raise ExportError(f"cannot add {variant}: {err}") from err
    base = ADDABLE_VARIANTS[variant]
    if base not in manifest.variants:
        raise ExportError(
            f"cannot add {variant} to {out}: it is built from the {base} variant, which the folder lacks"
            + (f" (add it first: crossrank export --add {base} {out})" if base != "fp32" else "")
        )
    for name in {"fp32", base}:  # the input graphs must be the ones the manifest describes
        spec = manifest.variants.get(name)
        if spec is not None:
            try:
                verify_file(out, spec.file, spec.sha256)
            except ModelFolderError as err:
                raise ExportError(f"cannot add {variant}: {err}") from err
    pairset = read_pairs(opts.validation, what="validation") if validate else None
    calibration_pairs = list(read_pairs(opts.calibration, what="calibration").pairs) if opts.calibration is not None else None

    steps("Loading the export libraries (onnx, onnxruntime" + (", torch, transformers)" if validate else ")"))
    require_export_deps()
    src = _reachable_source(manifest, source, opts, required=validate or (variant == "optimized" and "optimized" not in manifest.variants))
    config = src.config if src is not None else _config_from(manifest)

    with quiet_libraries(), StagedFolder(out, force=True) as stage:
        steps("Linking the folder's files into a staging copy")
        # hard links: the copy costs no space; every file the add writes is written under a new
        # name and renamed, so no write can reach a linked (original) file
        try:
            shutil.copytree(out, stage.path, copy_function=os.link, dirs_exist_ok=True)
        except OSError:
            shutil.rmtree(stage.path, ignore_errors=True)
            stage.path.mkdir()
            shutil.copytree(out, stage.path, dirs_exist_ok=True)
        folder: Path = stage.path
        old = manifest.variants.get(variant)
        for name in ([old.file, *(d.file for d in old.data_files)] if old is not None else []) + [VARIANT_FILES[variant]]:
            (folder / name).unlink(missing_ok=True)
        ctx = BuildContext(
            folder=folder, work=stage.work, model_type=manifest.model_type, config=config,
            tokenizer_json=folder / manifest.tokenizer.file, input_names=tuple(i.name for i in manifest.inputs),
            max_length=manifest.max_length, num_special_tokens_pair=manifest.tokenizer.num_special_tokens_pair,
            int8_scheme=opts.int8_scheme, calibration_pairs=None if calibration_pairs is None else tuple(calibration_pairs),
            int8_smoothing_alpha=opts.int8_smoothing_alpha, int8_calibration_percentile=opts.int8_calibration_percentile,
            int8_fp32_ffn_down_layers=opts.int8_fp32_ffn_down_layers, prune_last_layer=opts.prune_last_layer,
        )
        message, what, build = BUILDERS[variant]
        steps(message.format(scheme=opts.int8_scheme).replace(" and validating", ""))
        with _step_errors(what):
            result = build(ctx)
        result = dataclasses.replace(
            result,
            # the rest of the folder was made earlier: say when and with what this variant was
            settings={**result.settings, "added": {
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": library_versions(),
            }},
        )
        check = None
        if validate:
            assert src is not None and pairset is not None
            steps(f"Validating {variant} against PyTorch on {len(pairset.pairs)} pairs")
            check = _validate_against_source(src, manifest, folder, pairset, result)
        steps("Writing the manifest")
        new, failures = assemble_manifest(manifest, folder, [(result, check)], keep_failed=opts.keep_failed)
        if failures and not opts.keep_failed:
            raise ValidationFailedError(
                f"validation failed: {variant}: {failures[variant]}. {out} is unchanged "
                "(pass keep_failed=True / --keep-failed to write it marked failed)",
                failures=failures,
            )
        write_manifest(folder, new)
        steps(f"Moving the new folder into place of {out}")
        stage.commit()
    return new


def _reachable_source(manifest: Manifest, source: Any, opts: ExportOptions, *, required: bool) -> Any:
    """The source model for the PyTorch reference, or None when not required and unreachable."""
    from crossrank.errors import SourceModelError

    from .source import resolve_source

    recorded = dict(manifest.source)
    if source is None:
        ident = recorded.get("id")
        revision = opts.revision if opts.revision is not None else (recorded.get("commit") or recorded.get("revision"))
        if recorded.get("local"):
            revision = None
        named = f"the source the manifest records ({ident!r})"
    else:
        ident, revision, named = source, opts.revision, f"source {os.fspath(source)!r}"
    if not ident:
        if required:
            raise ExportError("the manifest records no source model: pass source= (--source) or validate=False (--no-validate)")
        return None
    try:
        src = resolve_source(ident, revision=revision, allow_pickle=opts.allow_pickle)
    except (SourceModelError, InvalidInputError) as err:
        if not required:
            return None
        raise ExportError(
            f"the PyTorch reference is unreachable: {named}: {err}. Pass source= (--source PATH) or, to add "
            "the variant without validation, validate=False (--no-validate)"
        ) from err
    if (src.architecture, src.num_labels) != (manifest.architecture, manifest.num_labels):
        raise ExportError(
            f"{named} is a {src.architecture} with {src.num_labels} label(s); the folder holds a "
            f"{manifest.architecture} with {manifest.num_labels}: not the model it was exported from"
        )
    return src


def _config_from(manifest: Manifest) -> Any:
    """Heads and hidden size from the folder's optimized settings, when no source config is at hand."""
    from types import SimpleNamespace

    spec = manifest.variants.get("optimized")
    settings = dict(spec.settings) if spec is not None else {}
    return SimpleNamespace(num_attention_heads=settings.get("num_heads", 0), hidden_size=settings.get("hidden_size", 0))


def _validate_against_source(src: Any, manifest: Manifest, folder: Path, pairset: Any, result: "VariantResult") -> Any:
    from .source import load_torch_model
    from .tokenizer import check_tokenizer, load_hf_tokenizer
    from .validate import Validator

    tok_path = folder / manifest.tokenizer.file
    with _step_errors("loading the source model"):
        model = load_torch_model(src)
        hf_tok = load_hf_tokenizer(src)
    with _step_errors("checking the folder's tokenizer against the source's"):
        # the reference is meaningful only if the source tokenizes as the folder does
        check_tokenizer(hf_tok, tok_path, pairset.pairs, input_names=[i.name for i in manifest.inputs], max_length=manifest.max_length)
    validator = Validator(
        pairset, tok_path, inputs=manifest.inputs, pad_token_id=manifest.tokenizer.pad_token_id,
        num_special_tokens_pair=manifest.tokenizer.num_special_tokens_pair, max_length=manifest.max_length,
        activation=manifest.activation, positive_label=manifest.positive_label,
    )
    with _step_errors("PyTorch scoring of the validation pairs"):
        validator.run_torch(model)
    del model
    return validator.validate(result.name, result.file, result.validation_providers)
