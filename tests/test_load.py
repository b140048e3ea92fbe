"""The service load generator (``crossrank.bench.load``).

Unit tests of its pieces (request sequence, Poisson schedule, statistics, summary, outputs) and one
end-to-end smoke run: the hand-written FastAPI + sentence-transformers peer serving a tiny random
cross-encoder as a real subprocess on 127.0.0.1, loaded over real HTTP, bounded in count and time.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossrank.bench import load as L
from crossrank.errors import BenchmarkError


def test_requests_are_seeded_real_and_sized() -> None:
    a = L.build_requests(12, "10-100", seed=3)
    b = L.build_requests(12, "10-100", seed=3)
    assert a == b  # the same sequence for every system
    assert all(10 <= len(d) <= 100 for _, d in a)
    assert len({len(d) for _, d in a}) > 1  # mixed sizes
    assert L.build_requests(12, "10-100", seed=4) != a
    fixed = L.build_requests(5, "50")
    assert [len(d) for _, d in fixed] == [50] * 5
    assert all(q and all(isinstance(x, str) and x for x in d) for q, d in fixed)
    assert len({q for q, _ in fixed}) == 5  # consecutive real queries
    with pytest.raises(BenchmarkError):
        L.parse_sizes("100-10")
    with pytest.raises(BenchmarkError):
        L.parse_sizes("many")


def test_poisson_schedule_is_seeded_and_bounded() -> None:
    t = L.poisson_schedule(4.0, 2000, 1e9, seed=0)
    assert t == L.poisson_schedule(4.0, 2000, 1e9, seed=0)
    assert len(t) == 2000 and t[0] == 0.0 and all(b >= a for a, b in zip(t, t[1:]))
    rate = (len(t) - 1) / t[-1]
    assert 3.6 < rate < 4.4  # mean gap 1/rate
    assert max(L.poisson_schedule(4.0, 2000, 5.0, seed=0)) <= 5.0  # the time limit bounds the sends
    assert len(L.poisson_schedule(4.0, 7, 1e9, seed=0)) == 7  # the count bounds them too


def _sample(sched: float, end: float, ok: bool = True, status: int = 200, pairs: int = 10) -> L.Sample:
    return L.Sample(sched, sched, end, status, ok, pairs, None if ok else "x")


def test_point_stats() -> None:
    samples = [_sample(i * 0.5, i * 0.5 + 0.1) for i in range(10)] + [_sample(5.0, 5.2, ok=False, status=429)]
    d = L.point_stats(samples, 0.0, offered=2.0, cpu_s=1.0)
    assert d["issued"] == 11 and d["ok"] == 10 and d["errors"] == 1 and d["rejected_429"] == 1
    assert d["p50_ms"] == pytest.approx(100.0) and d["p99_ms"] == pytest.approx(100.0)
    assert d["duration_s"] == pytest.approx(5.2)
    assert d["throughput_rps"] == pytest.approx(10 / 5.2)
    assert d["pairs_per_s"] == pytest.approx(100 / 5.2)
    assert d["server_cpu_ms_per_request"] == pytest.approx(100.0)


def _point(rate: float, p99: float, errors: int = 0) -> dict:
    return {"offered_rps": rate, "p50_ms": p99 / 2, "p99_ms": p99, "errors": errors, "rejected_429": 0,
            "throughput_rps": rate * 0.98, "pairs_per_s": rate * 49, "issued": 10, "ok": 10 - errors}


def test_summary_max_sustainable_and_low_load() -> None:
    results = {
        "settings": {"slo_ms": 1000.0},
        "systems": {
            "st-fastapi": {"open": [_point(0.5, 800), _point(1, 3000), {"offered_rps": 2, "skipped": "saturated"}],
                           "closed": [{"clients": 1, "p50_ms": 400.0, "throughput_rps": 2.4}]},
            "crossrank": {"open": [_point(0.5, 300), _point(1, 500), _point(2, 900, errors=1), _point(4, 950)],
                          "closed": []},
            "infinity": {"skipped": "not installed"},
        },
    }
    s = L.summarize(results)
    assert s["st-fastapi"]["max_sustainable_offered_rps"] == 0.5
    assert s["st-fastapi"]["st_fastapi_saturation_rps"] == 1
    assert s["st-fastapi"]["closed_1_client_p50_ms"] == 400.0
    assert s["crossrank"]["max_sustainable_offered_rps"] == 4  # the 2 req/s point had an error, 4 did not
    assert s["crossrank"]["low_load_p50_ms"] == 150.0
    assert s["crossrank"]["p99_at_st_fastapi_saturation_ms"] == 500
    assert s["crossrank"]["throughput_vs_st-fastapi"] == pytest.approx(8.0)
    assert "note" in s["crossrank"]  # every offered rate sustained: the maximum is at least this
    assert s["st-fastapi"]["sustainable_by_slo_ms"]["1000"]["offered_rps"] == 0.5
    assert s["st-fastapi"]["sustainable_by_slo_ms"]["5000"]["offered_rps"] == 1  # comparisons at equal p99
    assert s["infinity"] == {"skipped": "not installed"}
    results["settings"]["slo_ms"] = 5000.0
    assert L.summarize(results)["st-fastapi"]["max_sustainable_offered_rps"] == 1


def test_systems_that_cannot_start_are_skipped_with_the_reason(tmp_path: Path) -> None:
    s = L.LoadSettings(systems=("infinity",), hf_model=str(tmp_path), infinity_venv=str(tmp_path / "none"))
    with pytest.raises(BenchmarkError, match="infinity_venv.sh"):
        L.plan_system("infinity", s, 1234)
    with pytest.raises(BenchmarkError, match="Hugging Face"):
        L.plan_system("st-fastapi", s, 1234)
    with pytest.raises(BenchmarkError, match="model folder"):
        L.plan_system("crossrank", L.LoadSettings(model_dir=str(tmp_path / "none")), 1234)
    with pytest.raises(BenchmarkError, match="unknown system"):
        L.plan_system("tei", s, 1234)


def test_launch_commands_stay_on_loopback(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    s = L.LoadSettings(hf_model=str(tmp_path), model_dir=str(tmp_path), threads=2)
    st = L.plan_system("st-fastapi", s, 4321)
    assert st.argv[st.argv.index("--host") + 1] == "127.0.0.1" and st.argv[st.argv.index("--port") + 1] == "4321"
    assert st.argv[st.argv.index("--threads") + 1] == "2" and st.env["OMP_NUM_THREADS"] == "2"
    try:
        cr = L.plan_system("crossrank-nobatch", s, 4322)
    except BenchmarkError as err:  # before crossrank serve is installed
        assert "crossrank.serve" in str(err)
    else:
        assert cr.argv[1:4] == ["-m", "crossrank.cli", "serve"]
        assert cr.argv[cr.argv.index("--batching") + 1] == "off" and cr.argv[cr.argv.index("--host") + 1] == "127.0.0.1"
    assert L.free_port() > 0


def test_cli_help() -> None:
    r = subprocess.run([sys.executable, "-m", "crossrank.bench.load", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--smoke" in r.stdout and "--rates" in r.stdout


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model("bert", tmp_path_factory.mktemp("load-tiny") / "hf", num_labels=1, activation="sigmoid")


def test_smoke_run_against_the_st_fastapi_peer(tiny_hf: Path, tmp_path: Path) -> None:
    """Real servers, real HTTP on 127.0.0.1: every request answered, sane figures, outputs written."""
    s = L.smoke_settings(systems=("st-fastapi",), hf_model=str(tiny_hf), inprocess=False, threads=1)
    out = tmp_path / "load"
    results = L.run_load(s, out, log=lambda m: None)
    paths = L.write_outputs(results, out)
    assert {p.name for p in paths.values()} == {"results.json", "table.md", "load.png"}
    e = json.loads((out / "results.json").read_text())["systems"]["st-fastapi"]
    assert "skipped" not in e and "crashed" not in e, e
    assert e["seed_example"]["scores"] and None not in e["seed_example"]["scores"]
    assert [p["offered_rps"] for p in e["open"]] == [1.0, 2.0]
    assert [p["clients"] for p in e["closed"]] == [1, 4]
    for p in e["open"] + e["closed"]:
        assert p["issued"] == s.requests and p["ok"] == p["issued"] and p["errors"] == 0, p
        assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] <= p["max_ms"] < s.timeout * 1000
        assert p["throughput_rps"] == pytest.approx(p["ok"] / p["duration_s"], rel=1e-3)
        assert p["pairs_per_s"] == pytest.approx(p["pairs"] / p["duration_s"], rel=1e-3)
        assert 5 * p["ok"] <= p["pairs"] <= 15 * p["ok"]  # smoke sizes 5-15
    for p in e["open"]:
        # Poisson sends at the offered rate: the 10 requests span about 10/rate seconds, and
        # the achieved rate cannot exceed what was sent
        assert p["duration_s"] > 0.5 * (s.requests - 1) / p["offered_rps"]
    table = (out / "table.md").read_text()
    assert "FastAPI + sentence-transformers" in table and "Open loop" in table and "Closed loop" in table
    assert not list(out.glob("logs/*.log")) or (out / "logs" / "st-fastapi.log").is_file()


def test_smoke_run_against_crossrank_serve_with_and_without_batching(tiny_bert_folder: Path, tmp_path: Path) -> None:
    """`crossrank serve` as a real subprocess (batching on and off) next to the in-process reference."""
    s = L.smoke_settings(systems=("crossrank", "crossrank-nobatch"), model_dir=str(tiny_bert_folder), inprocess=True, threads=1)
    out = tmp_path / "load"
    results = L.run_load(s, out, log=lambda m: None)
    L.write_outputs(results, out)
    systems = json.loads((out / "results.json").read_text())["systems"]
    for name in ("crossrank", "crossrank-nobatch"):
        e = systems[name]
        assert "skipped" not in e and "crashed" not in e, e
        for p in e["open"] + e["closed"]:
            assert p["issued"] == s.requests and p["ok"] == p["issued"] and p["errors"] == 0, (name, p)
            assert 0 < p["p50_ms"] <= p["p99_ms"] < s.timeout * 1000
    # The service's seed-example scores are the library's.
    from crossrank import Reranker

    rr = Reranker.load(tiny_bert_folder)
    seed = systems["crossrank"]["seed_example"]  # rounded to 4 decimals by the probe
    assert seed["scores"] == pytest.approx([float(x) for x in rr.score(L.SEED_QUERY, L.SEED_DOCS)], abs=6e-5)
