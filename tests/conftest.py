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
