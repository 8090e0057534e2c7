"""SSH server: what `sshd -T` reports, i.e. what sshd really enforces after every drop-in."""
import shlex

import pytest

from ga_system import sshd_effective


@pytest.fixture(scope="module")
def sshd(host):
    return sshd_effective(host)


def _expect(sshd, key, value):
    assert sshd.get(key) == value, f"sshd {key} is {sshd.get(key)!r}, expected {value!r}"


@pytest.mark.control("4.2.7")
def test_root_login_disabled(sshd):
    _expect(sshd, "permitrootlogin", "no")


@pytest.mark.control("4.2.9")
def test_empty_passwords_refused(sshd):
    _expect(sshd, "permitemptypasswords", "no")


@pytest.mark.control("GA-SSH-PASSWORD")
def test_password_authentication_disabled(sshd):
    _expect(sshd, "passwordauthentication", "no")
    # With PAM, keyboard-interactive can ask for a password just the same.
    interactive = sshd.get("kbdinteractiveauthentication", sshd.get("challengeresponseauthentication"))
    assert interactive == "no", f"sshd keyboard-interactive authentication is {interactive!r}, expected 'no'"


@pytest.mark.control("4.2.12")
def test_x11_forwarding_disabled(sshd):
    _expect(sshd, "x11forwarding", "no")


@pytest.mark.control("4.2.16")
def test_max_auth_tries(sshd, params):
    value = int(sshd.get("maxauthtries", "6"))
    assert value <= params["max_auth_tries"], f"sshd maxauthtries is {value}, expected at most {params['max_auth_tries']}"


def _only_allowed(sshd, key, allowed):
    offered = [a for a in sshd.get(key, "").split(",") if a]
    extra = [a for a in offered if a not in allowed]
    assert offered, f"sshd reports no {key}"
    assert not extra, f"sshd {key} offers algorithms outside the strong set: {', '.join(extra)}"


@pytest.mark.control("GA-SSH-CIPHERS")
def test_strong_ciphers_only(sshd, params):
    _only_allowed(sshd, "ciphers", params["ciphers"])


@pytest.mark.control("GA-SSH-MACS")
def test_strong_macs_only(sshd, params):
    _only_allowed(sshd, "macs", params["macs"])


@pytest.mark.control("GA-SSH-KEX")
def test_strong_kex_only(sshd, params):
    _only_allowed(sshd, "kexalgorithms", params["kex"])


# --- CIS Level 1: the rest of section 4.2 --------------------------------------------------
def _sshd_values(host, key):
    """Every value `sshd -T` prints for a keyword that may repeat (AllowGroups: one per line)."""
    return [line.split(None, 1)[1].strip() for line in host.check_output("sshd -T").splitlines()
            if line.split(None, 1)[0].lower() == key and len(line.split(None, 1)) == 2]


def _files(host, find_args):
    """(path, owner, group, mode) of the files `find` selects."""
    out = host.check_output(f"find {find_args} -printf '%p %u %g %m\\n'")
    return [(path, owner, group, int(mode, 8)) for path, owner, group, mode in
            (line.split() for line in out.splitlines() if line.strip())]


@pytest.mark.control("4.2.1")
def test_sshd_config_files_root_only(host):
    files = _files(host, "/etc/ssh/sshd_config /etc/ssh/sshd_config.d -maxdepth 1 -type f "
                         "\\( -name sshd_config -o -name '*.conf' \\)")
    assert any(path == "/etc/ssh/sshd_config" for path, *_ in files), "/etc/ssh/sshd_config not found"
    wrong = [f"{path} ({owner}:{group} {mode:o})" for path, owner, group, mode in files
             if owner != "root" or group != "root" or mode & 0o177]
    assert not wrong, f"sshd configuration files not root:root 0600 or stricter: {', '.join(wrong)}"


@pytest.mark.control("4.2.2")
def test_private_host_keys_restricted(host):
    keys = _files(host, "/etc/ssh -maxdepth 1 -type f -name 'ssh_host_*_key'")
    assert keys, "no SSH private host keys in /etc/ssh"
    wrong = []
    for path, owner, group, mode in keys:
        # 0640 root:ssh_keys is the sshd-keygen layout on Amazon Linux; otherwise 0600 root:root.
        allowed = 0o640 if group == "ssh_keys" else 0o600
        if owner != "root" or group not in ("root", "ssh_keys") or mode & ~allowed & 0o7777:
            wrong.append(f"{path} ({owner}:{group} {mode:o})")
    assert not wrong, f"private host keys not 0600 root:root (or 0640 root:ssh_keys): {', '.join(wrong)}"


@pytest.mark.control("4.2.3")
def test_public_host_keys_restricted(host):
    keys = _files(host, "/etc/ssh -maxdepth 1 -type f -name 'ssh_host_*_key.pub'")
    assert keys, "no SSH public host keys in /etc/ssh"
    wrong = [f"{path} ({owner}:{group} {mode:o})" for path, owner, group, mode in keys
             if owner != "root" or group != "root" or mode & 0o133]
    assert not wrong, f"public host keys not 0644 root:root or stricter: {', '.join(wrong)}"


@pytest.mark.control("4.2.4")
def test_access_limited_to_admin_group(host, params, target_os):
    groups = _sshd_values(host, "allowgroups")
    assert sorted(groups) == sorted(params["allow_groups"]), \
        f"sshd AllowGroups is {groups or 'not set'}, expected {params['allow_groups']}"
    user = target_os["login_user"]
    member_of = host.check_output(f"id -nG {shlex.quote(user)}").split()
    assert set(member_of) & set(groups), \
        f"login user {user} (groups {', '.join(member_of)}) is in none of AllowGroups {', '.join(groups)}"


@pytest.mark.control("4.2.5")
def test_log_level(sshd, params):
    value = sshd.get("loglevel")
    assert value in ("VERBOSE", "INFO") and value == params["log_level"], \
        f"sshd loglevel is {value!r}, expected {params['log_level']!r} (VERBOSE or INFO)"


@pytest.mark.control("4.2.6")
def test_pam_enabled(sshd):
    _expect(sshd, "usepam", "yes")


@pytest.mark.control("4.2.8")
def test_hostbased_authentication_disabled(sshd):
    _expect(sshd, "hostbasedauthentication", "no")


@pytest.mark.control("4.2.10")
def test_user_environment_refused(sshd):
    _expect(sshd, "permituserenvironment", "no")


@pytest.mark.control("4.2.11")
def test_rhosts_ignored(sshd):
    _expect(sshd, "ignorerhosts", "yes")


@pytest.mark.control("4.2.14")
def test_crypto_policy_not_overridden(host, params):
    path = params["sysconfig_file"]
    found = host.run(f"grep -E '^[[:space:]]*CRYPTO_POLICY=' {shlex.quote(path)}").stdout.strip()
    assert not found, f"{path} overrides the system crypto policy for sshd: {found}"


@pytest.mark.control("4.2.15")
def test_banner(sshd, params):
    _expect(sshd, "banner", params["banner_file"])


@pytest.mark.control("4.2.17")
def test_max_startups(sshd, params):
    value = sshd.get("maxstartups", "")
    limit = [int(n) for n in params["max_startups"].split(":")]
    try:
        found = [int(n) for n in value.split(":")]
    except ValueError:
        found = []
    assert len(found) == 3 and all(f <= m for f, m in zip(found, limit, strict=True)), \
        f"sshd maxstartups is {value!r}, expected {params['max_startups']} or stricter"


@pytest.mark.control("4.2.18")
def test_max_sessions(sshd, params):
    value = int(sshd.get("maxsessions", "10"))
    assert value <= params["max_sessions"], f"sshd maxsessions is {value}, expected at most {params['max_sessions']}"


@pytest.mark.control("4.2.19")
def test_login_grace_time(sshd, params):
    value = int(sshd.get("logingracetime", "120"))
    assert 0 < value <= params["login_grace_time"], \
        f"sshd logingracetime is {value}, expected 1 to {params['login_grace_time']} seconds"


@pytest.mark.control("4.2.20")
def test_unresponsive_clients_dropped(sshd, params):
    interval = int(sshd.get("clientaliveinterval", "0"))
    count = int(sshd.get("clientalivecountmax", "0"))
    assert 0 < interval <= params["client_alive_interval"], \
        f"sshd clientaliveinterval is {interval}, expected 1 to {params['client_alive_interval']}"
    assert 0 < count <= params["client_alive_count_max"], \
        f"sshd clientalivecountmax is {count}, expected 1 to {params['client_alive_count_max']}"
