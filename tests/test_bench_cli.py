"""`crossrank bench` argument handling and the quality harness's mechanics (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest

from crossrank.bench.cli import build_config
from crossrank.bench.data import load_dataset
from crossrank.bench.quality import FIRST_STAGE, quality_table, retention
from crossrank.bench.systems import System
from crossrank.bench.suite import suite_settings
from crossrank.cli import build_parser


def _cfg(*argv: str):
    return build_config(build_parser().parse_args(["bench", "some/dir", *argv]))


def test_defaults_are_a_full_run():
    cfg = _cfg()
    assert cfg.counts == (1, 10, 25, 50, 100, 200, 500)
    assert cfg.budgets_ms == (50.0, 100.0, 200.0)
    assert cfg.peers == ("st-torch", "st-onnx", "st-onnx-int8", "fastembed", "flashrank", "st-openvino", "st-openvino-int8")
    assert cfg.quality and cfg.startup_probe and not cfg.smoke
    assert cfg.variants is None and cfg.provider == "cpu" and cfg.dataset == "trec-dl-2020"
    assert cfg.peer_max_count == 200 and cfg.rounds == 30 and cfg.min_rounds == 3 and cfg.max_seconds == 8.0
    assert cfg.quality_variants is None  # the default variant only (plus the PyTorch reference)


def test_smoke_defaults_yield_to_explicit_options():
    cfg = _cfg("--smoke")
    assert cfg.smoke and cfg.counts == (1, 10, 50) and cfg.rounds == 3 and cfg.quality_queries == 3
    cfg = _cfg("--smoke", "--candidates", "10,100", "--rounds", "9")
    assert cfg.counts == (10, 100) and cfg.rounds == 9 and cfg.min_rounds == 2 and cfg.smoke
    assert _cfg("--rounds", "2").min_rounds == 2  # never more minimum rounds than rounds


def test_peer_and_variant_selection():
    assert _cfg("--no-peers").peers == ()
    assert _cfg("--peer-names", "st-torch,st-onnx-int8").peers == ("st-torch", "st-onnx-int8")
    assert _cfg("--variants", "int8,fp32").variants == ("int8", "fp32")
    assert _cfg("--budget-ms", "25,75.5").budgets_ms == (25.0, 75.5)
    assert _cfg("--peer-max-candidates", "100").peer_max_count == 100
    assert _cfg("--quality-variants", "all").quality_variants == ("all",)


@pytest.mark.parametrize("argv", [["--candidates", "0,10"], ["--candidates", "ten"], ["--budget-ms", "-5"],
                                  ["--rounds", "0"], ["--provider", "tpu"], ["--dataset", "msmarco"]])
def test_bad_option_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _cfg(*argv)
    assert e.value.code == 2


def test_suite_settings_modes():
    assert suite_settings({"CROSSRANK_BENCH_SMOKE": "1"}).smoke
    assert not suite_settings({"CROSSRANK_BENCH_SMOKE": "0"}).smoke
    full = suite_settings({})
    assert 500 in full.counts and full.rounds_for(500) == 5 and full.rounds_for(100) == 20 and full.rounds_for(10) == 30
    assert full.rounds_for(100, slow=True) == 10


def _system(name: str, kind: str, calls: list, key: str | None = None) -> System:
    def score(query, docs):
        calls.append(name)
        return np.array([len(d) for d in docs], dtype=np.float32)  # longest document first

    return System(name=name, kind=kind, label=name, rerank=lambda q, d: None, score=score, load_s=0.0,
                  info={"max_length": 512, "score_key": key or f"{name}-k1"})


def test_quality_scores_are_cached_by_what_determines_them(shared_dir, tmp_path):
    ds = load_dataset("wikiqa", shared_dir / "data").head(5)
    calls: list = []
    systems = [_system("crossrank-int8", "crossrank", calls), _system("st-torch", "peer", calls)]
    q1 = quality_table(systems, [ds], cache_dir=tmp_path)
    assert calls.count("st-torch") == 5 and calls.count("crossrank-int8") == 5
    q2 = quality_table(systems, [ds], cache_dir=tmp_path)
    assert len(calls) == 10  # both from the cache
    assert q2["wikiqa"]["st-torch"]["cached"] and not q1["wikiqa"]["st-torch"]["cached"]
    assert q1["wikiqa"]["crossrank-int8"]["ndcg@10"] == q2["wikiqa"]["crossrank-int8"]["ndcg@10"]
    # a changed key (other model file, runtime code, versions...) scores afresh; so does no cache
    quality_table([_system("crossrank-int8", "crossrank", calls, key="changed-runtime")], [ds], cache_dir=tmp_path)
    assert calls.count("crossrank-int8") == 10
    quality_table(systems, [ds], cache_dir=None)
    assert calls.count("crossrank-int8") == 15 and calls.count("st-torch") == 10
    # a different slice of the set is a different computation
    quality_table(systems, [load_dataset("wikiqa", shared_dir / "data").head(4)], cache_dir=tmp_path)
    assert calls.count("st-torch") == 14
    assert FIRST_STAGE in q1["wikiqa"] and q1["wikiqa"][FIRST_STAGE]["queries"] == 5
    assert retention(q1, "crossrank-int8", "st-torch") == {"wikiqa": pytest.approx(1.0)}


def test_a_system_without_a_key_is_never_cached(shared_dir, tmp_path):
    ds = load_dataset("wikiqa", shared_dir / "data").head(2)
    calls: list = []
    s = _system("st-torch", "peer", calls)
    s.info.pop("score_key")
    quality_table([s], [ds], cache_dir=tmp_path)
    quality_table([s], [ds], cache_dir=tmp_path)
    assert calls.count("st-torch") == 4


def test_peer_quantization_preset_follows_the_cpu():
    from crossrank.bench.peers import quantization_config_for

    assert quantization_config_for(["avx", "avx2", "fma"]) == "avx2"
    assert quantization_config_for(["avx2", "avx512f"]) == "avx512"
    assert quantization_config_for(["avx2", "avx512f", "avx512_vnni"]) == "avx512_vnni"
    assert quantization_config_for(["asimd"], "aarch64") == "arm64"


def test_peers_need_a_source_folder(tmp_path):
    from crossrank.bench.peers import load_peer, prepare_peer_models
    from crossrank.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match="not a folder.*--hf-model"):
        prepare_peer_models(tmp_path / "missing", isa_flags=["avx2"])
    with pytest.raises(BenchmarkError, match="holds no Hugging Face model files"):
        prepare_peer_models(tmp_path, isa_flags=["avx2"])
    with pytest.raises(BenchmarkError, match="unknown peer 'st-tf'"):
        load_peer("st-tf", max_length=512)
    with pytest.raises(BenchmarkError, match="prepare_peer_models"):
        load_peer("st-onnx", max_length=512)
