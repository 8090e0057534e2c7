"""Which AMI a build starts from.

In order: an id the user pinned (--source-ami, checked to exist); the SSM public parameter
AWS or the OS vendor publishes; otherwise the newest image matching the OS data's name
pattern *from an owners allow-list* - never an unrestricted filter, which anyone could win
by publishing a look-alike image.
"""
from __future__ import annotations

from typing import Any, Optional

import botocore.exceptions

from ...config import Resolved
from ...errors import UserError
from ...render import SourceImage
from .clients import describe_error


def _describe(ec2: Any, image_id: str) -> dict[str, Any]:
    try:
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "").startswith("InvalidAMIID"):
            raise UserError(f"source AMI {image_id} does not exist in this region") from None
        raise describe_error(exc, f"describe {image_id}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise describe_error(exc, f"describe {image_id}") from None
    if not images:
        raise UserError(f"source AMI {image_id} does not exist in this region")
    return images[0]


def check_pinned(pinned: str) -> None:
    """A pinned source id is an AMI id, refused before any AWS call (or credentials) is needed."""
    if not pinned.startswith("ami-") or not pinned[4:].isalnum():
        raise UserError(f"--source-ami {pinned!r} is not an AMI id (ami-…)")


def resolve(cfg: Resolved, ec2: Any, ssm: Any, pinned: Optional[str] = None) -> SourceImage:
    spec = cfg.target_os.source
    region = cfg.settings.aws.region
    if pinned:
        check_pinned(pinned)
        image = _describe(ec2, pinned)
        return SourceImage(id=pinned, name=image.get("Name", ""), location=region)

    if spec.ssm_parameter:
        try:
            value = ssm.get_parameter(Name=spec.ssm_parameter)["Parameter"]["Value"]
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ParameterNotFound" or not spec.owners:
                raise describe_error(exc, f"read {spec.ssm_parameter}") from None
            value = None  # fall through to the owner-pinned filter
        except botocore.exceptions.BotoCoreError as exc:
            raise describe_error(exc, f"read {spec.ssm_parameter}") from None
        if value:
            image = _describe(ec2, value)
            return SourceImage(id=value, name=image.get("Name", ""), location=region)

    if not spec.owners or not spec.name_pattern:
        raise UserError(f"os/{cfg.os.name}.yaml gives no SSM parameter and no owner-pinned name filter for aws")
    filters = [{"Name": "name", "Values": [spec.name_pattern]}, {"Name": "state", "Values": ["available"]}]
    if spec.architecture:
        filters.append({"Name": "architecture", "Values": [spec.architecture]})
    try:
        images = ec2.describe_images(Owners=list(spec.owners), Filters=filters)["Images"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise describe_error(exc, "find the source AMI") from None
    if not images:
        raise UserError(f"no AMI named {spec.name_pattern} from owner(s) {', '.join(spec.owners)} in {region}")
    newest = max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")))
    return SourceImage(id=newest["ImageId"], name=newest.get("Name", ""), location=region)
