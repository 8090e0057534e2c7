"""Network (CIS section 3): unused protocols cannot be loaded, no wireless interface is up, and
the kernel's network parameters have their hardened values on this fresh boot."""
from __future__ import annotations

import pytest

from ga_system import module_problems


def _assert_module_disabled(facts, params):
    problems = module_problems(facts, params["module"])
    assert not problems, "; ".join(problems)


@pytest.mark.control("3.1.2")
def test_dccp_not_loadable(facts, params):
    _assert_module_disabled(facts, params)


@pytest.mark.control("3.1.3")
def test_sctp_not_loadable(facts, params):
    _assert_module_disabled(facts, params)


@pytest.mark.control("3.1.4")
def test_rds_not_loadable(facts, params):
    _assert_module_disabled(facts, params)


@pytest.mark.control("3.1.5")
def test_tipc_not_loadable(facts, params):
    _assert_module_disabled(facts, params)


@pytest.mark.control("GA-NET-WIRELESS")
def test_no_wireless_interface_up(facts):
    problems = []
    for name, interface in sorted(facts.section("interfaces").items()):
        if not interface["wireless"]:
            continue
        if interface["flags"] is None:
            problems.append(f"cannot read the flags of wireless interface {name}")
        elif int(interface["flags"], 16) & 0x1:  # IFF_UP
            problems.append(f"wireless interface {name} is up")
        if interface["module"]:
            problems.extend(module_problems(facts, interface["module"]))
    assert not problems, "; ".join(problems)


# --- kernel network parameters --------------------------------------------------------------
@pytest.fixture(scope="module")
def ipv6_enabled(facts) -> bool:
    return facts.sysctl_prefix_exists("net.ipv6.")


def _assert_sysctls(facts, params, ipv6_enabled):
    expected = params["value"]
    wrong = []
    for key in params["sysctl_keys"]:
        if key.startswith("net.ipv6.") and not ipv6_enabled:
            continue  # IPv6 is disabled in the kernel: the setting cannot apply
        value = facts.sysctl(key)
        if value is None:
            wrong.append(f"{key} does not exist in this kernel")
        elif value != str(expected):
            wrong.append(f"{key} = {value}")
    assert not wrong, f"{', '.join(wrong)} (expected {expected})"


@pytest.mark.control("3.2.1")
def test_ip_forwarding_disabled(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.2.2")
def test_redirects_not_sent(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.3.1")
def test_source_routed_packets_refused(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.3.2")
def test_icmp_redirects_refused(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.3.3")
def test_secure_icmp_redirects_refused(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.3.4")
def test_martians_logged(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.3.5")
def test_broadcast_icmp_ignored(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.3.6")
def test_bogus_icmp_responses_ignored(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.3.7")
def test_reverse_path_filtering(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.3.8")
def test_tcp_syn_cookies(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)


@pytest.mark.control("3.3.9")
def test_ipv6_router_advertisements_refused(facts, params, ipv6_enabled):
    _assert_sysctls(facts, params, ipv6_enabled)
