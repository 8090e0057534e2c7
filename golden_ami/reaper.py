"""The reaper: find and remove what crashed or killed runs left behind.

A run that ends normally removes its own temporary things in ``finally`` blocks; a SIGKILL,
a lost machine or a failed API call at teardown does not. The reaper looks for them by the
marks the pipeline puts on everything it makes, shows a plan, and acts only with yes=True.

aws (in aws.region):
  - instances tagged ManagedBy=golden-ami, Purpose build or verify, not terminated, launched
    more than ``older_than`` ago;
  - key pairs and security groups named golden-ami-verify-* (the test instance's; the groups
    also tagged ManagedBy) that no live instance uses and that are older than ``older_than``;
  - Packer's packer_<uuid> key pairs and security groups. Packer 1.6.6 tags neither, so:
    one that carries our ManagedBy tag, or that an instance tagged ManagedBy uses or used, is
    ours and goes by ``older_than``. An untagged, unlinked one might be another Packer user's:
    it goes only if no live instance uses it, (groups) its description is Packer's own
    "Temporary group for Packer", and it is older than both ``older_than`` and the longest a
    golden-ami Packer build may run (packer.timeout_minutes). Its age comes from the name:
    Packer's time-ordered UUID starts with the creation time (unix seconds, 8 hex digits);
    a key pair's CreateTime counts too, and the younger of the two ages is used;
  - candidate images (Status=candidate) older than ``candidates_older_than`` with their
    snapshots, unless something still uses them (see lifecycle.image_references);
  - snapshots tagged ManagedBy that no image uses any more, and unattached volumes tagged
    ManagedBy, older than ``candidates_older_than``.
local (<state>):
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

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import botocore.exceptions

from .config import Settings
from .errors import UserError
from .lifecycle import (LIVE_INSTANCE_STATES, NotApplied, Outcome, image_gone, image_references, parse_time, snapshot_gone,
                        snapshot_users, snapshots_of, tags_of, utcnow)

DEFAULT_OLDER_THAN_HOURS = 2.0
DEFAULT_CANDIDATES_OLDER_THAN_HOURS = 24.0
VERIFY_PREFIX = "golden-ami-verify-"
PACKER_NAME = re.compile(r"^packer_(?P<stamp>[0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PACKER_GROUP_DESCRIPTION = "Temporary group for Packer"
# Parents a process is handed to when its own parent dies: a pipeline child under one of
# these has lost its pipeline.
INIT_NAMES = {"init", "systemd", "tini", "dumb-init", "docker-init", "catatonit"}


def _age(now: datetime, then: Optional[datetime]) -> Optional[timedelta]:
    return None if then is None else now - then


def _hours(delta: Optional[timedelta]) -> str:
    if delta is None:
        return "unknown age"
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h old" if hours >= 1 else f"{max(delta.total_seconds(), 0) / 60:.0f} min old"


# --- what a plan holds -------------------------------------------------------------------------
@dataclass(frozen=True)
class Leftover:
    kind: str  # instance | key-pair | security-group | image | snapshot | volume | process | store-image |
    #            store-partial | runtime-dir | verify-leftover
    ident: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.kind} {self.ident}: {self.reason}"


@dataclass(frozen=True)
class Kept:
    kind: str
    ident: str
    why: str


@dataclass
class ReapPlan:
    target: str
    where: str  # aws: the region; local: the state dir
    older_than_hours: float
    candidates_older_than_hours: float
    leftovers: list[Leftover] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "where": self.where, "older_than_hours": self.older_than_hours,
            "candidates_older_than_hours": self.candidates_older_than_hours,
            "leftovers": [{"kind": x.kind, "id": x.ident, "reason": x.reason, "details": x.details}
                          for x in self.leftovers],
            "kept": [{"kind": k.kind, "id": k.ident, "why": k.why} for k in self.kept],
            "notes": list(self.notes),
        }

    def describe(self) -> list[str]:
        found = f"{len(self.leftovers)} leftover(s)" if self.leftovers else "nothing left behind"
        lines = [f"reap {self.target} ({self.where}), older than {self.older_than_hours:g} h "
                 f"(candidate images {self.candidates_older_than_hours:g} h): {found}"]
        lines += [f"  - {x.describe()}" for x in self.leftovers]
        lines += [f"  keep {k.kind} {k.ident}: {k.why}" for k in self.kept]
        lines += [f"  note: {n}" for n in self.notes]
        return lines


# --- processes (read from /proc) -------------------------------------------------------------------
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


def _owner(proc: ProcessInfo, table: dict[int, ProcessInfo]) -> Optional[ProcessInfo]:
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


# --- local -----------------------------------------------------------------------------------------
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
               now: Optional[datetime] = None, processes: Optional[dict[int, ProcessInfo]] = None) -> ReapPlan:
    from .targets.local.store import Store

    now = now or utcnow()
    state = state_dir.resolve()
    limit, candidate_limit = timedelta(hours=older_than_hours), timedelta(hours=candidates_older_than_hours)
    plan = ReapPlan("local", str(state), older_than_hours, candidates_older_than_hours)
    table = read_processes() if processes is None else processes

    # 1. Packer and QEMU that name the state dir and whose pipeline is gone.
    doomed_pids: set[int] = set()
    for proc in sorted(table.values(), key=lambda p: (p.name != "packer", p.pid)):  # Packer first: it stops its VM
        if proc.state == "Z" or not proc.is_pipeline_tool or not any(names_path(a, str(state)) for a in proc.argv):
            continue
        owner = _owner(proc, table)
        age = now - proc.started_at
        if owner is not None:
            plan.kept.append(Kept("process", str(proc.pid), f"{proc.describe()} belongs to live {owner.describe()}"))
        elif age < limit:
            plan.kept.append(Kept("process", str(proc.pid), f"{proc.describe()} lost its pipeline, but is only "
                                  f"{_hours(age)} (threshold {older_than_hours:g} h)"))
        else:
            doomed_pids.add(proc.pid)
            plan.leftovers.append(Leftover("process", str(proc.pid),
                                           f"{proc.name} whose pipeline is gone (parent: init), {_hours(age)}",
                                           {"pid": proc.pid, "start_ticks": proc.start_ticks, "argv": list(proc.argv)}))
    live = {pid: p for pid, p in table.items() if pid not in doomed_pids}

    # 2. The store: old candidates, and directories a crash left half-written.
    store = Store(state / "store")
    candidates = store.list(status="candidate")
    in_use = paths_in_use([c.path.parent for c in candidates], live)
    for image in candidates:
        created = parse_time(image.tags.get("CreatedAt")) or _newest_mtime(image.path)
        age = _age(now, created)
        if in_use[image.path.parent]:
            plan.kept.append(Kept("store-image", image.id, "; ".join(in_use[image.path.parent])))
        elif age is None or age < candidate_limit:
            plan.kept.append(Kept("store-image", image.id, f"candidate, {_hours(age)} (threshold "
                                  f"{candidates_older_than_hours:g} h)"))
        else:
            plan.leftovers.append(Leftover("store-image", image.id, f"candidate never approved or rejected, {_hours(age)}",
                                           {"path": str(image.path.parent), "build_id": image.tags.get("BuildId", "")}))
    if store.root.is_dir():
        for partial in sorted(p for p in store.root.iterdir() if p.is_dir() and p.name.startswith((".incoming-", ".deleting-"))):
            age = _age(now, _newest_mtime(partial))
            if age is not None and age >= limit:
                plan.leftovers.append(Leftover("store-partial", partial.name, f"half-written store directory, {_hours(age)}",
                                               {"path": str(partial)}))

    # 3. Build directories: runtime/ (keys, seeds, Packer's output) and a test VM's leftovers.
    builds = sorted(p for p in (state / "builds").glob("*") if p.is_dir()) if (state / "builds").is_dir() else []
    users = paths_in_use(builds, live)
    for build in builds:
        runtime = build / "runtime"
        leftovers = _verify_leftovers(build / "verify")
        if not runtime.exists() and not leftovers:
            continue
        if users[build]:
            plan.kept.append(Kept("build", build.name, "; ".join(users[build])))
            continue
        if runtime.exists():
            age = _age(now, _newest_mtime(runtime))
            if age is not None and age >= limit:
                plan.leftovers.append(Leftover("runtime-dir", build.name, f"build runtime directory, last written "
                                               f"{_hours(age).replace(' old', ' ago')}", {"path": str(runtime)}))
            else:
                plan.kept.append(Kept("runtime-dir", build.name, f"{_hours(age)} (threshold {older_than_hours:g} h)"))
        if leftovers:
            newest = max((m for m in (_newest_mtime(p) for p in leftovers) if m), default=None)
            age = _age(now, newest)
            if age is not None and age >= limit:
                plan.leftovers.append(Leftover("verify-leftover", build.name,
                                               f"a killed test VM's overlay/seed/private key, {_hours(age)}",
                                               {"paths": [str(p) for p in leftovers]}))
            else:
                plan.kept.append(Kept("verify-leftover", build.name, f"{_hours(age)} (threshold {older_than_hours:g} h)"))
    return plan


def _apply_local(plan: ReapPlan, grace_seconds: float) -> list[Outcome]:
    from .targets.local.store import Store

    store = Store(Path(plan.where) / "store")
    outcomes = []
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
            outcomes.append(Outcome(label, "failed", str(exc)))
            continue
        outcomes.append(Outcome(label, "done") if gone else Outcome(label, "failed", "still there afterwards"))
    return outcomes


# --- aws --------------------------------------------------------------------------------------------
def packer_name_time(name: str) -> Optional[datetime]:
    """When Packer made a packer_<uuid> resource: its time-ordered UUID starts with unix seconds."""
    match = PACKER_NAME.match(name)
    return datetime.fromtimestamp(int(match["stamp"], 16), timezone.utc) if match else None


def _paged(ec2: Any, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [item for page in ec2.get_paginator(operation).paginate(**kwargs) for item in page[key]]


def _instances(ec2: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for r in _paged(ec2, "describe_instances", "Reservations", Filters=filters) for i in r["Instances"]]


def plan_aws(settings: Settings, older_than_hours: float = DEFAULT_OLDER_THAN_HOURS,
             candidates_older_than_hours: float = DEFAULT_CANDIDATES_OLDER_THAN_HOURS, region: Optional[str] = None,
             *, ec2: Any = None, ssm: Any = None, now: Optional[datetime] = None) -> ReapPlan:
    from .targets.aws import clients

    region = region or settings.aws.region
    ec2 = ec2 or clients.client("ec2", region)
    ssm = ssm or clients.client("ssm", region)
    try:
        return _plan_aws(settings, region, older_than_hours, candidates_older_than_hours, ec2, ssm, now or utcnow())
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise clients.describe_error(exc, f"look for leftovers in {region}") from None


def _plan_aws(settings: Settings, region: str, older_than_hours: float, candidates_older_than_hours: float,
              ec2: Any, ssm: Any, now: datetime) -> ReapPlan:
    from .lifecycle import pointer_name
    from .targets.aws.target import MANAGED_BY

    limit, candidate_limit = timedelta(hours=older_than_hours), timedelta(hours=candidates_older_than_hours)
    # An untagged Packer resource cannot belong to a live golden-ami build older than this.
    foreign_limit = max(limit, timedelta(minutes=settings.packer.timeout_minutes + 30))
    plan = ReapPlan("aws", region, older_than_hours, candidates_older_than_hours)

    # 1. Our instances, and what every instance in the account uses (key pairs, groups).
    ours_all = _instances(ec2, [{"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}])
    doomed: set[str] = set()
    for instance in ours_all:
        tags, state = tags_of(instance), instance["State"]["Name"]
        if state not in LIVE_INSTANCE_STATES:
            continue
        if tags.get("Purpose") not in ("build", "verify"):
            plan.kept.append(Kept("instance", instance["InstanceId"], f"Purpose={tags.get('Purpose', '')!r}: "
                                  "not a build or test instance"))
            continue
        age = _age(now, parse_time(instance.get("LaunchTime")))
        if age is None or age < limit:
            plan.kept.append(Kept("instance", instance["InstanceId"], f"{tags['Purpose']} instance ({state}), "
                                  f"{_hours(age)} (threshold {older_than_hours:g} h)"))
            continue
        doomed.add(instance["InstanceId"])
        plan.leftovers.append(Leftover("instance", instance["InstanceId"],
                                       f"{tags['Purpose']} instance ({state}) of build {tags.get('BuildId', '?')}, "
                                       f"launched {_hours(age).replace(' old', ' ago')}"))
    linked_keys = {i["KeyName"] for i in ours_all if i.get("KeyName")}
    linked_groups = {g["GroupId"] for i in ours_all for g in i.get("SecurityGroups", [])}
    live_keys: dict[str, list[str]] = {}
    live_groups: dict[str, list[str]] = {}
    for instance in _instances(ec2, [{"Name": "instance-state-name", "Values": [*LIVE_INSTANCE_STATES, "shutting-down"]}]):
        if instance["InstanceId"] in doomed:
            continue
        if instance.get("KeyName"):
            live_keys.setdefault(instance["KeyName"], []).append(instance["InstanceId"])
        for group in instance.get("SecurityGroups", []):
            live_groups.setdefault(group["GroupId"], []).append(instance["InstanceId"])

    # 2. Key pairs.
    key_ages: dict[str, Optional[timedelta]] = {}
    for key in ec2.describe_key_pairs()["KeyPairs"]:
        name, tags = key["KeyName"], tags_of(key)
        created = parse_time(key.get("CreateTime"))
        if name.startswith(VERIFY_PREFIX):
            key_ages[name] = _age(now, created)
            ours, threshold = True, limit
        elif PACKER_NAME.match(name):
            stamps = [t for t in (created, packer_name_time(name)) if t]
            created = max(stamps) if stamps else None  # the younger age: the conservative one
            ours = tags.get("ManagedBy") == MANAGED_BY or name in linked_keys
            threshold = limit if ours else foreign_limit
        else:
            continue
        age = _age(now, created)
        if live_keys.get(name):
            plan.kept.append(Kept("key-pair", name, f"live instance(s) {', '.join(live_keys[name])} use it"))
        elif age is None or age < threshold:
            plan.kept.append(Kept("key-pair", name, f"{_hours(age)} (threshold {threshold.total_seconds() / 3600:g} h"
                                  f"{'' if ours else ', untagged Packer key: at least a Packer build timeout'})"))
        else:
            whose = "the test instance's key pair" if name.startswith(VERIFY_PREFIX) else (
                "Packer's key pair for a golden-ami build" if ours else
                "an untagged Packer key pair (Packer 1.6.6 tags none) that no instance uses")
            plan.leftovers.append(Leftover("key-pair", name, f"{whose}, {_hours(age)}", {"key_pair_id": key.get("KeyPairId", "")}))

    # 3. Security groups (EC2 records no creation time for them: see the module docstring).
    doomed_keys = {x.ident for x in plan.leftovers if x.kind == "key-pair"}
    for group in _paged(ec2, "describe_security_groups", "SecurityGroups"):
        name, group_id, tags = group["GroupName"], group["GroupId"], tags_of(group)
        if name.startswith(VERIFY_PREFIX) and tags.get("ManagedBy") == MANAGED_BY:
            partner = name  # the key pair of the same run has the same name, and is made first
            if partner in doomed_keys:
                why = f"the test instance's group; its key pair {partner} is reaped too"
            elif partner not in key_ages:
                why = "the test instance's group; its key pair is gone, so that run's teardown began and did not finish"
            else:
                plan.kept.append(Kept("security-group", group_id, f"{name}: its key pair {partner} is kept "
                                      f"({_hours(key_ages[partner])}, threshold {older_than_hours:g} h)"))
                continue
        elif PACKER_NAME.match(name):
            ours = tags.get("ManagedBy") == MANAGED_BY or group_id in linked_groups
            if not ours and group.get("Description") != PACKER_GROUP_DESCRIPTION:
                continue
            threshold = limit if ours else foreign_limit
            age = _age(now, packer_name_time(name))
            if age is None or age < threshold:
                plan.kept.append(Kept("security-group", group_id, f"{name}: {_hours(age)} (threshold "
                                      f"{threshold.total_seconds() / 3600:g} h)"))
                continue
            why = (f"Packer's group for a golden-ami build, {_hours(age)}" if ours else
                   f"an untagged Packer group that no instance uses, {_hours(age)}")
        else:
            continue
        users = live_groups.get(group_id, [])
        interfaces = [n["NetworkInterfaceId"] for n in _paged(ec2, "describe_network_interfaces", "NetworkInterfaces",
                                                              Filters=[{"Name": "group-id", "Values": [group_id]}])
                      if n.get("Attachment", {}).get("InstanceId") not in doomed]
        if users or interfaces:
            plan.kept.append(Kept("security-group", group_id, f"{name}: in use by {', '.join(users + interfaces)}"))
            continue
        plan.leftovers.append(Leftover("security-group", group_id, f"{name}: {why}", {"name": name}))

    # 4. Candidate images, old enough, that nothing else uses.
    images = _paged(ec2, "describe_images", "Images", Owners=["self"], Filters=[
        {"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}, {"Name": "tag:Status", "Values": ["candidate"]}])
    old = []
    for image in images:
        tags = tags_of(image)
        stamps = [t for t in (parse_time(image.get("CreationDate")), parse_time(tags.get("CreatedAt"))) if t]
        age = _age(now, max(stamps) if stamps else None)
        if age is None or age < candidate_limit:
            plan.kept.append(Kept("image", image["ImageId"], f"candidate, {_hours(age)} (threshold "
                                  f"{candidates_older_than_hours:g} h)"))
        else:
            old.append((image, tags, age))
    pointers = sorted({pointer_name(settings, tags.get("OS", "")) for _, tags, _ in old if tags.get("OS")})
    references = image_references(ec2, ssm, [i["ImageId"] for i, _, _ in old], pointers)
    users_of = snapshot_users(ec2)
    doomed_snapshots: set[str] = set()
    for image, tags, age in old:
        refs = [r for r in references[image["ImageId"]] if not (r.kind == "instance" and r.ident in doomed)]
        if refs:
            plan.kept.append(Kept("image", image["ImageId"], "; ".join(r.text for r in refs)))
            continue
        snapshots = [s for s in snapshots_of(image) if not users_of.get(s, set()) - {image["ImageId"]}]
        doomed_snapshots.update(snapshots)
        plan.leftovers.append(Leftover("image", image["ImageId"],
                                       f"candidate of build {tags.get('BuildId', '?')} never approved or rejected, "
                                       f"{_hours(age)}", {"snapshots": snapshots, "os": tags.get("OS", "")}))

    # 5. Snapshots no image uses any more, and unattached volumes.
    for snapshot in _paged(ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"],
                           Filters=[{"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}]):
        sid = snapshot["SnapshotId"]
        if sid in doomed_snapshots or users_of.get(sid):
            continue
        age = _age(now, parse_time(snapshot.get("StartTime")))
        if snapshot.get("State") == "completed" and age is not None and age >= candidate_limit:
            plan.leftovers.append(Leftover("snapshot", sid, f"no image uses it any more, {_hours(age)}"))
        else:
            plan.kept.append(Kept("snapshot", sid, f"unused, {snapshot.get('State')}, {_hours(age)} (threshold "
                                  f"{candidates_older_than_hours:g} h)"))
    for volume in _paged(ec2, "describe_volumes", "Volumes", Filters=[
            {"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}, {"Name": "status", "Values": ["available"]}]):
        age = _age(now, parse_time(volume.get("CreateTime")))
        if age is not None and age >= limit:
            plan.leftovers.append(Leftover("volume", volume["VolumeId"], f"unattached, {_hours(age)}"))
        else:
            plan.kept.append(Kept("volume", volume["VolumeId"], f"unattached, {_hours(age)} (threshold {older_than_hours:g} h)"))
    return plan


def _client_error(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'Error')}: {error.get('Message', '')}"


def _apply_aws(plan: ReapPlan, ec2: Any, ssm: Any, settings: Optional[Settings]) -> list[Outcome]:
    from .lifecycle import pointer_name

    by_kind: dict[str, list[Leftover]] = {}
    for item in plan.leftovers:
        by_kind.setdefault(item.kind, []).append(item)
    outcomes: list[Outcome] = []
    terminated: list[str] = []

    instances = [x.ident for x in by_kind.get("instance", [])]
    if instances:
        try:
            ec2.terminate_instances(InstanceIds=instances)
            # Groups and key pairs stay in use until the instances are really gone.
            ec2.get_waiter("instance_terminated").wait(InstanceIds=instances, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
            terminated = instances
        except (botocore.exceptions.ClientError, botocore.exceptions.WaiterError) as exc:
            outcomes.append(Outcome(f"terminate {', '.join(instances)}", "failed", str(exc)))
        for item in by_kind["instance"]:
            shown = [i for r in ec2.describe_instances(InstanceIds=[item.ident])["Reservations"] for i in r["Instances"]]
            state = shown[0]["State"]["Name"] if shown else "terminated"
            outcomes.append(Outcome(item.describe(), "done") if state == "terminated" else
                            Outcome(item.describe(), "failed", f"state {state} afterwards"))

    for item in by_kind.get("key-pair", []):
        try:
            ec2.delete_key_pair(KeyName=item.ident)
            left = [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] == item.ident]
            outcomes.append(Outcome(item.describe(), "failed", "still listed") if left else Outcome(item.describe(), "done"))
        except botocore.exceptions.ClientError as exc:
            outcomes.append(Outcome(item.describe(), "failed", _client_error(exc)))

    for item in by_kind.get("security-group", []):
        outcomes.append(_delete_group(ec2, item))

    for item in by_kind.get("image", []):
        try:
            pointers = [pointer_name(settings, item.details["os"])] if settings and item.details.get("os") else []
            refs = [r for r in image_references(ec2, ssm, [item.ident], pointers)[item.ident]
                    if not (r.kind == "instance" and r.ident in terminated)]
            if refs:
                outcomes.append(Outcome(item.describe(), "skipped", "in use since the plan: " + "; ".join(r.text for r in refs)))
                continue
            ec2.deregister_image(ImageId=item.ident)
            for snapshot in item.details.get("snapshots", []):
                ec2.delete_snapshot(SnapshotId=snapshot)
            left = ([item.ident] if not image_gone(ec2, item.ident) else []) + [
                s for s in item.details.get("snapshots", []) if not snapshot_gone(ec2, s)]
            outcomes.append(Outcome(item.describe(), "failed", f"still there: {', '.join(left)}") if left else
                            Outcome(item.describe(), "done"))
        except botocore.exceptions.ClientError as exc:
            outcomes.append(Outcome(item.describe(), "failed", _client_error(exc)))

    for kind, delete, gone in (("snapshot", lambda i: ec2.delete_snapshot(SnapshotId=i), lambda i: snapshot_gone(ec2, i)),
                               ("volume", lambda i: ec2.delete_volume(VolumeId=i), lambda i: _volume_gone(ec2, i))):
        for item in by_kind.get(kind, []):
            try:
                delete(item.ident)
                outcomes.append(Outcome(item.describe(), "done") if gone(item.ident) else
                                Outcome(item.describe(), "failed", "still there afterwards"))
            except botocore.exceptions.ClientError as exc:
                outcomes.append(Outcome(item.describe(), "failed", _client_error(exc)))
    return outcomes


def _volume_gone(ec2: Any, volume_id: str) -> bool:
    try:
        volumes = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "InvalidVolume.NotFound":
            return True
        raise
    return not volumes or volumes[0].get("State") == "deleted"


def _delete_group(ec2: Any, item: Leftover, attempts: int = 24, delay: float = 5.0) -> Outcome:
    """A group stays "in use" for a while after its instance terminated: retry DependencyViolation."""
    for attempt in range(attempts):
        try:
            ec2.delete_security_group(GroupId=item.ident)
            break
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "DependencyViolation" or attempt == attempts - 1:
                return Outcome(item.describe(), "failed", _client_error(exc))
            time.sleep(delay)
    try:
        left = ec2.describe_security_groups(GroupIds=[item.ident])["SecurityGroups"]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "InvalidGroup.NotFound":
            raise
        left = []
    return Outcome(item.describe(), "failed", "still there afterwards") if left else Outcome(item.describe(), "done")


# --- entry points ----------------------------------------------------------------------------------
def plan(settings: Settings, target: str, state_dir: Path, older_than_hours: float = DEFAULT_OLDER_THAN_HOURS,
         candidates_older_than_hours: float = DEFAULT_CANDIDATES_OLDER_THAN_HOURS, *,
         now: Optional[datetime] = None) -> ReapPlan:
    if older_than_hours < 0 or candidates_older_than_hours < 0:
        raise UserError("--older-than-hours must be 0 or more")
    if target == "local":
        return plan_local(state_dir, older_than_hours, candidates_older_than_hours, now=now)
    if target == "aws":
        return plan_aws(settings, older_than_hours, candidates_older_than_hours, now=now)
    raise UserError(f"unknown --target {target!r}: choose aws or local")


def apply(plan: ReapPlan, *, yes: bool, settings: Optional[Settings] = None, ec2: Any = None, ssm: Any = None,
          grace_seconds: float = 10.0) -> list[Outcome]:
    """Remove what the plan lists, then read each back; raise NotApplied if anything is left.

    settings (aws): names the SSM pointers checked once more before a candidate image goes."""
    if not yes:
        raise UserError("the reaper changes nothing without --yes: read the plan, then run it again with --yes")
    if plan.target == "local":
        outcomes = _apply_local(plan, grace_seconds)
    else:
        from .targets.aws import clients

        ec2 = ec2 or clients.client("ec2", plan.where)
        ssm = ssm or clients.client("ssm", plan.where)
        outcomes = _apply_aws(plan, ec2, ssm, settings)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise NotApplied(f"reap {plan.target} ({plan.where}): {len(failed)} of {len(outcomes)} removal(s) did not land, "
                         f"first: {failed[0].action}: {failed[0].detail}; run invoke reap again to see what is left",
                         outcomes)
    return outcomes
