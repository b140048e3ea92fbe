"""Latency budgets and the regression gate.

**Budgets** answer a user's question directly: for a latency budget of B ms, the largest candidate
count whose p95 fits, per system (:func:`budget_answers`). "Measured" is the largest measured count
``c`` such that every measured count up to ``c`` has p95 <= B (a noisy point cannot promise more
than the curve below it); "interpolated" reads the same curve linearly between measured counts.

**The gate** (:func:`gate`) compares one run's results against ``budgets.json`` (packaged next to
this module, or a file given with ``--budgets``)::

    {"schema_version": 1,
     "tolerances": {"ratio": 0.2, "median": 0.5, "ndcg": 0.005},
     "targets": {"speedup_floors": [{"system", "peer", "count", "min"}],
                 "retention_floors": [{"system", "baseline": name | [names...], "dataset", "min"}]},
     "profiles": {NAME: {"description", "match": {"arch", "usable_cores", "isa"}, "dataset",
                         "gate_counts": [...], "medians_ms": {system: {count: ms}},
                         "speedups": {system: {peer: {count: x}}},
                         "ndcg": {dataset: {system: value}}, "recorded": {...}}}}

Checks, each reported with measured value, limit and verdict:

1. ``floor``     a target that holds anywhere: crossrank's speedup over a peer measured in the same
                 run (int8 ahead of every peer at 10, 50 and 100 candidates), int8 nDCG retention
                 vs fp32. A speedup floor marked ``"gate": false`` is a *goal* (e.g. the runtime
                 issue's 5x PyTorch at 50 candidates): reported as met or missed, never failing.
2. ``ratio``     same-run speedup vs the profile's recorded one: >= recorded x (1 - ratio tol).
                 Robust across machines of the same class and under load (both sides slow down).
3. ``median``    absolute p50 vs the profile: <= recorded x (1 + median tol). Only against a profile
                 that matches this machine (or one named explicitly).
4. ``ndcg``      nDCG@10 per set and system: >= recorded - ndcg tol.

A check whose figures were not measured in this run is listed as skipped, never as passed; a gate
that could check nothing is an error.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from crossrank.errors import BenchmarkError, RegressionError

__all__ = [
    "DEFAULT_TOLERANCES",
    "Check",
    "GateResult",
    "budget_answers",
    "load_budgets",
    "select_profile",
    "parse_tolerances",
    "gate",
    "profile_from_results",
    "merge_profile",
]

DEFAULT_TOLERANCES = {"ratio": 0.2, "median": 0.5, "ndcg": 0.005}
BUDGETS_FILE = "budgets.json"


# -- budgets ---------------------------------------------------------------------------------------
def _largest_within(points: Sequence[tuple[int, float]], budget_ms: float) -> tuple[int | None, int | None]:
    """(largest measured count, linearly interpolated count) whose p95 fits ``budget_ms``."""
    measured: int | None = None
    for c, p95 in points:
        if p95 > budget_ms:
            break
        measured = c
    if measured is None:
        return None, None
    interp = float(measured)
    k = [c for c, _ in points].index(measured)
    if k + 1 < len(points):
        (c0, y0), (c1, y1) = points[k], points[k + 1]
        if y1 > y0:
            interp = c0 + (budget_ms - y0) * (c1 - c0) / (y1 - y0)
    return measured, int(interp)


def budget_answers(latency: Mapping[str, Mapping[str, Mapping[str, Any]]], budgets_ms: Iterable[float],
                   *, stat: str = "p95_ms") -> dict[str, dict[str, dict[str, int | None]]]:
    """``{system: {str(B): {"measured": count | None, "interpolated": count | None}}}``."""
    out: dict[str, dict[str, dict[str, int | None]]] = {}
    for system, by_count in latency.items():
        points = sorted((int(c), float(v[stat])) for c, v in by_count.items())
        out[system] = {}
        for b in budgets_ms:
            m, i = _largest_within(points, float(b))
            out[system][_fmt_budget(b)] = {"measured": m, "interpolated": i}
    return out


def _fmt_budget(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else str(b)


# -- budgets file ----------------------------------------------------------------------------------
def load_budgets(path: str | Path | None = None) -> dict[str, Any]:
    try:
        if path is None:
            text = resources.files("crossrank.bench").joinpath(BUDGETS_FILE).read_text(encoding="utf-8")
            where = f"crossrank.bench/{BUDGETS_FILE}"
        else:
            text = Path(path).read_text(encoding="utf-8")
            where = str(path)
        data = json.loads(text)
    except (OSError, ValueError) as err:
        raise BenchmarkError(f"cannot read budgets file {path or BUDGETS_FILE}: {err}") from err
    if not isinstance(data, dict) or data.get("schema_version") != 1 or not isinstance(data.get("profiles"), dict):
        raise BenchmarkError(f"{where} is not a schema_version 1 budgets file")
    for name, prof in data["profiles"].items():
        if not isinstance(prof, dict) or not isinstance(prof.get("match", {}), dict):
            raise BenchmarkError(f"{where}: profile {name!r} is malformed")
    return data


def profile_matches(profile: Mapping[str, Any], machine: Mapping[str, Any]) -> bool:
    from .machine import isa_summary  # noqa: PLC0415

    match = profile.get("match", {})
    if not match:
        return False
    if "arch" in match and match["arch"] != machine.get("arch"):
        return False
    if "usable_cores" in match and match["usable_cores"] != machine.get("usable_cores"):
        return False
    if "isa" in match and match["isa"] != isa_summary(machine):
        return False
    return True


def select_profile(budgets: Mapping[str, Any], machine: Mapping[str, Any], name: str | None = None) -> tuple[str | None, dict | None]:
    """The named profile (an unknown name is an error), else the first one matching this machine."""
    profiles = budgets.get("profiles", {})
    if name is not None:
        if name not in profiles:
            raise BenchmarkError(f"no profile {name!r} in the budgets file; it has: {', '.join(profiles) or 'none'}")
        return name, profiles[name]
    for pname, prof in profiles.items():
        if profile_matches(prof, machine):
            return pname, prof
    return None, None


def parse_tolerances(text: str | None, base: Mapping[str, float] | None = None) -> dict[str, float]:
    """``"0.3"`` (ratio and median) or ``"ratio=0.2,median=0.5,ndcg=0.005"`` over ``base``."""
    tol = dict(DEFAULT_TOLERANCES)
    tol.update(base or {})
    if not text:
        return tol
    try:
        if "=" not in text:
            v = float(text)
            tol["ratio"] = tol["median"] = v
        else:
            for part in text.split(","):
                k, _, v = part.partition("=")
                k = k.strip()
                if k not in DEFAULT_TOLERANCES:
                    raise BenchmarkError(f"unknown tolerance {k!r}; expected {', '.join(DEFAULT_TOLERANCES)}")
                tol[k] = float(v)
    except ValueError as err:
        raise BenchmarkError(f"cannot read --tolerance {text!r}: {err}") from err
    if any(v < 0 for v in tol.values()):
        raise BenchmarkError(f"tolerances must be >= 0, got {tol}")
    return tol


# -- the gate --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    kind: str  # floor | goal | ratio | median | ndcg
    name: str
    measured: float | None
    limit: float
    op: str  # ">=" or "<="
    expected: float | None = None
    status: str = "pass"  # pass | FAIL | skipped; goals: met | missed

    def line(self) -> str:
        if self.status == "skipped":
            return f"  skipped  {self.kind:<6} {self.name}: not measured in this run"
        return (f"  {self.status:<7}  {self.kind:<6} {self.name}: {self.measured:.4g} (limit {self.op} {self.limit:.4g}"
                + (f", recorded {self.expected:.4g}" if self.expected is not None else "") + ")")


@dataclass(frozen=True)
class GateResult:
    profile: str | None
    tolerances: dict[str, float]
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def ran(self) -> list[Check]:
        return [c for c in self.checks if c.status != "skipped"]

    @property
    def passed(self) -> bool:
        return bool(self.ran) and not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "tolerances": self.tolerances, "passed": self.passed,
                "checks": [asdict(c) for c in self.checks], "notes": list(self.notes)}

    def report(self) -> str:
        head = f"gate against profile {self.profile!r}" if self.profile else "gate (no hardware profile: targets and ratios only)"
        lines = [f"{head}: {len(self.ran)} checks, {len(self.failures)} failed"]
        lines += [c.line() for c in self.checks]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def raise_on_failure(self) -> None:
        if not self.ran:
            raise BenchmarkError("the gate had nothing to check: measure with peers and/or against a matching profile")
        if self.failures:
            raise RegressionError(
                f"{len(self.failures)} of {len(self.ran)} gate checks failed: "
                + "; ".join(f"{c.kind} {c.name} {c.measured:.4g} (limit {c.op} {c.limit:.4g})" for c in self.failures)
            )


def _cmp(kind: str, name: str, measured: float | None, limit: float, op: str, expected: float | None = None) -> Check:
    if measured is None:
        return Check(kind, name, None, limit, op, expected, "skipped")
    ok = measured >= limit if op == ">=" else measured <= limit
    return Check(kind, name, measured, limit, op, expected, "pass" if ok else "FAIL")


def _get(d: Mapping, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or str(k) not in d:
            return None
        d = d[str(k)]
    return d


def _speedup(latency: Mapping, system: str, peer: str, count: int | str) -> float | None:
    a, b = _get(latency, system, count, "p50_ms"), _get(latency, peer, count, "p50_ms")
    return None if a is None or b is None or a <= 0 else b / a


def gate(results: Mapping[str, Any], budgets: Mapping[str, Any], *, profile: str | None = None,
         tolerances: Mapping[str, float] | None = None) -> GateResult:
    """Check a run (the ``results.json`` dict) against targets and a hardware profile."""
    latency = _get(results, "latency", "systems") or {}
    ndcg_measured = results.get("quality") or {}
    machine = results.get("machine") or {}
    tol = parse_tolerances(None, {**budgets.get("tolerances", {}), **(tolerances or {})})
    pname, prof = select_profile(budgets, machine, profile)
    checks: list[Check] = []
    notes: list[str] = []
    targets = budgets.get("targets", {})

    # Peers asked for but not installed: listed in every "*" floor as skipped checks (never as passed).
    skipped_peers = dict(_get(results, "peers", "skipped") or {})
    for p, why in skipped_peers.items():
        notes.append(f"peer {p} skipped: {why}")
    for f in targets.get("speedup_floors", []):
        peers = ([p for p in latency if not p.startswith("crossrank-")] + [p for p in skipped_peers if p not in latency]
                 if f["peer"] == "*" else [f["peer"]])
        for p in peers:
            c = _cmp("floor", f"{f['system']} vs {p} @{f['count']} speedup",
                     _speedup(latency, f["system"], p, f["count"]), float(f["min"]), ">=")
            if f.get("gate", True) is False and c.status != "skipped":
                # a goal: reported as met or missed, never failing the gate by itself
                c = replace(c, kind="goal", status="met" if c.status == "pass" else "missed")
            checks.append(c)
    for f in targets.get("retention_floors", []):
        # baseline: one system or a list tried in order (crossrank fp32 when scored, else PyTorch fp32)
        options = [f["baseline"]] if isinstance(f["baseline"], str) else list(f["baseline"])
        base = next((b for b in options if _get(ndcg_measured, f["dataset"], b, "ndcg@10") is not None), options[0])
        a = _get(ndcg_measured, f["dataset"], f["system"], "ndcg@10")
        b = _get(ndcg_measured, f["dataset"], base, "ndcg@10")
        value = None if a is None or b is None or b <= 0 else a / b
        checks.append(_cmp("floor", f"{f['system']}/{base} nDCG@10 {f['dataset']}", value, float(f["min"]), ">="))

    if prof is None:
        notes.append("no hardware profile matches this machine: absolute medians not checked "
                     "(name one with --profile, or record one with --record-profile)")
    else:
        for system, by_peer in (prof.get("speedups") or {}).items():
            for peer, by_count in by_peer.items():
                for count, expected in by_count.items():
                    checks.append(_cmp("ratio", f"{system} vs {peer} @{count} speedup",
                                       _speedup(latency, system, peer, count),
                                       float(expected) * (1 - tol["ratio"]), ">=", float(expected)))
        for system, by_count in (prof.get("medians_ms") or {}).items():
            for count, expected in by_count.items():
                checks.append(_cmp("median", f"{system} @{count} p50 ms", _get(latency, system, count, "p50_ms"),
                                   float(expected) * (1 + tol["median"]), "<=", float(expected)))
        for ds, by_system in (prof.get("ndcg") or {}).items():
            for system, expected in by_system.items():
                checks.append(_cmp("ndcg", f"{system} nDCG@10 {ds}", _get(ndcg_measured, ds, system, "ndcg@10"),
                                   float(expected) - tol["ndcg"], ">=", float(expected)))
        if prof.get("dataset") and _get(results, "latency", "dataset") not in (None, prof["dataset"]):
            notes.append(f"profile {pname!r} was recorded on {prof['dataset']}, this run measured "
                         f"{_get(results, 'latency', 'dataset')}: medians are not comparable")
    return GateResult(pname, dict(tol), tuple(checks), tuple(notes))


# -- recording a profile ---------------------------------------------------------------------------
def profile_from_results(results: Mapping[str, Any], *, description: str = "",
                         gate_counts: Sequence[int] = (10, 50, 100)) -> dict[str, Any]:
    """A profile holding this run's figures at ``gate_counts`` (those measured)."""
    from .machine import isa_summary  # noqa: PLC0415

    latency = _get(results, "latency", "systems") or {}
    machine = results.get("machine") or {}
    counts = [str(c) for c in gate_counts]
    crs = [s for s in latency if s.startswith("crossrank-")]
    prs = [s for s in latency if not s.startswith("crossrank-")]
    medians = {s: {c: round(latency[s][c]["p50_ms"], 2) for c in counts if c in latency[s]} for s in crs}
    speedups = {
        s: {p: {c: round(_speedup(latency, s, p, c), 2) for c in counts if _speedup(latency, s, p, c) is not None} for p in prs}
        for s in crs
    }
    ndcg = {ds: {s: round(v["ndcg@10"], 4) for s, v in row.items() if s.startswith("crossrank-")}
            for ds, row in (results.get("quality") or {}).items()}
    return {
        "description": description or f"{machine.get('cpu')} ({machine.get('usable_cores')} cores, {isa_summary(machine)})",
        "match": {"arch": machine.get("arch"), "usable_cores": machine.get("usable_cores"), "isa": isa_summary(machine)},
        "dataset": _get(results, "latency", "dataset"),
        "gate_counts": [int(c) for c in counts],
        "medians_ms": {s: v for s, v in medians.items() if v},
        "speedups": {s: {p: v for p, v in by.items() if v} for s, by in speedups.items() if any(by.values())},
        "ndcg": {ds: v for ds, v in ndcg.items() if v},
        "recorded": {"created": results.get("created"), "cpu": machine.get("cpu"),
                     "crossrank": _get(machine, "versions", "crossrank"), "onnxruntime": machine.get("onnxruntime"),
                     "rounds": _get(results, "settings", "rounds"), "smoke": _get(results, "settings", "smoke")},
    }


def merge_profile(budgets: Mapping[str, Any], name: str, profile: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(budgets))
    out.setdefault("profiles", {})[name] = json.loads(json.dumps(profile))
    return out
