"""`invoke doctor`: what this machine lacks for each target, each with its fix."""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from . import config
from .targets.local import accel, base_image


@dataclass(frozen=True)
class Finding:
    area: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _tool(area: str, binary: str, package: str) -> Finding:
    path = shutil.which(binary)
    if path:
        return Finding(area, True, f"{binary}: {path}")
    return Finding(area, False, f"{binary} is not installed", f"apt-get install {package}")


def check(state_dir: Path, targets: tuple[str, ...] = ("local", "aws"), probe_kvm: bool = True) -> list[Finding]:
    found: list[Finding] = [_tool("common", "packer", "packer")]
    if "local" in targets:
        found += [
            _tool("local", "qemu-system-x86_64", "qemu-system-x86"),
            _tool("local", "qemu-img", "qemu-utils"),
            _tool("local", "xorriso", "xorriso"),
            _tool("local", "mmdebstrap", "mmdebstrap"),
            _tool("local", "mke2fs", "e2fsprogs"),
            _tool("local", "sfdisk", "fdisk"),
        ]
        if probe_kvm and shutil.which("qemu-system-x86_64"):
            chosen = accel.choose("auto", state_dir)
            if chosen.name == "kvm":
                found.append(Finding("local", True, f"accelerator: KVM ({chosen.reason})"))
            else:
                found.append(Finding("local", True, f"accelerator: TCG software emulation ({chosen.reason}); "
                                                    "builds are slower but work"))
        for os_name in config.available_os():
            image = base_image.load(state_dir, os_name)
            if image:
                found.append(Finding("local", True, f"base image {os_name}: {image.name} ({image.path})"))
            else:
                data = config.load_os_data(os_name)
                how = (f"invoke base-image --os={os_name}" if data.targets["local"].source.recipe
                       else f"invoke base-image --os={os_name} --from PATH-TO-CLOUD-IMAGE")
                found.append(Finding("local", False, f"no base image for {os_name}", how))
        if os.geteuid() != 0:
            found.append(Finding("local", False, "not root: invoke base-image needs root", "run it as root"))
    if "aws" in targets:
        found.append(_aws_credentials())
    return found


def _aws_credentials() -> Finding:
    try:
        import boto3

        session = boto3.Session()
        credentials = session.get_credentials()
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        return Finding("aws", False, f"AWS credentials could not be read: {exc}", "check AWS_PROFILE / ~/.aws/config")
    if credentials is None:
        return Finding("aws", False, "no AWS credentials found",
                       "set AWS_PROFILE, run aws sso login, or use an instance/OIDC role")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    where = f" (endpoint {endpoint})" if endpoint else ""
    try:
        import botocore.config

        sts = session.client("sts", region_name=session.region_name or "us-east-1",
                             config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10))
        account = sts.get_caller_identity()["Account"]
    except Exception as exc:  # noqa: BLE001 - the finding says what failed
        return Finding("aws", False, f"AWS credentials from {credentials.method}{where} do not work: {exc}",
                       "check the credentials, AWS_ENDPOINT_URL and the network")
    return Finding("aws", True, f"AWS account {account}, credentials from {credentials.method}{where}")
