"""Reap on local: what a crashed or killed run left in the state dir (golden_ami/reaper.py).

  - QEMU and Packer processes whose command line names the state dir and whose pipeline is
    gone (no live parent but init), older than ``older_than``: stopped by PID, SIGTERM then
    SIGKILL, after checking the PID still is the same process;
  - store images with Status=candidate older than ``candidates_older_than``, and the store's
    half-written directories (.incoming-*, .deleting-*) older than ``older_than``;
  - build runtime directories (<state>/builds/*/runtime: keys, seeds, Packer's output) and a
    test VM's overlay, seed and private key under <state>/builds/*/verify, older than
    ``older_than`` and not used by any live process.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from ...layout import BuildDir, StateDir
from ...plans import (DEFAULT_CANDIDATES_OLDER_THAN_HOURS, DEFAULT_OLDER_THAN_HOURS, ChangeResult, Kept, Leftover,
                      ReapPlan, age_since, age_text)
from ...utctime import parse_time, utcnow
from .processes import (ProcessInfo, names_path, paths_in_use, pipeline_owner, process_gone, read_processes,
                        stop_process)
from .store import Store


@dataclass
class LocalReapPlan(ReapPlan):
    def _carry_out(self, grace_seconds: float = 10.0) -> list[ChangeResult]:
        return _carry_out(self, grace_seconds)


def _newest_mtime(root: Path) -> Optional[datetime]:
    """The newest modification time of anything under root: a live build keeps writing."""
    newest = None
    try:
        candidates = [root, *root.rglob("*")] if root.is_dir() else [root]
        for path in candidates:
            try:
                stamp = path.lstat().st_mtime
            except FileNotFoundError:
                continue
            newest = stamp if newest is None or stamp > newest else newest
    except OSError:
        pass
    return None if newest is None else datetime.fromtimestamp(newest, timezone.utc)


def _verify_leftovers(verify_dir: Path) -> list[Path]:
    """What a killed test VM leaves: its overlay, seed, the run's own directory (its private key
    and half-written files; verify_runner.run) and, from older runs, the private key (logs stay)."""
    found = [p for p in (verify_dir / "instance" / "overlay.qcow2", verify_dir / "instance" / "seed.iso",
                         verify_dir / "instance" / "seed") if p.exists()]
    found += sorted(p for p in verify_dir.glob(".run-*") if p.is_dir() and not p.is_symlink())
    key_dir = verify_dir / "key"
    if key_dir.is_dir():
        found += sorted(p for p in key_dir.iterdir() if p.is_file() and not p.name.endswith(".pub"))
    return found


def plan_local(state_dir: Path, older_than_hours: float = DEFAULT_OLDER_THAN_HOURS,
               candidates_older_than_hours: float = DEFAULT_CANDIDATES_OLDER_THAN_HOURS, *,
               now: Optional[datetime] = None, processes: Optional[dict[int, ProcessInfo]] = None) -> LocalReapPlan:
    now = now or utcnow()
    state = state_dir.resolve()
    limit, candidate_limit = timedelta(hours=older_than_hours), timedelta(hours=candidates_older_than_hours)
    plan = LocalReapPlan("local", str(state), older_than_hours, candidates_older_than_hours)
    table = read_processes() if processes is None else processes

    # 1. Packer and QEMU that name the state dir and whose pipeline is gone.
    doomed_pids: set[int] = set()
    for proc in sorted(table.values(), key=lambda p: (p.name != "packer", p.pid)):  # Packer first: it stops its VM
        if proc.state == "Z" or not proc.is_pipeline_tool or not any(names_path(a, str(state)) for a in proc.argv):
            continue
        owner = pipeline_owner(proc, table)
        age = now - proc.started_at
        if owner is not None:
            plan.kept.append(Kept("process", str(proc.pid), f"{proc.describe()} belongs to live {owner.describe()}"))
        elif age < limit:
            plan.kept.append(Kept("process", str(proc.pid), f"{proc.describe()} lost its pipeline, but is only "
                                  f"{age_text(age)} (threshold {older_than_hours:g} h)"))
        else:
            doomed_pids.add(proc.pid)
            plan.leftovers.append(Leftover("process", str(proc.pid),
                                           f"{proc.name} whose pipeline is gone (parent: init), {age_text(age)}",
                                           {"pid": proc.pid, "start_ticks": proc.start_ticks, "argv": list(proc.argv)}))
    live = {pid: p for pid, p in table.items() if pid not in doomed_pids}

    # 2. The store: old candidates, and directories a crash left half-written.
    store = Store(StateDir(state).store)
    candidates = store.list(status="candidate")
    in_use = paths_in_use([c.path.parent for c in candidates], live)
    for image in candidates:
        created = parse_time(image.tags.get("CreatedAt")) or _newest_mtime(image.path)
        age = age_since(now, created)
        if in_use[image.path.parent]:
            plan.kept.append(Kept("store-image", image.id, "; ".join(in_use[image.path.parent])))
        elif age is None or age < candidate_limit:
            plan.kept.append(Kept("store-image", image.id, f"candidate, {age_text(age)} (threshold "
                                  f"{candidates_older_than_hours:g} h)"))
        else:
            plan.leftovers.append(Leftover("store-image", image.id, f"candidate never approved or rejected, {age_text(age)}",
                                           {"path": str(image.path.parent), "build_id": image.tags.get("BuildId", "")}))
    if store.root.is_dir():
        for partial in sorted(p for p in store.root.iterdir() if p.is_dir() and p.name.startswith((".incoming-", ".deleting-"))):
            age = age_since(now, _newest_mtime(partial))
            if age is not None and age >= limit:
                plan.leftovers.append(Leftover("store-partial", partial.name, f"half-written store directory, {age_text(age)}",
                                               {"path": str(partial)}))

    # 3. Build directories: runtime/ (keys, seeds, Packer's output) and a test VM's leftovers.
    builds_root = StateDir(state).builds
    builds = sorted(p for p in builds_root.glob("*") if p.is_dir()) if builds_root.is_dir() else []
    users = paths_in_use(builds, live)
    for build in builds:
        runtime = BuildDir(build).runtime
        leftovers = _verify_leftovers(BuildDir(build).verify)
        if not runtime.exists() and not leftovers:
            continue
        if users[build]:
            plan.kept.append(Kept("build", build.name, "; ".join(users[build])))
            continue
        if runtime.exists():
            age = age_since(now, _newest_mtime(runtime))
            if age is not None and age >= limit:
                plan.leftovers.append(Leftover("runtime-dir", build.name, f"build runtime directory, last written "
                                               f"{age_text(age).replace(' old', ' ago')}", {"path": str(runtime)}))
            else:
                plan.kept.append(Kept("runtime-dir", build.name, f"{age_text(age)} (threshold {older_than_hours:g} h)"))
        if leftovers:
            newest = max((m for m in (_newest_mtime(p) for p in leftovers) if m), default=None)
            age = age_since(now, newest)
            if age is not None and age >= limit:
                plan.leftovers.append(Leftover("verify-leftover", build.name,
                                               f"a killed test VM's overlay/seed/private key, {age_text(age)}",
                                               {"paths": [str(p) for p in leftovers]}))
            else:
                plan.kept.append(Kept("verify-leftover", build.name, f"{age_text(age)} (threshold {older_than_hours:g} h)"))
    return plan


def _carry_out(plan: LocalReapPlan, grace_seconds: float) -> list[ChangeResult]:
    store = Store(StateDir(Path(plan.where)).store)
    results = []
    for item in plan.leftovers:
        label = item.describe()
        try:
            if item.kind == "process":
                stop_process(item.details["pid"], item.details["start_ticks"], grace_seconds)
                gone = process_gone(item.details["pid"], item.details["start_ticks"])
            elif item.kind == "store-image":
                store.delete(item.ident)
                gone = not Path(item.details["path"]).exists()
            elif item.kind in ("store-partial", "runtime-dir"):
                shutil.rmtree(item.details["path"], ignore_errors=True)
                gone = not Path(item.details["path"]).exists()
            elif item.kind == "verify-leftover":
                for path in map(Path, item.details["paths"]):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
                gone = not any(Path(p).exists() for p in item.details["paths"])
            else:
                raise ValueError(f"unknown leftover kind {item.kind!r} in a local plan")
        except OSError as exc:
            results.append(ChangeResult(label, "failed", str(exc)))
            continue
        results.append(ChangeResult(label, "done") if gone else ChangeResult(label, "failed", "still there afterwards"))
    return results
