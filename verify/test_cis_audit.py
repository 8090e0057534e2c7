"""CIS auditing (Amazon Linux 2023 5.2, beyond auditd itself): the kernel command line,
auditd's log retention, the benchmark's audit rules (both the rules on disk and the rules the
kernel has loaded), the lock on them, and the permissions of audit logs, configuration and
tools.

Every check reads the fact snapshot: auditd.conf, /etc/audit/rules.d/*.rules, audit.rules and
the outputs of `auditctl -l` and `auditctl -s`, what `augenrules` would write, the kernel command line
(/proc/cmdline, grub.cfg or `grubby --info=ALL`), the listings of /var/log and /etc/audit, and
the one filesystem walk (setuid/setgid programs). The parsing lives in ga_audit.py."""
from __future__ import annotations

import re

from collections import Counter

import pytest

from ga_audit import (
    audit_enabled,
    augenrules_output,
    by_users,
    control_lines,
    grub_kernel_lines,
    grubby_kernel_lines,
    kernel_arg,
    missing_rules,
    parse_auditctl_status,
    parse_auditd_conf,
    parse_rules,
    program,
    syscalls,
    task_never,
    watch,
)
from ga_audit import uid_min as login_defs_uid_min
from ga_system import assert_listed_completely, directory_listing, login_defs, parent_dir, setid_programs

AUDITD_CONF = "/etc/audit/auditd.conf"
AUDIT_RULES = "/etc/audit/audit.rules"
RULES_D = "/etc/audit/rules.d"


# --- reading the snapshot --------------------------------------------------------------------
def _auditd_conf(facts):
    """auditd.conf as a dict (keys lower-case; the last line of a key wins)."""
    return facts.cached("audit:auditd.conf", lambda: parse_auditd_conf(facts.content(AUDITD_CONF)))


# --- audit rules -------------------------------------------------------------------------------
def _rules_on_disk(facts):
    """Every rule of the /etc/audit/rules.d/*.rules files (what augenrules merges)."""
    def parse():
        paths = [path for path in facts.glob(f"{RULES_D}/*") if path.endswith(".rules")]
        return [rule for path in paths for rule in parse_rules(facts.content(path))]
    return facts.cached("audit:rules.d", parse)


def _rules_loaded(facts):
    """The rules the kernel has loaded (`auditctl -l`)."""
    return facts.cached("audit:auditctl -l", lambda: parse_rules(facts.output("auditctl_l")))


@pytest.fixture(scope="module")
def audit_rules(facts):
    """(where, reader) of the rules on disk in /etc/audit/rules.d and of the rules the kernel has
    loaded; each is read when a check first needs it, so a check names what it could not read."""
    return (("in /etc/audit/rules.d", lambda: _rules_on_disk(facts)),
            ("loaded (auditctl -l)", lambda: _rules_loaded(facts)))


@pytest.fixture(scope="module")
def uid_min(facts):
    return login_defs_uid_min(login_defs(facts))


def _expect_rules(audit_rules, expected):
    for where, read in audit_rules:
        missing = missing_rules(read(), expected)
        assert not missing, f"audit rules not {where}: {'; '.join(missing)}"


# --- 5.2.1 kernel command line --------------------------------------------------------------
def _next_boot_kernel_lines(facts, params):
    """The argument lines the boot loader passes to every installed kernel."""
    if params["bootloader"] == "grubby":
        lines = grubby_kernel_lines(facts.output("grubby_info"))
        where = "grubby --info=ALL"
    else:
        lines = grub_kernel_lines(facts.content(params["grub_cfg"]))
        where = params["grub_cfg"]
    assert lines, f"no kernel lines found in {where}"
    return where, lines


@pytest.mark.control("5.2.1.2")
def test_audit_from_boot(facts, params):
    cmdline = facts.content("/proc/cmdline")
    assert kernel_arg(cmdline, "audit") == "1", f"the kernel was booted without audit=1: {cmdline.strip()}"
    where, lines = _next_boot_kernel_lines(facts, params)
    lacking = [line.strip() for line in lines if kernel_arg(line, "audit") != "1"]
    assert not lacking, f"{where} has kernel lines without audit=1: {lacking[0]}"


@pytest.mark.control("5.2.1.3")
def test_audit_backlog_limit(facts, params):
    wanted = params["backlog_limit"]
    cmdline = facts.content("/proc/cmdline")
    value = kernel_arg(cmdline, "audit_backlog_limit")
    assert value is not None and value.isdigit() and int(value) >= wanted, \
        f"the kernel was booted with audit_backlog_limit={value}, expected at least {wanted}"
    where, lines = _next_boot_kernel_lines(facts, params)
    for line in lines:
        value = kernel_arg(line, "audit_backlog_limit")
        assert value is not None and value.isdigit() and int(value) >= wanted, \
            f"{where} has a kernel line with audit_backlog_limit={value}, expected at least {wanted}"


# --- 5.2.2 data retention -------------------------------------------------------------------
@pytest.mark.control("5.2.2.1")
def test_audit_log_size(facts, params):
    value = _auditd_conf(facts).get("max_log_file")
    assert value == str(params["max_log_file_mb"]), \
        f"auditd.conf max_log_file is {value or 'not set'}, expected {params['max_log_file_mb']}"


@pytest.mark.control("5.2.2.2")
def test_audit_logs_kept(facts):
    value = _auditd_conf(facts).get("max_log_file_action", "")
    assert value.lower() == "keep_logs", f"auditd.conf max_log_file_action is {value or 'not set'}, expected keep_logs"


def _auditd_actions(facts, wanted):
    """The auditd.conf settings (lower-cased) not among the values the benchmark accepts, as messages."""
    conf = _auditd_conf(facts)
    wrong = []
    for key, accepted in wanted.items():
        value = conf.get(key, "")
        # "exec" is followed by the program it runs.
        if (value.split() or [""])[0].lower() not in accepted:
            wrong.append(f"auditd.conf {key} is {value or 'not set'}, expected {' or '.join(accepted)}")
    return wrong


@pytest.mark.control("5.2.2.3")
def test_audit_low_space_warns_then_stops(facts):
    # The values the benchmarks accept (the params choose among them).
    wrong = _auditd_actions(facts, {"space_left_action": ("email", "exec", "single", "halt"),
                                    "action_mail_acct": ("root",),
                                    "admin_space_left_action": ("single", "halt")})
    assert not wrong, "; ".join(wrong)


@pytest.mark.control("GA-AUDIT-DISK-FULL")
def test_audit_disk_full_stops_the_system(facts):
    wrong = _auditd_actions(facts, {"disk_full_action": ("halt", "single"),
                                    "disk_error_action": ("syslog", "single", "halt")})
    assert not wrong, "; ".join(wrong)


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


@pytest.mark.control("5.2.3.6")
def test_rules_privileged_commands(facts, walk, audit_rules, params, uid_min):
    # An audit rule is split at blanks: a program with one in its path cannot be named by a rule.
    programs = [entry["path"] for entry in setid_programs(facts, walk, params["skip_fstypes"])
                if not re.search(r"\s", entry["path"])]
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
def test_rules_immutable(facts):
    enabled = audit_enabled(parse_auditctl_status(facts.output("auditctl_s")))
    assert enabled == "2", f"auditctl -s reports enabled {enabled or '?'}, expected 2 (rules locked)"
    lines = control_lines(facts.content(AUDIT_RULES))
    assert lines and lines[-1].split() == ["-e", "2"], \
        f"the last line of {AUDIT_RULES} is {lines[-1] if lines else 'missing'!r}, expected '-e 2'"


@pytest.mark.control("5.2.3.21")
def test_loaded_rules_are_the_rules_on_disk(facts):
    # What `augenrules --check` compares: the file it would write from rules.d, byte for byte.
    sources = {path.rsplit("/", 1)[-1]: facts.content(path) for path in facts.glob(f"{RULES_D}/*")}
    written = facts.content(AUDIT_RULES)
    assert augenrules_output(sources) == written, \
        f"{AUDIT_RULES} is not what augenrules makes of {RULES_D} (rules changed and not regenerated)"
    on_disk = parse_rules(written)
    loaded = _rules_loaded(facts)
    assert len(loaded) == len(on_disk), \
        f"{len(loaded)} audit rules are loaded, {AUDIT_RULES} has {len(on_disk)}"
    disk_keys = Counter(key for rule in on_disk for key in rule.keys)
    loaded_keys = Counter(key for rule in loaded for key in rule.keys)
    differ = sorted(key for key in disk_keys | loaded_keys if disk_keys[key] != loaded_keys[key])
    assert not differ, "rules per key differ between disk and kernel: " + ", ".join(
        f"{key} {disk_keys[key]} on disk / {loaded_keys[key]} loaded" for key in differ)
    never = [rule.text for rule in task_never(loaded)]
    assert not never, f"a task,never rule switches syscall auditing off: {never[0]}"


# --- 5.2.4 files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audit_logs(facts):
    """(log directory, its metadata, {log file: metadata}, auditd.conf settings)."""
    conf = _auditd_conf(facts)
    log_dir = parent_dir(conf.get("log_file", "/var/log/audit/audit.log"))
    listing = directory_listing(facts, log_dir)
    assert listing is not None, f"no audit log files in {log_dir} (it does not exist)"
    files = {path: st for path, st in listing.items()
             if st is not None and st.type == "file" and parent_dir(path) == log_dir}
    assert files, f"no audit log files in {log_dir}"
    return log_dir, listing[log_dir], files, conf


@pytest.mark.control("5.2.4.1")
def test_audit_log_mode(audit_logs):
    _, _, files, _ = audit_logs
    loose = [f"{path} {st.mode:04o}" for path, st in sorted(files.items()) if st.mode & ~0o640]
    assert not loose, f"audit logs more permissive than 0640: {', '.join(loose)}"


@pytest.mark.control("5.2.4.2")
def test_audit_log_owner(audit_logs):
    _, _, files, _ = audit_logs
    wrong = [f"{path} {st.owner}" for path, st in sorted(files.items()) if st.owner != "root"]
    assert not wrong, f"audit logs not owned by root: {', '.join(wrong)}"


@pytest.mark.control("5.2.4.3")
def test_audit_log_group(audit_logs):
    _, _, files, conf = audit_logs
    log_group = conf.get("log_group", "root")
    assert log_group in ("root", "adm"), f"auditd.conf log_group is {log_group}, expected root or adm"
    wrong = [f"{path} {st.group_name}" for path, st in sorted(files.items()) if st.group_name not in ("root", "adm")]
    assert not wrong, f"audit logs in a group other than root or adm: {', '.join(wrong)}"


@pytest.mark.control("5.2.4.4")
def test_audit_log_directory_mode(audit_logs):
    log_dir, directory, _, _ = audit_logs
    assert not directory.mode & 0o027, f"{log_dir} has mode {directory.mode:04o}, expected 0750 or stricter"


@pytest.fixture(scope="module")
def audit_config_files(facts):
    """{/etc/audit/**/*.conf and *.rules (regular files): metadata}."""
    listing = directory_listing(facts, "/etc/audit")
    assert listing is not None, "no audit configuration files under /etc/audit (it does not exist)"
    assert_listed_completely(facts, "/etc/audit", listing)
    files = {path: st for path, st in listing.items()
             if st is not None and st.type == "file" and path.endswith((".conf", ".rules"))}
    assert files, "no audit configuration files under /etc/audit"
    return files


@pytest.mark.control("5.2.4.5")
def test_audit_config_mode(audit_config_files):
    loose = [f"{path} {st.mode:04o}" for path, st in sorted(audit_config_files.items()) if st.mode & ~0o640]
    assert not loose, f"audit configuration more permissive than 0640: {', '.join(loose)}"


@pytest.mark.control("5.2.4.6")
def test_audit_config_owner(audit_config_files):
    wrong = [f"{path} {st.owner}" for path, st in sorted(audit_config_files.items()) if st.owner != "root"]
    assert not wrong, f"audit configuration not owned by root: {', '.join(wrong)}"


@pytest.mark.control("5.2.4.7")
def test_audit_config_group(audit_config_files):
    wrong = [f"{path} {st.group_name}" for path, st in sorted(audit_config_files.items()) if st.group_name != "root"]
    assert not wrong, f"audit configuration not in group root: {', '.join(wrong)}"


def _tools(facts, params):
    """{tool: metadata of what it is, symlinks followed}; every tool must exist."""
    found, missing = {}, []
    for tool in params["tools"]:
        st = facts.stat(tool)
        target = st.followed() if st is not None else None
        if target is None:
            missing.append(tool)
        else:
            found[tool] = target
    assert not missing, f"audit tools missing: {', '.join(missing)}"
    return found


@pytest.mark.control("5.2.4.8")
def test_audit_tools_mode(facts, params):
    loose = [f"{path} {st.mode:04o}" for path, st in sorted(_tools(facts, params).items()) if st.mode & ~0o755]
    assert not loose, f"audit tools more permissive than 0755: {', '.join(loose)}"


@pytest.mark.control("5.2.4.9")
def test_audit_tools_owner(facts, params):
    wrong = [f"{path} {st.owner}" for path, st in sorted(_tools(facts, params).items()) if st.owner != "root"]
    assert not wrong, f"audit tools not owned by root: {', '.join(wrong)}"


@pytest.mark.control("5.2.4.10")
def test_audit_tools_group(facts, params):
    wrong = [f"{path} {st.group_name}" for path, st in sorted(_tools(facts, params).items()) if st.group_name != "root"]
    assert not wrong, f"audit tools not in group root: {', '.join(wrong)}"
