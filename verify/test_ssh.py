"""SSH server: what `sshd -T` reports, i.e. what sshd really enforces after every drop-in."""
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
