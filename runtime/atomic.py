"""Temporary files and folders for atomic writes, with the modes a plain ``mkdir``/``open`` would give.

Every atomic write in crossrank (the export's staged model folder, the int8 writer, the runtime's
graph cache, the benchmark outputs) builds its result under a temporary name and renames it into
place. :mod:`tempfile` creates those names private to their maker (folders 0700, files 0600) and a
rename keeps the mode, so the result would ignore the caller's umask: a service running as
another user gets "Permission denied" on a folder exported for it. The helpers here create the
temporary folder or file and then give it the mode a normal ``mkdir`` (``0o777 & ~umask``) or
``open`` (``0o666 & ~umask``) would have given it, so what is renamed into place looks exactly
like anything else the caller writes (umask 0o022: folders 0755, files 0644; umask 0o077: 0700,
0600).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["current_umask", "default_dir_mode", "default_file_mode", "mkdtemp", "mkstemp", "apply_default_mode"]


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux ``/proc``).

    Elsewhere it is read by setting and restoring it, which is not atomic against another thread
    creating files at the same instant (that file would get mode ``0o777 & ~0o022`` at worst).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_dir_mode() -> int:
    """The permission bits ``mkdir`` gives a new folder under the current umask."""
    return 0o777 & ~current_umask()


def default_file_mode() -> int:
    """The permission bits ``open(..., "w")`` gives a new file under the current umask."""
    return 0o666 & ~current_umask()


def apply_default_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a folder or a regular file, not followed if a link) the default mode of its kind."""
    p = Path(path)
    os.chmod(p, default_dir_mode() if p.is_dir() and not p.is_symlink() else default_file_mode())


def mkdtemp(*, prefix: str, dir: str | os.PathLike[str]) -> Path:
    """A new empty folder in ``dir`` (like :func:`tempfile.mkdtemp`) with the mode ``mkdir`` would give.

    Raises OSError when ``dir`` cannot be written.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    try:
        os.chmod(path, default_dir_mode())
    except OSError:
        path.rmdir()
        raise
    return path


def mkstemp(*, prefix: str, suffix: str = "", dir: str | os.PathLike[str]) -> Path:
    """A new empty, closed file in ``dir`` (like :func:`tempfile.mkstemp`) with the mode ``open`` would give.

    Raises OSError when ``dir`` cannot be written.
    """
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)
    os.close(fd)
    try:
        os.chmod(name, default_file_mode())
    except OSError:
        os.unlink(name)
        raise
    return Path(name)
