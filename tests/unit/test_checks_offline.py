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
from typing import Callable, Optional

import pytest

from golden_ami import catalogue
from tests.unit.offline_suite import FACTS, controls_document, judge, judge_many


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


# --- disk_layout: cis: separate /var, /var/tmp, /var/log, /var/log/audit and /home -----------
def _separate_filesystem_ids() -> set[str]:
    return {spec.id for spec in catalogue.load_catalogue() if spec.applies.disk_layouts}


@pytest.fixture(scope="module")
def debian12_cis(debian12) -> dict:
    return controls_document("debian12", disk_layout="cis")


def test_separate_filesystem_controls_are_not_applicable_with_one_root_filesystem(debian12, debian12_cis):
    ids = _separate_filesystem_ids()
    assert len(ids) == 18
    single = {c["id"]: c for c in debian12["controls"] if c["id"] in ids}
    assert set(single) == ids and not any(c["applicable"] for c in single.values())
    assert all("disk_layout: single" in c["reason"] for c in single.values()), single
    assert {c["id"] for c in _suite_controls(debian12_cis)} >= ids


def test_separate_filesystem_controls_fail_without_the_cis_layout(tmp_path, debian12_cis):
    """The unhardened base image, and a hardened image with one root filesystem, fail every one."""
    ids = _separate_filesystem_ids()
    for name in ("debian12-base.json", "debian12-hardened.json"):
        rows = judge(tmp_path, FACTS / name, debian12_cis, name=name)
        not_failing = {i: rows[i]["outcome"] for i in ids if rows[i]["outcome"] != "fail"}
        assert not not_failing, f"{name}: {not_failing}"
        assert all("is not a filesystem of its own" in rows[i]["message"] for i in ids), name


HARDENED_CIS = FACTS / "debian12-hardened-cis.json"


def test_every_applicable_control_passes_on_the_hardened_cis_image(tmp_path, debian12_cis):
    """The image built from the disk_layout: cis base image: the separate filesystems with their
    options, and everything else as on the single-filesystem image."""
    rows = judge(tmp_path, HARDENED_CIS, debian12_cis)
    failing = {c["id"]: rows[c["id"]]["message"] for c in _suite_controls(debian12_cis)
               if rows[c["id"]]["outcome"] != "pass"}
    assert not failing, f"{len(failing)} controls do not pass on the hardened cis snapshot: {json.dumps(failing, indent=1)}"
    assert {rows[i]["outcome"] for i in _separate_filesystem_ids()} == {"pass"}


def _remount(target: str, edit: Callable[[list[str]], Optional[list[str]]]) -> Callable[[dict], dict]:
    """The snapshot with target's line of /proc/self/mounts edited (edit(options) -> options, or
    None to drop the line: the filesystem is not mounted)."""
    def apply(snapshot: dict) -> dict:
        changed = json.loads(json.dumps(snapshot))
        mounts = changed["collected"]["files"]["/proc/self/mounts"]
        lines = []
        for line in mounts["content"].splitlines(keepends=True):
            fields = line.split(" ")
            if len(fields) > 3 and fields[1] == target:
                options = edit(fields[3].split(","))
                if options is None:
                    continue
                fields[3] = ",".join(options)
                line = " ".join(fields)
            lines.append(line)
        assert "".join(lines) != mounts["content"], f"{target} is not mounted in the snapshot"
        mounts["content"] = "".join(lines)
        return changed
    return apply


# (control, the change to the hardened cis snapshot, a word the failure message must contain)
CIS_LAYOUT_CASES = [
    ("1.1.4.2", _remount("/var/tmp", lambda o: [x for x in o if x != "noexec"]), "noexec"),
    ("1.1.3.3", _remount("/var", lambda o: [x for x in o if x != "nosuid"]), "nosuid"),
    ("1.1.6.3", _remount("/var/log/audit", lambda o: [x for x in o if x != "nodev"]), "nodev"),
    ("1.1.5.3", _remount("/var/log", lambda o: [x for x in o if x != "noexec"] + ["exec"]), "noexec"),
    ("1.1.7.1", _remount("/home", lambda o: None), "/home is not a filesystem of its own"),
    ("1.1.7.2", _remount("/home", lambda o: None), "/home is not a filesystem of its own"),
]


def test_a_separate_filesystem_without_its_option_or_not_mounted_fails(tmp_path, debian12_cis):
    snapshot = json.loads(HARDENED_CIS.read_text())
    runs = {f"case-{index}": (mutate(snapshot), debian12_cis) for index, (_, mutate, _) in enumerate(CIS_LAYOUT_CASES)}
    runs["untouched"] = (snapshot, debian12_cis)
    verdicts = judge_many(tmp_path, runs)
    for index, (control_id, _, word) in enumerate(CIS_LAYOUT_CASES):
        row = verdicts[f"case-{index}"][control_id]
        assert row["outcome"] == "fail" and word in row["message"], (control_id, row)
    untouched = verdicts["untouched"]
    assert {untouched[i]["outcome"] for i in _separate_filesystem_ids()} == {"pass"}


def test_a_param_missing_from_an_older_controls_json_fails_its_check_saying_so(tmp_path, debian12):
    # A build directory rendered before a control gained a param (here the usb-storage control's
    # module name), verified by a newer suite: the check fails with the cause, not a KeyError.
    document = json.loads(json.dumps(debian12))
    control = next(c for c in document["controls"] if c["id"] == "1.1.9")
    del control["params"]["module"]
    rows = judge(tmp_path, FACTS / "debian12-hardened.json", document)
    assert rows["1.1.9"]["outcome"] == "fail"
    assert "1.1.9 has no param 'module' in this build's controls.json" in rows["1.1.9"]["message"]
    assert "older catalogue" in rows["1.1.9"]["message"]
