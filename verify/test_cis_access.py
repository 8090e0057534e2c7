"""CIS section 4 (but SSH): cron and at, sudo and su, authselect and PAM, accounts and the
login environment - read from the files and stacks the system really uses."""
import re
import shlex

import pytest

from ga_system import unit_state


def _stat(host, path):
    """(owner, group, mode) of a path, or None when it does not exist."""
    result = host.run(f"stat -c '%U %G %a' {shlex.quote(path)}")
    if result.rc != 0:
        return None
    owner, group, mode = result.stdout.split()
    return owner, group, int(mode, 8)


def _content(host, path):
    return host.check_output(f"cat {shlex.quote(path)}")


def _active_lines(text):
    """Lines that are neither empty nor comments."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


# --- 4.1 cron and at -------------------------------------------------------------------------
@pytest.mark.control("4.1.1")
def test_cron_running(host, params):
    assert host.package(params["package"]).is_installed, f"package {params['package']} is not installed"
    enabled, active = unit_state(host, f"{params['service']}.service")
    assert (enabled, active) == ("enabled", "active"), \
        f"{params['service']}.service is {enabled}/{active}, expected enabled/active"


def _root_only(host, path, forbidden, what):
    found = _stat(host, path)
    assert found is not None, f"{path} does not exist"
    owner, group, mode = found
    assert owner == "root" and group == "root" and not mode & forbidden, \
        f"{path} is {owner}:{group} {mode:o}, expected root:root {what} or stricter"


@pytest.mark.control("4.1.2")
def test_crontab_root_only(host, params):
    _root_only(host, params["path"], 0o177, "0600")


@pytest.mark.control("4.1.3")
def test_cron_hourly_root_only(host, params):
    _root_only(host, params["path"], 0o077, "0700")


@pytest.mark.control("4.1.4")
def test_cron_daily_root_only(host, params):
    _root_only(host, params["path"], 0o077, "0700")


@pytest.mark.control("4.1.5")
def test_cron_weekly_root_only(host, params):
    _root_only(host, params["path"], 0o077, "0700")


@pytest.mark.control("4.1.6")
def test_cron_monthly_root_only(host, params):
    _root_only(host, params["path"], 0o077, "0700")


@pytest.mark.control("GA-CRON-YEARLY")
def test_cron_yearly_root_only(host, params):
    _root_only(host, params["path"], 0o077, "0700")


@pytest.mark.control("4.1.7")
def test_cron_d_root_only(host, params):
    _root_only(host, params["path"], 0o077, "0700")


def _allow_list_only(host, params, allow, deny, groups):
    found = _stat(host, allow)
    assert found is not None, f"{allow} does not exist: every user may schedule jobs unless denied"
    owner, group, mode = found
    assert owner == "root" and group in groups and not mode & 0o137, \
        f"{allow} is {owner}:{group} {mode:o}, expected root:{'/'.join(groups)} 0640 or stricter"
    extra = sorted(set(_active_lines(_content(host, allow))) - set(params["allowed_users"]))
    assert not extra, f"{allow} allows {', '.join(extra)}, expected only {', '.join(params['allowed_users'])}"
    assert _stat(host, deny) is None, f"{deny} exists, expected only {allow}"


@pytest.mark.control("4.1.8")
def test_cron_restricted(host, params):
    # The crontab group may own it on the Debian family (crontab runs setgid crontab).
    _allow_list_only(host, params, "/etc/cron.allow", "/etc/cron.deny", ("root", "crontab"))


@pytest.mark.control("4.1.9")
def test_at_restricted(host, params):
    _allow_list_only(host, params, "/etc/at.allow", "/etc/at.deny", ("root", "daemon"))


# --- 4.3 sudo and su -------------------------------------------------------------------------
def _sudoers(host):
    """Active sudoers lines, continuation lines joined: /etc/sudoers and the sudoers.d files
    sudo reads (none with a dot or a trailing ~ in the name)."""
    names = host.check_output("find /etc/sudoers /etc/sudoers.d -maxdepth 1 -type f").split()
    lines = []
    for path in sorted(names):
        base = path.rsplit("/", 1)[-1]
        if path != "/etc/sudoers" and ("." in base or base.endswith("~")):
            continue
        text = re.sub(r"\\\n", " ", _content(host, path))
        lines += [(path, line) for line in _active_lines(text)]
    return lines


def _defaults(host):
    """(file, setting) for every setting of every Defaults line."""
    found = []
    for path, line in _sudoers(host):
        match = re.match(r"Defaults(?:[@:!>]\S+)?\s+(.*)", line)
        if match:
            found += [(path, item.strip()) for item in re.split(r",\s*", match.group(1)) if item.strip()]
    return found


@pytest.mark.control("4.3.1")
def test_sudo_installed(host, params):
    assert host.package(params["package"]).is_installed, f"package {params['package']} is not installed"


@pytest.mark.control("4.3.2")
def test_sudo_uses_pty(host):
    settings = [setting for _, setting in _defaults(host)]
    assert "use_pty" in settings, "no 'Defaults use_pty' in sudoers"
    assert "!use_pty" not in settings, "sudoers switches use_pty off (!use_pty)"


@pytest.mark.control("4.3.3")
def test_sudo_log_file(host, params):
    files = [setting.split("=", 1)[1].strip().strip('"') for _, setting in _defaults(host)
             if re.match(r"logfile\s*=", setting)]
    assert files == [params["logfile"]], f"sudo logfile is {files or 'not set'}, expected {params['logfile']}"


@pytest.mark.control("GA-SUDO-PASSWORD")
def test_sudo_needs_password(host):
    nopasswd = [f"{path}: {line}" for path, line in _sudoers(host) if "NOPASSWD" in line]
    assert not nopasswd, f"sudo runs commands without a password: {'; '.join(nopasswd)}"


@pytest.mark.control("4.3.4")
def test_sudo_reauthentication_not_disabled(host):
    found = [f"{path}: {line}" for path, line in _sudoers(host) if "!authenticate" in line]
    assert not found, f"sudoers disables re-authentication: {'; '.join(found)}"


@pytest.mark.control("4.3.5")
def test_sudo_timestamp_timeout(host, params):
    limit = params["timestamp_timeout"]
    configured = [float(setting.split("=", 1)[1]) for _, setting in _defaults(host)
                  if re.match(r"timestamp_timeout\s*=\s*-?[0-9.]+$", setting)]
    bad = [value for value in configured if value < 0 or value > limit]
    assert configured and not bad, \
        f"sudo timestamp_timeout is {configured or 'not set'}, expected between 0 and {limit} minutes"
    # What sudo itself reports (it reads every file, and its built-in default).
    report = host.check_output("sudo -V")
    match = re.search(r"Authentication timestamp timeout: (-?[0-9.]+) minutes", report)
    assert match and 0 <= float(match.group(1)) <= limit, \
        f"sudo reports a timestamp timeout of {match.group(1) if match else 'nothing'}, expected at most {limit} minutes"


@pytest.mark.control("4.3.6")
def test_su_restricted_to_empty_group(host, params):
    group = params["group"]
    lines = _active_lines(_content(host, "/etc/pam.d/su"))
    wheel = [line for line in lines if re.match(r"auth\s+(required|requisite)\s+pam_wheel\.so\s", line)]
    assert any("use_uid" in line.split() and f"group={group}" in line.split() for line in wheel), \
        f"/etc/pam.d/su has no 'auth required pam_wheel.so use_uid group={group}' (found: {wheel or 'none'})"
    entry = host.run(f"getent group {shlex.quote(group)}")
    assert entry.rc == 0, f"group {group} does not exist"
    name, _, gid, members = entry.stdout.strip().split(":")
    assert not members, f"group {group} has members ({members}), expected none"
    primary = [line.split(":")[0] for line in host.check_output("getent passwd").splitlines()
               if line.split(":")[3] == gid]
    assert not primary, f"group {group} is the primary group of {', '.join(primary)}, expected nobody"


# --- 4.4 / 4.5 authselect and PAM ------------------------------------------------------------
PAM_FILES = {
    # pam_tool -> the files holding the auth, account and password stacks
    "pam-auth-update": {"auth": ["/etc/pam.d/common-auth"], "account": ["/etc/pam.d/common-account"],
                        "password": ["/etc/pam.d/common-password"]},
    "authselect": {kind: ["/etc/pam.d/system-auth", "/etc/pam.d/password-auth"]
                   for kind in ("auth", "account", "password")},
}
PAM_LINE = re.compile(r"-?(auth|account|password|session)\s+(\[[^\]]*\]|\S+)\s+(\S+)\s*(.*)")


def _pam_modules(host, pam_tool, kind, module):
    """{file: [arguments of each active line of that kind using module]}."""
    found = {}
    for path in PAM_FILES[pam_tool][kind]:
        found[path] = []
        for line in _active_lines(_content(host, path)):
            match = PAM_LINE.match(line)
            if match and match.group(1) == kind and match.group(3).rsplit("/", 1)[-1] == module:
                found[path].append(match.group(4).split())
    return found


def _option(arguments, name):
    values = [arg.split("=", 1)[1] for arg in arguments if arg.startswith(f"{name}=")]
    return values[-1] if values else None


def _conf_values(host, paths):
    """key = value settings of config files read in order (later files win)."""
    settings = {}
    for path in paths:
        for line in _active_lines(_content(host, path)):
            key, sep, value = line.partition("=")
            if sep:
                settings[key.strip()] = value.strip()
    return settings


@pytest.mark.control("4.4.2")
def test_authselect_with_faillock(host, params):
    current = host.run("authselect current --raw")
    assert current.rc == 0, f"authselect has no configuration: {current.stdout.strip() or current.stderr.strip()}"
    words = current.stdout.split()
    assert words and words[0] == f"custom/{params['profile']}", \
        f"authselect profile is {words[0] if words else 'none'}, expected custom/{params['profile']}"
    assert "with-faillock" in words[1:], f"authselect features are {words[1:] or 'none'}, expected with-faillock"
    check = host.run("authselect check")
    assert check.rc == 0, f"authselect check: {check.stdout.strip()}"


@pytest.mark.control("4.5.1")
def test_password_quality(host, params):
    for path, lines in _pam_modules(host, params["pam_tool"], "password", "pam_pwquality.so").items():
        assert lines, f"{path} does not check new passwords with pam_pwquality"
        for arguments in lines:
            minlen = _option(arguments, "minlen")
            assert minlen is None or int(minlen) >= params["minlen"], \
                f"{path} gives pam_pwquality minlen={minlen}, expected at least {params['minlen']}"
    confs = ["/etc/security/pwquality.conf"] + sorted(
        host.check_output("find /etc/security/pwquality.conf.d -maxdepth 1 -name '*.conf' 2>/dev/null || true").split())
    settings = _conf_values(host, confs)
    minlen = int(settings.get("minlen", "8"))
    assert minlen >= params["minlen"], f"pwquality minlen is {minlen}, expected at least {params['minlen']}"
    minclass = int(settings.get("minclass", "0"))
    # The same rule may be written as credits (-1 = at least one of that class).
    credits = sum(1 for key in ("dcredit", "ucredit", "lcredit", "ocredit") if int(settings.get(key, "0")) < 0)
    assert max(minclass, credits) >= params["minclass"], \
        f"pwquality asks for {max(minclass, credits)} character classes, expected at least {params['minclass']}"


@pytest.mark.control("4.5.2")
def test_failed_logins_lock_accounts(host, params):
    for path, lines in _pam_modules(host, params["pam_tool"], "auth", "pam_faillock.so").items():
        modes = {word for arguments in lines for word in arguments}
        assert {"preauth", "authfail"} <= modes, \
            f"{path} lacks pam_faillock preauth and authfail (found {sorted(modes & {'preauth', 'authfail'}) or 'none'})"
        for arguments in lines:
            deny, unlock = _option(arguments, "deny"), _option(arguments, "unlock_time")
            assert deny is None or 0 < int(deny) <= params["deny"], f"{path} gives pam_faillock deny={deny}"
            assert unlock is None or int(unlock) == 0 or int(unlock) >= params["unlock_time"], \
                f"{path} gives pam_faillock unlock_time={unlock}"
    for path, lines in _pam_modules(host, params["pam_tool"], "account", "pam_faillock.so").items():
        assert lines, f"{path} has no pam_faillock account line"
    settings = _conf_values(host, ["/etc/security/faillock.conf"])
    deny, unlock = int(settings.get("deny", "3")), int(settings.get("unlock_time", "600"))
    assert 0 < deny <= params["deny"], f"faillock.conf deny is {deny}, expected 1 to {params['deny']}"
    assert unlock == 0 or unlock >= params["unlock_time"], \
        f"faillock.conf unlock_time is {unlock}, expected 0 or at least {params['unlock_time']}"


@pytest.mark.control("4.5.3")
def test_password_reuse_limited(host, params):
    conf = _conf_values(host, ["/etc/security/pwhistory.conf"]) \
        if _stat(host, "/etc/security/pwhistory.conf") else {}
    for path, lines in _pam_modules(host, params["pam_tool"], "password", "pam_pwhistory.so").items():
        assert lines, f"{path} does not check new passwords against old ones (pam_pwhistory)"
        for arguments in lines:
            remember = int(_option(arguments, "remember") or conf.get("remember", "10"))
            assert remember >= params["remember"], \
                f"{path} remembers {remember} passwords, expected at least {params['remember']}"


@pytest.mark.control("4.5.4")
def test_strong_password_hashing(host, params):
    weak = {"md5", "bigcrypt", "sha256", "blowfish", "gost_yescrypt", "yescrypt", "sha512"} - {params["pam_hash"]}
    for path, lines in _pam_modules(host, params["pam_tool"], "password", "pam_unix.so").items():
        assert lines, f"{path} has no pam_unix password line"
        for arguments in lines:
            assert params["pam_hash"] in arguments and not weak & set(arguments), \
                f"{path}: pam_unix hashes with {sorted(set(arguments) & (weak | {params['pam_hash']})) or 'its default'}, " \
                f"expected {params['pam_hash']}"
    methods = [line.split()[1] for line in _active_lines(_content(host, "/etc/login.defs"))
               if line.split()[0] == "ENCRYPT_METHOD" and len(line.split()) > 1]
    assert methods == [params["encrypt_method"]], \
        f"login.defs ENCRYPT_METHOD is {methods or 'not set'}, expected {params['encrypt_method']}"


# --- 4.6 accounts and the login environment ---------------------------------------------------
def _login_defs(host, key):
    values = [line.split()[1] for line in _active_lines(_content(host, "/etc/login.defs"))
              if line.split()[0] == key and len(line.split()) > 1]
    return values[-1] if values else None


def _shadow(host):
    return [line.split(":") for line in host.check_output("getent shadow").splitlines() if line.count(":") >= 8]


def _with_password(host):
    """Shadow entries of accounts that have a password (a hash; locked or empty ones do not)."""
    return [entry for entry in _shadow(host) if entry[1].startswith("$")]


def _number(text, default):
    return int(text) if text.strip().lstrip("-").isdigit() else default


@pytest.mark.control("4.6.1.1")
def test_password_max_age(host, params):
    limit = params["max_days"]
    value = _number(_login_defs(host, "PASS_MAX_DAYS") or "", 99999)
    assert 0 < value <= limit, f"login.defs PASS_MAX_DAYS is {value}, expected 1 to {limit}"
    wrong = [f"{e[0]} ({e[4] or 'none'})" for e in _with_password(host) if not 0 < _number(e[4], 99999) <= limit]
    assert not wrong, f"passwords that do not expire within {limit} days: {', '.join(wrong)}"


@pytest.mark.control("4.6.1.2")
def test_password_min_age(host, params):
    limit = params["min_days"]
    value = _number(_login_defs(host, "PASS_MIN_DAYS") or "", 0)
    assert value >= limit, f"login.defs PASS_MIN_DAYS is {value}, expected at least {limit}"
    wrong = [f"{e[0]} ({e[3] or 'none'})" for e in _with_password(host) if _number(e[3], 0) < limit]
    assert not wrong, f"passwords that can change again within {limit} day(s): {', '.join(wrong)}"


@pytest.mark.control("4.6.1.3")
def test_password_warn_age(host, params):
    limit = params["warn_age"]
    value = _number(_login_defs(host, "PASS_WARN_AGE") or "", 0)
    assert value >= limit, f"login.defs PASS_WARN_AGE is {value}, expected at least {limit}"
    wrong = [f"{e[0]} ({e[5] or 'none'})" for e in _with_password(host) if _number(e[5], 0) < limit]
    assert not wrong, f"accounts warned less than {limit} days before expiry: {', '.join(wrong)}"


@pytest.mark.control("4.6.1.4")
def test_inactive_accounts_disabled(host, params):
    limit = params["inactive_days"]
    defaults = dict(line.split("=", 1) for line in host.check_output("useradd -D").splitlines() if "=" in line)
    value = _number(defaults.get("INACTIVE", ""), -1)
    assert 0 <= value <= limit, f"useradd's default INACTIVE is {value}, expected 0 to {limit}"
    wrong = [f"{e[0]} ({e[6] or 'none'})" for e in _with_password(host) if not 0 <= _number(e[6], -1) <= limit]
    assert not wrong, f"accounts not disabled within {limit} days after their password expired: {', '.join(wrong)}"


@pytest.mark.control("4.6.1.5")
def test_no_password_change_in_the_future(host):
    today = int(host.check_output("date +%s")) // 86400
    future = [f"{e[0]} (day {e[2]})" for e in _shadow(host) if _number(e[2], 0) > today]
    assert not future, f"last password change after today (day {today}): {', '.join(future)}"


def _real_shells(host):
    return {line.strip() for line in _content(host, "/etc/shells").splitlines()
            if line.strip().startswith("/") and not line.strip().endswith("/nologin")}


@pytest.mark.control("4.6.2")
def test_system_accounts_secured(host):
    shells = _real_shells(host)
    uid_min = _number(_login_defs(host, "UID_MIN") or "", 1000)
    passwd = [line.split(":") for line in host.check_output("getent passwd").splitlines()]
    with_shell = [f"{e[0]} ({e[6]})" for e in passwd
                  if e[0] not in ("root", "halt", "sync", "shutdown", "nfsnobody")
                  and (int(e[2]) < uid_min or int(e[2]) == 65534) and e[6] in shells]
    assert not with_shell, f"system accounts with a login shell: {', '.join(with_shell)}"
    shadow = {e[0]: e[1] for e in _shadow(host)}
    unlocked = [e[0] for e in passwd if e[0] != "root" and e[6] not in shells
                and e[0] in shadow and not shadow[e[0]].startswith(("!", "*"))]
    assert not unlocked, f"accounts without a login shell whose password is not locked: {', '.join(unlocked)}"


def _login_shell(host, login_user, command):
    """Run a command in the login user's login shell (as at an SSH login: /etc/profile read)."""
    return host.check_output(f"runuser -l {shlex.quote(login_user)} -c {shlex.quote(command)}")


@pytest.mark.control("4.6.3")
def test_shell_timeout(host, params, target_os):
    limit = params["timeout"]
    files = host.check_output("grep -lE '^[^#]*TMOUT=' /etc/profile /etc/profile.d/*.sh /etc/bashrc "
                              "/etc/bash.bashrc 2>/dev/null || true").split()
    assert files, "no start-up file sets TMOUT"
    out = _login_shell(host, target_os["login_user"],
                       'printf "value=%s\\n" "${TMOUT:-unset}"; readonly -p; export -p')
    value = re.search(r"^value=(.*)$", out, re.M).group(1)
    assert value.isdigit() and 0 < int(value) <= limit, \
        f"TMOUT in a login shell is {value}, expected 1 to {limit} seconds"
    readonly = [line for line in out.splitlines() if re.search(r"\breadonly\b|^declare -[a-z]*r", line)]
    assert any(re.search(r"\bTMOUT=", line) for line in readonly), "TMOUT is not readonly in a login shell"
    exported = [line for line in out.splitlines() if re.search(r"\bexport\b|^declare -[a-z]*x", line)]
    assert any(re.search(r"\bTMOUT=", line) for line in exported), "TMOUT is not exported in a login shell"


@pytest.mark.control("4.6.4")
def test_root_gid_zero(host):
    gid = host.check_output("getent passwd root").split(":")[3]
    assert gid == "0", f"root's primary group is GID {gid}, expected 0"


def _weaker(value, wanted):
    return int(value, 8) & int(wanted, 8) != int(wanted, 8)


@pytest.mark.control("4.6.5")
def test_default_umask(host, params, target_os):
    wanted = params["umask"]
    defs = _login_defs(host, "UMASK") or "022"
    assert not _weaker(defs, wanted), f"login.defs UMASK is {defs}, expected {wanted} or stricter"
    weak = []
    for path in params["rc_files"] + host.check_output("ls /etc/profile.d/*.sh 2>/dev/null || true").split():
        if _stat(host, path) is None:
            continue
        for line in _active_lines(_content(host, path)):
            for value in re.findall(r"(?:^|[\s;])umask\s+([0-7]+)\b", line):
                if _weaker(value, wanted):
                    weak.append(f"{path}: umask {value}")
    assert not weak, f"start-up files set a weaker umask than {wanted}: {', '.join(weak)}"
    live = _login_shell(host, target_os["login_user"], "umask").strip()
    assert not _weaker(live, wanted), f"umask in a login shell is {live}, expected {wanted} or stricter"


@pytest.mark.control("4.6.6")
def test_root_password_set_or_locked(host):
    password = host.check_output("getent shadow root").split(":")[1]
    state = "empty" if not password else "locked" if password.startswith(("!", "*")) else "set"
    assert password.startswith(("$", "!", "*")), f"root's password is {state} ({password[:3]}...), expected set or locked"
