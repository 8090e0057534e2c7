"""Reading YAML: libyaml's parser when PyYAML has it, and the project's data files parsed once.

The catalogue (controls/*.yaml), the OS data (os/*.yaml) and the defaults are read by every
render, every ``invoke controls`` and each OS of a rebuild decision. ``load_cached`` parses
each file once per process and hands every caller a copy of its own, so a caller that edits
what it got cannot change what the next caller sees. ``derived`` keeps what is made from a file
(the validated catalogue and benchmark lists) with the file's entry, so it is made again exactly
when the file is read again.

A cached entry is keyed by the file's path, modification time (ns) and size, so a file that
changes is read again. File systems stamp times with a coarse clock (a few milliseconds), so
a file rewritten within one tick of being read can keep its time and size: an entry made
while its file was that fresh is checked against the file's bytes on each use until the file
has aged past ``RACY_NS`` (the way git treats racily clean index entries).

Between processes, what a file parses to is kept in the user's cache directory under the
sha256 of its bytes (and of the parser's version), so it can only ever stand for those bytes:
parsing the catalogue and a benchmark list is about a tenth of an ``invoke render``, and loading
what was kept costs a few milliseconds.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import pickle
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import yaml

from . import paths

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
    # What derived() made from this version of the file, by the function that made it.
    derived: dict[Callable[[Path, Any], Any], Any] = field(default_factory=dict)


_CACHE: dict[str, _Entry] = {}
_LOCK = threading.Lock()
T = TypeVar("T")


def load_cached(path: Path) -> Any:
    """Like load, parsed once per process while the file stays the same (see the module doc)."""
    return pickle.loads(_current_entry(path).blob)


def derived(path: Path, make: Callable[[Path, Any], T]) -> T:
    """make(path, document) for the file as it is now, made once per version of the file (the
    rules of load_cached tell a new version) and then handed to every caller as it is: what make
    returns must be something no caller can change, or that each caller copies. For what is
    validated from a data file once per process (the catalogue, the benchmark lists); make is a
    module-level function (the key), and what it raises reaches the caller, with nothing kept."""
    entry = _current_entry(path)
    try:
        return entry.derived[make]
    except KeyError:
        value = entry.derived[make] = make(Path(path), pickle.loads(entry.blob))
        return value


def _current_entry(path: Path) -> _Entry:
    """The cache entry of the file as it is now: the one kept, or a new one parsed now."""
    name = os.path.abspath(path)
    stat = os.stat(name)
    key = (stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        entry = _CACHE.get(name)
    if entry is not None and entry.key == key:
        if not entry.racy:
            return entry
        checked_at = time.time_ns()
        if Path(name).read_bytes() == entry.raw:
            entry.racy = checked_at - stat.st_mtime_ns < RACY_NS
            return entry
    read_at = time.time_ns()
    raw = Path(name).read_bytes()
    entry = _Entry(key=key, raw=raw, blob=_parsed(raw), racy=read_at - stat.st_mtime_ns < RACY_NS)
    with _LOCK:
        _CACHE[name] = entry
    return entry


def cache_clear() -> None:
    with _LOCK:
        _CACHE.clear()


# --- parsed documents kept between processes ------------------------------------------------
# Entries past this many are removed, oldest first, when one is added: one is added per new
# version of a data file, and one removed too soon is only parsed and kept again.
KEPT_MAX = 200


def private_directory(directory: Path) -> Optional[Path]:
    """directory, made if missing (0700), when it is this user's and no one else can write it;
    else None. Only such a directory may hold a cache whose contents are loaded (compiled
    templates are code; parsed documents are pickles)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError:
        return None  # a read-only home: no cache, as without one
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        return None
    return directory


def _kept_name(raw: bytes) -> str:
    """The bytes and the parser that reads them: another PyYAML may read the same bytes otherwise."""
    parser = f"{yaml.__version__} {LOADER.__module__}.{LOADER.__name__}\0".encode()
    return hashlib.sha256(parser + raw).hexdigest() + ".pickle"


class _DocumentUnpickler(pickle.Unpickler):
    """A kept document holds YAML's own types only: plain containers and scalars (no global at
    all) and the datetime types its timestamps parse to. Nothing else is looked up, whatever
    a kept file says."""

    _ALLOWED = {("datetime", "date"): datetime.date, ("datetime", "datetime"): datetime.datetime,
                ("datetime", "timezone"): datetime.timezone, ("datetime", "timedelta"): datetime.timedelta}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"a kept YAML document names {module}.{name}") from None


def _parsed(raw: bytes) -> bytes:
    """What raw parses to, pickled: as kept by an earlier process (once it is seen to hold only
    YAML's types), else parsed now, and kept."""
    directory = private_directory(paths.cache_dir() / "yaml")
    kept = directory / _kept_name(raw) if directory is not None else None
    if kept is not None:
        try:
            blob = kept.read_bytes()
            _DocumentUnpickler(io.BytesIO(blob)).load()
            return blob
        except Exception:  # not kept yet, or unreadable (cut short, another format): parse it
            pass
    blob = pickle.dumps(parse(raw.decode("utf-8")), protocol=pickle.HIGHEST_PROTOCOL)
    if kept is not None:
        _keep(kept, blob)
    return blob


def _keep(kept: Path, blob: bytes) -> None:
    """Best effort: a cache that cannot be written is a cache that is not used."""
    try:
        descriptor, partial = tempfile.mkstemp(prefix=".", suffix=".partial", dir=kept.parent)
    except OSError:
        return
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(blob)
        os.replace(partial, kept)  # whole or not at all: another process may be reading it
        _prune(kept.parent)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(partial)


def _prune(directory: Path) -> None:
    entries = list(directory.glob("*.pickle"))
    if len(entries) <= KEPT_MAX:
        return
    by_age = sorted(entries, key=lambda path: path.stat().st_mtime_ns)
    for path in by_age[:len(entries) - KEPT_MAX // 2]:
        path.unlink(missing_ok=True)
