"""SSH server: what sshd really enforces after every drop-in - globally (`sshd -T`) and for the
login user's own connection (`sshd -T -C user=…,host=…,addr=…`, so Match blocks count). A
setting must hold in both."""
import pytest

from ga_system import active_lines, sshd_contexts


@pytest.fixture(scope="module")
def sshd(facts):
    return sshd_contexts(facts)


def _value(config, key, default=None):
    values = config.get(key)
    return values[0] if values else default


def _expect(sshd, key, value):
    wrong = [f"{where}: {key} is {_value(config, key)!r}" for where, config in sshd.items()
             if _value(config, key) != value]
    assert not wrong, f"{'; '.join(wrong)}, expected {value!r}"


def _each(sshd, key, default, accept, expected):
    """Every context's value of key (default when sshd prints none) must satisfy accept."""
    wrong = []
    for where, config in sshd.items():
        value = _value(config, key, default)
        try:
            good = accept(value)
        except ValueError:
            good = False
        if not good:
            wrong.append(f"{where}: {key} is {value!r}")
    assert not wrong, f"{'; '.join(wrong)}, expected {expected}"


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
    for where, config in sshd.items():
        interactive = _value(config, "kbdinteractiveauthentication", _value(config, "challengeresponseauthentication"))
        assert interactive == "no", f"{where}: keyboard-interactive authentication is {interactive!r}, expected 'no'"


@pytest.mark.control("4.2.12")
def test_x11_forwarding_disabled(sshd):
    _expect(sshd, "x11forwarding", "no")


# Every kind of forwarding sshd offers; "no" is off for each (the others also take all/local/remote).
_FORWARDING = ("allowtcpforwarding", "allowagentforwarding", "x11forwarding", "allowstreamlocalforwarding")


@pytest.mark.control("4.2.13")
def test_forwarding_disabled(sshd):
    # DisableForwarding yes overrides the single switches; without it each of them must be off.
    wrong = []
    for where, config in sshd.items():
        if _value(config, "disableforwarding") != "yes":
            on = [f"{key} {_value(config, key)!r}" for key in _FORWARDING if _value(config, key) != "no"]
            if on:
                wrong.append(f"{where}: disableforwarding is {_value(config, 'disableforwarding')!r} and {', '.join(on)}")
    assert not wrong, f"{'; '.join(wrong)}, expected disableforwarding 'yes' (or every kind of forwarding 'no')"
    # Required as well: it is what the Amazon Linux benchmark's audit (and a scanner) reads.
    _expect(sshd, "allowtcpforwarding", "no")


@pytest.mark.control("4.2.16")
def test_max_auth_tries(sshd, params):
    limit = params["max_auth_tries"]
    _each(sshd, "maxauthtries", "6", lambda v: int(v) <= limit, f"at most {limit}")


def _only_allowed(sshd, key, allowed):
    for where, config in sshd.items():
        offered = [a for a in _value(config, key, "").split(",") if a]
        extra = [a for a in offered if a not in allowed]
        assert offered, f"{where} reports no {key}"
        assert not extra, f"{where}: {key} offers algorithms outside the strong set: {', '.join(extra)}"


@pytest.mark.control("GA-SSH-CIPHERS")
def test_strong_ciphers_only(sshd, params):
    _only_allowed(sshd, "ciphers", params["ciphers"])


@pytest.mark.control("GA-SSH-MACS")
def test_strong_macs_only(sshd, params):
    _only_allowed(sshd, "macs", params["macs"])


@pytest.mark.control("GA-SSH-KEX")
def test_strong_kex_only(sshd, params):
    _only_allowed(sshd, "kexalgorithms", params["kex"])


@pytest.mark.control("GA-SSH-HOSTKEY-TYPES")
def test_host_keys_of_the_chosen_types_only(sshd, facts, params):
    expected = {f"/etc/ssh/ssh_host_{kind}_key" for kind in params["host_key_types"]}
    for where, config in sshd.items():
        loaded = set(config.get("hostkey", []))
        assert loaded == expected, (f"{where}: sshd loads host keys {', '.join(sorted(loaded)) or 'none'}, "
                                    f"expected {', '.join(sorted(expected))}")
    # openssh-server's upgrade makes the keys sshd_config itself names (every default type when
    # it names none): the drop-ins do not count for it.
    main = {line.split()[1] for line in facts.content("/etc/ssh/sshd_config").splitlines()
            if len(line.split()) == 2 and line.split()[0].lower() == "hostkey"}
    assert main == expected, (f"/etc/ssh/sshd_config names host keys {', '.join(sorted(main)) or 'none'}: a package "
                              f"upgrade would make those (every default type when none), expected "
                              f"{', '.join(sorted(expected))}")
    on_disk = set(facts.glob("/etc/ssh/ssh_host_*_key"))
    assert not on_disk - expected, f"host keys of another type on disk: {', '.join(sorted(on_disk - expected))}"
    assert not expected - on_disk, f"host keys missing: {', '.join(sorted(expected - on_disk))}"


# --- CIS Level 1: the rest of section 4.2 --------------------------------------------------
def _files(facts, directory, match):
    """Stat of the regular files directly in directory whose name satisfies match."""
    return [st for path, st in facts.tree("/etc/ssh").items()
            if st is not None and st.type == "file" and path.rsplit("/", 1)[0] == directory
            and match(path.rsplit("/", 1)[-1])]


@pytest.mark.control("4.2.1")
def test_sshd_config_files_root_only(facts):
    files = _files(facts, "/etc/ssh", lambda name: name == "sshd_config") + \
        _files(facts, "/etc/ssh/sshd_config.d", lambda name: name.endswith(".conf"))
    assert any(st.path == "/etc/ssh/sshd_config" for st in files), "/etc/ssh/sshd_config not found"
    wrong = [str(st) for st in files if st.owner != "root" or st.group_name != "root" or st.mode & 0o177]
    assert not wrong, f"sshd configuration files not root:root 0600 or stricter: {', '.join(wrong)}"


@pytest.mark.control("4.2.2")
def test_private_host_keys_restricted(facts):
    keys = [st for st in _files(facts, "/etc/ssh", lambda n: n.startswith("ssh_host_") and n.endswith("_key"))]
    assert keys, "no SSH private host keys in /etc/ssh"
    wrong = []
    for st in keys:
        # 0640 root:ssh_keys is the sshd-keygen layout on Amazon Linux; otherwise 0600 root:root.
        allowed = 0o640 if st.group_name == "ssh_keys" else 0o600
        if st.owner != "root" or st.group_name not in ("root", "ssh_keys") or st.mode & ~allowed & 0o7777:
            wrong.append(str(st))
    assert not wrong, f"private host keys not 0600 root:root (or 0640 root:ssh_keys): {', '.join(wrong)}"


@pytest.mark.control("4.2.3")
def test_public_host_keys_restricted(facts):
    keys = _files(facts, "/etc/ssh", lambda n: n.startswith("ssh_host_") and n.endswith("_key.pub"))
    assert keys, "no SSH public host keys in /etc/ssh"
    wrong = [str(st) for st in keys if st.owner != "root" or st.group_name != "root" or st.mode & 0o133]
    assert not wrong, f"public host keys not 0644 root:root or stricter: {', '.join(wrong)}"


@pytest.mark.control("4.2.4")
def test_access_limited_to_admin_group(facts, sshd, params):
    for where, config in sshd.items():
        # AllowGroups may repeat: sshd -T prints one line per group.
        groups = [g for line in config.get("allowgroups", []) for g in line.split()]
        assert sorted(groups) == sorted(params["allow_groups"]), \
            f"{where}: AllowGroups is {groups or 'not set'}, expected {params['allow_groups']}"
    user = facts.context.get("login_user", "")
    member_of = facts.output("id_login_user").split()
    assert set(member_of) & set(params["allow_groups"]), \
        f"login user {user} (groups {', '.join(member_of)}) is in none of AllowGroups {', '.join(params['allow_groups'])}"


@pytest.mark.control("4.2.5")
def test_log_level(sshd, params):
    _each(sshd, "loglevel", None, lambda v: v in ("VERBOSE", "INFO") and v == params["log_level"],
          f"{params['log_level']!r} (VERBOSE or INFO)")


@pytest.mark.control("4.2.6")
def test_pam_enabled(sshd):
    _expect(sshd, "usepam", "yes")


@pytest.mark.control("4.2.8")
def test_hostbased_authentication_disabled(sshd):
    _expect(sshd, "hostbasedauthentication", "no")


@pytest.mark.control("GA-SSH-GSSAPI")
def test_gssapi_authentication_disabled(sshd):
    _expect(sshd, "gssapiauthentication", "no")


@pytest.mark.control("4.2.10")
def test_user_environment_refused(sshd):
    _expect(sshd, "permituserenvironment", "no")


@pytest.mark.control("4.2.11")
def test_rhosts_ignored(sshd):
    _expect(sshd, "ignorerhosts", "yes")


@pytest.mark.control("4.2.14")
def test_crypto_policy_not_overridden(facts, params):
    path = params["sysconfig_file"]
    text = facts.text(path) or ""
    found = [line for line in active_lines(text) if line.startswith("CRYPTO_POLICY=")]
    assert not found, f"{path} overrides the system crypto policy for sshd: {found[0]}"


@pytest.mark.control("4.2.15")
def test_banner(sshd, params):
    _expect(sshd, "banner", params["banner_file"])


@pytest.mark.control("4.2.17")
def test_max_startups(sshd, params):
    limit = [int(n) for n in params["max_startups"].split(":")]

    def within(value):
        found = [int(n) for n in value.split(":")]
        return len(found) == 3 and all(f <= m for f, m in zip(found, limit, strict=True))
    _each(sshd, "maxstartups", "", within, f"{params['max_startups']} or stricter")


@pytest.mark.control("4.2.18")
def test_max_sessions(sshd, params):
    limit = params["max_sessions"]
    _each(sshd, "maxsessions", "10", lambda v: int(v) <= limit, f"at most {limit}")


@pytest.mark.control("4.2.19")
def test_login_grace_time(sshd, params):
    limit = params["login_grace_time"]
    _each(sshd, "logingracetime", "120", lambda v: 0 < int(v) <= limit, f"1 to {limit} seconds")


@pytest.mark.control("4.2.20")
def test_unresponsive_clients_dropped(sshd, params):
    interval, count = params["client_alive_interval"], params["client_alive_count_max"]
    _each(sshd, "clientaliveinterval", "0", lambda v: 0 < int(v) <= interval, f"1 to {interval}")
    _each(sshd, "clientalivecountmax", "0", lambda v: 0 < int(v) <= count, f"1 to {count}")
