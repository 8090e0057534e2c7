"""Amazon Linux 2023 5.1.1.6: the remote log host, from the site's config to the check.

The drop-in the hardening installs is rendered for al2023 with a configured host and put into the
recorded snapshot of the hardened Debian 12 image (a real rsyslog.conf and rsyslog.d; the check
reads only those, and no Amazon Linux snapshot has them). The real verify suite then judges
5.1.1.6 offline: it passes on exactly what the build writes, and fails on each way of forwarding
less than every message to that host over TCP - and when no host is configured at all. That
rsyslog itself loads the drop-in and delivers messages is shown on a real VM
(tests/e2e/test_day_two.py).
"""
from __future__ import annotations

import copy
import json
import sys

import pytest

from golden_ami import catalogue, config, paths, render
from golden_ami.errors import UserError
from tests.conftest import SITE_VALUES
from tests.unit.offline_suite import FACTS, controls_document, judge_many
from tests.unit.test_render import AWS_SOURCE

HARDENED = FACTS / "debian12-hardened.json"
HOST = SITE_VALUES["controls"]["5.1.1.6"]["params"]["log_host"]
DROPIN = "/etc/rsyslog.d/70-golden-ami-remote-log-host.conf"


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    """Config resolution needs a state dir: one for the module, named once."""
    import os

    os.environ.setdefault("GOLDEN_AMI_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    return config.resolve("al2023", "aws", overrides=SITE_VALUES)


@pytest.fixture(scope="module")
def rendered_forwarding(resolved, tmp_path_factory) -> str:
    """The forwarding drop-in of an al2023 build whose config names HOST."""
    result = render.render(resolved, AWS_SOURCE, tmp_path_factory.mktemp("render") / "build")
    script = (result.directory / "scripts" / "55-cis-logging.sh").read_text()
    assert f"readonly RSYSLOG_FORWARD={DROPIN}\n" in script and "install_file cis-logging/rsyslog-forward.conf" in script
    return (result.directory / "files" / "cis-logging" / "rsyslog-forward.conf").read_text()


def _with_dropin(hardened: dict, content: str | None) -> dict:
    """A copy of the hardened Debian 12 snapshot with DROPIN holding content (None: without it)."""
    snapshot = copy.deepcopy(hardened)
    if content is not None:
        facts = snapshot["collected"]
        like = facts["files"]["/etc/rsyslog.d/60-golden-ami-logging.conf"]
        facts["files"][DROPIN] = {"stat": {**like["stat"], "size": len(content.encode())}, "content": content}
        facts["globs"]["/etc/rsyslog.d/*"] = sorted([*facts["globs"]["/etc/rsyslog.d/*"], DROPIN])
    return snapshot


LEGACY_TCP = f"*.* @@{HOST}:514\n"
MULTI_LINE = (f'*.*  ACTION(Type="omfwd"\n    Target="{HOST.upper()}"\n    Protocol="TCP"  # plain TCP\n'
              f'    queue.type="LinkedList")\n')
# (name, drop-in content from the rendered one, params, outcome, words the message must hold)
CASES = [
    ("as rendered", lambda r: r, {}, "pass", []),
    ("the legacy TCP form", lambda r: LEGACY_TCP, {}, "pass", []),
    ("a multi-line action, other case, port left to its default", lambda r: MULTI_LINE, {}, "pass", []),
    ("no drop-in", lambda r: None, {}, "fail", ["forwards nowhere"]),
    ("another host", lambda r: r.replace(HOST, "logs.example.org"), {}, "fail", ["logs.example.org", HOST]),
    ("UDP", lambda r: r.replace('protocol="tcp"', 'protocol="udp"'), {}, "fail", [f"udp://{HOST}:514"]),
    ("legacy UDP", lambda r: f"*.* @{HOST}:514\n", {}, "fail", [f"udp://{HOST}:514"]),
    ("another port", lambda r: r.replace('port="514"', 'port="10514"'), {}, "fail", [":10514"]),
    ("auth messages only", lambda r: r.replace("*.* action(", "auth,authpriv.* action("), {}, "fail",
     ["auth,authpriv.* ->"]),
    ("behind a condition", lambda r: r.replace("*.* action(", 'if $syslogseverity <= 3 then action('), {}, "fail",
     [f"(behind a condition) -> tcp://{HOST}:514"]),
    ("commented out", lambda r: "".join(f"# {line}\n" for line in r.splitlines()), {}, "fail", ["forwards nowhere"]),
    ("an action of another type", lambda r: r.replace('type="omfwd"', 'type="omfile"'), {}, "fail",
     ["forwards nowhere"]),
    ("no log host configured", lambda r: r, {"log_host": ""}, "fail", ["no log host is configured", HOST]),
]


@pytest.fixture(scope="module")
def verdicts(resolved, tmp_path_factory, rendered_forwarding) -> dict[str, dict]:
    """Each case judged by the real suite: debian12's controls.json holding only al2023's 5.1.1.6
    (HOST configured, then the case's params), the snapshot with the case's drop-in."""
    hardened = json.loads(HARDENED.read_text())
    entry = catalogue.controls_for(resolved).by_id()["5.1.1.6"].as_dict()
    document = controls_document("debian12")
    runs = {}
    for name, content, params, _, _ in CASES:
        only = {**document, "controls": [{**entry, "params": {**entry["params"], **params}}]}
        runs[name] = (_with_dropin(hardened, content(rendered_forwarding)), only)
    judged = judge_many(tmp_path_factory.mktemp("judged"), runs)
    return {name: rows["5.1.1.6"] for name, rows in judged.items()}


@pytest.mark.parametrize("name, outcome, words", [(c[0], c[3], c[4]) for c in CASES], ids=[c[0] for c in CASES])
def test_the_check_passes_on_what_the_build_writes_and_fails_on_less(verdicts, name, outcome, words):
    row = verdicts[name]
    assert row["outcome"] == outcome, f"{name}: {row['outcome']}: {row['message']}"
    for word in words:
        assert word in row["message"], f"{name}: the message does not name {word!r}: {row['message']}"


def test_the_rendered_drop_in_is_read_by_the_checks_parser_as_one_tcp_forward_of_everything(rendered_forwarding):
    sys.path.insert(0, str(paths.VERIFY_DIR))
    try:
        from ga_system import RsyslogForward, rsyslog_forwards
    finally:
        sys.path.remove(str(paths.VERIFY_DIR))
    assert rsyslog_forwards(rendered_forwarding) == [RsyslogForward("*.*", HOST, "514", "tcp")]
    assert 'queue.maxDiskSpace="256m"' in rendered_forwarding and 'action.resumeRetryCount="-1"' in rendered_forwarding
    # An action behind a condition forwards only what the condition lets through: no selector.
    assert rsyslog_forwards('if $programname == "sshd" then action(type="omfwd" target="h" protocol="tcp")\n') == \
        [RsyslogForward("", "h", "514", "tcp")]
    # A comment inside an action, with a parenthesis in it, does not end the action.
    assert rsyslog_forwards('*.* action(type="omfwd" # (the site\'s)\n target="h" protocol="tcp")\n') == \
        [RsyslogForward("*.*", "h", "514", "tcp")]


@pytest.mark.parametrize("value", ["logs;reboot", "$(id)", "-oops", "logs example", "a..b", "host_name.example"])
def test_a_log_host_that_is_not_a_host_name_or_address_is_refused(state_dir, value):
    overrides = {"controls": {"5.1.1.6": {"params": {"log_host": value}}}}
    with pytest.raises(UserError, match="controls.5.1.1.6.params.log_host"):
        catalogue.controls_for(config.resolve("al2023", "aws", overrides=overrides))


@pytest.mark.parametrize("value", ["logs.example.internal", "10.0.2.2", "fd00::5", "LOGS-1.corp"])
def test_host_names_and_addresses_are_taken(state_dir, value):
    overrides = {"controls": {"5.1.1.6": {"params": {"log_host": value}}}}
    chosen = catalogue.controls_for(config.resolve("al2023", "aws", overrides=overrides))
    assert chosen.params("5.1.1.6")["log_host"] == value and chosen.unset_site_params == ()


def test_switched_off_with_an_exception_the_build_needs_no_host_and_says_so(state_dir):
    overrides = {"controls": {"5.1.1.6": {"enabled": False, "exception": {
        "justification": "logs leave through the CloudWatch agent until the central host exists",
        "expires": "2099-01-01"}}}}
    chosen = catalogue.controls_for(config.resolve("al2023", "aws", overrides=overrides))
    assert chosen.unset_site_params == () and "5.1.1.6" not in chosen.by_id()
    assert [e["control"] for e in chosen.exceptions] == ["5.1.1.6"]
    without = catalogue.controls_for(config.resolve("al2023", "aws", overrides={"profile": "baseline"}))
    assert without.unset_site_params == ()  # not in the baseline profile: nothing to ask for


def test_a_site_param_must_start_unset_in_the_catalogue():
    spec = next(s for s in catalogue.load_catalogue() if s.id == "5.1.1.6").model_dump()
    broken = copy.deepcopy(spec)
    broken["params"]["log_host"] = "logs.example.internal"  # a default host would be sent logs everywhere
    with pytest.raises(ValueError, match="site param log_host"):
        catalogue.ControlSpec(**broken)
