"""Score activations, numerically stable, over a batch of logits of shape (n, num_labels)."""
from __future__ import annotations

import numpy as np

from .errors import InvalidInputError
from .manifest import ACTIVATIONS

__all__ = ["apply_activation"]


def apply_activation(logits: np.ndarray, activation: str, positive_label: int = 0) -> np.ndarray:
    """Turn logits ``(n, num_labels)`` into one float32 score per row.

    identity  -> logits[:, positive_label]
    sigmoid   -> 1 / (1 + exp(-logits[:, positive_label]))   (no overflow for any finite logit)
    softmax   -> softmax(logits, axis=1)[:, positive_label]  (max-shifted)
    """
    if activation not in ACTIVATIONS:
        raise InvalidInputError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or not 0 <= positive_label < x.shape[1]:
        raise InvalidInputError(f"logits of shape {np.shape(logits)} do not fit positive_label {positive_label}")
    if activation == "identity":
        out = x[:, positive_label]
    elif activation == "sigmoid":
        z = x[:, positive_label]
        e = np.exp(-np.abs(z))  # in (0, 1]: never overflows
        out = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    else:
        shifted = x - x.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        out = e[:, positive_label] / e.sum(axis=1)
    return out.astype(np.float32)
