"""Readable outputs of a run: ``table.md``, ``results.json`` (every figure + machine) and ``latency.png``."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from crossrank.textio import dumps, scrub_all

from .machine import isa_summary
from .systems import REFERENCE

__all__ = ["markdown", "write_outputs", "plot_latency"]

DATASET_TITLES = {"trec-dl-2020": "TREC DL 2020", "wikiqa": "WikiQA", "scifact": "SciFact"}


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _speed(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def machine_line(m: Mapping[str, Any]) -> str:
    mem = m.get("memory_bytes")
    return (f"{m.get('cpu')} · {m.get('usable_cores')} usable cores ({m.get('logical_cores')} logical) · {m.get('arch')} "
            f"{isa_summary(m)} [{', '.join(m.get('isa', []))}] · "
            f"{_f(mem / 2**30 if mem else None, 0)} GiB · {m.get('os')} · Python {m.get('python')} · "
            f"onnxruntime {m.get('onnxruntime')} ({', '.join(m.get('onnxruntime_providers', []))})")


def markdown(results: Mapping[str, Any]) -> str:
    m = results.get("machine", {})
    st = results.get("settings", {})
    lat = results.get("latency") or {}
    systems = lat.get("systems", {})
    labels = results.get("labels", {})
    peers = [s for s in systems if not s.startswith("crossrank-")]
    out = [f"## crossrank benchmark ({results.get('created', '')})", ""]
    out.append(f"**Machine:** {machine_line(m)}")
    out.append("")
    la = results.get("load_average") or {}
    if la.get("start") and la.get("end"):
        busy = max(la["start"][0], la["end"][0])
        out.append(f"**Load:** 1-minute load average {la['start'][0]:.1f} at the start, {la['end'][0]:.1f} at the end "
                   f"on {la.get('usable_cores')} cores"
                   + (" — other processes were competing for the CPU: absolute times are inflated, same-run "
                      "ratios much less so." if la.get("usable_cores") and busy > 1.5 * la["usable_cores"] else "."))
        out.append("")
    if systems:
        out.append(
            f"**Workload:** {lat.get('dataset')} ({lat.get('description', '')}), real queries with the same "
            f"candidates for every system; max_length {st.get('max_length')}; provider {st.get('provider')}; "
            f"{st.get('warmup')} warm-up calls then up to {st.get('rounds')} timed `rerank` calls per cell "
            f"(at least {st.get('min_rounds')}; no new round once a system spent {st.get('max_seconds')} s on a count), "
            f"systems interleaved round by round"
            + (f"; peers up to {st.get('peer_max_count')} candidates" if st.get("peer_max_count") else "") + "."
            + (" **Smoke mode: few rounds, figures indicative only.**" if st.get("smoke") else "")
        )
        out.append("")
        out.append("### Rerank latency (ms) and throughput")
        out.append("")
        head = ["system", "candidates", "p50", "p95", "p99", "pairs/s", "tokens/s", "n"] + [f"× {p}" for p in peers]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for s, by_count in systems.items():
            for c in sorted(by_count, key=int):
                v = by_count[c]
                row = [labels.get(s, s), c, _f(v["p50_ms"]), _f(v["p95_ms"]), _f(v["p99_ms"]),
                       _f(v.get("pairs_per_s"), 0), _f(v.get("tokens_per_s"), 0), str(v["n"])]
                for p in peers:
                    pv = systems.get(p, {}).get(c)
                    row.append(_speed(pv["p50_ms"] / v["p50_ms"]) if pv and s != p else "–")
                out.append("| " + " | ".join(row) + " |")
        out.append("")
        out.append("Speedup columns: the peer's median divided by this system's median, same requests, same run.")
        out.append("")
    skipped = (results.get("peers") or {}).get("skipped") or {}
    if skipped:
        out.append("### Peers skipped")
        out.append("")
        for p, why in skipped.items():
            out.append(f"- **{p}**: {why}")
        out.append("")
        out.append("A skipped peer is not measured and not gated: the gate lists its checks as skipped.")
        out.append("")
    budgets = results.get("budgets") or {}
    if budgets:
        bs = list(next(iter(budgets.values())).keys())
        out.append("### Largest candidate count whose p95 fits the budget")
        out.append("")
        out.append("| system | " + " | ".join(f"{b} ms" for b in bs) + " |")
        out.append("|---|" + "---|" * len(bs))
        for s, by_b in budgets.items():
            cells = []
            for b in bs:
                a = by_b[b]
                if a["measured"] is None:
                    cells.append("none")
                else:
                    cells.append(f"{a['measured']}" + (f" (≈{a['interpolated']})" if a["interpolated"] not in (None, a["measured"]) else ""))
            out.append(f"| {labels.get(s, s)} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("Measured counts only (every smaller measured count fits too); ≈ reads the p95 curve linearly "
                   "between measured counts and never beyond the largest one.")
        out.append("")
    startup = results.get("startup") or {}
    if startup:
        anyv = next(iter(startup.values()))
        out.append("### Start-up and memory (a fresh process per system)")
        out.append("")
        out.append(f"| system | import s | load s | first call ms ({anyv.get('first_count')} cand.) | RSS after load MB | "
                   f"peak RSS MB ({anyv.get('peak_count')} cand.) |")
        out.append("|---|---|---|---|---|---|")
        for s, v in startup.items():
            if "error" in v:
                out.append(f"| {labels.get(s, s)} | error: {v['error']} | | | | |")
                continue
            out.append(f"| {labels.get(s, s)} | {_f(v.get('import_s'), 2)} | {_f(v.get('load_s'), 2)} | "
                       f"{_f(v.get('first_call_ms'))} | {_f(v.get('rss_loaded_mb'), 0)} | {_f(v.get('peak_rss_mb'), 0)} |")
        out.append("")
    floor = results.get("floor") or {}
    if floor.get("variants"):
        out += _floor_tables(floor, labels)
    quality = results.get("quality") or {}
    if quality:
        out += _quality_table(results, quality, labels, systems)
    g = results.get("gate")
    if g:
        out.append("### Gate")
        out.append("")
        out.append(f"Profile: {g.get('profile') or 'none'} · tolerances: " + ", ".join(f"{k} {v}" for k, v in g["tolerances"].items())
                   + f" · **{'PASSED' if g['passed'] else 'FAILED'}**")
        out.append("")
        out.append("| check | what | measured | limit | recorded | verdict |")
        out.append("|---|---|---|---|---|---|")
        for c in g["checks"]:
            out.append(f"| {c['kind']} | {c['name']} | {_f(c['measured'], 3)} | {c['op']} {_f(c['limit'], 3)} | "
                       f"{_f(c['expected'], 3)} | {c['status']} |")
        for n in g.get("notes", []):
            out.append(f"\nNote: {n}")
        out.append("")
    return "\n".join(out) + "\n"


def _quality_table(results: Mapping[str, Any], quality: Mapping[str, Any], labels: Mapping[str, str],
                   systems: Mapping[str, Any]) -> list[str]:
    dsets = list(quality)
    names: list[str] = []
    for row in quality.values():
        for s in row:
            if s not in names:
                names.append(s)
    ref_count = str(results.get("settings", {}).get("headline_count", 50))
    ref = REFERENCE
    # the fp32 baseline of the retention column: crossrank fp32 when it was scored, else PyTorch fp32
    base = "crossrank-fp32" if any("crossrank-fp32" in row for row in quality.values()) else REFERENCE
    out = ["### Quality and the speed trade-off", ""]
    head = ["system"] + [f"{DATASET_TITLES.get(d, d)} nDCG@10 / MRR@10" for d in dsets]
    head += [f"nDCG@10 vs {labels.get(base, base)} ({', '.join(DATASET_TITLES.get(d, d) for d in dsets)})",
             f"speedup @{ref_count} vs {labels.get(ref, ref)}"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for s in names:
        cells = [labels.get(s, s)]
        for d in dsets:
            v = quality[d].get(s)
            cells.append("–" if v is None else f"{v['ndcg@10']:.4f} / {v['mrr@10']:.4f}")
        rets = []
        for d in dsets:
            a, b = quality[d].get(s), quality[d].get(base)
            rets.append("–" if not a or not b or not b["ndcg@10"] or s in (base, "first-stage") else f"{100 * a['ndcg@10'] / b['ndcg@10']:.2f}%")
        cells.append(" / ".join(rets))
        a, b = systems.get(s, {}).get(ref_count), systems.get(ref, {}).get(ref_count)
        cells.append(_speed(b["p50_ms"] / a["p50_ms"]) if a and b and s != ref else "–")
        out.append("| " + " | ".join(cells) + " |")
    n = {d: next(iter(quality[d].values())).get("queries") for d in dsets}
    out.append("")
    out.append("nDCG@10 as trec_eval computes it (../shared/data/README.md); MRR@10 counts TREC DL grades ≥ 2, "
               "others ≥ 1. Queries: " + ", ".join(f"{DATASET_TITLES.get(d, d)} {n[d]}" for d in dsets) + ".")
    out.append("")
    return out


def _floor_tables(floor: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    out = ["### Distance to the compute floor", ""]
    out.append("Floor = weight multiply-adds of the requests' real tokens (per-token products x tokens + per-pair "
               "products x candidates) / the measured kernel rate of onnxruntime's own product on one 2048-row "
               "matrix (int8 variants: u8 x s8 MatMulIntegerToFloat; others: fp32 MatMul). Ratio = measured / floor.")
    out.append("")
    out.append("| system | kernel GMAC/s | candidates | tokens/request | floor ms | p50 ms | p50 / floor | mean / floor |")
    out.append("|---|---|---|---|---|---|---|---|")
    for s, v in floor["variants"].items():
        for c, row in v["counts"].items():
            out.append(f"| {labels.get(s, s)} | {_f(v['kernel']['gmacs_per_s'], 0)} | {c} | {_f(row['tokens_per_request'], 0)} | "
                       f"{_f(row['floor_ms'])} | {_f(row['p50_ms'])} | {_f(row['ratio_p50'], 2)}× | {_f(row['ratio_mean'], 2)}× |")
    out.append("")
    out.append(f"### Where one {floor.get('count')}-candidate call's time goes (onnxruntime profile)")
    out.append("")
    for s, v in floor["variants"].items():
        prof = v["profile"]
        total = prof["kernel_ms"] or 1.0
        eff = v.get("weight_op_efficiency")
        out.append(f"**{labels.get(s, s)}**: {prof['runs']} runs, {_f(prof['wall_ms'])} ms wall, {_f(prof['kernel_ms'])} ms "
                   f"in operators; weight operators at {_f(100 * eff if eff else None, 0)}% of the kernel rate on the "
                   f"multiply-adds they ran (padding included; fused attention's own products count against it).")
        out.append("")
        out.append("| operator | ms | share |")
        out.append("|---|---|---|")
        for op, ms in prof["op_ms"].items():
            if ms / total < 0.005:
                continue
            out.append(f"| {op} | {_f(ms)} | {100 * ms / total:.1f}% |")
        out.append("")
    return out


def plot_latency(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """p50 (solid) and p95 (dashed) against candidate count per system, budget lines dotted."""
    systems = (results.get("latency") or {}).get("systems") or {}
    if not systems:
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels = results.get("labels", {})
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (s, by_count) in enumerate(systems.items()):
        cs = sorted(by_count, key=int)
        x = [int(c) for c in cs]
        color = colors[i % len(colors)]
        width = 2.2 if s.startswith("crossrank-") else 1.3
        ax.plot(x, [by_count[c]["p50_ms"] for c in cs], "-o", color=color, lw=width, ms=3, label=f"{labels.get(s, s)} p50")
        ax.plot(x, [by_count[c]["p95_ms"] for c in cs], "--", color=color, lw=width * 0.7, label=f"{labels.get(s, s)} p95")
    for b in results.get("settings", {}).get("budgets_ms", []):
        ax.axhline(b, color="0.35", ls=":", lw=1)
        ax.annotate(f"{b:g} ms budget", xy=(1.0, b), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                    textcoords="offset points", ha="right", fontsize=8, color="0.3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("candidates per query")
    ax.set_ylabel("rerank latency (ms)")
    m = results.get("machine", {})
    lat = results.get("latency", {})
    ax.set_title(f"rerank latency vs candidates · {lat.get('dataset')} · {m.get('cpu')}, {m.get('usable_cores')} cores",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write table.md, results.json and latency.png into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "table.md", "json": out / "results.json", "plot": out / "latency.png"}
    results = scrub_all(results)  # any str (a model path, a label) is written: crossrank.textio's rule
    _atomic_write(paths["json"], dumps(results, indent=2, sort_keys=False) + "\n")
    _atomic_write(paths["table"], markdown(results))
    if plot_latency(results, paths["plot"]) is None:
        paths.pop("plot")
    return paths


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
