"""The approval gate judges a report about *this* image, or refuses."""
import json

import pytest

from golden_ami import approve, attest, config, render, verify_runner
from golden_ami.targets.base import Image
from golden_ami.targets.local.store import Store
from golden_ami.targets.local.target import LocalTarget

SOURCE = render.SourceImage(id="sha256:" + "3" * 64, name="base", location="/x", checksum="sha256:" + "3" * 64)


def _built(state_dir, tmp_path, cfg):
    """A rendered build dir, a stored candidate for it, and a passing report."""
    result = render.render(cfg, SOURCE, tmp_path / "build")
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"disk")
    stored = Store(state_dir / "store").add(disk, {"Status": "candidate", "OS": "debian12",
                                                    "Fingerprint": result.fingerprint})
    image = Image(stored.id, stored.tags, str(stored.path))
    controls = json.loads((result.directory / "controls.json").read_text())["controls"]
    rows = [{"id": c["id"], "title": c["title"], "outcome": "pass" if c["applicable"] else "not-applicable",
             "message": "" if c["applicable"] else c["reason"], "checks": []} for c in controls]
    rows += verify_runner.exception_rows(verify_runner.build_exceptions(result.directory / "controls.json"))
    report = {"image_id": image.id, "fingerprint": result.fingerprint, "controls": rows,
              "exceptions": verify_runner.build_exceptions(result.directory / "controls.json")}
    (result.directory / "verify").mkdir()
    (result.directory / "verify" / "report.json").write_text(json.dumps(report))
    (result.directory / "verify" / "facts.json").write_text('{"collected": {}}')
    # What the verify run does last: seal the files it wrote in the image's tags.
    image = verify_runner.seal(LocalTarget(cfg.settings, cfg.state_dir), image, result.directory / "verify")
    return cfg, image, result.directory, report


@pytest.fixture
def built(state_dir, tmp_path):
    return _built(state_dir, tmp_path, config.resolve("debian12", "local"))


SWITCHED_OFF = {"controls": {"4.2.12": {"enabled": False, "exception": {
    "justification": "the bastion's jump hosts forward agents", "expires": "2999-01-31"}}}}


def test_a_control_switched_off_by_exception_is_in_the_report_the_tags_and_the_statement(state_dir, tmp_path):
    cfg, image, build_dir, report = _built(state_dir, tmp_path, config.resolve("debian12", "local",
                                                                             overrides=SWITCHED_OFF))
    row = next(r for r in report["controls"] if r["id"] == "4.2.12")
    assert row["outcome"] == "disabled" and "the bastion's jump hosts" in row["message"]
    decision = approve.decide(image, report, build_dir)
    assert decision.approved, decision.summary()
    target = LocalTarget(cfg.settings, cfg.state_dir)
    after = approve.apply(target, image, decision, build_dir)
    assert after.tags["Exceptions"] == "1"
    found, statement = attest.check(target, after)
    assert found == [] and statement["predicate"]["controls"]["disabled"] == ["4.2.12"]
    assert statement["predicate"]["exceptions"] == [{"control": "4.2.12", "kind": "disabled", "expires": "2999-01-31",
                                                     "justification": "the bastion's jump hosts forward agents"}]
    # A report that drops the row hides the exception: refused.
    hidden = {**report, "controls": [r for r in report["controls"] if r["id"] != "4.2.12"]}
    assert "switched off by exception but the report does not say so" in approve.decide(image, hidden, build_dir).summary()
    # The report's list of exceptions must be the build's.
    emptied = {**report, "exceptions": []}
    assert "not the ones the build was rendered with" in approve.decide(image, emptied, build_dir).summary()
    # The count is part of what the statement vouches for.
    target.store.set_tags(image.id, {"Exceptions": None})
    assert any("its Exceptions tag" in p for p in attest.check(target, target.get_image(image.id))[0])


def test_a_disabled_row_without_an_exception_fails_its_control(built):
    _, image, build_dir, report = built
    doctored = json.loads(json.dumps(report))
    next(r for r in doctored["controls"] if r["id"] == "4.2.7")["outcome"] = "disabled"
    decision = approve.decide(image, doctored, build_dir)
    assert not decision.approved and "4.2.7" in decision.failed_controls
    assert "4.2.7 is disabled in the report, but the build has no exception for it" in decision.summary()


def test_a_passing_report_about_this_image_approves(built):
    cfg, image, build_dir, report = built
    decision = approve.decide(image, report, build_dir)
    assert decision.approved, decision.summary()
    target = LocalTarget(cfg.settings, cfg.state_dir)
    after = approve.apply(target, image, decision, build_dir)
    assert after.status == "approved" and after.tags["ReportDigest"] == image.tags["ReportDigest"]
    assert image.tags["FactsDigest"].startswith("sha256:") and "JunitDigest" not in image.tags
    assert after.tags["ApprovedAt"]


@pytest.mark.parametrize("field, value, needle", [
    ("image_id", "li-0000000000000000b", "names image"),
    ("fingerprint", "sha256:" + "0" * 64, "names fingerprint"),
])
def test_a_report_about_another_image_is_refused(built, field, value, needle):
    _, image, build_dir, report = built
    decision = approve.decide(image, {**report, field: value}, build_dir)
    assert not decision.approved and needle in decision.summary()


def test_a_failing_control_rejects_with_its_id(built):
    cfg, image, build_dir, report = built
    for row in report["controls"]:
        if row["id"] == "GA-SSH-PASSWORD":
            row["outcome"], row["message"] = "fail", "sshd passwordauthentication is 'yes'"
    decision = approve.decide(image, report, build_dir)
    assert not decision.approved and decision.failed_controls == ["GA-SSH-PASSWORD"]
    after = approve.apply(LocalTarget(cfg.settings, cfg.state_dir), image, decision, build_dir)
    assert after.status == "rejected" and after.tags["FailedControls"] == "GA-SSH-PASSWORD"


def test_a_finding_is_never_a_pass(built):
    _, image, build_dir, report = built
    row = next(r for r in report["controls"] if r["id"] == "GA-FW-DROPIN")
    row["outcome"], row["message"] = "finding", "firewall drop-ins: /etc/nftables.d/app.nft (input): tcp 8080"
    decision = approve.decide(image, report, build_dir)
    assert not decision.approved and decision.failed_controls == ["GA-FW-DROPIN"]


def test_an_audit_report_is_not_a_verification(built):
    _, image, build_dir, report = built
    decision = approve.decide(image, {**report, "mode": "audit"}, build_dir)
    assert not decision.approved and "'audit' run" in decision.summary()


def test_missing_rows_unexplained_not_applicable_and_no_report(built):
    _, image, build_dir, report = built
    short = {**report, "controls": [r for r in report["controls"] if r["id"] != "4.2.7"]}
    assert approve.decide(image, short, build_dir).failed_controls == ["4.2.7"]
    unexplained = json.loads(json.dumps(report))
    for row in unexplained["controls"]:
        if row["outcome"] == "not-applicable":
            row["message"] = ""
    assert "GA-AGENT-SSM" in approve.decide(image, unexplained, build_dir).failed_controls
    assert not approve.decide(image, None, build_dir).approved


def test_a_build_directory_edited_after_the_build_is_refused(built):
    _, image, build_dir, report = built
    (build_dir / "controls.json").write_text(json.dumps({"os": "debian12", "target": "local", "profile": "baseline",
                                                         "controls": []}))
    decision = approve.decide(image, report, build_dir)
    assert not decision.approved and "no longer hashes" in decision.summary()


@pytest.mark.parametrize("text, needle", [
    ("{not json", "controls.json of the build is unreadable"),
    ("[1, 2]", "not a list of controls"),
    ('{"controls": [{"title": "no id"}]}', "not a list of controls"),
])
def test_a_corrupt_controls_file_is_a_refusal_with_its_reason(built, text, needle):
    _, image, build_dir, report = built
    (build_dir / "controls.json").write_text(text)
    decision = approve.decide(image, report, build_dir)
    assert not decision.approved and needle in decision.summary(), decision.summary()


def _first_passing(report):
    return next(row for row in report["controls"] if row["outcome"] == "pass")


@pytest.mark.parametrize("edit, needle", [
    # A failing row, then a passing one for the same control: which would count?
    (lambda r: r["controls"].insert(0, {**_first_passing(r), "outcome": "fail"}), "more than one row for"),
    (lambda r: r["controls"].append({"id": "9.9.9", "outcome": "pass", "message": ""}),
     "controls this build does not have in force: 9.9.9"),
    (lambda r: r["controls"].append({"id": "4.2.7"}), "each with an id and an outcome"),
    (lambda r: r.update(controls={"4.2.7": "pass"}), "each with an id and an outcome"),
])
def test_a_report_whose_rows_cannot_be_one_verdict_per_control_is_refused(built, edit, needle):
    _, image, build_dir, report = built
    doctored = json.loads(json.dumps(report))
    edit(doctored)
    decision = approve.decide(image, doctored, build_dir)
    assert not decision.approved and needle in decision.summary(), decision.summary()


def test_a_report_that_is_not_an_object_is_refused(built):
    _, image, build_dir, report = built
    decision = approve.decide(image, [report], build_dir)
    assert not decision.approved and "not a JSON object" in decision.summary()


@pytest.mark.parametrize("tamper, needle", [
    (lambda d, i: ((d / "verify" / "report.json").write_text(" " + (d / "verify" / "report.json").read_text()), i)[1],
     "report.json is not the file the verify run sealed"),
    (lambda d, i: ((d / "verify" / "facts.json").write_text('{"collected": {"forged": 1}}'), i)[1],
     "facts.json is not the file the verify run sealed"),
    (lambda d, i: ((d / "verify" / "facts.json").unlink(), i)[1], "facts.json is not the file the verify run sealed"),
    (lambda d, i: Image(i.id, {k: v for k, v in i.tags.items() if k != "ReportDigest"}, i.location),
     "never sealed by a verify run"),
])
def test_a_report_or_snapshot_changed_after_its_verify_run_is_refused(built, tamper, needle):
    cfg, image, build_dir, _ = built
    sealed = image.tags["ReportDigest"]
    image = tamper(build_dir, image)
    decision = approve.decide(image, approve.load_report(build_dir), build_dir)
    assert not decision.approved and needle in decision.summary(), decision.summary()
    # Rejecting does not re-seal: the tag still holds what the verify run wrote.
    after = approve.apply(LocalTarget(cfg.settings, cfg.state_dir), image, decision, build_dir)
    assert after.status == "rejected" and after.tags["ReportDigest"] == sealed
