"""Every check, proven both ways against snapshots of real VMs (tests/data/facts/).

The verify suite runs offline (`--ga-facts`) against:
  debian12-hardened.json  an approved golden image: every applicable control must pass;
  debian12-base.json      the unhardened base image it was built from: every applicable control
                          must fail, except those the catalogue records as compliant by the OS's
                          default (`default_compliant`), which must pass - a control that passes
                          without that record, or carries it and fails, fails this test.
The OS-specific branches no VM here can exercise (Amazon Linux, Ubuntu) run against
hand-written *-synthetic.json snapshots, each value's source named beside it (`_source`).
"""
from __future__ import annotations

import json

import pytest

from golden_ami import catalogue
from tests.unit.offline_suite import FACTS, controls_document, judge


def _suite_controls(document: dict) -> list[dict]:
    return [c for c in document["controls"] if c["applicable"] and c.get("check", "suite") == "suite"]


@pytest.fixture(scope="module")
def debian12(tmp_path_factory) -> dict:
    # The state dir only matters for config resolution; nothing is written there.
    import os

    os.environ.setdefault("GOLDEN_AMI_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    return controls_document("debian12")


def test_every_applicable_control_passes_on_the_hardened_image(tmp_path, debian12):
    rows = judge(tmp_path, FACTS / "debian12-hardened.json", debian12)
    failing = {c["id"]: rows[c["id"]]["message"] for c in _suite_controls(debian12) if rows[c["id"]]["outcome"] != "pass"}
    assert not failing, f"{len(failing)} controls do not pass on the hardened snapshot: {json.dumps(failing, indent=1)}"
    # A passing check can leave what it saw in its row: the setuid/setgid inventory a reviewer reads.
    inventory = rows["GA-SETID-REVIEWED"]["message"]
    assert inventory.startswith("16 setuid/setgid programs, each reviewed: ") and "/usr/bin/sudo 4755" in inventory, inventory


def test_every_applicable_control_fails_on_the_base_image_unless_compliant_by_default(tmp_path, debian12):
    rows = judge(tmp_path, FACTS / "debian12-base.json", debian12)
    recorded = {spec.id: spec.default_compliant.get("debian12") for spec in catalogue.load_catalogue()}
    wrong = {}
    for control in _suite_controls(debian12):
        row = rows[control["id"]]
        reason = recorded.get(control["id"])
        if reason and row["outcome"] != "pass":
            wrong[control["id"]] = f"recorded default-compliant ({reason}) but {row['outcome']}: {row['message']}"
        elif not reason and row["outcome"] != "fail":
            wrong[control["id"]] = f"{row['outcome']} on the unhardened image, and not recorded as default-compliant"
    assert not wrong, json.dumps(wrong, indent=1)


def test_default_compliant_reasons_are_one_line_and_for_applicable_controls(debian12):
    applicable = {c["id"] for c in _suite_controls(debian12)}
    for spec in catalogue.load_catalogue():
        for os_name, reason in spec.default_compliant.items():
            assert reason.strip() and "\n" not in reason.strip(), f"{spec.id}: give a one-line reason for {os_name}"
            if os_name == "debian12":
                assert spec.id in applicable, f"{spec.id} is recorded default-compliant on debian12 but not applicable"
