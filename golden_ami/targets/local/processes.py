"""Local processes, read from /proc: who still uses a path (prune and reap keep what a live
process has open or names), which QEMU or Packer lost its pipeline, and stopping one by PID
only while it still is the process a plan saw."""
from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

# Parents a process is handed to when its own parent dies: a pipeline child under one of
# these has lost its pipeline.
INIT_NAMES = {"init", "systemd", "tini", "dumb-init", "docker-init", "catatonit"}


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    argv: tuple[str, ...]
    state: str
    start_ticks: int  # field 22 of /proc/<pid>/stat: tells this process from a later one with its PID
    started_at: datetime
    cwd: str = ""

    @property
    def name(self) -> str:
        return os.path.basename(self.argv[0]) if self.argv else ""

    @property
    def is_pipeline_tool(self) -> bool:
        return self.name == "packer" or self.name.startswith("qemu-system-")

    def describe(self) -> str:
        shown = " ".join(self.argv)
        return f"PID {self.pid} ({shown[:100]}{'…' if len(shown) > 100 else ''})"


def _boot_time(proc_root: Path) -> float:
    for line in (proc_root / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError(f"{proc_root}/stat has no btime line")


def _read_stat(proc_root: Path, pid: int) -> Optional[tuple[str, int, int]]:
    """(state, ppid, start ticks) of a process, or None when it is gone."""
    try:
        text = (proc_root / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = text[text.rfind(")") + 2:].split()  # the name in parentheses may hold spaces
    return rest[0], int(rest[1]), int(rest[19])


def read_processes(proc_root: Path = Path("/proc")) -> dict[int, ProcessInfo]:
    """Every process we can see, by PID (zombies and kernel threads have no command line)."""
    boot = _boot_time(proc_root)
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _read_stat(proc_root, pid)
        try:
            argv = tuple(a for a in (entry / "cmdline").read_bytes().decode(errors="replace").split("\0") if a)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if stat is None:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            cwd = ""
        state, ppid, start = stat
        table[pid] = ProcessInfo(pid, ppid, argv, state, start,
                                 datetime.fromtimestamp(boot + start / ticks, timezone.utc), cwd)
    return table


def _open_paths(pid: int, proc_root: Path = Path("/proc")) -> list[str]:
    try:
        fds = list((proc_root / str(pid) / "fd").iterdir())
    except OSError:
        return []
    paths = []
    for fd in fds:
        try:
            paths.append(os.readlink(fd))
        except OSError:
            continue
    return paths


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def names_path(arg: str, root: str) -> bool:
    """Whether a command-line argument names root or something under it ("/s" is not "/s2")."""
    return re.search(re.escape(root.rstrip("/")) + r"(?=$|[/,:=\s])", arg) is not None


def paths_in_use(roots: Iterable[Path], processes: Optional[dict[int, ProcessInfo]] = None,
                 ignore_pids: Iterable[int] = ()) -> dict[Path, list[str]]:
    """For each root (a file or directory): the live processes that name it on their command
    line, work inside it, or hold a file under it open."""
    wanted = [Path(r) for r in roots]
    users: dict[Path, list[str]] = {r: [] for r in wanted}
    if not wanted:
        return users
    table = read_processes() if processes is None else processes
    skip = set(ignore_pids) | {os.getpid()}
    for proc in table.values():
        if proc.pid in skip or proc.state == "Z":
            continue
        opened = None
        for root in wanted:
            text = str(root.resolve())
            named = any(names_path(arg, text) for arg in proc.argv) or (proc.cwd and _inside(proc.cwd, text))
            if not named:
                opened = _open_paths(proc.pid) if opened is None else opened
                named = any(_inside(p, text) for p in opened)
            if named:
                users[root].append(f"used by live {proc.describe()}")
    return users


def pipeline_owner(proc: ProcessInfo, table: dict[int, ProcessInfo]) -> Optional[ProcessInfo]:
    """The live process that runs this pipeline tool (Packer and QEMU parents skipped), or
    None when that owner is gone and the tool was handed to init."""
    current, seen = proc, set()
    while current.pid not in seen:
        seen.add(current.pid)
        parent = table.get(current.ppid)
        if current.ppid <= 1 or parent is None or parent.name in INIT_NAMES:
            return None
        if not parent.is_pipeline_tool:
            return parent
        current = parent
    return None


def process_gone(pid: int, start_ticks: int, proc_root: Path = Path("/proc")) -> bool:
    stat = _read_stat(proc_root, pid)
    return stat is None or stat[0] in ("Z", "X") or stat[2] != start_ticks


def stop_process(pid: int, start_ticks: int, grace_seconds: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL: only while the PID still is the process the plan saw."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        if process_gone(pid, start_ticks):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process_gone(pid, start_ticks):
                return
            time.sleep(0.1)
