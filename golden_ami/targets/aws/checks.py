"""Controls checked from outside the instance, through the EC2 API. Each returns a report row
in the same shape as the verify suite's, so the approval gate treats them alike."""
from __future__ import annotations

from typing import Any, Callable

import botocore.exceptions

# id -> title; the ids are in controls/10-baseline.yaml as well (applies: targets [aws]).
TITLES = {
    "GA-AWS-EBS-ENCRYPTED": "Every EBS volume of the AMI is encrypted",
    "GA-AWS-IMDS-V2": "The AMI requires IMDSv2 (ImdsSupport v2.0)",
    "GA-AWS-NOT-PUBLIC": "The AMI is not public",
}


def _row(control_id: str, ok: bool, message: str) -> dict[str, Any]:
    return {"id": control_id, "title": TITLES[control_id], "section": "aws", "os_id": "",
            "outcome": "pass" if ok else "fail", "message": "" if ok else message,
            "checks": [{"test": f"aws-api::{control_id}", "outcome": "pass" if ok else "fail", "message": message}]}


def _guarded(control_id: str, check: Callable[[], tuple[bool, str]]) -> dict[str, Any]:
    try:
        ok, message = check()
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        ok, message = False, f"could not check through the EC2 API: {exc}"
    return _row(control_id, ok, message)


def image_checks(ec2: Any, image_id: str) -> list[dict[str, Any]]:
    def image() -> dict[str, Any]:
        return ec2.describe_images(ImageIds=[image_id])["Images"][0]

    def encrypted() -> tuple[bool, str]:
        mappings = [m for m in image().get("BlockDeviceMappings", []) if "Ebs" in m]
        plain = [m.get("DeviceName", "?") for m in mappings if not m["Ebs"].get("Encrypted")]
        if not mappings:
            return False, "the AMI has no EBS mappings to check"
        return not plain, f"unencrypted EBS mappings: {', '.join(plain)}"

    def imds_v2() -> tuple[bool, str]:
        value = ec2.describe_image_attribute(ImageId=image_id, Attribute="imdsSupport").get("ImdsSupport", {}).get("Value")
        return value == "v2.0", f"ImdsSupport is {value!r}, expected 'v2.0'"

    def not_public() -> tuple[bool, str]:
        permissions = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission").get("LaunchPermissions", [])
        public = image().get("Public") or any(p.get("Group") == "all" for p in permissions)
        return not public, "the AMI is launchable by everyone (Group all)"

    return [
        _guarded("GA-AWS-EBS-ENCRYPTED", encrypted),
        _guarded("GA-AWS-IMDS-V2", imds_v2),
        _guarded("GA-AWS-NOT-PUBLIC", not_public),
    ]
