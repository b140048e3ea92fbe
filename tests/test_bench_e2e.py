"""`crossrank bench` end to end on the real model: outputs, budgets, and the gate proven both ways.

The gate test records a hardware profile from one real run, then checks a second real run against it
(passes) and a deliberately slowed build — ``Reranker.rerank`` patched to sleep — (fails, exit 1),
each run measuring crossrank and the PyTorch reference interleaved on the same requests.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from crossrank.bench.suite import cached_export
from crossrank.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_model(real_hf_model) -> Path:
    """The real model exported with int8 once (cached by source weights and exporter code)."""
    if os.environ.get("CROSSRANK_BENCH_MODEL"):
        return Path(os.environ["CROSSRANK_BENCH_MODEL"])
    return cached_export(real_hf_model, Path(os.environ.get("CROSSRANK_TEST_CACHE", REPO / ".cache" / "tests")))


@pytest.fixture(scope="module")
def peer_cache() -> Path:
    """Where the sentence-transformers ONNX peers are exported once (keyed by weights and versions)."""
    return Path(os.environ.get("CROSSRANK_TEST_CACHE", REPO / ".cache" / "tests")) / "bench-cache"


def _args(model: Path, hf: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return ["bench", str(model), "--variants", "int8", "--candidates", "10", "--peer-names", "st-torch",
            "--no-quality", "--no-startup", "--rounds", "7", "--min-rounds", "7", "--warmup", "1",
            "--hf-model", str(hf), "--cache-dir", str(cache), "--out", str(out), *extra]


def test_gate_passes_on_the_real_build_and_fails_on_a_slowed_one(bench_model, real_hf_model, tmp_path, monkeypatch, capsys):
    from crossrank import Reranker

    cache = tmp_path / "cache"  # st-torch only: no ONNX peer export needed
    # 1. a baseline run records its figures as a profile
    assert main(_args(bench_model, real_hf_model, cache, tmp_path / "base", "--record-profile", "test-profile")) == 0
    budgets_file = tmp_path / "base" / "budgets.json"
    recorded = json.loads(budgets_file.read_text())["profiles"]["test-profile"]
    assert set(recorded["medians_ms"]["crossrank-int8"]) == {"10"}
    assert recorded["speedups"]["crossrank-int8"]["st-torch"]["10"] > 1
    base_ms = recorded["medians_ms"]["crossrank-int8"]["10"]
    check = ["--check", "--budgets", str(budgets_file), "--profile", "test-profile",
             "--tolerance", "ratio=0.4,median=1.0,ndcg=0.005"]

    # 2. the real build, measured again, passes
    rc = main(_args(bench_model, real_hf_model, cache, tmp_path / "real", *check))
    real = json.loads((tmp_path / "real" / "results.json").read_text())
    assert rc == 0, json.dumps(real["gate"], indent=1)
    assert real["gate"]["passed"] and {c["kind"] for c in real["gate"]["checks"] if c["status"] == "pass"} >= {"ratio", "median", "floor"}

    # 3. a slowed build: every rerank call waits 4x the recorded median on top -> exit 1
    original = Reranker.rerank
    delay = 4 * base_ms / 1e3

    def slowed(self, *args, **kwargs):
        time.sleep(delay)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Reranker, "rerank", slowed)
    capsys.readouterr()
    rc = main(_args(bench_model, real_hf_model, cache, tmp_path / "slow", *check))
    err = capsys.readouterr().err
    slow = json.loads((tmp_path / "slow" / "results.json").read_text())
    assert rc == 1
    failed = {(c["kind"], c["name"]) for c in slow["gate"]["checks"] if c["status"] == "FAIL"}
    assert ("ratio", "crossrank-int8 vs st-torch @10 speedup") in failed
    assert ("median", "crossrank-int8 @10 p50 ms") in failed
    assert "crossrank bench: error:" in err and "gate checks failed" in err
    assert slow["latency"]["systems"]["crossrank-int8"]["10"]["p50_ms"] >= base_ms + 0.9 * delay * 1e3


def test_smoke_run_writes_table_json_and_plot(bench_model, real_hf_model, peer_cache, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["bench", str(bench_model), "--smoke", "--peer-names", "st-torch,st-onnx-int8", "--budget-ms", "50,200",
               "--quality-variants", "all", "--no-cache", "--hf-model", str(real_hf_model), "--cache-dir", str(peer_cache), "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    lat = r["latency"]["systems"]
    assert set(lat) == {"crossrank-fp32", "crossrank-optimized", "crossrank-int8", "st-torch", "st-onnx-int8"}
    assert all(set(v) == {"1", "10", "50"} for v in lat.values())
    for v in lat["crossrank-int8"].values():
        assert 0 < v["p50_ms"] <= v["p95_ms"] <= v["p99_ms"] and v["pairs_per_s"] > 0 and v["tokens_per_s"] > 0
    assert set(r["budgets"]["crossrank-int8"]) == {"50", "200"}
    # start-up probes in smoke mode: crossrank variants, each in its own process
    assert set(r["startup"]) == {"crossrank-fp32", "crossrank-optimized", "crossrank-int8"}
    assert all(v["peak_rss_mb"] > v["rss_loaded_mb"] > 0 and v["load_s"] > 0 for v in r["startup"].values())
    q = r["quality"]
    assert set(q) == {"trec-dl-2020", "wikiqa", "scifact"}
    assert set(q["trec-dl-2020"]) == {"first-stage", "crossrank-fp32", "crossrank-optimized", "crossrank-int8", "st-torch"}
    assert q["trec-dl-2020"]["st-torch"]["queries"] == 3
    assert not any(v.get("cached") for row in q.values() for v in row.values())  # --no-cache scored everything
    # crossrank fp32 ranks as PyTorch does (parity 1e-4): same nDCG on the same queries
    for ds in q:
        assert q[ds]["crossrank-fp32"]["ndcg@10"] == pytest.approx(q[ds]["st-torch"]["ndcg@10"], abs=1e-3)
    assert r["machine"]["onnxruntime"] and r["machine"]["isa"]
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert stdout.startswith("## crossrank benchmark") and "Smoke mode" in stdout


def test_bad_arguments_are_one_line_errors(bench_model, tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--no-peers"]) == 1
    assert "not a crossrank model folder" in capsys.readouterr().err
    assert main(["bench", str(bench_model), "--variants", "int4", "--no-peers", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "int4" in err and "int8" in err  # names what the folder has
    assert main(["bench", str(bench_model), "--check", "--tolerance", "speed=1", "--no-peers"]) == 1
    assert "unknown tolerance 'speed'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", str(bench_model), "--candidates", "10,x"])
