"""``export_model``: source model -> validated, self-describing crossrank model folder.

Steps: resolve and check the source; load it (float32); export the fp32 graph with optimum; save
the tokenizer and prove it encodes like the source's; score the validation pairs with PyTorch;
build and validate each variant (fp32, optimized, int8, fp16); write the manifest last; move the
folder into place. Heavy libraries are imported only inside the call.
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
from typing import Any, Callable, Iterator

from crossrank.errors import CrossrankError, ExportError, InvalidInputError, ValidationFailedError
from crossrank.manifest import ACTIVATIONS, MANIFEST_NAME, DataFileSpec, Manifest, VariantSpec, sha256_file

from .source import first_line

__all__ = ["export_model", "ProgressCallback", "VARIANT_FILES"]

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
_CPU = ["CPUExecutionProvider"]


def export_model(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    int8: bool = False,
    int8_scheme: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
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
) -> Manifest:
    """Export a Hugging Face cross-encoder into a crossrank model folder and return its manifest.

    ``source`` is a local folder or a hub id (``revision`` pins a hub revision). The folder gets the
    ``fp32`` and ``optimized`` variants, plus ``int8`` (``int8=True``; ``int8_scheme`` "static" or
    "dynamic", default :data:`crossrank.export.quantize.DEFAULT_INT8_SCHEME`; static calibrates on
    ``calibration`` pairs or the built-in set) and ``fp16`` (``fp16=True``, for CUDA).
    ``activation`` overrides the one recorded in the model's config; ``positive_label`` (name or
    index) says which logit means relevant when there are several; ``max_length`` lowers the
    tokens per pair. ``prune_last_layer=False`` keeps the optimized graph's last layer computed
    for every token (by default it runs for the [CLS] token only, where the head reads only that;
    see :mod:`crossrank.export.prune`). Every variant is checked against PyTorch on ``validation`` pairs (default: the
    built-in set); a variant that misses its threshold is left out and :class:`ValidationFailedError`
    is raised (after writing the passing variants, unless fp32 itself failed), or kept and marked
    failed with ``keep_failed=True``. An existing crossrank folder is replaced only with ``force``;
    any other existing folder never. ``progress(message, step, total)`` is called at each step.
    ``exporter`` ("auto", "optimum", "torch") picks the fp32 exporter: "auto" takes optimum's where
    optimum-onnx is installed and compatible with the installed transformers, else ``torch.onnx``
    (:mod:`crossrank.export.torch_export`); a forced "optimum" that is unusable raises
    :class:`MissingDependencyError`. ``trust_remote_code=True`` lets a custom architecture's own code
    (config ``auto_map``) load; without it such a model is refused with :class:`SourceModelError`.
    """
    # -- cheap argument checks, before any heavy import ------------------------------------------
    if activation is not None and activation not in ACTIVATIONS:
        raise InvalidInputError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if not int8 and (int8_scheme is not None or calibration is not None):
        raise InvalidInputError("int8_scheme and calibration apply only with int8=True (--int8)")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 14):
        raise InvalidInputError(f"opset must be an integer >= 14, not {opset!r}")
    if not isinstance(prune_last_layer, bool):
        raise InvalidInputError(f"prune_last_layer must be True or False, not {prune_last_layer!r}")
    if progress is not None and not callable(progress):
        raise InvalidInputError("progress must be a callable(message, step, total) or None")

    from ._deps import EXPORTERS, choose_exporter, library_versions, require_export_deps

    if exporter not in EXPORTERS:
        raise InvalidInputError(f"exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    if not isinstance(trust_remote_code, bool):
        raise InvalidInputError(f"trust_remote_code must be True or False, not {trust_remote_code!r}")
    from .pairs import read_pairs
    from .writer import StagedFolder, check_destination

    steps = Steps(progress, total=10 + int(int8) + int(fp16))
    steps("Loading the export libraries (torch, transformers, optimum)")
    require_export_deps()
    chosen_exporter, exporter_why = choose_exporter(exporter)
    log.info("fp32 exporter: %s (%s)", chosen_exporter, exporter_why)
    out = Path(out_dir).expanduser().absolute()
    pairset = read_pairs(validation, what="validation")
    scheme = None
    quant = None
    calibration_pairs = None
    if int8:
        quant = _quantize_module()
        scheme = quant.DEFAULT_INT8_SCHEME if int8_scheme is None else int8_scheme
        if scheme not in quant.INT8_SCHEMES:
            raise InvalidInputError(f"int8_scheme {scheme!r} is not one of {', '.join(quant.INT8_SCHEMES)}")
        if calibration is not None and scheme != "static":
            raise InvalidInputError(f"calibration pairs are used only by the static int8 scheme, not {scheme!r}")
        # a user's calibration file is read now, so that a bad one fails before any heavy work
        calibration_pairs = quant.load_calibration_pairs(calibration) if calibration is not None else None
    check_destination(out, force=force)

    t_start = time.perf_counter()
    from .quiet import quiet_libraries

    try:
        with quiet_libraries(), StagedFolder(out, force=force) as stage:
            manifest, failures = _run(
                stage=stage,
                steps=steps,
                source=source,
                revision=revision,
                allow_pickle=allow_pickle,
                activation=activation,
                positive_label=positive_label,
                max_length=max_length,
                opset=opset,
                prune_last_layer=prune_last_layer,
                exporter=chosen_exporter,
                trust_remote_code=trust_remote_code,
                pairset=pairset,
                quant=quant,
                scheme=scheme,
                calibration_pairs=calibration_pairs,
                fp16=fp16,
                keep_failed=keep_failed,
                versions=library_versions(),
            )
            if failures and ("fp32" in failures and not keep_failed):
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
    if failures and not keep_failed:
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


def _run(
    *,
    stage: Any,
    steps: Steps,
    source: Any,
    revision: str | None,
    allow_pickle: bool,
    activation: str | None,
    positive_label: int | str | None,
    max_length: int | None,
    opset: int | None,
    prune_last_layer: bool,
    exporter: str,
    trust_remote_code: bool,
    pairset: Any,
    quant: Any,
    scheme: str | None,
    calibration_pairs: list[tuple[str, str]] | None,
    fp16: bool,
    keep_failed: bool,
    versions: dict[str, str],
) -> tuple[Manifest, dict[str, str]]:
    from ._deps import EXPORTER_NAMES, exporter_version
    from .external import check_data_files
    from .onnx_export import check_exportable, export_fp32
    from .optimize import optimize_graph
    from .source import load_torch_model, resolve_activation, resolve_positive_label, resolve_source
    from .tokenizer import (
        check_token_types,
        check_tokenizer,
        check_vocabulary,
        load_hf_tokenizer,
        resolve_max_length,
        write_tokenizer,
    )
    from .validate import Validator, check_thresholds

    folder: Path = stage.path
    steps(f"Checking the source model {os.fspath(source)}")
    src = resolve_source(source, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if exporter == "optimum":
        check_exportable(src.model_type, src.id)
    act, act_origin = resolve_activation(src, activation)
    positive = resolve_positive_label(src.labels, positive_label)
    log.info("%s: %s, %d label(s), activation %s (%s)", src.id, src.architecture, src.num_labels, act, act_origin)

    steps("Loading the PyTorch model and tokenizer")
    model = load_torch_model(src)
    hf_tok = load_hf_tokenizer(src)
    max_len, max_len_origin = resolve_max_length(hf_tok, src, max_length)
    log.info("max_length %d (%s)", max_len, max_len_origin)
    check_vocabulary(hf_tok, model, ident=src.id)

    steps(f"Exporting the fp32 ONNX graph ({EXPORTER_NAMES[exporter]})")
    fp32_path = folder / VARIANT_FILES["fp32"]
    with _step_errors("ONNX export"):
        if exporter == "optimum":
            graph = export_fp32(model, stage.work / "optimum", fp32_path, opset=opset, max_length=max_len)
        else:
            from .torch_export import export_fp32_torch

            graph = export_fp32_torch(model, stage.work / "torch-onnx", fp32_path, opset=opset, max_length=max_len)
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
        max_length=max_len,
        activation=act,
        positive_label=positive,
    )
    with _step_errors("PyTorch scoring of the validation pairs"):
        validator.run_torch(model)
    del model  # the reference logits are all it was needed for; its weights are the model's size again

    settings: dict[str, dict[str, Any]] = {}
    figures: dict[str, dict[str, Any]] = {}
    settings["fp32"] = {
        "exporter": EXPORTER_NAMES[exporter],
        "exporter_version": exporter_version(exporter),
        "task": "text-classification",
        "opset": graph.opset,
        "dynamic_axes": ["batch_size", "sequence_length"],
    }

    steps("Validating fp32")
    figures["fp32"] = validator.figures("fp32", fp32_path, _CPU)

    steps("Optimizing the graph (onnxruntime transformer fusions) and validating")
    opt_path = folder / VARIANT_FILES["optimized"]
    with _step_errors("graph optimization"):
        settings["optimized"] = optimize_graph(
            fp32_path, opt_path, model_type=src.model_type, config=src.config, prune_last_layer=prune_last_layer
        )
    figures["optimized"] = validator.figures("optimized", opt_path, _CPU)

    if quant is not None:
        steps(f"Quantizing to int8 ({scheme}) and validating")
        int8_path = folder / VARIANT_FILES["int8"]
        source_graph = folder / VARIANT_FILES[_int8_source(quant, scheme)]
        with _step_errors("int8 quantization"):
            settings["int8"] = dict(
                quant.quantize_int8(
                    source_graph,
                    int8_path,
                    scheme=scheme,
                    calibration_pairs=calibration_pairs,  # None: quantize.py's built-in set
                    tokenizer_json=tok_path,
                    input_names=input_names,
                    max_length=max_len,
                )
            )
        figures["int8"] = validator.figures("int8", int8_path, _CPU)

    if fp16:
        from .fp16 import convert_fp16, fp16_validation_providers

        steps("Converting to fp16 and validating")
        fp16_path = folder / VARIANT_FILES["fp16"]
        with _step_errors("fp16 conversion"):
            settings["fp16"] = convert_fp16(opt_path, fp16_path)
        figures["fp16"] = validator.figures("fp16", fp16_path, fp16_validation_providers())

    steps("Writing the manifest")
    failures: dict[str, str] = {}
    variants: dict[str, VariantSpec] = {}
    for name, figs in figures.items():
        reasons = check_thresholds(name, figs)
        figs["passed"] = not reasons
        path = folder / VARIANT_FILES[name]
        side_files = check_data_files(path)  # external data of a graph over 2 GB
        if reasons:
            failures[name] = ", ".join(reasons) + _figure_note(figs)
            log.warning("variant %s failed validation: %s", name, failures[name])
            if not keep_failed:
                for side in side_files:
                    (folder / side).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                continue
        variants[name] = VariantSpec(
            file=path.name,
            sha256=sha256_file(path),
            precision=_PRECISION[name],
            bytes=path.stat().st_size,
            providers=_PROVIDERS[name],
            settings=settings.get(name, {}),
            validation=figs,
            data_files=tuple(
                DataFileSpec(file=side, sha256=sha256_file(folder / side), bytes=(folder / side).stat().st_size)
                for side in side_files
            ),
        )
    tok_spec = dataclasses.replace(tok_spec, sha256=sha256_file(tok_path))
    source_info: dict[str, Any] = {"id": src.id, "revision": src.revision, "local": src.local}
    if src.commit:
        source_info["commit"] = src.commit
    manifest = Manifest(
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
        variants=variants,
        opset=graph.opset,
        versions=versions,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if variants:
        (folder / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest, failures


def _int8_source(quant: Any, scheme: str) -> str:
    """Which variant's graph quantize.py quantizes for ``scheme`` (its SOURCE_VARIANT; see its docstring)."""
    name = getattr(quant, "SOURCE_VARIANT", {}).get(scheme, "fp32")
    if name not in ("fp32", "optimized"):
        raise ExportError(f"internal error: quantize.py asks for source variant {name!r}")
    return name


def _figure_note(figs: dict[str, Any]) -> str:
    parts = []
    for key, label, fmt in (
        ("max_abs_diff", "max|Δ|", "{:.3g}"),
        ("spearman", "Spearman", "{:.4f}"),
        ("top1_agreement", "top-1", "{:.3f}"),
        ("top5_agreement", "top-5", "{:.3f}"),
    ):
        v = figs.get(key)
        if isinstance(v, (int, float)):
            parts.append(f"{label} {fmt.format(v)}")
    return f" ({', '.join(parts)} on {figs.get('pairs')} pairs)" if parts else ""
