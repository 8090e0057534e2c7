"""testinfra over paramiko that refuses any host key but the pinned ones.

testinfra's own paramiko backend accepts any host key (WarningPolicy) and may read
~/.ssh/config, where StrictHostKeyChecking=no would switch checking off entirely. This
backend ignores ssh_config, loads only the known_hosts file written from the console's key
block, and uses RejectPolicy: an unknown or different key ends the run before any check.
"""
from __future__ import annotations

import functools

import paramiko
from testinfra.backend.paramiko import ParamikoBackend


class PinnedParamikoBackend(ParamikoBackend):
    NAME = "paramiko-pinned"

    def __init__(self, hostspec: str, known_hosts: str, *args, **kwargs):
        self.known_hosts = known_hosts
        super().__init__(hostspec, *args, **kwargs)

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
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
        return client
