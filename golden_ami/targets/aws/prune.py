"""Prune on aws: retire older approved AMIs in one region (golden_ami/lifecycle.py says when).

    approved images, newest first:   newest | 2nd ... keep_approved-th | older ...
    every one but the newest is deprecated (now + lifecycle.deprecate_after_days);
    the older ones are deregistered and their snapshots deleted (with the signed approval
    statement kept in SSM for each).

Never removed, and never deprecated either where it says so:
  - the newest approved image (neither);
  - an image that the published pointer <aws.ssm_parameter_prefix>/<os>/latest names
    (neither: deprecating what the pointer publishes would contradict it);
  - an image that a version of any launch template names, directly or through a
    ``resolve:ssm:`` parameter, or that a pending, running, stopping or stopped instance
    runs (kept; deprecated all the same, which does not stop launches by id);
  - an image not "available" (acted on only when it is);
  - a snapshot that also backs another image.

apply() checks the references again right before each deregistration (a launch template may
have appeared since the plan was shown), then reads everything back.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Mapping, Optional

import botocore.exceptions

from ...config import Settings
from ...plans import Action, ChangeResult, PrunePlan, Protected
from ...provenance import MANAGED_BY
from ...utctime import iso, parse_time, utcnow
from ..base import statement_parameter
from . import clients, images

# EC2 keeps a deprecation time to the minute; a read-back within this is the time we set.
DEPRECATION_TOLERANCE = timedelta(seconds=60)


@dataclass
class AwsPrunePlan(PrunePlan):
    ec2: Any = field(default=None, repr=False, compare=False)  # clients a test hands in; else made for `where`
    ssm: Any = field(default=None, repr=False, compare=False)

    def _carry_out(self, ec2: Any = None, ssm: Any = None) -> list[ChangeResult]:
        ec2 = ec2 or self.ec2 or clients.client("ec2", self.where)
        ssm = ssm or self.ssm or clients.client("ssm", self.where)
        return [_carry_out_one(self, action, ec2, ssm) for action in self.actions]


def plan_aws(settings: Settings, os_name: str, region: Optional[str] = None, *, ec2: Any = None, ssm: Any = None,
             now: Optional[datetime] = None, refused: Mapping[str, list[str]] = MappingProxyType({})) -> AwsPrunePlan:
    region = region or settings.aws.region
    ec2 = ec2 or clients.client("ec2", region)
    ssm = ssm or clients.client("ssm", region)
    now = now or utcnow()
    keep = settings.lifecycle.keep_approved
    days = settings.lifecycle.deprecate_after_days
    plan = AwsPrunePlan("aws", os_name, region, keep, days, pointer=images.pointer_name(settings, os_name),
                        statements=statement_parameter(settings.aws.ssm_parameter_prefix, ""), ec2=ec2, ssm=ssm)
    try:
        raw = [image for page in ec2.get_paginator("describe_images").paginate(Owners=["self"], Filters=[
            {"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}, {"Name": "tag:OS", "Values": [os_name]},
            {"Name": "tag:Status", "Values": ["approved"]}]) for image in page["Images"]]
        users = images.snapshot_users(ec2) if len(raw) > keep else {}
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise clients.describe_error(exc, f"list the approved {os_name} AMIs in {region}") from None
    by_id = {r["ImageId"]: r for r in raw}
    older = plan.rank([(r["ImageId"], images.tags_of(r), r.get("CreationDate", "")) for r in raw], refused,
                      f"in {region}")
    if not older:
        return plan
    references = images.image_references(ec2, ssm, [image_id for _, image_id in older], [plan.pointer])
    deprecate_at = iso((now + timedelta(days=days)).replace(second=0, microsecond=0))

    for position, image_id in older:
        image = by_id[image_id]
        refs = references[image_id]
        if image.get("State") != "available":
            plan.protected.append(Protected(image_id, (f"state {image.get('State')}: acted on only when available",)))
            continue
        if position > keep and not refs:
            snapshots = images.snapshots_of(image)
            shared = [s for s in snapshots if users.get(s, {image_id}) - {image_id}]
            if shared:
                plan.notes.append(f"{image_id}: snapshot(s) {', '.join(shared)} also back other images: kept")
            plan.actions.append(Action("deregister", image_id,
                                       f"approved image #{position}, beyond keep_approved={keep}, and nothing uses it",
                                       tuple(s for s in snapshots if s not in shared)))
            continue
        plan.protected.append(Protected(image_id, tuple(r.text for r in refs) or (plan.within_keep(position),)))
        if any(r.kind == "pointer" for r in refs):
            continue  # the published image is not deprecated
        if image.get("DeprecationTime"):
            plan.notes.append(f"{image_id} is already deprecated at {image['DeprecationTime']}")
            continue
        plan.actions.append(Action("deprecate", image_id, f"a newer approved {os_name} image exists",
                                   deprecate_at=deprecate_at))
    return plan


def _carry_out_one(plan: AwsPrunePlan, action: Action, ec2: Any, ssm: Any) -> ChangeResult:
    label = action.describe()
    try:
        if action.kind == "deprecate":
            when = parse_time(action.deprecate_at)
            ec2.enable_image_deprecation(ImageId=action.image_id, DeprecateAt=when)
            shown = ec2.describe_images(ImageIds=[action.image_id])["Images"]
            landed = parse_time(shown[0].get("DeprecationTime")) if shown else None
            if landed is None or abs(landed - when) > DEPRECATION_TOLERANCE:
                return ChangeResult(label, "failed", f"read back deprecation time {landed}, not {action.deprecate_at}")
        elif action.kind == "deregister":
            # Checked again now: something may have started using the image since the plan.
            refs = images.image_references(ec2, ssm, [action.image_id], [plan.pointer])[action.image_id]
            if refs:
                return ChangeResult(label, "skipped", "in use since the plan: " + "; ".join(r.text for r in refs))
            images.deregister_with_snapshots(ec2, action.image_id, action.snapshots)
            if plan.statements:  # its signed approval goes with it (a copy has none: not found)
                with contextlib.suppress(ssm.exceptions.ParameterNotFound):
                    ssm.delete_parameter(Name=plan.statements + action.image_id)
            left = ([action.image_id] if not images.image_gone(ec2, action.image_id) else []) + [
                s for s in action.snapshots if not images.snapshot_gone(ec2, s)]
            if left:
                return ChangeResult(label, "failed", f"still there after the change: {', '.join(left)}")
        else:
            raise ValueError(f"unknown action {action.kind!r} in an aws plan")
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:  # BotoCoreError: no answer
        return ChangeResult(label, "failed", clients.error_text(exc))
    return ChangeResult(label, "done")
