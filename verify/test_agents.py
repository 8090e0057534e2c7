"""Agents: auditd and chrony everywhere; the SSM and CloudWatch agents where the target has them."""
import re

import pytest

from ga_system import unit_state


def _running(host, unit):
    enabled, active = unit_state(host, unit)
    assert (enabled, active) == ("enabled", "active"), f"{unit} is {enabled}/{active}, expected enabled/active"


@pytest.mark.control("5.2.1.1")
def test_auditd_installed(host, os_data):
    assert host.package(os_data["packages"]["audit"]).is_installed


@pytest.mark.control("5.2.1.4")
def test_auditd_enabled_and_running(host, os_data):
    _running(host, f"{os_data['services']['audit']}.service")


@pytest.mark.control("2.1.1")
def test_single_time_daemon(host, os_data):
    assert host.package(os_data["packages"]["time_sync"]).is_installed, "chrony is not installed"
    for other in ("systemd-timesyncd.service", "ntp.service", "ntpsec.service"):
        _, active = unit_state(host, other)
        assert active != "active", f"{other} runs beside chrony"


@pytest.mark.control("2.1.2")
def test_chrony_uses_target_time_servers(host, os_data, target_os):
    paths = os_data["paths"]
    text = host.check_output(
        f"cat {paths['chrony_conf']} {paths['chrony_sources_dir']}/*.sources {paths['chrony_sources_dir']}/*.conf 2>/dev/null || true")
    configured = set(re.findall(r"^\s*(?:server|pool)\s+(\S+)", text, re.M))
    missing = [server for server in target_os["time_servers"] if server not in configured]
    assert not missing, f"chrony is not configured with: {', '.join(missing)}"


@pytest.mark.control("GA-TIME-RUNNING")
def test_chrony_enabled_and_running(host, os_data):
    _running(host, f"{os_data['services']['time_sync']}.service")


@pytest.mark.control("GA-AGENT-SSM")
def test_ssm_agent_running(host, target_os):
    _running(host, f"{target_os['agents']['ssm']['service']}.service")


@pytest.mark.control("GA-AGENT-CWAGENT")
def test_cloudwatch_agent_configured(host, target_os):
    config = host.file("/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json")
    assert config.exists, "the rendered CloudWatch agent configuration is missing"
    assert host.file("/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.toml").exists, \
        "the agent configuration was never translated (fetch-config)"
    enabled, _ = unit_state(host, f"{target_os['agents']['cloudwatch']['service']}.service")
    assert enabled == "enabled", f"amazon-cloudwatch-agent is {enabled}"
