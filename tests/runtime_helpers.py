"""Helpers shared by the runtime test modules (split from the former tests/test_runtime.py).

Plain functions and constants, no torch: the runtime tests run on the lean install.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from crossrank.manifest import MANIFEST_NAME

QUERY = "How do I export my data?"
DOCS = [
    "You can export data as CSV or JSON from the Settings page.",
    "Our platform supports multiple file formats for import operations.",
    "Billing invoices can be downloaded from the account portal.",
]
CUDA = "CUDAExecutionProvider"


def has_cuda() -> bool:
    import onnxruntime

    return CUDA in onnxruntime.get_available_providers()


def copy_folder(folder: Path, tmp_path: Path) -> Path:
    """A copy of model ``folder`` under ``tmp_path`` that a test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(folder, dst)
    return dst


def edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    p = folder / MANIFEST_NAME
    data = json.loads(p.read_text())
    edit(data)
    p.write_text(json.dumps(data))


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` random documents of 1-59 words from a small vocabulary (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    words = "data export import csv json settings page billing invoice account portal file format the a of to".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(n)]
