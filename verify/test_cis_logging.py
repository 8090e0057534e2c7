"""CIS logging (Amazon Linux 2023 5.1): rsyslog fed by journald, a persistent compressed
journal, no remote log input, and log files in /var/log closed to others."""
import re
import shlex

import pytest

from ga_system import unit_state

RSYSLOG_CONFIGS = "/etc/rsyslog.conf /etc/rsyslog.d/*.conf"


def _active_lines(text):
    """Configuration lines that are not blank and not comments."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _rsyslog_config(host):
    return host.check_output(f"cat {RSYSLOG_CONFIGS} 2>/dev/null || true")


@pytest.fixture(scope="module")
def journald(host):
    """journald's effective settings: every configuration file in systemd's order, the last
    assignment of a key winning."""
    settings = {}
    section = None
    for raw in host.check_output("systemd-analyze cat-config systemd/journald.conf").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Journal]" and "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def _journald_setting(journald, key, expected):
    value = journald.get(key)
    assert value == expected, f"journald {key} is {value or 'not set'}, expected {expected}"


@pytest.mark.control("5.1.1.1")
def test_rsyslog_installed(host, params):
    missing = [name for name in params["packages"] if not host.package(name).is_installed]
    assert not missing, f"not installed: {', '.join(missing)}"


@pytest.mark.control("5.1.1.2")
def test_rsyslog_enabled_and_running(host, params):
    enabled, active = unit_state(host, f"{params['service']}.service")
    assert (enabled, active) == ("enabled", "active"), \
        f"{params['service']}.service is {enabled}/{active}, expected enabled/active"


@pytest.mark.control("5.1.1.3")
def test_journald_forwards_to_rsyslog(journald):
    _journald_setting(journald, "ForwardToSyslog", "yes")


@pytest.mark.control("5.1.1.4")
def test_rsyslog_file_create_mode(host, params):
    modes = []
    for line in _active_lines(_rsyslog_config(host)):
        legacy = re.match(r"\$FileCreateMode\s+([0-7]+)\s*$", line)
        modern = re.search(r"\bfileCreateMode\s*=\s*\"?([0-7]+)\"?", line, re.IGNORECASE)
        if legacy or modern:
            modes.append((legacy or modern).group(1))
    assert modes, "rsyslog sets no file creation mode ($FileCreateMode): it creates files with 0644"
    loose = [mode for mode in modes if int(mode, 8) & ~0o640]
    assert not loose, f"rsyslog file creation modes more permissive than 0640: {', '.join(loose)}"
    assert params["file_create_mode"] in modes, \
        f"rsyslog file creation modes are {', '.join(modes)}, expected {params['file_create_mode']} among them"


REMOTE_INPUT = re.compile(
    r"^(module\(\s*load\s*=\s*\"?(imtcp|imudp|imrelp)\b|input\(\s*type\s*=\s*\"?(imtcp|imudp|imrelp)\b"
    r"|\$ModLoad\s+(imtcp|imudp|imrelp)\b|\$(InputTCPServerRun|UDPServerRun|InputUDPServerRun|InputRELPServerRun)\b)",
    re.IGNORECASE,
)


@pytest.mark.control("5.1.1.7")
def test_rsyslog_accepts_no_remote_logs(host):
    inputs = [line for line in _active_lines(_rsyslog_config(host)) if REMOTE_INPUT.match(line)]
    assert not inputs, f"rsyslog is configured to receive logs from the network: {'; '.join(inputs)}"
    listening = [line for line in host.check_output("ss -H -l -n -p -t -u").splitlines() if "rsyslogd" in line]
    assert not listening, f"rsyslogd listens on the network: {'; '.join(' '.join(x.split()) for x in listening)}"


@pytest.mark.control("5.1.2.1.4")
def test_journal_remote_does_not_receive(host, params):
    for unit in params["units"]:
        enabled, active = unit_state(host, unit)
        assert enabled in ("masked", "masked-runtime", "disabled", "not-found"), \
            f"{unit} is {enabled}, expected masked (or not enabled)"
        assert active not in ("active", "activating", "reloading"), f"{unit} is {active}, expected inactive"


@pytest.mark.control("5.1.2.2")
def test_journald_enabled_and_running(host):
    enabled, active = unit_state(host, "systemd-journald.service")
    assert enabled in ("static", "enabled") and active == "active", \
        f"systemd-journald.service is {enabled}/{active}, expected static/active"


@pytest.mark.control("5.1.2.3")
def test_journald_compresses(journald):
    _journald_setting(journald, "Compress", "yes")


@pytest.mark.control("5.1.2.4")
def test_journald_persistent(host, journald):
    _journald_setting(journald, "Storage", "persistent")
    machine_id = host.file("/etc/machine-id").content_string.strip()
    journal_dir = f"/var/log/journal/{machine_id}"
    files = host.check_output(f"find {shlex.quote(journal_dir)} -maxdepth 1 -name '*.journal' 2>/dev/null || true").split()
    assert files, f"no journal files in {journal_dir}: this boot's journal is not kept on disk"


# --- 5.1.3 ------------------------------------------------------------------------------------
LOGIN_RECORD = re.compile(r"^(lastlog|lastlog\..*|wtmp|wtmp[.-].*|btmp|btmp[.-].*)$")


@pytest.mark.control("5.1.3")
def test_log_file_access(host, params):
    shells = {line.strip() for line in host.check_output("cat /etc/shells").splitlines()
              if line.strip().startswith("/")}
    # Service accounts (no login shell) may own log files, and so may their primary group.
    groups_by_gid = {}
    for line in host.check_output("getent group").splitlines():
        fields = line.split(":")
        if len(fields) >= 3:
            groups_by_gid[fields[2]] = fields[0]
    service_group = {}
    for line in host.check_output("getent passwd").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and (fields[6] or "/bin/sh") not in shells:
            service_group[fields[0]] = groups_by_gid.get(fields[3], "")

    max_mode = int(params["max_mode"], 8)
    records_max_mode = int(params["login_records_max_mode"], 8)
    problems = []
    listing = host.check_output(r"find /var/log -type f -printf '%m\t%u\t%g\t%p\n'")
    for line in listing.splitlines():
        mode_text, owner, group, path = line.split("\t", 3)
        mode = int(mode_text, 8)
        name = path.rsplit("/", 1)[-1]
        if LOGIN_RECORD.match(name):
            allowed_mode, groups = records_max_mode, {"root", "utmp"}
        elif name.endswith((".journal", ".journal~")):
            allowed_mode, groups = max_mode, {"root", "systemd-journal"}
        else:
            allowed_mode, groups = max_mode, {"root", "adm"}
        if mode & ~allowed_mode:
            problems.append(f"{path} mode {mode:04o} (at most {allowed_mode:04o})")
        if owner.isdigit():  # a user id with no account: a systemd dynamic user
            continue
        if owner != "root":
            if owner not in service_group:
                problems.append(f"{path} owned by login account {owner}")
                continue
            groups.add(service_group[owner])
        if group not in groups:
            problems.append(f"{path} group {group} (expected {' or '.join(sorted(groups))})")
    shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
    assert not problems, f"log files open to others: {shown}"
