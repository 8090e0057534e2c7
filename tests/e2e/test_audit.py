"""invoke audit against a lived-in instance of the approved golden image (a real VM).

`app_instance` (tests/e2e/conftest.py) is an instance of the approved local image as an
application team runs it: its own key, an nftables drop-in that opens port 8080. Its
attributes: ssh_host, ssh_port, login_user, identity, known_hosts, image_id, run(cmd).
The audit must find no failing control there, name the image, report the drop-in as a
finding (not a failure), and leave the host as it was.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import invoke_cmd

pytestmark = pytest.mark.e2e

# What an audit must not change on the host: apt's lists and caches (the pending-updates
# question runs with throw-away ones), listed with their times.
APT_STATE = "sudo find /var/lib/apt/lists /var/cache/apt -printf '%p %T@\\n' | sort"


def _text(result) -> str:
    return getattr(result, "stdout", result)


def test_an_audit_of_a_lived_in_instance_finds_no_failure_and_reports_the_drop_in(app_instance, local_state, tmp_path):
    state, env = local_state
    before = _text(app_instance.run(APT_STATE))
    out = tmp_path / "audit"
    proc = invoke_cmd("audit", f"--host={app_instance.ssh_host}", f"--port={app_instance.ssh_port}",
                      f"--user={app_instance.login_user}", f"--identity={app_instance.identity}",
                      f"--known-hosts={app_instance.known_hosts}", f"--image-id={app_instance.image_id}",
                      f"--out={out}", "--json", env=env, timeout=1800)
    summary = json.loads(proc.stdout)
    assert summary["failed_controls"] == [] and proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert summary["image_id"] == app_instance.image_id
    assert summary["controls"].startswith("from build "), summary["controls"]  # the image's own build
    assert summary["host_key"].startswith(f"pinned from {app_instance.known_hosts}")
    drop_ins = [f for f in summary["findings"] if ".nft" in f["message"] and "8080" in f["message"]]
    assert drop_ins, summary["findings"]
    report = json.loads((out / "report.json").read_text())
    assert report["image_id"] == app_instance.image_id
    assert (out / "report.md").read_text().startswith(f"# Audit of {app_instance.ssh_host}:{app_instance.ssh_port}")
    assert _text(app_instance.run(APT_STATE)) == before
