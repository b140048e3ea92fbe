"""The runtime's commands: `crossrank rerank` (inputs, options, one-line errors) and the dispatcher.

Split from the former tests/test_runtime.py. Uses the ``tiny_bert_folder`` fixture (the committed tiny
BERT, 1 label, sigmoid, every variant); tests that damage a folder work on a copy in ``tmp_path``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import QUERY, DOCS

from crossrank import Reranker
from crossrank.manifest import MANIFEST_NAME


# -- the rerank command --------------------------------------------------------------------------
def _cli(args: list[str], monkeypatch, capsys, stdin: str | None = None):
    import io

    from crossrank.cli import main

    if stdin is not None:
        fake = io.StringIO(stdin)
        fake.isatty = lambda: False  # type: ignore[method-assign]
        monkeypatch.setattr(sys, "stdin", fake)
    code = main(args)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_cli_reads_lines_jsonl_and_stdin(tiny_bert_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    rr = Reranker.load(tiny_bert_folder)
    want = rr.rerank(QUERY, DOCS)
    lines = tmp_path / "docs.txt"
    lines.write_text("\n".join(DOCS) + "\n\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(DOCS)) + "\n")
    strings = tmp_path / "strings.txt"
    strings.write_text("\n".join(json.dumps(d) for d in DOCS))
    for args, stdin in [
        (["--docs", str(lines)], None),
        (["--docs", str(jsonl), "--text-field", "body"], None),
        (["--docs", str(strings)], None),
        (["--docs", "-"], "\n".join(DOCS)),
        ([], "\n".join(DOCS)),
    ]:
        code, rows, err = _cli(["rerank", str(tiny_bert_folder), "--query", QUERY, *args], monkeypatch, capsys, stdin)
        assert code == 0, err
        assert [r["index"] for r in rows] == [r.index for r in want]
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert [r["text"] for r in rows] == [r.document for r in want]
        np.testing.assert_allclose([r["score"] for r in rows], [r.score for r in want], atol=1e-6)
        assert set(rows[0]) == {"rank", "index", "score", "text", "truncated", "query_cut", "doc_cut"}


def test_cli_top_k_raw_and_variant(tiny_bert_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    docs = tmp_path / "d.txt"
    docs.write_text("\n".join(DOCS))
    code, rows, _ = _cli(
        ["rerank", str(tiny_bert_folder), "-q", QUERY, "--docs", str(docs), "--top-k", "2", "--raw", "--variant", "fp32"],
        monkeypatch,
        capsys,
    )
    assert code == 0 and len(rows) == 2
    raw = Reranker.load(tiny_bert_folder, variant="fp32").score(QUERY, DOCS, raw=True)
    np.testing.assert_allclose([r["score"] for r in rows], np.sort(raw)[::-1][:2], atol=1e-6)


def test_cli_errors_are_one_line(tiny_bert_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    code, _, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--docs", str(bad)], monkeypatch, capsys)
    assert code == 1 and "line 2" in err and "'text'" in err and "Traceback" not in err
    code, _, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--docs", str(tmp_path / "none.txt")], monkeypatch, capsys)
    assert code == 1 and "no such file" in err
    code, _, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--variant", "nope"], monkeypatch, capsys, stdin="a\n")
    assert code == 1 and "'nope'" in err and "fp32" in err
    code, _, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--top-k", "0"], monkeypatch, capsys, stdin="a\n")
    assert code == 1 and "top_k" in err
    code, _, err = _cli(["rerank", str(tmp_path), "-q", "x"], monkeypatch, capsys, stdin="a\n")
    assert code == 1 and MANIFEST_NAME in err


def test_cli_without_documents_on_a_terminal_is_an_error(tiny_bert_folder: Path, monkeypatch, capsys) -> None:
    import io

    tty = io.StringIO("")
    tty.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdin", tty)
    from crossrank.cli import main

    assert main(["rerank", str(tiny_bert_folder), "-q", "x"]) == 1
    assert "--docs" in capsys.readouterr().err


def test_cli_in_process_leaves_logging_as_it_found_it(tmp_path) -> None:
    import logging

    from crossrank.cli import main

    log = logging.getLogger("crossrank")
    before = (list(log.handlers), log.level, log.propagate)
    assert main(["info", str(tmp_path / "missing")]) == 1  # configures stderr logging, then fails
    assert (list(log.handlers), log.level, log.propagate) == before


# -- the dispatcher --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command,module,argv",
    [
        ("export", "crossrank.export.cli", ["src", "out", "--int8"]),
        ("serve", "crossrank.serve.cli", ["--port", "8080", "some/dir"]),
        ("bench", "crossrank.bench.cli", ["some/dir", "--smoke"]),
    ],
)
def test_a_subcommand_whose_module_cannot_be_imported_says_why(command, module, argv, monkeypatch, capsys) -> None:
    """An extra that is not installed (here: its module made unimportable) leaves the subcommand
    listed; running it, with any arguments, is one line naming the extra and the import error."""
    from crossrank.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    assert main([command, *argv]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"crossrank {command} is unavailable: it needs the {command} extra: pip install 'crossrank[{command}]' "
        f"({module} could not be imported: import of {module} halted; None in sys.modules)"
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = " ".join(capsys.readouterr().out.split())
    assert f"{command} (unavailable) crossrank {command} is unavailable: it needs the {command} extra" in listed
    # the other subcommands are untouched
    assert main(["info", "no/such/folder"]) == 1
    assert "crossrank info: error:" in capsys.readouterr().err


def test_unknown_options_of_an_available_subcommand_are_still_usage_errors(tiny_bert_folder: Path, capsys) -> None:
    from crossrank.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(tiny_bert_folder), "--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
