"""Firewall: nftables only, default drop on input, forward and output; inbound only loopback,
replies and SSH; outbound loopback and new TCP, UDP and ICMP connections.

The running ruleset is read as `nft -j list ruleset` (JSON), so each rule is judged by its
parsed matches and verdict, not by how nft happens to print it; rules in chains that a base
chain jumps to count as part of that base chain.
"""
import pytest

from ga_dropins import included_by_hook, openings, port_numbers
from ga_report import Finding
from ga_system import chain_rules, hook_chains, installed, nft_chains, nft_ruleset, unit_state


@pytest.fixture(scope="module")
def ruleset(facts):
    return nft_ruleset(facts)


@pytest.mark.control("3.4.1.1")
def test_nftables_installed(facts, os_data):
    package = os_data["packages"]["firewall"]
    assert installed(facts, [package]), f"package {package} is not installed"


@pytest.mark.control("3.4.1.2")
def test_single_firewall_utility_active(facts, os_data, params):
    enabled, active = unit_state(facts, f"{os_data['services']['firewall']}.service")
    assert (enabled, active) == ("enabled", "active"), f"nftables is {enabled}/{active}"
    for other in os_data["conflicting_firewalls"]:
        other_enabled, other_active = unit_state(facts, f"{other}.service")
        # enabled: started at the next boot, beside nftables, even when stopped now.
        assert other_active != "active" and other_enabled not in ("enabled", "enabled-runtime"), \
            f"{other} is {other_enabled}/{other_active} beside nftables, expected neither enabled nor active"
    restoring = installed(facts, params["packages"])
    assert not restoring, f"{', '.join(restoring)} installed beside nftables: it restores its own rules at boot"


@pytest.mark.control("3.4.2.2")
def test_nftables_table_exists(ruleset):
    tables = [item["table"] for item in ruleset.get("nftables", []) if "table" in item]
    assert tables, "no nftables table is loaded"


@pytest.mark.control("3.4.2.3")
def test_base_chains_exist(ruleset):
    missing = [hook for hook in ("input", "forward", "output") if not hook_chains(ruleset, hook)]
    assert not missing, f"no base chain on hook(s): {', '.join(missing)}"


def _hook_rules(ruleset, hook):
    """(inherited matches, rule) of every rule reachable from a base chain on this hook."""
    return [entry for chain in hook_chains(ruleset, hook) for entry in chain_rules(ruleset, chain)]


def _input_rules(ruleset):
    return _hook_rules(ruleset, "input")


def _only(rule, inherited, left, values):
    """Whether rule (with what it inherited) matches exactly `left == values` and nothing else."""
    matches = inherited + rule.matches
    return len(matches) == 1 and matches[0].left == left and matches[0].op in ("==", "in") \
        and matches[0].values == frozenset(values) and not rule.other


def _is_loopback_accept(rule, inherited, direction="i"):
    """Accepts everything on lo and nothing else (direction "i": arriving, "o": leaving)."""
    return rule.verdict == "accept" and (_only(rule, inherited, f"meta {direction}if", ["lo"])
                                         or _only(rule, inherited, f"meta {direction}ifname", ["lo"]))


def _drops_source(rule, left, prefix):
    return rule.verdict == "drop" and any(m.left == left and m.op in ("==", "in") and m.values == frozenset([prefix])
                                          for m in rule.matches)


@pytest.mark.control("3.4.2.4")
def test_loopback_traffic(ruleset):
    rules = _input_rules(ruleset)
    assert any(_is_loopback_accept(rule, inherited) for inherited, rule in rules), \
        "loopback interface traffic is not accepted"
    assert any(_drops_source(rule, "ip saddr", "127.0.0.0/8") for _, rule in rules), \
        "127.0.0.0/8 from outside lo is not dropped"
    assert any(_drops_source(rule, "ip6 saddr", "::1") for _, rule in rules), "::1 from outside lo is not dropped"
    assert any(_is_loopback_accept(rule, inherited, "o") for inherited, rule in _hook_rules(ruleset, "output")), \
        "loopback interface traffic is not accepted on the way out"


def _is_established_accept(rule, inherited):
    return rule.verdict == "accept" and _only(rule, inherited, "ct state", ["established", "related"])


# What a server sends: new connections and their continuation, for each of these protocols.
_OUTBOUND_PROTOCOLS = {"tcp", "udp", "icmp"}
_OUTBOUND_STATES = {"new", "established", "related"}


def _outbound_protocols(rule, inherited):
    """The protocols a rule lets out in every state of _OUTBOUND_STATES (empty: none)."""
    matches = inherited + rule.matches
    by_left = {m.left: m for m in matches}
    if rule.verdict != "accept" or rule.other or len(matches) != len(by_left) \
            or not set(by_left) <= {"meta l4proto", "ct state"}:
        return set()
    state = by_left.get("ct state")
    if state is not None and (state.op not in ("==", "in") or not _OUTBOUND_STATES <= state.values):
        return set()
    protocols = by_left.get("meta l4proto")
    if protocols is None:
        return set(_OUTBOUND_PROTOCOLS)  # every protocol
    return set(protocols.values) if protocols.op in ("==", "in") else set()


@pytest.mark.control("3.4.2.6")
def test_established_inbound_and_new_outbound_connections_accepted(ruleset):
    assert any(_is_established_accept(rule, inherited) for inherited, rule in _input_rules(ruleset)), \
        "no rule accepts established,related inbound traffic"
    leaving = set().union(*(_outbound_protocols(rule, inherited) for inherited, rule in _hook_rules(ruleset, "output")))
    missing = sorted(_OUTBOUND_PROTOCOLS - leaving)
    assert not missing, f"no output rule accepts new, established and related {', '.join(missing)} traffic"


@pytest.mark.control("3.4.2.7")
def test_default_deny(ruleset):
    for hook in ("input", "forward", "output"):
        chains = hook_chains(ruleset, hook)
        assert chains, f"no {hook} base chain"
        for chain in chains:
            assert chain.policy == "drop", f"{chain.label} ({hook}) does not drop by default (policy {chain.policy})"
        # A rule that accepts whatever reaches it makes the policy say nothing.
        everything = [f"{rule.chain}: {rule.text}" for inherited, rule in _hook_rules(ruleset, hook)
                      if rule.verdict == "accept" and not inherited and not rule.matches and not rule.other]
        assert not everything, f"the {hook} chain accepts everything before its drop policy: {' | '.join(everything)}"


# The only shapes of "accept" an input chain may have: loopback, replies, IPv6 neighbour
# discovery (when allowed) and new connections to allow-listed TCP ports.
_ND_TYPES = {"nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert"}


def _is_neighbour_discovery(rule, inherited):
    matches = {m.left: m for m in inherited + rule.matches}
    types, hoplimit = matches.get("icmpv6 type"), matches.get("ip6 hoplimit")
    return (len(matches) == 2 and types is not None and hoplimit is not None and not rule.other
            and types.op in ("==", "in") and types.values <= _ND_TYPES
            and hoplimit.op == "==" and hoplimit.values == frozenset([255]))


def _new_tcp_ports(rule, inherited):
    """The TCP ports a rule accepts new connections to, or None if it is not of that shape."""
    matches = inherited + rule.matches
    by_left = {m.left: m for m in matches}
    if len(matches) != 2 or set(by_left) != {"tcp dport", "ct state"} or rule.other:
        return None
    state, ports = by_left["ct state"], by_left["tcp dport"]
    if state.op not in ("==", "in") or state.values != frozenset(["new"]) or ports.op not in ("==", "in"):
        return None
    found = set()
    for value in ports.values:
        if isinstance(value, tuple):  # a range: every port in it
            found |= set(range(int(value[0]), int(value[1]) + 1))
        elif isinstance(value, int):
            found.add(value)
        else:
            return None  # a named service or set reference: not a shape this check accepts
    return found


def _dropin_ports(facts, controls) -> dict[str, set[int]]:
    """Audit mode: protocol -> the ports the instance's input drop-ins declare they open."""
    control = controls.get("GA-FW-DROPIN")
    if control is None or not control["applicable"]:
        return {}
    found = [o for path in _dropin_files(facts, control["params"])["input"] for o in openings(facts.text(path) or "")]
    return {proto: port_numbers(tuple(p for o in found for p in o.ports), proto) for proto in ("tcp", "udp", "sctp")}


def _opened_by_dropins(rule, inherited, ports_by_proto) -> bool:
    """Whether an accept rule only opens ports a drop-in declares (in audit mode that is the
    GA-FW-DROPIN row's finding, not a failure here)."""
    dports = [m for m in inherited + rule.matches if m.left.endswith(" dport")]
    if not dports or rule.other:
        return False
    for match in dports:
        declared = ports_by_proto.get(match.left.split()[0], set())
        values = set()
        for value in match.values:
            if isinstance(value, tuple):
                values |= set(range(int(value[0]), int(value[1]) + 1))
            elif isinstance(value, int):
                values.add(value)
            else:
                return False
        if match.op not in ("==", "in") or not values or not values <= declared:
            return False
    return True


@pytest.mark.control("GA-FW-INBOUND")
def test_only_allow_listed_ports_accepted(facts, ruleset, params, ga_mode, controls):
    allowed = set(params["allowed_tcp_ports"])
    from_dropins = _dropin_ports(facts, controls) if ga_mode == "audit" else {}
    unexpected, opened = [], set()
    for inherited, rule in _input_rules(ruleset):
        if rule.verdict != "accept":
            continue
        if _is_loopback_accept(rule, inherited) or _is_established_accept(rule, inherited):
            continue
        if params["allow_icmpv6_nd"] and _is_neighbour_discovery(rule, inherited):
            continue
        if from_dropins and _opened_by_dropins(rule, inherited, from_dropins):
            continue
        ports = _new_tcp_ports(rule, inherited)
        if ports is not None and ports <= allowed:
            opened |= ports
            continue
        unexpected.append(f"{rule.chain}: {rule.text}")
    assert not unexpected, "inbound accept rules beyond the allow-list: " + " | ".join(unexpected)
    assert opened, "no rule accepts new connections to the allow-listed ports (SSH)"


@pytest.mark.control("GA-FW-PERSIST")
def test_ruleset_persisted_and_loaded_at_boot(facts, os_data, ruleset):
    # This instance booted fresh from the image: a drop-policy input chain in the running
    # ruleset was loaded at boot from the persisted file.
    enabled, _ = unit_state(facts, f"{os_data['services']['firewall']}.service")
    assert enabled == "enabled", f"nftables.service is {enabled}: the ruleset is not loaded at boot"
    conf = os_data["paths"]["nftables_conf"]
    assert facts.exists(conf), f"{conf} does not exist"
    check = facts.result("nft_check_conf")
    assert check.rc == 0, f"{conf} does not load: {check.describe()}"
    assert any(chain.policy == "drop" for chain in nft_chains(ruleset) if chain.hook == "input"), \
        "the running ruleset has no drop-policy input chain after boot"


_DROPIN_HOOKS = ("input", "forward", "output")


def _dropin_files(facts, params) -> dict[str, list[str]]:
    """hook -> its drop-ins: every entry of its directory (the input directory's without the two
    others) - also files the ruleset would not read (not *.nft): none belong here."""
    nested = {params["forward_dropins"], params["output_dropins"]}
    return {hook: [p for p in facts.glob(f"{params[f'{hook}_dropins']}/*") if p not in nested]
            for hook in _DROPIN_HOOKS}


def _writable_by_others(stat) -> bool:
    return stat.owner != "root" or bool(stat.mode & 0o022)


@pytest.mark.control("GA-FW-DROPIN")
def test_dropins_included_root_only_and_none_shipped(facts, os_data, params, ga_mode):
    conf_path = os_data["paths"]["nftables_conf"]
    included = included_by_hook(facts.content(conf_path))
    for hook in _DROPIN_HOOKS:
        directory = params[f"{hook}_dropins"]
        assert f"{directory}/*.nft" in included.get(hook, []), \
            f"{conf_path} does not include {directory}/*.nft inside its {hook} chain"
        stat = facts.stat(directory)
        assert stat is not None and stat.type == "directory", f"{directory} is not a directory"
        assert not _writable_by_others(stat), \
            f"{directory} is not root-owned and writable by root only ({stat.owner}, {stat.mode:04o})"
    dropins = _dropin_files(facts, params)
    loose = [f"{path} ({facts.stat(path).owner}, {facts.stat(path).mode:04o})"
             for paths in dropins.values() for path in paths if _writable_by_others(facts.stat(path))]
    # Both modes: a drop-in someone other than root can write is a hole in the firewall.
    assert not loose, f"firewall drop-ins not root-owned or writable by others than root: {', '.join(loose)}"
    present = []
    for chain, paths in dropins.items():
        for path in paths:
            text = facts.text(path) or ""
            what = ", ".join(o.text for o in openings(text)) or "accepts nothing"
            present.append(f"{path} ({chain}{'' if path.endswith('.nft') else ', not read: not *.nft'}): {what}")
    if present and ga_mode == "audit":
        raise Finding("firewall drop-ins: " + "; ".join(present))
    assert not present, "the image ships firewall drop-ins: " + "; ".join(present)
