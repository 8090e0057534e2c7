"""Host-key pinning against a real sshd: the announced key connects, any other is refused."""
import json
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from golden_ami import hostkeys, paths
from golden_ami.errors import HostKeyMismatch

pytestmark = pytest.mark.integration


def _pin(tmp_path, sshd, console_text):
    keys = hostkeys.parse_console_host_keys(console_text)
    known_hosts = tmp_path / "known_hosts"
    hostkeys.write_known_hosts(known_hosts, "127.0.0.1", sshd.port, keys)
    return known_hosts


def test_the_announced_key_connects(tmp_path, local_sshd):
    known_hosts = _pin(tmp_path, local_sshd, local_sshd.console_text)
    client = hostkeys.connect_pinned("127.0.0.1", local_sshd.port, local_sshd.user,
                                     local_sshd.client_key.private_key_path, known_hosts, timeout_seconds=20)
    _, out, _ = client.exec_command("echo pinned")
    assert out.read().strip() == b"pinned"
    client.close()


def test_a_different_key_is_refused_before_anything_runs(tmp_path, local_sshd):
    impostor = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    console = local_sshd.console_text.replace(local_sshd.host_key_line, impostor + " root@elsewhere")
    known_hosts = _pin(tmp_path, local_sshd, console)
    with pytest.raises(HostKeyMismatch, match="did not announce"):
        hostkeys.connect_pinned("127.0.0.1", local_sshd.port, local_sshd.user,
                                local_sshd.client_key.private_key_path, known_hosts, timeout_seconds=20)


def _controls_document(tmp_path):
    doc = {"os": "debian12", "target": "local", "profile": "baseline", "controls": [
        {"id": "4.2.7", "title": "SSH root login is disabled", "section": "ssh", "os_id": "5.1.20",
         "applicable": True, "reason": "", "params": {}},
        {"id": "GA-AGENT-SSM", "title": "amazon-ssm-agent is installed, enabled and running", "section": "agents",
         "os_id": "", "applicable": False, "reason": "no metadata service on a local VM", "params": {}},
    ]}
    path = tmp_path / "controls.json"
    path.write_text(json.dumps(doc))
    return path


def _run_suite(tmp_path, sshd, known_hosts):
    report = tmp_path / "report.json"
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([
        sys.executable, "-m", "pytest", str(paths.VERIFY_DIR), "-c", str(paths.VERIFY_DIR / "pytest.ini"),
        "--rootdir", str(paths.VERIFY_DIR), "-q", f"--junitxml={junit}",
        "--ga-host=127.0.0.1", f"--ga-port={sshd.port}", f"--ga-user={sshd.user}",
        f"--ga-identity={sshd.client_key.private_key_path}", f"--ga-known-hosts={known_hosts}",
        f"--ga-controls={_controls_document(tmp_path)}", f"--ga-report={report}",
        "--ga-image-id=li-0123456789abcdef0", "--ga-fingerprint=sha256:test",
    ], capture_output=True, text=True, timeout=300)
    return proc, report, junit


def test_the_verify_suite_reports_one_row_per_control_naming_failures(tmp_path, local_sshd):
    """The suite runs over the pinned connection against this machine's own sshd settings.

    This machine keeps Debian's default (root may log in with a key), so 4.2.7 must fail,
    and the failure must name the control; the agent control is not applicable with its reason.
    """
    proc, report_path, junit = _run_suite(tmp_path, local_sshd, _pin(tmp_path, local_sshd, local_sshd.console_text))
    report = json.loads(report_path.read_text())
    rows = {row["id"]: row for row in report["controls"]}
    assert set(rows) == {"4.2.7", "GA-AGENT-SSM"}
    assert report["image_id"] == "li-0123456789abcdef0" and report["fingerprint"] == "sha256:test"
    permit = subprocess.run(["/usr/sbin/sshd", "-T"], capture_output=True, text=True).stdout
    expected = "pass" if "permitrootlogin no" in permit else "fail"
    assert rows["4.2.7"]["outcome"] == expected, proc.stdout
    if expected == "fail":
        assert "permitrootlogin" in rows["4.2.7"]["message"]
        assert "[4.2.7]" in junit.read_text()
        assert proc.returncode != 0
    assert rows["GA-AGENT-SSM"] | {"checks": []} == rows["GA-AGENT-SSM"] | {"checks": []}
    assert rows["GA-AGENT-SSM"]["outcome"] == "not-applicable"
    assert rows["GA-AGENT-SSM"]["message"] == "no metadata service on a local VM"


def test_the_verify_suite_refuses_an_unpinned_host(tmp_path, local_sshd):
    impostor = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    known_hosts = _pin(tmp_path, local_sshd, local_sshd.console_text.replace(local_sshd.host_key_line, impostor))
    proc, report_path, _ = _run_suite(tmp_path, local_sshd, known_hosts)
    report = json.loads(report_path.read_text())
    row = {r["id"]: r for r in report["controls"]}["4.2.7"]
    assert row["outcome"] == "fail"
    assert "BadHostKey" in row["message"] or "does not match" in row["message"] or "Host key" in row["message"], row


def test_no_console_keys_fails_closed_unless_explicitly_opted_out(tmp_path, local_sshd, state_dir):
    from types import SimpleNamespace

    from golden_ami import config, verify_runner
    from golden_ami.errors import VerificationError
    from golden_ami.progress import Progress

    instance = SimpleNamespace(instance_id="i-test", ssh_host="127.0.0.1", ssh_port=local_sshd.port,
                               console_text=lambda: "no key block on this console")
    known_hosts = tmp_path / "known_hosts"
    strict = config.resolve("debian12", "aws")
    with pytest.raises(VerificationError, match="refusing to connect"):
        verify_runner._pin_host_keys(strict, instance, known_hosts, 1, Progress(quiet=True))
    assert not known_hosts.exists()

    opted_out = config.resolve("debian12", "aws", overrides={"verify": {"accept_unpinned_host_key": True}})
    how = verify_runner._pin_host_keys(opted_out, instance, known_hosts, 10, Progress(quiet=True))
    assert how.startswith("trusted on first use")
    assert local_sshd.host_key_line.split()[1] in known_hosts.read_text()


def test_a_verify_run_seals_the_files_it_wrote_and_the_gate_holds_to_the_seal(tmp_path, local_sshd, state_dir):
    """verify_runner.run end to end against this machine's sshd (a two-control build): the run
    seals report.json, facts.json and junit.xml in the image's tags; the gate finds nothing wrong
    with the seal, until the report is edited."""
    import contextlib
    import hashlib

    from golden_ami import approve, config, pipeline, verify_runner
    from golden_ami.errors import VerificationError
    from golden_ami.progress import Progress
    from golden_ami.targets.base import TestInstance
    from golden_ami.targets.local.target import LocalTarget

    class ThisMachine(LocalTarget):
        @contextlib.contextmanager
        def boot_test_instance(self, cfg, image, key, work_dir, progress):
            with (tmp_path / "sshd" / "authorized_keys").open("a") as keys:
                keys.write(key.public_key + "\n")
            yield TestInstance("127.0.0.1", local_sshd.port, local_sshd.user, key, "i-thismachine",
                               lambda: local_sshd.console_text, boot_timeout_seconds=30)

    cfg = config.resolve("debian12", "local")
    target = ThisMachine(cfg.settings, cfg.state_dir)
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb")
    image = target.get_image(target.store.add(disk, {"Status": "candidate", "OS": "debian12",
                                                     "Fingerprint": "sha256:test"}).id)
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    _controls_document(build_dir)
    decision = pipeline.verify_and_decide(cfg, target, image, build_dir, "build-1", Progress(quiet=True))

    tags, verify_dir = target.get_image(image.id).tags, build_dir / "verify"
    for tag, name in (("ReportDigest", "report.json"), ("FactsDigest", "facts.json"), ("JunitDigest", "junit.xml"),
                      ("SbomDigest", "sbom.cdx.json")):
        assert tags[tag] == "sha256:" + hashlib.sha256((verify_dir / name).read_bytes()).hexdigest(), tag
    # The SBOM lists what dpkg says is installed here (this machine is the "instance").
    sbom = json.loads(verify_runner.sealed_text(target.get_image(image.id), verify_dir, "SbomDigest"))
    assert any(c["name"] == "openssh-server" for c in sbom["components"])
    assert json.loads((verify_dir / "report.json").read_text())["sbom"]["components"] == len(sbom["components"])
    # (Rejected all the same - this build directory is no render, and 4.2.7 may fail here.)
    assert not any("sealed" in reason for reason in decision.reasons), decision.reasons

    # A killed run's own directory (its key inside) is in no later run's way, and a run that
    # dies leaves the last run's files and seal as they were.
    (verify_dir / ".run-killed" / "key").mkdir(parents=True)
    (verify_dir / ".run-killed" / "key" / "id_ed25519").write_text("PRIVATE")
    kept = {name: (verify_dir / name).read_bytes() for name in ("report.json", "facts.json", "junit.xml")}
    sealed = target.get_image(image.id).tags

    class DiesAfterTheSuite(ThisMachine):
        def outside_checks(self, cfg, image, instance):
            raise VerificationError("the API that checks the image from outside went away")

    with pytest.raises(VerificationError, match="went away"):
        verify_runner.run(cfg, DiesAfterTheSuite(cfg.settings, cfg.state_dir), target.get_image(image.id), build_dir,
                          "build-2", Progress(quiet=True))
    assert {name: (verify_dir / name).read_bytes() for name in kept} == kept
    assert target.get_image(image.id).tags == sealed
    assert [p.name for p in verify_dir.glob(".run-*")] == [".run-killed"]

    report = verify_dir / "report.json"
    report.write_text(report.read_text().replace('"fail"', '"pass"') + " ")
    again = approve.decide(target.get_image(image.id), approve.load_report(build_dir), build_dir)
    assert "report.json is not the file the verify run sealed" in again.summary()
