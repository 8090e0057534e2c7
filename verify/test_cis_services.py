"""Services (CIS section 2): what the server does not need is absent or masked, and only
allow-listed services listen on the network.

Package and unit names come from each control's params (per OS in the catalogue).
"""
from __future__ import annotations

import re

import pytest

from ga_system import Listener, installed, listeners as parse_listeners, unexpected_listeners, unit_state

_RUNNING = ("active", "activating", "reloading")


def _service_not_in_use(facts, params):
    """No unit of the service is enabled or running; with remove_packages, none of its
    packages is installed either."""
    problems = []
    if params["remove_packages"]:
        found = installed(facts, params["packages"])
        if found:
            problems.append(f"installed: {', '.join(found)} (expected removed)")
    for unit in params["units"]:
        enabled, active = unit_state(facts, unit)
        if enabled.startswith("enabled") or active in _RUNNING:
            problems.append(f"{unit} is {enabled}/{active} (expected masked or absent)")
    assert not problems, "; ".join(problems)


def _not_installed(facts, params):
    found = installed(facts, params["packages"])
    assert not found, f"installed: {', '.join(found)} (expected none of {', '.join(params['packages'])})"


@pytest.fixture(scope="module")
def listeners(facts) -> list[Listener]:
    return parse_listeners(facts)


# --- 2.2 special-purpose services -----------------------------------------------------------
@pytest.mark.control("2.2.2")
def test_avahi_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.3")
def test_print_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.4")
def test_dhcp_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.5")
def test_dns_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.6")
def test_ftp_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.7")
def test_tftp_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.8")
def test_web_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.9")
def test_imap_pop3_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.10")
def test_samba_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.11")
def test_http_proxy_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.12")
def test_snmp_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.13")
def test_telnet_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.14")
def test_dnsmasq_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.16")
def test_nfs_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.17")
def test_rpcbind_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.18")
def test_rsync_daemon_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("GA-SVC-AUTOFS")
def test_autofs_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("GA-SVC-LDAP-SERVER")
def test_ldap_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("GA-SVC-NIS-SERVER")
def test_nis_server_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("GA-SVC-XINETD")
def test_xinetd_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("GA-SVC-BLUETOOTH")
def test_bluetooth_not_in_use(facts, params):
    _service_not_in_use(facts, params)


@pytest.mark.control("2.2.15")
def test_mta_local_only(facts, params, listeners):
    exposed = [str(s) for s in listeners if s.proto == "tcp" and s.port in params["mta_ports"] and not s.loopback]
    assert not exposed, f"mail ports listen beyond loopback: {' | '.join(exposed)} (expected loopback only)"
    # An MTA that is installed but not running now must still be configured for loopback.
    postfix = facts.optional_output("postconf_inet_interfaces")
    if postfix is not None:
        value = postfix.strip()
        assert value == "loopback-only", f"postfix inet_interfaces is {value!r}, expected 'loopback-only'"
    exim = facts.text("/etc/exim4/update-exim4.conf.conf")
    if exim is not None:
        match = re.search(r"^dc_local_interfaces=['\"]?([^'\"\n]*)", exim, re.M)
        addresses = {a.strip() for a in (match.group(1) if match else "").split(";") if a.strip()}
        assert addresses and addresses <= {"127.0.0.1", "::1"}, \
            f"exim4 dc_local_interfaces is {sorted(addresses) or 'unset (all interfaces)'}, expected 127.0.0.1 and ::1 only"


# --- 2.3 service clients --------------------------------------------------------------------
@pytest.mark.control("2.2.1")
def test_x_server_not_installed(facts, params):
    _not_installed(facts, params)


@pytest.mark.control("GA-SVC-GDM")
def test_gdm_not_installed(facts, params):
    _not_installed(facts, params)


@pytest.mark.control("2.3.1")
def test_telnet_client_not_installed(facts, params):
    _not_installed(facts, params)


@pytest.mark.control("2.3.2")
def test_ldap_client_not_installed(facts, params):
    _not_installed(facts, params)


@pytest.mark.control("2.3.3")
def test_ftp_client_not_installed(facts, params):
    _not_installed(facts, params)


@pytest.mark.control("GA-CLIENT-NIS")
def test_nis_client_not_installed(facts, params):
    _not_installed(facts, params)


@pytest.mark.control("GA-CLIENT-RSH")
def test_rsh_client_not_installed(facts, params):
    _not_installed(facts, params)


@pytest.mark.control("GA-CLIENT-TALK")
def test_talk_client_not_installed(facts, params):
    _not_installed(facts, params)


# --- 2.4 listening services -----------------------------------------------------------------
@pytest.mark.control("2.4")
def test_only_allow_listed_services_listen(listeners, params):
    unexpected = unexpected_listeners(listeners, params["allowed_tcp_ports"], params["allowed_udp"])
    assert not unexpected, (
        f"listening beyond loopback and outside the allow-list: {' | '.join(map(str, unexpected))} "
        f"(allowed: tcp {', '.join(map(str, params['allowed_tcp_ports']))}; udp {', '.join(params['allowed_udp'])})"
    )
