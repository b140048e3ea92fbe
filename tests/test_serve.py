"""crossrank serve over real HTTP on loopback: a real uvicorn server (in a thread, or a child
process for the CLI and SIGTERM), real onnxruntime sessions, httpx and Cohere's own SDK as clients.

Nothing here mocks the server or the scheduler. Policy claims are asserted on order of completion
and on scores, not on wall time.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="crossrank[serve] is not installed")
import uvicorn  # noqa: E402

from crossrank import Reranker  # noqa: E402
from crossrank.serve import ServeConfig, create_app  # noqa: E402

QUERY = "How do I export my data?"
SEED = [
    "You can export data as CSV or JSON from the Settings page.",
    "Our platform supports multiple file formats for import operations.",
    "Billing invoices can be downloaded from the account portal.",
]
LONG = "The export feature writes every record of the account to a file in the chosen format. " * 6


class LiveServer:
    """The app on a real uvicorn server bound to 127.0.0.1 on a free port, in a thread."""

    def __init__(self, app) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.app = app

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        give_up = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > give_up or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        while httpx.get(f"{self.url}/ready").status_code != 200:  # warm-up runs with the port open
            if time.monotonic() > give_up:
                raise RuntimeError("the test server did not become ready")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    @property
    def scheduler(self):
        return self.app.state.crossrank.scheduler


def post(url: str, body, **kw) -> httpx.Response:
    # No Content-Type, as `curl -d` would send it: the service must read JSON regardless.
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url, content=data, timeout=60, **kw)


@pytest.fixture(scope="module")
def real_rr(real_model_folder):
    return Reranker.load(real_model_folder, variant="int8")


@pytest.fixture(scope="module")
def server(real_model_folder, real_rr):
    config = ServeConfig(model_dir=str(real_model_folder), max_documents=1000, max_text_chars=50_000, max_body_bytes=1_000_000)
    with LiveServer(create_app(config, reranker=real_rr)) as s:
        yield s


def _server_with(real_model_folder, rr, **changes) -> LiveServer:
    config = ServeConfig(model_dir=str(real_model_folder), warmup=False, **changes)
    return LiveServer(create_app(config, reranker=rr))


# -- what a user does -------------------------------------------------------------------------------
def test_seed_example_ranks_the_export_document_first(server, real_rr):
    r = post(f"{server.url}/v1/rerank", {"query": QUERY, "documents": SEED, "top_n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == [0, 1]
    assert all("document" not in x for x in body["results"])  # omitted, not null
    expected = real_rr.score(QUERY, SEED)
    assert body["results"][0]["relevance_score"] == pytest.approx(float(expected[0]), abs=0)
    assert body["model"] == Path(server.app.state.crossrank.config.model_dir).name
    assert body["usage"]["total_tokens"] > 0 and body["unscored"] == 0 and body["partial"] is False
    assert body["id"] and body["meta"]["billed_units"]["search_units"] == 1


def test_cohere_sdk_v2_and_v1_clients_work_unchanged(server, real_rr):
    cohere = pytest.importorskip("cohere", reason="the Cohere SDK is not installed")
    name = server.app.state.crossrank.config.model_name
    expected = real_rr.score(QUERY, SEED)
    v2 = cohere.ClientV2(api_key="unused", base_url=server.url).rerank(model=name, query=QUERY, documents=SEED, top_n=3)
    assert [r.index for r in v2.results] == [0, 1, 2]
    assert [r.relevance_score for r in v2.results] == pytest.approx([float(x) for x in expected])
    v1 = cohere.Client(api_key="unused", base_url=server.url).rerank(
        model=name, query=QUERY, documents=SEED, top_n=1, return_documents=True
    )
    assert v1.results[0].index == 0 and v1.results[0].document.text == SEED[0]


def test_jina_shape_documents_as_objects(server):
    docs = [{"text": SEED[2], "id": "c"}, {"text": SEED[0], "id": "a"}]
    r = post(f"{server.url}/v2/rerank", {"query": QUERY, "documents": docs, "return_documents": True, "model": server.app.state.crossrank.config.model_name})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == [1, 0]
    assert body["results"][0]["document"] == {"text": SEED[0]}
    assert body["meta"]["api_version"]["version"] == "2"


def test_tei_shape(server, real_rr):
    r = post(f"{server.url}/rerank", {"query": QUERY, "texts": SEED, "raw_scores": True, "return_text": True})
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert isinstance(ranks, list) and [x["index"] for x in ranks] == [0, 1, 2]
    raw = real_rr.score(QUERY, SEED, raw=True)
    assert [x["score"] for x in ranks] == pytest.approx([float(raw[i]) for i in (0, 1, 2)])
    assert ranks[0]["text"] == SEED[0]
    plain = post(f"{server.url}/rerank", {"query": QUERY, "texts": SEED}).json()
    assert all("text" not in x for x in plain)
    # TEI's default truncate=false: a pair over max_length is an error naming the text.
    long_doc = "word " * 2000
    r = post(f"{server.url}/rerank", {"query": QUERY, "texts": ["short", long_doc]})
    assert r.status_code == 422 and r.json()["field"] == "texts[1]" and "max_length" in r.json()["error"]
    assert "documents" not in r.json()["error"]
    r = post(f"{server.url}/rerank", {"query": "word " * 2000, "texts": ["short"]})
    assert r.status_code == 422 and r.json()["field"] == "query"
    r = post(f"{server.url}/rerank", {"query": QUERY, "texts": ["short", long_doc], "truncate": True})
    assert r.status_code == 200


def test_text_with_a_lone_surrogate_is_scored_and_returned_as_valid_utf8(server):
    r = post(f"{server.url}/v1/rerank", {"query": QUERY, "documents": ["export a\ud800b", SEED[0]], "return_documents": True})
    assert r.status_code == 200, r.text
    texts = {x["index"]: x["document"]["text"] for x in r.json()["results"]}
    assert texts[0] == "export a\ufffdb"
    r = post(f"{server.url}/rerank", {"query": QUERY, "texts": ["export a\ud800b"], "return_text": True})
    assert r.status_code == 200 and r.json()[0]["text"] == "export a\ufffdb"


def test_max_tokens_per_doc_cuts_documents(server, real_rr):
    doc = SEED[0] + " " + LONG
    full = post(f"{server.url}/v1/rerank", {"query": QUERY, "documents": [doc]}).json()
    cut = post(f"{server.url}/v1/rerank", {"query": QUERY, "documents": [doc], "max_tokens_per_doc": 8}).json()
    assert cut["usage"]["total_tokens"] < full["usage"]["total_tokens"]
    assert cut["results"][0]["relevance_score"] != full["results"][0]["relevance_score"]


def test_ready_is_503_until_warmed_while_health_answers(real_model_folder, real_rr):
    config = ServeConfig(model_dir=str(real_model_folder), warmup=True)
    app = create_app(config, reranker=real_rr)
    srv = LiveServer(app)
    srv.thread.start()
    try:
        while not srv.server.started:
            time.sleep(0.005)
        first = httpx.get(f"{srv.url}/ready")
        assert httpx.get(f"{srv.url}/health").status_code == 200
        assert first.status_code in (200, 503)
        if first.status_code == 503:  # caught during the warm-up (it takes a few runs)
            assert first.json()["error_type"] == "not_ready" and first.headers["retry-after"] == "1"
        give_up = time.monotonic() + 120
        while httpx.get(f"{srv.url}/ready").status_code != 200:
            assert time.monotonic() < give_up
            time.sleep(0.02)
        assert app.state.crossrank.scheduler.cost.observations >= 2  # the warm-up calibrated the cost model
    finally:
        srv.__exit__(None, None, None)


def test_health_ready_info_metrics_and_openapi(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/ready").status_code == 200
    info = httpx.get(f"{server.url}/info").json()
    assert info["variant"] == "int8" and info["max_length"] == 512 and info["limits"]["max_documents"] == 1000
    assert info["architecture"].endswith("ForSequenceClassification")
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/health", "/ready", "/info", "/metrics"} <= set(spec["paths"])
    assert "RerankRequest" in json.dumps(spec["paths"]["/v1/rerank"]["post"]["requestBody"])
    assert "query" in spec["components"]["schemas"]["RerankRequest"]["properties"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    post(f"{server.url}/v1/rerank", {"query": QUERY, "documents": SEED})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'crossrank_requests_total{route="/v1/rerank",status="200"}' in text
    for name in ("crossrank_queue_seconds_count", "crossrank_tokenize_seconds_count", "crossrank_inference_seconds_count",
                 "crossrank_batch_pairs_count", "crossrank_batch_padded_tokens_sum", "crossrank_queue_pairs",
                 "crossrank_truncated_pairs_total", "crossrank_partial_responses_total"):
        assert name in text, name


# -- errors: a JSON body naming what was wrong, never a stack trace -----------------------------------
@pytest.mark.parametrize(
    "body, status, field, words",
    [
        (b'{"query": ', 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "JSON object"),
        ({"query": 3, "documents": ["a"]}, 422, "query", "string"),
        ({"query": "q", "documents": ["a", 5]}, 422, "documents[1]", "string or an object"),
        ({"query": "q", "documents": [{"title": "x"}]}, 422, "documents[0].text", "required"),
        ({"query": "q", "documents": "a"}, 422, "documents", "list"),
        ({"query": "q", "documents": ["a"], "top_k": 2}, 422, "top_k", "unknown field"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n", "greater than or equal"),
        ({"query": "q", "documents": ["a"], "model": "other"}, 422, "model", "not served here"),
        ({"query": "q", "documents": ["a"] * 1001}, 422, "documents", "max_documents"),
        ({"query": "q", "documents": [["a"]]}, 422, "documents[0]", "string or an object"),
        ({"query": "q", "documents": ["a", "x" * 50_001]}, 422, "documents[1]", "max_text_chars"),
        ({"query": "q", "documents": ["a"], "deadline_ms": -5}, 422, "deadline_ms", "> 0"),
        ({"query": "q", "documents": ["a"], "deadline_ms": True}, 422, "deadline_ms", "not a string or boolean"),
        ({"query": "q", "documents": ["a"], "deadline_ms": "100"}, 422, "deadline_ms", "not a string or boolean"),
        (b'{"query": "q", "documents": ["a"], "deadline_ms": 1e400}', 422, "deadline_ms", "finite"),
        (b"[" * 5000 + b"]" * 5000, 400, None, "nested too deeply"),
        (b'{"query": "q", "documents": ' + b"[" * 990 + b"]" * 990 + b"}", 400, None, "nested too deeply"),
        (b'{"query": "q", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}", 400, None, "not valid JSON"),
    ],
)
def test_bad_requests_get_json_errors(server, body, status, field, words):
    r = post(f"{server.url}/v1/rerank", body)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) <= {"error", "error_type", "field"} and words in err["error"]
    assert err.get("field") == field
    assert "Traceback" not in r.text


def test_a_500_class_body_keeps_the_connection_usable(server):
    # Deep nesting used to escape as a 500 that closed the keep-alive connection under the next request.
    with httpx.Client(timeout=60) as client:
        assert client.post(f"{server.url}/v1/rerank", content=b"[" * 5000 + b"]" * 5000).status_code == 400
        assert client.post(f"{server.url}/v1/rerank", content=json.dumps({"query": QUERY, "documents": SEED})).status_code == 200


def test_compressed_bodies_are_415(server):
    import gzip

    r = httpx.post(f"{server.url}/v1/rerank", content=gzip.compress(b'{"query": "q", "documents": ["a"]}'),
                   headers={"Content-Encoding": "gzip"}, timeout=60)
    assert r.status_code == 415 and "Content-Encoding" in r.json()["error"]


def test_openapi_request_bodies_resolve(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    schemas = spec["components"]["schemas"]
    refs = []

    def walk(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    assert refs and all(r.startswith("#/components/schemas/") and r.rsplit("/", 1)[1] in schemas for r in refs), refs
    assert {"RerankRequest", "TEIRerankRequest", "DocumentObject"} <= set(schemas)


def test_client_that_disconnects_takes_its_pairs_out_of_the_queue(server):
    before = httpx.get(f"{server.url}/metrics").text
    n = 600  # many seconds of scoring: far longer than noticing the disconnect takes
    body = json.dumps({"query": QUERY, "documents": [LONG + str(i) for i in range(n)]}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    give_up = time.monotonic() + 60
    while server.scheduler.queued_requests == 0:
        assert time.monotonic() < give_up
        time.sleep(0.01)
    sock.close()
    while server.scheduler.queued_pairs:
        assert time.monotonic() < give_up, "the abandoned request stayed in the queue"
        time.sleep(0.01)
    text = httpx.get(f"{server.url}/metrics").text
    assert 'crossrank_rejected_total{reason="client_gone"} 1.0' in text

    def pairs_total(t):
        return float(next(line.split()[-1] for line in t.splitlines() if line.startswith("crossrank_pairs_total ")))

    assert pairs_total(text) - pairs_total(before) < n  # it was not scored to the end


def test_oversize_body_is_413_declared_or_streamed(server):
    big = json.dumps({"query": "q", "documents": ["x" * 1000] * 1100})
    r = post(f"{server.url}/v1/rerank", big)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]

    def chunks():  # no Content-Length: chunked transfer, counted as it arrives
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096].encode()

    r = httpx.post(f"{server.url}/v1/rerank", content=chunks(), timeout=60)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]


def test_bad_deadline_header(server):
    r = post(f"{server.url}/v1/rerank", {"query": "q", "documents": ["a"]}, headers={"X-Deadline-Ms": "soon"})
    assert r.status_code == 422 and r.json()["field"] == "X-Deadline-Ms"


def test_serve_config_refuses_what_cannot_work(real_model_folder):
    from crossrank.errors import InvalidInputError

    for bad in ({"api_key": ""}, {"api_key": "  "}, {"grace_s": float("inf")}, {"request_timeout_s": 0},
                {"max_queue_pairs": 10, "max_documents": 11}, {"port": 70000}, {"workers": 0}):
        with pytest.raises(InvalidInputError):
            ServeConfig(model_dir=str(real_model_folder), **bad)


def test_api_key_non_ascii_matches_a_utf8_header(real_model_folder, real_rr):
    with _server_with(real_model_folder, real_rr, api_key="clé") as s:
        ok = httpx.post(f"{s.url}/v1/rerank", content=json.dumps({"query": QUERY, "documents": SEED}),
                        headers=[(b"Authorization", "Bearer clé".encode("utf-8"))], timeout=60)
        assert ok.status_code == 200


def test_api_key(real_model_folder, real_rr):
    with _server_with(real_model_folder, real_rr, api_key="s3cret") as s:
        body = {"query": QUERY, "documents": SEED}
        missing = post(f"{s.url}/v1/rerank", body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert post(f"{s.url}/v1/rerank", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(f"{s.url}/rerank", {"query": QUERY, "texts": SEED}).status_code == 401
        assert httpx.get(f"{s.url}/info").status_code == 401
        assert post(f"{s.url}/v1/rerank", body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{s.url}/health").status_code == 200  # probes stay open
        assert httpx.get(f"{s.url}/ready").status_code == 200


def test_queue_full_is_429_with_retry_after(real_model_folder, real_rr):
    with _server_with(real_model_folder, real_rr, max_queue_pairs=100, max_documents=100) as s:

        async def main():
            async with httpx.AsyncClient(timeout=120) as client:
                first = asyncio.create_task(client.post(f"{s.url}/v1/rerank", content=json.dumps({"query": QUERY, "documents": [LONG] * 90})))
                while s.scheduler.queued_pairs == 0:
                    await asyncio.sleep(0.002)
                second = await client.post(f"{s.url}/v1/rerank", content=json.dumps({"query": QUERY, "documents": SEED * 5}))
                return await first, second

        first, second = asyncio.run(main())
        assert first.status_code == 200
        assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
        assert second.json()["error_type"] == "overloaded"
        assert 'crossrank_rejected_total{reason="queue_full"} 1.0' in httpx.get(f"{s.url}/metrics").text


def test_deadline_gives_a_partial_answer(server, real_rr):
    docs = [LONG + str(i) for i in range(400)]
    t0 = time.monotonic()
    real_rr._encoder.encode([(QUERY, d) for d in docs])
    deadline_ms = 300 + 2000 * (time.monotonic() - t0)  # tokenization counts against the budget
    for how in ("body", "header"):
        body = {"query": QUERY, "documents": docs, "return_documents": False}
        headers = {}
        if how == "body":
            body["deadline_ms"] = deadline_ms
        else:
            headers["X-Deadline-Ms"] = str(deadline_ms)
        r = post(f"{server.url}/v1/rerank", body, headers=headers)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["partial"] is True and 0 < out["unscored"] < len(docs), how
        tail = [x for x in out["results"] if x.get("scored") is False]
        assert len(tail) == out["unscored"] and all(x["relevance_score"] is None for x in tail)
        assert [x["index"] for x in tail] == sorted(x["index"] for x in tail)  # given order kept
        assert out["results"][-len(tail):] == tail
    assert "crossrank_partial_responses_total 2.0" in httpx.get(f"{server.url}/metrics").text


def test_request_timeout_is_504(real_model_folder, real_rr):
    with _server_with(real_model_folder, real_rr, request_timeout_s=0.05) as s:
        r = post(f"{s.url}/v1/rerank", {"query": QUERY, "documents": [LONG] * 300})
        assert r.status_code == 504 and r.json()["error_type"] == "timeout"
        assert s.scheduler.queued_pairs == 0


# -- load behaviour --------------------------------------------------------------------------------
def test_32_concurrent_clients_get_exactly_the_library_scores(server, real_rr):
    requests = [(f"{QUERY} {i}", (SEED + [LONG])[: 1 + i % 4] * (1 + i % 3)) for i in range(32)]
    expected = [real_rr.score(q, d) for q, d in requests]

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(client.post(f"{server.url}/v1/rerank", content=json.dumps({"query": q, "documents": d})) for q, d in requests)
            )

    responses = asyncio.run(main())
    for r, ref in zip(responses, expected):
        assert r.status_code == 200
        got = np.zeros(len(ref), dtype=np.float32)
        for x in r.json()["results"]:
            got[x["index"]] = x["relevance_score"]
        assert np.array_equal(got, ref)  # float32 scores survive JSON exactly


def test_small_request_behind_a_huge_one_finishes_first(server):
    done: list[str] = []

    async def one(client, name, docs):
        r = await client.post(f"{server.url}/v1/rerank", content=json.dumps({"query": QUERY, "documents": docs}))
        assert r.status_code == 200
        done.append(name)

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            big = asyncio.create_task(one(client, "big", [LONG + str(i) for i in range(300)]))
            while server.scheduler.queued_requests == 0:
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.05)
            await asyncio.gather(big, one(client, "small", SEED))

    asyncio.run(main())
    assert done == ["small", "big"]


# -- the CLI process: start, serve, drain on SIGTERM -------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_and_drains_on_sigterm(real_model_folder, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crossrank.cli", "serve", str(real_model_folder), "--port", str(port), "--threads", "1", "--grace", "60"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        give_up = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < give_up, "server did not become ready"
            time.sleep(0.2)

        async def main():
            async with httpx.AsyncClient(timeout=120) as client:
                tasks = [
                    asyncio.create_task(client.post(f"{url}/v1/rerank", content=json.dumps({"query": QUERY, "documents": [LONG] * 20})))
                    for _ in range(6)
                ]
                await asyncio.sleep(0.3)  # all six are in flight
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        responses = asyncio.run(main())
        assert [r.status_code for r in responses] == [200] * 6
        assert all(len(r.json()["results"]) == 20 for r in responses)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        text = log.read()
    assert '"path": "/v1/rerank", "status": 200' in text  # the structured access log
