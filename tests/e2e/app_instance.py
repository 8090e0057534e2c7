"""An instance of the approved golden image, launched the way an application team would.

What it adds to the image at launch is cloud-init user-data only (docs/app-teams.md): a
firewall drop-in opening TCP 8080, and a small HTTP listener on 8080 and on 8081 (enabled, so
it comes back after a reboot), accepted into AIDE's baseline. 8081 listens but stays closed: that is what shows the firewall,
not a missing listener, keeps it out.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import paramiko

from golden_ami import hostkeys

APP_PORT = 8080  # opened by the drop-in
CLOSED_PORT = 8081  # listened on, not opened
DROPIN = "/etc/nftables.d/app-8080.nft"
LISTENER = "day-two-listener@{port}.service"

_LISTENER_UNIT = """\
[Unit]
Description=day-two test listener on TCP %i
Wants=network-online.target
After=network-online.target

[Service]
User=nobody
ExecStart=/usr/bin/python3 -m http.server --bind 0.0.0.0 --directory /srv/day-two %i

[Install]
WantedBy=multi-user.target
"""


def app_user_data() -> dict:
    """The cloud-config an application team adds at launch (as in docs/app-teams.md)."""
    return {
        "write_files": [
            {"path": DROPIN, "owner": "root:root", "permissions": "0644",
             "content": f"# the web app: new connections to TCP {APP_PORT} from anywhere\n"
                        f"tcp dport {APP_PORT} accept\n"},
            {"path": "/etc/systemd/system/day-two-listener@.service", "owner": "root:root", "permissions": "0644",
             "content": _LISTENER_UNIT},
            {"path": "/srv/day-two/index.html", "owner": "root:root", "permissions": "0644",
             "content": "day two\n"},
        ],
        "runcmd": [
            # The drop-in is written after nftables loaded the ruleset at boot: load it again,
            # checked first (a drop-in nft cannot read would fail the whole ruleset).
            "nft --check --file /etc/nftables.conf && systemctl reload nftables.service",
            ["chmod", "0755", "/srv/day-two"],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", LISTENER.format(port=APP_PORT), LISTENER.format(port=CLOSED_PORT)],
            # Last: the files above are the team's on purpose; AIDE takes them into its baseline
            # (1.3.1), so that its daily check - and an audit - report only later changes.
            ["/usr/local/sbin/golden-ami-aide-accept"],
        ],
    }


@dataclass
class AppInstance:
    """A running VM of the approved image with an application team's user-data.

    Stable interface (other e2e tests use it - keep it so):
      image_id                 the approved image it was booted from
      ssh_host, ssh_port       where its SSH is (127.0.0.1 and a forwarded port)
      login_user               the image's default user (passwordless sudo)
      identity                 Path of that user's private key (authorised by the seed)
      known_hosts              Path of a known_hosts file with the host keys pinned from the
                               serial console (never trusted on first use)
      port_for(guest_port)     the 127.0.0.1 port forwarded to a guest TCP port (22, 8080, 8081)
      run(command, stdin=None) a command line over pinned SSH as login_user (the remote shell
                               reads it: quote values with shlex.quote); CompletedProcess
      connect(user, identity)  one pinned SSH login as another user (no retries)
      upload(tree, remote)     copy a local directory tree to a new remote directory (SFTP, as
                               login_user)
      reboot()                 reboot and wait for SSH; the host keys must stay the pinned ones
      boot_seconds, reboot_seconds   measured (launch to ready, reboot to ready)
    """

    image_id: str
    ssh_host: str
    login_user: str
    identity: Path
    known_hosts: Path
    forwards: dict[int, int]
    console_text: Callable[[], str]
    timeout_seconds: float
    boot_seconds: float = 0.0
    reboot_seconds: Optional[float] = None
    _client: Optional[paramiko.SSHClient] = field(default=None, repr=False)

    @property
    def ssh_port(self) -> int:
        return self.forwards[22]

    def port_for(self, guest_port: int) -> int:
        if guest_port not in self.forwards:
            raise ValueError(f"guest port {guest_port} is not forwarded (only {sorted(self.forwards)})")
        return self.forwards[guest_port]

    def _login(self) -> paramiko.SSHClient:
        if self._client is None:
            self._client = hostkeys.connect_pinned(self.ssh_host, self.ssh_port, self.login_user, self.identity,
                                                   self.known_hosts, timeout_seconds=self.timeout_seconds)
        return self._client

    def run(self, command: str, stdin: Optional[str] = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a command line as login_user; stdin (e.g. a password for chpasswd) is never logged."""
        channel_in, out, err = self._login().exec_command(command, timeout=timeout)
        if stdin is not None:
            channel_in.write(stdin)
        channel_in.channel.shutdown_write()
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        return subprocess.CompletedProcess(command, out.channel.recv_exit_status(), stdout, stderr)

    def check(self, command: str, stdin: Optional[str] = None) -> str:
        """run(), which must succeed; its stdout."""
        result = self.run(command, stdin)
        assert result.returncode == 0, f"{command!r} exited {result.returncode}: {result.stderr[-2000:]}"
        return result.stdout

    def upload(self, tree: Path, remote: str) -> None:
        """Copy the directory tree (its files and subdirectories) to remote, which must not exist."""
        sftp = self._login().open_sftp()
        try:
            sftp.mkdir(remote)
            for path in sorted(tree.rglob("*")):
                target = f"{remote}/{path.relative_to(tree).as_posix()}"
                if path.is_dir():
                    sftp.mkdir(target)
                else:
                    sftp.put(str(path), target)
        finally:
            sftp.close()

    def connect(self, user: str, identity: Path, timeout: float = 30) -> paramiko.SSHClient:
        """One login as user with identity, host key pinned; raises what paramiko raises."""
        client = hostkeys.pinned_client(self.known_hosts)
        try:
            client.connect(self.ssh_host, port=self.ssh_port, username=user, key_filename=str(identity),
                           look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout)
        except BaseException:
            client.close()
            raise
        return client

    def wait_until_ready(self) -> None:
        """SSH answers with the pinned key and cloud-init finished without an error."""
        status = self.run("cloud-init status --wait --long")
        assert status.returncode == 0, f"cloud-init did not finish cleanly: {status.stdout[-2000:]}{status.stderr[-500:]}"

    def boot_id(self) -> str:
        return self.check("cat /proc/sys/kernel/random/boot_id").strip()

    def reboot(self) -> None:
        """Reboot the guest and wait until it is back: a new boot id, SSH with the same pinned
        host keys (connect_pinned refuses any other key), and nothing else on the console."""
        started = time.monotonic()
        before, console_seen = self.boot_id(), len(self.console_text())
        pinned = set(hostkeys.parse_console_host_keys(self.console_text()))
        self.run("sudo systemd-run --on-active=2 --unit=day-two-reboot systemctl reboot")
        self.close()
        while True:
            if time.monotonic() - started > self.timeout_seconds:
                raise AssertionError(f"no new boot within {self.timeout_seconds:.0f} s of the reboot")
            time.sleep(5)
            try:
                now = self.boot_id()
            except (OSError, EOFError, paramiko.SSHException, AssertionError):
                self.close()
                continue
            if now != before:
                break
            self.close()  # still the old boot: shutting down
        again = set(hostkeys.parse_console_host_keys(self.console_text()[console_seen:]))
        assert not again or again == pinned, "the console announced other host keys after the reboot"
        self.wait_until_ready()
        self.reboot_seconds = round(time.monotonic() - started, 1)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
