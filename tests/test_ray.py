"""crossrank on a real local Ray instance (no mocks): the Ray Serve deployment over HTTP on
loopback, and the Ray Data rescoring job. Skipped, with the reason, where Ray is not installed
(``pip install "crossrank[ray]"``; the ``dev`` extra includes it, so CI runs these)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import random
import socket
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='crossrank.ray needs Ray: pip install "crossrank[ray]"')
pytest.importorskip("ray.serve", reason='crossrank.ray.serve needs Ray Serve: pip install "crossrank[ray]"')
pytest.importorskip("ray.data", reason='crossrank.ray.rescore needs Ray Data: pip install "crossrank[ray]"')
pa = pytest.importorskip("pyarrow", reason='crossrank.ray.rescore needs pyarrow: pip install "crossrank[ray]"')
httpx = pytest.importorskip("httpx", reason="the HTTP tests need httpx (dev extra)")
import pyarrow.parquet as pq  # noqa: E402
from ray import serve  # noqa: E402

from crossrank import Reranker  # noqa: E402
from crossrank.ray import rescore  # noqa: E402
from crossrank.ray.serve import RayServeArgs, app, health_problem  # noqa: E402

WORDS = ("alpha beta gamma delta export data csv json settings page billing invoice account portal import "
         "format report quarterly revenue weather forecast python error stack trace").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A private local Ray instance: 4 logical CPUs on this machine (two replicas or two actors of
    one CPU each, and room for Ray's own tasks), a small object store, no dashboard."""
    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False,
             namespace="crossrank-tests")
    yield
    ray.shutdown()
    mp.undo()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Ray Serve ----------------------------------------------------------------------------------------
@pytest.fixture(scope="class")
def served(local_ray, tiny_bert_folder):
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app({"model": str(tiny_bert_folder), "num_replicas": "2", "max_ongoing_requests": "16"}),
              name="crossrank", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def test_serve_args_are_validated_before_deploying(tiny_bert_folder):
    a = RayServeArgs.model_validate({"model": str(tiny_bert_folder), "num_replicas": "4", "threads": "2"})
    assert (a.num_replicas, a.threads, a.autoscaling_config()) == (4, 2, None)
    auto = RayServeArgs.model_validate({"model": "m", "min_replicas": "1", "max_replicas": "6", "target_ongoing_requests": "3"})
    assert auto.autoscaling_config() == {"min_replicas": 1, "max_replicas": 6, "target_ongoing_requests": 3.0}
    assert RayServeArgs.model_validate({"model": "m", "num_replicas": "auto"}).autoscaling_config()["max_replicas"] == 8
    with pytest.raises(ValueError, match="not both"):
        RayServeArgs.model_validate({"model": "m", "num_replicas": 2, "max_replicas": 4})
    with pytest.raises(ValueError, match="must be >= min_replicas"):
        RayServeArgs.model_validate({"model": "m", "min_replicas": 4, "max_replicas": 2})
    with pytest.raises(ValueError, match="top_k"):  # a misspelt argument is refused, not ignored
        RayServeArgs.model_validate({"model": "m", "top_k": 3})
    with pytest.raises(Exception, match="does not exist"):
        app({"model": str(tiny_bert_folder / "nowhere")})


def test_the_kuberay_manifest_holds_a_valid_serve_config():
    yaml = pytest.importorskip("yaml", reason="PyYAML (a Ray dependency) reads the manifest")
    from ray.serve.schema import ServeDeploySchema

    import crossrank.ray

    manifest = yaml.safe_load((Path(crossrank.ray.__file__).parent / "deploy" / "rayservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    pins = (Path(__file__).resolve().parents[1] / ".ci" / "constraints.txt").read_text().splitlines()
    assert f"ray=={manifest['spec']['rayClusterConfig']['rayVersion']}" in pins  # the version CI proves
    config = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    [application] = config.applications
    assert application.import_path == "crossrank.ray.serve:app"
    args = RayServeArgs.model_validate(application.args)
    assert args.autoscaling_config() == {"min_replicas": 2, "max_replicas": 16, "target_ongoing_requests": 4.0}


def test_health_problem_follows_the_scheduler_state(tiny_bert_folder):
    from types import SimpleNamespace

    from crossrank.scheduler import Scheduler

    assert "not started" in health_problem(None, None, 60)
    sched = Scheduler(Reranker.load(tiny_bert_folder))
    state = SimpleNamespace(scheduler=sched)
    assert health_problem(state, None, 60) is None
    sched.close()
    assert "worker thread" in health_problem(state, None, 60)


class TestServe:
    """One deployment for these tests (class scope), shut down before the Ray Data tests run."""

    def test_two_replicas_serve_concurrent_http_requests_with_the_library_scores(self, served, tiny_bert_folder):
        rr = Reranker.load(tiny_bert_folder)
        rng = random.Random(7)
        requests = [(_text(rng, rng.randint(1, 6)), [_text(rng, rng.randint(1, 80)) for _ in range(rng.randint(1, 40))])
                    for _ in range(32)]

        def call(i: int):
            q, docs = requests[i]
            route = ("/v1/rerank", "/v2/rerank", "/rerank")[i % 3]
            body = {"query": q, "texts": docs, "truncate": True} if route == "/rerank" else {"query": q, "documents": docs}
            r = httpx.post(served + route, json=body, timeout=60)
            return route, r

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(call, range(len(requests))))
        for (q, docs), (route, r) in zip(requests, answers):
            assert r.status_code == 200, r.text
            want = rr.score(q, docs)
            if route == "/rerank":
                got = {x["index"]: x["score"] for x in r.json()}
            else:
                body = r.json()
                assert body["partial"] is False and body["unscored"] == 0
                got = {x["index"]: x["relevance_score"] for x in body["results"]}
            assert sorted(got) == list(range(len(docs)))
            # Same model, same batch-invariant variant: the same float32 scores, bit for bit.
            assert [np.float32(got[i]) for i in range(len(docs))] == list(want)

        status = serve.status().applications["crossrank"].deployments["crossrank"]
        assert status.status == "HEALTHY" and status.replica_states.get("RUNNING") == 2


    def test_the_crossrank_routes_errors_and_metrics_are_there(self, served, tiny_bert_folder):
        assert httpx.get(served + "/health").json() == {"status": "ok"}
        assert httpx.get(served + "/ready").json() == {"status": "ready"}
        info = httpx.get(served + "/info").json()
        assert info["model"] == "crossrank" and info["variant"] == "int8" and info["batching"] is True
        assert info["model_dir"] == str(Path(tiny_bert_folder).resolve())
        bad = httpx.post(served + "/v1/rerank", json={"query": "q", "documents": ["d"], "top_k": 2})
        assert bad.status_code == 422 and bad.json()["field"] == "top_k"
        wrong = httpx.post(served + "/v1/rerank", json={"query": "q", "documents": ["d"], "model": "other"})
        assert wrong.status_code == 422 and wrong.json()["error_type"] == "model_not_found"
        assert "/v1/rerank" in httpx.get(served + "/openapi.json").json()["paths"]
        # /metrics is the answering replica's crossrank registry; both replicas scored batches above.
        text = httpx.get(served + "/metrics").text
        assert "crossrank_batch_pairs_count" in text and "crossrank_requests_total" in text
        # The replica health check runs the state check (and passes) when called through a handle.
        handle = serve.get_deployment_handle("crossrank", app_name="crossrank")
        assert handle.check_health.remote().result(timeout_s=30) is None


# -- Ray Data ----------------------------------------------------------------------------------------
def _write_pairs(folder: Path) -> dict[tuple[str, int], tuple[object, str, str]]:
    """Three JSONL files (with blank lines, some rows without id) and one Parquet file (int ids,
    row groups of 250): 3,000 pairs; returns (file, row) -> (id, query, document)."""
    rng = random.Random(3)
    folder.mkdir()
    rows: dict[tuple[str, int], tuple[object, str, str]] = {}
    for f in range(3):
        name = f"pairs-{f}.jsonl"
        with open(folder / name, "w", encoding="utf-8") as fh:
            line = 0
            for i in range(800):
                q, d = _text(rng, rng.randint(1, 8)), _text(rng, rng.randint(1, 120))
                obj = {"query": q, "document": d}
                if i % 4:
                    obj["id"] = f"{f}-{i}"
                fh.write(json.dumps(obj) + "\n")
                rows[(name, line)] = (obj.get("id"), q, d)
                line += 1
                if i % 300 == 17:
                    fh.write("\n")
                    line += 1
    table = [{"id": 10_000 + i, "query": _text(rng, 4), "document": _text(rng, rng.randint(1, 60))} for i in range(600)]
    pq.write_table(pa.Table.from_pylist(table), folder / "pairs-3.parquet", row_group_size=250)
    for i, r in enumerate(table):
        rows[("pairs-3.parquet", i)] = (r["id"], r["query"], r["document"])
    return rows


def _read_outputs(out: Path) -> dict[tuple[str, int], tuple[object, float, bool]]:
    got: dict[tuple[str, int], tuple[object, float, bool]] = {}
    for p in sorted(out.glob("*.scored.*")):
        source = p.name.rsplit(".", 3)[0]  # "<input name>.<shard>.scored.<ext>"
        recs = [json.loads(x) for x in p.read_text().splitlines()] if p.suffix == ".jsonl" else pq.read_table(p).to_pylist()
        for rec in recs:
            key = (source, rec["row"])
            assert key not in got, f"{key} scored twice"
            got[key] = (rec["id"], rec["score"], rec["truncated"])
    return got


def test_rescore_job_scores_every_pair_once_with_the_library_score_and_resumes(local_ray, tiny_bert_folder, tmp_path, capsys):
    rows = _write_pairs(tmp_path / "pairs")
    out = tmp_path / "scored"
    summary = rescore.run([str(tmp_path / "pairs" / "*")], model=str(tiny_bert_folder), out=str(out), actors=2,
                          shard_pairs=500, chunk_pairs=256)
    assert summary["failed"] == [] and summary["pairs"] == len(rows) == 3000
    assert summary["shards"] == summary["scored_shards"] == 3 * 2 + 2  # 800+ lines in 500-line shards; 600 rows in 500+ row groups
    assert summary["pairs_per_s"] > 0 and summary["steady_pairs_per_s"] >= summary["pairs_per_s"]
    err = capsys.readouterr().err
    assert "[8/8]" in err and "pairs/s" in err  # progress, one line per finished shard

    got = _read_outputs(out)
    assert set(got) == set(rows)  # every pair once, none invented
    keys = sorted(rows)
    want = Reranker.load(tiny_bert_folder).score_pairs([rows[k][1:] for k in keys])
    assert [np.float32(got[k][1]) for k in keys] == list(want)  # the library's scores, bit for bit
    assert all(got[k][0] == rows[k][0] for k in keys)  # ids as given (None where absent; ints stay ints)
    assert pq.read_table(next(out.glob("pairs-3.parquet.*.scored.parquet"))).schema.field("id").type == pa.int64()

    # A rerun skips every finished shard and writes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert rescore.main([str(tmp_path / "pairs" / "*"), "--model", str(tiny_bert_folder), "--out", str(out),
                         "--actors", "2", "--shard-pairs", "500", "--quiet"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["skipped"], again["scored_shards"], again["pairs"]) == (8, 0, 0)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    # An interrupted shard (no manifest) and an input that changed are redone, and only they.
    (out / "pairs-0.jsonl.00001.done.json").unlink()
    with open(tmp_path / "pairs" / "pairs-2.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "new", "query": "alpha", "document": "beta gamma"}) + "\n")
    rows[("pairs-2.jsonl", 803)] = ("new", "alpha", "beta gamma")
    third = rescore.run([str(tmp_path / "pairs" / "*")], model=str(tiny_bert_folder), out=str(out), actors=2,
                        shard_pairs=500, progress=False)
    assert (third["skipped"], third["scored_shards"]) == (6, 2)
    got = _read_outputs(out)
    assert set(got) == set(rows) and got[("pairs-2.jsonl", 803)][0] == "new"


def test_rescore_reports_a_bad_shard_and_finishes_the_others(local_ray, tiny_bert_folder, tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "good.jsonl").write_text("".join(json.dumps({"query": "q", "document": f"d {i}"}) + "\n" for i in range(20)))
    (folder / "bad.jsonl").write_text(json.dumps({"query": "q", "document": "d"}) + "\n" + json.dumps({"query": "q", "document": 5}) + "\n")
    summary = rescore.run([str(folder / "good.jsonl"), str(folder / "bad.jsonl")], model=str(tiny_bert_folder),
                          out=str(tmp_path / "out"), actors=2, progress=False)
    assert summary["scored_shards"] == 1 and summary["pairs"] == 20
    [failed] = summary["failed"]
    assert failed["shard"] == "bad.jsonl.00000" and "bad.jsonl:2" in failed["error"] and "'document' must be a string" in failed["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.jsonl.00000.done.json", "good.jsonl.00000.scored.jsonl"]


def test_a_shard_whose_input_changes_after_planning_is_not_recorded(tiny_bert_folder, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"query": "q", "document": f"d {i}"}) + "\n" for i in range(10)))
    [shard] = rescore.plan([src], 100)
    src.write_text("".join(json.dumps({"query": "q", "document": f"e {i}"}) + "\n" for i in range(10)))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(rescore.ShardError, match="changed while the job ran"):
        rescore.score_shard(Reranker.load(tiny_bert_folder), shard, out, "jsonl", {}, chunk_pairs=4, raw=False)
    assert list(out.iterdir()) == []  # neither output nor manifest, not even a temporary file
