"""A real OpenSSH server on 127.0.0.1 for the SSH and verify tests (started and stopped here),
and debian12 build directories rendered for the tests that run what the build would."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from golden_ami import config, render, sshkeys
from tests.conftest import free_port, wait_for_port

SSHD = "/usr/sbin/sshd"
# A base image that is never read: rendering only names it.
STAND_IN_SOURCE = render.SourceImage(id="sha256:" + "1" * 64, name="base", location="/images/base.qcow2",
                                     checksum="sha256:" + "1" * 64)


def rendered_build(tmp_path_factory, **overrides) -> Path:
    """A debian12 / local build directory rendered with these settings overridden."""
    out = tmp_path_factory.mktemp("render") / "build"
    render.render(config.resolve("debian12", "local", overrides=overrides or None), STAND_IN_SOURCE, out)
    return out


@dataclass
class LocalSshd:
    port: int
    host_key_line: str  # "ssh-ed25519 AAAA… comment"
    client_key: sshkeys.KeyPair
    user: str

    @property
    def console_text(self) -> str:
        """What cloud-init would print on the console for this server."""
        return (f"[  1.0] boot noise\n-----BEGIN SSH HOST KEY KEYS-----\n{self.host_key_line}\n"
                "-----END SSH HOST KEY KEYS-----\n")


@pytest.fixture
def local_sshd(tmp_path):
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        pytest.fail("openssh-server is required: the README's test command installs it")
    work = tmp_path / "sshd"
    work.mkdir()
    host_key = work / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@test", "-f", str(host_key)], check=True)
    client = sshkeys.generate(work / "client", "id_ed25519", "golden-ami-test")
    (work / "authorized_keys").write_text(client.public_key + "\n")
    port = free_port()
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {work / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(work / "sshd_config")], stderr=(work / "sshd.log").open("wb"))
    try:
        wait_for_port(port, proc, work / "sshd.log", timeout=20)
        import getpass

        yield LocalSshd(port, (host_key.with_suffix(".pub")).read_text().strip(), client, getpass.getuser())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
