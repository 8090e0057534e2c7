"""The rendered nftables ruleset, loaded into a real kernel: traffic between two network
namespaces created for the test (an "instance" holding the ruleset and a "peer" on a veth
pair, IPv4 and IPv6), never the machine's own network.

What it shows, beyond `nft --check`:
- outbound default deny (3.4.2.7) does not cost a server its outbound traffic: new TCP, UDP and
  ICMP connections leave over IPv4 and IPv6 (3.4.2.6), IPv6 neighbour discovery works, and
  loopback works (3.4.2.4);
- what the rules do not name stays in: GRE and VRRP packets are refused on the way out; the
  output drop-in docs/app-teams.md shows for keepalived lets VRRP go, and only VRRP
  (GA-FW-DROPIN);
- inbound, only SSH is open (GA-FW-INBOUND);
- each of those findings flips when the ruleset is weakened (output policy accept, the neighbour
  discovery rule removed), so none of them holds whatever the ruleset says.

Needs root (CAP_NET_ADMIN and CAP_NET_RAW), as the README's test command runs; elsewhere it
skips, naming what is missing.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, required_tool
from tests.integration.conftest import rendered_build

pytestmark = pytest.mark.integration

PROBE = Path(__file__).with_name("firewall_probe.py")
INSTANCE_V4, PEER_V4 = "10.231.0.1", "10.231.0.2"
INSTANCE_V6, PEER_V6 = "fd00:231::1", "fd00:231::2"
VRRP_GROUP = "224.0.0.18"
DROPIN_DIR = "/etc/nftables.d"


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


class Namespaces:
    """Two network namespaces joined by a veth pair; the ruleset is loaded into `instance`."""

    def __init__(self, tag: str, dropins: Path):
        self.instance, self.peer = f"ga-fw-{tag}-i", f"ga-fw-{tag}-p"
        self.dropins = dropins
        self.servers: list[subprocess.Popen] = []

    def create(self) -> None:
        _run(["ip", "netns", "add", self.instance])
        _run(["ip", "netns", "add", self.peer])
        _run(["ip", "link", "add", "ga-fw-i", "netns", self.instance, "type", "veth", "peer", "name", "ga-fw-p",
              "netns", self.peer])
        for namespace, device, v4, v6 in ((self.instance, "ga-fw-i", INSTANCE_V4, INSTANCE_V6),
                                          (self.peer, "ga-fw-p", PEER_V4, PEER_V6)):
            _run(["ip", "-n", namespace, "link", "set", "lo", "up"])
            _run(["ip", "-n", namespace, "addr", "add", f"{v4}/24", "dev", device])
            _run(["ip", "-n", namespace, "addr", "add", f"{v6}/64", "dev", device, "nodad"])
            _run(["ip", "-n", namespace, "link", "set", device, "up"])
            _run(["ip", "-n", namespace, "route", "add", "224.0.0.0/4", "dev", device])  # VRRP's address

    def serve(self, namespace: str, *ports: int) -> None:
        server = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, str(PROBE), "serve",
                                   *map(str, ports)], stdout=subprocess.PIPE, text=True)
        self.servers.append(server)
        assert server.stdout.readline().strip() == "ok", f"the listeners in {namespace} did not start"

    def load(self, ruleset: str) -> None:
        """Loads the ruleset into the instance, its drop-in includes pointed at the test's own
        directory, and forgets the neighbours learnt so far (discovery runs again)."""
        conf = self.dropins.parent / "nftables.conf"
        conf.write_text(ruleset.replace(f'"{DROPIN_DIR}/', f'"{self.dropins}/'))
        _run(["ip", "netns", "exec", self.instance, "nft", "-f", str(conf)])
        for namespace in (self.instance, self.peer):
            _run(["ip", "-n", namespace, "neigh", "flush", "all"])

    def probe(self, namespace: str, *args: str) -> str:
        done = _run(["ip", "netns", "exec", namespace, sys.executable, str(PROBE), *args])
        return done.stdout.strip()

    def destroy(self) -> None:
        for server in self.servers:
            server.terminate()
            server.wait(timeout=30)
        for namespace in (self.instance, self.peer):
            _run(["ip", "netns", "delete", namespace], check=False)


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory) -> str:
    return (rendered_build(tmp_path_factory) / "files" / "nftables.conf").read_text()


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory, ruleset):
    required_tool("ip", "iproute2 (scripts/install.sh)")
    required_tool("nft", "scripts/install.sh (nftables)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces and raw sockets need root (the README's test command runs as root)")
    dropins = tmp_path_factory.mktemp("firewall") / "nftables.d"
    for directory in (dropins, dropins / "forward", dropins / "output"):
        directory.mkdir()
    pair = Namespaces(str(os.getpid()), dropins)
    try:
        pair.create()
        pair.serve(pair.instance, 22, 8080)
        pair.serve(pair.peer, 8080)
        yield pair
    finally:
        pair.destroy()


@pytest.fixture
def hardened(namespaces, ruleset):
    namespaces.load(ruleset)
    return namespaces


def _outbound(pair: Namespaces) -> dict[str, str]:
    return {
        "tcp ipv4": pair.probe(pair.instance, "tcp", PEER_V4, "8080"),
        "tcp ipv6": pair.probe(pair.instance, "tcp", PEER_V6, "8080"),
        "udp": pair.probe(pair.instance, "udp", PEER_V4, "8080"),
        "icmp": pair.probe(pair.instance, "ping", PEER_V4),
        "icmpv6 (neighbour discovery first)": pair.probe(pair.instance, "ping", PEER_V6),
        "loopback": pair.probe(pair.instance, "tcp", "127.0.0.1", "8080"),
    }


def test_outbound_tcp_udp_icmp_and_loopback_leave_under_default_deny(hardened):
    assert "policy drop" in hardened.dropins.parent.joinpath("nftables.conf").read_text().split("chain output")[1]
    results = _outbound(hardened)
    assert set(results.values()) == {"ok"}, results


def _documented_dropin(path: str) -> str:
    """The content of a drop-in docs/app-teams.md writes with cloud-init's write_files."""
    text = (PROJECT_ROOT / "docs" / "app-teams.md").read_text()
    block = re.search(rf"- path: {re.escape(path)}\n(?:\s+\w+: .*\n)*?\s+content: \|\n((?:\s{{6}}.*\n)+)", text)
    assert block, f"docs/app-teams.md writes no {path}"
    return "".join(line[6:] + "\n" for line in block.group(1).splitlines())


def test_other_protocols_stay_in_unless_an_output_dropin_lets_them_out(hardened, ruleset):
    assert hardened.probe(hardened.instance, "raw", PEER_V4, "47").startswith("fail"), \
        "a GRE packet left the instance: the output chain does not drop by default"
    assert hardened.probe(hardened.instance, "raw", VRRP_GROUP, "112").startswith("fail")
    # The VRRP drop-in of docs/app-teams.md lets VRRP out, and nothing else.
    dropin = hardened.dropins / "output" / "vrrp.nft"
    dropin.write_text(_documented_dropin("/etc/nftables.d/output/vrrp.nft"))
    try:
        hardened.load(ruleset)
        assert hardened.probe(hardened.instance, "raw", VRRP_GROUP, "112") == "ok", \
            "the documented output drop-in did not let VRRP out"
        assert hardened.probe(hardened.instance, "raw", PEER_V4, "47").startswith("fail")
    finally:
        dropin.unlink()


def test_inbound_only_ssh(hardened):
    assert hardened.probe(hardened.peer, "tcp", INSTANCE_V4, "22") == "ok"
    assert hardened.probe(hardened.peer, "tcp", INSTANCE_V6, "22") == "ok"
    assert hardened.probe(hardened.peer, "tcp", INSTANCE_V4, "8080").startswith("fail")
    assert hardened.probe(hardened.peer, "ping", INSTANCE_V4).startswith("fail")


def test_the_findings_flip_when_the_ruleset_is_weakened(namespaces, ruleset):
    output_accept = ruleset.replace("type filter hook output priority 0; policy drop;",
                                    "type filter hook output priority 0; policy accept;")
    assert output_accept != ruleset
    namespaces.load(output_accept)
    assert namespaces.probe(namespaces.instance, "raw", PEER_V4, "47") == "ok"

    discovery = next(line for line in ruleset.splitlines() if "nd-neighbor-solicit" in line and "accept" in line
                     and "mld" in line)
    namespaces.load(ruleset.replace(discovery + "\n", ""))
    assert namespaces.probe(namespaces.instance, "ping", PEER_V6).startswith("fail"), \
        "IPv6 worked without the output chain's neighbour discovery rule: the rule is not needed"
