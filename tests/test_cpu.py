"""crossrank.cpu: the one reader of CPU model and flags (graph cache key, bench machine description)."""
from __future__ import annotations

from pathlib import Path

import pytest

from crossrank import cpu, graph_cache

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu SSE4_2 avx avx2 fma
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_2 avx avx2 fma
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd asimddp i8mm
CPU implementer\t: 0x41
Hardware\t: Graviton
"""


@pytest.fixture
def cpuinfo_at(monkeypatch: pytest.MonkeyPatch):
    """Point the reader at a given file and clear its per-process cache around the test."""

    def use(path: Path) -> None:
        monkeypatch.setattr(cpu, "CPUINFO", str(path))
        cpu._read_cpuinfo.cache_clear()

    yield use
    cpu._read_cpuinfo.cache_clear()


def test_x86_cpuinfo_gives_model_and_lower_case_flags(cpuinfo_at, tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(X86)
    cpuinfo_at(tmp_path / "cpuinfo")
    assert cpu.cpu_model() == "AMD EPYC 7B13"
    assert cpu.cpu_flags() == frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})


def test_arm_cpuinfo_reads_features_and_hardware(cpuinfo_at, tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(ARM)
    cpuinfo_at(tmp_path / "cpuinfo")
    assert cpu.cpu_model() == "Graviton"
    assert {"asimddp", "i8mm"} <= cpu.cpu_flags()


def test_without_cpuinfo_flags_are_empty_and_the_model_falls_back(cpuinfo_at, tmp_path: Path) -> None:
    cpuinfo_at(tmp_path / "absent")
    assert cpu.cpu_flags() == frozenset()
    assert isinstance(cpu.cpu_model(), str) and cpu.cpu_model()  # platform.processor() or "unknown"


def test_graph_cache_key_follows_the_cpu_flags(cpuinfo_at, tmp_path: Path) -> None:
    # An optimized graph may hold kernels for this CPU's instruction sets: other flags, other entry.
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    keys = []
    for text in (X86, X86.replace("avx2 ", "")):
        (tmp_path / "cpuinfo").write_text(text)
        cpuinfo_at(tmp_path / "cpuinfo")
        graph_cache._cpu_fingerprint.cache_clear()
        keys.append(graph_cache.cache_entry(tmp_path, model, sha256="s", level="all", ort_version="1"))
    graph_cache._cpu_fingerprint.cache_clear()
    assert keys[0] != keys[1]


def test_bench_machine_description_uses_the_runtime_reader() -> None:
    from crossrank.bench import machine

    assert set(machine.cpu_flags()) == set(cpu.cpu_flags()) or not cpu.cpu_flags()
    if cpu.cpu_flags():
        assert machine.describe_machine()["cpu"] == cpu.cpu_model()
