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
                                                     "pytest.log", "report.json", "report.md", "sbom.cdx.json"]
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
    image_id = _image_with_build(state_dir, tmp_path, ("GA-HYG-MACHINEID",))
    proc = invoke_cmd("audit", "--host=127.0.0.1", f"--port={local_sshd.port}", f"--user={local_sshd.user}",
                      f"--identity={local_sshd.client_key.private_key_path}", f"--image-id={image_id}",
                      f"--known-hosts={_known_hosts(tmp_path, local_sshd.port, local_sshd.host_key_line)}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    audits = list((state_dir / "audits").iterdir())
    assert [p.name.rsplit("-", 1)[0] for p in audits] == ["127.0.0.1"]
    assert json.loads((audits[0] / "report.json").read_text())["summary"] == {"pass": 1}
