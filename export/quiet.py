"""Silence the chatter of torch, transformers, optimum and onnxruntime while an export runs.

Only inside :func:`quiet_libraries`: nothing is changed at import time and everything is restored
on exit. With the ``crossrank.export`` logger at DEBUG (``crossrank --debug``) nothing is silenced.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

__all__ = ["quiet_libraries"]

# Loggers of the export stack. onnxruntime's transformer optimizer imports its modules as
# top-level names (fusion_attention, onnx_model_bert...), hence the bare prefixes.
_NOISY_PREFIXES = (
    "transformers",
    "optimum",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "huggingface_hub",
    "fusion_",
    "onnx_model",
    "optimizer",
    "float16",
    "shape_infer",
    "quantize",
    "calibrate",
    "matmul_nbits",
    "root",  # onnxruntime.quantization logs with logging.warning() on the root logger
)


def _noisy(name: str) -> bool:
    return any(name == p or name.startswith(p) for p in _NOISY_PREFIXES) and not name.startswith("crossrank")


class _DropNoisy(logging.Filter):
    """For loggers created inside the block (imports happen late): drop their records below ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not _noisy(record.name)


class _LastResort(logging.Handler):
    """Stands in for an unconfigured root logger during the block.

    onnxruntime's quantizer calls ``logging.warning()``, which would run ``basicConfig()`` and leave
    a handler on the application's root logger for good; with this handler present it does not.
    Records that pass the filter go where Python would have sent them anyway (``lastResort``).
    """

    def emit(self, record: logging.LogRecord) -> None:
        if logging.lastResort is not None and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Raise the export stack's loggers to ERROR and ignore its warnings until the block ends."""
    if logging.getLogger("crossrank.export").isEnabledFor(logging.DEBUG):
        yield
        return
    saved: dict[logging.Logger, int] = {}
    for name in list(logging.root.manager.loggerDict):
        if _noisy(name):
            lg = logging.getLogger(name)
            saved[lg] = lg.level
            lg.setLevel(logging.ERROR)
    drop = _DropNoisy()
    stand_in = None
    if not logging.root.handlers:
        stand_in = _LastResort()
        logging.root.addHandler(stand_in)
    handlers = [h for h in (*logging.root.handlers, logging.lastResort) if h is not None]
    for h in handlers:
        h.addFilter(drop)
    logging.root.addFilter(drop)  # records logged on the root logger itself (logging.warning(...))
    tf_verbosity = None
    try:
        import transformers.utils.logging as tf_logging  # noqa: PLC0415 - only when installed

        tf_verbosity = tf_logging.get_verbosity()
        tf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is part of the export extra
        tf_logging = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                from torch.jit import TracerWarning  # noqa: PLC0415

                warnings.simplefilter("ignore", TracerWarning)
            except ImportError:  # pragma: no cover
                pass
            yield
    finally:
        for h in handlers:
            h.removeFilter(drop)
        logging.root.removeFilter(drop)
        if stand_in is not None:
            logging.root.removeHandler(stand_in)
        for lg, level in saved.items():
            lg.setLevel(level)
        if tf_logging is not None and tf_verbosity is not None:
            tf_logging.set_verbosity(tf_verbosity)
