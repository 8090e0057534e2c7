"""Patching: nothing pending, the newest kernel running, security updates automatic."""
import pytest

from ga_system import newest_installed_kernel, pending_security_updates, unit_state


@pytest.mark.control("1.8")
def test_no_pending_security_updates(host, os_data):
    pending = pending_security_updates(host, os_data["package_manager"])
    assert not pending, f"security updates not installed: {', '.join(pending)}"


@pytest.mark.control("GA-PATCH-KERNEL")
def test_running_kernel_is_newest_installed(host, os_data):
    running = host.check_output("uname -r").strip()
    newest = newest_installed_kernel(host, os_data["package_manager"])
    assert running == newest, f"running kernel {running}, newest installed {newest}"


@pytest.mark.control("GA-PATCH-AUTO")
def test_automatic_security_updates_configured(host, os_data):
    package = os_data["packages"]["auto_updates"]
    assert host.package(package).is_installed, f"{package} is not installed"
    timer = os_data["services"]["auto_updates_timer"]
    enabled, _ = unit_state(host, timer)
    assert enabled == "enabled", f"{timer} is {enabled}, not enabled"
    if os_data["package_manager"] == "apt":
        dump = host.check_output("apt-config dump APT::Periodic")
        assert 'APT::Periodic::Unattended-Upgrade "1";' in dump, "APT::Periodic::Unattended-Upgrade is not 1"
        assert 'APT::Periodic::Update-Package-Lists "1";' in dump, "APT::Periodic::Update-Package-Lists is not 1"
    else:
        conf = host.file("/etc/dnf/automatic.conf").content_string
        assert "apply_updates = yes" in conf, "dnf-automatic does not apply updates"
        assert "upgrade_type = security" in conf, "dnf-automatic is not limited to security updates"
