"""``ExportOptions``: every choice of an export, validated once, frozen.

The command line (``crossrank export``) and the Python API (:func:`crossrank.export.export_model`)
both build one; the pipeline reads nothing else. Checks here need no heavy library, so a bad option
fails before torch loads.
"""
from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from crossrank.errors import InvalidInputError
from crossrank.manifest import ACTIVATIONS

from ._deps import EXPORTERS
from .quantize import DEFAULT_INT8_SCHEME, INT8_SCHEMES  # constants only: onnx loads when quantizing

__all__ = ["ExportOptions", "BUILDABLE_VARIANTS"]

#: The variants crossrank builds, in build order (each later one is made from an earlier one).
BUILDABLE_VARIANTS = ("fp32", "optimized", "int8", "fp16")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, not {value!r}")


def _path(name: str, value: Any) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise InvalidInputError(f"{name} must be a file path or None, not {value!r}")
    return Path(os.fspath(value)).expanduser()


@dataclass(frozen=True)
class ExportOptions:
    """The options of one export (all keyword-only; see :func:`crossrank.export.export_model`).

    Attributes:
        revision: hub revision (branch, tag or commit); hub ids only.
        int8: add the int8 variant (CPU).
        int8_scheme: "static" or "dynamic"; None with ``int8`` means crossrank's default
            (:data:`~crossrank.export.quantize.DEFAULT_INT8_SCHEME`), filled in on construction.
        calibration: pairs file for static int8 (None: the built-in set).
        int8_smoothing_alpha: static int8 only: SmoothQuant-style scale migration with this alpha
            in [0, 1], 0 turning it off (None: :data:`~crossrank.export.quantize.DEFAULT_SMOOTHING_ALPHA`,
            0.7, which with the default fp32 down-projections halved mean |Δ logit| against fp32
            on three relevance sets: docs/int8-fidelity.md).
        int8_calibration_percentile: static int8 only: clip each activation range at this
            percentile in (50, 100] instead of MinMax (None: MinMax, the default; docs/int8-fidelity.md).
        int8_fp32_ffn_down_layers: leave the feed-forward down-projection (the MatMul reading the
            GELU output) of this many leading encoder layers in fp32, an int >= 0 (None:
            :data:`~crossrank.export.quantize.DEFAULT_FP32_FFN_DOWN_LAYERS`; docs/int8-fidelity.md).
        fp16: add the fp16 variant (CUDA).
        activation: override of the score activation ("identity", "sigmoid", "softmax").
        positive_label: name or index of the logit that means relevant.
        max_length: tokens per pair (None: what the model can read).
        validation: pairs file to validate with (None: the built-in set).
        allow_pickle: allow pickle ``.bin`` weights.
        force: replace an existing crossrank folder.
        keep_failed: keep variants that miss their thresholds, marked failed.
        opset: ONNX opset (>= 14; None: optimum's choice, 17 with torch.onnx).
        prune_last_layer: compute the optimized graph's last layer for [CLS] only.
        exporter: fp32 exporter, "auto" (optimum where installed and compatible, else torch.onnx),
            "optimum" or "torch".
        trust_remote_code: let a custom architecture (config ``auto_map``) run its own code.

    Raises:
        InvalidInputError: on construction, naming the option that is wrong.
    """

    revision: str | None = None
    int8: bool = False
    int8_scheme: str | None = None
    calibration: Path | None = None
    int8_smoothing_alpha: float | None = None
    int8_calibration_percentile: float | None = None
    int8_fp32_ffn_down_layers: int | None = None
    fp16: bool = False
    activation: str | None = None
    positive_label: int | str | None = None
    max_length: int | None = None
    validation: Path | None = None
    allow_pickle: bool = False
    force: bool = False
    keep_failed: bool = False
    opset: int | None = None
    prune_last_layer: bool = True
    exporter: str = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        for name in ("int8", "fp16", "allow_pickle", "force", "keep_failed", "prune_last_layer", "trust_remote_code"):
            _flag(name, getattr(self, name))
        if self.exporter not in EXPORTERS:
            raise InvalidInputError(f"exporter {self.exporter!r} is not one of {', '.join(EXPORTERS)}")
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision.strip()):
            raise InvalidInputError(f"revision must be a non-empty string or None, not {self.revision!r}")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise InvalidInputError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.positive_label is not None and (
            isinstance(self.positive_label, bool) or not isinstance(self.positive_label, (int, str))
        ):
            raise InvalidInputError(f"positive_label must be a label name or index, not {self.positive_label!r}")
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)):
            raise InvalidInputError(f"max_length must be an integer, not {self.max_length!r}")
        if self.opset is not None and (isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset < 14):
            raise InvalidInputError(f"opset must be an integer >= 14, not {self.opset!r}")
        # frozen: normalised values are set through object.__setattr__, once, here
        object.__setattr__(self, "calibration", _path("calibration", self.calibration))
        object.__setattr__(self, "validation", _path("validation", self.validation))
        alpha, percentile = self.int8_smoothing_alpha, self.int8_calibration_percentile
        for name, value, ok, rule in (("int8_smoothing_alpha", alpha, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
                                      ("int8_calibration_percentile", percentile, lambda v: 50.0 < v <= 100.0,
                                       "in (50, 100] (a percent)")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value)):
                raise InvalidInputError(f"{name} must be a number {rule} or None, not {value!r}")
        layers = self.int8_fp32_ffn_down_layers
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, numbers.Integral) or layers < 0):
            raise InvalidInputError(f"int8_fp32_ffn_down_layers must be an integer >= 0 or None, not {layers!r}")
        if not self.int8:
            if (self.int8_scheme is not None or self.calibration is not None or alpha is not None or percentile is not None
                    or layers is not None):
                raise InvalidInputError("int8_scheme, calibration, int8_smoothing_alpha, int8_calibration_percentile and "
                                        "int8_fp32_ffn_down_layers apply only with int8=True (--int8)")
            return
        scheme = DEFAULT_INT8_SCHEME if self.int8_scheme is None else self.int8_scheme
        if scheme not in INT8_SCHEMES:
            raise InvalidInputError(f"int8_scheme {scheme!r} is not one of {', '.join(INT8_SCHEMES)}")
        if self.calibration is not None and scheme != "static":
            raise InvalidInputError(f"calibration pairs are used only by the static int8 scheme, not {scheme!r}")
        if (alpha is not None or percentile is not None) and scheme != "static":
            raise InvalidInputError(f"int8_smoothing_alpha and int8_calibration_percentile apply only to the static "
                                    f"int8 scheme, not {scheme!r}")
        object.__setattr__(self, "int8_scheme", scheme)

    @property
    def variants(self) -> tuple[str, ...]:
        """The variants this export builds, in build order."""
        return tuple(v for v in BUILDABLE_VARIANTS if v in ("fp32", "optimized") or getattr(self, v))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
