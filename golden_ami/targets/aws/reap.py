"""Reap on aws: what a crashed or killed run left in aws.region (golden_ami/reaper.py).

  - instances tagged ManagedBy=golden-ami, Purpose build or verify, not terminated, launched
    more than ``older_than`` ago;
  - key pairs and security groups named golden-ami-verify-* (the test instance's; the groups
    also tagged ManagedBy) that no live instance uses and that are older than ``older_than``;
  - Packer's packer_<uuid> key pairs and security groups. Packer 1.6.6 tags neither, so:
    one that carries our ManagedBy tag, or that an instance tagged ManagedBy uses or used, is
    ours and goes by ``older_than``. An untagged, unlinked one might be another Packer user's:
    it goes only if no live instance uses it, (groups) its description is Packer's own
    "Temporary group for Packer", and it is older than both ``older_than`` and the longest a
    golden-ami Packer build may run (packer.timeout_minutes). Its age comes from the name:
    Packer's time-ordered UUID starts with the creation time (unix seconds, 8 hex digits);
    a key pair's CreateTime counts too, and the younger of the two ages is used;
  - candidate images (Status=candidate) older than ``candidates_older_than`` with their
    snapshots, unless something still uses them (see images.image_references);
  - snapshots tagged ManagedBy that no image uses any more, and unattached volumes tagged
    ManagedBy, older than ``candidates_older_than``.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import botocore.exceptions

from ...config import Settings
from ...plans import (DEFAULT_CANDIDATES_OLDER_THAN_HOURS, DEFAULT_OLDER_THAN_HOURS, ChangeResult, Kept, Leftover,
                      ReapPlan, age_since, age_text)
from ...provenance import MANAGED_BY
from ...utctime import parse_time, utcnow
from . import clients, images

VERIFY_PREFIX = "golden-ami-verify-"
PACKER_NAME = re.compile(r"^packer_(?P<stamp>[0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PACKER_GROUP_DESCRIPTION = "Temporary group for Packer"


@dataclass
class AwsReapPlan(ReapPlan):
    # settings name the SSM pointers checked once more before a candidate image goes; the
    # clients are a test's (else made for `where`).
    settings: Optional[Settings] = field(default=None, repr=False, compare=False)
    ec2: Any = field(default=None, repr=False, compare=False)
    ssm: Any = field(default=None, repr=False, compare=False)

    def _carry_out(self, ec2: Any = None, ssm: Any = None, settings: Optional[Settings] = None) -> list[ChangeResult]:
        return _carry_out(self, ec2 or self.ec2 or clients.client("ec2", self.where),
                          ssm or self.ssm or clients.client("ssm", self.where), settings or self.settings)


def packer_name_time(name: str) -> Optional[datetime]:
    """When Packer made a packer_<uuid> resource: its time-ordered UUID starts with unix seconds."""
    match = PACKER_NAME.match(name)
    return datetime.fromtimestamp(int(match["stamp"], 16), timezone.utc) if match else None


def _paged(ec2: Any, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [item for page in ec2.get_paginator(operation).paginate(**kwargs) for item in page[key]]


def _instances(ec2: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for r in _paged(ec2, "describe_instances", "Reservations", Filters=filters) for i in r["Instances"]]


def plan_aws(settings: Settings, older_than_hours: float = DEFAULT_OLDER_THAN_HOURS,
             candidates_older_than_hours: float = DEFAULT_CANDIDATES_OLDER_THAN_HOURS, region: Optional[str] = None,
             *, ec2: Any = None, ssm: Any = None, now: Optional[datetime] = None) -> AwsReapPlan:
    region = region or settings.aws.region
    ec2 = ec2 or clients.client("ec2", region)
    ssm = ssm or clients.client("ssm", region)
    try:
        return _plan_aws(settings, region, older_than_hours, candidates_older_than_hours, ec2, ssm, now or utcnow())
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise clients.describe_error(exc, f"look for leftovers in {region}") from None


def _plan_aws(settings: Settings, region: str, older_than_hours: float, candidates_older_than_hours: float,
              ec2: Any, ssm: Any, now: datetime) -> AwsReapPlan:
    limit, candidate_limit = timedelta(hours=older_than_hours), timedelta(hours=candidates_older_than_hours)
    # An untagged Packer resource cannot belong to a live golden-ami build older than this.
    foreign_limit = max(limit, timedelta(minutes=settings.packer.timeout_minutes + 30))
    plan = AwsReapPlan("aws", region, older_than_hours, candidates_older_than_hours, settings=settings, ec2=ec2, ssm=ssm)

    # 1. Our instances, and what every instance in the account uses (key pairs, groups).
    ours_all = _instances(ec2, [{"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}])
    doomed: set[str] = set()
    for instance in ours_all:
        tags, state = images.tags_of(instance), instance["State"]["Name"]
        if state not in images.LIVE_INSTANCE_STATES:
            continue
        if tags.get("Purpose") not in ("build", "verify"):
            plan.kept.append(Kept("instance", instance["InstanceId"], f"Purpose={tags.get('Purpose', '')!r}: "
                                  "not a build or test instance"))
            continue
        age = age_since(now, parse_time(instance.get("LaunchTime")))
        if age is None or age < limit:
            plan.kept.append(Kept("instance", instance["InstanceId"], f"{tags['Purpose']} instance ({state}), "
                                  f"{age_text(age)} (threshold {older_than_hours:g} h)"))
            continue
        doomed.add(instance["InstanceId"])
        plan.leftovers.append(Leftover("instance", instance["InstanceId"],
                                       f"{tags['Purpose']} instance ({state}) of build {tags.get('BuildId', '?')}, "
                                       f"launched {age_text(age).replace(' old', ' ago')}"))
    linked_keys = {i["KeyName"] for i in ours_all if i.get("KeyName")}
    linked_groups = {g["GroupId"] for i in ours_all for g in i.get("SecurityGroups", [])}
    live_keys: dict[str, list[str]] = {}
    live_groups: dict[str, list[str]] = {}
    for instance in _instances(ec2, [{"Name": "instance-state-name", "Values": [*images.LIVE_INSTANCE_STATES, "shutting-down"]}]):
        if instance["InstanceId"] in doomed:
            continue
        if instance.get("KeyName"):
            live_keys.setdefault(instance["KeyName"], []).append(instance["InstanceId"])
        for group in instance.get("SecurityGroups", []):
            live_groups.setdefault(group["GroupId"], []).append(instance["InstanceId"])

    # 2. Key pairs.
    key_ages: dict[str, Optional[timedelta]] = {}
    for key in ec2.describe_key_pairs()["KeyPairs"]:
        name, tags = key["KeyName"], images.tags_of(key)
        created = parse_time(key.get("CreateTime"))
        if name.startswith(VERIFY_PREFIX):
            key_ages[name] = age_since(now, created)
            ours, threshold = True, limit
        elif PACKER_NAME.match(name):
            stamps = [t for t in (created, packer_name_time(name)) if t]
            created = max(stamps) if stamps else None  # the younger age: the conservative one
            ours = tags.get("ManagedBy") == MANAGED_BY or name in linked_keys
            threshold = limit if ours else foreign_limit
        else:
            continue
        age = age_since(now, created)
        if live_keys.get(name):
            plan.kept.append(Kept("key-pair", name, f"live instance(s) {', '.join(live_keys[name])} use it"))
        elif age is None or age < threshold:
            plan.kept.append(Kept("key-pair", name, f"{age_text(age)} (threshold {threshold.total_seconds() / 3600:g} h"
                                  f"{'' if ours else ', untagged Packer key: at least a Packer build timeout'})"))
        else:
            whose = "the test instance's key pair" if name.startswith(VERIFY_PREFIX) else (
                "Packer's key pair for a golden-ami build" if ours else
                "an untagged Packer key pair (Packer 1.6.6 tags none) that no instance uses")
            plan.leftovers.append(Leftover("key-pair", name, f"{whose}, {age_text(age)}", {"key_pair_id": key.get("KeyPairId", "")}))

    # 3. Security groups (EC2 records no creation time for them: see the module docstring).
    doomed_keys = {x.ident for x in plan.leftovers if x.kind == "key-pair"}
    for group in _paged(ec2, "describe_security_groups", "SecurityGroups"):
        name, group_id, tags = group["GroupName"], group["GroupId"], images.tags_of(group)
        if name.startswith(VERIFY_PREFIX) and tags.get("ManagedBy") == MANAGED_BY:
            partner = name  # the key pair of the same run has the same name, and is made first
            if partner in doomed_keys:
                why = f"the test instance's group; its key pair {partner} is reaped too"
            elif partner not in key_ages:
                why = "the test instance's group; its key pair is gone, so that run's teardown began and did not finish"
            else:
                plan.kept.append(Kept("security-group", group_id, f"{name}: its key pair {partner} is kept "
                                      f"({age_text(key_ages[partner])}, threshold {older_than_hours:g} h)"))
                continue
        elif PACKER_NAME.match(name):
            ours = tags.get("ManagedBy") == MANAGED_BY or group_id in linked_groups
            if not ours and group.get("Description") != PACKER_GROUP_DESCRIPTION:
                continue
            threshold = limit if ours else foreign_limit
            age = age_since(now, packer_name_time(name))
            if age is None or age < threshold:
                plan.kept.append(Kept("security-group", group_id, f"{name}: {age_text(age)} (threshold "
                                      f"{threshold.total_seconds() / 3600:g} h)"))
                continue
            why = (f"Packer's group for a golden-ami build, {age_text(age)}" if ours else
                   f"an untagged Packer group that no instance uses, {age_text(age)}")
        else:
            continue
        users = live_groups.get(group_id, [])
        interfaces = [n["NetworkInterfaceId"] for n in _paged(ec2, "describe_network_interfaces", "NetworkInterfaces",
                                                              Filters=[{"Name": "group-id", "Values": [group_id]}])
                      if n.get("Attachment", {}).get("InstanceId") not in doomed]
        if users or interfaces:
            plan.kept.append(Kept("security-group", group_id, f"{name}: in use by {', '.join(users + interfaces)}"))
            continue
        plan.leftovers.append(Leftover("security-group", group_id, f"{name}: {why}", {"name": name}))

    # 4. Candidate images, old enough, that nothing else uses.
    candidates = _paged(ec2, "describe_images", "Images", Owners=["self"], Filters=[
        {"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}, {"Name": "tag:Status", "Values": ["candidate"]}])
    old = []
    for image in candidates:
        tags = images.tags_of(image)
        stamps = [t for t in (parse_time(image.get("CreationDate")), parse_time(tags.get("CreatedAt"))) if t]
        age = age_since(now, max(stamps) if stamps else None)
        if age is None or age < candidate_limit:
            plan.kept.append(Kept("image", image["ImageId"], f"candidate, {age_text(age)} (threshold "
                                  f"{candidates_older_than_hours:g} h)"))
        else:
            old.append((image, tags, age))
    pointers = sorted({images.pointer_name(settings, tags.get("OS", "")) for _, tags, _ in old if tags.get("OS")})
    references = images.image_references(ec2, ssm, [i["ImageId"] for i, _, _ in old], pointers)
    users_of = images.snapshot_users(ec2)
    doomed_snapshots: set[str] = set()
    for image, tags, age in old:
        refs = [r for r in references[image["ImageId"]] if not (r.kind == "instance" and r.ident in doomed)]
        if refs:
            plan.kept.append(Kept("image", image["ImageId"], "; ".join(r.text for r in refs)))
            continue
        snapshots = [s for s in images.snapshots_of(image) if not users_of.get(s, set()) - {image["ImageId"]}]
        doomed_snapshots.update(snapshots)
        plan.leftovers.append(Leftover("image", image["ImageId"],
                                       f"candidate of build {tags.get('BuildId', '?')} never approved or rejected, "
                                       f"{age_text(age)}", {"snapshots": snapshots, "os": tags.get("OS", "")}))

    # 5. Snapshots no image uses any more, and unattached volumes.
    for snapshot in _paged(ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"],
                           Filters=[{"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}]):
        sid = snapshot["SnapshotId"]
        if sid in doomed_snapshots or users_of.get(sid):
            continue
        age = age_since(now, parse_time(snapshot.get("StartTime")))
        if snapshot.get("State") == "completed" and age is not None and age >= candidate_limit:
            plan.leftovers.append(Leftover("snapshot", sid, f"no image uses it any more, {age_text(age)}"))
        else:
            plan.kept.append(Kept("snapshot", sid, f"unused, {snapshot.get('State')}, {age_text(age)} (threshold "
                                  f"{candidates_older_than_hours:g} h)"))
    for volume in _paged(ec2, "describe_volumes", "Volumes", Filters=[
            {"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}, {"Name": "status", "Values": ["available"]}]):
        age = age_since(now, parse_time(volume.get("CreateTime")))
        if age is not None and age >= limit:
            plan.leftovers.append(Leftover("volume", volume["VolumeId"], f"unattached, {age_text(age)}"))
        else:
            plan.kept.append(Kept("volume", volume["VolumeId"], f"unattached, {age_text(age)} (threshold {older_than_hours:g} h)"))
    return plan


def _carry_out(plan: AwsReapPlan, ec2: Any, ssm: Any, settings: Optional[Settings]) -> list[ChangeResult]:
    by_kind: dict[str, list[Leftover]] = {}
    for item in plan.leftovers:
        by_kind.setdefault(item.kind, []).append(item)
    results: list[ChangeResult] = []
    terminated: list[str] = []

    instances = [x.ident for x in by_kind.get("instance", [])]
    if instances:
        try:
            ec2.terminate_instances(InstanceIds=instances)
            # Groups and key pairs stay in use until the instances are really gone.
            ec2.get_waiter("instance_terminated").wait(InstanceIds=instances, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
            terminated = instances
        except (botocore.exceptions.ClientError, botocore.exceptions.WaiterError) as exc:
            results.append(ChangeResult(f"terminate {', '.join(instances)}", "failed", str(exc)))
        for item in by_kind["instance"]:
            shown = [i for r in ec2.describe_instances(InstanceIds=[item.ident])["Reservations"] for i in r["Instances"]]
            state = shown[0]["State"]["Name"] if shown else "terminated"
            results.append(ChangeResult(item.describe(), "done") if state == "terminated" else
                            ChangeResult(item.describe(), "failed", f"state {state} afterwards"))

    for item in by_kind.get("key-pair", []):
        try:
            ec2.delete_key_pair(KeyName=item.ident)
            left = [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] == item.ident]
            results.append(ChangeResult(item.describe(), "failed", "still listed") if left else ChangeResult(item.describe(), "done"))
        except botocore.exceptions.ClientError as exc:
            results.append(ChangeResult(item.describe(), "failed", clients.error_text(exc)))

    for item in by_kind.get("security-group", []):
        results.append(_delete_group(ec2, item))

    for item in by_kind.get("image", []):
        try:
            pointers = [images.pointer_name(settings, item.details["os"])] if settings and item.details.get("os") else []
            refs = [r for r in images.image_references(ec2, ssm, [item.ident], pointers)[item.ident]
                    if not (r.kind == "instance" and r.ident in terminated)]
            if refs:
                results.append(ChangeResult(item.describe(), "skipped", "in use since the plan: " + "; ".join(r.text for r in refs)))
                continue
            ec2.deregister_image(ImageId=item.ident)
            for snapshot in item.details.get("snapshots", []):
                ec2.delete_snapshot(SnapshotId=snapshot)
            left = ([item.ident] if not images.image_gone(ec2, item.ident) else []) + [
                s for s in item.details.get("snapshots", []) if not images.snapshot_gone(ec2, s)]
            results.append(ChangeResult(item.describe(), "failed", f"still there: {', '.join(left)}") if left else
                            ChangeResult(item.describe(), "done"))
        except botocore.exceptions.ClientError as exc:
            results.append(ChangeResult(item.describe(), "failed", clients.error_text(exc)))

    for kind, delete, gone in (("snapshot", lambda i: ec2.delete_snapshot(SnapshotId=i), lambda i: images.snapshot_gone(ec2, i)),
                               ("volume", lambda i: ec2.delete_volume(VolumeId=i), lambda i: _volume_gone(ec2, i))):
        for item in by_kind.get(kind, []):
            try:
                delete(item.ident)
                results.append(ChangeResult(item.describe(), "done") if gone(item.ident) else
                                ChangeResult(item.describe(), "failed", "still there afterwards"))
            except botocore.exceptions.ClientError as exc:
                results.append(ChangeResult(item.describe(), "failed", clients.error_text(exc)))
    return results


def _volume_gone(ec2: Any, volume_id: str) -> bool:
    try:
        volumes = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    except botocore.exceptions.ClientError as exc:
        if clients.error_code(exc) == "InvalidVolume.NotFound":
            return True
        raise
    return not volumes or volumes[0].get("State") == "deleted"


def _delete_group(ec2: Any, item: Leftover, attempts: int = 24, delay: float = 5.0) -> ChangeResult:
    """A group stays "in use" for a while after its instance terminated: retry DependencyViolation."""
    for attempt in range(attempts):
        try:
            ec2.delete_security_group(GroupId=item.ident)
            break
        except botocore.exceptions.ClientError as exc:
            if clients.error_code(exc) != "DependencyViolation" or attempt == attempts - 1:
                return ChangeResult(item.describe(), "failed", clients.error_text(exc))
            time.sleep(delay)
    try:
        left = ec2.describe_security_groups(GroupIds=[item.ident])["SecurityGroups"]
    except botocore.exceptions.ClientError as exc:
        if clients.error_code(exc) != "InvalidGroup.NotFound":
            raise
        left = []
    return ChangeResult(item.describe(), "failed", "still there afterwards") if left else ChangeResult(item.describe(), "done")
