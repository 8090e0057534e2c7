"""Readers of the snapshot that several checks share: packages, units, sshd, nftables,
listening sockets, mounts, kernel modules and configuration-file syntax (rsyslog's included).

Each takes the snapshot (verify/ga_facts.py) or raw text and returns plain data; none of them
runs anything. Parsing failures and missing facts raise FactUnavailable, never an empty answer.
Which commands exist follows the OS data's package_manager: adding an OS with a known package
manager needs no change here.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from ga_facts import TREES, FactUnavailable, Snapshot


# --- configuration syntax --------------------------------------------------------------------
def active_lines(text: str, comments: str = "#") -> list[str]:
    """Lines that are neither blank nor comments, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip() and line.strip()[0] not in comments]


def key_values(text: str, separator: Optional[str] = None, lower: bool = False) -> dict[str, str]:
    """key/value lines ("KEY value" when separator is None, else "key<sep>value"), last wins."""
    values: dict[str, str] = {}
    for line in active_lines(text):
        if separator is None:
            fields = line.split(None, 1)
            if len(fields) == 2:
                key, value = fields
            else:
                continue
        else:
            key, sep, value = line.partition(separator)
            if not sep:
                continue
        key = key.strip()
        values[key.lower() if lower else key] = value.strip()
    return values


def ini_section(text: str, section: str) -> dict[str, str]:
    """key = value settings of one [section] of an INI-style text (last assignment wins)."""
    current, values = None, {}
    for line in active_lines(text, comments="#;"):
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
        elif current == section and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def systemd_settings(facts: Snapshot, command: str, section: str) -> dict[str, str]:
    """A systemd configuration as `systemd-analyze cat-config` shows it (main file, then drop-ins
    in systemd's order; the last assignment of a key wins)."""
    return facts.cached(f"systemd:{command}:{section}", lambda: ini_section(facts.output(command), section))


@dataclass(frozen=True)
class TmpfilesLine:
    """A line of systemd-tmpfiles' effective configuration that sets a mode."""
    source: str  # the tmpfiles.d file it is in
    type: str  # d, z, Z, f, ... with its modifiers (d!, Z~ ...)
    path: str
    mode: str  # as written: "2755", "~2750", ":0640"

    @property
    def bits(self) -> int:
        return int(self.mode.lstrip("~:"), 8)

    @property
    def for_files(self) -> bool:
        """Whether the mode is a file's: a file type, or a journal file's path."""
        return self.type[0] in "fFwC" or self.path.endswith(".journal")

    def __str__(self) -> str:
        return f"{self.source}: {self.type} {self.path} {self.mode}"


# tmpfiles.d types whose mode field is ignored or absent (links, removal, attributes, ACLs).
_TMPFILES_NO_MODE = set("aAhHLrRxXtT")


def tmpfiles_modes(text: str) -> list[TmpfilesLine]:
    """The mode-setting lines of `systemd-tmpfiles --cat-config` (each file after a "# path"
    header), in the order systemd reads them."""
    found, source = [], ""
    for raw in text.splitlines():
        fields = raw.split()
        if len(fields) >= 2 and fields[0] == "#" and fields[1].startswith("/"):
            source = fields[1]
            continue
        if not fields or fields[0].startswith("#") or fields[0][0] in _TMPFILES_NO_MODE or len(fields) < 3:
            continue
        if fields[2] == "-":
            continue
        found.append(TmpfilesLine(source, fields[0], fields[1], fields[2]))
    return found


@dataclass(frozen=True)
class LogrotateCreate:
    """A `create` directive of a logrotate file: the mode it gives new log files, for which logs."""
    line: int
    mode: Optional[int]  # None: "create" without a mode (the rotated file's mode is kept)
    paths: tuple  # the log paths of its block; () for a global default


def logrotate_creates(text: str) -> list[LogrotateCreate]:
    """The `create` directives of a logrotate configuration, each with the logs it applies to.
    A block's log paths come before its `{`, on that line or the lines above it."""
    found, pending, block = [], [], None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if block is None:
            head, brace, _ = line.partition("{")
            if brace:
                block = tuple(pending + head.replace('"', " ").split())
                pending = []
                continue
            if line.startswith(("/", '"')):
                pending += line.replace('"', " ").split()
                continue
        elif line.startswith("}"):
            block = None
            continue
        words = line.split()
        if words[0] == "create":
            mode = int(words[1], 8) if len(words) > 1 and re.fullmatch(r"[0-7]{3,4}", words[1]) else None
            found.append(LogrotateCreate(number, mode, block or ()))
    return found


@dataclass(frozen=True)
class RsyslogForward:
    """A forwarding rule of rsyslog: which messages (its selector; "" behind a condition or in
    braces) go where."""
    selector: str
    target: str
    port: str
    protocol: str  # tcp or udp


# RainerScript's action(type="omfwd" ...), over as many lines as it takes, and the legacy
# "@@host:port" (TCP) / "@host" (UDP) forms; each with the selector that starts its line, if
# any (an action after "if ... then" or inside braces has none).
_ACTION_START = re.compile(r"(?:^[ \t]*(?P<selector>[^\s(#]+)[ \t]+)?\baction\s*\(", re.IGNORECASE | re.MULTILINE)
_ACTION_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9.]*)\s*=\s*"([^"]*)"')
_LEGACY_FORWARD = re.compile(
    r"^(?P<selector>[^\s#]+)\s+(?P<at>@@?)(?:\([^)]*\))?(?P<host>\[[^\]]+\]|[^\s:;#]+)(?::(?P<port>[0-9]+))?",
    re.MULTILINE)


def _action_body(text: str, start: int) -> str:
    """An action's parameters: from just after its "(" to its ")", quotes respected and
    comments (# to the end of a line) left out."""
    body, quoted, index = [], False, start
    while index < len(text):
        char = text[index]
        if char == "#" and not quoted:
            index = text.find("\n", index)
            if index < 0:
                break
            continue
        if char == '"':
            quoted = not quoted
        elif char == ")" and not quoted:
            break
        body.append(char)
        index += 1
    return "".join(body)


def rsyslog_forwards(text: str) -> list[RsyslogForward]:
    """The forwarding rules of an rsyslog configuration, omfwd's defaults filled in (port 514,
    UDP). Comment lines are left out; an action inside an if-block has no selector ("")."""
    active = "\n".join(active_lines(text))
    found = []
    for match in _ACTION_START.finditer(active):
        params = {key.lower(): value for key, value in _ACTION_PARAM.findall(_action_body(active, match.end()))}
        if params.get("type", "").lower() == "omfwd":
            found.append(RsyslogForward(match.group("selector") or "", params.get("target", ""),
                                        params.get("port", "514"), params.get("protocol", "udp").lower()))
    for match in _LEGACY_FORWARD.finditer(active):
        found.append(RsyslogForward(match.group("selector"), match.group("host").strip("[]"),
                                    match.group("port") or "514", "tcp" if match.group("at") == "@@" else "udp"))
    return found

def login_defs(facts: Snapshot) -> dict[str, str]:
    return facts.cached("login.defs", lambda: key_values(facts.content("/etc/login.defs")))


def login_shells(facts: Snapshot) -> set[str]:
    """Shells in /etc/shells that allow a login (nologin is not one)."""
    return {line for line in active_lines(facts.content("/etc/shells"))
            if line.startswith("/") and not line.endswith("/nologin")}


def table(text: str, min_fields: int) -> list[list[str]]:
    """Colon-separated entries (passwd, group, shadow), blank lines left out."""
    rows = [line.split(":") for line in text.splitlines() if line.strip()]
    short = [":".join(r) for r in rows if len(r) < min_fields]
    if short:
        raise FactUnavailable(f"malformed entries (fewer than {min_fields} fields): {short[0]!r}")
    return rows


def getent(facts: Snapshot, database: str) -> list[list[str]]:
    minimum = {"passwd": 7, "group": 4, "shadow": 9}[database]
    return facts.cached(f"getent:{database}", lambda: table(facts.output(f"getent_{database}"), minimum))


def os_release_id(facts: Snapshot) -> str:
    values = key_values(facts.content("/etc/os-release"), "=")
    return values.get("ID", "").strip('"')


def apt_config(facts: Snapshot) -> dict[str, str]:
    """`apt-config dump`: option -> value (the last assignment wins)."""
    def parse() -> dict[str, str]:
        values = {}
        for line in facts.output("apt_config").splitlines():
            match = re.match(r'^(\S+) "(.*)";$', line.strip())
            if match:
                values[match.group(1)] = match.group(2)
        return values
    return facts.cached("apt-config", parse)


# --- versions -------------------------------------------------------------------------------
def _dpkg_order(char: str) -> int:
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256 if char else 0


def verrevcmp(a: str, b: str) -> int:
    """dpkg's comparison of one version part (upstream or revision)."""
    while a or b:
        first_diff = 0
        while (a and not a[0].isdigit()) or (b and not b[0].isdigit()):
            ac = _dpkg_order(a[0]) if a and not a[0].isdigit() else 0
            bc = _dpkg_order(b[0]) if b and not b[0].isdigit() else 0
            if ac != bc:
                return ac - bc
            a, b = a[1:], b[1:]
        da = re.match(r"\d*", a).group()
        db = re.match(r"\d*", b).group()
        first_diff = int(da or 0) - int(db or 0)
        if first_diff:
            return first_diff
        a, b = a[len(da):], b[len(db):]
    return 0


def dpkg_compare(a: str, b: str) -> int:
    """Debian version comparison (epoch, upstream, revision), like `dpkg --compare-versions`."""
    def split(version: str) -> tuple[int, str, str]:
        epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
        return int(epoch or 0), upstream, revision
    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    return (ea - eb) or verrevcmp(ua, ub) or verrevcmp(ra, rb)


def _natural_key(version: str) -> list:
    """`sort -V`-like ordering: digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|[^\d]+", version)]


def newest_version(versions: list[str], package_manager: str) -> str:
    """The newest of kernel versions as the package manager orders them."""
    if package_manager == "apt":
        import functools

        return max(versions, key=functools.cmp_to_key(dpkg_compare))
    return max(versions, key=_natural_key)


# --- packages and units ------------------------------------------------------------------------
@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str  # "" in a snapshot from before the collector recorded it


def package_list(facts: Snapshot) -> list[Package]:
    """Installed packages, in the package manager's order."""
    def parse() -> list[Package]:
        found = []
        for line in facts.output("packages").splitlines():
            fields = line.split("\t")
            if len(fields) not in (3, 4):
                continue
            name, status, version = fields[:3]
            words = status.split()
            # dpkg's "install ok installed" (or "hold ok installed"); rpm lists installed ones only.
            if len(words) == 3 and words[0] in ("install", "hold") and words[1:] == ["ok", "installed"]:
                found.append(Package(name, version, fields[3] if len(fields) == 4 else ""))
        if not found:
            raise FactUnavailable("the package list is empty")
        return found
    return facts.cached("package_list", parse)


def packages(facts: Snapshot) -> dict[str, str]:
    """Installed packages: name -> version."""
    return {package.name: package.version for package in package_list(facts)}


def installed(facts: Snapshot, names: Iterable[str]) -> list[str]:
    found = packages(facts)
    return [name for name in names if name in found]


def not_installed(facts: Snapshot, names: Iterable[str]) -> list[str]:
    """Those of names that are not installed, in the order given."""
    found = packages(facts)
    return [name for name in names if name not in found]


def apt_simulated_installs(simulated: str) -> dict[str, str]:
    """Package -> its line, for each package apt's simulated upgrade (`apt-get -s`) would install
    or upgrade: "Inst libc6 [2.36-9+deb12u3] (2.36-9+deb12u4 Debian-Security:12/stable-security [amd64])"."""
    return {line.split()[1]: line for line in simulated.splitlines() if line.startswith("Inst ")}


@dataclass(frozen=True)
class UnitState:
    enabled: str  # as `systemctl is-enabled` says: enabled, disabled, static, masked, not-found, ...
    active: str  # as `systemctl is-active` says: active, inactive, failed, activating, ...

    def __iter__(self):
        return iter((self.enabled, self.active))


def parse_systemctl_show(text: str) -> dict[str, UnitState]:
    """`systemctl show -p Id,Names,LoadState,ActiveState,SubState,UnitFileState u1 u2 …`."""
    states: dict[str, UnitState] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" not in props:
            continue
        if props.get("LoadState") == "not-found":
            enabled = "not-found"
        elif props.get("LoadState") == "masked" and not props.get("UnitFileState"):
            enabled = "masked"
        else:
            enabled = props.get("UnitFileState") or "unknown"
        state = UnitState(enabled, props.get("ActiveState") or "inactive")
        for name in [props["Id"], *props.get("Names", "").split()]:
            states.setdefault(name, state)
    return states


def units(facts: Snapshot) -> dict[str, UnitState]:
    """The states of the units the snapshot asked systemd about."""
    def parse() -> dict[str, UnitState]:
        show = facts.section("units")["show"]
        if show.get("rc") != 0:
            raise FactUnavailable(f"`systemctl show` failed (exit {show.get('rc')}): "
                                  f"{' '.join((show.get('stderr') or show.get('error') or '').split())[:300]}")
        return parse_systemctl_show(show["stdout"])
    return facts.cached("units", parse)


def unit_state(facts: Snapshot, unit: str) -> UnitState:
    """(is-enabled, is-active) of a unit; ("not-found", "inactive") when systemd has no such unit."""
    found = units(facts)
    if unit in found:
        return found[unit]
    if unit not in facts.section("units").get("names", []):
        raise FactUnavailable(f"the snapshot did not ask systemd about {unit} (not collected: a check that names "
                              "a unit lists it in ga_facts.CHECKED_UNITS)")
    raise FactUnavailable(f"`systemctl show` gave no answer for {unit}")


# --- sshd ---------------------------------------------------------------------------------------
def parse_sshd_T(text: str) -> dict[str, list[str]]:
    """`sshd -T` output: keyword (lower-case) -> every value printed for it, in order."""
    config: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            config.setdefault(key.lower(), []).append(value.strip())
    if not config:
        raise FactUnavailable("sshd -T printed nothing")
    return config


def sshd_contexts(facts: Snapshot) -> dict[str, dict[str, list[str]]]:
    """What sshd enforces: globally (`sshd -T`) and for the login user's own connection
    (`sshd -T -C user=…,host=…,addr=…`, Match blocks applied). A setting must hold in both."""
    def parse() -> dict[str, dict[str, list[str]]]:
        login = facts.context.get("login_user", "the login user")
        return {"sshd -T": parse_sshd_T(facts.output("sshd_T")),
                f"sshd -T -C user={login}": parse_sshd_T(facts.output("sshd_T_login"))}
    return facts.cached("sshd", parse)


# --- nftables -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chain:
    family: str
    table: str
    name: str
    hook: Optional[str]
    policy: Optional[str]
    rules: tuple  # each rule: its "expr" list from `nft -j`

    @property
    def label(self) -> str:
        return f"{self.family} {self.table} {self.name}"


def nft_chains(ruleset: dict[str, Any]) -> list[Chain]:
    """The chains of `nft -j list ruleset`, each with its rules' expressions in order."""
    items = ruleset.get("nftables")
    if not isinstance(items, list):
        raise FactUnavailable("`nft -j list ruleset` did not print a ruleset")
    chains: dict[tuple, dict] = {}
    order = []
    for item in items:
        if "chain" in item:
            c = item["chain"]
            key = (c["family"], c["table"], c["name"])
            chains[key] = {"hook": c.get("hook"), "policy": c.get("policy"), "rules": []}
            order.append(key)
    for item in items:
        if "rule" in item:
            r = item["rule"]
            key = (r["family"], r["table"], r["chain"])
            if key in chains:
                chains[key]["rules"].append(tuple(r.get("expr", [])))
    return [Chain(k[0], k[1], k[2], chains[k]["hook"], chains[k]["policy"], tuple(chains[k]["rules"])) for k in order]


def hook_chains(ruleset: dict[str, Any], hook: str) -> list[Chain]:
    """Base chains on a netfilter hook."""
    return [chain for chain in nft_chains(ruleset) if chain.hook == hook]


def nft_ruleset(facts: Snapshot) -> dict[str, Any]:
    import json

    def parse() -> dict[str, Any]:
        try:
            return json.loads(facts.output("nft_json"))
        except ValueError as exc:
            raise FactUnavailable(f"`nft -j list ruleset` printed no JSON: {exc}") from None
    return facts.cached("nft", parse)


VERDICTS = ("accept", "drop", "reject", "jump", "goto", "return", "continue", "queue")


@dataclass(frozen=True)
class Match:
    left: str  # "meta iif", "ip saddr", "tcp dport", "ct state", ...
    op: str  # "==", "!=", "in", ...
    values: frozenset  # the right-hand side as a set of scalars ("a/len" for prefixes, (lo, hi) for ranges)


@dataclass(frozen=True)
class Rule:
    chain: str
    matches: tuple  # of Match
    verdict: Optional[str]  # accept, drop, jump, ... (None: no verdict, e.g. a counter alone)
    target: Optional[str]  # the chain a jump/goto goes to
    text: str
    other: tuple = ()  # statements this reader does not interpret (nat, meta set, …)


def _scalar(value: Any) -> Any:
    if isinstance(value, dict):
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            return tuple(value["range"])
    return value


def _values(right: Any) -> frozenset:
    if isinstance(right, dict) and "set" in right:
        right = right["set"]
    if isinstance(right, list):
        return frozenset(_scalar(v) for v in right)
    return frozenset([_scalar(right)])


def parse_rule(chain: str, expr: Iterable[dict]) -> Rule:
    """One rule of `nft -j`: its matches, its verdict, and what else it does."""
    matches, verdict, target, other = [], None, None, []
    for statement in expr:
        (kind, body), = statement.items()
        if kind == "match":
            left = body["left"]
            matches.append(Match(_operand(left).strip(), body.get("op", "=="), _values(body["right"])))
        elif kind in VERDICTS:
            verdict = kind
            if kind in ("jump", "goto"):
                target = (body or {}).get("target")
        elif kind not in ("counter", "log", "limit"):
            other.append(kind)
    return Rule(chain, tuple(matches), verdict, target, describe_rule(expr), tuple(other))


def chain_rules(ruleset: dict[str, Any], chain: Chain, _seen: tuple = ()) -> list[tuple[tuple, Rule]]:
    """Every rule a packet entering chain can reach, with the matches of the jumps that led
    there: [(inherited matches, rule)]. Jumped-to chains count as part of the base chain."""
    by_name = {(c.family, c.table, c.name): c for c in nft_chains(ruleset)}
    found = []
    for expr in chain.rules:
        rule = parse_rule(chain.label, expr)
        found.append(((), rule))
        if rule.verdict in ("jump", "goto") and rule.target:
            key = (chain.family, chain.table, rule.target)
            if key in by_name and key not in _seen:
                for inherited, inner in chain_rules(ruleset, by_name[key], _seen + (key,)):
                    found.append((rule.matches + inherited, inner))
    return found


def describe_rule(expr: Iterable[dict]) -> str:
    """A short, nft-like text of a rule's expressions (for messages)."""
    parts = []
    for e in expr:
        if "match" in e:
            m = e["match"]
            left, right = m["left"], m["right"]
            parts.append(f"{_operand(left)} {'' if m.get('op') in ('==', 'in') else m.get('op', '') + ' '}"
                         f"{_operand(right)}".replace("  ", " "))
        elif "counter" in e or "log" in e:
            continue
        else:
            parts.append(next(iter(e)))
    return " ".join(parts)


def _operand(value: Any) -> str:
    if isinstance(value, dict):
        if "payload" in value:
            return f"{value['payload'].get('protocol', '')} {value['payload'].get('field', '')}"
        if "meta" in value:
            return f"meta {value['meta'].get('key')}"
        if "ct" in value:
            return f"ct {value['ct'].get('key')}"
        if "set" in value:
            return "{ " + ", ".join(_operand(v) for v in value["set"]) + " }"
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            return "-".join(str(v) for v in value["range"])
    if isinstance(value, list):
        return ",".join(_operand(v) for v in value)
    return str(value)


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
            raise FactUnavailable(f"cannot read the port of a listening socket: {line.strip()!r}")
        processes = tuple(re.findall(r'\("([^"]+)",pid=', fields[6] if len(fields) > 6 else ""))
        listeners.append(Listener(proto, host_part, int(port), _is_loopback(address, interface), processes))
    return listeners


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


def listeners(facts: Snapshot) -> list[Listener]:
    return facts.cached("listeners", lambda: parse_ss(facts.output("ss_listen")))


# --- mounts and kernel modules --------------------------------------------------------------
@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: frozenset


def mounts(facts: Snapshot) -> list[Mount]:
    """/proc/self/mounts in order (octal escapes decoded)."""
    def parse() -> list[Mount]:
        found = []
        for line in facts.content("/proc/self/mounts").splitlines():
            fields = line.split()
            if len(fields) >= 4:
                target = fields[1].encode().decode("unicode_escape")
                found.append(Mount(fields[0], target, fields[2], frozenset(fields[3].split(","))))
        if not found:
            raise FactUnavailable("/proc/self/mounts lists nothing")
        return found
    return facts.cached("mounts", parse)


def mount_at(facts: Snapshot, path: str) -> Optional[Mount]:
    """The mount on top at path (the last one listed), or None."""
    found = [m for m in mounts(facts) if m.target == path]
    return found[-1] if found else None


def module_name(module: str) -> str:
    return module.replace("-", "_")  # how the kernel and modprobe's listing name it


def blacklisted_modules(facts: Snapshot) -> set[str]:
    """Modules named by a `blacklist` line of the effective modprobe configuration."""
    def parse() -> set[str]:
        return {module_name(fields[1]) for fields in (line.split() for line in
                facts.output("modprobe_showconfig").splitlines() if line.startswith("blacklist"))
                if len(fields) > 1 and fields[0] == "blacklist"}
    return facts.cached("modprobe-blacklist", parse)


def loaded_modules(facts: Snapshot) -> set[str]:
    return facts.cached("loaded-modules", lambda: {line.split()[0] for line in
                                                    facts.content("/proc/modules").splitlines() if line.strip()})


def builtin_modules(facts: Snapshot) -> set[str]:
    """Module names built into the running kernel (modules.builtin)."""
    def parse() -> set[str]:
        release = facts.output("uname_r").strip()
        text = facts.content(f"/lib/modules/{release}/modules.builtin")
        return {module_name(line.rsplit("/", 1)[-1].removesuffix(".ko")) for line in text.splitlines() if line}
    return facts.cached("builtin-modules", parse)


_REFUSED = re.compile(r"^install\s+/(usr/)?bin/(false|true)\b")


def module_problems(facts: Snapshot, module: str) -> list[str]:
    """What makes a kernel module loadable or loaded (empty when it is neither)."""
    name = module_name(module)
    problems = []
    dry_run = facts.result(f"modprobe_dry_run:{module}")
    if dry_run.rc is None:
        raise FactUnavailable(dry_run.describe())
    said = (dry_run.stdout + dry_run.stderr).strip()
    # modprobe loads a module's dependencies first: the module's own step is the last line.
    own = said.splitlines()[-1].strip() if said else ""
    if not _REFUSED.match(own):
        problems.append(f"modprobe would load {module} (dry run: {' '.join(said.split()) or 'nothing'}), "
                        "expected 'install /bin/false'")
    if name not in blacklisted_modules(facts):
        problems.append(f"{module} is not blacklisted (no 'blacklist {module}' in the modprobe configuration)")
    if name in loaded_modules(facts):
        problems.append(f"{module} is loaded (listed in /proc/modules)")
    if name in builtin_modules(facts):
        problems.append(f"{module} is built into the kernel and cannot be disabled")
    return problems


# --- the filesystem walk ---------------------------------------------------------------------
# What find says about an entry that vanished between reading a directory and visiting it
# (C locale or UTF-8 quotes). Any other message is an error the walk could not get past.
_VANISHED = re.compile(r"^find: .+: No such file or directory$")


def walk_complete(walk: dict) -> None:
    """The walk must have read everything: find exited 0, or every error it printed is about
    an entry that vanished while it ran (a temporary file removed, for instance)."""
    if walk.get("rc") is None:
        raise FactUnavailable(f"the filesystem walk did not run: {walk.get('error') or 'no exit status recorded'}")
    if walk["rc"] == 0:
        return
    stderr = walk.get("stderr", "")
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:
        raise FactUnavailable(f"the filesystem walk (find) exited {walk['rc']} without a message")
    if walk.get("stderr_truncated", True):
        raise FactUnavailable(f"the filesystem walk (find) exited {walk['rc']} and its error output was cut, "
                              f"so not every error can be read; it ends: "
                              f"{' '.join(stderr.split())[-300:]}")
    unreadable = [line for line in lines if not _VANISHED.match(line.strip())]
    if unreadable:
        raise FactUnavailable(f"the filesystem walk (find) exited {walk['rc']}: "
                              f"{' '.join(' '.join(unreadable).split())[:300]}")


# --- directory listings -----------------------------------------------------------------------
def parent_dir(path):
    return path.rsplit("/", 1)[0] or "/"


def directory_listing(facts, directory):
    """path -> metadata of directory and everything collected below it; None when the directory
    does not exist (a collected listing of a directory above it lacks it). Outside every
    collected listing, or unreadable: FactUnavailable."""
    directory = directory.rstrip("/") or "/"
    try:
        listing = facts.tree(directory)
    except FactUnavailable as exc:
        unlisted = exc
    else:
        return listing if listing.get(directory) is not None else None
    parent = directory
    while parent != "/":
        parent = parent_dir(parent)
        try:
            above = facts.tree(parent)
        except FactUnavailable:
            continue
        if above.get(directory) is None:
            return None
        break
    raise unlisted


def assert_listed_completely(facts, root, listing):
    """A collected listing stops at a fixed depth: a directory at that depth may hold more than
    the snapshot shows, and a check over everything below root cannot pass on it."""
    trees = facts.data.get("request", {}).get("trees") or TREES
    depth = next((int(d) for r, d in trees if r == root), None)
    if depth is None:
        raise FactUnavailable(f"the snapshot does not say how deep {root} was listed")
    base = root.rstrip("/").count("/")
    deeper = sorted(p for p, st in listing.items()
                    if st is not None and st.type == "directory" and p.count("/") - base >= depth)
    assert not deeper, f"{root} was listed {depth} levels deep only: what is below {deeper[0]} was not collected"


# --- setuid / setgid programs ------------------------------------------------------------------
def setuid_roots(mounts: Iterable[tuple[str, str, Iterable[str]]], filesystems: str, skip_fstypes: Iterable[str]) -> list[str]:
    """Mount points of the filesystems a setuid program can run from: on a block device (not a
    "nodev" type of /proc/filesystems), not of a skipped type, mounted without noexec and nosuid.
    mounts: (target, fstype, options) of /proc/self/mounts."""
    nodev = {line.split()[1] for line in filesystems.splitlines() if line.startswith("nodev") and len(line.split()) > 1}
    if not any(line.strip() for line in filesystems.splitlines()):
        raise FactUnavailable("/proc/filesystems lists nothing")
    skip = set(skip_fstypes)
    return sorted({target for target, fstype, options in mounts
                   if fstype not in nodev and fstype not in skip and not {"noexec", "nosuid"} & set(options)})


def setid_programs(facts: Snapshot, walk: dict, skip_fstypes: Iterable[str]) -> list[dict[str, str]]:
    """The setuid/setgid programs ({path, mode, root}, by path) on the local filesystems that
    allow running them: the walk's findings there. The walk must have searched each of those
    filesystems, completely, and kept every program it found (the audit rules of 5.2.3.6 and
    the reviewed list of GA-SETID-REVIEWED both need all of them)."""
    walk_complete(walk)
    table = [(m.target, m.fstype, m.options) for m in mounts(facts)]
    roots = setuid_roots(table, facts.content("/proc/filesystems"), skip_fstypes)
    assert roots, "/proc/self/mounts lists no local filesystem that allows setuid programs"
    walked = set(walk.get("roots", {}).get("suid", []))
    unsearched = [root for root in roots if root not in walked]
    assert not unsearched, f"the filesystem walk did not search {', '.join(unsearched)} for setuid/setgid programs"
    kept, found = len(walk.get("setid", [])), walk.get("counts", {}).get("setid")
    assert found == kept, f"the filesystem walk kept {kept} of {found} setuid/setgid programs"
    allowing = set(roots)
    return sorted((entry for entry in walk.get("setid", []) if entry.get("root") in allowing),
                  key=lambda entry: entry["path"])
