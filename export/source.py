"""The source model: find it (hub id or local folder), check it is a cross-encoder, load it.

Everything that can be wrong with the source ends here as one :class:`SourceModelError` line:
a missing folder, a hub refusal or network error, a bare encoder / bi-encoder / decoder, pickle
weights without permission, a custom architecture (``auto_map``) without ``trust_remote_code``, corrupt weights, a checkpoint whose classification head is missing.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossrank.errors import InvalidInputError, SourceModelError
from crossrank.manifest import ACTIVATIONS

__all__ = [
    "SourceModel",
    "resolve_source",
    "resolve_activation",
    "resolve_positive_label",
    "load_torch_model",
    "first_line",
]

log = logging.getLogger("crossrank.export")

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Files fetched from the hub: config, weights, tokenizer, sentence-transformers metadata.
_HUB_PATTERNS = [
    "config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
]
_HUB_PICKLE_PATTERNS = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")

# Families whose position ids start after the padding index (max_position_embeddings - pad - 1 usable).
ROBERTA_LIKE = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer", "roberta-prelayernorm", "mpnet", "ibert"}
)
# Decoder-only families: generative models, not cross-encoders, even with a classification head.
DECODER_TYPES = frozenset(
    {
        "gpt2", "gptj", "gpt_neo", "gpt_neox", "gpt_bigcode", "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe",
        "qwen3_moe", "gemma", "gemma2", "gemma3", "phi", "phi3", "opt", "bloom", "falcon", "mpt", "olmo", "olmo2", "stablelm",
        "starcoder2", "codegen", "ctrl", "transfo-xl", "xglm", "biogpt", "persimmon", "cohere", "granite",
    }
)
_GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM", "ForMaskedLM", "ForPreTraining")
_ACTIVATION_NAMES = {"sigmoid": "sigmoid", "identity": "identity", "softmax": "softmax"}
# Label names that obviously mean "relevant" (compared lower-cased, whole name).
POSITIVE_LABEL_NAMES = frozenset(
    {"entailment", "entailed", "entails", "relevant", "relevance", "positive", "yes", "true", "match", "related", "paraphrase", "duplicate"}
)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors can span pages)."""
    text = str(err).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line or type(err).__name__


@dataclass(frozen=True)
class SourceModel:
    """A checked source folder and the facts read from its config."""

    id: str  # as the user named it (hub id or local path)
    folder: Path  # local folder holding the files (a hub snapshot for hub ids)
    local: bool
    revision: str | None
    commit: str | None  # the hub snapshot's commit, when downloaded
    config: Any  # transformers.PretrainedConfig
    raw_config: dict[str, Any] = field(repr=False)
    architecture: str = ""
    model_type: str = ""
    num_labels: int = 1
    labels: tuple[str, ...] = ()
    weights_file: str = ""
    weights_format: str = "safetensors"  # or "pickle"
    trust_remote_code: bool = False  # the user allowed the repository's own modelling code to run

    def position_limit(self) -> int | None:
        """Tokens the model's position embeddings can hold (RoBERTa's padding offset removed)."""
        n = getattr(self.config, "max_position_embeddings", None)
        if not isinstance(n, int) or n <= 0:
            return None
        if self.model_type in ROBERTA_LIKE:
            pad = getattr(self.config, "pad_token_id", 1)
            n -= (pad if isinstance(pad, int) else 1) + 1
        return n


# -- finding the folder ------------------------------------------------------------------------
def resolve_source(
    source: str | os.PathLike[str], *, revision: str | None = None, allow_pickle: bool = False, trust_remote_code: bool = False
) -> SourceModel:
    """Locate ``source`` (an existing local folder, else a hub id) and check what it holds.

    A config with ``auto_map`` (a custom architecture whose Python code ships with the model) is
    refused unless ``trust_remote_code`` is True, since loading it runs that code.

    Raises:
        SourceModelError: any of the problems in the module docstring, named.
        InvalidInputError: ``revision`` given for a local folder.
    """
    if not isinstance(trust_remote_code, bool):
        raise InvalidInputError(f"trust_remote_code must be True or False, not {trust_remote_code!r}")
    text = os.fspath(source)
    if not text.strip():
        raise SourceModelError("no source model given: name a Hugging Face hub id or a local model folder")
    path = Path(text).expanduser()
    if path.exists():
        if revision is not None:
            raise InvalidInputError(f"revision={revision!r} applies to hub ids only, but {text!r} is a local folder")
        return _inspect_folder(
            path.resolve(), ident=str(path.resolve()), local=True, revision=None, commit=None, allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
        )
    if text.startswith((".", "/", "~", "\\")) or not _HUB_ID.match(text):
        raise SourceModelError(f"model folder {text!r} does not exist")
    folder, commit = _download(text, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return _inspect_folder(
        folder, ident=text, local=False, revision=revision, commit=commit, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )


def _download(repo_id: str, *, revision: str | None, allow_pickle: bool, trust_remote_code: bool = False) -> tuple[Path, str | None]:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as err:  # pragma: no cover - transformers depends on huggingface_hub
        raise SourceModelError(f"{repo_id!r} is not a local folder and huggingface_hub is not installed to fetch it") from err

    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    # a custom architecture's modelling code is fetched only when the user agreed to run it
    patterns = _HUB_PATTERNS + (_HUB_PICKLE_PATTERNS if allow_pickle else []) + (["*.py"] if trust_remote_code else [])
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError as err:
        raise SourceModelError(f"{where} is a gated model on the Hugging Face hub: accept its terms and log in (hf auth login)") from err
    except RepositoryNotFoundError as err:
        raise SourceModelError(f"{where}: no such model on the Hugging Face hub (or it is private), and no local folder of that name") from err
    except RevisionNotFoundError as err:
        raise SourceModelError(f"{where}: the Hugging Face hub has no such revision") from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise SourceModelError(
            f"cannot fetch {where} from the Hugging Face hub: the network is unreachable or refused (or HF_HUB_OFFLINE is set) "
            "and the model is not in the local cache; no local folder of that name exists either"
        ) from err
    except HfHubHTTPError as err:
        raise SourceModelError(f"cannot fetch {where} from the Hugging Face hub: {first_line(err)}") from err
    except (OSError, ValueError) as err:
        raise SourceModelError(f"cannot fetch {where} from the Hugging Face hub: {first_line(err)}") from err
    commit = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else None
    if not allow_pickle and not any((path / name).is_file() for name in SAFETENSORS_FILES):
        # Only the pickle weights were left behind by the download filter: say so precisely.
        try:
            from huggingface_hub import list_repo_files

            remote = set(list_repo_files(repo_id, revision=revision))
        except Exception:  # noqa: BLE001 - the message below is only more precise with it
            remote = set()
        pickles = [name for name in PICKLE_FILES if name in remote]
        if pickles:
            raise SourceModelError(
                f"{where} has only pickle weights ({pickles[0]}), which can run code when loaded; "
                "pass allow_pickle=True (--allow-pickle) if you trust the source"
            )
    return path, commit


# -- checking what the folder holds ------------------------------------------------------------
def _inspect_folder(
    folder: Path, *, ident: str, local: bool, revision: str | None, commit: str | None, allow_pickle: bool,
    trust_remote_code: bool = False,
) -> SourceModel:
    if not folder.is_dir():
        raise SourceModelError(f"{ident!r} is a file, not a model folder")
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise SourceModelError(f"cannot read the model folder {ident!r}: {err.strerror or err}") from err
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "nothing"
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise SourceModelError(f"{ident!r} is not a Hugging Face model folder: no config.json (found: {shown})")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceModelError(f"{cfg_path}: cannot read config.json: {first_line(err)}") from err
    if not isinstance(raw, dict):
        raise SourceModelError(f"{cfg_path}: config.json is not a JSON object")
    auto_map = raw.get("auto_map")
    if auto_map and not trust_remote_code:
        classes = ", ".join(f"{k} -> {v}" for k, v in auto_map.items()) if isinstance(auto_map, dict) else str(auto_map)
        raise SourceModelError(
            f"{ident!r} needs trust_remote_code: its config.json maps {classes} to Python code shipped with the model "
            "(a custom architecture), and loading it runs that code on this machine; "
            "pass trust_remote_code=True (--trust-remote-code) only if you trust the source"
        )

    model_type = str(raw.get("model_type") or "")
    archs = [a for a in (raw.get("architectures") or []) if isinstance(a, str)]
    classifiers = [a for a in archs if a.endswith("ForSequenceClassification")]
    expected = "a sequence-classification cross-encoder (*ForSequenceClassification, e.g. cross-encoder/ms-marco-MiniLM-L-6-v2)"
    if _is_bi_encoder(folder) and not classifiers:
        raise SourceModelError(
            f"{ident!r} is a sentence-transformers bi-encoder (modules.json with a Pooling module over "
            f"{', '.join(archs) or model_type or 'a bare encoder'}), not a cross-encoder; crossrank exports {expected}"
        )
    if model_type in DECODER_TYPES or raw.get("is_decoder") or any(a.endswith(_GENERATIVE_SUFFIXES[:4]) for a in archs):
        raise SourceModelError(
            f"{ident!r} is a decoder / generative model ({', '.join(archs) or model_type}); crossrank exports {expected}"
        )
    if archs and not classifiers:
        kind = _describe(archs)
        raise SourceModelError(f"{ident!r} holds {', '.join(archs)} ({kind}), not a sequence classifier; crossrank exports {expected}")

    weights_file, weights_format = _find_weights(folder, ident=ident, allow_pickle=allow_pickle, shown=shown)
    config = _load_config(folder, ident, trust_remote_code=trust_remote_code)
    if not classifiers:  # no `architectures`: trust the config's model type, the weights check decides
        classifiers = [f"{type(config).__name__.replace('Config', '')}ForSequenceClassification"]
    labels = _labels(config)
    return SourceModel(
        id=ident,
        folder=folder,
        local=local,
        revision=revision,
        commit=commit,
        config=config,
        raw_config=raw,
        architecture=classifiers[0],
        model_type=config.model_type or model_type,
        num_labels=len(labels),
        labels=labels,
        weights_file=weights_file,
        weights_format=weights_format,
        trust_remote_code=trust_remote_code,
    )


def _is_bi_encoder(folder: Path) -> bool:
    modules = folder / "modules.json"
    if not modules.is_file():
        return False
    try:
        text = modules.read_text(encoding="utf-8")
    except OSError:
        return False
    return "sentence_transformers.models.Pooling" in text


def _describe(archs: list[str]) -> str:
    a = archs[0]
    if a.endswith("Model"):
        return "a bare encoder without a classification head"
    if a.endswith(("ForMaskedLM", "ForPreTraining")):
        return "a masked-language-model pre-training checkpoint"
    if a.endswith(("ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice")):
        return "a model for another task"
    return "not a sequence classifier"


def _find_weights(folder: Path, *, ident: str, allow_pickle: bool, shown: str) -> tuple[str, str]:
    for name in SAFETENSORS_FILES:
        if (folder / name).is_file():
            return name, "safetensors"
    pickles = [name for name in PICKLE_FILES if (folder / name).is_file()]
    if pickles and allow_pickle:
        return pickles[0], "pickle"
    if pickles:
        raise SourceModelError(
            f"{ident!r} has only pickle weights ({pickles[0]}), which can run code when loaded; "
            "pass allow_pickle=True (--allow-pickle) if you trust the source, or convert it to safetensors"
        )
    raise SourceModelError(f"{ident!r} has no PyTorch weights (model.safetensors or pytorch_model.bin; found: {shown})")


def _load_config(folder: Path, ident: str, *, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - transformers raises ValueError/KeyError/OSError for unknown types
        raise SourceModelError(f"{ident!r}: transformers cannot read its config.json: {first_line(err)}") from err


def _labels(config: Any) -> tuple[str, ...]:
    id2label = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", len(id2label)) or len(id2label) or 1)
    return tuple(str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n))


# -- score semantics ---------------------------------------------------------------------------
def resolve_activation(src: SourceModel, override: str | None) -> tuple[str, str]:
    """(activation, where it came from): the override, the config's sentence-transformers entry, or the default."""
    if override is not None:
        if override not in ACTIVATIONS:
            raise InvalidInputError(f"activation {override!r} is not one of {', '.join(ACTIVATIONS)}")
        chosen, origin = override, "set by the user"
    else:
        st = src.raw_config.get("sentence_transformers")
        spec, origin = None, ""
        if isinstance(st, dict) and st.get("activation_fn"):
            spec, origin = st["activation_fn"], "config.json sentence_transformers.activation_fn"
        elif src.raw_config.get("sbert_ce_default_activation_function"):
            spec, origin = src.raw_config["sbert_ce_default_activation_function"], "config.json sbert_ce_default_activation_function"
        if spec is not None:
            chosen = _ACTIVATION_NAMES.get(str(spec).rsplit(".", 1)[-1].lower())
            if chosen is None:
                raise SourceModelError(
                    f"{origin} is {spec!r}, which crossrank cannot reproduce (it knows {', '.join(ACTIVATIONS)}); "
                    "choose one with activation=... (--activation)"
                )
            origin = f"{origin} ({spec})"
        else:
            # sentence-transformers' CrossEncoder default for one label; a probability for several.
            chosen = "sigmoid" if src.num_labels == 1 else "softmax"
            origin = f"config.json names none; default for {src.num_labels} label{'s' if src.num_labels != 1 else ''}"
    if chosen == "softmax" and src.num_labels < 2:
        raise SourceModelError(
            f"activation softmax ({origin}) needs at least 2 labels, but the model has 1; use sigmoid or identity (--activation)"
        )
    return chosen, origin


def resolve_positive_label(labels: tuple[str, ...], override: int | str | None) -> int:
    """Index of the logit that means "relevant"."""
    n = len(labels)
    listing = ", ".join(f"{i}={name}" for i, name in enumerate(labels))
    if override is not None:
        if isinstance(override, bool):
            raise InvalidInputError(f"positive_label must be a label name or index, not {override!r}")
        if isinstance(override, int):
            if not 0 <= override < n:
                raise InvalidInputError(f"positive_label {override} is out of range: the model has {n} label(s) ({listing})")
            return override
        if isinstance(override, str):
            if override in labels:
                return labels.index(override)
            folded = [i for i, name in enumerate(labels) if name.lower() == override.strip().lower()]
            if len(folded) == 1:
                return folded[0]
            if override.strip().isdigit():
                return resolve_positive_label(labels, int(override.strip()))
            raise InvalidInputError(f"positive_label {override!r} is not one of the model's labels ({listing})")
        raise InvalidInputError(f"positive_label must be a label name or index, not {type(override).__name__}")
    if n == 1:
        return 0
    matches = [i for i, name in enumerate(labels) if name.strip().lower() in POSITIVE_LABEL_NAMES]
    if len(matches) == 1:
        return matches[0]
    raise SourceModelError(
        f"the model has {n} labels ({listing}) and "
        + ("several look relevant" if matches else "none is obviously the relevant/entailment one")
        + "; name the label that means relevant with positive_label=NAME|INDEX (--positive-label)"
    )


# -- loading the PyTorch model -----------------------------------------------------------------
def load_torch_model(src: SourceModel):
    """Load the classifier in float32, refusing a checkpoint whose weights do not cover the model."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            src.folder,
            config=src.config,
            use_safetensors=src.weights_format == "safetensors",
            dtype=torch.float32,
            output_loading_info=True,
            local_files_only=True,
            trust_remote_code=src.trust_remote_code,
        )
    except Exception as err:  # noqa: BLE001 - safetensors, torch and transformers raise many types
        raise SourceModelError(f"cannot load the weights of {src.id!r} ({src.weights_file}): {first_line(err)}") from err
    missing = list(info.get("missing_keys") or [])
    mismatched = [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or []]
    if missing or mismatched:
        bad = missing or mismatched
        raise SourceModelError(
            f"{src.id!r} is not a trained {src.architecture}: its weights lack {', '.join(bad[:4])}"
            + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
            + " (the classification head would be random); crossrank exports trained cross-encoders"
        )
    model.eval()
    return model
