"""Running Packer on a rendered build directory.

Build-time values go into runtime.pkrvars.json beside the rendered variables file, so the
rendered files (and the fingerprint) stay the same from build to build. Packer's output is
kept in the build directory (packer.log); its step headers and the hardening scripts' own
"[golden-ami …]" lines become progress lines.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from . import paths
from .errors import StepFailed, UserError
from .files import write_atomic
from .layout import TEMPLATE_FILE, BuildDir
from .procs import run_streaming
from .progress import Progress
from .yamlfiles import RACY_NS, private_directory

RUNTIME_VARS_FILE = "runtime.pkrvars.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# "2026-11-29T01:40:27Z: ==> golden.qemu.golden: Waiting for SSH…" (with -timestamp-ui)
_UI_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\dT[\d:]+Z:\s+)?(?P<step>==>\s+)?[A-Za-z0-9_.-]+:\s(?P<body>.*)$")


def find(binary: str = "packer") -> str:
    path = shutil.which(binary)
    if path is None:
        raise UserError(f"Packer ({binary}) is not installed: apt-get install packer (or run invoke doctor)")
    return path


# Packer's version by the binary's real path and what stat says of it (device, inode, size,
# modification and change times): every render asks (packer.syntax auto), and `packer version`
# is a process start, about a tenth of an `invoke render`. Kept in this process and, for the
# next ones, in the cache dir (one small JSON file per binary). A binary changed within the
# last RACY_NS is asked again each time (a coarse clock could hide a second change); any
# change to it, even one that puts its modification time back, moves its change time.
_VERSIONS: dict[tuple[Any, ...], tuple[int, int, int]] = {}


def version(binary: str = "packer") -> tuple[int, int, int]:
    path = find(binary)
    real = os.path.realpath(path)
    stat = os.stat(path)
    key = (real, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    found = _VERSIONS.get(key) or _kept_version(key)
    if found is not None:
        _VERSIONS[key] = found
        return found
    asked_at = time.time_ns()
    out = subprocess.run([path, "version"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CHECKPOINT_DISABLE": "1"}).stdout  # no call home for an update check
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise RuntimeError(f"cannot read Packer's version from {out!r}")
    found = int(match[1]), int(match[2]), int(match[3])
    if asked_at - max(stat.st_mtime_ns, stat.st_ctime_ns) >= RACY_NS:
        _VERSIONS[key] = found
        _keep_version(key, found)
    return found


def _version_file(real: str) -> Optional[Path]:
    """Where the version of the binary at this real path is kept (None: no private cache dir)."""
    directory = private_directory(paths.cache_dir() / "packer")
    return directory / (hashlib.sha256(real.encode()).hexdigest() + ".json") if directory is not None else None


def _kept_version(key: tuple[Any, ...]) -> Optional[tuple[int, int, int]]:
    """The version an earlier process found for exactly this binary (the same key), else None."""
    where = _version_file(key[0])
    try:
        kept = json.loads(where.read_text()) if where is not None else None
        if kept["key"] == list(key) and len(kept["version"]) == 3 \
                and all(type(part) is int for part in kept["version"]):
            return tuple(kept["version"])  # type: ignore[return-value]
    except (OSError, ValueError, TypeError, KeyError):  # not kept yet, or not what this writes
        pass
    return None


def _keep_version(key: tuple[Any, ...], found: tuple[int, int, int]) -> None:
    """Best effort: a version that cannot be kept is asked again by the next process."""
    where = _version_file(key[0])
    if where is not None:
        with contextlib.suppress(OSError):
            write_atomic(where, json.dumps({"key": list(key), "version": list(found)}) + "\n", 0o600)


def _env(extra: Optional[dict[str, str]], runtime_dir: Path, tmp_dir: Optional[Path] = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CHECKPOINT_DISABLE": "1",  # no version check call home
        "PACKER_NO_COLOR": "1",
        "PACKER_CACHE_DIR": str(runtime_dir / "packer_cache"),
    })
    if tmp_dir is not None:
        # Packer's plugin sockets live in TMPDIR: a Unix socket path must stay under 108 bytes,
        # so this is a short private directory of its own, not the (long) build directory.
        env["TMPDIR"] = str(tmp_dir)
    env.update(extra or {})
    return env


def write_runtime_vars(runtime_dir: Path, variables: dict[str, Any]) -> Path:
    runtime_dir.mkdir(parents=True, exist_ok=True)
    path = runtime_dir / RUNTIME_VARS_FILE
    path.write_text(json.dumps(variables, sort_keys=True, indent=2) + "\n")
    return path


def _argv(binary: str, command: str, build_dir: Path, runtime_vars: Optional[Path], extra: list[str]) -> list[str]:
    argv = [find(binary), command, *extra, f"-var-file={BuildDir(build_dir).variables}"]
    if runtime_vars is not None:
        argv.append(f"-var-file={runtime_vars}")
    argv.append(TEMPLATE_FILE)
    return argv


def validate(build_dir: Path, runtime_vars: Optional[Path] = None, binary: str = "packer",
             syntax_only: bool = False) -> tuple[bool, str]:
    """`packer validate` of a build directory; (ok, output)."""
    extra = ["-syntax-only"] if syntax_only else []
    proc = subprocess.run(_argv(binary, "validate", build_dir, runtime_vars, extra), cwd=build_dir,
                          capture_output=True, text=True, timeout=300,
                          env=_env(None, build_dir))
    return proc.returncode == 0, _ANSI.sub("", proc.stdout + proc.stderr)


def init(build_dir: Path, runtime_dir: Path, progress: Progress, binary: str = "packer") -> None:
    """`packer init`: install the plugins a Packer >= 1.7 template requires."""
    log = BuildDir(build_dir).packer_init_log
    status = run_streaming([find(binary), "init", TEMPLATE_FILE], cwd=build_dir, env=_env(None, runtime_dir),
                           log_path=log, progress=progress, timeout_seconds=600)
    if status != 0:
        raise StepFailed(f"packer init failed (exit {status}): see {log}")


def init_if_supported(build_dir: Path, runtime_dir: Path, progress: Progress, binary: str = "packer") -> bool:
    """`packer init` when the installed Packer has it (>= 1.7: builders are plugins, and a
    template rendered for it names them in required_plugins). Packer 1.6 has no init and its
    builders are built in. Returns whether init ran."""
    if version(binary) < (1, 7, 0):
        return False
    init(build_dir, runtime_dir, progress, binary)
    return True


def build(
    build_dir: Path,
    runtime_dir: Path,
    runtime_vars: Path,
    progress: Progress,
    timeout_minutes: int,
    env: Optional[dict[str, str]] = None,
    binary: str = "packer",
) -> None:
    """`packer build`; raise StepFailed naming the last error lines when it fails."""
    argv = _argv(binary, "build", build_dir, runtime_vars, ["-color=false", "-on-error=cleanup", "-timestamp-ui"])
    last_error: list[str] = []

    def on_line(line: str) -> None:
        text = _ANSI.sub("", line).strip()
        # "==> qemu.golden: Waiting for SSH…" and "qemu.golden: [golden-ami 10-patching] …"
        match = _UI_LINE.match(text)
        body = match["body"] if match else text
        if (match and match["step"]) or body.startswith("[golden-ami"):
            progress.detail(body)
        if "GATE FAILED" in body or body.startswith(("Build '", "* ")) or "error" in body.lower():
            last_error.append(body)

    log = BuildDir(build_dir).packer_log
    tmp_dir = Path(tempfile.mkdtemp(prefix="golden-ami-"))
    try:
        status = run_streaming(
            argv, cwd=build_dir, env=_env(env, runtime_dir, tmp_dir), log_path=log,
            progress=progress, on_line=on_line, timeout_seconds=timeout_minutes * 60,
        )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if status != 0:
        detail = " | ".join(last_error[-3:]) or f"exit status {status}"
        raise StepFailed(f"packer build failed: {detail} (full log: {log})")
