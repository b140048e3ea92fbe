"""Real-size proof of ONNX external data (issue 8, item 4): a random XLM-R-large reranker, exported.

Builds a random-weight ``XLMRobertaForSequenceClassification`` with the shape of
BAAI/bge-reranker-v2-m3 (``../shared/data/reranker-configs.json``: 24 layers, hidden 1024,
vocabulary 250,002, 568 M parameters, 2.27 GB in fp32) and the tiny XLM-R tokenizer of
``tests/tiny_models.py`` (model_max_length 512; its ids all lie inside the 250,002-row table), saves
it to ``OUT/hf`` and prints the command to export it. Random weights: only parity against PyTorch
means anything, not ranking quality.

    python scripts/external_data_proof.py /tmp/xlmr-large
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main(out: Path) -> None:
    import torch
    import transformers as tf
    from tiny_models import _xlmr_tokenizer, write_small_validation

    shape = json.loads((REPO.parent / "shared" / "data" / "reranker-configs.json").read_text())["BAAI/bge-reranker-v2-m3"]
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings",
            "type_vocab_size", "vocab_size", "num_labels", "pad_token_id", "layer_norm_eps")
    config = tf.XLMRobertaConfig(**{k: shape[k] for k in keys}, bos_token_id=0, eos_token_id=2)
    config.architectures = ["XLMRobertaForSequenceClassification"]
    hf = out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = tf.XLMRobertaForSequenceClassification(config).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(hf, safe_serialization=True)
    _xlmr_tokenizer(512).save_pretrained(hf)
    val = write_small_validation(out / "validation.jsonl")
    lines = val.read_text().splitlines()[:4]
    cal = out / "calibration.jsonl"
    cal.write_text("".join(json.dumps({"query": json.loads(l)["query"], "document": p}) + "\n"
                           for l in lines for p in json.loads(l)["passages"][:4]))
    print(f"{params / 1e6:.1f} M parameters, built and saved in {time.perf_counter() - t0:.0f} s to {hf}")
    print(f"export: /usr/bin/time -v crossrank export {hf} {out / 'crossrank'} --int8 --fp16 --keep-failed "
          f"--validation {val} --calibration {cal}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
