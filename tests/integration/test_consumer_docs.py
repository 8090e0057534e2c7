"""docs/consumers.md's shell check (jq, base64, OpenSSL; no golden_ami) against a real signed
approval: it verifies the honest envelope and refuses one whose payload was changed."""
from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from golden_ami import approve, attest, config, verify_runner
from golden_ami.targets.local.target import LocalTarget
from tests.conftest import PROJECT_ROOT, required_tool

pytestmark = pytest.mark.integration


def _shell_check(after: str = "## Without this project") -> str:
    """The first fenced sh block after a marker in docs/consumers.md."""
    text = (PROJECT_ROOT / "docs" / "consumers.md").read_text()
    section = text.split(after, 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


AWS_CHECK = "then check them with"


@pytest.fixture
def approved(state_dir, tmp_path):
    cfg = config.resolve("debian12", "local")
    target = LocalTarget(cfg.settings, cfg.state_dir)
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb disk")
    stored = target.store.add(disk, {"Status": "candidate", "OS": "debian12", "BuildId": "b1",
                                     "Fingerprint": "sha256:" + "f" * 64, "CreatedAt": "2026-12-01T00:00:00Z"})
    verify_dir = tmp_path / "build" / "verify"
    verify_dir.mkdir(parents=True)
    (verify_dir / "report.json").write_text(json.dumps(
        {"image_id": stored.id, "controls": [{"id": "4.2.7", "outcome": "pass", "message": ""}]}))
    image = verify_runner.seal(target, target.get_image(stored.id), verify_dir)
    image = approve.apply(target, image, approve.ApprovalDecision(approved=True), verify_dir.parent)
    (tmp_path / "golden-ami-signing.pem").write_text(attest.public_key_pem(target.approval_keys()[0]))
    return target, image


INSTALLED_BY = "scripts/install.sh --with-tests"


def _run(tmp_path, envelope: dict, after: str = "## Without this project",
         tags: Optional[dict] = None) -> subprocess.CompletedProcess:
    """The block as a consumer would run it: bash, with only the tools it names on PATH."""
    tools = {name: required_tool(name, INSTALLED_BY) for name in ("bash", "jq", "openssl", "base64", "wc", "cat", "test")}
    (tmp_path / "approval.dsse.json").write_text(json.dumps(envelope))
    if tags is not None:  # as `aws ec2 describe-images --query 'Images[0].Tags'` prints them
        (tmp_path / "tags.json").write_text(json.dumps([{"Key": k, "Value": v} for k, v in tags.items()]))
    path = ":".join(sorted({str(Path(found).parent) for found in tools.values()}))
    return subprocess.run([tools["bash"], "-c", "set -o errexit -o pipefail\n" + _shell_check(after)],
                          cwd=tmp_path, env={"PATH": path}, capture_output=True, text=True, timeout=60)


def test_the_documented_check_verifies_an_honest_approval_and_names_the_image(approved, tmp_path):
    target, image = approved
    proc = _run(tmp_path, target.load_statement(image.id))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "Signature Verified Successfully" in lines[0]
    assert lines[1:] == ["urn:golden-ami:approval:v1", image.id, target.subject_digest(image)["sha256"]]


def test_the_documented_check_refuses_a_changed_payload(approved, tmp_path):
    target, image = approved
    envelope = target.load_statement(image.id)
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["predicate"]["controls"]["waived"] = ["4.2.7"]
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    proc = _run(tmp_path, envelope)
    assert proc.returncode != 0 and "Signature Verified Successfully" not in proc.stdout


# --- the aws block: a statement KMS signed (moto's KMS, signing digests as KMS does) ---------------
@pytest.fixture
def aws_approved(state_dir, tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from tests.conftest import kms_signs_digests, seed_moto_amis
    from tests.unit import test_attest_aws
    from tests.unit.conftest import DEBIAN_OWNER, REGION, moto_ami

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    seed_moto_amis(monkeypatch, tmp_path, [moto_ami(test_attest_aws.DEBIAN_AMI, "debian-12-amd64-20261101-1",
                                                    DEBIAN_OWNER, "2026-11-01T00:00:00.000Z")])
    kms_signs_digests(monkeypatch)
    with mock_aws():
        key_id = boto3.client("kms", region_name=REGION).create_key(
            KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["KeyId"]
        target = test_attest_aws._target(tmp_path, signing_kms_key_id=key_id)
        image = test_attest_aws._approved(target, tmp_path, "docs")
        (tmp_path / "golden-ami-signing.pem").write_text(attest.public_key_pem(target.approval_keys()[0]))
        yield target, image


def test_the_documented_aws_check_verifies_a_kms_signed_approval(aws_approved, tmp_path):
    target, image = aws_approved
    proc = _run(tmp_path, target.load_statement(image.id), AWS_CHECK, image.tags)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["Verified OK", "urn:golden-ami:approval:v1", image.id]


def test_the_documented_aws_check_refuses_a_changed_payload_or_a_foreign_signature_tag(aws_approved, tmp_path):
    target, image = aws_approved
    envelope = target.load_statement(image.id)
    changed = json.loads(json.dumps(envelope))
    payload = json.loads(base64.b64decode(changed["payload"]))
    payload["predicate"]["controls"]["passed"] = ["4.2.7", "4.2.16"]
    changed["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    proc = _run(tmp_path, changed, AWS_CHECK, image.tags)
    assert proc.returncode != 0 and "Verified OK" not in proc.stdout
    proc = _run(tmp_path, envelope, AWS_CHECK, {**image.tags, "ApprovalSignature": "MEUCIQ" + "A" * 90})
    assert proc.returncode != 0 and proc.stdout.splitlines() == ["Verified OK"]
