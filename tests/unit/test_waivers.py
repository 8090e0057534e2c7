"""Waivers: a valid one turns a failure into "waived"; an expired one blocks; all are listed."""
import datetime as dt
import json

import pytest

from golden_ami import approve, config, render, report, verify_runner, waivers
from golden_ami.errors import UserError
from golden_ami.targets.base import Image

TODAY = dt.date(2026, 11, 29)


def _rows():
    return [{"id": "4.2.16", "title": "MaxAuthTries", "outcome": "fail", "message": "maxauthtries is 6", "checks": []},
            {"id": "4.2.7", "title": "root login", "outcome": "pass", "message": "", "checks": []}]


def _write(tmp_path, entries):
    path = tmp_path / "waivers.yaml"
    path.write_text(json.dumps(entries))
    return path


def test_a_valid_waiver_waives_and_an_expired_one_does_not(tmp_path):
    valid = waivers.load(_write(tmp_path, [{"control": "4.2.16", "os": ["debian12"], "justification":
                                             "legacy bastion needs six tries", "expires": "2027-01-31"}]))
    rows = _rows()
    listing = waivers.apply(rows, valid, "debian12", "local", TODAY)
    assert rows[0]["outcome"] == "waived" and rows[0]["waiver"]["expires"] == "2027-01-31"
    assert listing[0]["state"] == "used"

    rows = _rows()
    expired = waivers.load(_write(tmp_path, [{"control": "4.2.16", "justification": "legacy bastion needs six tries",
                                              "expires": "2026-11-01"}]))
    listing = waivers.apply(rows, expired, "debian12", "local", TODAY)
    assert rows[0]["outcome"] == "fail" and rows[0]["message"].startswith("waiver expired on 2026-11-01")
    assert listing[0]["state"] == "expired"


def test_scope_and_listing(tmp_path):
    other = waivers.load(_write(tmp_path, [
        {"control": "4.2.16", "os": ["al2023"], "justification": "only for amazon linux", "expires": "2027-01-31"},
        {"control": "4.2.7", "justification": "never needed, root login passes", "expires": "2027-01-31"}]))
    rows = _rows()
    listing = waivers.apply(rows, other, "debian12", "local", TODAY)
    assert rows[0]["outcome"] == "fail"
    assert [w["state"] for w in listing] == ["not for this OS/target", "unused (the control passed)"]


@pytest.mark.parametrize("entry, needle", [
    ({"control": "4.2.16", "justification": "x", "expires": "2027-01-01"}, "justification"),
    ({"control": "4.2.16", "justification": "long enough text", "expires": "someday"}, "expires"),
    ({"control": "4.2.16", "justification": "long enough text", "expires": "2027-01-01", "by": "me"}, "by"),
])
def test_bad_waivers_are_refused(tmp_path, entry, needle):
    with pytest.raises(UserError, match=needle):
        waivers.load(_write(tmp_path, [entry]))


def test_the_gate_believes_a_waived_row_only_while_the_waivers_file_holds_a_waiver_for_it(state_dir, tmp_path):
    cfg = config.resolve("debian12", "local")
    source = render.SourceImage(id="sha256:" + "5" * 64, name="b", location="/x", checksum="sha256:" + "5" * 64)
    result = render.render(cfg, source, tmp_path / "build")
    image = Image("li-0123456789abcdef0", {"Fingerprint": result.fingerprint})
    controls = json.loads((result.directory / "controls.json").read_text())["controls"]
    rows = [{"id": c["id"], "outcome": "pass" if c["applicable"] else "not-applicable",
             "message": "" if c["applicable"] else c["reason"]} for c in controls]
    waived = next(row for row in rows if row["outcome"] == "pass")
    # The row's own account of its waiver (as an edited report would give it) counts for nothing.
    waived.update({"outcome": "waived", "waiver": {"expires": "2999-12-31", "justification": "in no waivers file"}})
    doc = {"image_id": image.id, "fingerprint": result.fingerprint, "controls": rows}
    (result.directory / "verify").mkdir()
    (result.directory / "verify" / "report.json").write_text(json.dumps(doc))
    image = Image(image.id, {**image.tags, "ReportDigest": verify_runner.report_digest(
        result.directory / "verify" / "report.json")})

    def gate(entries):
        return approve.decide(image, doc, result.directory, waivers.load(_write(tmp_path, entries)) if entries else ())

    entry = {"control": waived["id"], "justification": "legacy bastion needs six tries", "expires": "2999-01-01"}
    assert gate([entry]).approved
    assert gate([{**entry, "os": ["debian12"], "target": ["local"]}]).approved
    for entries in ([], [{**entry, "expires": "2000-01-01"}], [{**entry, "os": ["al2023"]}],
                    [{**entry, "target": ["aws"]}], [{**entry, "control": "4.2.7"}]):
        decision = gate(entries)
        assert not decision.approved and decision.failed_controls == [waived["id"]], entries
        assert "no waiver in force in the waivers file covers it" in decision.summary()


def test_markdown_report_lists_rows_and_waivers():
    rows = _rows()
    rows[0].update({"outcome": "waived", "waiver": {"expires": "2027-01-31", "justification": "legacy | bastion"}})
    text = report.markdown({"image_id": "li-1", "os": "debian12", "target": "local", "profile": "baseline",
                            "summary": report.summarise(rows), "controls": rows,
                            "waivers": [{"control": "4.2.16", "os": None, "target": None, "expires": "2027-01-31",
                                         "state": "used", "justification": "legacy | bastion"}]})
    assert "| 4.2.16 |" in text and "waived until 2027-01-31" in text and "legacy \\| bastion" in text
    assert text.index("| 4.2.16 |") < text.index("| 4.2.7 |")  # problems first
    assert "## Waivers" in text
