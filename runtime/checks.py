"""The one rule for integer and flag options, so every option object and call checks alike.

An integer option accepts any :class:`numbers.Integral` but ``bool`` (``3``, ``np.int64(3)``;
not ``True``, ``3.0`` or ``"3"``) and is stored as a plain ``int``; a refusal is an
:class:`~crossrank.errors.InvalidInputError` naming the option and the value given.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = ["positive_int", "int_at_least", "flag"]


def int_at_least(name: str, value: Any, minimum: int, *, none: str | None = None) -> int | None:
    """``value`` as an int >= ``minimum``.

    Args:
        name: the option's name, for the message.
        value: what the caller passed.
        minimum: the smallest value allowed.
        none: what ``None`` means for this option (e.g. "onnxruntime's default"); when given,
            ``None`` is accepted and returned as is.

    Returns:
        ``int(value)``, or None when ``none`` is given and ``value`` is None.

    Raises:
        InvalidInputError: ``value`` is a bool, not an integer, or below ``minimum``.
    """
    if value is None and none is not None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = f"None ({none}) or an int >= {minimum}" if none is not None else f"an int >= {minimum}"
        raise InvalidInputError(f"{name} must be {allowed}; got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (see :func:`int_at_least`, whose Raises apply)."""
    out = int_at_least(name, value, 1)
    assert out is not None  # None is refused without ``none=``
    return out


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool; ``True``/``False`` (or numpy's) only, never a truthy string.

    Raises:
        InvalidInputError: anything else, naming the option.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be True or False; got {value!r}")
    return bool(value)
