"""Facts first, verdicts after: the snapshot every check reads.

A verify run gathers the instance's state once (verify/collector.py, one SSH command), keeps
the raw snapshot, and the checks judge it in-process. The same checks run offline against a
saved snapshot (`--ga-facts FILE`): that is how they are unit-tested against recorded
snapshots of real hosts, and how a reviewer re-checks a verdict.

Reading a fact never guesses. A fact that was not collected, a file that could not be read, a
command that failed: each raises FactUnavailable (an AssertionError), so the check that needed
it fails and its report row says why. "Absent" is a fact too (a file that does not exist, a
tool that is not installed) and is answered as such - only where the snapshot says so.

A few things are genuinely dynamic (the pending-updates simulation, the metadata service
probe): they run as their own remote commands through `Snapshot.dynamic`, and their results
are recorded into the same snapshot, so offline re-checks see them too.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shlex
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Optional

COLLECTOR = Path(__file__).with_name("collector.py")
SCHEMA = 1

# The collector runs as `python3 -c BOOTSTRAP <source> <request>`: both arguments are base64
# (no quote, no dollar, no space can reach the shell) and testinfra quotes them once more.
BOOTSTRAP = ("import base64,sys,zlib;s=sys.argv.pop(1);"
             "exec(compile(zlib.decompress(base64.b64decode(s)),'collector.py','exec'))")

# Configuration read on every host (globs expand on the host). Paths that differ per OS come
# from os/<os>.yaml and the controls' params (build_request adds them).
READ = [
    "/etc/os-release", "/etc/login.defs", "/etc/shells", "/etc/machine-id", "/etc/hostname",
    "/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/passwd-", "/etc/group-", "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/pam.d/*", "/etc/security/*.conf", "/etc/security/limits.d/*", "/etc/security/pwquality.conf.d/*",
    "/etc/sudoers", "/etc/sudoers.d/*",
    "/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d/*", "/etc/ssh/ssh_host_*_key.pub", "/etc/sysconfig/sshd",
    "/etc/audit/auditd.conf", "/etc/audit/audit.rules", "/etc/audit/rules.d/*",
    "/etc/rsyslog.conf", "/etc/rsyslog.d/*", "/etc/logrotate.conf", "/etc/logrotate.d/*",
    "/etc/profile", "/etc/profile.d/*", "/etc/bashrc", "/etc/bash.bashrc",
    "/root/.bash_profile", "/root/.bashrc", "/root/.profile",  # root's own umask (GA-ROOT-UMASK)
    "/etc/motd", "/etc/issue", "/etc/issue.net",
    "/etc/default/grub", "/etc/default/apport", "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg",
    "/boot/loader/entries/*.conf", "/etc/selinux/config",
    "/etc/dnf/dnf.conf", "/etc/dnf/automatic.conf", "/etc/yum.repos.d/*.repo",
    "/etc/apt/sources.list", "/etc/apt/sources.list.d/*", "/etc/apt/apt.conf.d/*",
    "/etc/exim4/update-exim4.conf.conf",
    "/etc/cron.allow", "/etc/cron.deny", "/etc/at.allow", "/etc/at.deny", "/etc/crontab",
    "/proc/cmdline", "/proc/modules", "/proc/stat", "/proc/self/mounts", "/proc/filesystems",
    "/sys/module/apparmor/parameters/enabled", "/sys/kernel/security/apparmor/profiles", "/sys/fs/selinux/enforce",
]
STAT = [
    "/boot/vmlinuz-*",  # the installed kernels on the Debian family (what `linux-version list` reads)
    "/etc/ssh/ssh_host_*_key", "/etc/security/opasswd", "/etc/security/opasswd.old",
    "/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json",
    "/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.toml",
]
# (directory, depth): metadata of everything below.
TREES = [("/var/log", 8), ("/run/log/journal", 3), ("/etc/audit", 4), ("/etc/ssh", 2), ("/etc/sudoers.d", 1), ("/etc/cron.d", 1),
         ("/var/lib/cloud/instances", 1), ("/etc/security/pwquality.conf.d", 1)]

# Units checks name in their code (the others come from the controls' params and the OS data):
# systemd is asked about exactly these.
CHECKED_UNITS = ("apparmor.service", "apport.service", "golden-ami-bootloader-perms.service", "ntp.service",
                 "ntpsec.service", "systemd-journald.service", "systemd-timesyncd.service")
# Checks whose walk roots come from their params; the walk runs once for all of them.
WALK_SCAN_CONTROLS = ("6.1.11", "6.1.12")
WALK_SUID_CONTROLS = ("5.2.3.6",)
# The SELinux checks that ask for more than files: the audited denials, the processes' contexts.
SELINUX_ENFORCING_CONTROL, SELINUX_SERVICES_CONTROL = "1.6.1.5", "1.6.1.6"
# The check that judges every filesystem module of the running kernel.
UNUSED_FILESYSTEMS_CONTROL = "GA-MODULE-FS-UNUSED"
# The check that runs AIDE on the instance (its binary and configuration are its params).
FILE_INTEGRITY_CONTROL = "1.3.1"
# Checks that share the one grep walk for secrets: its roots and patterns are the union of theirs.
SECRET_SCAN_CONTROLS = ("GA-HYG-AWSCREDS", "GA-HYG-PRIVKEYS")

# Python is on every cloud image (cloud-init runs on it); curl is not.
_IMDS_PROBE = r"""
import sys, urllib.error, urllib.request
base = "http://169.254.169.254"
try:
    request = urllib.request.Request(base + "/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    token = urllib.request.urlopen(request, timeout=5).read()
    print("token", "yes" if token else "empty")
except Exception as exc:
    print("token", "error:", exc)
    sys.exit(0)
try:
    urllib.request.urlopen(base + "/latest/meta-data/", timeout=5)
    print("plain", 200)
except urllib.error.HTTPError as exc:
    print("plain", exc.code)
except Exception as exc:
    print("plain", "error:", exc)
"""

# Dynamic commands: (shell command, exit codes that mean "read fine").
DYNAMIC = {
    "imds_probe": ("python3 -c " + shlex.quote(_IMDS_PROBE), (0,)),
    # No translations: they say nothing about versions, and are ~40% of the index download.
    "pending_updates:apt": (
        "apt-get -q -o DPkg::Lock::Timeout=300 -o Acquire::Languages=none update >/dev/null"
        " && apt-get -s -o Debug::NoLocking=1 dist-upgrade",
        (0,)),
    "pending_updates:dnf": ("dnf -q --releasever=latest updateinfo list --security --available", (0,)),
}

# Audit mode (a running instance someone else owns) must leave the host as it found it: the same
# questions, with the package lists and caches in a temporary directory removed afterwards (apt:
# lists and binary caches; dnf: cache, logs and history), and no update hooks run (apt reads the
# `-c` file after its own configuration, so its #clear empties the hook lists /etc/apt set).
_APT_READONLY_CONF = ('Dir::State::Lists "%s/lists"; Dir::Cache "%s/cache";\\n#clear APT::Update::Pre-Invoke;\\n'
                      '#clear APT::Update::Post-Invoke;\\n#clear APT::Update::Post-Invoke-Success;\\n')
DYNAMIC.update({
    "pending_updates:apt:audit": (
        "d=$(mktemp -d) && trap 'rm -rf \"$d\"' EXIT && chmod 0755 \"$d\""
        " && mkdir -p \"$d/lists/partial\" \"$d/cache/archives/partial\""
        f" && printf '{_APT_READONLY_CONF}' \"$d\" \"$d\" > \"$d/apt.conf\""
        " && apt-get -q -c \"$d/apt.conf\" -o Acquire::Languages=none update >/dev/null"
        " && apt-get -s -c \"$d/apt.conf\" -o Debug::NoLocking=1 dist-upgrade",
        (0,)),
    "pending_updates:dnf:audit": (
        "d=$(mktemp -d) && trap 'rm -rf \"$d\"' EXIT"
        " && dnf -q --releasever=latest --setopt=cachedir=\"$d/cache\" --setopt=logdir=\"$d/log\""
        " --setopt=persistdir=\"$d/lib\" updateinfo list --security --available",
        (0,)),
})


def pending_updates_name(package_manager: str, mode: str = "verify") -> str:
    """The dynamic command that asks for pending updates in this mode (audit: the read-only one)."""
    return f"pending_updates:{package_manager}" + (":audit" if mode == "audit" else "")


class FactUnavailable(AssertionError):
    """A fact a check needs could not be read: the check fails with this reason."""


def _paths_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("/") else []
    if isinstance(value, list):
        return [p for item in value for p in _paths_in(item)]
    return []


def build_request(controls: list[dict[str, Any]], os_data: dict[str, Any], target_os: dict[str, Any],
                  optional: set[str]) -> dict[str, Any]:
    """What the collector gathers for these controls (the applicable ones in force)."""
    by_id = {c["id"]: c for c in controls}
    stat = list(STAT)
    modules, units, dropins = [], list(CHECKED_UNITS), []
    for control in controls:
        for name, value in control["params"].items():
            stat += _paths_in(value)
            if name == "module":
                modules.append(value)
            elif name == "modules":
                modules += list(value)
            elif name == "units":
                units += list(value)
            elif name == "service":
                units.append(f"{value}.service")
            elif name.endswith("_dropins"):
                dropins.append(f"{value}/*")  # every entry, read: what each file opens, and its owner
            elif name.endswith("_conf") and isinstance(value, str):
                dropins.append(value)  # a configuration file the check reads
    for name in [*os_data.get("services", {}).values(), *os_data.get("conflicting_firewalls", []),
                 *(agent["service"] for agent in target_os.get("agents", {}).values() if agent.get("service"))]:
        units.append(name if "." in name else f"{name}.service")
    paths = os_data.get("paths", {})
    read = list(READ) + dropins + [p for p in paths.values()
                                   if isinstance(p, str) and p.startswith("/") and not p.endswith("_dir")]
    if paths.get("chrony_sources_dir"):
        read += [f"{paths['chrony_sources_dir']}/*.sources", f"{paths['chrony_sources_dir']}/*.conf"]
    for key in ("chrony_conf", "nftables_conf"):
        if paths.get(key):
            read.append(paths[key])
    request: dict[str, Any] = {
        "login_user": target_os["login_user"],
        "package_manager": os_data.get("package_manager"),
        "nftables_conf": paths.get("nftables_conf"),
        "read": sorted(set(read)),
        "stat": sorted(set(stat)),
        "trees": TREES,
        "modules": sorted(set(modules)),
        "units": sorted(set(units)),
        "optional": sorted(optional),
        # dpkg --verify / rpm -Va hash every installed file: asked for only when checked.
        "verify_packages": "GA-PATCH-VERIFIED" in by_id,
    }
    # SELinux: the denials audited since boot (1.6.1.5), the context of every process (1.6.1.6).
    if SELINUX_ENFORCING_CONTROL in by_id:
        request["selinux_denials"] = True
    if SELINUX_SERVICES_CONTROL in by_id:
        request["process_labels"] = True
    if UNUSED_FILESYSTEMS_CONTROL in by_id:
        request["filesystem_modules"] = True  # the kernel's own list, and modprobe about each
    if FILE_INTEGRITY_CONTROL in by_id:
        # AIDE's own check against the image's database: it reads every watched file.
        aide = by_id[FILE_INTEGRITY_CONTROL]["params"]
        request["file_integrity"] = {"binary": aide["binary"], "config": aide["aide_conf"]}
    if "walk" in optional:
        scan = next((by_id[i]["params"] for i in WALK_SCAN_CONTROLS if i in by_id), {})
        suid = next((by_id[i]["params"] for i in WALK_SUID_CONTROLS if i in by_id), {})
        request["walk"] = {
            "scan": {"skip_fstypes": scan.get("skip_fstypes", []), "skip_paths": scan.get("skip_paths", [])},
            "suid": {"skip_fstypes": suid.get("skip_fstypes", [])},
        }
    scanning = [by_id[i]["params"] for i in SECRET_SCAN_CONTROLS if i in by_id]
    if "secret_scan" in optional and scanning:
        request["secret_scan"] = {
            "paths": list(dict.fromkeys(path for params in scanning for path in params.get("scan_paths", []))),
            "patterns": {kind: pattern for params in scanning for kind, pattern in params.get("patterns", {}).items()},
        }
    return request


def collector_command(request: dict[str, Any]) -> tuple[str, list[str]]:
    """(format, arguments) for testinfra's host.run(format, *arguments), which quotes each one."""
    source = base64.b64encode(zlib.compress(COLLECTOR.read_bytes(), 9)).decode()
    encoded_request = base64.b64encode(json.dumps(request, sort_keys=True).encode()).decode()
    return "python3 -c %s %s %s", [BOOTSTRAP, source, encoded_request]


def decode_output(stdout: str) -> dict[str, Any]:
    return json.loads(zlib.decompress(base64.b64decode(stdout.strip())))


# --- reading the snapshot -------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    path: str
    type: str
    mode: int
    uid: int
    gid: int
    user: Optional[str]  # None: no account has this uid
    group: Optional[str]
    size: int
    mtime: int
    target: Optional[str] = None  # symlinks
    follow_raw: Optional[dict] = None

    @property
    def owner(self) -> str:
        return self.user if self.user is not None else str(self.uid)

    @property
    def group_name(self) -> str:
        return self.group if self.group is not None else str(self.gid)

    def followed(self) -> Optional["Stat"]:
        """The metadata of what a symlink points at (self for anything else); None: dangling."""
        if self.type != "symlink":
            return self
        return _stat_from(self.path, self.follow_raw or {"error": "not followed"})

    def __str__(self) -> str:
        return f"{self.path} {self.owner}:{self.group_name} {self.mode:04o}"


def _stat_from(path: str, raw: dict) -> Optional[Stat]:
    if "error" in raw:
        raise FactUnavailable(f"cannot stat {path}: {raw['error']}")
    if not raw.get("exists"):
        return None
    return Stat(path=path, type=raw["type"], mode=int(raw["mode"], 8), uid=raw["uid"], gid=raw["gid"],
                user=raw.get("user"), group=raw.get("group"), size=raw.get("size", 0), mtime=raw.get("mtime", 0),
                target=raw.get("target"), follow_raw=raw.get("follow"))


@dataclass(frozen=True)
class CommandResult:
    name: str
    argv: list
    rc: Optional[int]
    stdout: str
    stderr: str
    error: str = ""

    @property
    def missing_tool(self) -> bool:
        return self.rc is None and self.error.endswith("command not found")

    def describe(self) -> str:
        command = " ".join(self.argv) if self.argv else self.name
        if self.rc is None:
            return f"`{command}` did not run: {self.error}"
        detail = " ".join(self.stderr.split())[:300] or "no message"
        return f"`{command}` exited {self.rc}: {detail}"


class Snapshot:
    """The raw facts of one host, and readers that never pass on data they lack."""

    def __init__(self, data: dict[str, Any], run_dynamic: Optional[Callable[[str], dict]] = None,
                 gather: Optional[Callable[[], tuple[dict, dict]]] = None):
        self.data = data
        self._run_dynamic = run_dynamic
        self._gather = gather  # live: the collector runs when a check first reads a gathered fact
        self.timings: dict[str, Any] = {}  # how long gathering took (live runs)
        self._cache: dict[str, Any] = {}
        self.data.setdefault("dynamic", {})
        self.dynamic_seconds = 0.0  # spent waiting for dynamic commands in this process (not replayed ones)
        self.pending: dict[str, Future] = {}  # dynamic commands started early (take's prefetch)

    @classmethod
    def load(cls, path: Path) -> "Snapshot":
        data = json.loads(Path(path).read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"{path}: fact snapshot schema {data.get('schema')!r}, expected {SCHEMA}")
        return cls(data)

    @property
    def collected(self) -> dict[str, Any]:
        if self._gather is not None:
            gather, self._gather = self._gather, None
            started = time.monotonic()
            data, timings = gather()
            self.data.update(data)
            self.timings.update(timings, gather_wait_seconds=round(time.monotonic() - started, 3))
        collected = self.data.get("collected")
        if not isinstance(collected, dict):
            raise FactUnavailable(f"no fact snapshot: {self.data.get('collector_error', 'the collector did not run')}")
        return collected

    @property
    def context(self) -> dict[str, Any]:
        return self.data.get("context", {})

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """A parsed view of the snapshot, computed once (a failure is raised again each time)."""
        if key not in self._cache:
            try:
                self._cache[key] = ("ok", compute())
            except FactUnavailable as exc:
                self._cache[key] = ("error", exc)
        kind, value = self._cache[key]
        if kind == "error":
            raise FactUnavailable(str(value))
        return value

    # --- commands ---
    def result(self, name: str) -> CommandResult:
        raw = self.collected.get("commands", {}).get(name)
        if raw is None:
            raise FactUnavailable(f"the snapshot has no `{name}` output (not collected)")
        return CommandResult(name, raw.get("argv", []), raw.get("rc"), raw.get("stdout", ""), raw.get("stderr", ""),
                             raw.get("error", "") or "")

    def output(self, name: str, ok: tuple = (0,)) -> str:
        """stdout of a command that must have succeeded."""
        result = self.result(name)
        if result.rc is None or result.rc not in ok:
            raise FactUnavailable(result.describe())
        return result.stdout

    def optional_output(self, name: str, ok: tuple = (0,)) -> Optional[str]:
        """stdout, or None when the tool is not installed on this host."""
        result = self.result(name)
        if result.missing_tool:
            return None
        return self.output(name, ok)

    # --- files ---
    def _file(self, path: str) -> dict:
        raw = self.collected.get("files", {}).get(path)
        if raw is None:
            raise FactUnavailable(f"the snapshot has nothing on {path} (not collected)")
        return raw

    def stat(self, path: str) -> Optional[Stat]:
        """lstat of a collected path; None when it does not exist."""
        return _stat_from(path, self._file(path)["stat"])

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def text(self, path: str) -> Optional[str]:
        """The content of a collected file; None when it does not exist."""
        raw = self._file(path)
        if "content" in raw:
            return raw["content"]
        if raw.get("exists") is False or raw["stat"].get("exists") is False:
            return None
        why = raw.get("error") or raw.get("skipped") or "not read"
        raise FactUnavailable(f"cannot read {path}: {why}")

    def content(self, path: str) -> str:
        """The content of a file that must exist."""
        text = self.text(path)
        if text is None:
            raise FactUnavailable(f"{path} does not exist")
        return text

    def glob(self, pattern: str) -> list[str]:
        """What a glob matched on the host (sorted); the pattern must have been collected."""
        found = self.collected.get("globs", {}).get(pattern)
        if found is None:
            raise FactUnavailable(f"the snapshot did not expand {pattern} (not collected)")
        return list(found)

    def tree(self, root: str) -> dict[str, Optional[Stat]]:
        """path -> metadata of everything collected under root (root included)."""
        trees = self.collected.get("trees", {})
        # The deepest collected listing that covers root (a home and its .ssh are listed apart).
        for collected_root in sorted(trees, key=len, reverse=True):
            entries = trees[collected_root]
            if root == collected_root or root.startswith(collected_root.rstrip("/") + "/"):
                prefix = root.rstrip("/")
                chosen = {p: raw for p, raw in entries.items() if p == prefix or p.startswith(prefix + "/")}
                if chosen:
                    unlisted = [f"{p}: {raw['list_error']}" for p, raw in chosen.items() if raw.get("list_error")]
                    if unlisted:
                        raise FactUnavailable(f"cannot list {'; '.join(unlisted)}")
                    return {p: _stat_from(p, raw) for p, raw in sorted(chosen.items())}
        raise FactUnavailable(f"the snapshot did not list {root} (not collected)")

    # --- kernel parameters ---
    def sysctl(self, key: str) -> Optional[str]:
        """A kernel parameter as text; None when the kernel has no such parameter."""
        sysctl = self.collected.get("sysctl")
        if sysctl is None:
            raise FactUnavailable("the snapshot has no kernel parameters (not collected)")
        if key in sysctl["errors"]:
            raise FactUnavailable(f"cannot read kernel parameter {key}: {sysctl['errors'][key]}")
        return sysctl["values"].get(key)

    def sysctl_prefix_exists(self, prefix: str) -> bool:
        return bool(self.sysctl_names(prefix))

    def sysctl_names(self, prefix: str) -> list[str]:
        """The kernel parameters whose names start with prefix (readable or not), sorted."""
        sysctl = self.collected.get("sysctl")
        if sysctl is None:
            raise FactUnavailable("the snapshot has no kernel parameters (not collected)")
        return sorted(key for key in list(sysctl["values"]) + list(sysctl["errors"]) if key.startswith(prefix))

    # --- sections gathered as a whole ---
    def section(self, name: str) -> Any:
        value = self.collected.get(name)
        if value is None:
            raise FactUnavailable(f"the snapshot has no {name.replace('_', ' ')} (not collected)")
        return value

    # --- dynamic commands ---
    def dynamic(self, name: str) -> CommandResult:
        """A command that must run now (live) or was recorded then (offline)."""
        recorded = self.data["dynamic"].get(name)
        waited = time.monotonic()
        if recorded is None and name in self.pending:
            try:
                recorded = self.pending.pop(name).result()
            except Exception as exc:  # noqa: BLE001 - the connection broke: the check fails with why
                recorded = {"command": name, "rc": None, "error": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
            self.data["dynamic"][name] = recorded
            self.dynamic_seconds += time.monotonic() - waited
        if recorded is None:
            if self._run_dynamic is None:
                raise FactUnavailable(f"the snapshot has no result of `{name}` (recorded snapshots only replay it)")
            recorded = self._run_dynamic(name)
            self.data["dynamic"][name] = recorded
            self.dynamic_seconds += time.monotonic() - waited
        return CommandResult(name, [recorded.get("command", name)], recorded.get("rc"), recorded.get("stdout", ""),
                             recorded.get("stderr", ""), recorded.get("error", "") or "")

    def dynamic_output(self, name: str, ok: tuple = (0,)) -> str:
        result = self.dynamic(name)
        if result.rc is None or result.rc not in ok:
            raise FactUnavailable(result.describe())
        return result.stdout

    # --- saving ---
    def dump(self) -> bytes:
        return (json.dumps(self.data, indent=1, sort_keys=True) + "\n").encode()

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.dump()).hexdigest()


def gather(host, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the collector on host (one remote command); (collected facts or error, timings)."""
    started = time.monotonic()
    command, arguments = collector_command(request)
    result = host.run(command, *arguments)
    seconds = round(time.monotonic() - started, 3)
    if result.rc != 0:
        return {"collector_error": f"the collector exited {result.rc}: {' '.join(result.stderr.split())[-1000:]}"}, \
            {"snapshot_seconds": seconds}
    try:
        collected = decode_output(result.stdout)
    except (ValueError, zlib.error) as exc:
        return {"collector_error": f"the collector's output is not a snapshot: {exc}"}, {"snapshot_seconds": seconds}
    return {"collected": collected}, {"snapshot_seconds": seconds, "collector_seconds": collected.get("seconds"),
                                      "collector_process_seconds": collected.get("process_seconds"),
                                      "collector_command_seconds": collected.get("command_seconds")}


def take(host, request: dict[str, Any], context: dict[str, Any], prefetch: Iterable[str] = (),
         announce: Callable[[str], None] = lambda line: None) -> Snapshot:
    """The snapshot of a live host. The collector runs when a check first reads a gathered fact
    (a run that needs only dynamic commands - rebuild's pending-updates probe - never starts it);
    dynamic commands run on demand, and those named in prefetch start at once on channels of
    their own beside it: the pending-updates simulation waits on the network, the collector on
    the CPU. A host that cannot be reached (or trusted) gives a snapshot that says so, for every
    check to fail on."""
    data: dict[str, Any] = {"schema": SCHEMA, "request": request, "context": context}
    try:
        host.backend.client  # noqa: B018 - connect (and check the pinned key) once, before any thread
    except Exception as exc:  # noqa: BLE001 - one reason, reported by every check
        data["collector_error"] = f"{type(exc).__name__}: {exc}"
        return Snapshot(data, run_dynamic=lambda name: {"command": name, "rc": None, "error": data["collector_error"]})

    def collect() -> tuple[dict, dict]:
        announce("gathering the facts: one collector run on the host")
        try:
            return gather(host, request)
        except Exception as exc:  # noqa: BLE001 - the connection broke: every check that needed facts fails with why
            return {"collector_error": f"{type(exc).__name__}: {exc}"}, {}

    snapshot = Snapshot(data, run_dynamic=lambda name: run_dynamic(host, name), gather=collect)
    if prefetch:
        announce(f"started beside it: {', '.join(sorted(set(prefetch)))}")
        pool = ThreadPoolExecutor(max_workers=len(set(prefetch)), thread_name_prefix="dynamic")
        snapshot.pending.update({name: pool.submit(run_dynamic, host, name) for name in sorted(set(prefetch))})
        pool.shutdown(wait=False)
    return snapshot


def run_dynamic(host, name: str) -> dict[str, Any]:
    """Run one DYNAMIC command on host and return what the snapshot records of it."""
    if name not in DYNAMIC:
        raise KeyError(f"unknown dynamic command {name!r}")
    command, ok = DYNAMIC[name]
    started = time.monotonic()
    result = host.run(command)
    return {"command": command, "rc": result.rc, "stdout": result.stdout, "stderr": result.stderr[-4000:],
            "ok": list(ok), "seconds": round(time.monotonic() - started, 3)}
