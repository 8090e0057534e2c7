"""Agents: auditd and chrony everywhere; the SSM and CloudWatch agents where the target has them."""
import re

import pytest

from ga_system import installed, unit_state


def _running(facts, unit):
    enabled, active = unit_state(facts, unit)
    assert (enabled, active) == ("enabled", "active"), f"{unit} is {enabled}/{active}, expected enabled/active"


@pytest.mark.control("5.2.1.1")
def test_auditd_installed(facts, os_data):
    package = os_data["packages"]["audit"]
    assert installed(facts, [package]), f"package {package} is not installed"


@pytest.mark.control("5.2.1.4")
def test_auditd_enabled_and_running(facts, os_data):
    _running(facts, f"{os_data['services']['audit']}.service")


@pytest.mark.control("2.1.1")
def test_single_time_daemon(facts, os_data):
    assert installed(facts, [os_data["packages"]["time_sync"]]), "chrony is not installed"
    for other in ("systemd-timesyncd.service", "ntp.service", "ntpsec.service"):
        _, active = unit_state(facts, other)
        assert active != "active", f"{other} runs beside chrony"


def _chrony_sources_configured(facts, paths):
    """server/pool names in chrony.conf and its sources directory."""
    texts = [facts.content(paths["chrony_conf"])]
    for pattern in (f"{paths['chrony_sources_dir']}/*.sources", f"{paths['chrony_sources_dir']}/*.conf"):
        texts += [facts.content(path) for path in facts.glob(pattern)]
    return {m for text in texts for m in re.findall(r"^\s*(?:server|pool)\s+(\S+)", text, re.M)}


@pytest.mark.control("2.1.2")
def test_chrony_uses_target_time_servers(facts, os_data, target_os):
    configured = _chrony_sources_configured(facts, os_data["paths"])
    missing = [server for server in target_os["time_servers"] if server not in configured]
    assert not missing, f"chrony is not configured with: {', '.join(missing)}"
    # And chronyd itself has them: `chronyc -n activity` counts the sources the daemon holds
    # (a name not resolved yet counts as a source "with unknown address"), `chronyc -n sources`
    # lists the resolved ones, where a literal address must appear as itself.
    activity = facts.output("chronyc_activity")
    counts = {kind: int(n) for n, kind in re.findall(r"^(\d+) sources? (online|offline|doing burst \(return to "
                                                       r"online\)|doing burst \(return to offline\)|with unknown "
                                                       r"address)", activity, re.M)}
    assert counts, f"chronyc -n activity says nothing about sources: {' '.join(activity.split())[:200]!r}"
    assert sum(counts.values()) >= 1, f"chronyd holds no time source ({' '.join(activity.split())[:200]})"
    sources = facts.output("chronyc_sources")
    loaded = re.findall(r"^[\^=#][-*+?x~ ]\s+(\S+)", sources, re.M)
    literal = [s for s in target_os["time_servers"] if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", s)]
    absent = [s for s in literal if s not in loaded]
    assert not absent, f"chronyd does not use {', '.join(absent)} (it uses {', '.join(loaded) or 'no resolved source'})"


@pytest.mark.control("GA-TIME-RUNNING")
def test_chrony_enabled_and_running(facts, os_data, params):
    _running(facts, f"{os_data['services']['time_sync']}.service")
    # `ps -C chronyd -o user=`: one line per chronyd process (none: ps exits 1).
    users = facts.output("chronyd_user", ok=(0, 1)).split()
    assert users, "no chronyd process is running"
    others = sorted(set(users) - {params["user"]})
    assert not others, f"chronyd runs as {', '.join(others)}, expected {params['user']} only"


@pytest.mark.control("GA-AGENT-SSM")
def test_ssm_agent_running(facts, target_os):
    _running(facts, f"{target_os['agents']['ssm']['service']}.service")


@pytest.mark.control("GA-AGENT-CWAGENT")
def test_cloudwatch_agent_configured(facts, target_os):
    assert facts.exists("/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json"), \
        "the rendered CloudWatch agent configuration is missing"
    assert facts.exists("/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.toml"), \
        "the agent configuration was never translated (fetch-config)"
    enabled, _ = unit_state(facts, f"{target_os['agents']['cloudwatch']['service']}.service")
    assert enabled == "enabled", f"amazon-cloudwatch-agent is {enabled}"
