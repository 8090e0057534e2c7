"""Shared fixtures: every test gets its own state dir, so no test sees another's images."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("GOLDEN_AMI_STATE_DIR", str(state))
    monkeypatch.delenv("GOLDEN_AMI_CONFIG", raising=False)
    return state


def invoke_cmd(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run `invoke <args>` the way a user would; returns the CompletedProcess."""
    invoke = shutil.which("invoke", path=os.path.dirname(sys.executable)) or "invoke"
    return subprocess.run([invoke, "--search-root", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or PROJECT_ROOT, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait until a server we started listens on 127.0.0.1:port; fail with its log if it died."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args[0]} exited: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
    pytest.fail(f"{proc.args[0]} did not listen on {port} within {timeout:.0f} s")


def seed_moto_amis(monkeypatch, tmp_path: Path, amis: list[dict]) -> None:
    """Make moto's EC2 know exactly these AMIs (instead of its built-in Amazon list).

    moto reads MOTO_AMIS_PATH when its module is first imported, which may have happened
    already in this test session; so the loaded list is replaced as well.
    """
    import json

    import moto.ec2.models.amis as moto_amis

    seed = tmp_path / "moto-amis.json"
    seed.write_text(json.dumps(amis))
    monkeypatch.setenv("MOTO_AMIS_PATH", str(seed))
    monkeypatch.setattr(moto_amis, "AMIS", json.loads(seed.read_text()))
