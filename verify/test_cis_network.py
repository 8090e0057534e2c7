"""Network (CIS section 3): unused protocols cannot be loaded, no wireless interface is up, and
the kernel's network parameters have their hardened values on this fresh boot."""
from __future__ import annotations

import re
import shlex

import pytest

_FALSE_INSTALL = re.compile(r"^install\s+/(usr/)?bin/(false|true)\b", re.M)


def _module_not_loadable(host, module: str) -> list[str]:
    """What makes a kernel module loadable or loaded (empty when it is neither)."""
    quoted = shlex.quote(module)
    problems = []
    dry_run = host.run(f"modprobe -n -v {quoted}")
    if not _FALSE_INSTALL.search(dry_run.stdout):
        found = (dry_run.stdout or dry_run.stderr).strip().replace("\n", " ") or "nothing"
        problems.append(f"modprobe would load {module} (dry run: {found}), expected 'install /bin/false'")
    blacklisted = host.run(f"modprobe --showconfig | grep -Eq '^blacklist[[:space:]]+'{quoted}'$'")
    if blacklisted.rc != 0:
        problems.append(f"{module} is not blacklisted")
    if host.run(f"grep -q '^'{quoted}' ' /proc/modules").rc == 0:
        problems.append(f"{module} is loaded")
    builtin = host.run(f"grep -Eq '/'{quoted}'[.]ko' \"/lib/modules/$(uname -r)/modules.builtin\"")
    if builtin.rc == 0:
        problems.append(f"{module} is built into the kernel and cannot be disabled")
    return problems


def _assert_module_disabled(host, params):
    problems = _module_not_loadable(host, params["module"])
    assert not problems, "; ".join(problems)


@pytest.mark.control("3.1.2")
def test_dccp_not_loadable(host, params):
    _assert_module_disabled(host, params)


@pytest.mark.control("3.1.3")
def test_sctp_not_loadable(host, params):
    _assert_module_disabled(host, params)


@pytest.mark.control("3.1.4")
def test_rds_not_loadable(host, params):
    _assert_module_disabled(host, params)


@pytest.mark.control("3.1.5")
def test_tipc_not_loadable(host, params):
    _assert_module_disabled(host, params)


# Wireless interfaces: "<name> <flags> <driver module or ->", one line each.
_WIRELESS = (
    'for d in /sys/class/net/*; do '
    'if [ -d "$d/wireless" ] || [ -e "$d/phy80211" ]; then '
    'm=-; if [ -e "$d/device/driver/module" ]; then m=$(basename "$(readlink -f "$d/device/driver/module")"); fi; '
    'echo "${d##*/} $(cat "$d/flags") $m"; fi; done'
)


@pytest.mark.control("GA-NET-WIRELESS")
def test_no_wireless_interface_up(host):
    problems = []
    for line in host.check_output(_WIRELESS).splitlines():
        name, flags, module = line.split()
        if int(flags, 16) & 0x1:  # IFF_UP
            problems.append(f"wireless interface {name} is up")
        if module != "-":
            problems.extend(_module_not_loadable(host, module))
    assert not problems, "; ".join(problems)


# --- kernel network parameters --------------------------------------------------------------
@pytest.fixture(scope="module")
def ipv6_enabled(host) -> bool:
    return host.file("/proc/sys/net/ipv6").exists


def _assert_sysctls(host, params, ipv6_enabled):
    expected = params["value"]
    wrong = []
    for key in params["sysctl_keys"]:
        if key.startswith("net.ipv6.") and not ipv6_enabled:
            continue  # IPv6 is disabled in the kernel: the setting cannot apply
        value = host.sysctl(key)
        if value != expected:
            wrong.append(f"{key} = {value}")
    assert not wrong, f"{', '.join(wrong)} (expected {expected})"


@pytest.mark.control("3.2.1")
def test_ip_forwarding_disabled(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.2.2")
def test_redirects_not_sent(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.3.1")
def test_source_routed_packets_refused(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.3.2")
def test_icmp_redirects_refused(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.3.3")
def test_secure_icmp_redirects_refused(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.3.4")
def test_martians_logged(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.3.5")
def test_broadcast_icmp_ignored(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.3.6")
def test_bogus_icmp_responses_ignored(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.3.7")
def test_reverse_path_filtering(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.3.8")
def test_tcp_syn_cookies(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)


@pytest.mark.control("3.3.9")
def test_ipv6_router_advertisements_refused(host, params, ipv6_enabled):
    _assert_sysctls(host, params, ipv6_enabled)
