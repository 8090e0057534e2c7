"""Small readers of system state shared by the checks (package manager, sshd, nftables).

Which commands to run follows the OS data's package_manager value: adding an OS with a
known package manager needs no change here.
"""
from __future__ import annotations

import re
import shlex


def pending_security_updates(host, package_manager: str) -> list[str]:
    """Packages with an update from a security source that is not installed yet."""
    if package_manager == "apt":
        host.check_output("apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null")
        simulated = host.check_output("apt-get -s -o Debug::NoLocking=1 dist-upgrade")
        # "Inst libc6 [2.36-9+deb12u3] (2.36-9+deb12u4 Debian-Security:12/stable-security [amd64])"
        return sorted({line.split()[1] for line in simulated.splitlines()
                       if line.startswith("Inst ") and re.search(r"[-/][A-Za-z0-9.]*-security[\s\],]", line)})
    if package_manager == "dnf":
        listing = host.check_output("dnf -q --releasever=latest updateinfo list --security --available 2>/dev/null || true")
        return sorted({line.split()[-1] for line in listing.splitlines() if line.strip()})
    raise ValueError(f"unknown package manager {package_manager!r}")


def newest_installed_kernel(host, package_manager: str) -> str:
    if package_manager == "apt":
        return host.check_output("linux-version list | linux-version sort | tail -n 1").strip()
    if package_manager == "dnf":
        return host.check_output(
            "rpm -q kernel --qf '%{VERSION}-%{RELEASE}.%{ARCH}\\n' | sort -V | tail -n 1").strip()
    raise ValueError(f"unknown package manager {package_manager!r}")


def sshd_effective(host) -> dict[str, str]:
    """`sshd -T`: the configuration sshd really uses, keys lower-case."""
    config: dict[str, str] = {}
    for line in host.check_output("sshd -T").splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key.lower(), value.strip())
    return config


def unit_state(host, unit: str) -> tuple[str, str]:
    """(is-enabled, is-active) of a systemd unit; ("not-found", "inactive") when absent."""
    quoted = shlex.quote(unit)
    enabled = host.run(f"systemctl is-enabled {quoted}").stdout.strip() or "not-found"
    active = host.run(f"systemctl is-active {quoted}").stdout.strip() or "inactive"
    return enabled, active


def nft_ruleset(host) -> str:
    return host.check_output("nft list ruleset")


def hook_chains(ruleset: str, hook: str) -> dict[str, list[str]]:
    """Base chains on a netfilter hook, by "family table chain", with their lines."""
    chains: dict[str, list[str]] = {}
    family = table = chain = None
    lines: list[str] = []
    for raw in ruleset.splitlines():
        line = raw.strip()
        if match := re.match(r"table (\S+) (\S+) \{", line):
            family, table = match.groups()
        elif match := re.match(r"chain (\S+) \{", line):
            chain, lines = match.group(1), []
        elif line == "}" and chain is not None:
            if any(re.search(rf"type filter hook {hook} ", entry) for entry in lines):
                chains[f"{family} {table} {chain}"] = lines
            chain = None
        elif chain is not None and line:
            lines.append(line)
    return chains
