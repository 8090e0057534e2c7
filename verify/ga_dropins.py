"""Firewall drop-ins (GA-FW-DROPIN): which chain of nftables.conf includes which pattern, and
what each drop-in file opens, read from its text as the collector reported it.

The reading of a drop-in is for people (an audit row says "tcp 8080 from 10.0.0.0/8") and for
attributing accept rules of the running ruleset to the drop-ins in audit mode; what is loaded
is judged from `nft -j list ruleset`, never from these files alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_CHAIN_OPEN = re.compile(r"^\s*chain\s+(\S+)\s*\{")
_HOOK = re.compile(r"\bhook\s+(\w+)")
_INCLUDE = re.compile(r'^\s*include\s+"([^"]+)"')
_DPORT = re.compile(r"\b(tcp|udp|sctp)\s+dport\s+(\{[^}]*\}|[^\s{}]+)")
_SOURCE = re.compile(r"\b(ip6?)\s+saddr\s+(\{[^}]*\}|[^\s{}]+)")
_INTERFACE = re.compile(r"\b([io]ifname)\s+(\{[^}]*\}|[^\s{}]+)")


def included_by_hook(conf: str) -> dict[str, list[str]]:
    """hook (input, forward, ...) -> the include patterns inside the base chain on that hook.

    A small reader for the rendered nftables.conf: one statement per line, a chain's hook on a
    line of its own (`type filter hook input ...`), braces balanced per line."""
    found: dict[str, list[str]] = {}
    depth, chain_depth, hook, pending = 0, None, None, []
    for raw in conf.splitlines():
        line = raw.split("#", 1)[0]
        if chain_depth is None and _CHAIN_OPEN.match(line):
            chain_depth, hook, pending = depth + 1, None, []
        elif chain_depth is not None:
            hook = hook or (_HOOK.search(line).group(1) if _HOOK.search(line) else None)
            include = _INCLUDE.match(line)
            if include:
                pending.append(include.group(1))
        depth += line.count("{") - line.count("}")
        if chain_depth is not None and depth < chain_depth:
            if hook:
                found.setdefault(hook, []).extend(pending)
            chain_depth = None
    return found


def _words(value: str) -> list[str]:
    return [w.strip().strip('"') for w in value.strip("{} ").split(",") if w.strip()]


def _statements(text: str) -> list[str]:
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    return [part.strip() for line in lines for part in line.split(";") if part.strip()]


@dataclass(frozen=True)
class Opening:
    """One accept rule of a drop-in, as a person reads it."""
    text: str  # "tcp 8080 from 10.0.0.0/8", 'iifname docker0', or the rule itself
    ports: tuple[tuple[str, str], ...]  # (protocol, "8080" or "9000-9002")


def openings(text: str) -> list[Opening]:
    """The accept rules of a drop-in file: `tcp dport 8080 accept` -> "tcp 8080"."""
    found = []
    for statement in _statements(text):
        if not re.search(r"\baccept\b", statement):
            continue
        parts, ports = [], []
        for proto, value in _DPORT.findall(statement):
            ports += [(proto, word) for word in _words(value)]
            parts.append(f"{proto} {','.join(_words(value))}")
        for _family, value in _SOURCE.findall(statement):
            parts.append(f"from {','.join(_words(value))}")
        for side, value in _INTERFACE.findall(statement):
            parts.append(f"{side} {','.join(_words(value))}")
        found.append(Opening(" ".join(parts) if parts else f"rule: {statement}", tuple(ports)))
    return found


def port_numbers(ports: tuple[tuple[str, str], ...], protocol: str) -> set[int]:
    """The numeric ports of one protocol (ranges expanded; named services are left out)."""
    numbers: set[int] = set()
    for proto, word in ports:
        if proto != protocol:
            continue
        low, _, high = word.partition("-")
        if low.isdigit() and (high.isdigit() or not high):
            numbers |= set(range(int(low), int(high or low) + 1))
    return numbers
