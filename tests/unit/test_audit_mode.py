"""--ga-mode=audit: what a running instance may add (its firewall drop-ins) is a finding, named
with what it opens; everything else is judged as in verify mode, and verify mode fails on it.

The snapshot is the approved image's (every control passes on it) with a drop-in added the
way an application team adds one: the file in /etc/nftables.d and its rule in the running
ruleset.
"""
from __future__ import annotations

import copy
import json

import pytest

from golden_ami.report import markdown
from tests.unit.offline_suite import judge
from tests.unit.test_check_mutations import HARDENED, nft, nft_dropin

FIREWALL = ("GA-FW-DROPIN", "GA-FW-INBOUND")


def _accept_port(port: int):
    def edit(items: list) -> None:
        chain = next(i["chain"] for i in items if "chain" in i and i["chain"].get("hook") == "input")
        items.append({"rule": {"family": chain["family"], "table": chain["table"], "chain": chain["name"],
                               "handle": 900 + port, "expr": [
                                   {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                              "right": port}}, {"accept": None}]}})
    return nft(edit)


def _with_dropin(*extra_ports: int, mode: str = "0644") -> dict:
    snapshot = copy.deepcopy(json.loads(HARDENED.read_text()))
    nft_dropin("app.nft", "# the web app\ntcp dport 8080 accept\nip saddr 10.0.0.0/8 tcp dport { 9000-9002 } accept\n",
               mode)(snapshot)
    for port in (8080, *extra_ports):
        _accept_port(port)(snapshot)
    return snapshot


@pytest.fixture(scope="module")
def firewall_controls(tmp_path_factory) -> dict:
    import os

    from tests.unit.offline_suite import controls_document

    os.environ.setdefault("GOLDEN_AMI_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    document = controls_document("debian12")
    return {**document, "controls": [c for c in document["controls"] if c["id"] in FIREWALL]}


def test_audit_mode_reports_each_drop_in_and_what_it_opens_as_a_finding(tmp_path, firewall_controls):
    rows = judge(tmp_path, _with_dropin(), firewall_controls, options=("--ga-mode=audit",))
    assert rows["GA-FW-DROPIN"]["outcome"] == "finding", rows["GA-FW-DROPIN"]
    message = rows["GA-FW-DROPIN"]["message"]
    assert "/etc/nftables.d/app.nft" in message and "tcp 8080" in message and "tcp 9000-9002 from 10.0.0.0/8" in message
    # The rule the drop-in loaded is its finding, not a failure of the allow-list.
    assert rows["GA-FW-INBOUND"]["outcome"] == "pass", rows["GA-FW-INBOUND"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["mode"] == "audit" and report["summary"] == {"finding": 1, "pass": 1}
    table = markdown(report)
    assert table.index("| GA-FW-DROPIN |") < table.index("| GA-FW-INBOUND |") and "| finding |" in table


def test_verify_mode_fails_the_same_instance(tmp_path, firewall_controls):
    rows = judge(tmp_path, _with_dropin(), firewall_controls)
    assert rows["GA-FW-DROPIN"]["outcome"] == "fail" and "tcp 8080" in rows["GA-FW-DROPIN"]["message"]
    assert rows["GA-FW-INBOUND"]["outcome"] == "fail" and "8080" in rows["GA-FW-INBOUND"]["message"]


def test_audit_mode_still_fails_a_port_no_drop_in_declares(tmp_path, firewall_controls):
    rows = judge(tmp_path, _with_dropin(9090), firewall_controls, options=("--ga-mode=audit",))
    assert rows["GA-FW-INBOUND"]["outcome"] == "fail" and "9090" in rows["GA-FW-INBOUND"]["message"]
    assert "8080" not in rows["GA-FW-INBOUND"]["message"]


def test_audit_mode_still_fails_a_drop_in_others_can_write(tmp_path, firewall_controls):
    rows = judge(tmp_path, _with_dropin(mode="0666"), firewall_controls, options=("--ga-mode=audit",))
    assert rows["GA-FW-DROPIN"]["outcome"] == "fail" and "writable" in rows["GA-FW-DROPIN"]["message"]
