"""Signed approvals (golden_ami/attest.py): an honest approval verifies; every tamper is named."""
from __future__ import annotations

import datetime as dt
import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner

from golden_ami import approve, attest, config, verify_runner
from golden_ami.layout import StateDir
from golden_ami.targets.local.target import STATEMENT_FILE, LocalTarget
from tests.conftest import invoke_cmd

CONTROLS = [{"id": "4.2.7", "outcome": "pass", "message": ""},
            {"id": "4.2.16", "outcome": "waived", "message": "maxauthtries is 6",
             "waiver": {"expires": "2027-01-31", "justification": "legacy bastion needs six tries"}},
            {"id": "GA-AGENT-SSM", "outcome": "not-applicable", "message": "no metadata service"}]


@pytest.fixture
def target(state_dir):
    cfg = config.resolve("debian12", "local")
    return LocalTarget(cfg.settings, cfg.state_dir)


def _candidate(target, tmp_path, name: str, created: str = "2026-11-01T00:00:00Z"):
    """A stored candidate with a sealed report, as a verify run leaves it; returns (image, build dir)."""
    disk = tmp_path / f"{name}.qcow2"
    disk.write_bytes(b"QFI\xfb " + name.encode())
    build_dir = tmp_path / f"build-{name}"
    (build_dir / "verify").mkdir(parents=True)
    stored = target.store.add(disk, {"Status": "candidate", "OS": "debian12", "Target": "local", "BuildId": name,
                                     "Fingerprint": "sha256:" + "f" * 64, "CreatedAt": created})
    report = {"image_id": stored.id, "profile": "cis-level1-server", "controls": CONTROLS}
    (build_dir / "verify" / "report.json").write_text(json.dumps(report))
    (build_dir / "verify" / "facts.json").write_text("{}")
    image = verify_runner.seal(target, target.get_image(stored.id), build_dir / "verify")
    return image, build_dir


def _approved(target, tmp_path, name: str, created: str = "2026-11-01T00:00:00Z"):
    image, build_dir = _candidate(target, tmp_path, name, created)
    return approve.apply(target, image, approve.ApprovalDecision(approved=True), build_dir), build_dir


def _problems(target, image, **kwargs):
    image = target.get_image(image.id)
    return attest.problems(image, target.load_statement(image.id), target.approval_keys(),
                           target.subject_digest(image), **kwargs)


def test_an_honest_approval_verifies_and_says_what_it_rests_on(target, tmp_path, state_dir):
    image, _ = _approved(target, tmp_path, "honest")
    found, statement = _problems(target, image)
    assert found == []
    assert statement["subject"] == [{"name": image.id, "digest": target.subject_digest(image)}]
    predicate = statement["predicate"]
    assert predicate["fingerprint"] == image.tags["Fingerprint"] and predicate["build_id"] == "honest"
    assert predicate["evidence"] == {"ReportDigest": image.tags["ReportDigest"], "FactsDigest": image.tags["FactsDigest"]}
    assert predicate["controls"]["passed"] == ["4.2.7"] and predicate["controls"]["waived"] == ["4.2.16"]
    assert predicate["waivers"] == [{"control": "4.2.16", **CONTROLS[1]["waiver"]}]
    key_file = StateDir(state_dir).signing_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert key_file.read_text() not in (state_dir / "store" / image.id / STATEMENT_FILE).read_text()


def _forged_tags(target, tmp_path):
    """A candidate whose tags.json was edited to say approved (no approval ever ran)."""
    image, _ = _candidate(target, tmp_path, "forged", created="2999-01-01T00:00:00Z")
    target.store.set_tags(image.id, {"Status": "approved", "ApprovedAt": "2999-01-01T00:00:00Z"})
    return image


def _other_image_statement(target, tmp_path):
    honest, _ = _approved(target, tmp_path, "a")
    other, _ = _approved(target, tmp_path, "b")
    target.save_statement(other.id, target.load_statement(honest.id))
    return other


def _foreign_key(target, tmp_path):
    image, build_dir = _candidate(target, tmp_path, "foreign")
    impostor = CryptoSigner(Ed25519PrivateKey.generate())
    original = target.approval_signer
    target.approval_signer = lambda: impostor
    try:
        return approve.apply(target, image, approve.ApprovalDecision(approved=True), build_dir)
    finally:
        target.approval_signer = original


def _disk_changed(target, tmp_path):
    image, _ = _approved(target, tmp_path, "disk")
    with open(image.location, "ab") as disk:
        disk.write(b"backdoor")
    return image


def _tag_changed(target, tmp_path):
    image, _ = _approved(target, tmp_path, "retag")
    target.store.set_tags(image.id, {"ReportDigest": "sha256:" + "0" * 64})
    return image


def _no_statement_file(target, tmp_path):
    image, _ = _approved(target, tmp_path, "gone")
    target.save_statement(image.id, None)
    return image


def _garbled_statement(target, tmp_path):
    image, _ = _approved(target, tmp_path, "garbled")
    (target.store.root / image.id / STATEMENT_FILE).write_text("{not json")
    return image


@pytest.mark.parametrize("tamper, named", [
    (_forged_tags, "has no signed approval statement"),
    (_other_image_statement, "the statement is about li-"),
    (_foreign_key, "signature does not verify against the pinned key"),
    (_disk_changed, "content is not what was approved"),
    (_tag_changed, "its ReportDigest tag"),
    (_no_statement_file, "has no signed approval statement"),
    (_garbled_statement, "not a DSSE envelope"),
])
def test_each_tamper_is_refused_by_name_and_latest_passes_it_over(target, tmp_path, tamper, named):
    honest, _ = _approved(target, tmp_path, "older-honest", created="2026-10-01T00:00:00Z")
    tampered = tamper(target, tmp_path)
    found, _ = _problems(target, tampered)
    assert any(named in problem for problem in found), found
    trusted, refused = attest.approved_images(target, "debian12")
    assert tampered.id in refused and tampered.id not in {i.id for i in trusted}
    # `invoke latest` prints the newest image that counts, and says why the other does not.
    proc = invoke_cmd("latest", "--os=debian12", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["id"] != tampered.id, proc.stderr
    assert json.loads(proc.stdout)["id"] in {i.id for i in trusted} and honest.id in {i.id for i in trusted}
    assert f"{tampered.id} is tagged approved but does not count" in proc.stderr and named in proc.stderr
    attested = invoke_cmd("attest", f"--image-id={tampered.id}", "--json")
    assert attested.returncode == 1 and not json.loads(attested.stdout)["verified"]


def test_an_expired_waiver_inside_the_statement_is_named(target, tmp_path):
    image, _ = _approved(target, tmp_path, "waived")
    found, _ = _problems(target, image, today=dt.date(2027, 2, 1))
    assert found == ["the waiver of 4.2.16 in the statement expired on 2027-01-31"]


def test_a_rejection_removes_the_earlier_statement(target, tmp_path):
    image, build_dir = _approved(target, tmp_path, "later-rejected")
    approve.apply(target, image, approve.ApprovalDecision(approved=False, failed_controls=["4.2.7"]), build_dir)
    assert target.load_statement(image.id) is None


def test_signing_key_and_attest_from_the_command_line(target, tmp_path):
    image, _ = _approved(target, tmp_path, "cli")
    key = invoke_cmd("signing-key", "--json")
    assert key.returncode == 0 and "PRIVATE" not in key.stdout
    pem = tmp_path / "pinned.pem"
    pem.write_text(json.loads(key.stdout)["public_key_pem"])
    proc = invoke_cmd("attest", f"--image-id={image.id}", f"--public-key={pem}", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["verified"], proc.stdout + proc.stderr
    other = tmp_path / "other.pem"
    other.write_text(attest.public_key_pem(CryptoSigner(Ed25519PrivateKey.generate()).public_key))
    proc = invoke_cmd("attest", f"--image-id={image.id}", f"--public-key={other}")
    assert proc.returncode == 1 and "signature does not verify against the pinned key" in proc.stdout
