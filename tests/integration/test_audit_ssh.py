"""invoke audit against a real sshd on 127.0.0.1 (this machine: not a hardened image)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from golden_ami import audit, config
from golden_ami.targets.local.target import LocalTarget
from tests.conftest import invoke_cmd
from tests.unit.conftest import REGION, aws_env  # noqa: F401 - aws_env: moto in this process, for ec2_instance
from tests.unit.offline_suite import controls_document

pytestmark = pytest.mark.integration

BUILD_ID = "debian12-20261202T000000Z-audit0"
# 1.8 asks for pending updates (audit mode: throw-away package lists), the others read the host;
# this machine has no auditd, so 5.2.1.1 fails here.
CONTROLS = ("1.8", "4.2.7", "5.2.1.1", "GA-HYG-AUTHKEYS", "GA-HYG-MACHINEID")


def _known_hosts(tmp_path: Path, port: int, key_line: str) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(f"otherhost {key_line}\n[127.0.0.1]:{port} {key_line}\n")
    return path


def _image_with_build(state_dir: Path, tmp_path: Path, control_ids) -> str:
    """A local image whose build (in this state dir) has these controls in force."""
    cfg = config.resolve("debian12", "local")
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb")
    image = LocalTarget(cfg.settings, cfg.state_dir).store.add(disk, {
        "Status": "approved", "OS": "debian12", "BuildId": BUILD_ID, "Fingerprint": "sha256:audit-test"})
    document = controls_document("debian12")
    document["controls"] = [c for c in document["controls"] if c["id"] in control_ids]
    build = state_dir / "builds" / BUILD_ID
    build.mkdir(parents=True)
    (build / "controls.json").write_text(json.dumps(document))
    return image.id


def _apt_state() -> dict[str, float]:
    """What apt keeps between runs on this machine, by mtime: an audit must change none of it."""
    found = {}
    for root in ("/var/lib/apt/lists", "/var/cache/apt"):
        for directory, _, names in os.walk(root):
            for name in [".", *names]:
                path = os.path.join(directory, name)
                found[path] = os.lstat(path).st_mtime
    return found


def test_a_host_key_other_than_the_pinned_one_is_refused_and_nothing_is_written(tmp_path, local_sshd, state_dir):
    impostor = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    out = tmp_path / "out"
    proc = invoke_cmd("audit", "--host=127.0.0.1", f"--port={local_sshd.port}", f"--user={local_sshd.user}",
                      f"--identity={local_sshd.client_key.private_key_path}", "--os=debian12",
                      f"--known-hosts={_known_hosts(tmp_path, local_sshd.port, impostor)}", f"--out={out}")
    assert proc.returncode == 1, proc.stderr
    assert "presented a host key other than the one pinned from" in proc.stderr
    assert "refusing to audit" in proc.stderr
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []


def test_an_audit_runs_the_suite_with_the_builds_controls_and_changes_nothing(tmp_path, local_sshd, state_dir):
    """This machine is no hardened image: 5.2.1.1 (auditd) fails here, so exit 1; the report
    names the image, where the controls came from and the pin, and the files are all there."""
    image_id = _image_with_build(state_dir, tmp_path, CONTROLS)
    before = _apt_state()
    out = tmp_path / "out"
    proc = invoke_cmd("audit", "--host=127.0.0.1", f"--port={local_sshd.port}", f"--user={local_sshd.user}",
                      f"--identity={local_sshd.client_key.private_key_path}", f"--image-id={image_id}",
                      f"--known-hosts={_known_hosts(tmp_path, local_sshd.port, local_sshd.host_key_line)}",
                      f"--out={out}", "--json")
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["image_id"] == image_id and summary["image_id_source"] == "--image-id"
    assert summary["controls"] == f"from build {BUILD_ID}"
    assert summary["host_key"].startswith("pinned from ") and summary["host_key"].endswith("ssh-ed25519")
    assert sorted(p.name for p in out.iterdir()) == ["controls.json", "facts.json", "junit.xml", "known_hosts",
                                                     "pytest.log", "report.html", "report.json", "report.md", "sbom.cdx.json"]
    report = json.loads((out / "report.json").read_text())
    rows = {row["id"]: row for row in report["controls"]}
    assert set(rows) == set(CONTROLS)
    assert rows["5.2.1.1"]["outcome"] == "fail", rows["5.2.1.1"]
    assert summary["failed_controls"] == sorted(i for i, row in rows.items() if row["outcome"] == "fail")
    assert report["audit"]["port"] == local_sshd.port and report["audit"]["controls"] == f"from build {BUILD_ID}"
    for control_id in ("GA-HYG-AUTHKEYS", "GA-HYG-MACHINEID"):
        assert rows[control_id]["audit_note"] == audit.AUDIT_JUDGED[control_id]
    # The updates question ran (its answer or its failure is in the row) - and left apt's state alone.
    facts = json.loads((out / "facts.json").read_text())
    assert "pending_updates:apt:audit" in facts["dynamic"] and "pending_updates:apt" not in facts["dynamic"]
    assert facts["context"]["mode"] == "audit"
    assert _apt_state() == before
    markdown = (out / "report.md").read_text()
    assert markdown.startswith(f"# Audit of 127.0.0.1:{local_sshd.port}")
    assert f"- launched from image: {image_id} (--image-id)" in markdown


def test_no_failed_control_exits_0(tmp_path, local_sshd, state_dir):
    """(Paths relative to the caller's directory: the suite runs elsewhere.)"""
    image_id = _image_with_build(state_dir, tmp_path, ("GA-HYG-MACHINEID",))
    _known_hosts(tmp_path, local_sshd.port, local_sshd.host_key_line)
    identity = os.path.relpath(local_sshd.client_key.private_key_path, tmp_path)
    proc = invoke_cmd("audit", "--host=127.0.0.1", f"--port={local_sshd.port}", f"--user={local_sshd.user}",
                      f"--identity={identity}", f"--image-id={image_id}", "--known-hosts=known_hosts", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    audits = list((state_dir / "audits").iterdir())
    assert [p.name.rsplit("-", 1)[0] for p in audits] == ["127.0.0.1"]
    assert json.loads((audits[0] / "report.json").read_text())["summary"] == {"pass": 1}


# --- the aws path, cheaply: moto in this process, this machine's sshd as the instance -------------


@pytest.fixture
def ec2_instance(request, local_sshd, state_dir, tmp_path, monkeypatch):
    """A moto instance of a tagged AMI whose address is 127.0.0.1 and whose console prints the
    key block of this machine's sshd (console_text: what get_console_output answers)."""
    request.getfixturevalue("aws_env")
    import time

    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.responses import ActionResult
    from moto.ec2.models import ec2_backends
    from moto.ec2.responses.general import General
    from moto.ec2.utils import Base64EncodedString

    ec2 = boto3.client("ec2", region_name=REGION)
    ami = "ami-0deb1000000000001"
    ec2.create_tags(Resources=[ami], Tags=[{"Key": "BuildId", "Value": BUILD_ID}, {"Key": "OS", "Value": "debian12"}])
    document = controls_document("debian12", "aws")
    document["controls"] = [c for c in document["controls"] if c["id"] in ("5.2.1.1", "GA-HYG-MACHINEID")]
    (state_dir / "builds" / BUILD_ID).mkdir(parents=True)
    (state_dir / "builds" / BUILD_ID / "controls.json").write_text(json.dumps(document))
    instance_id = ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2_backends[DEFAULT_ACCOUNT_ID][REGION].get_instance(instance_id).nics[0].public_ip = "127.0.0.1"
    console = {"text": local_sshd.console_text}

    def get_console_output(self):
        return ActionResult({"InstanceId": self._get_param("InstanceId"), "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                             "Output": Base64EncodedString.from_raw_string(console["text"])})

    monkeypatch.setattr(General, "get_console_output", get_console_output)
    config = tmp_path / "golden-ami.yaml"
    config.write_text(f"aws:\n  region: {REGION}\n  ssh_port: {local_sshd.port}\n")
    return instance_id, ami, console, config


def _aws_request(instance_id, config, sshd, out):
    return audit.AuditRequest(instance_id=instance_id, target="aws", user=sshd.user,
                              identity=str(sshd.client_key.private_key_path), out=str(out), config_file=str(config))


def test_an_aws_audit_takes_the_ami_from_ec2_and_pins_the_key_from_the_console(ec2_instance, local_sshd, tmp_path):
    from golden_ami.progress import Progress

    instance_id, ami, _, config = ec2_instance
    report, out = audit.run(_aws_request(instance_id, config, local_sshd, tmp_path / "out"), Progress(quiet=True))
    assert report["image_id"] == ami and report["audit"]["image_id_source"] == "describe_instances"
    assert report["host_key"] == "pinned from the console: ssh-ed25519"
    assert report["audit"]["controls"] == f"from build {BUILD_ID}"
    assert report["audit"]["instance_id"] == instance_id and report["audit"]["port"] == local_sshd.port
    assert {row["id"] for row in report["controls"]} == {"5.2.1.1", "GA-HYG-MACHINEID"}
    facts = json.loads((out / "facts.json").read_text())
    assert facts["context"]["instance_id"] == instance_id and facts["context"]["login_public_key"] == ""


def test_an_aws_audit_refuses_a_console_without_keys_or_with_other_keys(ec2_instance, local_sshd, tmp_path):
    from golden_ami.errors import HostKeyMismatch, UserError
    from golden_ami.progress import Progress

    instance_id, _, console, config = ec2_instance
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(audit, "CONSOLE_TIMEOUT_SECONDS", 1)
    console["text"] = "[  1.0] a console long scrolled past its key block\n"
    try:
        with pytest.raises(UserError, match="no SSH host key block.*--known-hosts.*--trust-first-use"):
            audit.run(_aws_request(instance_id, config, local_sshd, tmp_path / "none"), Progress(quiet=True))
    finally:
        monkeypatch.undo()
    impostor = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    console["text"] = local_sshd.console_text.replace(local_sshd.host_key_line, impostor)
    with pytest.raises(HostKeyMismatch, match="other than the one pinned from the console"):
        audit.run(_aws_request(instance_id, config, local_sshd, tmp_path / "other"), Progress(quiet=True))
    assert not (tmp_path / "none").exists() and not (tmp_path / "other").exists()
