"""CIS file integrity on the booted system: AIDE installed with the pipeline's configuration,
the database of the captured image in place, its check clean on this fresh instance, a daily
check, and the audit tools among what it watches.

The collector runs `aide --check` on the instance (it only reads); everything else is judged
from files; AIDE's configuration is read by ga_aide.
"""
import pytest

import ga_aide
from ga_facts import FactUnavailable
from ga_system import ini_section, not_installed, unit_state


def _aide_config(facts, path):
    text = facts.content(path)
    st = facts.stat(path)
    assert st.owner == "root" and not st.mode & 0o022, \
        f"{path} is {st.owner}:{st.group_name} {st.mode:04o}: someone other than root can change what AIDE watches"
    return ga_aide.parse(text)


@pytest.mark.control("1.3.1")
def test_aide_database_and_clean_check(facts, params):
    missing = not_installed(facts, [params["package"]])
    assert not missing, f"{params['package']} is not installed"
    settings, rules = _aide_config(facts, params["aide_conf"])
    database = settings.get("database_in", settings.get("database", ""))
    assert database == f"file:{params['database']}", \
        f"{params['aide_conf']} reads its database from {database or 'nowhere'}, expected file:{params['database']}"
    st = facts.stat(params["database"])
    assert st is not None, f"{params['database']} does not exist: the image has no AIDE database to compare with"
    assert st.type == "file" and st.size > 0, f"{params['database']} is not a regular file with content"
    assert st.owner == "root" and not st.mode & 0o077, \
        f"{params['database']} is {st.owner}:{st.group_name} {st.mode:04o}, expected root's alone"
    # What is watched, and what is excused, is what the catalogue says: no more may be excused.
    unhashed = []
    for path in params["watch_paths"]:
        rule = ga_aide.deciding_rule(rules, path)
        if rule is None or rule.kind == "!" or not rule.attributes & ga_aide.HASHES:
            unhashed.append(path)
    assert not unhashed, f"{params['aide_conf']} does not compare the content of {', '.join(unhashed)}"
    allowed = set(params["not_watched"])
    excluded = [str(rule) for rule in rules if rule.kind == "!" and rule.path not in allowed]
    assert not excluded, f"{params['aide_conf']} excludes more than not_watched names: {', '.join(excluded)}"
    instance = set(params["instance_files"])
    content_blind = [str(rule) for rule in rules if rule.kind != "!" and not rule.attributes & ga_aide.HASHES
                     and rule.path not in instance]
    assert not content_blind, \
        f"{params['aide_conf']} ignores the content of more than instance_files names: {', '.join(content_blind)}"

    result = facts.result("aide_check")
    if result.rc is None or result.rc not in (0, *ga_aide.DIFFERENCES):
        raise FactUnavailable(f"AIDE's check did not run to the end: {result.describe()}")
    entries = ga_aide.reported_entries(result.stdout)
    assert result.rc == 0, (
        f"AIDE found {len(entries)} difference(s) from its database (the image's, or what was last accepted) "
        f"(exit {result.rc}): {'; '.join(entries[:12]) or 'see its report'}")


@pytest.mark.control("1.3.2")
def test_aide_check_scheduled(facts, params):
    for unit in params["units"]:
        enabled, active = unit_state(facts, unit)
        assert enabled == "enabled", f"{unit} is {enabled}, expected enabled"
        assert active == "active", f"{unit} is {active}, expected active (waiting for its next run)"
    service = ini_section(facts.content(params["service_conf"]), "Service")
    # The configuration the check runs with is there (a run without it checks nothing).
    assert facts.exists(params["aide_conf"]), f"{params['aide_conf']}, which the daily check reads, does not exist"
    wanted = [params["binary"], "--config", params["aide_conf"], "--check"]
    command = service.get("ExecStart", "").split()
    assert command == wanted, \
        f"{params['service_conf']} runs `{' '.join(command) or 'nothing'}`, expected `{' '.join(wanted)}`"
    timer = ini_section(facts.content(params["timer_conf"]), "Timer")
    assert timer.get("OnCalendar") == params["on_calendar"], \
        f"{params['timer_conf']}: OnCalendar={timer.get('OnCalendar', '(none)')}, expected {params['on_calendar']}"


@pytest.mark.control("1.3.3")
def test_aide_watches_audit_tools(facts, params):
    _, rules = _aide_config(facts, params["aide_conf"])
    wanted = set(params["attributes"])
    problems = []
    for tool in params["audit_tools"]:
        rule = ga_aide.deciding_rule(rules, tool)
        if rule is None:
            problems.append(f"{tool} is not watched")
        elif rule.kind == "!":
            problems.append(f"{tool} is excluded ({rule})")
        elif not wanted <= rule.attributes:
            problems.append(f"{tool} ({rule}) lacks {'+'.join(sorted(wanted - rule.attributes))}")
    assert not problems, f"{params['aide_conf']}: {'; '.join(problems)}"
