"""testinfra over paramiko that refuses any host key but the pinned ones, and counts.

testinfra's own paramiko backend accepts any host key (WarningPolicy) and may read
~/.ssh/config, where StrictHostKeyChecking=no would switch checking off entirely. This
backend ignores ssh_config, loads only the known_hosts file written from the console's key
block, and uses RejectPolicy: an unknown or different key ends the run before any check.

It also counts what crosses the connection (remote commands, payload bytes each way): the
report carries the figures, bench/verify.py prints them.
"""
from __future__ import annotations

import functools

import paramiko
import testinfra.host
from testinfra.backend.paramiko import ParamikoBackend


class PinnedParamikoBackend(ParamikoBackend):
    NAME = "paramiko-pinned"

    def __init__(self, hostspec: str, known_hosts: str, *args, **kwargs):
        self.known_hosts = known_hosts
        self.counters = {"remote_commands": 0, "bytes_sent": 0, "bytes_received": 0, "connect_seconds": 0.0}
        super().__init__(hostspec, *args, **kwargs)

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
        import time

        started = time.monotonic()
        client = paramiko.SSHClient()
        client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            hostname=self.host.name,
            port=int(self.host.port) if self.host.port else 22,
            username=self.host.user,
            key_filename=self.ssh_identity_file,
            look_for_keys=False,
            allow_agent=False,
            timeout=self.timeout,
            banner_timeout=30,
            auth_timeout=30,
        )
        self.counters["connect_seconds"] = round(time.monotonic() - started, 3)
        return client

    def _exec_command(self, command: bytes) -> tuple[int, bytes, bytes]:
        rc, stdout, stderr = super()._exec_command(command)
        self.counters["remote_commands"] += 1
        self.counters["bytes_sent"] += len(command)
        self.counters["bytes_received"] += len(stdout) + len(stderr)
        return rc, stdout, stderr


def pinned_host(user: str, address: str, port: int, identity: str, known_hosts: str) -> testinfra.host.Host:
    """A testinfra host over the pinned backend, every command run through sudo."""
    backend = PinnedParamikoBackend(f"{user}@{address}:{port}", known_hosts=known_hosts, ssh_identity_file=identity,
                                    timeout=30, sudo=True)
    return testinfra.host.Host(backend)
