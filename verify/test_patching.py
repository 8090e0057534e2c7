"""Patching: nothing pending, the newest kernel running, security updates automatic.

Pending updates are the one genuinely dynamic fact here: the package lists are refreshed and
an upgrade simulated on the instance (a command of its own, recorded into the snapshot).
"""
import re

import pytest

from ga_system import apt_config, apt_simulated_installs, ini_section, installed, newest_version, unit_state


def _pending_apt(simulated: str) -> list[str]:
    # Those the simulated upgrade takes from a security suite ("... Debian-Security:12/stable-security [amd64])").
    return sorted(name for name, line in apt_simulated_installs(simulated).items()
                  if re.search(r"[-/][A-Za-z0-9.]*-security[\s\],]", line))


def _pending_dnf(listing: str) -> list[str]:
    # "ALAS2023-2024-123 Important/Sec. openssl-libs-1:3.0.8-1.amzn2023.0.12.x86_64"
    return sorted({line.split()[-1] for line in listing.splitlines() if line.strip()})


@pytest.mark.control("1.8")
def test_no_pending_security_updates(pending_updates, os_data):
    parse = _pending_apt if os_data["package_manager"] == "apt" else _pending_dnf
    pending = parse(pending_updates)
    assert not pending, f"security updates not installed: {', '.join(pending)}"


@pytest.mark.control("GA-PATCH-KERNEL")
def test_running_kernel_is_newest_installed(facts, os_data):
    running = facts.output("uname_r").strip()
    if os_data["package_manager"] == "apt":
        kernels = [path.removeprefix("/boot/vmlinuz-") for path in facts.glob("/boot/vmlinuz-*")]
    else:
        kernels = [line.strip() for line in facts.output("kernels").splitlines() if line.strip()]
    assert kernels, "no installed kernel is listed"
    newest = newest_version(kernels, os_data["package_manager"])
    assert running == newest, f"running kernel {running}, newest installed {newest}"


@pytest.mark.control("GA-PATCH-AUTO")
def test_automatic_security_updates_configured(facts, os_data):
    package = os_data["packages"]["auto_updates"]
    assert installed(facts, [package]), f"{package} is not installed"
    timer = os_data["services"]["auto_updates_timer"]
    enabled, _ = unit_state(facts, timer)
    assert enabled == "enabled", f"{timer} is {enabled}, not enabled"
    if os_data["package_manager"] == "apt":
        periodic = apt_config(facts)
        for key in ("APT::Periodic::Unattended-Upgrade", "APT::Periodic::Update-Package-Lists"):
            assert periodic.get(key) == "1", f"{key} is {periodic.get(key, 'not set')!r}, expected 1"
    else:
        commands = ini_section(facts.content("/etc/dnf/automatic.conf"), "commands")
        # dnf reads booleans case-insensitively (libdnf's OptionBool).
        assert commands.get("apply_updates", "").strip().lower() in ("yes", "1", "true", "on"), \
            f"dnf-automatic does not apply updates (apply_updates = {commands.get('apply_updates', 'not set')})"
        assert commands.get("upgrade_type") == "security", \
            f"dnf-automatic is not limited to security updates (upgrade_type = {commands.get('upgrade_type', 'not set')})"


@pytest.mark.control("GA-PATCH-RESTARTED")
def test_no_process_runs_replaced_code(facts):
    stale = facts.section("replaced_code")
    by_process = {}
    for entry in stale:
        by_process.setdefault(f"{entry['comm']} ({entry['pid']})", []).append(entry["path"])
    described = [f"{process}: {', '.join(paths)}" for process, paths in sorted(by_process.items())]
    assert not stale, (f"{len(by_process)} process(es) run a program or library replaced on disk since they started - "
                       f"restart them (or reboot): {'; '.join(described)}")


def changed_package_files(output: str) -> list[str]:
    """Lines of `dpkg --verify` / `rpm -Va` about files that are not configuration files.
    dpkg: "??5?????? c /etc/x" or "missing   c /etc/x" (attribute c: a conffile); rpm:
    "S.5......  c /etc/x" (rpm marks c config, d documentation, g ghost, l license, r readme:
    only c is left out)."""
    changed = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        attribute = fields[1] if len(fields) >= 3 else ""
        if attribute == "c":
            continue
        changed.append(line.strip())
    return changed


@pytest.mark.control("GA-PATCH-VERIFIED")
def test_installed_files_match_their_packages(facts, os_data, evidence):
    result = facts.result("package_verify")
    manager = os_data["package_manager"]
    # dpkg --verify exits 0 even when files differ (it prints them); rpm -Va exits non-zero then.
    ran = result.rc == 0 or (manager == "dnf" and result.rc is not None and result.stdout.strip())
    assert ran, f"package verification did not run: {result.describe()}"
    changed = changed_package_files(result.stdout)
    shown = "; ".join(changed[:10]) + (f"; and {len(changed) - 10} more" if len(changed) > 10 else "")
    assert not changed, f"{len(changed)} installed file(s) differ from their packages: {shown}"
    configs = len(result.stdout.splitlines())
    evidence(f"every package file matches its package's checksum; {configs} configuration file(s) changed "
             "on purpose, not judged")
