"""The local target end to end, on real VMs under QEMU: the only proof the scripts work.

One module-wide state dir: the base image is built once (about 2 minutes under TCG), then
  1. a good build must end approved and be what `invoke latest` prints;
  2. a build whose rendered sshd drop-in leaves password authentication on must be rejected
     naming GA-SSH-PASSWORD, and approve nothing;
  3. a report edited to name another image must be refused by the gate.
Afterwards no QEMU process of these builds may be left running.
Set GOLDEN_AMI_E2E_STATE to a directory to keep (and reuse) its base image between runs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import invoke_cmd

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def e2e_state(tmp_path_factory):
    keep = os.environ.get("GOLDEN_AMI_E2E_STATE")
    state = Path(keep) if keep else tmp_path_factory.mktemp("e2e-state")
    env = {"GOLDEN_AMI_STATE_DIR": str(state), "GOLDEN_AMI_CONFIG": ""}
    proc = invoke_cmd("base-image", "--os=debian12", "--json", env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield state, env
    if not keep:
        shutil.rmtree(state / "store", ignore_errors=True)


def _qemu_processes_under(path: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "qemu-system" in line and str(path) in line]


@pytest.fixture(scope="module")
def approved_build(e2e_state):
    state, env = e2e_state
    proc = invoke_cmd("build", "--os=debian12", "--target=local", "--json", env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    return json.loads(proc.stdout)


def test_a_good_build_is_approved_and_latest(e2e_state, approved_build):
    state, env = e2e_state
    assert approved_build["status"] == "approved", approved_build
    report = json.loads((Path(approved_build["build_dir"]) / "verify" / "report.json").read_text())
    assert report["image_id"] == approved_build["image_id"]
    outcomes = {row["id"]: row["outcome"] for row in report["controls"]}
    assert outcomes["GA-SSH-PASSWORD"] == "pass" and outcomes["GA-FW-INBOUND"] == "pass"
    assert outcomes["GA-AGENT-SSM"] == "not-applicable"
    assert set(outcomes.values()) <= {"pass", "not-applicable"}

    latest = invoke_cmd("latest", "--os=debian12", "--target=local", "--json", env=env)
    assert latest.returncode == 0, latest.stderr
    assert json.loads(latest.stdout)["id"] == approved_build["image_id"]
    listing = json.loads(invoke_cmd("list", "--json", env=env).stdout)
    assert {row["id"]: row["Status"] for row in listing}[approved_build["image_id"]] == "approved"
    assert not _qemu_processes_under(state)


def test_password_authentication_left_on_is_rejected(e2e_state, approved_build, tmp_path):
    state, env = e2e_state
    rendered = tmp_path / "broken-render"
    proc = invoke_cmd("render", "--os=debian12", "--target=local", f"--out={rendered}", env=env)
    assert proc.returncode == 0, proc.stderr
    dropin = rendered / "files" / "sshd-hardening.conf"
    text = dropin.read_text()
    assert "PasswordAuthentication no" in text
    dropin.write_text(text.replace("PasswordAuthentication no", "PasswordAuthentication yes"))

    proc = invoke_cmd("build", "--os=debian12", "--target=local", f"--from-render={rendered}", "--json",
                      env=env, timeout=3600)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "rejected"
    assert result["failed_controls"] == ["GA-SSH-PASSWORD"]
    report = json.loads((Path(result["build_dir"]) / "verify" / "report.json").read_text())
    row = {r["id"]: r for r in report["controls"]}["GA-SSH-PASSWORD"]
    assert row["outcome"] == "fail" and "passwordauthentication" in row["message"]

    # Still the good image for consumers; the rejected one carries its failing control.
    latest = json.loads(invoke_cmd("latest", "--os=debian12", "--json", env=env).stdout)
    assert latest["id"] == approved_build["image_id"]
    rejected = json.loads(invoke_cmd("list", "--status=rejected", "--json", env=env).stdout)
    assert {r["id"]: r["FailedControls"] for r in rejected}[result["image_id"]] == "GA-SSH-PASSWORD"
    assert not _qemu_processes_under(state)


def test_a_report_naming_another_image_is_refused(e2e_state, approved_build):
    state, env = e2e_state
    report_path = Path(approved_build["build_dir"]) / "verify" / "report.json"
    original = report_path.read_text()
    try:
        doctored = json.loads(original)
        doctored["image_id"] = "li-0000000000000000f"
        report_path.write_text(json.dumps(doctored))
        proc = invoke_cmd("approve", approved_build["image_id"], "--json", env=env)
        assert proc.returncode == 1
        decision = json.loads(proc.stdout)
        assert decision["status"] == "rejected"
        assert any("names image 'li-0000000000000000f'" in reason for reason in decision["reasons"])
    finally:
        report_path.write_text(original)
    # The untouched report approves again: the gate judges what it is shown, nothing else.
    proc = invoke_cmd("approve", approved_build["image_id"], "--json", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
