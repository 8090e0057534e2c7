"""Reading YAML: libyaml's parser when PyYAML has it, and the project's data files parsed once.

The catalogue (controls/*.yaml), the OS data (os/*.yaml) and the defaults are read by every
render, every ``invoke controls`` and each OS of a rebuild decision. ``load_cached`` parses
each file once per process and hands every caller a copy of its own, so a caller that edits
what it got cannot change what the next caller sees.

A cached entry is keyed by the file's path, modification time (ns) and size, so a file that
changes is read again. File systems stamp times with a coarse clock (a few milliseconds), so
a file rewritten within one tick of being read can keep its time and size: an entry made
while its file was that fresh is checked against the file's bytes on each use until the file
has aged past ``RACY_NS`` (the way git treats racily clean index entries).
"""
from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# libyaml's parser with PyYAML's own safe constructor: the same data, several times faster.
LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A file modified less than this long before it was read may change again without its
# modification time moving (coarse file system clocks): compare its bytes instead.
RACY_NS = 2_000_000_000


def parse(text: str) -> Any:
    """One YAML document, safely (tags beyond YAML's own types are refused)."""
    return yaml.load(text, Loader=LOADER)


def load(path: Path) -> Any:
    """A YAML file read now. Errors are the caller's to word: FileNotFoundError,
    IsADirectoryError, UnicodeDecodeError (not UTF-8), yaml.YAMLError, ValueError (a date
    that is none)."""
    return parse(Path(path).read_bytes().decode("utf-8"))


@dataclass
class _Entry:
    key: tuple[int, int]  # (mtime_ns, size)
    raw: bytes  # the file's bytes when it was parsed
    blob: bytes  # the parsed document, pickled: each caller unpickles a copy of its own
    racy: bool  # read too soon after its last change to trust (mtime_ns, size) alone


_CACHE: dict[str, _Entry] = {}
_LOCK = threading.Lock()


def load_cached(path: Path) -> Any:
    """Like load, parsed once per process while the file stays the same (see the module doc)."""
    name = os.path.abspath(path)
    stat = os.stat(name)
    key = (stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        entry = _CACHE.get(name)
    if entry is not None and entry.key == key:
        if not entry.racy:
            return pickle.loads(entry.blob)
        checked_at = time.time_ns()
        if Path(name).read_bytes() == entry.raw:
            entry.racy = checked_at - stat.st_mtime_ns < RACY_NS
            return pickle.loads(entry.blob)
    read_at = time.time_ns()
    raw = Path(name).read_bytes()
    data = parse(raw.decode("utf-8"))
    entry = _Entry(key=key, raw=raw, blob=pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL),
                   racy=read_at - stat.st_mtime_ns < RACY_NS)
    with _LOCK:
        _CACHE[name] = entry
    return pickle.loads(entry.blob)


def cache_clear() -> None:
    with _LOCK:
        _CACHE.clear()
