"""CIS logging (Amazon Linux 2023 5.1): rsyslog fed by journald, a persistent compressed
journal, no remote log input, and log files in /var/log closed to others.

Every check reads the fact snapshot: the package list, systemd's unit states, journald's
configuration as `systemd-analyze cat-config` shows it, /etc/rsyslog.conf and
/etc/rsyslog.d/*.conf, the listening sockets (`ss`), the accounts (`getent`) and the listing of
/var/log."""
import fnmatch
import re

import pytest

from ga_system import (
    active_lines, assert_listed_completely, directory_listing, getent, listeners, logrotate_creates, parent_dir,
    not_installed, rsyslog_forwards, systemd_settings, tmpfiles_modes, unit_state,
)

RSYSLOG_CONF = "/etc/rsyslog.conf"
RSYSLOG_DROP_INS = "/etc/rsyslog.d/*"  # rsyslog.conf includes the *.conf files among them


def _rsyslog_config(facts):
    """/etc/rsyslog.conf and /etc/rsyslog.d/*.conf, one text (a file that does not exist adds
    nothing; one that cannot be read fails the check)."""
    def read():
        paths = [RSYSLOG_CONF] + [path for path in facts.glob(RSYSLOG_DROP_INS) if fnmatch.fnmatch(path, "*.conf")]
        return "\n".join(facts.text(path) or "" for path in paths)
    return facts.cached("rsyslog-config", read)


@pytest.fixture(scope="module")
def journald(facts):
    """journald's effective settings: every configuration file in systemd's order, the last
    assignment of a key winning."""
    return systemd_settings(facts, "systemd_journald", "Journal")


def _journald_setting(journald, key, expected):
    value = journald.get(key)
    assert value == expected, f"journald {key} is {value or 'not set'}, expected {expected}"


@pytest.mark.control("5.1.1.1")
def test_rsyslog_installed(facts, params):
    missing = not_installed(facts, params["packages"])
    assert not missing, f"not installed: {', '.join(missing)}"


@pytest.mark.control("5.1.1.2")
def test_rsyslog_enabled_and_running(facts, params):
    enabled, active = unit_state(facts, f"{params['service']}.service")
    assert (enabled, active) == ("enabled", "active"), \
        f"{params['service']}.service is {enabled}/{active}, expected enabled/active"


@pytest.mark.control("5.1.1.3")
def test_journald_forwards_to_rsyslog(journald):
    _journald_setting(journald, "ForwardToSyslog", "yes")


@pytest.mark.control("5.1.1.4")
def test_rsyslog_file_create_mode(facts, params):
    modes = []
    for line in active_lines(_rsyslog_config(facts)):
        legacy = re.match(r"\$FileCreateMode\s+([0-7]+)\s*$", line)
        modern = re.search(r"\bfileCreateMode\s*=\s*\"?([0-7]+)\"?", line, re.IGNORECASE)
        if legacy or modern:
            modes.append((legacy or modern).group(1))
    assert modes, "rsyslog sets no file creation mode ($FileCreateMode): it creates files with 0644"
    loose = [mode for mode in modes if int(mode, 8) & ~0o640]
    assert not loose, f"rsyslog file creation modes more permissive than 0640: {', '.join(loose)}"
    assert params["file_create_mode"] in modes, \
        f"rsyslog file creation modes are {', '.join(modes)}, expected {params['file_create_mode']} among them"


@pytest.mark.control("5.1.1.6")
def test_rsyslog_forwards_everything_to_the_log_host(facts, params):
    forwards = rsyslog_forwards(_rsyslog_config(facts))
    seen = "; ".join(f"{f.selector or '(behind a condition)'} -> {f.protocol}://{f.target}:{f.port}" for f in forwards) or "nowhere"
    assert params["log_host"], f"no log host is configured (controls.5.1.1.6.params.log_host); rsyslog forwards {seen}"
    wanted = ("*.*", params["log_host"].lower(), str(params["port"]), "tcp")
    assert any((f.selector, f.target.lower(), f.port, f.protocol) == wanted for f in forwards), \
        f"rsyslog does not send every message (*.*) to {params['log_host']}:{params['port']} over TCP; it forwards {seen}"


REMOTE_INPUT = re.compile(
    r"^(module\(\s*load\s*=\s*\"?(imtcp|imudp|imrelp)\b|input\(\s*type\s*=\s*\"?(imtcp|imudp|imrelp)\b"
    r"|\$ModLoad\s+(imtcp|imudp|imrelp)\b|\$(InputTCPServerRun|UDPServerRun|InputUDPServerRun|InputRELPServerRun)\b)",
    re.IGNORECASE,
)


@pytest.mark.control("5.1.1.7")
def test_rsyslog_accepts_no_remote_logs(facts):
    inputs = [line for line in active_lines(_rsyslog_config(facts)) if REMOTE_INPUT.match(line)]
    assert not inputs, f"rsyslog is configured to receive logs from the network: {'; '.join(inputs)}"
    listening = [str(socket) for socket in listeners(facts) if any("rsyslogd" in name for name in socket.processes)]
    assert not listening, f"rsyslogd listens on the network: {'; '.join(listening)}"


@pytest.mark.control("5.1.2.1.4")
def test_journal_remote_does_not_receive(facts, params):
    for unit in params["units"]:
        enabled, active = unit_state(facts, unit)
        assert enabled in ("masked", "masked-runtime", "disabled", "not-found"), \
            f"{unit} is {enabled}, expected masked (or not enabled)"
        assert active not in ("active", "activating", "reloading"), f"{unit} is {active}, expected inactive"


@pytest.mark.control("5.1.2.2")
def test_journald_enabled_and_running(facts):
    enabled, active = unit_state(facts, "systemd-journald.service")
    assert enabled in ("static", "enabled") and active == "active", \
        f"systemd-journald.service is {enabled}/{active}, expected static/active"


@pytest.mark.control("5.1.2.3")
def test_journald_compresses(journald):
    _journald_setting(journald, "Compress", "yes")


@pytest.mark.control("5.1.2.4")
def test_journald_persistent(facts, journald):
    _journald_setting(journald, "Storage", "persistent")
    machine_id = facts.content("/etc/machine-id").strip()
    assert machine_id, "/etc/machine-id is empty: the journal directory cannot be named"
    journal_dir = f"/var/log/journal/{machine_id}"
    listing = directory_listing(facts, journal_dir) or {}
    files = [path for path in listing if parent_dir(path) == journal_dir and path.endswith(".journal")]
    assert files, f"no journal files in {journal_dir}: this boot's journal is not kept on disk"


@pytest.mark.control("5.1.2.6")
def test_journald_rotation(journald, params):
    for key, param in (("SystemMaxUse", "system_max_use"), ("SystemKeepFree", "system_keep_free"),
                       ("RuntimeMaxUse", "runtime_max_use"), ("RuntimeKeepFree", "runtime_keep_free"),
                       ("MaxFileSec", "max_file_sec")):
        _journald_setting(journald, key, params[param])


def _under(path, prefixes):
    return any(path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)


@pytest.mark.control("5.1.2.7")
def test_journal_file_access(facts, params):
    file_mode, directory_mode = int(params["file_mode"], 8), int(params["directory_mode"], 8)
    problems = []
    # What systemd-tmpfiles gives journal files and directories (at boot and when it runs again).
    lines = [line for line in tmpfiles_modes(facts.output("systemd_tmpfiles")) if _under(line.path, params["paths"])]
    for line in lines:
        allowed = file_mode if line.for_files else directory_mode
        if line.bits & ~allowed:
            problems.append(f"{line} grants {line.bits & ~allowed:04o} beyond {allowed:04o}")
    assert lines, f"no tmpfiles.d line sets a mode under {', '.join(params['paths'])}: the journal's modes are unset"
    # What the journal on this instance has now.
    for root in params["paths"]:
        for path, st in (directory_listing(facts, root) or {}).items():
            if st is None or st.type not in ("file", "directory"):
                continue
            allowed = file_mode if st.type == "file" else directory_mode
            if st.mode & ~allowed:
                problems.append(f"{path} is {st.mode:04o} (at most {allowed:04o})")
    assert not problems, "journal files or directories more open than the benchmark allows: " + "; ".join(problems)


# --- 5.1.3 ------------------------------------------------------------------------------------
LOGIN_RECORD = re.compile(r"^(lastlog|lastlog\..*|wtmp|wtmp[.-].*|btmp|btmp[.-].*)$")


@pytest.mark.control("5.1.3")
def test_log_file_access(facts, params):
    shells = {line for line in active_lines(facts.content("/etc/shells")) if line.startswith("/")}
    # Service accounts (no login shell) may own log files, and so may their primary group.
    groups_by_gid = {fields[2]: fields[0] for fields in getent(facts, "group")}
    service_group = {}
    for fields in getent(facts, "passwd"):
        if (fields[6] or "/bin/sh") not in shells:
            service_group[fields[0]] = groups_by_gid.get(fields[3], "")

    max_mode = int(params["max_mode"], 8)
    records_max_mode = int(params["login_records_max_mode"], 8)
    problems = []
    listing = directory_listing(facts, "/var/log")
    assert listing is not None, "/var/log does not exist"
    assert_listed_completely(facts, "/var/log", listing)
    for path, st in listing.items():
        if st is None or st.type != "file":
            continue
        name = path.rsplit("/", 1)[-1]
        if LOGIN_RECORD.match(name):
            allowed_mode, groups = records_max_mode, {"root", "utmp"}
        elif name.endswith((".journal", ".journal~")):
            allowed_mode, groups = max_mode, {"root", "systemd-journal"}
        else:
            allowed_mode, groups = max_mode, {"root", "adm"}
        if st.mode & ~allowed_mode:
            problems.append(f"{path} mode {st.mode:04o} (at most {allowed_mode:04o})")
        owner = st.owner
        if owner.isdigit():  # a user id with no account: a systemd dynamic user
            continue
        if owner != "root":
            if owner not in service_group:
                problems.append(f"{path} owned by login account {owner}")
                continue
            groups.add(service_group[owner])
        if st.group_name not in groups:
            problems.append(f"{path} group {st.group_name} (expected {' or '.join(sorted(groups))})")
    # The cause, not only the files of today: logrotate makes each new log file with its
    # `create` mode, and the files made at the next rotation must be as closed as these.
    for conf in ["/etc/logrotate.conf", *facts.glob("/etc/logrotate.d/*")]:
        text = facts.text(conf)
        for create in logrotate_creates(text or ""):
            records = bool(create.paths) and all(LOGIN_RECORD.match(p.rsplit("/", 1)[-1]) for p in create.paths)
            allowed_mode = records_max_mode if records else max_mode
            if create.mode is not None and create.mode & ~allowed_mode:
                problems.append(f"{conf} line {create.line}: logrotate creates "
                                f"{' '.join(create.paths) or 'log files'} with mode {create.mode:04o} "
                                f"(at most {allowed_mode:04o})")
    shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
    assert not problems, f"log files open to others: {shown}"
