"""The aws target: Packer amazon-ebs, EC2 test instances, EC2 image tags and an SSM pointer.

Everything the pipeline creates carries ManagedBy=golden-ami and BuildId, so a reaper can
find what a crashed run left; everything it creates for one run is removed in a finally
block. Sharing and copies happen only after approval: an image shared at build time would
be exposed before anyone verified it.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import secrets
import shutil
import time
import urllib.request
from pathlib import Path
from datetime import datetime
from typing import Any, Iterator, Mapping, Optional

import boto3
import botocore.exceptions

from ... import provenance
from ...config import Resolved
from ...errors import UserError, VerificationError
from ...progress import Progress
from ...render import SourceImage
from ...sshkeys import KeyPair
from ..base import (BuildContext, Image, Problem, RunningInstance, Target, TestInstance, age_order,
                    statement_parameter)
from . import checks, clients, doctor, prune, reap, signing, source

MANAGED_BY = provenance.MANAGED_BY
# The approval statement's digest and signature, on the image: they name the one statement in
# SSM that is this image's approval (an older or foreign statement put there does not match).
STATEMENT_DIGEST_TAG = "ApprovalStatement"
SIGNATURE_TAG = "ApprovalSignature"
STANDARD_PARAMETER_BYTES, ADVANCED_PARAMETER_BYTES = 4096, 8192
# A launch template follows approvals only when its team tagged it so (aws.launch_templates
# names it too): the IAM policy grants new versions only on templates with this tag.
FOLLOW_TAG, FOLLOW_VALUE = "GoldenAmiFollow", "true"
CHECKIP_URL = "https://checkip.amazonaws.com"


def _tags(pairs: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": str(v)} for k, v in pairs.items()]


def _image(raw: dict[str, Any], region: str) -> Image:
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    return Image(id=raw["ImageId"], tags=provenance.migrated(tags), location=region)


def _statement_tags(envelope: dict[str, Any]) -> dict[str, str]:
    """The tags that tie an image to its statement: the payload's digest and the signature."""
    payload = base64.b64decode(envelope["payload"], validate=True)
    return {STATEMENT_DIGEST_TAG: "sha256:" + hashlib.sha256(payload).hexdigest(),
            SIGNATURE_TAG: envelope["signatures"][0]["sig"]}


def runner_cidrs(configured: list[str]) -> list[str]:
    """Where SSH may come from: the configured CIDRs, else this runner's address as a /32."""
    if configured:
        return list(configured)
    try:
        with urllib.request.urlopen(CHECKIP_URL, timeout=10) as response:  # noqa: S310 - fixed https URL
            address = ipaddress.ip_address(response.read().decode().strip())
    except (OSError, ValueError) as exc:
        raise UserError(f"could not look up this runner's public address ({exc}): set aws.ssh_cidrs") from None
    return [f"{address}/{32 if address.version == 4 else 128}"]


class AwsTarget(Target):
    name = "aws"
    finds_instances_by_id = True

    @property
    def region(self) -> str:
        return self.settings.aws.region

    def _ec2(self, region: Optional[str] = None) -> Any:
        return clients.client("ec2", region or self.region)

    def _ssm(self, region: Optional[str] = None) -> Any:
        return clients.client("ssm", region or self.region)

    # --- prerequisites and sources ---
    def problems(self, cfg: Optional[Resolved] = None) -> list[Problem]:
        found = []
        if shutil.which(self.settings.packer.binary) is None:
            found.append(Problem("packer is not installed", "apt-get install packer"))
        try:
            if boto3.Session().get_credentials() is None:
                found.append(Problem("no AWS credentials", "set AWS_PROFILE, run aws sso login, or use a role"))
        except Exception as exc:  # noqa: BLE001 - reported as the problem
            found.append(Problem(f"AWS credentials unreadable: {exc}", "check AWS_PROFILE"))
        return found

    def resolve_source(self, cfg: Resolved, pinned: Optional[str] = None) -> SourceImage:
        if cfg.settings.disk_layout != "single":
            # Separate EBS volumes for /var, /var/tmp, /var/log, /var/log/audit and /home are not
            # built yet: refused here rather than an image whose mount-option controls claim
            # filesystems it does not have.
            raise UserError(f"disk_layout: {cfg.settings.disk_layout} is built on the local target only; "
                            "the aws target builds disk_layout: single")
        if pinned:
            source.check_pinned(pinned)
        return source.resolve(cfg, self._ec2(), self._ssm(), pinned)

    # --- build ---
    def packer_variables(self, cfg: Resolved, ctx: BuildContext) -> dict[str, Any]:
        aws = cfg.settings.aws
        cidrs = runner_cidrs(aws.ssh_cidrs)
        if any(ipaddress.ip_network(c, strict=False).prefixlen == 0 for c in cidrs):
            ctx.progress.say("WARNING: aws.ssh_cidrs opens SSH to the whole internet, as configured")
        return {
            "ami_name": f"golden-{ctx.build_id}",
            "runner_cidrs": cidrs,
            "subnet_id": aws.subnet_id,
            "vpc_id": aws.vpc_id,
            "iam_instance_profile": aws.build_instance_profile,
            "kms_key_id": aws.kms_key_id,
            "ec2_endpoint": clients.endpoint_url() or "",
            "ssh_interface": aws.ssh_interface,
            "ssh_port": aws.ssh_port,
            "spot": aws.spot,
            # The template merges this map into every tag set it writes (it spells no key itself).
            "provenance": provenance.tags(cfg, ctx),
        }

    def register_candidate(self, cfg: Resolved, ctx: BuildContext, manifest: dict[str, Any]) -> Image:
        artifact = manifest["builds"][-1]["artifact_id"]  # "us-east-1:ami-0123…[,region:ami-…]"
        amis = dict(part.split(":", 1) for part in artifact.split(","))
        image_id = amis.get(self.region)
        if not image_id:
            raise RuntimeError(f"Packer's manifest names no AMI in {self.region}: {artifact}")
        ec2 = self._ec2()
        # Packer 1.6.6 cannot set the AMI's IMDS support; boto3 can, right after the build.
        ec2.modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v2.0"})
        return self.set_tags(image_id, {"CreatedAt": ctx.created_at, "Status": "candidate", "Target": "aws"})

    # --- verify ---
    @contextlib.contextmanager
    def boot_test_instance(
        self, cfg: Resolved, image: Image, key: KeyPair, work_dir: Path, progress: Progress
    ) -> Iterator[TestInstance]:
        aws = cfg.settings.aws
        ec2 = self._ec2()
        build_id = image.tags.get("BuildId", "unknown")
        suffix = secrets.token_hex(4)
        labels = {"ManagedBy": MANAGED_BY, "BuildId": build_id, "Purpose": "verify"}
        key_name = sg_id = instance_id = None
        try:
            key_name = f"golden-ami-verify-{suffix}"
            ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=key.public_key.encode(),
                                TagSpecifications=[{"ResourceType": "key-pair", "Tags": _tags(labels)}])
            vpc_id = aws.vpc_id or self._vpc_of(ec2, aws.subnet_id)
            sg_id = ec2.create_security_group(
                GroupName=f"golden-ami-verify-{suffix}", Description="golden-ami verify: SSH from the runner only",
                VpcId=vpc_id, TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(labels)}],
            )["GroupId"]
            ec2.authorize_security_group_ingress(GroupId=sg_id, IpPermissions=[{
                "IpProtocol": "tcp", "FromPort": aws.ssh_port, "ToPort": aws.ssh_port,
                "IpRanges": [{"CidrIp": c, "Description": "golden-ami runner"} for c in runner_cidrs(aws.ssh_cidrs)
                             if ":" not in c],
                "Ipv6Ranges": [{"CidrIpv6": c} for c in runner_cidrs(aws.ssh_cidrs) if ":" in c],
            }])
            request: dict[str, Any] = {
                "ImageId": image.id, "InstanceType": aws.instance_type, "MinCount": 1, "MaxCount": 1,
                "KeyName": key_name, "SecurityGroupIds": [sg_id],
                "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
                "InstanceInitiatedShutdownBehavior": "terminate",
                "TagSpecifications": [{"ResourceType": kind, "Tags": _tags({**labels, "Name": f"golden-ami-verify-{build_id}"})}
                                      for kind in ("instance", "volume")],
            }
            if aws.subnet_id:
                request["SubnetId"] = aws.subnet_id
            if aws.verify_instance_profile:
                request["IamInstanceProfile"] = {"Name": aws.verify_instance_profile}
            instance_id = ec2.run_instances(**request)["Instances"][0]["InstanceId"]
            progress.say(f"test instance {instance_id} launched; waiting for it to run")
            ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig={"Delay": 5, "MaxAttempts": 120})
            described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
            address = described.get("PublicIpAddress") if aws.ssh_interface == "public_ip" else described.get("PrivateIpAddress")
            if not address:
                raise VerificationError(f"{instance_id} has no {aws.ssh_interface.replace('_', ' ')}: "
                                        "set aws.ssh_interface or use a subnet that assigns one")

            def console_text() -> str:
                return ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""

            yield TestInstance(
                ssh_host=address, ssh_port=aws.ssh_port, login_user=cfg.target_os.login_user, key=key,
                instance_id=instance_id, console_text=console_text,
                boot_timeout_seconds=aws.console_timeout_seconds,
                details={"region": self.region, "security_group": sg_id, "key_pair": key_name},
            )
        finally:
            self._teardown(ec2, instance_id, key_name, sg_id, progress)

    @staticmethod
    def _vpc_of(ec2: Any, subnet_id: str) -> str:
        if subnet_id:
            return ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["VpcId"]
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise UserError("this region has no default VPC: set aws.subnet_id (and aws.vpc_id)")
        return vpcs[0]["VpcId"]

    @staticmethod
    def _teardown(ec2: Any, instance_id: Optional[str], key_name: Optional[str], sg_id: Optional[str],
                  progress: Progress) -> None:
        """Terminate, then delete key pair and security group; each step tried even if one fails."""
        errors = []
        if instance_id:
            try:
                ec2.terminate_instances(InstanceIds=[instance_id])
                ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance_id],
                                                           WaiterConfig={"Delay": 5, "MaxAttempts": 120})
            except (botocore.exceptions.ClientError, botocore.exceptions.WaiterError) as exc:
                errors.append(f"instance {instance_id}: {exc}")
        if key_name:
            try:
                ec2.delete_key_pair(KeyName=key_name)
            except botocore.exceptions.ClientError as exc:
                errors.append(f"key pair {key_name}: {exc}")
        if sg_id:
            for attempt in range(24):  # the group stays in use until the instance's ENI is gone
                try:
                    ec2.delete_security_group(GroupId=sg_id)
                    break
                except botocore.exceptions.ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "DependencyViolation" or attempt == 23:
                        errors.append(f"security group {sg_id}: {exc}")
                        break
                    time.sleep(5)
        if errors:
            progress.say("teardown left resources behind (invoke reap finds them by tag): " + "; ".join(errors))
        else:
            progress.say("test instance, key pair and security group removed")

    def outside_checks(self, cfg: Resolved, image: Image, instance: TestInstance) -> list[dict[str, Any]]:
        return checks.image_checks(self._ec2(), image.id)

    # --- registry ---
    def find_instance(self, cfg: Resolved, instance_id: str) -> RunningInstance:
        """The instance from describe_instances: its SSH address by aws.ssh_interface, the AMI
        it was launched from, and its console output (host keys)."""
        aws = cfg.settings.aws
        ec2 = self._ec2(aws.region)
        try:
            reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except botocore.exceptions.ClientError as exc:
            raise clients.describe_error(exc, f"describe {instance_id}") from None
        if not reservations or not reservations[0]["Instances"]:
            raise UserError(f"no instance {instance_id} in {aws.region}")
        described = reservations[0]["Instances"][0]
        state = described.get("State", {}).get("Name", "")
        if state != "running":
            raise UserError(f"{instance_id} is {state or 'in no known state'}, not running: nothing to audit")
        address = described.get("PublicIpAddress") if aws.ssh_interface == "public_ip" else described.get("PrivateIpAddress")
        if not address:
            raise UserError(f"{instance_id} has no {aws.ssh_interface.replace('_', ' ')}: set aws.ssh_interface")

        def console_text() -> str:
            return ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""

        return RunningInstance(instance_id, address, aws.ssh_port, described.get("ImageId", ""),
                               {"region": aws.region, "state": state, "launched": str(described.get("LaunchTime", ""))},
                               console_text)

    def get_image(self, image_id: str) -> Image:
        try:
            images = self._ec2().describe_images(ImageIds=[image_id])["Images"]
        except botocore.exceptions.ClientError as exc:
            raise clients.describe_error(exc, f"describe {image_id}") from None
        if not images:
            raise UserError(f"no AMI {image_id} in {self.region}")
        return _image(images[0], self.region)

    def doctor_findings(self, probe_kvm: bool = True) -> list[doctor.Finding]:
        return [doctor.credentials_finding()]

    # --- lifecycle ---
    def prune_plans(self, os_names: list[str], refused: Mapping[str, Mapping[str, list[str]]],
                    now: Optional[datetime] = None) -> list[prune.AwsPrunePlan]:
        """One plan per region (aws.region and every copy region) and OS. Copies in other regions
        carry the tags but not a statement of their own: they are counted by their tags."""
        aws = self.settings.aws
        regions = list(dict.fromkeys([aws.region, *aws.copy_regions]))
        return [prune.plan_aws(self.settings, name, region, now=now,
                               refused=refused.get(name, {}) if region == aws.region else {})
                for region in regions for name in os_names]

    def reap_plan(self, older_than_hours: float, candidates_older_than_hours: float,
                  now: Optional[datetime] = None) -> reap.AwsReapPlan:
        return reap.plan_aws(self.settings, older_than_hours, candidates_older_than_hours, now=now)

    def list_images(self, os_name: Optional[str] = None, status: Optional[str] = None) -> list[Image]:
        filters = [{"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}]
        if os_name:
            filters.append({"Name": "tag:OS", "Values": [os_name]})
        if status:
            filters.append({"Name": "tag:Status", "Values": [status]})
        try:
            raw = self._ec2().describe_images(Owners=["self"], Filters=filters)["Images"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise clients.describe_error(exc, "list the pipeline's AMIs") from None
        created = {r["ImageId"]: r.get("CreationDate", "") for r in raw}
        images = [_image(r, self.region) for r in raw]
        return sorted(images, key=lambda i: age_order(i.id, i.tags, created[i.id]))

    def _snapshots_of(self, ec2: Any, image_id: str) -> list[str]:
        image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]

    def set_tags(self, image_id: str, tags: dict[str, Optional[str]], region: Optional[str] = None) -> Image:
        ec2 = self._ec2(region)
        resources = [image_id, *self._snapshots_of(ec2, image_id)]
        present = {k: v for k, v in tags.items() if v is not None}
        absent = [k for k, v in tags.items() if v is None]
        try:
            if present:
                ec2.create_tags(Resources=resources, Tags=_tags(present))
            if absent:
                ec2.delete_tags(Resources=resources, Tags=[{"Key": k} for k in absent])
        except botocore.exceptions.ClientError as exc:
            raise clients.describe_error(exc, f"tag {image_id}") from None
        after = _image(ec2.describe_images(ImageIds=[image_id])["Images"][0], region or self.region)
        for key, value in tags.items():
            if after.tags.get(key) != value:
                raise RuntimeError(f"tag {key} of {image_id} did not change as asked")
        return after

    # --- approval statements: signed by a KMS key, kept in SSM, named by the image's tags ---
    @property
    def signs_approvals(self) -> bool:  # type: ignore[override]
        # A consumer's config may pin the public key alone: it checks approvals, it cannot sign.
        return bool(self.settings.aws.signing_kms_key_id or self.settings.aws.signing_public_key)

    def _kms(self) -> Any:
        return clients.client("kms", self.region)

    def approval_signer(self) -> Any:
        key_id = self.settings.aws.signing_kms_key_id
        if not key_id:
            raise UserError("aws.signing_public_key is set but aws.signing_kms_key_id is not: this configuration "
                            "can check approvals, not sign them")
        kms = self._kms()
        signer = signing.KmsSigner(kms, key_id, signing.kms_public_key(kms, key_id))
        pinned = self._pinned_key()
        if pinned is not None and pinned.keyid != signer.public_key.keyid:
            raise UserError(f"aws.signing_kms_key_id {key_id} is not the key aws.signing_public_key pins: "
                            "its approvals would verify for no consumer")
        return signer

    def _pinned_key(self) -> Any:
        from ... import attest  # deferred: securesystemslib and the verify suite, only for approvals

        path = self.settings.aws.signing_public_key
        if not path:
            return None
        try:
            return attest.key_from_pem(Path(path).expanduser().read_text())
        except OSError as exc:
            raise UserError(f"aws.signing_public_key {path}: {exc.strerror}") from None

    def approval_keys(self) -> list[Any]:
        pinned = self._pinned_key()
        if pinned is not None:
            return [pinned]
        key_id = self.settings.aws.signing_kms_key_id
        return [signing.kms_public_key(self._kms(), key_id)] if key_id else []

    def subject_digest(self, image: Image) -> dict[str, str]:
        # An AMI cannot change its snapshots once registered: the id, region and snapshot ids
        # name its content.
        named = {"image": image.id, "region": image.location, "snapshots": sorted(self._snapshots_of(self._ec2(), image.id))}
        return {"sha256": hashlib.sha256(json.dumps(named, sort_keys=True, separators=(",", ":")).encode()).hexdigest()}

    def statement_parameter(self, image_id: str) -> str:
        return statement_parameter(self.settings.aws.ssm_parameter_prefix, image_id)

    def save_statement(self, image_id: str, envelope: Optional[dict[str, Any]]) -> None:
        if envelope is None and not self.signs_approvals:
            return
        name = self.statement_parameter(image_id)
        ssm = self._ssm()
        try:
            if envelope is None:
                with contextlib.suppress(ssm.exceptions.ParameterNotFound):
                    ssm.delete_parameter(Name=name)
                self.set_tags(image_id, {STATEMENT_DIGEST_TAG: None, SIGNATURE_TAG: None})
                return
            value = json.dumps(envelope, sort_keys=True, separators=(",", ":"))
            if len(value.encode()) > ADVANCED_PARAMETER_BYTES:
                raise UserError(f"the approval statement of {image_id} is {len(value.encode())} bytes, more than an "
                                f"SSM parameter holds ({ADVANCED_PARAMETER_BYTES})")
            tier = "Standard" if len(value.encode()) <= STANDARD_PARAMETER_BYTES else "Advanced"
            ssm.put_parameter(Name=name, Value=value, Type="String", Tier=tier, Overwrite=True,
                              Description=f"signed golden-ami approval statement of {image_id}")
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise clients.describe_error(exc, f"keep the approval statement of {image_id} in SSM {name}") from None
        self.set_tags(image_id, _statement_tags(envelope))

    def load_statement(self, image_id: str) -> Optional[dict[str, Any]]:
        ssm = self._ssm()
        try:
            value = ssm.get_parameter(Name=self.statement_parameter(image_id))["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            return None
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise clients.describe_error(exc, f"read the approval statement of {image_id}") from None
        try:
            loaded = json.loads(value)
        except ValueError:
            return {}  # (checked as "not a DSSE envelope")
        return loaded if isinstance(loaded, dict) else {}

    def statement_problems(self, image: Image, envelope: dict[str, Any]) -> list[str]:
        try:
            expected = _statement_tags(envelope)
        except (KeyError, TypeError, ValueError, IndexError):
            return []  # (the envelope itself is reported as malformed)
        return [f"its {tag} tag ({image.tags.get(tag)!r}) does not name the statement in SSM "
                f"{self.statement_parameter(image.id)}" for tag, value in expected.items() if image.tags.get(tag) != value]

    # --- after approval ---
    def publish(self, cfg: Resolved, image: Image, progress: Progress) -> dict[str, str]:
        aws = cfg.settings.aws
        done: dict[str, str] = {}
        ec2 = self._ec2()
        # Before anything changes: a template that may not follow approvals stops the publish.
        templates = self._templates_to_follow(ec2, aws.launch_templates)
        permissions = ([{"UserId": a} for a in aws.share_accounts]
                       + [{"OrganizationArn": a} for a in aws.share_organization_arns]
                       + [{"OrganizationalUnitArn": a} for a in aws.share_ou_arns])
        if permissions:
            ec2.modify_image_attribute(ImageId=image.id, LaunchPermission={"Add": permissions})
            if aws.kms_key_id and aws.share_accounts:
                # A customer-managed key: accounts also need to create volumes from the snapshots
                # (and the key policy must grant them kms:Decrypt / CreateGrant).
                for snapshot in self._snapshots_of(ec2, image.id):
                    ec2.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission",
                                                  OperationType="add", UserIds=list(aws.share_accounts))
            done["launch permissions"] = ", ".join(next(iter(p.values())) for p in permissions)
        copies = {self.region: image.id}
        for region in aws.copy_regions:
            if region == self.region:
                continue
            copies[region] = self._copy(cfg, image, region, progress)
        name = f"{aws.ssm_parameter_prefix.rstrip('/')}/{cfg.os.name}/latest"
        for region, image_id in copies.items():
            ssm = self._ssm(region)
            ssm.put_parameter(Name=name, Value=image_id, Type="String", DataType="aws:ec2:image", Overwrite=True,
                              Description=f"newest approved golden-ami {cfg.os.name} image")
            if ssm.get_parameter(Name=name)["Parameter"]["Value"] != image_id:
                raise RuntimeError(f"SSM parameter {name} in {region} does not name {image_id}")
            done[f"{name} ({region})"] = image_id
        for entry, template in templates:
            done[f"launch template {template['LaunchTemplateName']} ({template['LaunchTemplateId']})"] = (
                self._follow(ec2, template, entry.set_default, image, progress))
        return done

    @staticmethod
    def _templates_to_follow(ec2: Any, entries: Any) -> list[tuple[Any, dict[str, Any]]]:
        """Each configured launch template as EC2 describes it; refused unless tagged to follow."""
        found = []
        for entry in entries:
            request = {"LaunchTemplateIds": [entry.id]} if entry.id else {"LaunchTemplateNames": [entry.name]}
            try:
                templates = ec2.describe_launch_templates(**request)["LaunchTemplates"]
            except botocore.exceptions.ClientError as exc:
                raise clients.describe_error(exc, f"find launch template {entry.label} (aws.launch_templates)") from None
            if not templates:
                raise UserError(f"no launch template {entry.label} (aws.launch_templates) in this region")
            template = templates[0]
            tags = {t["Key"]: t["Value"] for t in template.get("Tags", [])}
            if tags.get(FOLLOW_TAG) != FOLLOW_VALUE:
                raise UserError(f"launch template {entry.label} ({template['LaunchTemplateId']}) is not tagged "
                                f"{FOLLOW_TAG}={FOLLOW_VALUE}: tag it so to let approvals update it (the IAM policy "
                                "requires the tag too), or remove it from aws.launch_templates")
            found.append((entry, template))
        return found

    @staticmethod
    def _follow(ec2: Any, template: dict[str, Any], set_default: bool, image: Image, progress: Progress) -> str:
        """A new version of the template with only its ImageId changed, made from its default
        version; none when the latest version already launches this image. Read back."""
        template_id, name = template["LaunchTemplateId"], template["LaunchTemplateName"]

        def version(which: str) -> dict[str, Any]:
            return ec2.describe_launch_template_versions(LaunchTemplateId=template_id,
                                                         Versions=[which])["LaunchTemplateVersions"][0]

        try:
            latest = version("$Latest")
            if latest.get("LaunchTemplateData", {}).get("ImageId") == image.id:
                number = latest["VersionNumber"]
                progress.say(f"launch template {name}: version {number} already launches {image.id}")
            else:
                source = template["DefaultVersionNumber"]
                created = ec2.create_launch_template_version(
                    LaunchTemplateId=template_id, SourceVersion=str(source),
                    LaunchTemplateData={"ImageId": image.id},
                    VersionDescription=f"golden-ami {image.id} (build {image.tags.get('BuildId', '?')})"[:255],
                )["LaunchTemplateVersion"]
                number = created["VersionNumber"]
                progress.say(f"launch template {name}: version {number} (from version {source}) launches {image.id}")
            if set_default:
                ec2.modify_launch_template(LaunchTemplateId=template_id, DefaultVersion=str(number))
            after = version(str(number))
        except botocore.exceptions.ClientError as exc:
            raise clients.describe_error(exc, f"make launch template {name} launch {image.id}") from None
        if after.get("LaunchTemplateData", {}).get("ImageId") != image.id:
            raise RuntimeError(f"launch template {name} version {number} does not launch {image.id}")
        if set_default and not after.get("DefaultVersion"):
            raise RuntimeError(f"launch template {name} version {number} did not become the default")
        return f"version {number}" + (" (default)" if after.get("DefaultVersion") else "")

    def _copy(self, cfg: Resolved, image: Image, region: str, progress: Progress) -> str:
        ec2 = self._ec2(region)
        progress.say(f"copying {image.id} to {region}")
        copy_id = ec2.copy_image(SourceRegion=self.region, SourceImageId=image.id, Name=f"golden-{image.tags['BuildId']}",
                                 Encrypted=True)["ImageId"]
        ec2.get_waiter("image_available").wait(ImageIds=[copy_id], WaiterConfig={"Delay": 15, "MaxAttempts": 240})
        # ManagedBy first, alone: the IAM policy lets the role modify (and later share) only images
        # that carry it, and lets it tag an untagged image only with Packer's build tags.
        self.set_tags(copy_id, {"ManagedBy": MANAGED_BY}, region=region)
        ec2.modify_image_attribute(ImageId=copy_id, ImdsSupport={"Value": "v2.0"})
        carried = {k: v for k, v in image.tags.items() if not k.startswith("aws:")}
        self.set_tags(copy_id, {**carried, "CopiedFrom": f"{self.region}:{image.id}"}, region=region)
        return copy_id
