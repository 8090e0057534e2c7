"""CIS section 4 (but SSH): cron and at, sudo and su, authselect and PAM, accounts and the
login environment - read from the files and stacks the system really uses, as the fact
snapshot holds them (parsers in verify/ga_access.py)."""
import fnmatch
import posixpath

import pytest

from ga_access import (
    conf_flags, conf_values, declares, faillock_seconds, has_password, integer, login_defs_hash_cost, login_defs_values, number,
    pam_lines, pam_module_args, pam_option, pam_unix_hash_cost, parse_login_shell_env, pwquality_classes, sets_variable,
    shell_assignments, sudo_defaults, sudo_reported_timeout, sudoers_lines, umask_is_weaker, umask_mask, umask_values,
    umask_weaker, with_arguments,
)
from ga_facts import FactUnavailable
from ga_system import active_lines, apt_simulated_installs, getent, installed, login_shells, not_installed, unit_state


def _optional_text(facts, path):
    """The text of a file that need not exist, or None when it does not. A collected glob lists
    only the files that existed, so a path a glob covers but did not list does not exist; a path
    no collected glob or file covers raises (not collected)."""
    if path in facts.collected.get("files", {}):
        return facts.text(path)
    directory, name = posixpath.split(path)
    for pattern in facts.collected.get("globs", {}):
        pattern_dir, pattern_name = posixpath.split(pattern)
        hidden = name.startswith(".") and not pattern_name.startswith(".")
        if pattern_dir == directory and fnmatch.fnmatchcase(name, pattern_name) and not hidden:
            if path not in facts.glob(pattern):
                return None
    return facts.text(path)


def _regular_files(facts, pattern):
    """What a collected glob matched that is (or links to) a regular file."""
    found = []
    for path in facts.glob(pattern):
        st = facts.stat(path)
        target = st.followed() if st is not None else None
        if target is not None and target.type == "file":
            found.append(path)
    return found


def _login_def(facts, key):
    values = login_defs_values(facts.content("/etc/login.defs"), key)
    return values[-1] if values else None


# --- 4.1 cron and at -------------------------------------------------------------------------
@pytest.mark.control("4.1.1")
def test_cron_running(facts, params):
    assert installed(facts, [params["package"]]), f"package {params['package']} is not installed"
    enabled, active = unit_state(facts, f"{params['service']}.service")
    assert (enabled, active) == ("enabled", "active"), \
        f"{params['service']}.service is {enabled}/{active}, expected enabled/active"


def _root_only(facts, path, forbidden, what):
    st = facts.stat(path)
    assert st is not None, f"{path} does not exist"
    assert st.owner == "root" and st.group_name == "root" and not st.mode & forbidden, \
        f"{path} is {st.owner}:{st.group_name} {st.mode:o}, expected root:root {what} or stricter"


@pytest.mark.control("4.1.2")
def test_crontab_root_only(facts, params):
    _root_only(facts, params["path"], 0o177, "0600")


@pytest.mark.control("4.1.3")
def test_cron_hourly_root_only(facts, params):
    _root_only(facts, params["path"], 0o077, "0700")


@pytest.mark.control("4.1.4")
def test_cron_daily_root_only(facts, params):
    _root_only(facts, params["path"], 0o077, "0700")


@pytest.mark.control("4.1.5")
def test_cron_weekly_root_only(facts, params):
    _root_only(facts, params["path"], 0o077, "0700")


@pytest.mark.control("4.1.6")
def test_cron_monthly_root_only(facts, params):
    _root_only(facts, params["path"], 0o077, "0700")


@pytest.mark.control("GA-CRON-YEARLY")
def test_cron_yearly_root_only(facts, params):
    _root_only(facts, params["path"], 0o077, "0700")


@pytest.mark.control("4.1.7")
def test_cron_d_root_only(facts, params):
    _root_only(facts, params["path"], 0o077, "0700")


def _allow_list_only(facts, params, allow, deny, groups):
    st = facts.stat(allow)
    assert st is not None, f"{allow} does not exist: every user may schedule jobs unless denied"
    assert st.owner == "root" and st.group_name in groups and not st.mode & 0o137, \
        f"{allow} is {st.owner}:{st.group_name} {st.mode:o}, expected root:{'/'.join(groups)} 0640 or stricter"
    extra = sorted(set(active_lines(facts.content(allow))) - set(params["allowed_users"]))
    assert not extra, f"{allow} allows {', '.join(extra)}, expected only {', '.join(params['allowed_users'])}"
    assert facts.stat(deny) is None, f"{deny} exists, expected only {allow}"


@pytest.mark.control("4.1.8")
def test_cron_restricted(facts, params):
    # The crontab group may own it on the Debian family (crontab runs setgid crontab).
    _allow_list_only(facts, params, "/etc/cron.allow", "/etc/cron.deny", ("root", "crontab"))


@pytest.mark.control("4.1.9")
def test_at_restricted(facts, params):
    _allow_list_only(facts, params, "/etc/at.allow", "/etc/at.deny", ("root", "daemon"))


# --- 4.3 sudo and su -------------------------------------------------------------------------
SUDOERS = "/etc/sudoers"
SUDOERS_D = "/etc/sudoers.d"


def _sudoers(facts):
    """(file, line) of every active sudoers line sudo reads: /etc/sudoers and what its
    @include/@includedir directives name (continuation lines joined)."""
    return facts.cached("sudoers", lambda: sudoers_lines(
        facts.text, lambda directory: _regular_files(facts, directory.rstrip("/") + "/*"), SUDOERS))


def _sudoers_everywhere(facts):
    """_sudoers plus the /etc/sudoers.d files sudo would read if they were included but are not:
    checks for what must NOT be configured look there too."""
    def gather():
        lines = _sudoers(facts)
        reached = {path for path, _ in lines}
        for path in _regular_files(facts, f"{SUDOERS_D}/*"):
            name = path.rsplit("/", 1)[-1]
            if path not in reached and "." not in name and not name.endswith("~"):
                lines = lines + [(path, line) for _, line in sudoers_lines(facts.text, lambda _: [], path)]
        return lines
    return facts.cached("sudoers-everywhere", gather)


def _defaults(facts):
    """Every setting of every Defaults line sudo reads, in order."""
    return facts.cached("sudo-defaults", lambda: sudo_defaults(_sudoers(facts)))


def _scope(default):
    return f" (only Defaults{default.scope})" if default.scope else ""


@pytest.mark.control("4.3.1")
def test_sudo_installed(facts, params):
    assert installed(facts, [params["package"]]), f"package {params['package']} is not installed"


@pytest.mark.control("4.3.2")
def test_sudo_uses_pty(facts):
    assert any(d.name == "use_pty" and not d.negated and not d.op and not d.scope for d in _defaults(facts)), \
        "no 'Defaults use_pty' in sudoers"
    off = [d for d in sudo_defaults(_sudoers_everywhere(facts)) if d.name == "use_pty" and d.negated]
    assert not off, "sudoers switches use_pty off (!use_pty)"


@pytest.mark.control("4.3.3")
def test_sudo_log_file(facts, params):
    files = [("!logfile" if d.negated else d.value) + _scope(d) for d in _defaults(facts) if d.name == "logfile"]
    assert files == [params["logfile"]], f"sudo logfile is {files or 'not set'}, expected {params['logfile']}"


@pytest.mark.control("GA-SUDO-PASSWORD")
def test_sudo_needs_password(facts):
    nopasswd = [f"{path}: {line}" for path, line in _sudoers_everywhere(facts) if "NOPASSWD" in line]
    assert not nopasswd, f"sudo runs commands without a password: {'; '.join(nopasswd)}"


@pytest.mark.control("4.3.4")
def test_sudo_reauthentication_not_disabled(facts):
    found = [f"{path}: {line}" for path, line in _sudoers_everywhere(facts)
             if "!authenticate" in line.replace(" ", "").replace("\t", "")]
    assert not found, f"sudoers disables re-authentication: {'; '.join(found)}"


@pytest.mark.control("4.3.5")
def test_sudo_timestamp_timeout(facts, params):
    limit = params["timestamp_timeout"]
    configured, shown, bad = [], [], []
    for d in _defaults(facts):
        if d.name != "timestamp_timeout" or d.negated or d.op != "=":
            continue
        try:
            value = float(d.value)
        except ValueError:
            value = None
        if value is None or value < 0 or value > limit:
            bad.append(d.value)
        if not d.scope and value is not None:
            configured.append(value)
        shown.append(value if value is not None and not d.scope else d.value + _scope(d))
    assert configured and not bad, \
        f"sudo timestamp_timeout is {shown or 'not set'}, expected between 0 and {limit} minutes"
    # What sudo itself reports (it reads every file, and its built-in default).
    reported = sudo_reported_timeout(facts.output("sudo_V"))
    assert reported is not None and 0 <= reported <= limit, \
        f"sudo reports a timestamp timeout of {reported if reported is not None else 'nothing'}, " \
        f"expected at most {limit} minutes"


@pytest.mark.control("4.3.6")
def test_su_restricted_to_empty_group(facts, params):
    group = params["group"]
    lines = [line for line in pam_lines(facts.content("/etc/pam.d/su"))
             if line.kind == "auth" and line.module_name == "pam_wheel.so"]
    wheel = [line for line in lines if line.control in ("required", "requisite") and not line.dash]
    shown = [f"{'-' if line.dash else ''}auth {line.control} {line.module} {' '.join(line.args)}".strip()
             for line in lines]
    assert any("use_uid" in line.args and f"group={group}" in line.args for line in wheel), \
        f"/etc/pam.d/su has no 'auth required pam_wheel.so use_uid group={group}' (found: {shown or 'none'})"
    entries = [entry for entry in getent(facts, "group") if entry[0] == group]
    assert entries, f"group {group} does not exist"
    _, _, gid, members = entries[0][:4]
    assert not members.strip(), f"group {group} has members ({members}), expected none"
    primary = [entry[0] for entry in getent(facts, "passwd") if entry[3] == gid]
    assert not primary, f"group {group} is the primary group of {', '.join(primary)}, expected nobody"


# --- 4.4 / 4.5 authselect and PAM ------------------------------------------------------------
PAM_FILES = {
    # pam_tool -> the files holding the auth, account and password stacks
    "pam-auth-update": {"auth": ["/etc/pam.d/common-auth"], "account": ["/etc/pam.d/common-account"],
                        "password": ["/etc/pam.d/common-password"], "session": ["/etc/pam.d/common-session"]},
    "authselect": {kind: ["/etc/pam.d/system-auth", "/etc/pam.d/password-auth"]
                   for kind in ("auth", "account", "password", "session")},
}
FAILLOCK_CONF = "/etc/security/faillock.conf"
PWQUALITY_CONF = "/etc/security/pwquality.conf"
PWHISTORY_CONF = "/etc/security/pwhistory.conf"


def _pam_modules(facts, pam_tool, kind, module):
    """{file: [arguments of each active line of that kind using module]}."""
    assert pam_tool in PAM_FILES, f"unknown pam_tool {pam_tool!r} (expected one of {', '.join(PAM_FILES)})"
    return {path: pam_module_args(facts.content(path), kind, module) for path in PAM_FILES[pam_tool][kind]}


def _module_conf(facts, arguments, default):
    """(path, settings, bare keywords) of the config file a module reads: its conf= argument,
    else default (absent: no settings, the module's defaults apply)."""
    path = pam_option(arguments, "conf") or default
    text = _optional_text(facts, path)
    texts = [text] if text is not None else []
    return path, conf_values(texts), conf_flags(texts)


@pytest.mark.control("4.4.2")
def test_authselect_with_faillock(facts, params):
    current = facts.result("authselect_current")
    if current.rc is None:
        raise FactUnavailable(current.describe())
    assert current.rc == 0, f"authselect has no configuration: {current.stdout.strip() or current.stderr.strip()}"
    words = current.stdout.split()
    assert words and words[0] == f"custom/{params['profile']}", \
        f"authselect profile is {words[0] if words else 'none'}, expected custom/{params['profile']}"
    assert "with-faillock" in words[1:], f"authselect features are {words[1:] or 'none'}, expected with-faillock"
    check = facts.result("authselect_check")
    if check.rc is None:
        raise FactUnavailable(check.describe())
    assert check.rc == 0, f"authselect check: {check.stdout.strip() or check.stderr.strip()}"


def _pwquality_files(facts):
    """The texts libpwquality reads: pwquality.conf.d/*.conf in ASCII order first, then
    pwquality.conf (the last setting wins)."""
    confs = sorted(p for p in _regular_files(facts, "/etc/security/pwquality.conf.d/*") if p.endswith(".conf"))
    texts = [facts.content(path) for path in confs]
    main = _optional_text(facts, PWQUALITY_CONF)
    return texts + ([main] if main is not None else [])


@pytest.mark.control("4.5.1")
def test_password_quality(facts, params):
    missing = not_installed(facts, params["packages"])
    assert not missing, f"package {', '.join(missing)} is not installed"
    settings = conf_values(_pwquality_files(facts))
    stack = _pam_modules(facts, params["pam_tool"], "password", "pam_pwquality.so")
    for path, lines in stack.items():
        assert lines, f"{path} does not check new passwords with pam_pwquality"
        for arguments in lines:
            minlen = pam_option(arguments, "minlen")
            assert minlen is None or integer(minlen, f"{path} pam_pwquality minlen") >= params["minlen"], \
                f"{path} gives pam_pwquality minlen={minlen}, expected at least {params['minlen']}"
    minlen = integer(settings.get("minlen", "8"), "pwquality minlen")
    assert minlen >= params["minlen"], f"pwquality minlen is {minlen}, expected at least {params['minlen']}"
    classes = pwquality_classes(settings)
    # The same rule may be written as credits (-1 = at least one of that class).
    assert classes >= params["minclass"], \
        f"pwquality asks for {classes} character classes, expected at least {params['minclass']}"
    # The module's arguments override the files: what each line really enforces.
    for path, lines in stack.items():
        for arguments in lines:
            effective = with_arguments(settings, arguments)
            classes = pwquality_classes(effective)
            assert classes >= params["minclass"], \
                f"{path}: pam_pwquality asks for {classes} character classes, expected at least {params['minclass']}"
            enforcing = integer(effective.get("enforcing", "1"), "pwquality enforcing")
            assert enforcing != 0, f"{path}: pam_pwquality only warns about weak passwords (enforcing=0)"


@pytest.mark.control("GA-PWQUALITY-RULES")
def test_password_quality_rules(facts, params):
    texts = _pwquality_files(facts)
    settings, flags = conf_values(texts), conf_flags(texts)
    wrong = []
    for path, lines in _pam_modules(facts, params["pam_tool"], "password", "pam_pwquality.so").items():
        if not lines:
            wrong.append(f"{path} does not check new passwords with pam_pwquality")
        for arguments in lines:
            # What this line enforces: the files' settings, overridden by its own arguments.
            effective = with_arguments(settings, arguments)
            difok = integer(effective.get("difok", "1"), f"{path} pwquality difok")
            if difok < params["difok"]:
                wrong.append(f"{path}: difok is {difok}, expected at least {params['difok']}")
            for name in ("maxrepeat", "maxsequence"):
                value = integer(effective.get(name, "0"), f"{path} pwquality {name}")
                if not 0 < value <= params[name]:
                    wrong.append(f"{path}: {name} is {value}, expected 1 to {params[name]}"
                                 + (" (0 switches the test off)" if value == 0 else ""))
            if integer(effective.get("dictcheck", "1"), f"{path} pwquality dictcheck") == 0:
                wrong.append(f"{path}: the dictionary check is off (dictcheck=0)")
            if "enforce_for_root" not in flags | set(arguments):
                wrong.append(f"{path}: the rules do not bind root (no enforce_for_root)")
    assert not wrong, "; ".join(wrong)


@pytest.mark.control("4.5.2")
def test_failed_logins_lock_accounts(facts, params):
    confs = set()
    for path, lines in _pam_modules(facts, params["pam_tool"], "auth", "pam_faillock.so").items():
        modes = {word for arguments in lines for word in arguments}
        assert {"preauth", "authfail"} <= modes, \
            f"{path} lacks pam_faillock preauth and authfail (found {sorted(modes & {'preauth', 'authfail'}) or 'none'})"
        for arguments in lines:
            deny, unlock = pam_option(arguments, "deny"), pam_option(arguments, "unlock_time")
            assert deny is None or 0 < integer(deny, f"{path} pam_faillock deny") <= params["deny"], \
                f"{path} gives pam_faillock deny={deny}"
            seconds = None if unlock is None else faillock_seconds(unlock, f"{path} pam_faillock unlock_time")
            assert seconds is None or seconds == 0 or seconds >= params["unlock_time"], \
                f"{path} gives pam_faillock unlock_time={unlock}"
            confs.add(pam_option(arguments, "conf") or FAILLOCK_CONF)
    for path, lines in _pam_modules(facts, params["pam_tool"], "account", "pam_faillock.so").items():
        assert lines, f"{path} has no pam_faillock account line"
    for conf in sorted(confs | {FAILLOCK_CONF}):
        name = "faillock.conf" if conf == FAILLOCK_CONF else conf
        text = _optional_text(facts, conf)
        settings = conf_values([text] if text is not None else [])
        deny = integer(settings.get("deny", "3"), f"{name} deny")
        unlock = faillock_seconds(settings.get("unlock_time", "600"), f"{name} unlock_time")
        assert 0 < deny <= params["deny"], f"{name} deny is {deny}, expected 1 to {params['deny']}"
        assert unlock == 0 or unlock >= params["unlock_time"], \
            f"{name} unlock_time is {unlock}, expected 0 or at least {params['unlock_time']}"


@pytest.mark.control("GA-FAILLOCK-ROOT")
def test_failed_logins_lock_root(facts, params):
    # pam_faillock never locks root without even_deny_root (on the line or in the file it reads),
    # whatever root_unlock_time says - stricter than the benchmark's "and/or", as the module is.
    wrong = []
    stacks = _pam_modules(facts, params["pam_tool"], "auth", "pam_faillock.so")
    for arguments in [args for lines in stacks.values() for args in lines] or [[]]:
        path, conf, flags = _module_conf(facts, arguments, FAILLOCK_CONF)
        name = "faillock.conf" if path == FAILLOCK_CONF else path
        if "even_deny_root" not in flags | set(arguments):
            wrong.append(f"{name}: failed logins do not lock root (no even_deny_root)")
        unlock = with_arguments(conf, arguments).get("root_unlock_time")
        seconds = None if unlock is None else faillock_seconds(unlock, f"{name} root_unlock_time")
        if seconds is not None and 0 < seconds < params["root_unlock_time"]:
            wrong.append(f"{name}: root_unlock_time is {unlock}, expected 0 or at least {params['root_unlock_time']}")
    assert not wrong, "; ".join(dict.fromkeys(wrong))


@pytest.mark.control("4.5.3")
def test_password_reuse_limited(facts, params):
    for path, lines in _pam_modules(facts, params["pam_tool"], "password", "pam_pwhistory.so").items():
        assert lines, f"{path} does not check new passwords against old ones (pam_pwhistory)"
        for arguments in lines:
            _, conf, flags = _module_conf(facts, arguments, PWHISTORY_CONF)
            value = pam_option(arguments, "remember") or conf.get("remember", "10")
            remember = integer(value, f"{path} pam_pwhistory remember")
            assert remember >= params["remember"], \
                f"{path} remembers {remember} passwords, expected at least {params['remember']}"
            # Root changes passwords too (an argument, or a bare keyword in the module's file);
            # and the password checked is the one the modules before accepted (use_authtok, an
            # argument only), not a second prompt's.
            assert "enforce_for_root" in set(arguments) | flags, f"{path}: pam_pwhistory lacks enforce_for_root"
            assert "use_authtok" in arguments, f"{path}: pam_pwhistory lacks use_authtok"


@pytest.mark.control("4.5.4")
def test_strong_password_hashing(facts, params):
    weak = {"md5", "bigcrypt", "sha256", "blowfish", "gost_yescrypt", "yescrypt", "sha512"} - {params["pam_hash"]}
    for path, lines in _pam_modules(facts, params["pam_tool"], "password", "pam_unix.so").items():
        assert lines, f"{path} has no pam_unix password line"
        for arguments in lines:
            assert params["pam_hash"] in arguments and not weak & set(arguments), \
                f"{path}: pam_unix hashes with {sorted(set(arguments) & (weak | {params['pam_hash']})) or 'its default'}, " \
                f"expected {params['pam_hash']}"
    methods = login_defs_values(facts.content("/etc/login.defs"), "ENCRYPT_METHOD")
    assert methods == [params["encrypt_method"]], \
        f"login.defs ENCRYPT_METHOD is {methods or 'not set'}, expected {params['encrypt_method']}"


@pytest.mark.control("GA-PAM-CURRENT")
def test_pam_packages_current(facts, params, pending_updates):
    missing = not_installed(facts, params["packages"])
    assert not missing, f"not installed: {', '.join(missing)}"
    upgradable = apt_simulated_installs(pending_updates)
    behind = [upgradable[name] for name in params["packages"] if name in upgradable]
    assert not behind, f"a newer version is in the archive: {'; '.join(behind)}"


@pytest.mark.control("GA-PAM-UNIX")
def test_pam_unix_options(facts, params):
    wrong = []
    for kind in ("auth", "account", "password", "session"):
        for path, lines in _pam_modules(facts, params["pam_tool"], kind, "pam_unix.so").items():
            if not lines:
                wrong.append(f"{path} has no pam_unix {kind} line")
            for arguments in lines:
                if "nullok" in arguments:
                    wrong.append(f"{path}: pam_unix {kind} accepts an empty password (nullok)")
                if pam_option(arguments, "remember") is not None:
                    wrong.append(f"{path}: pam_unix {kind} keeps a password history (remember=; "
                                 "pam_pwhistory does that, 4.5.3)")
                if kind == "password" and "use_authtok" not in arguments:
                    wrong.append(f"{path}: pam_unix sets a password the modules before it did not check (no use_authtok)")
    assert not wrong, "; ".join(wrong)


def _cost_expected(params, algorithm):
    """The least cost GA-PAM-HASH-COST accepts for an algorithm (None: the algorithm has no cost
    worth setting - 4.5.4 fails it anyway)."""
    if algorithm.lower() in ("yescrypt", "gost_yescrypt"):
        return params["yescrypt_cost"]
    if algorithm.lower() in ("sha256", "sha512"):
        return params["sha_crypt_rounds"]
    return None


@pytest.mark.control("GA-PAM-HASH-COST")
def test_password_hashes_cost_more_than_the_default(facts, params):
    login_defs = facts.content("/etc/login.defs")
    wrong = []
    for path, lines in _pam_modules(facts, params["pam_tool"], "password", "pam_unix.so").items():
        if not lines:
            wrong.append(f"{path} has no pam_unix password line")
        for arguments in lines:
            algorithm, cost = pam_unix_hash_cost(arguments, login_defs)
            least = _cost_expected(params, algorithm)
            if least is None or cost < least:
                wrong.append(f"{path}: pam_unix hashes with {algorithm} at cost {cost}, "
                             f"expected {'yescrypt or SHA-512' if least is None else f'at least {least}'}")
    method, cost = login_defs_hash_cost(login_defs)
    least = _cost_expected(params, method)
    if least is None or cost < least:
        wrong.append(f"login.defs ENCRYPT_METHOD {method} at cost {cost} (SHA_CRYPT_MIN/MAX_ROUNDS, "
                     f"YESCRYPT_COST_FACTOR), expected {'yescrypt or SHA-512' if least is None else f'at least {least}'}")
    assert not wrong, "; ".join(wrong)


# --- 4.6 accounts and the login environment ---------------------------------------------------
def _with_password(facts):
    """Shadow entries of accounts that have a password (a hash; locked or empty ones do not)."""
    return [entry for entry in getent(facts, "shadow") if has_password(entry)]


@pytest.mark.control("4.6.1.1")
def test_password_max_age(facts, params):
    limit = params["max_days"]
    value = number(_login_def(facts, "PASS_MAX_DAYS") or "", 99999)
    assert 0 < value <= limit, f"login.defs PASS_MAX_DAYS is {value}, expected 1 to {limit}"
    wrong = [f"{e[0]} ({e[4] or 'none'})" for e in _with_password(facts) if not 0 < number(e[4], 99999) <= limit]
    assert not wrong, f"passwords that do not expire within {limit} days: {', '.join(wrong)}"


@pytest.mark.control("4.6.1.2")
def test_password_min_age(facts, params):
    limit = params["min_days"]
    value = number(_login_def(facts, "PASS_MIN_DAYS") or "", 0)
    assert value >= limit, f"login.defs PASS_MIN_DAYS is {value}, expected at least {limit}"
    wrong = [f"{e[0]} ({e[3] or 'none'})" for e in _with_password(facts) if number(e[3], 0) < limit]
    assert not wrong, f"passwords that can change again within {limit} day(s): {', '.join(wrong)}"


@pytest.mark.control("4.6.1.3")
def test_password_warn_age(facts, params):
    limit = params["warn_age"]
    value = number(_login_def(facts, "PASS_WARN_AGE") or "", 0)
    assert value >= limit, f"login.defs PASS_WARN_AGE is {value}, expected at least {limit}"
    wrong = [f"{e[0]} ({e[5] or 'none'})" for e in _with_password(facts) if number(e[5], 0) < limit]
    assert not wrong, f"accounts warned less than {limit} days before expiry: {', '.join(wrong)}"


@pytest.mark.control("4.6.1.4")
def test_inactive_accounts_disabled(facts, params):
    limit = params["inactive_days"]
    defaults = shell_assignments(facts.output("useradd_D"))
    value = number(defaults.get("INACTIVE", ""), -1)
    assert 0 <= value <= limit, f"useradd's default INACTIVE is {value}, expected 0 to {limit}"
    wrong = [f"{e[0]} ({e[6] or 'none'})" for e in _with_password(facts) if not 0 <= number(e[6], -1) <= limit]
    assert not wrong, f"accounts not disabled within {limit} days after their password expired: {', '.join(wrong)}"


# shadow's "never": login.defs' stock PASS_MAX_DAYS; 273 years after the last change.
_NEVER_DAYS = 99999


@pytest.mark.control("GA-AGEING-KEYONLY")
def test_no_password_ageing_without_password(facts, params):
    # The mechanism: run at boot and on every change of /etc/shadow, so accounts made after the
    # image (cloud-init, useradd) are covered - the verify instance's own accounts alone could
    # not show that.
    script = facts.stat(params["script"])
    assert script is not None, f"{params['script']} does not exist"
    assert script.owner == "root" and not script.mode & 0o022, \
        f"{params['script']} is not root-owned and writable by root only ({script.owner}, {script.mode:04o})"
    path_unit, service = params["units"]
    state = unit_state(facts, path_unit)
    assert (state.enabled, state.active) == ("enabled", "active"), \
        f"{path_unit} is {state.enabled}/{state.active}: changes of /etc/shadow are not watched"
    state = unit_state(facts, service)
    assert state.enabled == "enabled", f"{service} is {state.enabled}: it does not run at boot"
    # The result: no account without a usable hash has a maximum age (max days below "never")
    # that can expire it; accounts with a hash are held to 4.6.1.x instead.
    expiring = [f"{e[0]} (max {e[4]}, inactive {e[6] or 'none'})" for e in getent(facts, "shadow")
                if not has_password(e) and 0 <= number(e[4], -1) < _NEVER_DAYS]
    assert not expiring, f"accounts without a password whose ageing can lock out their key logins: {', '.join(expiring)}"


@pytest.mark.control("4.6.1.5")
def test_no_password_change_in_the_future(facts):
    # The host's clock when the snapshot was taken.
    collected_at = facts.collected.get("collected_at")
    if not isinstance(collected_at, int):
        raise FactUnavailable(f"the snapshot has no collection time (collected_at is {collected_at!r})")
    today = collected_at // 86400
    future = [f"{e[0]} (day {e[2]})" for e in getent(facts, "shadow") if number(e[2], 0) > today]
    assert not future, f"last password change after today (day {today}): {', '.join(future)}"


@pytest.mark.control("4.6.2")
def test_system_accounts_secured(facts):
    shells = login_shells(facts)
    uid_min = number(_login_def(facts, "UID_MIN") or "", 1000)
    passwd = getent(facts, "passwd")
    with_shell = [f"{e[0]} ({e[6]})" for e in passwd
                  if e[0] not in ("root", "halt", "sync", "shutdown", "nfsnobody")
                  and (integer(e[2], f"the uid of {e[0]}") < uid_min or integer(e[2], "uid") == 65534)
                  and e[6] in shells]
    assert not with_shell, f"system accounts with a login shell: {', '.join(with_shell)}"
    shadow = {e[0]: e[1] for e in getent(facts, "shadow")}
    unlocked = [e[0] for e in passwd if e[0] != "root" and e[6] not in shells
                and e[0] in shadow and not shadow[e[0]].startswith(("!", "*"))]
    assert not unlocked, f"accounts without a login shell whose password is not locked: {', '.join(unlocked)}"


def _login_env(facts):
    """The login user's login shell (as at an SSH login: /etc/profile read): TMOUT, umask,
    readonly and exported variables."""
    return facts.cached("login-shell-env", lambda: parse_login_shell_env(facts.output("login_shell_env")))


def _startup_files(facts):
    """/etc/profile, the profile.d scripts it sources, and the system bashrc files."""
    return ["/etc/profile"] + sorted(p for p in _regular_files(facts, "/etc/profile.d/*") if p.endswith(".sh")) \
        + ["/etc/bashrc", "/etc/bash.bashrc"]


@pytest.mark.control("4.6.3")
def test_shell_timeout(facts, params):
    limit = params["timeout"]
    files = [path for path in _startup_files(facts)
             if (text := facts.text(path)) is not None and sets_variable(text, "TMOUT")]
    assert files, "no start-up file sets TMOUT"
    env = _login_env(facts)
    value = env.values["tmout"]
    assert value.isdigit() and 0 < int(value) <= limit, \
        f"TMOUT in a login shell is {value}, expected 1 to {limit} seconds"
    assert declares(env.readonly, "TMOUT", "readonly"), "TMOUT is not readonly in a login shell"
    assert declares(env.exported, "TMOUT", "export"), "TMOUT is not exported in a login shell"


def _weaker_umask_lines(facts, paths, wanted):
    """"<path>: umask <value>" for each umask in the active lines of those start-up files (the
    ones that exist) that lets more through than wanted."""
    weak = []
    for path in paths:
        text = facts.text(path)
        for line in active_lines(text or ""):
            weak += [f"{path}: umask {value}" for value in umask_values(line) if umask_weaker(value, wanted)]
    return weak


@pytest.mark.control("4.6.4")
def test_root_gid_zero(facts, params):
    accounts = getent(facts, "passwd")
    root = [entry for entry in accounts if entry[0] == "root"]
    assert root, "getent passwd has no root entry"
    gid = root[0][3]
    assert gid == "0", f"root's primary group is GID {gid}, expected 0"
    others = [entry[0] for entry in accounts if entry[3] == "0" and entry[0] not in params["gid0_accounts_allowed"]]
    assert not others, f"primary group GID 0 also for: {', '.join(others)}"
    groups = [entry[0] for entry in getent(facts, "group") if entry[2] == "0"]
    assert groups == ["root"], f"groups with GID 0: {', '.join(groups) or 'none'}, expected root alone"


@pytest.mark.control("GA-ROOT-UMASK")
def test_root_umask(facts, params):
    weak = _weaker_umask_lines(facts, params["rc_files"], params["umask"])
    assert not weak, f"root's start-up files set a weaker umask than {params['umask']}: {', '.join(weak)}"


@pytest.mark.control("GA-SHELLS-NOLOGIN")
def test_nologin_not_a_listed_shell(facts):
    listed = [line for line in active_lines(facts.content("/etc/shells"))
              if posixpath.basename(line.split()[0]) == "nologin"]
    assert not listed, f"/etc/shells lists {', '.join(listed)} (nologin is not a login shell)"


@pytest.mark.control("4.6.5")
def test_default_umask(facts, params):
    wanted = params["umask"]
    defs = _login_def(facts, "UMASK") or "022"
    mask = umask_mask(defs)
    assert mask is not None and not umask_is_weaker(mask, wanted), \
        f"login.defs UMASK is {defs}, expected {wanted} or stricter"
    profile_d = sorted(p for p in _regular_files(facts, "/etc/profile.d/*") if p.endswith(".sh"))
    weak = _weaker_umask_lines(facts, params["rc_files"] + profile_d, wanted)
    assert not weak, f"start-up files set a weaker umask than {wanted}: {', '.join(weak)}"
    live = _login_env(facts).values["umask"].strip()
    mask = umask_mask(live)
    assert mask is not None and not umask_is_weaker(mask, wanted), \
        f"umask in a login shell is {live}, expected {wanted} or stricter"


@pytest.mark.control("4.6.6")
def test_root_password_set_or_locked(facts):
    root = [entry for entry in getent(facts, "shadow") if entry[0] == "root"]
    assert root, "getent shadow has no root entry"
    password = root[0][1]
    state = "empty" if not password else "locked" if password.startswith(("!", "*")) else "set"
    assert password.startswith(("$", "!", "*")), f"root's password is {state} ({password[:3]}...), expected set or locked"
