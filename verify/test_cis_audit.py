"""CIS auditing (Amazon Linux 2023 5.2, beyond auditd itself): the kernel command line,
auditd's log retention, the benchmark's audit rules (both the rules on disk and the rules the
kernel has loaded), the lock on them, and the permissions of audit logs, configuration and
tools."""
from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass, field

import pytest

AUDITD_CONF = "/etc/audit/auditd.conf"
BOTH_ARCHES = ("b64", "b32")


# --- reading the system --------------------------------------------------------------------
def _auditd_conf(host):
    """auditd.conf as a dict (keys lower-case; the last line of a key wins)."""
    settings = {}
    for line in host.check_output(f"cat {AUDITD_CONF}").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip().lower()] = value.strip()
    return settings


def _uid_min(host):
    value = host.check_output("awk '$1 == \"UID_MIN\" {print $2}' /etc/login.defs").strip().splitlines()
    return int(value[-1]) if value else 1000


def _stat(host, paths, follow=False):
    """path -> (mode, owner, group) for existing paths."""
    if not paths:
        return {}
    out = host.check_output(f"stat {'-L ' if follow else ''}-c '%a %U %G %n' -- "
                            + " ".join(shlex.quote(p) for p in paths) + " 2>/dev/null || true")
    result = {}
    for line in out.splitlines():
        mode, owner, group, path = line.split(" ", 3)
        result[path] = (int(mode, 8), owner, group)
    return result


def _kernel_arg(text, name):
    """The value of the last name=value among blank-separated kernel arguments (None if absent)."""
    values = [token.partition("=")[2] for token in text.replace('"', " ").split() if token.startswith(name + "=")]
    return values[-1] if values else None


# --- audit rules, as auditctl and augenrules write them ----------------------------------------
@dataclass(frozen=True)
class Rule:
    kind: str  # "watch" or "syscall"
    text: str
    arch: str | None = None
    syscalls: frozenset = frozenset()
    filters: frozenset = frozenset()  # "name<op>value", comparisons as "C:a!=b"
    keys: frozenset = frozenset()
    path: str = ""  # watches
    perms: frozenset = frozenset()  # watches
    exit_always: bool = True


_FIELD = re.compile(r"^([A-Za-z_0-9]+)(!=|>=|<=|&=|=|>|<|&)(.*)$")
_UNSET = {"unset", "-1", "4294967295"}
_ERRNO = {"-13": "-EACCES", "-1": "-EPERM"}


def _filter(name, op, value):
    if value in _UNSET and name in ("auid", "uid", "euid", "suid", "fsuid", "loginuid"):
        value = "unset"
    if name == "exit":
        value = _ERRNO.get(value, value)
    return f"{name}{op}{value}"


def parse_rule(line):
    """One rule line (auditctl -l output or a rules file line) in a comparable form."""
    tokens = line.split()
    kind, arch, path, perms = "", None, "", ""
    syscalls, filters, keys, action = set(), set(), [], ""
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
            syscalls.update(value.split(","))
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
        if arch is None and syscalls <= {"all"} and names in ({"path", "perm"}, {"dir", "perm"}):
            watched = next(f for f in filters if f.startswith(("path=", "dir=")))
            permission = next(f for f in filters if f.startswith("perm="))
            return Rule("watch", line, path=watched.split("=", 1)[1].rstrip("/") or "/",
                        perms=frozenset(permission.split("=", 1)[1]), keys=frozenset(keys))
        return Rule("syscall", line, arch=arch, syscalls=frozenset(syscalls or {"all"}),
                    filters=frozenset(filters), keys=frozenset(keys),
                    exit_always=set(action.split(",")) == {"always", "exit"})
    if kind == "watch":
        return Rule("watch", line, path=path.rstrip("/") or "/", perms=frozenset(perms), keys=frozenset(keys))
    return None


def _rules(text):
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("-a ", "-A ", "-w ")):
            rule = parse_rule(line)
            if rule is not None:
                rules.append(rule)
    return rules


@dataclass(frozen=True)
class Expect:
    """One rule the benchmark asks for."""

    kind: str
    key: str
    arch: str | None = None
    syscalls: tuple = ()
    filters: frozenset = field(default_factory=frozenset)
    path: str = ""

    def describe(self):
        if self.kind == "watch":
            return f"-w {self.path} -p wa -k {self.key}"
        arch = f"-F arch={self.arch} " if self.arch else ""
        calls = f"-S {','.join(self.syscalls)} " if self.syscalls else ""
        filters = " ".join(f"-C {f[2:]}" if f.startswith("C:") else f"-F {f}" for f in sorted(self.filters))
        return f"-a always,exit {arch}{calls}{filters} -k {self.key}".replace("  ", " ")

    def missing_in(self, rules):
        """What of this expectation the rules lack ('' when nothing)."""
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


def watch(path, key):
    return Expect("watch", key, path=path)


def syscalls(names, key, filters=(), arches=BOTH_ARCHES):
    return [Expect("syscall", key, arch=arch, syscalls=tuple(names), filters=frozenset(filters)) for arch in arches]


def by_users(uid_min):
    return (f"auid>={uid_min}", "auid!=unset")


def program(path, key, uid_min):
    return Expect("syscall", key, filters=frozenset((f"path={path}", "perm=x", *by_users(uid_min))))


@pytest.fixture(scope="module")
def audit_rules(host):
    """(rules on disk in /etc/audit/rules.d, rules the kernel has loaded)."""
    on_disk = host.check_output("cat /etc/audit/rules.d/*.rules 2>/dev/null || true")
    loaded = host.check_output("auditctl -l")
    return _rules(on_disk), _rules(loaded)


@pytest.fixture(scope="module")
def uid_min(host):
    return _uid_min(host)


def _expect_rules(audit_rules, expected):
    on_disk, loaded = audit_rules
    for where, rules in (("in /etc/audit/rules.d", on_disk), ("loaded (auditctl -l)", loaded)):
        missing = [m for m in (e.missing_in(rules) for e in expected) if m]
        assert not missing, f"audit rules not {where}: {'; '.join(missing)}"


# --- 5.2.1 kernel command line --------------------------------------------------------------
def _next_boot_kernel_lines(host, params):
    """The argument lines the boot loader passes to every installed kernel."""
    if params["bootloader"] == "grubby":
        lines = host.check_output("grubby --info=ALL | grep '^args=' || true").splitlines()
        where = "grubby --info=ALL"
    else:
        cfg = shlex.quote(params["grub_cfg"])
        lines = host.check_output(f"grep -E '^[[:space:]]*linux(efi)?[[:space:]]' {cfg} || true").splitlines()
        where = params["grub_cfg"]
    assert lines, f"no kernel lines found in {where}"
    return where, lines


@pytest.mark.control("5.2.1.2")
def test_audit_from_boot(host, params):
    cmdline = host.check_output("cat /proc/cmdline")
    assert _kernel_arg(cmdline, "audit") == "1", f"the kernel was booted without audit=1: {cmdline.strip()}"
    where, lines = _next_boot_kernel_lines(host, params)
    lacking = [line.strip() for line in lines if _kernel_arg(line, "audit") != "1"]
    assert not lacking, f"{where} has kernel lines without audit=1: {lacking[0]}"


@pytest.mark.control("5.2.1.3")
def test_audit_backlog_limit(host, params):
    wanted = params["backlog_limit"]
    cmdline = host.check_output("cat /proc/cmdline")
    value = _kernel_arg(cmdline, "audit_backlog_limit")
    assert value is not None and value.isdigit() and int(value) >= wanted, \
        f"the kernel was booted with audit_backlog_limit={value}, expected at least {wanted}"
    where, lines = _next_boot_kernel_lines(host, params)
    for line in lines:
        value = _kernel_arg(line, "audit_backlog_limit")
        assert value is not None and value.isdigit() and int(value) >= wanted, \
            f"{where} has a kernel line with audit_backlog_limit={value}, expected at least {wanted}"


# --- 5.2.2 data retention -------------------------------------------------------------------
@pytest.mark.control("5.2.2.1")
def test_audit_log_size(host, params):
    value = _auditd_conf(host).get("max_log_file")
    assert value == str(params["max_log_file_mb"]), \
        f"auditd.conf max_log_file is {value or 'not set'}, expected {params['max_log_file_mb']}"


@pytest.mark.control("5.2.2.2")
def test_audit_logs_kept(host):
    value = _auditd_conf(host).get("max_log_file_action", "")
    assert value.lower() == "keep_logs", f"auditd.conf max_log_file_action is {value or 'not set'}, expected keep_logs"


# --- 5.2.3 rules ----------------------------------------------------------------------------
@pytest.mark.control("5.2.3.1")
def test_rules_sudoers_scope(audit_rules):
    _expect_rules(audit_rules, [watch("/etc/sudoers", "scope"), watch("/etc/sudoers.d", "scope")])


@pytest.mark.control("5.2.3.2")
def test_rules_user_emulation(audit_rules):
    _expect_rules(audit_rules, syscalls(["execve"], "user_emulation", ("C:euid!=uid", "auid!=unset")))


@pytest.mark.control("5.2.3.3")
def test_rules_sudo_log_file(audit_rules, params):
    _expect_rules(audit_rules, [watch(params["sudo_log_file"], "sudo_log_file")])


@pytest.mark.control("5.2.3.4")
def test_rules_time_change(audit_rules):
    _expect_rules(audit_rules, [*syscalls(["adjtimex", "settimeofday", "clock_settime"], "time-change"),
                                watch("/etc/localtime", "time-change")])


@pytest.mark.control("5.2.3.5")
def test_rules_network_environment(audit_rules, params):
    _expect_rules(audit_rules, [*syscalls(["sethostname", "setdomainname"], "system-locale"),
                                *(watch(path, "system-locale") for path in params["watch_paths"])])


def _privileged_programs(host, skip_fstypes):
    """Setuid/setgid programs on the local filesystems that allow running them."""
    nodev = {line.split()[1] for line in host.check_output("cat /proc/filesystems").splitlines()
             if line.startswith("nodev")}
    mounts = []
    for line in host.check_output("findmnt --kernel --raw --noheadings --output TARGET,FSTYPE,OPTIONS").splitlines():
        target, fstype, options = line.split(" ", 2)
        opts = set(options.split(","))
        if fstype in nodev or fstype in skip_fstypes or opts & {"noexec", "nosuid"}:
            continue
        mounts.append(target.encode().decode("unicode_escape"))
    assert mounts, "findmnt lists no local filesystem that allows setuid programs"
    found = host.check_output("find " + " ".join(shlex.quote(m) for m in mounts)
                              + " -xdev -type f -perm /6000 -print 2>/dev/null || true")
    return sorted({line for line in found.splitlines() if line and not re.search(r"\s", line)})


@pytest.mark.control("5.2.3.6")
def test_rules_privileged_commands(host, audit_rules, params, uid_min):
    programs = _privileged_programs(host, set(params["skip_fstypes"]))
    assert programs, "no setuid/setgid program found: the search itself is broken"
    _expect_rules(audit_rules, [program(path, "privileged", uid_min) for path in programs])


@pytest.mark.control("5.2.3.7")
def test_rules_failed_access(audit_rules, uid_min):
    names = ["creat", "open", "openat", "truncate", "ftruncate"]
    _expect_rules(audit_rules, [*syscalls(names, "access", ("exit=-EACCES", *by_users(uid_min))),
                                *syscalls(names, "access", ("exit=-EPERM", *by_users(uid_min)))])


@pytest.mark.control("5.2.3.8")
def test_rules_identity(audit_rules):
    paths = ["/etc/group", "/etc/passwd", "/etc/gshadow", "/etc/shadow", "/etc/security/opasswd",
             "/etc/nsswitch.conf", "/etc/pam.conf", "/etc/pam.d"]
    _expect_rules(audit_rules, [watch(path, "identity") for path in paths])


@pytest.mark.control("5.2.3.9")
def test_rules_permission_changes(audit_rules, uid_min):
    names = ["chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "setxattr", "lsetxattr",
             "fsetxattr", "removexattr", "lremovexattr", "fremovexattr"]
    _expect_rules(audit_rules, syscalls(names, "perm_mod", by_users(uid_min)))


@pytest.mark.control("5.2.3.10")
def test_rules_mounts(audit_rules, uid_min):
    _expect_rules(audit_rules, syscalls(["mount"], "mounts", by_users(uid_min)))


@pytest.mark.control("5.2.3.11")
def test_rules_session_initiation(audit_rules):
    _expect_rules(audit_rules, [watch(path, "session") for path in ("/var/run/utmp", "/var/log/wtmp", "/var/log/btmp")])


@pytest.mark.control("5.2.3.12")
def test_rules_logins(audit_rules):
    _expect_rules(audit_rules, [watch(path, "logins") for path in ("/var/log/lastlog", "/var/run/faillock")])


@pytest.mark.control("5.2.3.13")
def test_rules_deletions(audit_rules, uid_min):
    _expect_rules(audit_rules, syscalls(["rename", "unlink", "unlinkat", "renameat"], "delete", by_users(uid_min)))


@pytest.mark.control("5.2.3.14")
def test_rules_mac_policy(audit_rules, params):
    _expect_rules(audit_rules, [watch(path, "MAC-policy") for path in params["watch_paths"]])


@pytest.mark.control("5.2.3.15")
def test_rules_chcon(audit_rules, params, uid_min):
    _expect_rules(audit_rules, [program(params["program"], "perm_chng", uid_min)])


@pytest.mark.control("5.2.3.16")
def test_rules_setfacl(audit_rules, params, uid_min):
    _expect_rules(audit_rules, [program(params["program"], "perm_chng", uid_min)])


@pytest.mark.control("5.2.3.17")
def test_rules_chacl(audit_rules, params, uid_min):
    _expect_rules(audit_rules, [program(params["program"], "perm_chng", uid_min)])


@pytest.mark.control("5.2.3.18")
def test_rules_usermod(audit_rules, params, uid_min):
    _expect_rules(audit_rules, [program(params["program"], "usermod", uid_min)])


@pytest.mark.control("5.2.3.19")
def test_rules_kernel_modules(audit_rules, params, uid_min):
    names = ["init_module", "finit_module", "delete_module", "create_module", "query_module"]
    _expect_rules(audit_rules, [*syscalls(names, "kernel_modules", by_users(uid_min), arches=("b64",)),
                                program(params["program"], "kernel_modules", uid_min)])


@pytest.mark.control("5.2.3.20")
def test_rules_immutable(host):
    status = host.check_output("auditctl -s")
    enabled = re.search(r"^enabled\s+(\d+)", status, re.M)
    assert enabled and enabled.group(1) == "2", \
        f"auditctl -s reports enabled {enabled.group(1) if enabled else '?'}, expected 2 (rules locked)"
    lines = [line.strip() for line in host.check_output("cat /etc/audit/audit.rules").splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert lines and lines[-1].split() == ["-e", "2"], \
        f"the last line of /etc/audit/audit.rules is {lines[-1] if lines else 'missing'!r}, expected '-e 2'"


@pytest.mark.control("5.2.3.21")
def test_loaded_rules_are_the_rules_on_disk(host):
    check = host.check_output("augenrules --check 2>&1")
    assert "No change" in check, f"augenrules --check: {check.strip()}"
    on_disk = _rules(host.check_output("cat /etc/audit/audit.rules"))
    loaded = _rules(host.check_output("auditctl -l"))
    assert len(loaded) == len(on_disk), \
        f"{len(loaded)} audit rules are loaded, /etc/audit/audit.rules has {len(on_disk)}"
    disk_keys = Counter(key for rule in on_disk for key in rule.keys)
    loaded_keys = Counter(key for rule in loaded for key in rule.keys)
    differ = sorted(key for key in disk_keys | loaded_keys if disk_keys[key] != loaded_keys[key])
    assert not differ, "rules per key differ between disk and kernel: " + ", ".join(
        f"{key} {disk_keys[key]} on disk / {loaded_keys[key]} loaded" for key in differ)
    never = [rule.text for rule in loaded if rule.kind == "syscall" and "never" in rule.text.split()[1].split(",")
             and "task" in rule.text.split()[1].split(",")]
    assert not never, f"a task,never rule switches syscall auditing off: {never[0]}"


# --- 5.2.4 files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audit_logs(host):
    """(log directory, {log file: (mode, owner, group)}, auditd.conf settings)."""
    conf = _auditd_conf(host)
    log_dir = conf.get("log_file", "/var/log/audit/audit.log").rsplit("/", 1)[0] or "/"
    out = host.check_output(f"find {shlex.quote(log_dir)} -maxdepth 1 -type f -printf '%m %u %g %p\\n'")
    files = {}
    for line in out.splitlines():
        mode, owner, group, path = line.split(" ", 3)
        files[path] = (int(mode, 8), owner, group)
    assert files, f"no audit log files in {log_dir}"
    return log_dir, files, conf


@pytest.mark.control("5.2.4.1")
def test_audit_log_mode(audit_logs):
    _, files, _ = audit_logs
    loose = [f"{path} {mode:04o}" for path, (mode, _, _) in sorted(files.items()) if mode & ~0o640]
    assert not loose, f"audit logs more permissive than 0640: {', '.join(loose)}"


@pytest.mark.control("5.2.4.2")
def test_audit_log_owner(audit_logs):
    _, files, _ = audit_logs
    wrong = [f"{path} {owner}" for path, (_, owner, _) in sorted(files.items()) if owner != "root"]
    assert not wrong, f"audit logs not owned by root: {', '.join(wrong)}"


@pytest.mark.control("5.2.4.3")
def test_audit_log_group(audit_logs):
    _, files, conf = audit_logs
    log_group = conf.get("log_group", "root")
    assert log_group in ("root", "adm"), f"auditd.conf log_group is {log_group}, expected root or adm"
    wrong = [f"{path} {group}" for path, (_, _, group) in sorted(files.items()) if group not in ("root", "adm")]
    assert not wrong, f"audit logs in a group other than root or adm: {', '.join(wrong)}"


@pytest.mark.control("5.2.4.4")
def test_audit_log_directory_mode(host, audit_logs):
    log_dir, _, _ = audit_logs
    mode, _, _ = _stat(host, [log_dir])[log_dir]
    assert not mode & 0o027, f"{log_dir} has mode {mode:04o}, expected 0750 or stricter"


@pytest.fixture(scope="module")
def audit_config_files(host):
    out = host.check_output(r"find /etc/audit -type f \( -name '*.conf' -o -name '*.rules' \) -printf '%m %u %g %p\n'")
    files = {}
    for line in out.splitlines():
        mode, owner, group, path = line.split(" ", 3)
        files[path] = (int(mode, 8), owner, group)
    assert files, "no audit configuration files under /etc/audit"
    return files


@pytest.mark.control("5.2.4.5")
def test_audit_config_mode(audit_config_files):
    loose = [f"{path} {mode:04o}" for path, (mode, _, _) in sorted(audit_config_files.items()) if mode & ~0o640]
    assert not loose, f"audit configuration more permissive than 0640: {', '.join(loose)}"


@pytest.mark.control("5.2.4.6")
def test_audit_config_owner(audit_config_files):
    wrong = [f"{path} {owner}" for path, (_, owner, _) in sorted(audit_config_files.items()) if owner != "root"]
    assert not wrong, f"audit configuration not owned by root: {', '.join(wrong)}"


@pytest.mark.control("5.2.4.7")
def test_audit_config_group(audit_config_files):
    wrong = [f"{path} {group}" for path, (_, _, group) in sorted(audit_config_files.items()) if group != "root"]
    assert not wrong, f"audit configuration not in group root: {', '.join(wrong)}"


def _tools(host, params):
    found = _stat(host, params["tools"], follow=True)
    missing = [tool for tool in params["tools"] if tool not in found]
    assert not missing, f"audit tools missing: {', '.join(missing)}"
    return found


@pytest.mark.control("5.2.4.8")
def test_audit_tools_mode(host, params):
    loose = [f"{path} {mode:04o}" for path, (mode, _, _) in sorted(_tools(host, params).items()) if mode & ~0o755]
    assert not loose, f"audit tools more permissive than 0755: {', '.join(loose)}"


@pytest.mark.control("5.2.4.9")
def test_audit_tools_owner(host, params):
    wrong = [f"{path} {owner}" for path, (_, owner, _) in sorted(_tools(host, params).items()) if owner != "root"]
    assert not wrong, f"audit tools not owned by root: {', '.join(wrong)}"


@pytest.mark.control("5.2.4.10")
def test_audit_tools_group(host, params):
    wrong = [f"{path} {group}" for path, (_, _, group) in sorted(_tools(host, params).items()) if group != "root"]
    assert not wrong, f"audit tools not in group root: {', '.join(wrong)}"
