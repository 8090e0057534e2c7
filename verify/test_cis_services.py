"""Services (CIS section 2): what the server does not need is absent or masked, and only
allow-listed services listen on the network.

Package and unit names come from each control's params (per OS in the catalogue).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import pytest

from ga_system import unit_state

_RUNNING = ("active", "activating", "reloading")


def _installed(host, packages):
    return [name for name in packages if host.package(name).is_installed]


def _service_not_in_use(host, params):
    """No unit of the service is enabled or running; with remove_packages, none of its
    packages is installed either."""
    problems = []
    if params["remove_packages"]:
        installed = _installed(host, params["packages"])
        if installed:
            problems.append(f"installed: {', '.join(installed)} (expected removed)")
    for unit in params["units"]:
        enabled, active = unit_state(host, unit)
        if enabled.startswith("enabled") or active in _RUNNING:
            problems.append(f"{unit} is {enabled}/{active} (expected masked or absent)")
    assert not problems, "; ".join(problems)


def _not_installed(host, params):
    installed = _installed(host, params["packages"])
    assert not installed, f"installed: {', '.join(installed)} (expected none of {', '.join(params['packages'])})"


# --- listening sockets ----------------------------------------------------------------------
@dataclass(frozen=True)
class Listener:
    proto: str  # tcp or udp
    address: str  # as ss shows it, with the interface if bound to one
    port: int
    loopback: bool
    processes: tuple[str, ...]

    def __str__(self) -> str:
        owners = ",".join(self.processes) or "unknown process"
        return f"{self.proto} {self.address}:{self.port} ({owners})"


def _is_loopback(address: str, interface: str) -> bool:
    if interface == "lo":
        return True
    if address in ("*", "0.0.0.0", "::"):
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def parse_ss(output: str) -> list[Listener]:
    """`ss -H -lntup` lines: netid state recv-q send-q local peer [process]."""
    listeners = []
    for line in output.splitlines():
        fields = line.split(None, 6)
        if len(fields) < 6:
            continue
        proto, local = fields[0], fields[4]
        host_part, _, port = local.rpartition(":")
        address, _, interface = host_part.partition("%")
        # "[fe80::1]%eth0" puts the interface after the bracket; "[::1]" keeps it inside.
        address = address.strip("[]")
        if "%" in address:
            address, _, interface = address.partition("%")
        if not port.isdigit():
            continue
        processes = tuple(re.findall(r'\("([^"]+)",pid=', fields[6] if len(fields) > 6 else ""))
        listeners.append(Listener(proto, host_part, int(port), _is_loopback(address, interface), processes))
    return listeners


@pytest.fixture(scope="module")
def listeners(host):
    return parse_ss(host.check_output("ss -H -lntup"))


# --- 2.2 special-purpose services -----------------------------------------------------------
@pytest.mark.control("2.2.2")
def test_avahi_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.3")
def test_print_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.4")
def test_dhcp_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.5")
def test_dns_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.6")
def test_ftp_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.7")
def test_tftp_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.8")
def test_web_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.9")
def test_imap_pop3_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.10")
def test_samba_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.11")
def test_http_proxy_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.12")
def test_snmp_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.13")
def test_telnet_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.14")
def test_dnsmasq_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.16")
def test_nfs_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.17")
def test_rpcbind_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.18")
def test_rsync_daemon_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("GA-SVC-AUTOFS")
def test_autofs_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("GA-SVC-LDAP-SERVER")
def test_ldap_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("GA-SVC-NIS-SERVER")
def test_nis_server_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("GA-SVC-XINETD")
def test_xinetd_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("GA-SVC-BLUETOOTH")
def test_bluetooth_not_in_use(host, params):
    _service_not_in_use(host, params)


@pytest.mark.control("2.2.15")
def test_mta_local_only(host, params, listeners):
    exposed = [str(s) for s in listeners if s.proto == "tcp" and s.port in params["mta_ports"] and not s.loopback]
    assert not exposed, f"mail ports listen beyond loopback: {' | '.join(exposed)} (expected loopback only)"
    # An MTA that is installed but not running now must still be configured for loopback.
    if host.exists("postconf"):
        value = host.check_output("postconf -h inet_interfaces").strip()
        assert value == "loopback-only", f"postfix inet_interfaces is {value!r}, expected 'loopback-only'"
    exim = host.file("/etc/exim4/update-exim4.conf.conf")
    if exim.exists:
        match = re.search(r"^dc_local_interfaces=['\"]?([^'\"\n]*)", exim.content_string, re.M)
        addresses = {a.strip() for a in (match.group(1) if match else "").split(";") if a.strip()}
        assert addresses and addresses <= {"127.0.0.1", "::1"}, \
            f"exim4 dc_local_interfaces is {sorted(addresses) or 'unset (all interfaces)'}, expected 127.0.0.1 and ::1 only"


# --- 2.3 service clients --------------------------------------------------------------------
@pytest.mark.control("2.3.1")
def test_telnet_client_not_installed(host, params):
    _not_installed(host, params)


@pytest.mark.control("2.3.2")
def test_ldap_client_not_installed(host, params):
    _not_installed(host, params)


@pytest.mark.control("2.3.3")
def test_ftp_client_not_installed(host, params):
    _not_installed(host, params)


@pytest.mark.control("GA-CLIENT-NIS")
def test_nis_client_not_installed(host, params):
    _not_installed(host, params)


@pytest.mark.control("GA-CLIENT-RSH")
def test_rsh_client_not_installed(host, params):
    _not_installed(host, params)


@pytest.mark.control("GA-CLIENT-TALK")
def test_talk_client_not_installed(host, params):
    _not_installed(host, params)


# --- 2.4 listening services -----------------------------------------------------------------
def unexpected_listeners(listeners: list[Listener], allowed_tcp_ports, allowed_udp) -> list[Listener]:
    """Non-loopback listeners outside the allow-list (TCP by port; UDP by port and process)."""
    udp_allowed = {tuple(entry.split("/", 1)) for entry in allowed_udp}
    unexpected = []
    for socket in listeners:
        if socket.loopback:
            continue
        if socket.proto == "tcp" and socket.port in allowed_tcp_ports:
            continue
        if socket.proto == "udp" and socket.processes and all(
                (str(socket.port), name) in udp_allowed for name in socket.processes):
            continue
        unexpected.append(socket)
    return unexpected


@pytest.mark.control("2.4")
def test_only_allow_listed_services_listen(listeners, params):
    unexpected = unexpected_listeners(listeners, params["allowed_tcp_ports"], params["allowed_udp"])
    assert not unexpected, (
        f"listening beyond loopback and outside the allow-list: {' | '.join(map(str, unexpected))} "
        f"(allowed: tcp {', '.join(map(str, params['allowed_tcp_ports']))}; udp {', '.join(params['allowed_udp'])})"
    )
