"""The `crossrank` command: one dispatcher, each subcommand in the module that owns it.

    crossrank export SOURCE OUT [...]   crossrank.export.cli   (needs crossrank[export])
    crossrank info DIR [--json]         crossrank.info_cli
    crossrank rerank DIR --query ...    crossrank.rerank_cli
    crossrank serve DIR [--port 8080]   crossrank.serve.cli    (needs crossrank[serve])
    crossrank bench DIR [...]           crossrank.bench.cli    (needs crossrank[bench])

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func(args) -> int``. Registering must stay cheap: heavy imports (torch, optimum) happen only
inside ``func``. A subcommand whose module cannot be imported is still listed: running it fails
with one line saying which extra it needs and what the import error was. Every failure ends in one line on stderr and a non-zero exit code; ``--debug``
shows the traceback. Everything a command prints goes through :mod:`crossrank.textio`, so no text
(a lone surrogate, a non-UTF-8 file name) can turn a finished command into a crash.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from ._version import __version__
from .choices import cli_choice
from .errors import CrossrankError
from .textio import write_text

# (module, the subcommand it registers, the extra that brings its dependencies) in the order
# `--help` lists them.
_SUBCOMMAND_MODULES = (
    ("crossrank.export.cli", "export", "export"),
    ("crossrank.info_cli", "info", None),
    ("crossrank.rerank_cli", "rerank", None),
    ("crossrank.serve.cli", "serve", "serve"),
    ("crossrank.bench.cli", "bench", "bench"),
)

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossrank",
        description="ONNX-optimized inference for cross-encoder rerankers.",
    )
    parser.add_argument("--version", action="version", version=f"crossrank {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname, command, extra in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(modname)
        except ImportError as err:  # one missing module must not break the other subcommands
            _register_unavailable(sub, command, _unavailable_reason(command, modname, extra, err))
            continue
        module.register(sub)
    _apply_choice_rule(parser)
    return parser


def _unavailable_reason(command: str, modname: str, extra: str | None, err: ImportError) -> str:
    need = f"needs the {extra} extra: pip install 'crossrank[{extra}]'" if extra else "is part of the runtime: reinstall crossrank"
    return f"crossrank {command} is unavailable: it {need} ({modname} could not be imported: {err})"


def _register_unavailable(sub: argparse._SubParsersAction, command: str, reason: str) -> None:  # noqa: SLF001
    """List ``command`` with ``reason`` as its help; running it, with any arguments, says why."""
    p = sub.add_parser(command, help=f"(unavailable) {reason}", description=reason)
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def unavailable(_args: argparse.Namespace) -> int:
        _say(reason)
        return EXIT_ERROR

    p.set_defaults(func=unavailable, unavailable=True)


def _apply_choice_rule(parser: argparse.ArgumentParser) -> None:
    """Give every string ``choices=`` option of every subcommand crossrank's one spelling rule
    (any case, surrounding whitespace ignored; :mod:`crossrank.choices`), so that subcommand
    modules need not remember it. Options that already have a ``type=`` are left as they are."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk over its actions
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                _apply_choice_rule(sub)
        elif action.choices is not None and action.type is None and all(isinstance(c, str) for c in action.choices):
            action.type = cli_choice(action.choices, what=action.dest)


def _configure_logging(debug: bool, quiet: bool) -> Callable[[], None]:
    """Send crossrank's log to stderr for this command; returns what undoes it.

    The CLI owns the process, so it may configure handlers; the library never does. ``main()``
    undoes it on return, so that calling it in-process (tests, notebooks) leaves no handler bound
    to a stream that may be closed later.
    """
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("crossrank")
    before = (list(root.handlers), root.level, root.propagate)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

    def restore() -> None:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
        root.propagate = before[2]

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")  # what parse_args says
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    restore_logging = _configure_logging(args.debug, args.quiet)
    try:
        return _run(args)
    finally:
        restore_logging()


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _say("crossrank: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `crossrank rerank ... | head`
        return 0
    except CrossrankError as err:
        if args.debug:
            raise
        _say(f"crossrank {args.command}: error: {err}")
        return EXIT_ERROR
    except OSError as err:  # disk full, permission denied...
        if args.debug:
            raise
        _say(f"crossrank {args.command}: error: {err.strerror or err} ({getattr(err, 'filename', '') or ''})")
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - last resort: one line, never a bare traceback
        if args.debug:
            raise
        _say(f"crossrank {args.command}: unexpected error: {type(err).__name__}: {err} (rerun with --debug for the traceback)")
        return EXIT_ERROR


def _say(line: str) -> None:
    """One line on stderr, whatever text it holds."""
    write_text(line + "\n", sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
