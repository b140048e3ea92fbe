"""One spelling rule for every enumerated option.

Every option that takes one of a fixed set of names (``variant``, ``provider``,
``graph_optimization``, the CLI's ``--provider``/``--format``/``--variant``...) is matched
**case-insensitively, with surrounding whitespace ignored**: ``"INT8"``, ``" Auto "`` and
``"cpu"`` are all accepted and mean the canonical lower-case name. Anything else is an
:class:`~crossrank.errors.InvalidInputError` listing the accepted names.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Iterable

from .errors import InvalidInputError

__all__ = ["normalize", "canonical_choice", "cli_choice"]


def normalize(value: str) -> str:
    """The comparison form of an option name: stripped and case-folded."""
    return value.strip().casefold()


def canonical_choice(value: Any, choices: Iterable[str], *, what: str) -> str:
    """The entry of ``choices`` that ``value`` names under the rule above.

    Raises:
        InvalidInputError: ``value`` is not a str or names none of ``choices`` (the message says
            ``what`` the option is and lists the choices).
    """
    names = list(choices)
    if isinstance(value, str):
        key = normalize(value)
        for name in names:
            if normalize(name) == key:
                return name
    raise InvalidInputError(f"{what} must be one of {', '.join(names)} (any case); got {value!r}")


def cli_choice(choices: Iterable[str], *, what: str) -> Callable[[str], str]:
    """An argparse ``type=`` that applies the same rule (pass no ``choices=`` next to it)."""
    names = tuple(choices)

    def convert(text: str) -> str:
        try:
            return canonical_choice(text, names, what=what)
        except InvalidInputError as err:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(names)}, any case)") from err

    convert.__name__ = what  # argparse names the type in its error message
    return convert
