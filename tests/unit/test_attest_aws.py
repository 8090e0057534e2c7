"""Signed approvals on the aws target, against moto in-process: a KMS key (ECC_NIST_P256) signs,
the statement is an SSM parameter per image, the image's tags name it.

moto's KMS ignores Sign's MessageType=DIGEST; tests/conftest.py kms_signs_digests makes it sign a
digest as KMS does (the way the end-to-end double adds EnableImageDeprecation).
"""
from __future__ import annotations

import base64
import datetime as dt
import json

import boto3
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from golden_ami import approve, attest, config, lifecycle, verify_runner
from golden_ami.targets.aws.target import SIGNATURE_TAG, STATEMENT_DIGEST_TAG, AwsTarget
from golden_ami.errors import UserError
from tests.conftest import kms_signs_digests
from tests.unit.conftest import REGION

DEBIAN_AMI = "ami-0deb1000000000001"  # seeded by the aws_env fixture

CONTROLS = [{"id": "4.2.7", "outcome": "pass", "message": ""},
            {"id": "4.2.16", "outcome": "waived", "message": "maxauthtries is 6",
             "waiver": {"expires": "2027-01-31", "justification": "legacy bastion needs six tries"}}]


@pytest.fixture
def kms_key(aws_env, monkeypatch):
    kms_signs_digests(monkeypatch)
    return boto3.client("kms", region_name=REGION).create_key(
        KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["KeyId"]


def _target(tmp_path, **aws) -> AwsTarget:
    path = tmp_path / "golden-ami.yaml"
    path.write_text(json.dumps({"aws": {"ssh_cidrs": ["203.0.113.7/32"], **aws}}))
    cfg = config.resolve("debian12", "aws", str(path))
    return AwsTarget(cfg.settings, cfg.state_dir)


@pytest.fixture
def target(kms_key, tmp_path):
    return _target(tmp_path, signing_kms_key_id=kms_key)


def _candidate(target, tmp_path, name: str, created: str = "2026-11-01T00:00:00Z"):
    """A candidate AMI with a sealed report, as the verify step leaves it; returns (image, build dir)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    instance = ec2.run_instances(ImageId=DEBIAN_AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=instance, Name=f"golden-debian12-{name}")["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    # Packer's build tags first, then what register_candidate adds (the IAM policy's conditions tell them apart).
    target.set_tags(image_id, {"ManagedBy": "golden-ami", "Status": "candidate", "OS": "debian12",
                               "BuildId": name, "Fingerprint": "sha256:" + "f" * 64})
    target.set_tags(image_id, {"Target": "aws", "CreatedAt": created})
    build_dir = tmp_path / f"build-{name}"
    (build_dir / "verify").mkdir(parents=True)
    report = {"image_id": image_id, "profile": "cis-level1-server", "controls": CONTROLS}
    (build_dir / "verify" / "report.json").write_text(json.dumps(report))
    return verify_runner.seal(target, target.get_image(image_id), build_dir / "verify"), build_dir


def _approved(target, tmp_path, name: str, created: str = "2026-11-01T00:00:00Z"):
    image, build_dir = _candidate(target, tmp_path, name, created)
    return approve.apply(target, image, approve.ApprovalDecision(approved=True), build_dir)


def test_an_honest_approval_is_signed_by_kms_kept_in_ssm_and_verifies(target, tmp_path):
    image = _approved(target, tmp_path, "honest")
    found, statement = attest.check(target, target.get_image(image.id))
    assert found == []
    assert statement["subject"] == [{"name": image.id, "digest": target.subject_digest(image)}]
    assert statement["predicate"]["waivers"] == [{"control": "4.2.16", **CONTROLS[1]["waiver"]}]
    # The tags carry the signature and the statement's digest, small enough for EC2 tags.
    assert len(image.tags[SIGNATURE_TAG]) <= 256 and image.tags[STATEMENT_DIGEST_TAG].startswith("sha256:")
    # What a team without this project does: the SSM parameter, the pinned PEM, and openssl's
    # check (here cryptography's): ECDSA P-256/SHA-256 over DSSE's pre-authentication encoding.
    parameter = boto3.client("ssm", region_name=REGION).get_parameter(Name=f"/golden-ami/approvals/{image.id}")
    envelope = json.loads(parameter["Parameter"]["Value"])
    payload = base64.b64decode(envelope["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(attest.PAYLOAD_TYPE), attest.PAYLOAD_TYPE.encode(), len(payload), payload)
    public = boto3.client("kms", region_name=REGION).get_public_key(KeyId=target.settings.aws.signing_kms_key_id)
    serialization.load_der_public_key(public["PublicKey"]).verify(
        base64.b64decode(envelope["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    assert envelope["signatures"][0]["sig"] == image.tags[SIGNATURE_TAG]


def test_a_pinned_public_key_is_what_consumers_check_against(target, tmp_path, kms_key):
    image = _approved(target, tmp_path, "pinned")
    pem = attest.public_key_pem(target.approval_keys()[0])
    (tmp_path / "signing.pem").write_text(pem)
    consumer = _target(tmp_path, signing_public_key=str(tmp_path / "signing.pem"))  # no KMS key needed to check
    assert attest.check(consumer, consumer.get_image(image.id))[0] == []
    with pytest.raises(UserError, match="can check approvals, not sign them"):
        consumer.approval_signer()
    other = boto3.client("kms", region_name=REGION).create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")
    mismatched = _target(tmp_path, signing_kms_key_id=other["KeyMetadata"]["KeyId"],
                         signing_public_key=str(tmp_path / "signing.pem"))
    with pytest.raises(UserError, match="not the key aws.signing_public_key pins"):
        mismatched.approval_signer()
    found, _ = attest.check(mismatched, mismatched.get_image(image.id))
    assert found == []  # the pinned key, not the configured signer, decides what verifies


def test_a_key_that_cannot_sign_approvals_is_refused_by_name(aws_env, tmp_path):
    symmetric = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
    rsa = boto3.client("kms", region_name=REGION).create_key(KeyUsage="SIGN_VERIFY", KeySpec="RSA_2048")
    for key_id in (symmetric, rsa["KeyMetadata"]["KeyId"]):
        with pytest.raises(UserError, match="approvals need an ECC_NIST_P256 key"):
            _target(tmp_path, signing_kms_key_id=key_id).approval_signer()


def _forged_tags(target, tmp_path):
    image, _ = _candidate(target, tmp_path, "forged", created="2999-01-01T00:00:00Z")
    return target.set_tags(image.id, {"Status": "approved", "ApprovedAt": "2999-01-01T00:00:00Z"})


def _other_image_statement(target, tmp_path):
    honest = _approved(target, tmp_path, "a")
    other = _approved(target, tmp_path, "b")
    ssm = boto3.client("ssm", region_name=REGION)
    value = ssm.get_parameter(Name=target.statement_parameter(honest.id))["Parameter"]["Value"]
    ssm.put_parameter(Name=target.statement_parameter(other.id), Value=value, Type="String", Overwrite=True)
    return other


def _statement_edited(target, tmp_path):
    image = _approved(target, tmp_path, "edited")
    ssm = boto3.client("ssm", region_name=REGION)
    envelope = json.loads(ssm.get_parameter(Name=target.statement_parameter(image.id))["Parameter"]["Value"])
    document = json.loads(base64.b64decode(envelope["payload"]))
    document["predicate"]["controls"]["waived"] = []
    envelope["payload"] = base64.b64encode(json.dumps(document).encode()).decode()
    ssm.put_parameter(Name=target.statement_parameter(image.id), Value=json.dumps(envelope), Type="String", Overwrite=True)
    return image


def _tag_changed(target, tmp_path):
    image = _approved(target, tmp_path, "retag")
    return target.set_tags(image.id, {"ReportDigest": "sha256:" + "0" * 64})


def _signature_tag_changed(target, tmp_path):
    image = _approved(target, tmp_path, "resigned")
    return target.set_tags(image.id, {SIGNATURE_TAG: "MEUCIQ" + "A" * 90})


def _statement_removed(target, tmp_path):
    image = _approved(target, tmp_path, "gone")
    boto3.client("ssm", region_name=REGION).delete_parameter(Name=target.statement_parameter(image.id))
    return image


@pytest.mark.parametrize("tamper, named", [
    (_forged_tags, "has no signed approval statement"),
    (_other_image_statement, "the statement is about ami-"),
    (_statement_edited, "signature does not verify against the pinned key"),
    (_tag_changed, "its ReportDigest tag"),
    (_signature_tag_changed, f"its {SIGNATURE_TAG} tag"),
    (_statement_removed, "has no signed approval statement"),
])
def test_each_tamper_on_aws_is_refused_by_name(target, tmp_path, tamper, named):
    honest = _approved(target, tmp_path, "older-honest")
    tampered = tamper(target, tmp_path)
    found, _ = attest.check(target, target.get_image(tampered.id))
    assert any(named in problem for problem in found), found
    trusted, refused = attest.approved_images(target, "debian12")
    assert tampered.id in refused and honest.id in {i.id for i in trusted}


def test_an_expired_waiver_inside_a_signed_statement_is_named(target, tmp_path):
    image = target.get_image(_approved(target, tmp_path, "waived").id)
    found, _ = attest.problems(image, target.load_statement(image.id), target.approval_keys(),
                               target.subject_digest(image), today=dt.date(2027, 2, 1))
    assert found == ["the waiver of 4.2.16 in the statement expired on 2027-01-31"]


def test_a_rejection_after_an_approval_removes_the_statement_and_its_tags(target, tmp_path):
    image = _approved(target, tmp_path, "revoked")
    after = approve.apply(target, image, approve.ApprovalDecision(approved=False, failed_controls=["4.2.7"]), tmp_path)
    assert target.load_statement(image.id) is None
    assert SIGNATURE_TAG not in after.tags and STATEMENT_DIGEST_TAG not in after.tags


def test_without_a_signing_key_aws_approvals_are_tags_and_every_listing_says_so(aws_env, tmp_path):
    unsigned = _target(tmp_path)
    image, build_dir = _candidate(unsigned, tmp_path, "unsigned")
    approve.apply(unsigned, image, approve.ApprovalDecision(approved=True), build_dir)
    found, _ = attest.check(unsigned, unsigned.get_image(image.id))
    assert found and "not signed (set aws.signing_kms_key_id)" in found[0]
    assert [i.id for i in attest.approved_images(unsigned, "debian12")[0]] == [image.id]


def test_prune_counts_only_approvals_that_verify_and_removes_a_statement_with_its_image(target, tmp_path):
    older = _approved(target, tmp_path, "p1", created="2026-11-01T00:00:00Z")
    newer = _approved(target, tmp_path, "p2", created="2026-11-02T00:00:00Z")
    forged = _forged_tags(target, tmp_path)  # tagged approved, newest by its tags, never signed
    settings = target.settings.model_copy(update={"lifecycle": target.settings.lifecycle.model_copy(
        update={"keep_approved": 1})})
    [plan] = lifecycle.plan(settings, "aws", target.state_dir, ["debian12"])
    assert plan.protected[0].image_id == newer.id
    assert [(a.kind, a.image_id) for a in plan.actions] == [("deregister", older.id)]
    assert any(forged.id in note and "does not verify" in note for note in plan.notes)
    assert [o.status for o in lifecycle.apply(plan)] == ["done"]
    assert target.load_statement(older.id) is None
    assert attest.check(target, target.get_image(newer.id))[0] == []
    assert [i.id for i in attest.approved_images(target, "debian12")[0]] == [newer.id]


def test_rebuild_decides_from_the_newest_approval_that_verifies(target, tmp_path):
    from golden_ami import rebuild

    honest = _approved(target, tmp_path, "r1", created="2026-11-01T00:00:00Z")
    _forged_tags(target, tmp_path)  # newest by its tags, never signed
    cfg = config.resolve("debian12", "aws", str(tmp_path / "golden-ami.yaml"))
    assert rebuild.decide(cfg, target).current_image == honest.id
