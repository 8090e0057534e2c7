"""Image lifecycle: retire older approved images, never one that is still in use.

Per OS, after each approval and with ``invoke prune``:

    approved images, newest first:   newest | 2nd ... keep_approved-th | older ...
    aws:    every one but the newest is deprecated (now + lifecycle.deprecate_after_days);
            the older ones are deregistered and their snapshots deleted
    local:  the older ones are deleted from the store (the store has no deprecation)

Never removed, and never deprecated either where it says so:
  - the newest approved image (neither);
  - aws: an image that the published pointer <aws.ssm_parameter_prefix>/<os>/latest names
    (neither: deprecating what the pointer publishes would contradict it);
  - aws: an image that a version of any launch template names, directly or through a
    ``resolve:ssm:`` parameter, or that a pending, running, stopping or stopped instance
    runs (kept; deprecated all the same, which does not stop launches by id);
  - local: an image whose disk a running process has open or names on its command line.

plan() only reads. apply() acts, checks the references again right before each removal (a
launch template may have appeared since the plan was shown), then reads everything back and
raises NotApplied if any change did not land.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Optional

import botocore.exceptions

from .config import Settings, available_os
from .errors import UserError
from .targets.base import age_order, statement_parameter

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
SSM_REFERENCE = "resolve:ssm:"
# EC2 keeps a deprecation time to the minute; a read-back within this is the time we set.
DEPRECATION_TOLERANCE = timedelta(seconds=60)


class NotApplied(UserError):
    """Some planned changes did not land; ``outcomes`` says which (shown by the task)."""

    def __init__(self, message: str, outcomes: list[Outcome]):
        super().__init__(message)
        self.outcomes = outcomes


# --- small shared helpers (the reaper uses them too) -----------------------------------------
def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(value: Any) -> Optional[datetime]:
    """A timezone-aware UTC datetime from an AWS datetime or an ISO 8601 string, else None."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tags_of(raw: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw.get("Tags", []) or []}


def pointer_name(settings: Settings, os_name: str) -> str:
    """The SSM parameter publish() writes: what consumers launch."""
    return f"{settings.aws.ssm_parameter_prefix.rstrip('/')}/{os_name}/latest"


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _aws_error(exc: Exception, action: str) -> UserError:
    from .targets.aws import clients

    return clients.describe_error(exc, action)


# --- what a plan holds -----------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    kind: str  # "deprecate" | "deregister" (aws, snapshots with it) | "delete" (local store)
    image_id: str
    reason: str
    snapshots: tuple[str, ...] = ()
    deprecate_at: str = ""  # ISO 8601 UTC, for "deprecate"

    def describe(self) -> str:
        if self.kind == "deprecate":
            return f"deprecate {self.image_id} at {self.deprecate_at}: {self.reason}"
        if self.kind == "deregister":
            snaps = f" and delete snapshot(s) {', '.join(self.snapshots)}" if self.snapshots else ""
            return f"deregister {self.image_id}{snaps}: {self.reason}"
        return f"delete {self.image_id} from the store: {self.reason}"


@dataclass(frozen=True)
class Protected:
    image_id: str
    why: tuple[str, ...]


@dataclass
class Plan:
    target: str
    os: str
    where: str  # aws: the region; local: the store directory
    keep_approved: int
    deprecate_after_days: int
    pointer: str = ""  # aws: the SSM parameter that publishes the newest approved image
    statements: str = ""  # aws: the SSM path of approval statements (<path>/<ami>), removed with the image
    actions: list[Action] = field(default_factory=list)
    protected: list[Protected] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "os": self.os, "where": self.where, "keep_approved": self.keep_approved,
            "deprecate_after_days": self.deprecate_after_days, "pointer": self.pointer,
            "actions": [asdict(a) for a in self.actions],
            "protected": [{"image_id": p.image_id, "why": list(p.why)} for p in self.protected],
            "notes": list(self.notes),
        }

    def describe(self) -> list[str]:
        head = f"prune {self.os} on {self.target} ({self.where}), keep {self.keep_approved} newest approved"
        lines = [head + (": nothing to do" if not self.actions else f": {len(self.actions)} change(s)")]
        lines += [f"  - {a.describe()}" for a in self.actions]
        lines += [f"  keep {p.image_id}: {'; '.join(p.why)}" for p in self.protected]
        lines += [f"  note: {n}" for n in self.notes]
        return lines


@dataclass(frozen=True)
class Outcome:
    action: str
    status: str  # "done" | "skipped" (refused for safety at apply time) | "failed"
    detail: str = ""


# --- references: what still uses an image (aws) ------------------------------------------------
@dataclass(frozen=True)
class Reference:
    kind: str  # "pointer" | "launch-template" | "instance"
    ident: str  # the parameter name, "template-id:version", or the instance id
    text: str


def _parameter(ssm: Any, name: str) -> Optional[str]:
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) in ("ParameterNotFound", "ParameterVersionNotFound"):
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
        raise _aws_error(exc, "find what still uses the images (launch templates, instances, SSM)") from None
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
        if _error_code(exc) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            return True
        raise
    return not images or images[0].get("State") == "deregistered"


def snapshot_gone(ec2: Any, snapshot_id: str) -> bool:
    try:
        return not ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) == "InvalidSnapshot.NotFound":
            return True
        raise


def deregister_with_snapshots(ec2: Any, image_id: str, snapshots: Iterable[str]) -> None:
    """Deregister, then delete each snapshot explicitly: DeleteAssociatedSnapshots is not
    honoured everywhere (moto leaves them), and an explicit delete can be read back."""
    ec2.deregister_image(ImageId=image_id)
    for snapshot in snapshots:
        ec2.delete_snapshot(SnapshotId=snapshot)


# --- planning ----------------------------------------------------------------------------------
def _newest_first(images: list[tuple[str, dict[str, str], str]]) -> list[tuple[str, dict[str, str], str]]:
    """(id, tags, created) tuples, newest first in the order `latest` uses (targets.base.age_order)."""
    return sorted(images, key=lambda i: age_order(i[0], i[1], i[2]), reverse=True)


def _not_counted(plan: Plan, refused: Mapping[str, list[str]], image_ids: Iterable[str]) -> set[str]:
    """The images tagged approved whose signed approval does not verify: a note each; they are
    neither the newest nor counted in keep_approved, and never removed here (a person decides)."""
    found = {image_id for image_id in image_ids if image_id in refused}
    for image_id in sorted(found):
        plan.notes.append(f"{image_id} is tagged approved but its approval does not verify ({'; '.join(refused[image_id])}): "
                          f"not counted, not removed (invoke attest --image-id={image_id})")
    return found


def plan_aws(settings: Settings, os_name: str, region: Optional[str] = None, *, ec2: Any = None, ssm: Any = None,
             now: Optional[datetime] = None, refused: Mapping[str, list[str]] = MappingProxyType({})) -> Plan:
    from .targets.aws import clients
    from .targets.aws.target import MANAGED_BY

    region = region or settings.aws.region
    ec2 = ec2 or clients.client("ec2", region)
    ssm = ssm or clients.client("ssm", region)
    now = now or utcnow()
    keep = settings.lifecycle.keep_approved
    days = settings.lifecycle.deprecate_after_days
    plan = Plan("aws", os_name, region, keep, days, pointer=pointer_name(settings, os_name),
                statements=statement_parameter(settings.aws.ssm_parameter_prefix, ""))
    try:
        raw = [image for page in ec2.get_paginator("describe_images").paginate(Owners=["self"], Filters=[
            {"Name": "tag:ManagedBy", "Values": [MANAGED_BY]}, {"Name": "tag:OS", "Values": [os_name]},
            {"Name": "tag:Status", "Values": ["approved"]}]) for image in page["Images"]]
        users = snapshot_users(ec2) if len(raw) > keep else {}
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise _aws_error(exc, f"list the approved {os_name} AMIs in {region}") from None
    uncounted = _not_counted(plan, refused, [r["ImageId"] for r in raw])
    raw = [r for r in raw if r["ImageId"] not in uncounted]
    by_id = {r["ImageId"]: r for r in raw}
    ordered = _newest_first([(r["ImageId"], tags_of(r), r.get("CreationDate", "")) for r in raw])
    if not ordered:
        plan.notes.append(f"no approved {os_name} image in {region}")
        return plan
    references = image_references(ec2, ssm, [i for i, _, _ in ordered[1:]], [plan.pointer])
    deprecate_at = iso((now + timedelta(days=days)).replace(second=0, microsecond=0))

    plan.protected.append(Protected(ordered[0][0], ("the newest approved image",)))
    for position, (image_id, _tags, _created) in enumerate(ordered[1:], start=2):
        image = by_id[image_id]
        refs = references[image_id]
        if image.get("State") != "available":
            plan.protected.append(Protected(image_id, (f"state {image.get('State')}: acted on only when available",)))
            continue
        if position > keep and not refs:
            snapshots = snapshots_of(image)
            shared = [s for s in snapshots if users.get(s, {image_id}) - {image_id}]
            if shared:
                plan.notes.append(f"{image_id}: snapshot(s) {', '.join(shared)} also back other images: kept")
            plan.actions.append(Action("deregister", image_id,
                                       f"approved image #{position}, beyond keep_approved={keep}, and nothing uses it",
                                       tuple(s for s in snapshots if s not in shared)))
            continue
        why = [r.text for r in refs] or [f"approved image #{position}, within keep_approved={keep}"]
        plan.protected.append(Protected(image_id, tuple(why)))
        if any(r.kind == "pointer" for r in refs):
            continue  # the published image is not deprecated
        if image.get("DeprecationTime"):
            plan.notes.append(f"{image_id} is already deprecated at {image['DeprecationTime']}")
            continue
        plan.actions.append(Action("deprecate", image_id, f"a newer approved {os_name} image exists",
                                   deprecate_at=deprecate_at))
    return plan


def _stored_approved(state_dir: Path, os_name: str):
    from .targets.local.store import Store

    store = Store(state_dir / "store")
    return store, store.list(os_name, "approved")


def plan_local(settings: Settings, state_dir: Path, os_name: str, processes: Optional[dict] = None,
               refused: Mapping[str, list[str]] = MappingProxyType({})) -> Plan:
    from .reaper import paths_in_use

    store, approved = _stored_approved(state_dir, os_name)
    keep = settings.lifecycle.keep_approved
    plan = Plan("local", os_name, str(store.root), keep, settings.lifecycle.deprecate_after_days)
    plan.notes.append("the local store has no deprecation: older approved images are only deleted beyond keep_approved")
    uncounted = _not_counted(plan, refused, [i.id for i in approved])
    approved = [i for i in approved if i.id not in uncounted]
    by_id = {image.id: image for image in approved}
    ordered = _newest_first([(i.id, i.tags, "") for i in approved])
    if not ordered:
        plan.notes.append(f"no approved {os_name} image in the local store")
        return plan
    in_use = paths_in_use([by_id[i].path.parent for i, _, _ in ordered[keep:]], processes)
    plan.protected.append(Protected(ordered[0][0], ("the newest approved image",)))
    for position, (image_id, _tags, _created) in enumerate(ordered[1:], start=2):
        users = in_use.get(by_id[image_id].path.parent, [])
        if position > keep and not users:
            plan.actions.append(Action("delete", image_id, f"approved image #{position}, beyond keep_approved={keep}"))
        else:
            plan.protected.append(Protected(image_id, tuple(users) or (f"approved image #{position}, within keep_approved={keep}",)))
    return plan


def plan(settings: Settings, target: str, state_dir: Path, os_names: Optional[list[str]] = None, *,
         now: Optional[datetime] = None) -> list[Plan]:
    """One plan per OS (and, on aws, per region: aws.region and every copy region).

    Only approvals that verify are counted (as `invoke latest` counts them), so the image prune
    keeps as the newest is the one latest prints. Copies in other regions carry the tags but
    not a statement of their own: they are counted by their tags."""
    from . import attest
    from .targets import get_target

    names = os_names or available_os()
    if target not in ("aws", "local"):
        raise UserError(f"unknown --target {target!r}: choose aws or local")
    signer = get_target(target, settings, state_dir or Path("."))
    refused = {name: attest.approved_images(signer, name)[1] for name in names}
    if target == "local":
        return [plan_local(settings, state_dir, name, refused=refused[name]) for name in names]
    regions = list(dict.fromkeys([settings.aws.region, *settings.aws.copy_regions]))
    return [plan_aws(settings, name, region, now=now, refused=refused[name] if region == settings.aws.region else {})
            for region in regions for name in names]


# --- acting --------------------------------------------------------------------------------------
def apply(plan: Plan, *, ec2: Any = None, ssm: Any = None) -> list[Outcome]:
    """Carry out a plan, read every change back; raise NotApplied if one did not land."""
    if plan.target == "local":
        outcomes = _apply_local(plan)
    else:
        outcomes = _apply_aws(plan, ec2, ssm)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        first = failed[0]
        raise NotApplied(f"prune {plan.os} ({plan.where}): {len(failed)} of {len(outcomes)} change(s) did not land, "
                         f"first: {first.action}: {first.detail}; run invoke prune again to see what is left", outcomes)
    return outcomes


def _apply_local(plan: Plan) -> list[Outcome]:
    from .targets.local.store import Store

    store = Store(Path(plan.where))
    outcomes = []
    for action in plan.actions:
        label = action.describe()
        try:
            store.delete(action.image_id)
        except OSError as exc:
            outcomes.append(Outcome(label, "failed", str(exc)))
            continue
        gone = not (store.root / action.image_id).exists() and action.image_id not in {i.id for i in store.list()}
        outcomes.append(Outcome(label, "done") if gone else Outcome(label, "failed", "still in the store after delete"))
    return outcomes


def _apply_aws(plan: Plan, ec2: Any, ssm: Any) -> list[Outcome]:
    from .targets.aws import clients

    ec2 = ec2 or clients.client("ec2", plan.where)
    ssm = ssm or clients.client("ssm", plan.where)
    outcomes = []
    for action in plan.actions:
        label = action.describe()
        try:
            if action.kind == "deprecate":
                when = parse_time(action.deprecate_at)
                ec2.enable_image_deprecation(ImageId=action.image_id, DeprecateAt=when)
                shown = ec2.describe_images(ImageIds=[action.image_id])["Images"]
                landed = parse_time(shown[0].get("DeprecationTime")) if shown else None
                if landed is None or abs(landed - when) > DEPRECATION_TOLERANCE:
                    outcomes.append(Outcome(label, "failed", f"read back deprecation time {landed}, not {action.deprecate_at}"))
                    continue
            elif action.kind == "deregister":
                # Checked again now: something may have started using the image since the plan.
                refs = image_references(ec2, ssm, [action.image_id], [plan.pointer])[action.image_id]
                if refs:
                    outcomes.append(Outcome(label, "skipped", "in use since the plan: " + "; ".join(r.text for r in refs)))
                    continue
                deregister_with_snapshots(ec2, action.image_id, action.snapshots)
                if plan.statements:  # its signed approval goes with it (a copy has none: not found)
                    with contextlib.suppress(ssm.exceptions.ParameterNotFound):
                        ssm.delete_parameter(Name=plan.statements + action.image_id)
                left = ([action.image_id] if not image_gone(ec2, action.image_id) else []) + [
                    s for s in action.snapshots if not snapshot_gone(ec2, s)]
                if left:
                    outcomes.append(Outcome(label, "failed", f"still there after the change: {', '.join(left)}"))
                    continue
            else:
                raise ValueError(f"unknown action {action.kind!r} in an aws plan")
        except botocore.exceptions.ClientError as exc:
            outcomes.append(Outcome(label, "failed", f"{_error_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}"))
            continue
        except botocore.exceptions.BotoCoreError as exc:  # no answer, or one that is not EC2's
            outcomes.append(Outcome(label, "failed", f"{type(exc).__name__}: {str(exc)[:200]}"))
            continue
        outcomes.append(Outcome(label, "done"))
    return outcomes


def after_approval(cfg: Any, progress: Any) -> list[Plan]:
    """Run the lifecycle for the OS a build just approved (called by the pipeline after publish).

    The new image is approved and published whatever happens here, so a failure is reported
    with the command that finishes the job instead of failing the build."""
    try:
        plans = plan(cfg.settings, cfg.target, cfg.state_dir, [cfg.os.name])
        for each in plans:
            for line in each.describe():
                progress.say(line)
            if each.actions:
                for outcome in apply(each):
                    if outcome.status != "done":
                        progress.say(f"prune: {outcome.action}: {outcome.status} ({outcome.detail})")
        return plans
    except (UserError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        progress.say(f"WARNING: pruning older {cfg.os.name} images did not finish: {str(exc)[:300]} "
                     f"(invoke prune --os={cfg.os.name} --target={cfg.target} --yes)")
        return []
