"""Shared fixtures.

* ``shared_dir``: the ../shared folder beside the repository (or $CROSSRANK_SHARED).
* ``real_hf_model``: the trained cross-encoder from ../shared/models/crossrank-minilm-l6, built
  once into a cache folder ($CROSSRANK_TEST_CACHE, default <repo>/.cache/tests) and reused while
  its inputs (build.py, adapter, overrides) are unchanged.
* ``data_file(name)``: path of a relevance set in ../shared/data.
* ``tiny_bert_folder``: the committed tiny crossrank folder ``tests/fixtures/tiny-bert`` (every
  variant; rebuilt by ``tests/fixtures/regenerate.py``), copied to a temporary folder once per session
  so that no test can change the committed files. No export happens, so it works on the lean install.
* ``tiny_bert_hf`` / ``tiny_bert_export``: the Hugging Face model behind it, rebuilt from its seed,
  and that model exported now (both need the export extra): for comparisons with PyTorch and the
  committed folder's freshness test.
* every test runs with ``$CROSSRANK_CACHE`` set to a private folder (the runtime's graph cache).

The real model and data are required: their absence is an error, not a skip.

The lean install (``pytest --lean``, run by ``.ci/run`` in its runtime-only venv): a test needs the
export extra (torch, transformers, optimum, onnx) when it carries the ``needs_export`` marker, which
every test using an export-time fixture (:data:`EXPORT_FIXTURES`) gets here (``needs_bench``: the
bench extra, set by hand); a module listed in
:data:`FULL_INSTALL_MODULES` tests an extra as a whole. ``--lean`` leaves both out (not collected,
deselected: nothing is reported as skipped) and refuses to run where torch, transformers or optimum
are importable, so that it proves what it says. Everything else must pass on the runtime alone.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_BERT = Path(__file__).resolve().parent / "fixtures" / "tiny-bert"

# Fixtures that export a model at test time (torch, transformers, optimum): their tests are marked
# ``needs_export``.
EXPORT_FIXTURES = frozenset({"real_hf_model", "real_model_folder", "tiny_bert_source", "tiny_bert_hf", "tiny_bert_export"})
# Test modules about an extra as a whole (the exporter, the service, Ray, the benchmarks, CUDA), with
# the extra each needs: ``--lean`` does not collect them.
FULL_INSTALL_MODULES = {
    "test_export.py": "export",
    "test_export_errors.py": "export",
    "test_export_real.py": "export",
    "test_export_units.py": "export",
    "test_external_data.py": "export",
    "test_quantize.py": "export",
    "test_prune.py": "export",
    "test_tiny_fixture.py": "export",
    "test_families.py": "export",
    "test_add_variant.py": "export",
    "test_serve.py": "serve",
    "test_load.py": "bench",
    "test_ray.py": "ray",
    "test_runtime_cuda.py": "gpu",  # onnxruntime-gpu: the lean install's onnxruntime has no CUDA
    "test_bench_cli.py": "bench",
    "test_bench_e2e.py": "bench",
    "test_bench_gate.py": "bench",
    "test_bench_metrics.py": "bench",
    "test_bench_report.py": "bench",
    "test_bench_peers_field.py": "bench",
    "test_bench_floor.py": "bench",
}
HEAVY = ("torch", "transformers", "optimum")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--lean",
        action="store_true",
        help="run only what the runtime-only install can (leaves out FULL_INSTALL_MODULES and "
        "needs_export/needs_bench tests; refuses to run where torch/transformers/optimum are importable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--lean"):
        heavy = [m for m in HEAVY if importlib.util.find_spec(m) is not None]
        if heavy:
            raise pytest.UsageError(f"--lean runs the runtime tests on the runtime-only install, but {heavy} are importable here")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.getoption("--lean") and collection_path.name in FULL_INSTALL_MODULES:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if EXPORT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.needs_export)
    if config.getoption("--lean"):
        def needs_extra(item: pytest.Item) -> bool:
            return any(item.get_closest_marker(m) is not None for m in ("needs_export", "needs_bench"))

        kept = [item for item in items if not needs_extra(item)]
        dropped = [item for item in items if needs_extra(item)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _shared_dir() -> Path:
    return Path(os.environ.get("CROSSRANK_SHARED", REPO.parent / "shared")).resolve()


def _cache_dir() -> Path:
    d = Path(os.environ.get("CROSSRANK_TEST_CACHE", REPO / ".cache" / "tests"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session", autouse=True)
def _private_graph_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the runtime's optimized-graph cache of every test out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CROSSRANK_CACHE", str(tmp_path_factory.mktemp("graph-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _shared_dir()
    if not (d / "models" / "crossrank-minilm-l6" / "build.py").is_file():
        pytest.fail(f"../shared is missing or incomplete at {d}; set CROSSRANK_SHARED to its location")
    return d


@pytest.fixture(scope="session")
def real_hf_model(shared_dir: Path) -> Path:
    """A standard HF folder of the trained MiniLM-L6 cross-encoder (built once, cached)."""
    src = shared_dir / "models" / "crossrank-minilm-l6"
    h = hashlib.sha256()
    for name in ("build.py", "adapter.safetensors", "config_overrides.json"):
        h.update((src / name).read_bytes())
    out = _cache_dir() / f"crossrank-minilm-l6-{h.hexdigest()[:12]}"
    if not (out / "model.safetensors").is_file():
        tmp = out.with_name(out.name + ".partial")
        subprocess.run([sys.executable, str(src / "build.py"), str(tmp)], check=True)
        tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def data_file(shared_dir: Path):
    def get(name: str) -> Path:
        p = shared_dir / "data" / name
        if not p.is_file():
            pytest.fail(f"relevance data {p} is missing")
        return p

    return get


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT cross-encoder (1 label, sigmoid) with every variant incl. int8 and fp16:
    a copy of the committed ``tests/fixtures/tiny-bert`` (no export, so the lean install has it)."""
    if not (TINY_BERT / "crossrank.json").is_file():
        pytest.fail(f"{TINY_BERT} is missing; rebuild it with python tests/fixtures/regenerate.py")
    out = tmp_path_factory.mktemp("tiny-bert") / "crossrank"
    shutil.copytree(TINY_BERT, out)
    return out


def _regenerate():
    """``tests/fixtures/regenerate.py``, which builds the committed tiny folder, as a module."""
    spec = importlib.util.spec_from_file_location("tiny_fixture_regenerate", TINY_BERT.parent / "regenerate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_bert_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``hf/`` (the Hugging Face model the committed tiny folder is exported from,
    rebuilt now from its seed) and ``val.jsonl`` (the pairs it is validated on)."""
    root = tmp_path_factory.mktemp("tiny-bert-source")
    _regenerate().build_source(root)
    return root


@pytest.fixture(scope="session")
def tiny_bert_hf(tiny_bert_source: Path) -> Path:
    """The Hugging Face model behind ``tiny_bert_folder`` (for comparisons with PyTorch)."""
    return tiny_bert_source / "hf"


@pytest.fixture(scope="session")
def tiny_bert_export(tiny_bert_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT of ``tiny_bert_folder`` exported now, as ``tests/fixtures/regenerate.py`` does."""
    out = tmp_path_factory.mktemp("tiny-bert-export") / "crossrank"
    return _regenerate().export(tiny_bert_source / "hf", tiny_bert_source / "val.jsonl", out)


@pytest.fixture(scope="session")
def real_model_folder(real_hf_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crossrank folder of the real model with all variants (exported once per test session)."""
    from crossrank.export import export_model

    out = tmp_path_factory.mktemp("real-export") / "crossrank-minilm-l6"
    export_model(real_hf_model, out, int8=True, fp16=True)
    return out
