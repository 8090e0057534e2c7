"""Targets: where images are built, booted, tagged. See targets/base.py for the interface."""
from __future__ import annotations

from pathlib import Path

from ..config import Settings
from ..errors import UserError
from .base import Target


def target_class(name: str) -> type[Target]:
    # Imported on demand: the aws target pulls in boto3, which a local run never needs.
    if name == "local":
        from .local.target import LocalTarget

        return LocalTarget
    if name == "aws":
        from .aws.target import AwsTarget

        return AwsTarget
    raise UserError(f"unknown --target {name!r}: choose aws or local")


def get_target(name: str, settings: Settings, state_dir: Path) -> Target:
    return target_class(name)(settings, state_dir)
