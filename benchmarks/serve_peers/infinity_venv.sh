#!/usr/bin/env bash
# Create the separate virtualenv infinity needs (it pins sentence-transformers<4, numpy<2, click<8.2,
# typer<0.13, uvicorn<0.33: incompatible with crossrank's own environment), then print how to start it.
#
#   bash benchmarks/serve_peers/infinity_venv.sh [VENV_DIR]        # default: <repo>/.cache/venv-infinity
#
# Installs from the configured package index only (no model download: infinity serves a local
# Hugging Face folder with HF_HUB_OFFLINE=1). The torch wheel is the CPU one (pip's constraints /
# find-links on this machine make that the one chosen). Idempotent: re-running only re-checks.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-${CROSSRANK_INFINITY_VENV:-$repo/.cache/venv-infinity}}"
py="${PYTHON:-python3}"
INFINITY_VERSION="${INFINITY_VERSION:-0.0.78}"

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# torch first, capped like crossrank's export extra: where the 2.13.0 CPU wheel is on the
# find-links path (as on the project machines) pip takes it and never pulls a multi-GB CUDA build.
"${pip[@]}" "torch<=2.13.0"
# transformers 5 dropped APIs that sentence-transformers 3.x and infinity 0.0.78 use. optimum stays
# 2.x (optimum-onnx): optimum 1.x, which infinity 0.0.78 was written for, cannot import with torch
# 2.13 (torch.onnx.symbolic_opset14._attention_scale is gone). Two consequences for its optimum
# engine, both handled by the load generator (see benchmarks/serve_peers/README.md): it must be
# started inside the model folder with --model-id . (an absolute folder makes it pass an absolute
# file_name that optimum 2 rejects), and its own ORT optimization fails (OptimizationConfig has no
# optimize_with_onnxruntime_only), so infinity_onnx.py hands it an already-optimized graph.
"${pip[@]}" "infinity-emb[server,torch,optimum]==${INFINITY_VERSION}" "transformers>=4.47,<5"
# check the engines' imports, so a broken environment shows here and not at serving time
"$venv/bin/python" -c "from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer; import infinity_emb, sentence_transformers"

"$venv/bin/python" - <<'PY'
import importlib.metadata as md
for d in ("infinity-emb", "torch", "sentence-transformers", "transformers", "optimum", "optimum-onnx", "onnxruntime", "numpy"):
    try:
        print(f"  {d} {md.version(d)}")
    except md.PackageNotFoundError:
        print(f"  {d} (not installed)")
PY
cat <<MSG
infinity is installed in $venv. Start it on a local Hugging Face folder (offline, loopback only):

  HF_HUB_OFFLINE=1 INFINITY_ANONYMOUS_USAGE_STATS=0 $venv/bin/infinity_emb v2 \\
      --model-id /path/to/hf-folder --engine torch --host 127.0.0.1 --port 7997
  # or --engine optimum (onnxruntime); rerank: POST /rerank {"query", "documents", "top_n", "return_documents"}

The load generator finds this venv itself: python -m crossrank.bench.load --systems infinity ...
MSG
