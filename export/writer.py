"""Safe writes and the one place the manifest is assembled.

:func:`assemble_manifest` turns the typed result of every variant builder
(:class:`VariantResult`) and its validation (:class:`~crossrank.export.validate.ValidationResult`)
into the folder's :class:`~crossrank.manifest.Manifest`; :func:`write_manifest` writes it atomically.

* The folder is built in a hidden staging folder in the same parent (same filesystem, so the
  final move is an atomic rename); scratch files live in a ``.work`` folder inside it. The
  staging folder gets the mode ``mkdir`` would give under the caller's umask
  (:func:`crossrank.atomic.mkdtemp`), not :mod:`tempfile`'s private 0700, and every file in it
  the mode ``open`` gives (onnx writes external data 0600), so the finished folder is as
  readable as any other the caller creates.
* An existing destination that is not a crossrank model folder is never touched
  (:class:`OutputExistsError`), except an empty folder. A crossrank folder is replaced only with
  ``force``: the old one is renamed aside, the new one moved in, then the old one deleted (and
  restored if the move fails).
* Any failure or interruption (``KeyboardInterrupt`` included) before the move deletes the staging
  folder: nothing is left behind. Only a hard kill can leave a hidden ``.NAME.crossrank-partial-*``.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from crossrank.atomic import apply_default_mode, mkdtemp, mkstemp
from crossrank.errors import ExportError, OutputExistsError
from crossrank.manifest import MANIFEST_NAME, DataFileSpec, Manifest, VariantSpec, is_model_folder, sha256_file

if TYPE_CHECKING:
    from .validate import ValidationResult

__all__ = [
    "StagedFolder",
    "check_destination",
    "VariantResult",
    "assemble_manifest",
    "write_manifest",
]


@dataclass(frozen=True)
class VariantResult:
    """What one variant builder made.

    Attributes:
        name: the variant ("fp32", "optimized", "int8", "fp16").
        file: its ONNX file (external data, if any, beside it).
        precision: "fp32", "int8" or "fp16" (:data:`crossrank.manifest.PRECISIONS`).
        providers: the runtime providers it is meant for ("cpu", "cuda").
        settings: how it was made, recorded as the variant's ``settings``: each builder documents
            its keys (``optimize_graph``, ``quantize_int8``, ``convert_fp16``, the fp32 export).
        validation_providers: onnxruntime providers to validate it on, first preferred.
    """

    name: str
    file: Path
    precision: str
    providers: tuple[str, ...]
    settings: Mapping[str, Any]
    validation_providers: tuple[str, ...] = ("CPUExecutionProvider",)


def assemble_manifest(
    template: Manifest,
    folder: Path,
    built: Sequence[tuple[VariantResult, "ValidationResult | None"]],
    *,
    keep_failed: bool,
    created: str | None = None,
) -> tuple[Manifest, dict[str, str]]:
    """The folder's manifest: ``template``'s model facts and variants, plus the ``built`` ones.

    Args:
        template: the model facts (source, labels, inputs, tokenizer...) and the variants to keep
            (a fresh export: none; adding a variant: the folder's others).
        folder: where the files are; a failing variant's files are deleted here unless
            ``keep_failed``.
        built: each builder's result with its validation (None: validation was skipped, recorded
            as ``{"skipped": true}``), in build order; a name already in ``template`` is replaced
            where it stands.
        keep_failed: keep failing variants, marked ``passed: false``.
        created: the manifest's ``created`` (None: the template's).

    Returns:
        ``(manifest, failures)``: ``failures`` maps each failing variant to why.

    Raises:
        ExportError: a graph reads its weights from a file that is not beside it.
    """
    from .external import check_data_files

    variants: dict[str, VariantSpec] = dict(template.variants)
    failures: dict[str, str] = {}
    for result, check in built:
        path = Path(result.file)
        side_files = check_data_files(path)  # external data of a graph over 2 GB
        if check is not None and not check.passed:
            failures[result.name] = check.note()
            log.warning("variant %s failed validation: %s", result.name, failures[result.name])
            if not keep_failed:
                for side in side_files:
                    (folder / side).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                variants.pop(result.name, None)
                continue
        variants[result.name] = VariantSpec(
            file=path.name,
            sha256=sha256_file(path),
            precision=result.precision,
            bytes=path.stat().st_size,
            providers=tuple(result.providers),
            settings=dict(result.settings),
            validation=dict(check.figures) if check is not None else {"skipped": True},
            data_files=tuple(
                DataFileSpec(file=side, sha256=sha256_file(folder / side), bytes=(folder / side).stat().st_size)
                for side in side_files
            ),
        )
    tok_path = folder / template.tokenizer.file
    tokenizer = dataclasses.replace(template.tokenizer, sha256=sha256_file(tok_path)) if tok_path.is_file() else template.tokenizer
    manifest = dataclasses.replace(
        template, variants=variants, tokenizer=tokenizer, created=template.created if created is None else created
    )
    return manifest, failures


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write ``folder/crossrank.json`` atomically (temporary file, then rename): a reader sees the
    old manifest or the new one, never part of one. Returns its path."""
    path = Path(folder) / MANIFEST_NAME
    tmp = mkstemp(prefix=f".{MANIFEST_NAME}.", suffix=".tmp", dir=path.parent)
    try:
        tmp.write_text(manifest.to_json(), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

log = logging.getLogger("crossrank.export")


def check_destination(out: Path, *, force: bool) -> None:
    """Refuse a destination that may not be replaced, before any work is done."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputExistsError(f"{out} exists and is not a folder; choose another output path")
    if not out.exists():
        return
    if is_model_folder(out):
        if not force:
            raise OutputExistsError(f"{out} is already a crossrank model folder; pass force=True (--force) to replace it")
        return
    try:
        empty = not any(out.iterdir())
    except OSError as err:
        raise ExportError(f"cannot read the output folder {out}: {err.strerror or err}") from err
    if not empty:
        raise OutputExistsError(
            f"{out} exists and is not a crossrank model folder (no {MANIFEST_NAME}); crossrank never overwrites it "
            "— choose a new path or remove it yourself"
        )


class StagedFolder:
    """Context manager: ``with StagedFolder(out, force=...) as stage: ...; stage.commit()``."""

    def __init__(self, out: str | os.PathLike[str], *, force: bool) -> None:
        self.out = Path(out).expanduser().absolute()
        self.force = force
        self.path: Path | None = None
        self.committed = False

    @property
    def work(self) -> Path:
        assert self.path is not None
        w = self.path / ".work"
        w.mkdir(exist_ok=True)
        return w

    def __enter__(self) -> "StagedFolder":
        check_destination(self.out, force=self.force)
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = mkdtemp(prefix=f".{self.out.name}.crossrank-partial-", dir=parent)
        except OSError as err:
            raise ExportError(f"cannot write to {parent}: {err.strerror or err}") from err
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.committed:
            self.discard()

    def discard(self) -> None:
        if self.path is not None and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        self.path = None

    def commit(self) -> Path:
        """Move the finished folder into place (replacing a crossrank folder when ``force``)."""
        assert self.path is not None, "commit outside the with block"
        staged = self.path
        shutil.rmtree(staged / ".work", ignore_errors=True)
        if not (staged / MANIFEST_NAME).is_file():
            raise ExportError(f"internal error: the staged folder has no {MANIFEST_NAME}")
        for item in staged.iterdir():
            # libraries write some files private (onnx's external data: 0600); the folder's files
            # get what open() gives under the caller's umask, like the folder itself
            if item.is_file() and not item.is_symlink():
                apply_default_mode(item)
        check_destination(self.out, force=self.force)  # it may have appeared while we worked
        aside: Path | None = None
        if self.out.exists():
            if is_model_folder(self.out):
                aside = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.crossrank-old-", dir=self.out.parent))
                aside.rmdir()
                os.rename(self.out, aside)
            else:  # an empty folder (check_destination allowed it)
                self.out.rmdir()
        try:
            os.rename(staged, self.out)
        except OSError as err:
            if aside is not None:
                os.rename(aside, self.out)
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise OutputExistsError(f"{self.out} appeared while exporting; nothing was replaced") from err
            raise ExportError(f"cannot move the finished folder to {self.out}: {err.strerror or err}") from err
        self.committed = True
        self.path = None
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return self.out
