"""Outputs of a run: Markdown table, JSON with every figure, PNG plot; the machine description."""
from __future__ import annotations

import json

from crossrank.bench import budgets as B
from crossrank.bench.machine import describe_machine, isa_summary
from crossrank.bench.report import markdown, write_outputs


def _results() -> dict:
    lat = {
        "crossrank-int8": {"10": {"p50_ms": 20.0, "p95_ms": 25.0, "p99_ms": 26.0, "pairs_per_s": 500.0,
                                  "tokens_per_s": 40000.0, "n": 30},
                           "50": {"p50_ms": 80.0, "p95_ms": 95.0, "p99_ms": 99.0, "pairs_per_s": 600.0,
                                  "tokens_per_s": 50000.0, "n": 30}},
        "st-torch": {"10": {"p50_ms": 200.0, "p95_ms": 230.0, "p99_ms": 240.0, "pairs_per_s": 50.0,
                            "tokens_per_s": 4000.0, "n": 12},
                     "50": {"p50_ms": 800.0, "p95_ms": 900.0, "p99_ms": 910.0, "pairs_per_s": 60.0,
                            "tokens_per_s": 5000.0, "n": 6}},
    }
    r = {
        "created": "2026-01-01T00:00:00+00:00",
        "machine": describe_machine(),
        "settings": {"max_length": 512, "provider": "cpu", "warmup": 2, "rounds": 30, "min_rounds": 5,
                     "max_seconds": 20.0, "smoke": False, "budgets_ms": [50.0, 100.0], "headline_count": 50},
        "labels": {"crossrank-int8": "crossrank int8", "st-torch": "sentence-transformers PyTorch fp32"},
        "latency": {"dataset": "trec-dl-2020", "description": "TREC DL", "systems": lat},
        "budgets": B.budget_answers(lat, [50, 100]),
        "startup": {"crossrank-int8": {"import_s": 0.1, "load_s": 0.3, "first_call_ms": 90.0, "first_count": 50,
                                       "rss_loaded_mb": 120.0, "peak_rss_mb": 180.0, "peak_count": 50},
                    "st-torch": {"error": "probe failed"}},
        "quality": {"trec-dl-2020": {"first-stage": {"ndcg@10": 0.4796, "mrr@10": 0.65, "queries": 54},
                                     "crossrank-fp32": {"ndcg@10": 0.62, "mrr@10": 0.8, "queries": 54},
                                     "crossrank-int8": {"ndcg@10": 0.618, "mrr@10": 0.79, "queries": 54}}},
    }
    r["gate"] = B.gate(r, {"schema_version": 1, "profiles": {}, "targets": {"speedup_floors": [
        {"system": "crossrank-int8", "peer": "st-torch", "count": 50, "min": 5.0}]}}).to_dict()
    return r


def test_markdown_tables():
    md = markdown(_results())
    assert "| crossrank int8 | 50 | 80.0 | 95.0 | 99.0 | 600 | 50,000 | 30 | 10.00× |" in md
    # the budget answer: p95 95 ms at 50 fits 100 ms; 50 ms fits 10 measured, ≈24 read off the curve (10 + 25·40/70)
    assert "| crossrank int8 | 10 (≈24) | 50 |" in md
    assert "| sentence-transformers PyTorch fp32 | none | none |" in md
    # the int8 drop next to its speedup, in one row
    assert "| crossrank int8 | 0.6180 / 0.7900 | 99.68% | 10.00× |" in md
    assert "| first-stage | 0.4796 / 0.6500 | – | – |" in md
    assert "error: probe failed" in md
    assert "**PASSED**" in md and "usable cores" in md


def test_write_outputs(tmp_path):
    r = _results()
    paths = write_outputs(r, tmp_path / "out")
    assert set(paths) == {"table", "json", "plot"}
    back = json.loads(paths["json"].read_text())
    assert back["latency"]["systems"]["crossrank-int8"]["50"]["p50_ms"] == 80.0
    assert back["machine"]["onnxruntime"] and back["machine"]["cpu"]
    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert paths["table"].read_text().startswith("## crossrank benchmark")


def test_machine_description():
    m = describe_machine()
    for key in ("cpu", "arch", "logical_cores", "usable_cores", "isa", "os", "python", "onnxruntime",
                "onnxruntime_providers", "versions"):
        assert key in m, key
    assert "CPUExecutionProvider" in m["onnxruntime_providers"]
    assert m["usable_cores"] >= 1
    assert isa_summary({"isa": ["avx", "avx2", "avx512f"]}) == "avx512f"
    assert isa_summary({"isa": ["avx", "avx2"]}) == "avx2"
    assert isa_summary({"isa": []}) == "generic"
