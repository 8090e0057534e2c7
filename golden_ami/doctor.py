"""`invoke doctor`: what this machine lacks for each target, each with its fix. Packer is
common; each target names the rest (targets/<name>/doctor.py)."""
from __future__ import annotations

from pathlib import Path

from .config import Settings
from .targets import get_target
from .targets.base import Finding, tool_finding

__all__ = ["Finding", "check"]


def check(state_dir: Path, targets: tuple[str, ...] = ("local", "aws"),
          probe_kvm: bool = True) -> list[Finding]:
    found: list[Finding] = [tool_finding("common", "packer", "packer")]
    for name in targets:
        found += get_target(name, Settings(), state_dir).doctor_findings(probe_kvm)
    return found
