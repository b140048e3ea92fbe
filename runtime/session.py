"""One onnxruntime session per Reranker: provider choice, options, input checks, runs.

Provider choice (``provider=``):

* ``"cpu"``  - CPUExecutionProvider.
* ``"cuda"`` - CUDAExecutionProvider, or :class:`~crossrank.errors.ProviderError` when the installed
  onnxruntime has none (``pip install "crossrank[gpu]"``) or the session could not get it.
* ``"auto"`` - CUDA when onnxruntime offers it and the session really gets it, else CPU, saying so
  in the log. :func:`candidate_providers` lists what to try, in order; :meth:`crossrank.Reranker.load`
  tries them in a plain loop.

Option names (``provider``, ``variant``, ``graph_optimization``) follow :mod:`crossrank.choices`:
any case, surrounding whitespace ignored (``"CPU"``, ``" Auto "``, ``"INT8"``). Which variant a
provider gets is decided with the manifest (:func:`crossrank.manifest.resolve_variant`).

onnxruntime's own exceptions become crossrank's in one place, :func:`ort_errors`, around session
start and every run.

On CUDA, batches go through I/O binding: each input is copied to the device once, the logits are
read back once. onnxruntime's ``InferenceSession.run`` is thread-safe, so one session serves every
thread; all per-call state (feeds, bindings) is local to the call.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .batching import pad_rows
from .checks import flag, int_at_least
from .choices import canonical_choice
from .errors import CrossrankError, InferenceError, InvalidInputError, ModelFolderError, ProviderError
from .manifest import AUTO_VARIANTS, MANIFEST_NAME, Manifest, resolve_variant
from .tokenize import Encoded

__all__ = [
    "PROVIDERS",
    "GRAPH_OPTIMIZATION_LEVELS",
    "SessionOptions",
    "FeedSpec",
    "OnnxSession",
    "available_providers",
    "resolve_provider",
    "candidate_providers",
    "choose_variant",
    "ort_errors",
    "AUTO_VARIANTS",
]

log = logging.getLogger("crossrank.session")

PROVIDERS = ("auto", "cpu", "cuda")
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
_ORT_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_GPU_HINT = 'install the GPU build with `pip install "crossrank[gpu]"` (onnxruntime-gpu, which replaces onnxruntime)'
_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32", "tensor(float16)": "float16"}
# onnxruntime's exception types that say the model file itself is unusable, whatever the provider.
_MODEL_FILE_ERRORS = ("InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel", "ModelLoaded")


def _ort() -> Any:
    import onnxruntime  # noqa: PLC0415 - imported on first load, not on `import crossrank`

    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers the installed onnxruntime offers, e.g. ``["CPUExecutionProvider"]``."""
    return list(_ort().get_available_providers())


def resolve_provider(provider: str) -> str:
    """``"auto"``/``"cpu"``/``"cuda"`` (any case) -> the provider to try first (``"cpu"`` or ``"cuda"``).

    Raises:
        InvalidInputError: not one of those names.
        ProviderError: ``"cuda"`` with an onnxruntime that offers no CUDAExecutionProvider.
    """
    provider = canonical_choice(provider, PROVIDERS, what="provider")
    has_cuda = _ORT_PROVIDER["cuda"] in available_providers()
    if provider == "cuda" and not has_cuda:
        raise ProviderError(
            "provider='cuda' was asked for but this onnxruntime has no CUDAExecutionProvider "
            f"(it offers {', '.join(available_providers())}); {_GPU_HINT}"
        )
    if provider == "auto":
        if not has_cuda:  # the plain CPU build: nothing to fall back from
            log.debug("provider auto: this onnxruntime has no CUDAExecutionProvider, using the CPU")
        return "cuda" if has_cuda else "cpu"
    return provider


def candidate_providers(provider: str) -> tuple[str, ...]:
    """The providers to try, in order, for ``provider=``: ``("cuda", "cpu")`` for ``"auto"`` with an
    onnxruntime that offers CUDA (a CUDA that fails to start falls back to the CPU), else the one
    provider (``"cuda"`` is never silently replaced).

    Raises:
        InvalidInputError / ProviderError: as :func:`resolve_provider`.
    """
    first = resolve_provider(provider)
    auto = canonical_choice(provider, PROVIDERS, what="provider") == "auto"
    return ("cuda", "cpu") if auto and first == "cuda" else (first,)


def choose_variant(manifest: Manifest, variant: str, provider: str) -> str:
    """:func:`crossrank.manifest.resolve_variant` under its earlier name (``crossrank.ray`` uses it)."""
    return resolve_variant(manifest, variant, provider=provider)


@contextmanager
def ort_errors(model_path: Path, *, providers: Sequence[str], feeds: Mapping[str, np.ndarray] | None = None) -> Iterator[None]:
    """Translate onnxruntime's exceptions raised inside the block into crossrank's (``raise ... from``).

    The one boundary between onnxruntime and crossrank's error tree. The decision rests on what is
    known, not on the error's text: during a run (``feeds`` given) any failure is an
    :class:`InferenceError` naming the batch shapes and the providers that ran it; at session
    start, an error type saying the file is no ONNX model (``InvalidProtobuf``, ``InvalidGraph``,
    ``NoSuchFile``...) is a :class:`ModelFolderError`, and any other failure is a
    :class:`ProviderError` when CUDA was among the requested ``providers`` (the CPU provider
    starts any valid file), else a :class:`ModelFolderError`.

    Args:
        model_path: the ONNX file, named in every message.
        providers: onnxruntime provider names: requested ones at start, granted ones
            (``InferenceSession.get_providers()``) during runs.
        feeds: a run's inputs (name -> array of shape (batch, length)); None at session start.

    Raises:
        InferenceError, ModelFolderError, ProviderError: as above; crossrank's own errors pass
        through unchanged.
    """
    try:
        yield
    except CrossrankError:
        raise
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException/... types
        on = ", ".join(providers)
        if feeds is not None:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise InferenceError(f"onnxruntime failed on a batch of shape {shapes} with {model_path.name} on {on}: {err}") from err
        if _ORT_PROVIDER["cuda"] in providers and not _is_model_file_error(err):
            raise ProviderError(f"the CUDA execution provider failed to start {model_path.name}: {err}; {_GPU_HINT}") from err
        raise ModelFolderError(
            f"{model_path}: onnxruntime cannot load this model file ({type(err).__name__}: {err}); "
            "the file is corrupt or not an ONNX model. Re-export the model.",
            path=model_path,
        ) from err


def _is_model_file_error(err: BaseException) -> bool:
    state = _ort().capi.onnxruntime_pybind11_state
    kinds = tuple(getattr(state, name) for name in _MODEL_FILE_ERRORS if isinstance(getattr(state, name, None), type))
    return isinstance(err, kinds)


@dataclass(frozen=True)
class SessionOptions:
    """onnxruntime settings of a Reranker's session, checked on construction.

    Fields are those of :meth:`crossrank.Reranker.load` (defaults there): ``threads`` (None =
    onnxruntime's default, one per physical core), ``graph_optimization``, ``spinning``,
    ``memory_arena``, ``device_id``, ``cache_dir`` (optimized-graph cache, CPU only; None = off)
    and ``custom``: a caller's own ``onnxruntime.SessionOptions``, used instead of the one
    :meth:`to_ort` builds (so ``threads`` must then be None, and the other session settings
    their defaults; the graph cache is off).

    Raises:
        InvalidInputError: a field out of range or conflicting with ``custom``, naming it.
    """

    threads: int | None = None
    graph_optimization: str = "all"
    spinning: bool = True
    memory_arena: bool = True
    device_id: int = 0
    cache_dir: Path | None = None
    custom: Any = None  # onnxruntime.SessionOptions | None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalized values are stored once, here
        set_(self, "threads", int_at_least("threads", self.threads, 1, none="onnxruntime's default: one per physical core"))
        # One spelling rule (crossrank.choices): "ALL", " basic " name the canonical level.
        set_(self, "graph_optimization", canonical_choice(self.graph_optimization, GRAPH_OPTIMIZATION_LEVELS, what="graph_optimization"))
        set_(self, "spinning", flag("spinning", self.spinning))
        set_(self, "memory_arena", flag("memory_arena", self.memory_arena))
        set_(self, "device_id", int_at_least("device_id", self.device_id, 0))
        if self.custom is not None:
            self._check_custom()

    def _check_custom(self) -> None:
        ort = _ort()
        if not isinstance(self.custom, ort.SessionOptions):
            raise InvalidInputError(f"session_options must be an onnxruntime.SessionOptions; got {type(self.custom).__name__}")
        if self.threads is not None:
            raise InvalidInputError(
                f"threads={self.threads} conflicts with session_options: set intra_op_num_threads on your "
                "onnxruntime.SessionOptions instead (crossrank applies none of its session settings to yours)"
            )
        changed = [f"{n}={getattr(self, n)!r}" for n, default in (("graph_optimization", "all"), ("spinning", True), ("memory_arena", True)) if getattr(self, n) != default]
        if changed:
            raise InvalidInputError(
                f"{', '.join(changed)} conflicts with session_options: set graph_optimization_level, "
                "the session.intra_op.allow_spinning config entry or enable_cpu_mem_arena on your onnxruntime.SessionOptions instead"
            )
        set_ = object.__setattr__
        set_(self, "cache_dir", None)  # the cache key covers crossrank's own settings only

    def to_ort(self, *, graph_optimization: str | None = None) -> Any:
        """The ``onnxruntime.SessionOptions`` to start a session with: ``custom`` as given, else
        one built from these fields (``graph_optimization`` overrides the level, for a graph
        that is already optimized)."""
        if self.custom is not None:
            return self.custom
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization or self.graph_optimization]
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_cpu_mem_arena = self.memory_arena
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        so.log_severity_level = 3  # errors only: ORT's own warnings are not the user's business
        return so


@dataclass(frozen=True)
class FeedSpec:
    """What one run feeds the graph, bound once at load from the manifest: the input names in the
    manifest's order, their dtypes, and the padding token."""

    names: tuple[str, ...]
    dtypes: tuple[np.dtype, ...]
    pad_token_id: int

    @classmethod
    def of(cls, manifest: Manifest) -> "FeedSpec":
        return cls(
            names=tuple(i.name for i in manifest.inputs),
            dtypes=tuple(np.dtype(i.dtype) for i in manifest.inputs),
            pad_token_id=int(manifest.tokenizer.pad_token_id),
        )

    def pad(self, parts: Sequence[tuple[Encoded, Sequence[int] | np.ndarray]]) -> dict[str, np.ndarray]:
        """Padded feeds of ``[(encoded, rows), ...]`` (see :func:`crossrank.batching.pad_rows`):
        arrays of shape (rows, longest pair), right-padded."""
        return pad_rows(parts, input_names=self.names, input_dtypes=self.dtypes, pad_token_id=self.pad_token_id)


class OnnxSession:
    """An onnxruntime InferenceSession over one variant file on one provider, with its inputs
    checked and its feed settings bound once (:attr:`feed`).

    Raises (on construction):
        ModelFolderError: the file is no usable ONNX model, or its inputs/outputs do not match the
            manifest.
        ProviderError: ``provider="cuda"`` and the CUDA provider failed to start or was not granted.
    """

    def __init__(self, model_path: Path, *, manifest: Manifest, sha256: str, provider: str, options: SessionOptions) -> None:
        ort = _ort()
        self.model_path = Path(model_path)
        self.cached_graph: Path | None = None  # the optimized graph this session was started from, if any
        spec = next((v for v in manifest.variants.values() if v.file == self.model_path.name), None)
        self.data_files = _data_files(self.model_path, spec)
        if provider == "cuda":
            cuda_options: dict[str, Any] = {"device_id": options.device_id}
            if spec is not None and spec.precision == "fp32":
                # onnxruntime's CUDA provider multiplies fp32 in TF32 by default (10-bit mantissa) on
                # Ampere and later: the real MiniLM-L6's fp32 variant then moved 2.2e-3 logit from the
                # CPU's on an H200 (benchmarks/gpu_check.py, docs/gpu.md). An fp32 variant promises fp32
                # numerics; fp16 is the fast one on a GPU.
                cuda_options["use_tf32"] = 0
            providers: list[Any] = [(_ORT_PROVIDER["cuda"], cuda_options), _ORT_PROVIDER["cpu"]]
        else:
            providers = [_ORT_PROVIDER["cpu"]]
        with ort_errors(self.model_path, providers=[_ORT_PROVIDER[provider]]):
            sess = None
            if provider == "cpu" and options.cache_dir is not None and options.graph_optimization != "disable":
                sess = self._start_cached(ort, sha256, options, providers)
            if sess is None:
                sess = ort.InferenceSession(str(self.model_path), sess_options=options.to_ort(), providers=providers)
        granted = list(sess.get_providers())
        # onnxruntime may quietly start CUDA's session on the CPU alone (no driver, wrong libraries).
        if _ORT_PROVIDER[provider] not in granted:
            raise ProviderError(
                f"onnxruntime did not grant {_ORT_PROVIDER[provider]} for {self.model_path.name} (granted: {', '.join(granted)}); "
                f"check the CUDA/cuDNN libraries and the GPU, or {_GPU_HINT}"
            )
        self.provider = provider
        self.providers = granted
        self._sess = sess
        self._device_id = options.device_id
        self._check_io(manifest)
        self.feed = FeedSpec.of(manifest)
        # The names and dtypes fed (crossrank.scheduler pads with them too).
        self.input_names: tuple[str, ...] = self.feed.names
        self.input_dtypes: tuple[np.dtype, ...] = self.feed.dtypes

    def _start_cached(self, ort: Any, sha256: str, options: SessionOptions, providers: list[Any]) -> Any:
        """A CPU session from the cached optimized graph, or from the model while caching its
        optimized graph; None when the cache cannot be used (the caller starts normally)."""
        from . import graph_cache  # noqa: PLC0415

        assert options.cache_dir is not None
        entry = graph_cache.cache_entry(
            options.cache_dir,
            self.model_path,
            sha256=sha256,
            level=options.graph_optimization,
            ort_version=ort.__version__,
            data_files=self.data_files,
        )
        if entry is None:
            return None
        if entry.is_file():
            try:
                sess = ort.InferenceSession(str(entry), sess_options=options.to_ort(graph_optimization="disable"), providers=providers)
                self.cached_graph = entry
                return sess
            except Exception as err:  # a damaged entry: drop it and start from the model
                log.debug("ignoring the cached graph %s: %s", entry, err)
                graph_cache.discard(entry)
        tmp = graph_cache.store_path(entry)
        if tmp is None:
            return None
        so = options.to_ort()
        so.optimized_model_filepath = str(tmp)
        side = tmp.with_name(graph_cache.data_file_for(tmp)) if self.data_files else None
        if side is not None:  # a graph over 2 GB: its optimized copy needs external data too
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", side.name)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            sess = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception:
            graph_cache.discard(tmp)
            if side is not None:
                graph_cache.discard(side)
            raise
        graph_cache.commit(tmp, entry)
        return sess

    def _check_io(self, manifest: Manifest) -> None:
        where = f"{self.model_path.name} vs {MANIFEST_NAME}"
        graph_inputs = {i.name: _ORT_DTYPES.get(i.type, i.type) for i in self._sess.get_inputs()}
        declared = {i.name: i.dtype for i in manifest.inputs}
        if graph_inputs != declared:
            raise ModelFolderError(
                f"{self.model_path}: the graph's inputs {graph_inputs} do not match the manifest's {declared} ({where}); "
                "the folder mixes files from different exports. Re-export the model.",
                path=self.model_path,
            )
        outputs = {o.name: o for o in self._sess.get_outputs()}
        out = outputs.get(manifest.output.name)
        if out is None:
            raise ModelFolderError(
                f"{self.model_path}: the graph has no output {manifest.output.name!r} (it has {sorted(outputs)}; {where})",
                path=self.model_path,
            )
        if out.type not in ("tensor(float)", "tensor(float16)"):
            raise ModelFolderError(f"{self.model_path}: output {out.name!r} has type {out.type}, expected float", path=self.model_path)
        last = out.shape[-1] if out.shape else None
        if isinstance(last, int) and last != manifest.num_labels:
            raise ModelFolderError(
                f"{self.model_path}: output {out.name!r} has {last} labels but the manifest says num_labels={manifest.num_labels} ({where})",
                path=self.model_path,
            )
        self.output_name = out.name
        self.num_labels = manifest.num_labels

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch.

        Args:
            feeds: input name -> array of shape (batch, length), as :attr:`feed` pads them.

        Returns:
            float32 logits of shape (batch, num_labels).

        Raises:
            InferenceError: onnxruntime failed, or returned logits of another shape.
        """
        rows = len(next(iter(feeds.values())))
        with ort_errors(self.model_path, providers=self.providers, feeds=feeds):
            if self.provider == "cuda":
                binding = self._sess.io_binding()
                for name, arr in feeds.items():
                    binding.bind_cpu_input(name, arr)  # one host->device copy per input
                binding.bind_output(self.output_name, "cuda", self._device_id)
                self._sess.run_with_iobinding(binding)
                out = binding.copy_outputs_to_cpu()[0]  # one device->host read
            else:
                out = self._sess.run([self.output_name], dict(feeds))[0]
        out = np.asarray(out)
        if out.ndim == 1:
            out = out[:, None]
        if out.shape != (rows, self.num_labels):
            raise InferenceError(
                f"{self.model_path.name} returned logits of shape {out.shape}; expected ({rows}, {self.num_labels})"
            )
        return out.astype(np.float32, copy=False)


def _data_files(model_path: Path, spec: Any) -> tuple[Path, ...]:
    """The external data files the manifest lists for ``model_path`` (``spec``: its variant entry,
    None when the manifest has none for it), each checked to exist."""
    files = tuple(model_path.parent / d.file for d in (spec.data_files if spec is not None else ()))
    for path in files:
        if not path.is_file():
            raise ModelFolderError(
                f"{path}: file named in {MANIFEST_NAME} is missing ({model_path.name} keeps its weights in it); "
                "copy the whole model folder, or re-export the model",
                path=path,
            )
    return files
