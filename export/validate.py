"""Score every variant against the PyTorch model on the same tokenized pairs.

Figures per variant (all recorded in the manifest):

* ``max_abs_diff`` / ``mean_abs_diff``: |Δ logit| against PyTorch fp32, over every logit;
* ``spearman``: rank correlation of the final scores (after the activation) over all pairs;
* ``top1_agreement``: share of queries whose best passage is the same as PyTorch's;
* ``top5_agreement``: mean overlap of the top-5 sets, over queries with more than 5 passages.

Thresholds: fp32 and optimized max |Δ| ≤ 1e-4, fp16 ≤ 2e-2, int8 Spearman ≥ 0.99.
Inputs are made once by the runtime's own path (``PairEncoder`` + ``plan_batches`` / ``pad_batch``,
:func:`crossrank.export.pairs.encode_batches`): the same truncation, batching and right padding
users get; the reference and every variant see exactly the same batches.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from crossrank.activation import apply_activation
from crossrank.manifest import InputSpec

from .pairs import PairSet, encode_batches
from .source import first_line

__all__ = ["THRESHOLDS", "Validator", "ValidationResult", "spearman", "check_thresholds"]

THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_diff": 1e-4},
    "optimized": {"max_abs_diff": 1e-4},
    "fp16": {"max_abs_diff": 2e-2},
    "int8": {"spearman": 0.99},
}
_MAX_BATCH = 32
_MAX_BATCH_TOKENS = 8192


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); 1.0 when both are constant and equal."""
    ra, rb = _rank(np.asarray(a, np.float64)), _rank(np.asarray(b, np.float64))
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return 1.0 if sa == sb and np.array_equal(np.asarray(a), np.asarray(b)) else 0.0
    return float(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb))


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # average the ranks of tied values
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        sums = np.bincount(inv, weights=ranks)
        ranks = sums[inv] / counts[inv]
    return ranks


def check_thresholds(variant: str, figures: Mapping[str, Any]) -> list[str]:
    """The reasons ``figures`` miss ``variant``'s thresholds (empty when it passes)."""
    reasons = []
    if figures.get("error"):
        return [str(figures["error"])]
    if figures.get("nonfinite"):
        reasons.append(f"{figures['nonfinite']} non-finite logits")
    for key, limit in THRESHOLDS.get(variant, {}).items():
        value = figures.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            reasons.append(f"{key} could not be measured")
        elif key == "spearman" and value < limit:
            reasons.append(f"Spearman {value:.4f} < {limit}")
        elif key == "max_abs_diff" and value > limit:
            reasons.append(f"max |Δ logit| {value:.3g} > {limit:g}")
    return reasons


@dataclass(frozen=True)
class ValidationResult:
    """One variant's validation against PyTorch, computed once and recorded as it is.

    Attributes:
        variant: the variant's name ("fp32", "optimized", "int8", "fp16").
        figures: what the manifest records as the variant's ``validation`` (see the module
            docstring; ``passed`` included).
        reasons: why it missed its thresholds (empty when it passed).
    """

    variant: str
    figures: Mapping[str, Any]
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def note(self) -> str:
        """The reasons and headline figures in one line, for errors and logs."""
        parts = []
        for key, label, fmt in (
            ("max_abs_diff", "max|Δ|", "{:.3g}"),
            ("spearman", "Spearman", "{:.4f}"),
            ("top1_agreement", "top-1", "{:.3f}"),
            ("top5_agreement", "top-5", "{:.3f}"),
        ):
            v = self.figures.get(key)
            if isinstance(v, (int, float)):
                parts.append(f"{label} {fmt.format(v)}")
        figs = f" ({', '.join(parts)} on {self.figures.get('pairs')} pairs)" if parts else ""
        return ", ".join(self.reasons) + figs


class Validator:
    """Holds the validation pairs as model inputs and the PyTorch reference logits.

    The inputs are made by the runtime's own path (:func:`crossrank.export.pairs.encode_batches`:
    ``PairEncoder``'s truncation rules, length-sorted batches of at most 32 pairs and 8192 padded
    tokens, right padding), so the figures describe what users run; the reference and every
    variant see exactly the same batches.
    """

    def __init__(
        self,
        pairset: PairSet,
        tokenizer_json: Path,
        *,
        inputs: Sequence[InputSpec],
        pad_token_id: int,
        num_special_tokens_pair: int,
        max_length: int,
        activation: str,
        positive_label: int,
    ) -> None:
        self.pairset = pairset
        self.inputs = tuple(inputs)
        self.activation = activation
        self.positive_label = positive_label
        self.batches, encoded = encode_batches(
            pairset.pairs,
            tokenizer_json,
            max_length=max_length,
            num_special_tokens_pair=num_special_tokens_pair,
            input_names=[i.name for i in self.inputs],
            input_dtypes=[i.dtype for i in self.inputs],
            pad_token_id=pad_token_id,
            batch_tokens=_MAX_BATCH_TOKENS,
            max_batch_size=_MAX_BATCH,
        )
        self.num_truncated = int(np.sum(encoded.truncated))
        self.tokens = int(np.sum(encoded.lengths))
        self.reference: np.ndarray | None = None
        self.reference_seconds = 0.0

    # -- scoring -------------------------------------------------------------------------------
    def run_torch(self, model: Any) -> np.ndarray:
        import torch

        out: np.ndarray | None = None
        t0 = time.perf_counter()
        with torch.inference_mode():
            for batch in self.batches:
                feed = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.feed.items()}
                logits = model(**feed).logits.float().numpy().astype(np.float64)
                if out is None:
                    out = np.zeros((len(self.pairset.pairs), logits.shape[1]), np.float64)
                out[batch.rows] = logits
        self.reference_seconds = time.perf_counter() - t0
        assert out is not None
        self.reference = out
        return out

    def run_onnx(self, path: Path, providers: Sequence[str]) -> np.ndarray:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
        out: np.ndarray | None = None
        for batch in self.batches:
            logits = np.asarray(session.run(None, batch.feed)[0], np.float64)
            if logits.ndim == 1:
                logits = logits[:, None]
            if out is None:
                out = np.zeros((len(self.pairset.pairs), logits.shape[1]), np.float64)
            out[batch.rows] = logits
        assert out is not None
        return out

    # -- figures -------------------------------------------------------------------------------
    def validate(self, variant: str, path: Path, providers: Sequence[str]) -> ValidationResult:
        """Score ``path`` on ``providers`` and compare it with the PyTorch reference.

        Args:
            variant: the variant's name (picks its thresholds, :data:`THRESHOLDS`).
            path: its ONNX file.
            providers: onnxruntime provider names, first preferred.

        Returns:
            :class:`ValidationResult`; a variant onnxruntime cannot run is a failed result, never
            an exception.
        """
        figures = self.figures(variant, path, providers)
        reasons = tuple(check_thresholds(variant, figures))
        figures["passed"] = not reasons
        return ValidationResult(variant=variant, figures=figures, reasons=reasons)

    def figures(self, variant: str, path: Path, providers: Sequence[str]) -> dict[str, Any]:
        """Score ``path`` and compare it with the reference; never raises for a broken variant."""
        assert self.reference is not None, "run_torch first"
        base: dict[str, Any] = {
            "pairs": len(self.pairset.pairs),
            "queries": self.pairset.num_queries,
            "dataset": self.pairset.source,
            "reference": "pytorch-fp32",
            "provider": providers[0],
            "thresholds": dict(THRESHOLDS.get(variant, {})),
        }
        t0 = time.perf_counter()
        try:
            logits = self.run_onnx(path, providers)
        except Exception as err:  # noqa: BLE001 - an unrunnable variant is a failed variant
            base.update(error=f"{providers[0]} cannot run it: {first_line(err)}", passed=False)
            return base
        base["seconds"] = round(time.perf_counter() - t0, 3)
        base.update(self.compare(logits))
        base["passed"] = not check_thresholds(variant, base)
        return base

    def compare(self, logits: np.ndarray) -> dict[str, Any]:
        ref = self.reference
        assert ref is not None
        if logits.shape != ref.shape:
            return {"error": f"logits shape {logits.shape} differs from PyTorch's {ref.shape}"}
        finite = np.isfinite(logits)
        if not finite.all():
            return {"nonfinite": int((~finite).sum()), "max_abs_diff": None, "spearman": None}
        diff = np.abs(logits - ref)
        ref_scores = apply_activation(ref, self.activation, self.positive_label).astype(np.float64)
        scores = apply_activation(logits, self.activation, self.positive_label).astype(np.float64)
        top1, top5 = [], []
        for group in self.pairset.groups:
            g = np.asarray(group)
            if len(g) < 2:
                continue
            r = np.argsort(-ref_scores[g], kind="stable")
            v = np.argsort(-scores[g], kind="stable")
            top1.append(float(r[0] == v[0]))
            if len(g) > 5:
                top5.append(len(set(r[:5].tolist()) & set(v[:5].tolist())) / 5.0)
        return {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "max_abs_diff_score": float(np.abs(scores - ref_scores).max()),
            "spearman": spearman(ref_scores, scores),
            "top1_agreement": float(np.mean(top1)) if top1 else None,
            "top5_agreement": float(np.mean(top5)) if top5 else None,
        }
