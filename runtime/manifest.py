"""The model folder's manifest, ``crossrank.json``: the one contract between export and runtime.

A crossrank model folder holds::

    crossrank.json      this manifest (schema_version, model facts, variants, validation figures)
    tokenizer.json      a `tokenizers` tokenizer, pair truncation keeping the query baked in
    model.onnx          fp32 export                       (variant "fp32")
    model.opt.onnx      ORT transformer fusions           (variant "optimized")
    model.int8.onnx     int8 for the CPU                  (variant "int8", opt-in)
    model.fp16.onnx     fp16 for CUDA                     (variant "fp16", opt-in)
    model.onnx.data     the weights of a variant over 2 GB (ONNX external data; one per such
                        variant, listed in its ``data_files`` with its own sha256)

The export side writes a :class:`Manifest` with :meth:`Manifest.to_dict`; the runtime reads it
with :func:`load_manifest`, which checks everything it relies on and reports every problem at
once in one :class:`~crossrank.errors.ManifestError`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

from .choices import normalize
from .errors import IntegrityError, InvalidInputError, ManifestError, ModelFolderError, VariantNotFoundError

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "ACTIVATIONS",
    "PRECISIONS",
    "InputSpec",
    "OutputSpec",
    "TokenizerSpec",
    "VariantSpec",
    "DataFileSpec",
    "Manifest",
    "load_manifest",
    "resolve_variant",
    "AUTO_VARIANTS",
    "sha256_file",
    "is_model_folder",
]

MANIFEST_NAME = "crossrank.json"
SCHEMA_VERSION = 1
ACTIVATIONS = ("identity", "sigmoid", "softmax")
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_DTYPES = ("int64", "int32")
# variant="auto", per provider, best first: int8 is the fastest validated graph on a CPU, fp16 on
# CUDA (whose int8 kernels onnxruntime does not use); optimized, then fp32, when those are missing.
AUTO_VARIANTS: Mapping[str, tuple[str, ...]] = {"cpu": ("int8", "optimized", "fp32"), "cuda": ("fp16", "optimized", "fp32")}


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class InputSpec:
    """One graph input, as the ONNX graph declares it (the runtime feeds exactly these)."""

    name: str
    dtype: str = "int64"


@dataclass(frozen=True)
class OutputSpec:
    name: str = "logits"
    dtype: str = "float32"


@dataclass(frozen=True)
class TokenizerSpec:
    file: str = "tokenizer.json"
    sha256: str = ""
    # The pair truncation baked into tokenizer.json: "only_second" cuts the document, never the query.
    truncation: str = "only_second"
    pad_token_id: int = 0
    pad_token: str = "[PAD]"
    # Tokens the pair template adds around query and document ([CLS] q [SEP] d [SEP] -> 3).
    num_special_tokens_pair: int = 3


@dataclass(frozen=True)
class DataFileSpec:
    """A file a variant's graph reads its weights from (ONNX external data), beside the graph."""

    file: str
    sha256: str
    bytes: int = 0


@dataclass(frozen=True)
class VariantSpec:
    """One ONNX file of the folder.

    ``settings`` records how it was made (optimizer fusions and their counts, quantization scheme
    and instruction-set target...); ``validation`` the parity figures against PyTorch.
    """

    file: str
    sha256: str
    precision: str  # one of PRECISIONS
    bytes: int = 0
    providers: tuple[str, ...] = ("cpu", "cuda")  # which execution providers it is meant for
    settings: Mapping[str, Any] = field(default_factory=dict)
    validation: Mapping[str, Any] = field(default_factory=dict)
    # ONNX external data of a graph over 2 GB (empty: the weights are inside ``file``)
    data_files: tuple[DataFileSpec, ...] = ()


@dataclass(frozen=True)
class Manifest:
    source: Mapping[str, Any]  # {"id": hub id or local path, "revision": str | None, "local": bool}
    architecture: str  # e.g. "BertForSequenceClassification"
    model_type: str  # e.g. "bert"
    num_labels: int
    labels: tuple[str, ...]  # label names by index
    positive_label: int  # index of the logit that means "relevant"
    activation: str  # one of ACTIVATIONS; softmax is taken over all labels, then positive_label
    max_length: int  # tokens per pair, special tokens included
    inputs: tuple[InputSpec, ...]
    output: OutputSpec
    tokenizer: TokenizerSpec
    variants: Mapping[str, VariantSpec]
    opset: int = 17
    versions: Mapping[str, str] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["inputs"] = [asdict(i) for i in self.inputs]
        d["variants"] = {
            name: {
                **asdict(v),
                "providers": list(v.providers),
                "settings": dict(v.settings),
                "validation": dict(v.validation),
                "data_files": [asdict(d) for d in v.data_files],
            }
            for name, v in self.variants.items()
        }
        d["source"] = dict(self.source)
        d["versions"] = dict(self.versions)
        order = ["schema_version"] + [k for k in d if k != "schema_version"]
        return {k: d[k] for k in order}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def resolve_variant(self, variant: str = "auto", *, provider: str, among: Collection[str] | None = None) -> str:
        """This folder's variant for ``variant`` on ``provider``; see :func:`resolve_variant`."""
        return resolve_variant(self, variant, provider=provider, among=among)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str | Path | None = None) -> "Manifest":
        return _parse(data, path=path)


def resolve_variant(manifest: Manifest, variant: str = "auto", *, provider: str, among: Collection[str] | None = None) -> str:
    """The variant name to load: the one ``variant`` names, or the auto choice for ``provider``.

    The one variant resolution of crossrank: :meth:`crossrank.Reranker.load`, ``crossrank.ray``
    and ``crossrank.bench`` all call it.

    Args:
        manifest: the folder's manifest.
        variant: a variant name (any case, surrounding whitespace ignored, as
            :mod:`crossrank.choices`), or ``"auto"``: the first of :data:`AUTO_VARIANTS`
            ``[provider]`` the folder has (``int8``, ``optimized``, ``fp32`` on ``"cpu"``;
            ``fp16``, ``optimized``, ``fp32`` on ``"cuda"``); a folder with none of those gives
            its first variant meant for ``provider`` (``VariantSpec.providers``), else its first.
        provider: ``"cpu"`` or ``"cuda"``: where the session will run (already resolved, not
            ``"auto"``).
        among: only consider these variant names (the bench resolves among the variants it
            measures); None = every variant of the folder.

    Returns:
        A key of ``manifest.variants``.

    Raises:
        VariantNotFoundError: the named variant is not in the folder (or not in ``among``); the
            message lists the ones there are.
        InvalidInputError: ``variant`` is not a string, or ``provider`` is not cpu/cuda.
    """
    have = [name for name in manifest.variants if among is None or name in among]
    if not isinstance(variant, str):
        raise InvalidInputError(f"variant must be a string such as 'auto' or one of {have}; got {variant!r}")
    if provider not in AUTO_VARIANTS:
        raise InvalidInputError(f"provider must be one of {', '.join(AUTO_VARIANTS)} to choose a variant; got {provider!r}")
    key = normalize(variant)
    if key != "auto":
        for name in have:
            if normalize(name) == key:
                return name
        hint = f" (re-export with --{key} to add it)" if key in ("int8", "fp16") and key not in map(normalize, manifest.variants) else ""
        raise VariantNotFoundError(f"variant {variant!r} is not in this model folder; it has {', '.join(have) or 'none'} (any case){hint}")
    if not have:
        raise VariantNotFoundError(f"no variant to choose from: the folder has {', '.join(manifest.variants) or 'none'}, none of them among {sorted(among or ())}")
    for name in AUTO_VARIANTS[provider]:
        if name in have:
            return name
    # A folder with only unusual variant names: take the first one meant for this provider.
    for name in have:
        if provider in manifest.variants[name].providers:
            return name
    return have[0]


def is_model_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a crossrank manifest (whatever its validity)."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST_NAME).is_file()


def load_manifest(folder: str | Path) -> Manifest:
    """Read and validate ``folder/crossrank.json``.

    Raises :class:`ModelFolderError` when the folder or file is missing and
    :class:`ManifestError` (listing every problem) when the content is invalid.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ModelFolderError(f"model folder {str(folder)!r} does not exist", path=folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{str(folder)!r} is a file, not a crossrank model folder", path=folder)
    mpath = folder / MANIFEST_NAME
    if not mpath.is_file():
        found = sorted(p.name for p in folder.iterdir())[:20]
        raise ModelFolderError(
            f"{str(folder)!r} is not a crossrank model folder: no {MANIFEST_NAME} "
            f"(found: {', '.join(found) or 'nothing'}). Create one with `crossrank export MODEL {folder}`.",
            path=mpath,
        )
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{mpath}: cannot read the manifest: {err}", path=mpath) from err
    return _parse(data, path=mpath)


def verify_file(folder: str | Path, file: str, expected_sha256: str) -> Path:
    """Check that ``folder/file`` exists and has the recorded sha256; return its path.

    When ``file`` is a variant of the folder's manifest whose weights live in external data
    files (``data_files``), those are checked against their recorded sha256 too.
    """
    p = _verify_one(folder, file, expected_sha256)
    try:
        manifest = load_manifest(folder)
    except ModelFolderError:
        return p  # not a manifest's file: nothing more is recorded about it
    for spec in manifest.variants.values():
        if spec.file == file:
            for data in spec.data_files:
                _verify_one(folder, data.file, data.sha256)
    return p


def _verify_one(folder: str | Path, file: str, expected_sha256: str) -> Path:
    p = Path(folder) / file
    if not p.is_file():
        raise ModelFolderError(f"{p}: file named in {MANIFEST_NAME} is missing", path=p)
    actual = sha256_file(p)
    if actual != expected_sha256:
        raise IntegrityError(
            f"{p}: sha256 {actual[:16]}… differs from the manifest's {expected_sha256[:16]}…; "
            "the file was changed or is corrupt. Re-export the model (or load with verify=False to skip this check).",
            path=p,
        )
    return p


# -- validation ---------------------------------------------------------------------------------
def _parse(data: Any, *, path: str | Path | None) -> Manifest:
    where = str(path) if path is not None else MANIFEST_NAME
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where}: the manifest must be a JSON object", path=path)
    problems: list[str] = []

    def need(key: str, types: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in data:
            problems.append(f"missing field {key!r}")
            return default
        val = data[key]
        if not isinstance(val, types) or (isinstance(val, bool) and bool not in _as_tuple(types)):
            problems.append(f"field {key!r} has type {type(val).__name__}")
            return default
        return val

    schema = need("schema_version", int, 0)
    if isinstance(schema, int) and schema > SCHEMA_VERSION:
        raise ManifestError(
            f"{where}: schema_version {schema} is newer than this crossrank understands ({SCHEMA_VERSION}); "
            "upgrade crossrank (pip install -U crossrank) or re-export the model with this version.",
            path=path,
        )
    if isinstance(schema, int) and schema < 1:
        problems.append(f"schema_version {schema} is not a valid version")

    source = need("source", Mapping, {})
    architecture = need("architecture", str, "")
    model_type = need("model_type", str, "")
    num_labels = need("num_labels", int, 0)
    labels = need("labels", list, [])
    positive = need("positive_label", int, 0)
    activation = need("activation", str, "identity")
    max_length = need("max_length", int, 0)
    raw_inputs = need("inputs", list, [])
    raw_output = need("output", Mapping, {})
    raw_tok = need("tokenizer", Mapping, {})
    raw_variants = need("variants", Mapping, {})
    opset = data.get("opset", 17)
    versions = data.get("versions", {})

    if isinstance(num_labels, int) and num_labels < 1:
        problems.append(f"num_labels must be >= 1, got {num_labels}")
    if isinstance(labels, list) and isinstance(num_labels, int) and len(labels) != num_labels:
        problems.append(f"labels has {len(labels)} names but num_labels is {num_labels}")
    if isinstance(positive, int) and isinstance(num_labels, int) and not 0 <= positive < max(num_labels, 1):
        problems.append(f"positive_label {positive} is out of range for {num_labels} label(s)")
    if activation not in ACTIVATIONS:
        problems.append(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if activation == "softmax" and isinstance(num_labels, int) and num_labels < 2:
        problems.append("activation 'softmax' needs at least 2 labels")
    if isinstance(max_length, int) and max_length < 8:
        problems.append(f"max_length {max_length} is too small (at least 8)")

    inputs: list[InputSpec] = []
    for i, item in enumerate(raw_inputs if isinstance(raw_inputs, list) else []):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            problems.append(f"inputs[{i}] must be an object with a name")
            continue
        dtype = item.get("dtype", "int64")
        if dtype not in INPUT_DTYPES:
            problems.append(f"inputs[{i}] ({item['name']}) has dtype {dtype!r}; expected one of {INPUT_DTYPES}")
        inputs.append(InputSpec(name=item["name"], dtype=dtype))
    names = [i.name for i in inputs]
    for required in ("input_ids", "attention_mask"):
        if raw_inputs and required not in names:
            problems.append(f"inputs lack {required!r} (found {names})")
    unknown = set(names) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        problems.append(f"inputs include {sorted(unknown)}, which the runtime cannot produce")

    output = OutputSpec(
        name=str(raw_output.get("name", "logits")) if isinstance(raw_output, Mapping) else "logits",
        dtype=str(raw_output.get("dtype", "float32")) if isinstance(raw_output, Mapping) else "float32",
    )

    tok = TokenizerSpec()
    if isinstance(raw_tok, Mapping):
        try:
            tok = TokenizerSpec(**{k: raw_tok[k] for k in raw_tok if k in TokenizerSpec.__dataclass_fields__})
        except TypeError as err:  # pragma: no cover - dataclass accepts any values
            problems.append(f"tokenizer: {err}")

    variants: dict[str, VariantSpec] = {}
    if isinstance(raw_variants, Mapping):
        if not raw_variants:
            problems.append("variants is empty: the folder has no model file")
        for name, v in raw_variants.items():
            if not isinstance(v, Mapping):
                problems.append(f"variants.{name} must be an object")
                continue
            missing = [k for k in ("file", "sha256", "precision") if not isinstance(v.get(k), str)]
            if missing:
                problems.append(f"variants.{name} lacks {', '.join(missing)}")
                continue
            if v["precision"] not in PRECISIONS:
                problems.append(f"variants.{name}.precision {v['precision']!r} is not one of {PRECISIONS}")
            if "/" in v["file"] or "\\" in v["file"] or v["file"].startswith("."):
                problems.append(f"variants.{name}.file {v['file']!r} must be a plain file name inside the folder")
            data_files: list[DataFileSpec] = []
            raw_data = v.get("data_files", []) or []
            for j, d in enumerate(raw_data if isinstance(raw_data, list) else [None]):
                if not isinstance(d, Mapping) or not isinstance(d.get("file"), str) or not isinstance(d.get("sha256"), str):
                    problems.append(f"variants.{name}.data_files[{j}] must be an object with file and sha256")
                    continue
                if "/" in d["file"] or "\\" in d["file"] or d["file"].startswith("."):
                    problems.append(f"variants.{name}.data_files[{j}].file {d['file']!r} must be a plain file name inside the folder")
                data_files.append(DataFileSpec(file=d["file"], sha256=d["sha256"], bytes=int(d.get("bytes", 0) or 0)))
            variants[str(name)] = VariantSpec(
                file=v["file"],
                sha256=v["sha256"],
                precision=v["precision"],
                bytes=int(v.get("bytes", 0) or 0),
                providers=tuple(v.get("providers", ("cpu", "cuda"))),
                settings=dict(v.get("settings", {}) or {}),
                validation=dict(v.get("validation", {}) or {}),
                data_files=tuple(data_files),
            )

    if problems:
        raise ManifestError(f"{where}: invalid manifest: " + "; ".join(problems), path=path)
    return Manifest(
        schema_version=schema,
        source=dict(source),
        architecture=architecture,
        model_type=model_type,
        num_labels=num_labels,
        labels=tuple(str(x) for x in labels),
        positive_label=positive,
        activation=activation,
        max_length=max_length,
        inputs=tuple(inputs),
        output=output,
        tokenizer=tok,
        variants=variants,
        opset=int(opset) if isinstance(opset, int) else 17,
        versions=dict(versions) if isinstance(versions, Mapping) else {},
        created=str(data.get("created", "")),
    )


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)
