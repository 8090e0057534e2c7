"""Audit facts as plain data: auditd.conf, `auditctl -s`, kernel command lines, and audit rules
as auditctl and augenrules write them (with what the benchmark expects of them).

Pure functions of text (and of the snapshot's filesystem walk, whose completeness
ga_system.walk_complete judges): nothing here reads the snapshot or runs anything, so each is
unit-testable with literal input. Malformed input a verdict depends on raises FactUnavailable,
never an empty answer.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from ga_facts import FactUnavailable
from ga_system import verrevcmp

BOTH_ARCHES = ("b64", "b32")


# --- auditd.conf and auditctl -s -----------------------------------------------------------
def parse_auditd_conf(text: str) -> dict[str, str]:
    """auditd.conf as a dict (keys lower-case; the last line of a key wins)."""
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip().lower()] = value.strip()
    return settings


def parse_auditctl_status(text: str) -> dict[str, str]:
    """`auditctl -s`: "name value" lines -> {name: value} (the first line of a name wins)."""
    status: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split(None, 1)
        if fields:
            status.setdefault(fields[0], fields[1].strip() if len(fields) > 1 else "")
    if not status:
        raise FactUnavailable("`auditctl -s` printed nothing")
    return status


def audit_enabled(status: dict[str, str]) -> Optional[str]:
    """The "enabled" flag of `auditctl -s` (0, 1, or 2 = locked); None when not a number."""
    value = status.get("enabled", "")
    return value if value.isdigit() else None


# --- kernel command lines --------------------------------------------------------------------
_GRUB_LINUX = re.compile(r"^[ \t]*linux(efi)?[ \t]")


def kernel_arg(text: str, name: str) -> Optional[str]:
    """The value of the last name=value among blank-separated kernel arguments (None if absent)."""
    values = [token.partition("=")[2] for token in text.replace('"', " ").split() if token.startswith(name + "=")]
    return values[-1] if values else None


def grub_kernel_lines(grub_cfg: str) -> list[str]:
    """The `linux` / `linuxefi` lines of a grub.cfg (each boots a kernel with its arguments)."""
    return [line for line in grub_cfg.splitlines() if _GRUB_LINUX.match(line)]


def grubby_kernel_lines(info: str) -> list[str]:
    """The `args=` lines of `grubby --info=ALL` (one per boot entry)."""
    return [line for line in info.splitlines() if line.startswith("args=")]


# --- audit rules, as auditctl and augenrules write them ----------------------------------------
@dataclass(frozen=True)
class Rule:
    kind: str  # "watch" or "syscall"
    text: str
    arch: Optional[str] = None
    syscalls: frozenset = frozenset()
    filters: frozenset = frozenset()  # "name<op>value", comparisons as "C:a!=b"
    keys: frozenset = frozenset()
    path: str = ""  # watches
    perms: frozenset = frozenset()  # watches
    exit_always: bool = True

    @property
    def action(self) -> set[str]:
        """The list,action pair of a syscall rule (e.g. {"always", "exit"}); empty for a watch."""
        tokens = self.text.split()
        if self.kind != "syscall" or len(tokens) < 2 or tokens[0] not in ("-a", "-A"):
            return set()
        return set(tokens[1].split(","))


_FIELD = re.compile(r"^([A-Za-z_0-9]+)(!=|>=|<=|&=|=|>|<|&)(.*)$")
_UNSET = {"unset", "-1", "4294967295"}
_ERRNO = {"-13": "-EACCES", "-1": "-EPERM"}


def _filter(name: str, op: str, value: str) -> str:
    if value in _UNSET and name in ("auid", "uid", "euid", "suid", "fsuid", "loginuid"):
        value = "unset"
    if name == "exit":
        value = _ERRNO.get(value, value)
    return f"{name}{op}{value}"


def parse_rule(line: str) -> Optional[Rule]:
    """One rule line (auditctl -l output or a rules file line) in a comparable form."""
    tokens = line.split()
    kind, arch, path, perms = "", None, "", ""
    syscalls_seen: set[str] = set()
    filters: set[str] = set()
    keys: list[str] = []
    action = ""
    index = 0
    while index < len(tokens) - 1:
        option, value = tokens[index], tokens[index + 1]
        index += 2
        if option == "-w":
            kind, path = "watch", value
        elif option == "-p":
            perms = value
        elif option == "-k":
            keys.append(value)
        elif option in ("-a", "-A"):
            kind, action = "syscall", value
        elif option == "-S":
            syscalls_seen.update(value.split(","))
        elif option in ("-F", "-C"):
            match = _FIELD.match(value)
            if not match:
                continue
            name, op, operand = match.groups()
            if option == "-C":
                if op in ("=", "!="):
                    name, operand = sorted((name, operand))
                filters.add(f"C:{name}{op}{operand}")
            elif name == "arch":
                arch = operand
            elif name == "key":
                keys.append(operand)
            else:
                filters.add(_filter(name, op, operand))
        else:
            index -= 1  # an option without a value
    if kind == "syscall":
        # auditctl -l shows a plain watch as -w, a rules file may write it as -F path= -F perm=.
        names = {f.split("=", 1)[0] for f in filters}
        if arch is None and syscalls_seen <= {"all"} and names in ({"path", "perm"}, {"dir", "perm"}):
            watched = next(f for f in filters if f.startswith(("path=", "dir=")))
            permission = next(f for f in filters if f.startswith("perm="))
            return Rule("watch", line, path=watched.split("=", 1)[1].rstrip("/") or "/",
                        perms=frozenset(permission.split("=", 1)[1]), keys=frozenset(keys))
        return Rule("syscall", line, arch=arch, syscalls=frozenset(syscalls_seen or {"all"}),
                    filters=frozenset(filters), keys=frozenset(keys),
                    exit_always=set(action.split(",")) == {"always", "exit"})
    if kind == "watch":
        return Rule("watch", line, path=path.rstrip("/") or "/", perms=frozenset(perms), keys=frozenset(keys))
    return None


def parse_rules(text: str) -> list[Rule]:
    """Every rule (-a, -A, -w lines) of a rules file or of `auditctl -l`, in order."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("-a ", "-A ", "-w ")):
            rule = parse_rule(line)
            if rule is not None:
                rules.append(rule)
    return rules


def control_lines(text: str) -> list[str]:
    """The lines of a rules file that are neither blank nor comments, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def task_never(rules: Iterable[Rule]) -> list[Rule]:
    """task,never rules: they switch syscall auditing off for every process."""
    return [rule for rule in rules if {"task", "never"} <= rule.action]


@dataclass(frozen=True)
class Expect:
    """One rule the benchmark asks for."""

    kind: str
    key: str
    arch: Optional[str] = None
    syscalls: tuple = ()
    filters: frozenset = field(default_factory=frozenset)
    path: str = ""

    def describe(self) -> str:
        if self.kind == "watch":
            return f"-w {self.path} -p wa -k {self.key}"
        arch = f"-F arch={self.arch} " if self.arch else ""
        calls = f"-S {','.join(self.syscalls)} " if self.syscalls else ""
        filters = " ".join(f"-C {f[2:]}" if f.startswith("C:") else f"-F {f}" for f in sorted(self.filters))
        return f"-a always,exit {arch}{calls}{filters} -k {self.key}".replace("  ", " ")

    def missing_in(self, rules: Iterable[Rule]) -> str:
        """What of this expectation the rules lack ('' when nothing)."""
        rules = list(rules)
        if self.kind == "watch":
            found = any(r.kind == "watch" and r.path == self.path.rstrip("/") and {"w", "a"} <= r.perms
                        and self.key in r.keys for r in rules)
            return "" if found else self.describe()
        matching = [r for r in rules if r.kind == "syscall" and r.exit_always and r.arch == self.arch
                    and self.key in r.keys and r.filters == self.filters]
        if not self.syscalls:
            return "" if any(r.syscalls == {"all"} for r in matching) else self.describe()
        covered = set().union(*(r.syscalls for r in matching)) if matching else set()
        lacking = [s for s in self.syscalls if s not in covered]
        return "" if not lacking else f"{self.describe()} (missing: {','.join(lacking)})"


def missing_rules(rules: Iterable[Rule], expected: Iterable[Expect]) -> list[str]:
    """The expectations the rules do not meet, described as the rule that would meet them."""
    rules = list(rules)
    return [m for m in (e.missing_in(rules) for e in expected) if m]


def watch(path: str, key: str) -> Expect:
    return Expect("watch", key, path=path)


def syscalls(names: Iterable[str], key: str, filters: Iterable[str] = (), arches: Iterable[str] = BOTH_ARCHES) -> list[Expect]:
    return [Expect("syscall", key, arch=arch, syscalls=tuple(names), filters=frozenset(filters)) for arch in arches]


def by_users(uid_min: int) -> tuple[str, str]:
    return (f"auid>={uid_min}", "auid!=unset")


def program(path: str, key: str, uid_min: int) -> Expect:
    return Expect("syscall", key, filters=frozenset((f"path={path}", "perm=x", *by_users(uid_min))))


def uid_min(login_defs: dict[str, str]) -> int:
    """UID_MIN of login.defs (1000, useradd's default, when the file does not set it)."""
    value = login_defs.get("UID_MIN")
    if value is None:
        return 1000
    if not value.isdigit():
        raise FactUnavailable(f"/etc/login.defs has UID_MIN {value!r}, not a number")
    return int(value)


# --- augenrules, in-process ------------------------------------------------------------------
AUGENRULES_HEADER = "## This file is automatically generated from /etc/audit/rules.d"


def _file_version_key(name: str):
    """`ls -v` order (gnulib's filevercmp): names without their file suffixes compared the way
    dpkg compares versions - digit runs as numbers, letters before other characters - then the
    whole names."""
    def compare(a: str, b: str) -> int:
        suffix = re.compile(r"(\.[A-Za-z~][A-Za-z0-9~]*)*$")
        return verrevcmp(suffix.sub("", a, count=1), suffix.sub("", b, count=1)) or verrevcmp(a, b)
    return functools.cmp_to_key(compare)(name)


def augenrules_output(rules_files: dict[str, str]) -> str:
    """The /etc/audit/audit.rules that `augenrules` writes from rules.d (name -> content):
    the *.rules files in `ls -v` order, concatenated; blank and comment lines dropped; the last
    -D, -b and -f lines first, the last -e line last; under its one-line header. (Its --check
    is a byte comparison of exactly this with audit.rules: done here, on the snapshot, instead
    of forking the script's shell, awk and cmp on the host.)"""
    names = sorted((n for n in rules_files if n.endswith(".rules")), key=_file_version_key)
    text = "".join(rules_files[name] for name in names)  # cat: a missing final newline joins lines
    last = {"e": "", "D": "", "f": "", "b": ""}
    rules = []
    for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
        if not line or re.match(r"^\s*#", line):
            continue
        if re.match(r"^\s*-e", line):
            last["e"] = line
        elif re.match(r"^\s*-D\s*$", line):
            last["D"] = line
        elif re.match(r"^\s*-f", line):
            last["f"] = line
        elif re.match(r"^\s*-b", line):
            last["b"] = line
        else:
            rules.append(line)
    body = f"{last['D']}\n{last['b']}\n{last['f']}\n" + "".join(f"{rule}\n" for rule in rules) + f"{last['e']}\n"
    return f"{AUGENRULES_HEADER}\n{body}"
