"""Writing a file whole or not at all: the one way golden_ami replaces a file it owns.

A reader (a consumer of tags.json, a later `approve`, a script reading build.json) sees either
the old file or the new one, never half of one; a write that fails leaves no temporary file
behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Union


def _partial_copy(path: Path, data: Union[bytes, str], mode: int) -> str:
    """data in a new file beside path (a unique name: concurrent writers do not collide),
    flushed to disk and given its mode; the caller moves it into place or removes it."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return partial


def write_atomic(path: Path, data: Union[bytes, str], mode: int = 0o644) -> None:
    """Write data beside path, then rename it over path."""
    partial = _partial_copy(path, data, mode)
    try:
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def write_new(path: Path, data: Union[bytes, str], mode: int = 0o644) -> None:
    """Write a file that must not exist yet, whole or not at all: FileExistsError when it does
    (also when it appeared meanwhile: a hard link, unlike a rename, refuses a name in use),
    FileNotFoundError when its directory does not exist."""
    if path.exists():
        raise FileExistsError(path)
    partial = _partial_copy(path, data, mode)
    try:
        os.link(partial, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(partial)
