"""docs/consumers.md's shell check (jq, base64, OpenSSL; no golden_ami) against a real signed
approval: it verifies the honest envelope and refuses one whose payload was changed."""
from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pytest

from golden_ami import approve, attest, config, verify_runner
from golden_ami.targets.local.target import LocalTarget
from tests.conftest import PROJECT_ROOT, required_tool

pytestmark = pytest.mark.integration


def _shell_check() -> str:
    """The fenced block of the "Without this project" section."""
    text = (PROJECT_ROOT / "docs" / "consumers.md").read_text()
    section = text.split("## Without this project", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


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
    image = approve.apply(target, image, approve.Decision(approved=True), verify_dir.parent)
    (tmp_path / "golden-ami-signing.pem").write_text(attest.public_key_pem(target.approval_keys()[0]))
    return target, image


INSTALLED_BY = "scripts/install.sh --with-tests"


def _run(tmp_path, envelope: dict) -> subprocess.CompletedProcess:
    """The block as a consumer would run it: bash, with only the tools it names on PATH."""
    tools = {name: required_tool(name, INSTALLED_BY) for name in ("bash", "jq", "openssl", "base64", "wc", "cat")}
    (tmp_path / "approval.dsse.json").write_text(json.dumps(envelope))
    path = ":".join(sorted({str(Path(found).parent) for found in tools.values()}))
    return subprocess.run([tools["bash"], "-c", "set -o errexit -o pipefail\n" + _shell_check()],
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
