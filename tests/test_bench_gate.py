"""Budgets logic and the regression gate, on synthetic results (the real-model gate test is
test_bench_e2e.py)."""
from __future__ import annotations

import json
import time

import pytest

from crossrank.bench import budgets as B
from crossrank.bench.latency import LatencyPlan, measure_latency, speedups, summarize
from crossrank.bench.systems import System
from crossrank.errors import BenchmarkError, RegressionError

MACHINE = {"arch": "x86_64", "usable_cores": 2, "isa": ["avx", "avx2", "fma"], "cpu": "Test CPU"}


def _lat(p50: float, p95: float | None = None) -> dict:
    return {"p50_ms": p50, "p95_ms": p95 if p95 is not None else p50 * 1.2, "n": 10}


def results(int8=(20.0, 60.0, 110.0), torch=(150.0, 600.0, 1200.0), ndcg=0.62, fp32_ndcg=0.621) -> dict:
    counts = ("10", "50", "100")
    return {
        "machine": MACHINE,
        "settings": {"rounds": 10, "smoke": False},
        "latency": {"dataset": "trec-dl-2020", "systems": {
            "crossrank-int8": {c: _lat(v) for c, v in zip(counts, int8)},
            "st-torch": {c: _lat(v) for c, v in zip(counts, torch)},
        }},
        "quality": {"trec-dl-2020": {"crossrank-int8": {"ndcg@10": ndcg}, "crossrank-fp32": {"ndcg@10": fp32_ndcg}}},
    }


BUDGETS = {
    "schema_version": 1,
    "tolerances": {"ratio": 0.2, "median": 0.5, "ndcg": 0.005},
    "targets": {
        "speedup_floors": [{"system": "crossrank-int8", "peer": "st-torch", "count": 50, "min": 5.0},
                           {"system": "crossrank-int8", "peer": "*", "count": 10, "min": 1.0}],
        "retention_floors": [{"system": "crossrank-int8", "baseline": ["crossrank-fp32", "st-torch"],
                              "dataset": "trec-dl-2020", "min": 0.995}],
    },
    "profiles": {},
}


def budgets_with_profile(base_results: dict, name: str = "test-2core-avx2") -> dict:
    return B.merge_profile(BUDGETS, name, B.profile_from_results(base_results))


# -- budgets ---------------------------------------------------------------------------------------
def test_budget_answers_measured_and_interpolated():
    lat = {"a": {"1": _lat(5, 5), "10": _lat(20, 30), "50": _lat(60, 90), "100": _lat(120, 150)}}
    ans = B.budget_answers(lat, [25, 100, 200, 4])
    assert ans["a"]["100"] == {"measured": 50, "interpolated": 58}  # 50 + (100-90)*(100-50)/(150-90)
    assert ans["a"]["200"] == {"measured": 100, "interpolated": 100}  # never beyond the largest measured count
    assert ans["a"]["4"] == {"measured": None, "interpolated": None}
    assert ans["a"]["25"]["measured"] == 1


def test_budget_answer_is_conservative_on_a_noisy_curve():
    # 50 candidates happened to be slow: 100 fits on its own, but the curve below it does not.
    lat = {"a": {"10": _lat(20, 30), "50": _lat(90, 130), "100": _lat(80, 95)}}
    assert B.budget_answers(lat, [100])["a"]["100"]["measured"] == 10


# -- tolerances and profiles -----------------------------------------------------------------------
def test_parse_tolerances():
    assert B.parse_tolerances(None) == B.DEFAULT_TOLERANCES
    assert B.parse_tolerances("0.3") == {**B.DEFAULT_TOLERANCES, "ratio": 0.3, "median": 0.3}
    assert B.parse_tolerances("ndcg=0.01,ratio=0.1")["ndcg"] == 0.01
    with pytest.raises(BenchmarkError, match="unknown tolerance 'speed'"):
        B.parse_tolerances("speed=0.1")
    with pytest.raises(BenchmarkError, match="cannot read"):
        B.parse_tolerances("ratio=fast")
    with pytest.raises(BenchmarkError, match=">= 0"):
        B.parse_tolerances("-1")


def test_profile_selection_by_machine():
    b = budgets_with_profile(results())
    assert B.select_profile(b, MACHINE)[0] == "test-2core-avx2"
    other = {**MACHINE, "usable_cores": 16}
    assert B.select_profile(b, other) == (None, None)
    assert B.select_profile(b, {**MACHINE, "isa": ["avx2", "avx512f"]}) == (None, None)
    assert B.select_profile(b, other, "test-2core-avx2")[0] == "test-2core-avx2"  # named explicitly
    with pytest.raises(BenchmarkError, match="no profile 'nope'.*test-2core-avx2"):
        B.select_profile(b, MACHINE, "nope")


def test_committed_budgets_file_is_valid():
    b = B.load_budgets()
    # No hardware profile is committed yet: the only runs so far were on a shared, contended machine
    # (see the benchmarks issue). Every profile that is committed must be complete.
    for name, prof in b["profiles"].items():
        assert set(prof["match"]) >= {"arch", "usable_cores", "isa"}, name
        assert prof["medians_ms"]["crossrank-int8"]["50"] > 0, name
    floors = {(f["system"], f["peer"], f["count"]): f["min"] for f in b["targets"]["speedup_floors"]}
    assert floors[("crossrank-int8", "st-torch", 50)] == 5.0
    assert floors[("crossrank-int8", "st-onnx-int8", 50)] == 2.0
    # the runtime issue's speed targets are goals (reported); "ahead of every peer" gates
    goals = {(f["system"], f["peer"], f["count"]) for f in b["targets"]["speedup_floors"] if f.get("gate") is False}
    assert goals == {("crossrank-int8", "st-torch", 50), ("crossrank-int8", "st-onnx-int8", 50)}
    assert all(floors[("crossrank-int8", "*", c)] > 1.0 for c in (10, 100))
    assert set(b["tolerances"]) == set(B.DEFAULT_TOLERANCES)


def test_load_budgets_rejects_bad_files(tmp_path):
    p = tmp_path / "b.json"
    p.write_text("{")
    with pytest.raises(BenchmarkError, match="cannot read budgets file"):
        B.load_budgets(p)
    p.write_text(json.dumps({"schema_version": 2, "profiles": {}}))
    with pytest.raises(BenchmarkError, match="schema_version 1"):
        B.load_budgets(p)


# -- the gate --------------------------------------------------------------------------------------
def test_gate_passes_on_the_recorded_run():
    r = results()
    g = B.gate(r, budgets_with_profile(r))
    assert g.passed, g.report()
    kinds = {c.kind for c in g.ran}
    assert kinds == {"floor", "ratio", "median", "ndcg"}
    g.raise_on_failure()


def test_gate_fails_when_crossrank_gets_slower():
    base = results()
    slow = results(int8=(30.0, 130.0, 220.0))  # ~2x slower; PyTorch unchanged
    g = B.gate(slow, budgets_with_profile(base))
    failed = {(c.kind, c.name) for c in g.failures}
    assert ("ratio", "crossrank-int8 vs st-torch @50 speedup") in failed
    assert ("median", "crossrank-int8 @50 p50 ms") in failed
    assert ("floor", "crossrank-int8 vs st-torch @50 speedup") in failed  # 5x < target
    with pytest.raises(RegressionError, match="gate checks failed"):
        g.raise_on_failure()


def test_a_goal_is_reported_met_or_missed_but_never_fails_the_gate():
    budgets = json.loads(json.dumps(BUDGETS))
    budgets["targets"]["speedup_floors"][0]["gate"] = False  # 5x PyTorch @50 becomes a goal
    r = results(int8=(20.0, 200.0, 400.0))  # 3x PyTorch @50: misses the goal, still ahead
    g = B.gate(r, budgets)
    (goal,) = [c for c in g.checks if c.kind == "goal"]
    assert goal.status == "missed" and goal.measured == pytest.approx(3.0) and goal.limit == 5.0
    assert g.passed and not g.failures and "missed" in g.report()
    g.raise_on_failure()
    (met,) = [c for c in B.gate(results(), budgets).checks if c.kind == "goal"]  # 600/60 = 10x
    assert met.status == "met"
    slower = results(int8=(200.0, 200.0, 400.0))  # behind PyTorch at 10: the gating floor still fails
    assert {(c.kind, c.name) for c in B.gate(slower, budgets).failures} == {("floor", "crossrank-int8 vs st-torch @10 speedup")}


def test_ratio_check_survives_a_uniformly_slower_machine():
    # Everything 1.8x slower (a loaded or smaller machine): ratios hold, only medians move.
    base = results()
    scaled = results(int8=(36.0, 108.0, 198.0), torch=(270.0, 1080.0, 2160.0))
    g = B.gate(scaled, budgets_with_profile(base), tolerances={"median": 1.0})
    assert g.passed, g.report()
    g2 = B.gate(scaled, budgets_with_profile(base))
    assert {c.kind for c in g2.failures} == {"median"}


def test_gate_quality_checks():
    base = results()
    worse = results(ndcg=0.60)
    g = B.gate(worse, budgets_with_profile(base))
    failed = {(c.kind, c.name) for c in g.failures}
    assert ("ndcg", "crossrank-int8 nDCG@10 trec-dl-2020") in failed
    assert ("floor", "crossrank-int8/crossrank-fp32 nDCG@10 trec-dl-2020") in failed


def test_retention_baseline_falls_back_to_the_pytorch_reference():
    r = results()
    del r["quality"]["trec-dl-2020"]["crossrank-fp32"]  # default runs score int8 + PyTorch only
    r["quality"]["trec-dl-2020"]["st-torch"] = {"ndcg@10": 0.64}
    g = B.gate(r, BUDGETS)
    (check,) = [c for c in g.checks if "nDCG" in c.name]
    assert check.name == "crossrank-int8/st-torch nDCG@10 trec-dl-2020" and check.status == "FAIL"
    assert check.measured == pytest.approx(0.62 / 0.64)
    r["quality"]["trec-dl-2020"]["st-torch"] = {"ndcg@10": 0.621}
    assert B.gate(r, BUDGETS).passed


def test_unmeasured_checks_are_skipped_not_passed():
    base = results()
    no_peers = results()
    del no_peers["latency"]["systems"]["st-torch"]
    no_peers["quality"] = {}
    g = B.gate(no_peers, budgets_with_profile(base))
    skipped = [c for c in g.checks if c.status == "skipped"]
    assert any(c.kind == "ratio" for c in skipped) and any(c.kind == "floor" for c in skipped)
    assert all(c.kind == "median" for c in g.ran)
    # with neither peers nor a matching profile nothing can be checked: an error, not a pass
    g2 = B.gate(no_peers, BUDGETS)
    assert not g2.passed
    with pytest.raises(BenchmarkError, match="nothing to check"):
        g2.raise_on_failure()


def test_gate_without_profile_still_checks_targets():
    g = B.gate(results(), BUDGETS)
    assert g.profile is None and g.passed
    assert {c.kind for c in g.ran} == {"floor"}
    assert any("no hardware profile" in n for n in g.notes)


def test_gate_report_and_dict():
    g = B.gate(results(int8=(20.0, 200.0, 110.0)), budgets_with_profile(results()))
    text = g.report()
    assert "FAIL" in text and "crossrank-int8 @50 p50 ms" in text
    d = g.to_dict()
    assert d["passed"] is False and len(d["checks"]) == len(g.checks)
    json.dumps(d)


# -- latency measurement mechanics, with fake systems ----------------------------------------------
def _fake(name: str, per_doc_s: float, log: list) -> System:
    def rerank(q, docs):
        log.append((name, q))
        time.sleep(per_doc_s * len(docs))

    return System(name=name, kind="crossrank" if name.startswith("crossrank-") else "peer", label=name,
                  rerank=rerank, score=lambda q, d: None, load_s=0.0)


def test_measure_latency_interleaves_and_caps_rounds():
    calls: list = []
    fast, slow = _fake("crossrank-x", 0.0002, calls), _fake("st-y", 0.002, calls)
    reqs = {c: [(f"q{i}", ["d"] * c) for i in range(6)] for c in (2, 10)}
    plan = LatencyPlan(counts=(2, 10), rounds=4, min_rounds=2, warmup=1, max_seconds=0.025)
    res = measure_latency([fast, slow], reqs, plan, tokens={c: [5 * c] * 6 for c in reqs})
    # slow peer: 20 ms per call at 10 candidates -> stops after min_rounds once past 25 ms
    assert res["st-y"]["10"]["n"] == 2
    assert res["crossrank-x"]["10"]["n"] == 4
    assert res["st-y"]["10"]["p50_ms"] > 5 * res["crossrank-x"]["10"]["p50_ms"]
    # warm-up then every round on the same request for both systems, order rotated per round
    timed = [c for c in calls if c[1] != "q0"]
    assert timed[:4] == [("crossrank-x", "q1"), ("st-y", "q1"), ("st-y", "q2"), ("crossrank-x", "q2")]
    assert res["crossrank-x"]["2"]["tokens_per_s"] == pytest.approx(10 * res["crossrank-x"]["2"]["pairs_per_s"] / 2)
    sp = speedups(res)
    assert sp["crossrank-x"]["st-y"]["10"] > 5


def test_measure_latency_counts_for_restricts_systems():
    calls: list = []
    a, b = _fake("crossrank-a", 0, calls), _fake("st-b", 0, calls)
    reqs = {c: [("q", ["d"] * c)] * 3 for c in (1, 5)}
    res = measure_latency([a, b], reqs, LatencyPlan(counts=(1, 5), rounds=2, min_rounds=1, warmup=0),
                          counts_for=lambda s: (1,) if s.name == "st-b" else (1, 5))
    assert set(res["st-b"]) == {"1"} and set(res["crossrank-a"]) == {"1", "5"}


def test_summarize_percentiles():
    s = summarize([0.001 * i for i in range(1, 101)], pairs=10, tokens=[100] * 100)
    assert s["n"] == 100
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(100.0)
    assert s["pairs_per_s"] == pytest.approx(10 * 100 / 5.05)
    with pytest.raises(BenchmarkError):
        summarize([], pairs=1)
    with pytest.raises(BenchmarkError):
        LatencyPlan(counts=(0, 10))
