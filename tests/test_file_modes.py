"""Every atomic write gives its result the modes a plain mkdir/open would under the caller's umask.

Issue 8, item 6: the exported folder was staged with :func:`tempfile.mkdtemp` (0700) and renamed
into place, so a service running as another user could not read it. The same kind: the graph
cache's entries (``mkstemp``, 0600), the int8 writer, the benchmark outputs and the peers' cache.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tiny_models import build_tiny_model, write_small_validation

from crossrank import atomic, graph_cache

UMASKS = [0o022, 0o077, 0o002]


@pytest.fixture(params=UMASKS, ids=[f"umask-{m:03o}" for m in UMASKS])
def umask(request: pytest.FixtureRequest):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_is_read_without_changing_it(umask: int) -> None:
    assert atomic.current_umask() == umask
    assert atomic.current_umask() == umask
    assert atomic.default_dir_mode() == 0o777 & ~umask
    assert atomic.default_file_mode() == 0o666 & ~umask


def test_temporary_names_get_the_plain_modes(umask: int, tmp_path: Path) -> None:
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain_file = tmp_path / "plain.txt"
    plain_file.write_text("x")
    d = atomic.mkdtemp(prefix="x.", dir=tmp_path)
    f = atomic.mkstemp(prefix="y.", suffix=".tmp", dir=tmp_path)
    assert mode(d) == mode(plain_dir) == 0o777 & ~umask
    assert mode(f) == mode(plain_file) == 0o666 & ~umask
    assert f.stat().st_size == 0


def test_staged_folder_gets_mkdirs_mode(umask: int, tmp_path: Path) -> None:
    from crossrank.export.writer import StagedFolder

    out = tmp_path / "model"
    with StagedFolder(out, force=False) as stage:
        (stage.path / "crossrank.json").write_text("{}")
        stage.commit()
    assert mode(out) == 0o777 & ~umask
    assert mode(out / "crossrank.json") == 0o666 & ~umask


def test_graph_cache_entry_gets_opens_mode(umask: int, tmp_path: Path) -> None:
    entry = tmp_path / "cache" / "model-abc.onnx"
    tmp = graph_cache.store_path(entry)
    assert tmp is not None
    tmp.write_bytes(b"graph")
    graph_cache.commit(tmp, entry)
    assert entry.read_bytes() == b"graph"
    assert mode(entry) == 0o666 & ~umask
    assert mode(entry.parent) == 0o777 & ~umask


@pytest.mark.needs_export
def test_int8_writer_gets_opens_mode(umask: int, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from crossrank.export.quantize import _save_atomic

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    dst = tmp_path / "model.int8.onnx"
    _save_atomic(onnx, helper.make_model(graph), dst, False)
    assert mode(dst) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]


def test_bench_outputs_get_plain_modes(umask: int, tmp_path: Path) -> None:
    from crossrank.bench.report import write_outputs

    paths = write_outputs({"runs": []}, tmp_path / "bench")
    assert mode(tmp_path / "bench") == 0o777 & ~umask
    for p in paths.values():
        assert mode(p) == 0o666 & ~umask, p.name


@pytest.mark.needs_export
def test_exported_folder_is_readable_under_the_callers_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end, one export (umask 0o022: folder 0755, files 0644 — readable by another user).

    Forced to external data: onnx writes its side files 0600 whatever the umask.
    """
    from crossrank.export import export_model, external

    src = build_tiny_model("bert", tmp_path / "src", num_labels=1)
    val = write_small_validation(tmp_path / "val.jsonl")
    monkeypatch.setattr(external, "EXTERNAL_DATA_BYTES", 0)
    old = os.umask(0o022)
    try:
        export_model(src, tmp_path / "out", int8=True, validation=val, keep_failed=True)
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert mode(out) == 0o755
    files = sorted(out.iterdir())
    assert files and all(p.is_file() for p in files)
    assert any(p.name.endswith(".onnx.data") for p in files)
    assert {p.name: mode(p) for p in files} == {p.name: 0o644 for p in files}
