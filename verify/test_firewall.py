"""Firewall: nftables only, inbound default drop; loopback, established and SSH allowed."""
import re

import pytest

from ga_system import hook_chains, nft_ruleset, unit_state


@pytest.fixture(scope="module")
def ruleset(host):
    return nft_ruleset(host)


@pytest.mark.control("3.4.1.1")
def test_nftables_installed(host, os_data):
    assert host.package(os_data["packages"]["firewall"]).is_installed


@pytest.mark.control("3.4.1.2")
def test_single_firewall_utility_active(host, os_data):
    enabled, active = unit_state(host, f"{os_data['services']['firewall']}.service")
    assert (enabled, active) == ("enabled", "active"), f"nftables is {enabled}/{active}"
    for other in os_data["conflicting_firewalls"]:
        _, other_active = unit_state(host, f"{other}.service")
        assert other_active != "active", f"{other} is active beside nftables"


@pytest.mark.control("3.4.2.2")
def test_nftables_table_exists(ruleset):
    assert re.search(r"^table \S+ \S+ \{", ruleset, re.M), "no nftables table is loaded"


@pytest.mark.control("3.4.2.3")
def test_base_chains_exist(ruleset):
    missing = [hook for hook in ("input", "forward", "output") if not hook_chains(ruleset, hook)]
    assert not missing, f"no base chain on hook(s): {', '.join(missing)}"


@pytest.mark.control("3.4.2.4")
def test_loopback_traffic(ruleset):
    rules = [line for lines in hook_chains(ruleset, "input").values() for line in lines]
    assert any(re.fullmatch(r'iif "lo" accept', r) for r in rules), "loopback interface traffic is not accepted"
    assert any(re.match(r"ip saddr 127\.0\.0\.0/8 .*drop", r) for r in rules), "127.0.0.0/8 from outside lo is not dropped"
    assert any(re.match(r"ip6 saddr ::1 .*drop", r) for r in rules), "::1 from outside lo is not dropped"


@pytest.mark.control("3.4.2.6")
def test_established_connections_accepted(ruleset):
    rules = [line for lines in hook_chains(ruleset, "input").values() for line in lines]
    assert any(re.match(r"ct state established,related accept", r) for r in rules), \
        "no rule accepts established,related inbound traffic"


@pytest.mark.control("3.4.2.7")
def test_default_deny(ruleset):
    for hook in ("input", "forward"):
        chains = hook_chains(ruleset, hook)
        assert chains, f"no {hook} base chain"
        for name, lines in chains.items():
            assert any("policy drop;" in line for line in lines), f"{name} ({hook}) does not drop by default"


# The only shapes of "accept" an input chain may have: loopback, replies, IPv6 neighbour
# discovery (when allowed) and new connections to allow-listed TCP ports.
_ALLOWED_ACCEPTS = (
    re.compile(r'iif "lo" accept'),
    re.compile(r"ct state established,related accept"),
)
_ND = re.compile(r"icmpv6 type \{ (?P<types>[a-z, -]+) \} ip6 hoplimit 255 accept")
_ND_TYPES = {"nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert"}
_TCP = re.compile(r"tcp dport (\{ (?P<set>[0-9, ]+) \}|(?P<one>[0-9]+)) ct state new accept")


@pytest.mark.control("GA-FW-INBOUND")
def test_only_allow_listed_ports_accepted(ruleset, params):
    allowed = set(params["allowed_tcp_ports"])
    unexpected = []
    for name, lines in hook_chains(ruleset, "input").items():
        for rule in lines:
            if not rule.endswith("accept") or any(p.fullmatch(rule) for p in _ALLOWED_ACCEPTS):
                continue
            nd = _ND.fullmatch(rule)
            if params["allow_icmpv6_nd"] and nd and {t.strip() for t in nd["types"].split(",")} <= _ND_TYPES:
                continue
            match = _TCP.fullmatch(rule)
            if match:
                ports = {int(p) for p in re.split(r"[, ]+", (match["set"] or match["one"]).strip()) if p}
                if ports <= allowed:
                    continue
            unexpected.append(f"{name}: {rule}")
    assert not unexpected, "inbound accept rules beyond the allow-list: " + " | ".join(unexpected)
    ssh_open = any(_TCP.fullmatch(r) for lines in hook_chains(ruleset, "input").values() for r in lines)
    assert ssh_open, "no rule accepts new connections to the allow-listed ports (SSH)"


@pytest.mark.control("GA-FW-PERSIST")
def test_ruleset_persisted_and_loaded_at_boot(host, os_data, ruleset):
    # This instance booted fresh from the image: a drop-policy input chain in the running
    # ruleset was loaded at boot from the persisted file.
    enabled, _ = unit_state(host, f"{os_data['services']['firewall']}.service")
    assert enabled == "enabled", f"nftables.service is {enabled}: the ruleset is not loaded at boot"
    conf = os_data["paths"]["nftables_conf"]
    assert host.file(conf).exists, f"{conf} does not exist"
    check = host.run(f"nft --check --file {conf}")
    assert check.rc == 0, f"{conf} does not load: {check.stderr.strip()}"
    assert any("policy drop;" in line for lines in hook_chains(ruleset, "input").values() for line in lines), \
        "the running ruleset has no drop-policy input chain after boot"
