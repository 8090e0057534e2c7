"""The aws target: Packer amazon-ebs, EC2 test instances, EC2 image tags.

This stage provides the source-image resolution the renderer needs; building, verifying
and approving on AWS are not wired up yet and say so instead of pretending.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from ...config import Resolved
from ...errors import UserError
from ...progress import Progress
from ...render import SourceImage
from ...sshkeys import KeyPair
from ..base import BuildContext, Image, Problem, Target
from . import clients, source

_NOT_YET = ("the aws target can render (invoke render --target=aws) but cannot build, verify or tag yet; "
            "use --target=local")


class AwsTarget(Target):
    name = "aws"

    def problems(self, cfg: Optional[Resolved] = None) -> list[Problem]:
        found = []
        if shutil.which(self.settings.packer.binary) is None:
            found.append(Problem("packer is not installed", "apt-get install packer"))
        try:
            import boto3

            if boto3.Session().get_credentials() is None:
                found.append(Problem("no AWS credentials", "set AWS_PROFILE, run aws sso login, or use a role"))
        except Exception as exc:  # noqa: BLE001 - reported as the problem
            found.append(Problem(f"AWS credentials unreadable: {exc}", "check AWS_PROFILE"))
        return found

    def resolve_source(self, cfg: Resolved, pinned: Optional[str] = None) -> SourceImage:
        region = cfg.settings.aws.region
        return source.resolve(cfg, clients.client("ec2", region), clients.client("ssm", region), pinned)

    def packer_variables(self, cfg: Resolved, ctx: BuildContext) -> dict[str, Any]:
        raise UserError(_NOT_YET)

    def register_candidate(self, cfg: Resolved, ctx: BuildContext, manifest: dict[str, Any]) -> Image:
        raise UserError(_NOT_YET)

    def boot_test_instance(self, cfg: Resolved, image: Image, key: KeyPair, work_dir: Path, progress: Progress):
        raise UserError(_NOT_YET)

    def get_image(self, image_id: str) -> Image:
        raise UserError(_NOT_YET)

    def list_images(self, os_name: Optional[str] = None, status: Optional[str] = None) -> list[Image]:
        raise UserError(_NOT_YET)

    def set_tags(self, image_id: str, tags: dict[str, Optional[str]]) -> Image:
        raise UserError(_NOT_YET)
