"""crossrank.__all__ is what a runtime user needs, and the public calls document Args/Returns/Raises."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import crossrank
import crossrank.errors

REPO = Path(__file__).resolve().parents[1]


def test_every_name_in_all_resolves() -> None:
    for name in crossrank.__all__:
        assert getattr(crossrank, name) is not None, name


def test_all_holds_the_runtime_users_names() -> None:
    needed = {"Reranker", "Result", "ScoreInfo", "Scheduler", "load_manifest", "resolve_variant", "__version__"}
    assert needed <= set(crossrank.__all__)
    assert set(crossrank.errors.__all__) <= set(crossrank.__all__)  # every error of the one tree
    from crossrank.scheduler import Scheduler

    assert crossrank.Scheduler is Scheduler


def test_names_the_readme_and_docs_import_are_public() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")])
    names = {n.strip() for m in re.finditer(r"from crossrank import ([\w, ]+)", text) for n in m.group(1).split(",")}
    names |= set(re.findall(r"\bcrossrank\.([A-Z]\w+)", text))
    assert names and names <= set(crossrank.__all__), names - set(crossrank.__all__)


def test_import_crossrank_stays_lean() -> None:
    # Scheduler is public but loaded on first use: a plain import pulls in neither it nor asyncio's loop.
    code = "import sys, crossrank; print('crossrank.scheduler' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("name", ["load", "score", "score_pairs", "rerank", "rerank_many"])
def test_public_calls_document_args_returns_raises(name: str) -> None:
    doc = getattr(crossrank.Reranker, name).__doc__ or ""
    for section in ("Args:", "Returns:", "Raises:"):
        assert section in doc, f"Reranker.{name} lacks {section}"
