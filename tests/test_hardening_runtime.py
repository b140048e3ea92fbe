"""Issue 8 ("Hardening"), runtime items: each fault as a whole kind, on the tiny exported BERT.

1. every output path writes any str (lone surrogates) and exits 0;
2. a UTF-8 BOM never changes the input format; invalid UTF-8 is refused alike on stdin and files;
5. the character pre-cut has a bounded cost for text without word breaks (counted, not timed);
8. a query is cut only when its pair overflows, and only as far as needed; cuts are flagged;
   ``max_doc_tokens`` caps the document;
9. one spelling rule (any case, surrounding whitespace ignored) for every enumerated option.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossrank import InvalidInputError, Reranker, VariantNotFoundError
from crossrank.manifest import MANIFEST_NAME

QUERY = "how do i export my data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rr32(tiny_bert_folder: Path) -> Reranker:
    return Reranker.load(tiny_bert_folder, variant="fp32", provider="cpu")


class _Stdin(io.TextIOWrapper):
    """A piped stdin: text on top of the given bytes, ``buffer`` below it, not a terminal."""

    def __init__(self, data: bytes, errors: str = "strict") -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8", errors=errors)

    def isatty(self) -> bool:
        return False


def _cli(args: list[str], monkeypatch, capsysbinary, stdin: bytes | None = None, errors: str = "strict"):
    """Run `crossrank ARGS` in process; returns (exit code, stdout bytes, stderr text)."""
    from crossrank.cli import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", _Stdin(stdin, errors))
    code = main(args)
    out, err = capsysbinary.readouterr()
    return code, out, err.decode("utf-8", "replace")


def _rows(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode("utf-8").splitlines()]  # strict: must be valid UTF-8


# -- 1. output paths write any str ----------------------------------------------------------------
def test_rerank_cli_prints_a_document_holding_a_lone_surrogate(tiny_bert_folder: Path, monkeypatch, capsysbinary) -> None:
    code, out, err = _cli(
        ["rerank", str(tiny_bert_folder), "-q", "export data"], monkeypatch, capsysbinary, stdin=b'{"text":"export a\\ud800b"}\n{"text":"ok"}\n'
    )
    assert code == 0, err
    rows = _rows(out)
    assert sorted(r["text"] for r in rows) == ["export a\ufffdb", "ok"]


def test_rerank_cli_subprocess_with_a_lone_surrogate(tiny_bert_folder: Path) -> None:
    """The issue's command, through a real pipe and the interpreter's own stdout."""
    env = dict(os.environ, PYTHONIOENCODING="", LC_ALL="C.UTF-8")
    proc = subprocess.run(
        [sys.executable, "-m", "crossrank.cli", "rerank", str(tiny_bert_folder), "-q", "export data"],
        input=b'{"text":"export a\\ud800b"}\n', capture_output=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    (row,) = _rows(proc.stdout)
    assert row["text"] == "export a\ufffdb" and row["rank"] == 1


def test_info_prints_a_manifest_holding_a_lone_surrogate(tiny_bert_folder: Path, tmp_path: Path, monkeypatch, capsysbinary) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_folder, folder)
    p = folder / MANIFEST_NAME
    data = json.loads(p.read_text())
    data["source"]["id"] = "my\ud800model"
    p.write_text(json.dumps(data))  # ensure_ascii: the file holds the escape "\ud800"
    code, out, err = _cli(["info", str(folder), "--json"], monkeypatch, capsysbinary)
    assert code == 0, err
    assert json.loads(out.decode("utf-8"))["source"]["id"] == "my\ufffdmodel"
    code, out, err = _cli(["info", str(folder)], monkeypatch, capsysbinary)
    assert code == 0, err
    assert "my\ufffdmodel" in out.decode("utf-8")


@pytest.mark.needs_bench
def test_bench_outputs_write_any_str(tmp_path: Path) -> None:
    from test_bench_report import _results

    from crossrank.bench.report import write_outputs

    results = _results()
    results["labels"]["crossrank-int8"] = "crossrank int8 \ud83d"  # half an emoji
    results["model_dir"] = "/models/caf\udce9"  # a non-UTF-8 file name, decoded with surrogateescape
    paths = write_outputs(results, tmp_path / "out")
    table = paths["table"].read_bytes().decode("utf-8")
    assert "crossrank int8 \ufffd" in table
    assert json.loads(paths["json"].read_bytes().decode("utf-8"))["model_dir"] == "/models/caf\ufffd"


def test_runtime_docstrings_are_utf8() -> None:
    """help() prints them: a stray "\\ud800" in a docstring would be the fault itself."""
    import importlib
    import pkgutil

    import crossrank

    for mod in pkgutil.iter_modules(crossrank.__path__):
        if mod.name in ("export", "bench"):
            continue
        doc = importlib.import_module(f"crossrank.{mod.name}").__doc__ or ""
        doc.encode("utf-8")


def test_textio_never_fails_on_content() -> None:
    from crossrank.textio import dumps, scrub, write_text

    assert scrub("a\ud83d\ude00b") == "a\U0001f600b"  # a surrogate pair held as two code units
    assert scrub("x\udcffy") == "x\ufffdy"
    assert json.loads(dumps({"k\ud800": "v\udfff"})) == {"k\ufffd": "v\ufffd"}
    latin1 = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    write_text("café 中文 \ud800\n", latin1)  # a non-UTF-8 locale: replaced, not raised
    latin1.flush()
    assert latin1.buffer.getvalue() == "café ?? ?\n".encode("latin-1")


# -- 2. byte-order mark and invalid UTF-8 -----------------------------------------------------------
BOM_JSONL = b'\xef\xbb\xbf{"text":"export data as CSV"}\n{"text":"bananas"}\n'


def test_bom_on_stdin_or_in_a_txt_file_is_dropped_and_jsonl_parsed(tiny_bert_folder: Path, tmp_path: Path, monkeypatch, capsysbinary) -> None:
    folder = str(tiny_bert_folder)
    f = tmp_path / "docs.txt"
    f.write_bytes(BOM_JSONL)
    for args, stdin in [([], BOM_JSONL), (["--docs", "-"], BOM_JSONL), (["--docs", str(f)], None), (["--docs", str(f), "--format", "jsonl"], None)]:
        code, out, err = _cli(["rerank", folder, "-q", "export data", *args], monkeypatch, capsysbinary, stdin=stdin)
        assert code == 0, err
        assert sorted(r["text"] for r in _rows(out)) == ["bananas", "export data as CSV"], args
    f2 = tmp_path / "docs.jsonl"
    f2.write_bytes(BOM_JSONL)
    code, out, err = _cli(["rerank", folder, "-q", "x", "--docs", str(f2)], monkeypatch, capsysbinary)
    assert code == 0, err
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"\xef\xbb\xbfplain first line\nsecond\n")
    code, out, err = _cli(["rerank", folder, "-q", "x", "--docs", str(lines)], monkeypatch, capsysbinary)
    assert code == 0 and sorted(r["text"] for r in _rows(out)) == ["plain first line", "second"]


def test_invalid_utf8_is_refused_alike_on_stdin_and_in_a_file(tiny_bert_folder: Path, tmp_path: Path, monkeypatch, capsysbinary) -> None:
    data = b"good line\nbad \xff byte\n"
    f = tmp_path / "docs.txt"
    f.write_bytes(data)
    # errors="surrogateescape" is what a C/POSIX locale gives sys.stdin: today's U+FFFD path.
    for args, stdin in [([], data), (["--docs", str(f)], None)]:
        code, out, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", *args], monkeypatch, capsysbinary, stdin=stdin, errors="surrogateescape")
        assert code == 1 and out == b"", err
        assert "line 2" in err and "0xff" in err and "byte offset 14" in err and "UTF-8" in err and "Traceback" not in err
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("doc\n".encode("utf-16"))
    code, _, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--docs", str(utf16)], monkeypatch, capsysbinary)
    assert code == 1 and "UTF-16" in err


def test_read_documents_drops_a_bom_from_text_lines_too() -> None:
    from crossrank.rerank_cli import read_documents

    assert read_documents(["\ufeff{\"text\": \"a\"}\n", "{\"text\": \"b\"}\n"]) == ["a", "b"]
    assert read_documents([b"\xef\xbb\xbf\"a\"\n"]) == ["a"]
    assert read_documents([b"a\rb\r\n", b"c\n"]) == ["a", "b", "c"]  # line ends as in text mode
    with pytest.raises(InvalidInputError, match=r"line 1.*byte offset 3"):
        read_documents([b"\xef\xbb\xbf\xc3(\n"])


# -- 5. bounded character pre-cut -------------------------------------------------------------------
class _Spy:
    """Counts the characters each call hands to the tokenizer."""

    def __init__(self, tok, seen: list[int]) -> None:
        self.tok, self.seen = tok, seen

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode(self, *texts, **kw):
        self.seen.append(sum(len(t) for t in texts))
        return self.tok.encode(*texts, **kw)

    def encode_batch(self, batch, **kw):
        self.seen.append(sum(len(a) + len(b) for a, b in batch))
        return self.tok.encode_batch(batch, **kw)


def _unigram_tokenizer_file(tmp_path: Path) -> Path:
    """An XLM-R-like Unigram tokenizer (Metaspace: unspaced text is one word)."""
    from tokenizers import processors
    from tiny_models import _unigram_tokenizer

    tok = _unigram_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.mark.parametrize("family", ["bert", "unigram"])
def test_precut_cost_is_bounded_for_text_without_word_breaks(family: str, tiny_bert_folder: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from crossrank.tokenize import PairEncoder

    path = tiny_bert_folder / "tokenizer.json" if family == "bert" else _unigram_tokenizer_file(tmp_path)
    specials = 3 if family == "bert" else 4
    enc = PairEncoder(path, max_length=128, num_special_tokens_pair=specials)
    ref = Tokenizer.from_file(str(path))
    ref.no_padding()
    ref.no_truncation()
    seen: list[int] = []
    enc._tok = _Spy(enc._tok, seen)
    first_cut = 128 * 8 + 256
    # First cut, then at most 3 doublings (MAX_PRECUT_RETRIES): 1 + 2 + 4 + 8 first cuts.
    bound = 15 * first_cut + 2 * 64  # + the short query, twice
    texts = {"dna": "acgt" * 250_000, "cjk-ish": "dataexport" * 100_000, "digits": "0123456789" * 100_000}
    for name, text in texts.items():  # 1 MB each, no word break
        seen.clear()
        got = enc.encode([("export data", text)])
        assert sum(seen) <= bound, (name, sum(seen))
        assert got.truncated[0] and got.doc_cut[0] and not got.query_cut[0], name  # not read whole: flagged
        assert got.lengths[0] <= 128
        # Where the model sees tokens, they are those of the full text (checked on a 100 kB piece).
        full = ref.encode("export data", text[:100_000]).ids
        a = got.ids[: got.offsets[1]].tolist()
        assert a[:-1] == full[: len(a) - 1], name  # the same tokens up to the closing special token
        # Queries get the same bounded pre-cut.
        seen.clear()
        got = enc.encode([(text, "a short document")])
        # a query without word breaks is cut at the last prefix tried, which each pair tokenizes
        assert sum(seen) <= bound + 8 * first_cut + 64, (name, "query", sum(seen))
        assert got.query_cut[0] and got.lengths[0] <= 128


def test_long_query_with_word_breaks_is_cut_exactly_and_cheaply(tiny_bert_folder: Path) -> None:
    from tokenizers import Tokenizer

    from crossrank.tokenize import PairEncoder

    path = tiny_bert_folder / "tokenizer.json"
    enc = PairEncoder(path, max_length=128, num_special_tokens_pair=3)
    ref = Tokenizer.from_file(str(path))
    ref.no_padding()
    ref.enable_truncation(128, strategy="only_first")
    seen: list[int] = []
    enc._tok = _Spy(enc._tok, seen)
    q = "the quick brown fox jumps over the lazy dog " * 50_000  # 2.2 MB
    got = enc.encode([(q, "export data")])
    assert got.ids.tolist() == ref.encode(q[:5000], "export data").ids  # the query keeps all it can
    assert got.query_cut[0] and not got.doc_cut[0] and got.query_truncated == 1
    assert sum(seen) <= 3 * (125 * 8 + 256), seen


# -- 8. a query is cut only when its pair overflows ------------------------------------------------
def _torch_logits(hf: Path, pairs: list[tuple[str, str]], **tok_kwargs) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForSequenceClassification.from_pretrained(hf).eval()
    out = []
    with torch.no_grad():
        for q, d in pairs:
            feats = tok(q, d, return_tensors="pt", **tok_kwargs)
            out.append(float(model(**feats).logits[0, 0]))
    return np.array(out, dtype=np.float32)


def test_a_query_is_not_cut_when_the_pair_fits(tiny_bert_folder: Path, tiny_bert_hf: Path, rr32: Reranker) -> None:
    """The issue's case scaled to the tiny model (max_length 128): a query of ~100 tokens with a
    short document fits, so nothing is cut; the scores are PyTorch's on the whole pair."""
    from tokenizers import Tokenizer

    q = " ".join(["export data settings page"] * 25)  # 100 tokens > max_query_tokens (62)
    docs = ["you can export data as csv", "bananas", ""]
    ref = Tokenizer.from_file(str(tiny_bert_folder / "tokenizer.json"))
    ref.no_truncation()
    enc = rr32._encoder.encode([(q, d) for d in docs])
    for i, d in enumerate(docs):
        full = ref.encode(q, d).ids
        assert len(full) <= 128
        assert enc.ids[enc.offsets[i] : enc.offsets[i + 1]].tolist() == full
    scores, info = rr32.score(q, docs, raw=True, return_info=True)
    assert not info.truncated.any() and not info.query_cut.any() and info.query_truncated == 0
    # (HF's tokenizer reads an empty text_pair as no pair at all, so "" is left out here.)
    want = _torch_logits(tiny_bert_hf, [(q, d) for d in docs[:2]])
    np.testing.assert_allclose(scores[:2], want, atol=1e-4)
    assert not any(r.truncated or r.query_cut for r in rr32.rerank(q, docs))


def test_an_overflowing_query_is_cut_only_as_far_as_needed(tiny_bert_folder: Path, tiny_bert_hf: Path, rr32: Reranker) -> None:
    """Short document: the query loses just the overflow, as `tokenizers`' only_first truncation
    does; long document: the query keeps max_query_tokens and the document the rest."""
    from tokenizers import Tokenizer

    path = str(tiny_bert_folder / "tokenizer.json")
    q = " ".join(["export data settings page"] * 40)  # 160 tokens
    short, long = "you can export data as csv", "billing invoice account " * 100
    only_first = Tokenizer.from_file(path)
    only_first.enable_truncation(128, strategy="only_first")
    enc = rr32._encoder.encode([(q, short), (q, long)])
    assert enc.ids[: enc.offsets[1]].tolist() == only_first.encode(q, short).ids
    assert enc.query_cut.tolist() == [True, True] and enc.doc_cut.tolist() == [False, True]
    assert enc.truncated.tolist() == [True, True] and enc.query_truncated == 1
    # Long document: the tokenizer's own truncation of each part (62 query, 63 document tokens).
    tok = Tokenizer.from_file(path)
    tok.no_truncation()
    qe, de = tok.encode(q, add_special_tokens=False), tok.encode(long, add_special_tokens=False)
    qe.truncate(rr32.max_query_tokens)
    de.truncate(125 - rr32.max_query_tokens)
    assert enc.ids[enc.offsets[1] :].tolist() == tok.post_process(qe, de).ids
    # PyTorch on the short pair, truncated by the HF tokenizer's only_first.
    scores, info = rr32.score(q, [short], raw=True, return_info=True)
    want = _torch_logits(tiny_bert_hf, [(q, short)], truncation="only_first", max_length=128)
    np.testing.assert_allclose(scores, want, atol=1e-4)
    assert info.query_cut.tolist() == [True] and info.doc_cut.tolist() == [False] and info.truncated.tolist() == [True]
    (r,) = rr32.rerank(q, [short])
    assert r.truncated and r.query_cut and not r.doc_cut


@pytest.mark.needs_export  # the families' tokenizers are built with transformers
@pytest.mark.parametrize("family", ["bert", "xlm-roberta", "deberta-v2", "modernbert"])
def test_cuts_match_tokenizers_own_truncation_for_every_family(family: str, tmp_path: Path) -> None:
    """Each family's pair template (XLM-R's double separator, DeBERTa's type ids, byte-level BPE):
    a pair that fits is the tokenizer's own encoding; an overflowing one is what `tokenizers`
    truncation makes of it (only_first when the document is short, each part cut when both are
    long)."""
    import tiny_models as T

    make = {
        "bert": lambda: T._bert_tokenizer(tmp_path, model_max_length=None),
        "xlm-roberta": lambda: T._xlmr_tokenizer(None),
        "deberta-v2": lambda: T._deberta_tokenizer(None),
        "modernbert": lambda: T._modernbert_tokenizer(None),
    }[family]
    tok = make().backend_tokenizer
    tok.no_truncation()
    tok.no_padding()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    from crossrank.tokenize import PairEncoder

    specials = tok.num_special_tokens_to_add(True)
    enc = PairEncoder(path, max_length=64, num_special_tokens_pair=specials)
    room = 64 - specials
    mqt = enc.max_query_tokens
    q_long = "export data settings page " * 12
    pairs = [
        ("how do i export my data", "you can export data as csv"),  # fits
        (q_long, "csv"),  # query over max_query_tokens, fits or overflows a little
        (q_long, "billing invoice account " * 30),  # both long
        ("export", "billing invoice account " * 30),  # document long
        ("", ""),
    ]
    got = enc.encode(pairs)
    for i, (q, d) in enumerate(pairs):
        qe, de = tok.encode(q, add_special_tokens=False), tok.encode(d, add_special_tokens=False)
        nq, nd = len(qe.ids), len(de.ids)
        if nq + nd > room:
            keep_q = min(nq, max(mqt, room - nd))
            qe.truncate(keep_q)
            de.truncate(room - keep_q)
        want = tok.post_process(qe, de)
        a, b = got.offsets[i], got.offsets[i + 1]
        assert got.ids[a:b].tolist() == want.ids, (family, i)
        assert got.type_ids[a:b].tolist() == want.type_ids, (family, i)
        assert got.query_cut[i] == (len(qe.ids) < nq) and got.doc_cut[i] == (len(de.ids) < nd), (family, i)
        if nq + nd <= room:
            assert want.ids == tok.encode(q, d).ids


def test_cli_json_lines_say_which_part_was_cut(tiny_bert_folder: Path, monkeypatch, capsysbinary) -> None:
    q = " ".join(["export data settings page"] * 40)
    docs = [{"text": "short"}, {"text": "billing invoice " * 200}]
    stdin = "".join(json.dumps(d) + "\n" for d in docs).encode()
    code, out, err = _cli(["rerank", str(tiny_bert_folder), "-q", q, "--variant", "fp32"], monkeypatch, capsysbinary, stdin=stdin)
    assert code == 0, err
    rows = {r["index"]: r for r in _rows(out)}
    assert set(rows[0]) == {"rank", "index", "score", "text", "truncated", "query_cut", "doc_cut"}
    assert (rows[0]["truncated"], rows[0]["query_cut"], rows[0]["doc_cut"]) == (True, True, False)
    assert (rows[1]["truncated"], rows[1]["query_cut"], rows[1]["doc_cut"]) == (True, True, True)
    code, out, err = _cli(["rerank", str(tiny_bert_folder), "-q", "x"], monkeypatch, capsysbinary, stdin=b"short\n")
    assert code == 0 and _rows(out)[0]["truncated"] is False


def test_max_doc_tokens_caps_the_document(rr32: Reranker, tiny_bert_folder: Path) -> None:
    from tokenizers import Tokenizer

    enc = rr32._encoder
    docs = ["export data as csv from the settings page", "csv", "word " * 5000]
    got = enc.encode([(QUERY, d) for d in docs], max_doc_tokens=3)
    tok = Tokenizer.from_file(str(tiny_bert_folder / "tokenizer.json"))
    tok.no_truncation()
    for i, d in enumerate(docs):
        de = tok.encode(d, add_special_tokens=False)
        de.truncate(3)
        want = tok.post_process(tok.encode(QUERY, add_special_tokens=False), de).ids
        assert got.ids[got.offsets[i] : got.offsets[i + 1]].tolist() == want
    assert got.doc_cut.tolist() == [True, False, True] and got.truncated.tolist() == [True, False, True]
    assert not got.query_cut.any()
    assert np.array_equal(enc.encode([(QUERY, d) for d in docs], max_doc_tokens=None).ids, enc.encode([(QUERY, d) for d in docs]).ids)
    # The cap leaves a long query more room: it is not cut when query + capped document fit.
    q = " ".join(["export data settings page"] * 25)
    got = enc.encode([(q, "billing invoice " * 200)], max_doc_tokens=10)
    assert not got.query_cut[0] and got.doc_cut[0] and got.lengths[0] == 100 + 10 + 3
    for bad in (0, -1, True, 2.5, "3"):
        with pytest.raises(InvalidInputError, match="max_doc_tokens"):
            enc.encode([(QUERY, "x")], max_doc_tokens=bad)
    assert enc.encode([(QUERY, "x y z")], max_doc_tokens=np.int64(1)).doc_cut.tolist() == [True]


# -- 9. one spelling rule for enumerated options ----------------------------------------------------
def test_enumerated_options_accept_any_case_and_surrounding_spaces(tiny_bert_folder: Path) -> None:
    rr = Reranker.load(tiny_bert_folder, variant="INT8", provider=" CPU ", graph_optimization="All")
    assert rr.variant == "int8"
    assert Reranker.load(tiny_bert_folder, variant=" Auto ", provider="Auto").variant == "int8"
    assert Reranker.load(tiny_bert_folder, variant="Fp32", graph_optimization=" DISABLE ").variant == "fp32"
    with pytest.raises(VariantNotFoundError, match="'INT4'"):
        Reranker.load(tiny_bert_folder, variant="INT4")
    with pytest.raises(InvalidInputError, match="graph_optimization"):
        Reranker.load(tiny_bert_folder, graph_optimization="maximum")
    with pytest.raises(InvalidInputError, match="provider"):
        Reranker.load(tiny_bert_folder, provider="gpu")


def test_cli_choices_follow_the_same_rule(tiny_bert_folder: Path, monkeypatch, capsysbinary) -> None:
    from crossrank.rerank_cli import read_documents

    code, out, err = _cli(
        ["rerank", str(tiny_bert_folder), "-q", "x", "--provider", "CPU", "--variant", "FP32", "--format", " JSONL "],
        monkeypatch, capsysbinary, stdin=b'{"text": "a"}\n',
    )
    assert code == 0, err
    assert _rows(out)[0]["text"] == "a"
    assert read_documents(['"a"\n'], fmt="Lines") == ['"a"']
    with pytest.raises(SystemExit):
        _cli(["rerank", str(tiny_bert_folder), "-q", "x", "--provider", "tpu"], monkeypatch, capsysbinary, stdin=b"a\n")


def test_every_subcommand_choice_follows_the_rule() -> None:
    """The dispatcher gives every string ``choices=`` option (export, bench, rerank) the rule."""
    from crossrank.cli import build_parser

    p = build_parser()
    args = p.parse_args(["export", "src", "out", "--int8-scheme", " STATIC ", "--activation", "Sigmoid"])
    assert (args.int8_scheme, args.activation) == ("static", "sigmoid")
    args = p.parse_args(["bench", "dir", "--provider", "CPU", "--dataset", "SciFact"])
    assert (args.provider, args.dataset) == ("cpu", "scifact")
    args = p.parse_args(["rerank", "dir", "-q", "x", "--provider", "Cuda", "--format", "LINES"])
    assert (args.provider, args.format) == ("cuda", "lines")
    with pytest.raises(SystemExit):
        p.parse_args(["bench", "dir", "--provider", "tpu"])
