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
    scan = _Scan(AwsReapPlan("aws", region, older_than_hours, candidates_older_than_hours, settings=settings,
                             ec2=ec2, ssm=ssm), settings, ec2, ssm, now)
    # In this order: each step keeps what a live instance uses and counts what an earlier
    # step already reaps (an instance reaped frees its groups; a key pair its group).
    scan.instances()
    scan.key_pairs()
    scan.security_groups()
    doomed_snapshots, users_of = scan.candidate_images()
    scan.snapshots_and_volumes(doomed_snapshots, users_of)
    return scan.plan


@dataclass
class _Scan:
    """One look for leftovers in a region: the plan it fills and what its steps share."""

    plan: AwsReapPlan
    settings: Settings
    ec2: Any
    ssm: Any
    now: datetime
    doomed: set[str] = field(default_factory=set)  # instances this plan terminates
    linked_keys: set[str] = field(default_factory=set)  # key pairs and groups an instance of ours uses or used
    linked_groups: set[str] = field(default_factory=set)
    live_keys: dict[str, list[str]] = field(default_factory=dict)  # -> the live instances (not doomed) using it
    live_groups: dict[str, list[str]] = field(default_factory=dict)
    key_ages: dict[str, Optional[timedelta]] = field(default_factory=dict)  # the test instances' key pairs

    @property
    def limit(self) -> timedelta:
        return timedelta(hours=self.plan.older_than_hours)

    @property
    def candidate_limit(self) -> timedelta:
        return timedelta(hours=self.plan.candidates_older_than_hours)

    @property
    def foreign_limit(self) -> timedelta:
        """An untagged Packer resource cannot belong to a live golden-ami build older than this."""
        return max(self.limit, timedelta(minutes=self.settings.packer.timeout_minutes + 30))

    def instances(self) -> None:
        """Our build and test instances, and what every live instance in the account uses."""
        plan, now, older_than_hours = self.plan, self.now, self.plan.older_than_hours
        ours_all = _instances(self.ec2, [{"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}])
        for instance in ours_all:
            tags, state = images.tags_of(instance), instance["State"]["Name"]
            if state not in images.LIVE_INSTANCE_STATES:
                continue
            if tags.get("Purpose") not in ("build", "verify"):
                plan.kept.append(Kept("instance", instance["InstanceId"], f"Purpose={tags.get('Purpose', '')!r}: "
                                      "not a build or test instance"))
                continue
            age = age_since(now, parse_time(instance.get("LaunchTime")))
            if age is None or age < self.limit:
                plan.kept.append(Kept("instance", instance["InstanceId"], f"{tags['Purpose']} instance ({state}), "
                                      f"{age_text(age)} (threshold {older_than_hours:g} h)"))
                continue
            self.doomed.add(instance["InstanceId"])
            plan.leftovers.append(Leftover("instance", instance["InstanceId"],
                                           f"{tags['Purpose']} instance ({state}) of build {tags.get('BuildId', '?')}, "
                                           f"launched {age_text(age).replace(' old', ' ago')}"))
        self.linked_keys = {i["KeyName"] for i in ours_all if i.get("KeyName")}
        self.linked_groups = {g["GroupId"] for i in ours_all for g in i.get("SecurityGroups", [])}
        live_states = [*images.LIVE_INSTANCE_STATES, "shutting-down"]
        for instance in _instances(self.ec2, [{"Name": "instance-state-name", "Values": live_states}]):
            if instance["InstanceId"] in self.doomed:
                continue
            if instance.get("KeyName"):
                self.live_keys.setdefault(instance["KeyName"], []).append(instance["InstanceId"])
            for group in instance.get("SecurityGroups", []):
                self.live_groups.setdefault(group["GroupId"], []).append(instance["InstanceId"])

    def key_pairs(self) -> None:
        plan, now, limit = self.plan, self.now, self.limit
        for key in self.ec2.describe_key_pairs()["KeyPairs"]:
            name, tags = key["KeyName"], images.tags_of(key)
            created = parse_time(key.get("CreateTime"))
            if name.startswith(VERIFY_PREFIX):
                self.key_ages[name] = age_since(now, created)
                ours, threshold = True, limit
            elif PACKER_NAME.match(name):
                stamps = [t for t in (created, packer_name_time(name)) if t]
                created = max(stamps) if stamps else None  # the younger age: the conservative one
                ours = tags.get("ManagedBy") == MANAGED_BY or name in self.linked_keys
                threshold = limit if ours else self.foreign_limit
            else:
                continue
            age = age_since(now, created)
            if self.live_keys.get(name):
                plan.kept.append(Kept("key-pair", name, f"live instance(s) {', '.join(self.live_keys[name])} use it"))
            elif age is None or age < threshold:
                plan.kept.append(Kept("key-pair", name, f"{age_text(age)} (threshold {threshold.total_seconds() / 3600:g} h"
                                      f"{'' if ours else ', untagged Packer key: at least a Packer build timeout'})"))
            else:
                whose = "the test instance's key pair" if name.startswith(VERIFY_PREFIX) else (
                    "Packer's key pair for a golden-ami build" if ours else
                    "an untagged Packer key pair (Packer 1.6.6 tags none) that no instance uses")
                plan.leftovers.append(Leftover("key-pair", name, f"{whose}, {age_text(age)}",
                                               {"key_pair_id": key.get("KeyPairId", "")}))

    def security_groups(self) -> None:
        """EC2 records no creation time for a group: see the module docstring."""
        plan, now, limit, ec2 = self.plan, self.now, self.limit, self.ec2
        doomed_keys = {x.ident for x in plan.leftovers if x.kind == "key-pair"}
        for group in _paged(ec2, "describe_security_groups", "SecurityGroups"):
            name, group_id, tags = group["GroupName"], group["GroupId"], images.tags_of(group)
            if name.startswith(VERIFY_PREFIX) and tags.get("ManagedBy") == MANAGED_BY:
                partner = name  # the key pair of the same run has the same name, and is made first
                if partner in doomed_keys:
                    why = f"the test instance's group; its key pair {partner} is reaped too"
                elif partner not in self.key_ages:
                    why = "the test instance's group; its key pair is gone, so that run's teardown began and did not finish"
                else:
                    plan.kept.append(Kept("security-group", group_id, f"{name}: its key pair {partner} is kept "
                                          f"({age_text(self.key_ages[partner])}, threshold "
                                          f"{plan.older_than_hours:g} h)"))
                    continue
            elif PACKER_NAME.match(name):
                ours = tags.get("ManagedBy") == MANAGED_BY or group_id in self.linked_groups
                if not ours and group.get("Description") != PACKER_GROUP_DESCRIPTION:
                    continue
                threshold = limit if ours else self.foreign_limit
                age = age_since(now, packer_name_time(name))
                if age is None or age < threshold:
                    plan.kept.append(Kept("security-group", group_id, f"{name}: {age_text(age)} (threshold "
                                          f"{threshold.total_seconds() / 3600:g} h)"))
                    continue
                why = (f"Packer's group for a golden-ami build, {age_text(age)}" if ours else
                       f"an untagged Packer group that no instance uses, {age_text(age)}")
            else:
                continue
            users = self.live_groups.get(group_id, [])
            interfaces = [n["NetworkInterfaceId"] for n in _paged(ec2, "describe_network_interfaces", "NetworkInterfaces",
                                                                  Filters=[{"Name": "group-id", "Values": [group_id]}])
                          if n.get("Attachment", {}).get("InstanceId") not in self.doomed]
            if users or interfaces:
                plan.kept.append(Kept("security-group", group_id, f"{name}: in use by {', '.join(users + interfaces)}"))
                continue
            plan.leftovers.append(Leftover("security-group", group_id, f"{name}: {why}", {"name": name}))

    def candidate_images(self) -> tuple[set[str], dict[str, set[str]]]:
        """Candidate images, old enough, that nothing else uses. Returns the snapshots reaped
        with them and, per snapshot, the images it backs."""
        plan, now, ec2 = self.plan, self.now, self.ec2
        candidates = _paged(ec2, "describe_images", "Images", Owners=["self"], Filters=[
            {"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}, {"Name": "tag:Status", "Values": ["candidate"]}])
        old = []
        for image in candidates:
            tags = images.tags_of(image)
            stamps = [t for t in (parse_time(image.get("CreationDate")), parse_time(tags.get("CreatedAt"))) if t]
            age = age_since(now, max(stamps) if stamps else None)
            if age is None or age < self.candidate_limit:
                plan.kept.append(Kept("image", image["ImageId"], f"candidate, {age_text(age)} (threshold "
                                      f"{plan.candidates_older_than_hours:g} h)"))
            else:
                old.append((image, tags, age))
        pointers = sorted({images.pointer_name(self.settings, tags.get("OS", "")) for _, tags, _ in old if tags.get("OS")})
        references = images.image_references(ec2, self.ssm, [i["ImageId"] for i, _, _ in old], pointers)
        users_of = images.snapshot_users(ec2)
        doomed_snapshots: set[str] = set()
        for image, tags, age in old:
            refs = [r for r in references[image["ImageId"]] if not (r.kind == "instance" and r.ident in self.doomed)]
            if refs:
                plan.kept.append(Kept("image", image["ImageId"], "; ".join(r.text for r in refs)))
                continue
            snapshots = [s for s in images.snapshots_of(image) if not users_of.get(s, set()) - {image["ImageId"]}]
            doomed_snapshots.update(snapshots)
            plan.leftovers.append(Leftover("image", image["ImageId"],
                                           f"candidate of build {tags.get('BuildId', '?')} never approved or rejected, "
                                           f"{age_text(age)}", {"snapshots": snapshots, "os": tags.get("OS", "")}))
        return doomed_snapshots, users_of

    def snapshots_and_volumes(self, doomed_snapshots: set[str], users_of: dict[str, set[str]]) -> None:
        """Snapshots no image uses any more, and unattached volumes."""
        plan, now, ec2 = self.plan, self.now, self.ec2
        for snapshot in _paged(ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"],
                               Filters=[{"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}]):
            sid = snapshot["SnapshotId"]
            if sid in doomed_snapshots or users_of.get(sid):
                continue
            age = age_since(now, parse_time(snapshot.get("StartTime")))
            if snapshot.get("State") == "completed" and age is not None and age >= self.candidate_limit:
                plan.leftovers.append(Leftover("snapshot", sid, f"no image uses it any more, {age_text(age)}"))
            else:
                plan.kept.append(Kept("snapshot", sid, f"unused, {snapshot.get('State')}, {age_text(age)} (threshold "
                                      f"{plan.candidates_older_than_hours:g} h)"))
        for volume in _paged(ec2, "describe_volumes", "Volumes", Filters=[
                {"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}, {"Name": "status", "Values": ["available"]}]):
            age = age_since(now, parse_time(volume.get("CreateTime")))
            if age is not None and age >= self.limit:
                plan.leftovers.append(Leftover("volume", volume["VolumeId"], f"unattached, {age_text(age)}"))
            else:
                plan.kept.append(Kept("volume", volume["VolumeId"], f"unattached, {age_text(age)} "
                                      f"(threshold {plan.older_than_hours:g} h)"))


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
