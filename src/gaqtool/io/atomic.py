"""Atomic file writes (a temporary file in the target's directory, then ``os.replace``) and the
check, before any work, that an output path can be written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from gaqtool.errors import InputError

__all__ = ["atomic_write", "check_writable"]


def check_writable(path: Path | str, option: str) -> None:
    """InputError now, not after minutes of work, if ``path`` cannot be written: it is a
    directory, a parent is a file, or its directory does not take a new file (probed by
    creating and removing one, which also covers read-only file systems and running as root)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory", hint=f"name a file, e.g. {path / 'out'}{path.suffix}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path}: {parent} is not a directory", hint="choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise InputError(f"{option} {path} cannot be written: {parent}: {exc.strerror}",
                         hint="choose a directory you can write to") from None
    os.close(fd)
    os.unlink(probe)



def atomic_write(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path``; on failure nothing is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
