"""What still uses an AMI, and its snapshots: the reads prune and reap both make before removing
an image, and the read-backs after. Everything here fails closed: an unreadable launch template
or parameter raises instead of reporting "unused"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

import botocore.exceptions

from ...config import Settings
from .clients import describe_error, error_code

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
SSM_REFERENCE = "resolve:ssm:"


def tags_of(raw: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw.get("Tags", []) or []}


def pointer_name(settings: Settings, os_name: str) -> str:
    """The SSM parameter publish() writes: what consumers launch."""
    return f"{settings.aws.ssm_parameter_prefix.rstrip('/')}/{os_name}/latest"


@dataclass(frozen=True)
class Reference:
    kind: str  # "pointer" | "launch-template" | "instance"
    ident: str  # the parameter name, "template-id:version", or the instance id
    text: str


def _parameter(ssm: Any, name: str) -> Optional[str]:
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("ParameterNotFound", "ParameterVersionNotFound"):
            return None
        raise


def image_references(ec2: Any, ssm: Any, image_ids: Iterable[str], pointers: Iterable[str]) -> dict[str, list[Reference]]:
    """For each image id, everything that still uses it. Fails closed: an unreadable launch
    template or parameter raises instead of reporting "unused"."""
    wanted = set(image_ids)
    found: dict[str, list[Reference]] = {image_id: [] for image_id in wanted}
    if not wanted:
        return found
    try:
        for name in pointers:
            value = _parameter(ssm, name)
            if value in wanted:
                found[value].append(Reference("pointer", name, f"the published SSM parameter {name} names it"))

        resolved: dict[str, Optional[str]] = {}
        for page in ec2.get_paginator("describe_launch_templates").paginate():
            for template in page["LaunchTemplates"]:
                versions = ec2.get_paginator("describe_launch_template_versions").paginate(
                    LaunchTemplateId=template["LaunchTemplateId"])
                for version_page in versions:
                    for version in version_page["LaunchTemplateVersions"]:
                        image = version.get("LaunchTemplateData", {}).get("ImageId", "")
                        how = ""
                        if image.startswith(SSM_REFERENCE):
                            parameter = image[len(SSM_REFERENCE):]
                            if parameter not in resolved:
                                resolved[parameter] = _parameter(ssm, parameter)
                            image, how = resolved[parameter] or "", f" through {parameter}"
                        if image in wanted:
                            label = f"{template['LaunchTemplateName']} version {version['VersionNumber']}"
                            found[image].append(Reference(
                                "launch-template", f"{template['LaunchTemplateId']}:{version['VersionNumber']}",
                                f"launch template {label} uses it{how}"))

        ordered = sorted(wanted)
        for start in range(0, len(ordered), 100):  # EC2 caps the values of one filter
            pages = ec2.get_paginator("describe_instances").paginate(Filters=[
                {"Name": "image-id", "Values": ordered[start:start + 100]},
                {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}])
            for page in pages:
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        if instance.get("ImageId") in wanted:
                            state = instance["State"]["Name"]
                            found[instance["ImageId"]].append(Reference(
                                "instance", instance["InstanceId"], f"instance {instance['InstanceId']} ({state}) runs it"))
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise describe_error(exc, "find what still uses the images (launch templates, instances, SSM)") from None
    return found


def snapshots_of(raw_image: dict[str, Any]) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in raw_image.get("BlockDeviceMappings", []) or []
            if m.get("Ebs", {}).get("SnapshotId")]


def snapshot_users(ec2: Any) -> dict[str, set[str]]:
    """snapshot id -> the ids of this account's images built on it (a snapshot can back several)."""
    users: dict[str, set[str]] = {}
    for page in ec2.get_paginator("describe_images").paginate(Owners=["self"]):
        for raw in page["Images"]:
            for snapshot in snapshots_of(raw):
                users.setdefault(snapshot, set()).add(raw["ImageId"])
    return users


def image_gone(ec2: Any, image_id: str) -> bool:
    try:
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            return True
        raise
    return not images or images[0].get("State") == "deregistered"


def snapshot_gone(ec2: Any, snapshot_id: str) -> bool:
    try:
        return not ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "InvalidSnapshot.NotFound":
            return True
        raise


def deregister_with_snapshots(ec2: Any, image_id: str, snapshots: Iterable[str]) -> None:
    """Deregister, then delete each snapshot explicitly: DeleteAssociatedSnapshots is not
    honoured everywhere (moto leaves them), and an explicit delete can be read back."""
    ec2.deregister_image(ImageId=image_id)
    for snapshot in snapshots:
        ec2.delete_snapshot(SnapshotId=snapshot)

