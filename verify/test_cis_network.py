"""Network (CIS section 3): unused protocols cannot be loaded, no wireless interface is up, and
the kernel's network parameters have their hardened values on this fresh boot."""
from __future__ import annotations

import pytest

from ga_facts import FactUnavailable
from ga_system import hook_chains, module_problems, nft_ruleset


def _assert_module_disabled(facts, params):
    problems = module_problems(facts, params["module"])
    assert not problems, "; ".join(problems)


@pytest.mark.control("3.1.1")
def test_ipv6_as_decided(facts, params, target, evidence):
    """The recorded decision holds on the instance: disabled means no interface can take an
    IPv6 address; enabled means the stack is up and IPv6 meets an input chain that drops by
    default (an inet or ip6 family), as IPv4 does."""
    decided = params["ipv6"]
    assert decided in ("enabled", "disabled"), f"the decision is {decided!r}, neither enabled nor disabled"
    if decided == "disabled":
        switches = [key for key in facts.sysctl_names("net.ipv6.conf.") if key.endswith(".disable_ipv6")]
        enabled_on = [key.split(".")[3] for key in switches if facts.sysctl(key) != "1"]
        # No net.ipv6 parameters at all: the kernel runs without IPv6 (ipv6.disable=1).
        assert not enabled_on, f"IPv6 is decided disabled for {target}, but it is on for: {', '.join(enabled_on)}"
        evidence(f"IPv6 decided disabled for {target}: "
                 + ("off on every interface" if switches else "the kernel runs without it"))
        return
    for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
        assert facts.sysctl(key) == "0", \
            f"IPv6 is decided enabled for {target}, but {key} = {facts.sysctl(key)}"
    try:
        chains = hook_chains(nft_ruleset(facts), "input")
    except FactUnavailable as exc:
        pytest.fail(f"IPv6 is enabled (decided for {target}) but no firewall ruleset filters it: {exc}")
    dropping = [chain.label for chain in chains if chain.family in ("inet", "ip6") and chain.policy == "drop"]
    assert dropping, f"IPv6 is enabled (decided for {target}) but no inet or ip6 input chain drops by default"
    evidence(f"IPv6 decided enabled for {target}: on, filtered by {', '.join(dropping)}")


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
