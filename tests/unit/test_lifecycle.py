"""Image lifecycle (golden_ami/lifecycle.py): keep-N, deprecation, and never removing an image
that is still in use. AWS against moto in-process; enable_image_deprecation (which moto lacks)
with botocore's Stubber; the local store with fake disks."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone

import boto3
import pytest
from botocore.stub import ANY, Stubber

from golden_ami import lifecycle, plans
from golden_ami.targets.aws import images as aws_images
from golden_ami.targets.aws import prune as aws_prune
from golden_ami.targets.local import prune as local_prune
from golden_ami.config import Settings
from golden_ami.progress import Progress
from golden_ami.targets.local.store import Store
from tests.conftest import invoke_cmd

REGION = "us-east-1"
BASE_AMI = "ami-0deb1000000000001"
NOW = datetime(2026, 11, 29, 12, 0, 30, tzinfo=timezone.utc)


@pytest.fixture
def aws(aws_env):
    """moto in-process, seeded by tests/unit/conftest.py's aws_env (Debian 12 AMIs among them)."""
    return boto3.client("ec2", REGION), boto3.client("ssm", REGION)


def _settings(**lifecycle_settings) -> Settings:
    return Settings.model_validate({"lifecycle": lifecycle_settings})


def _approved(ec2, n: int, os_name: str = "debian12") -> str:
    """An approved image the way the pipeline leaves one: tagged image and snapshots."""
    instance = ec2.run_instances(ImageId=BASE_AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=instance, Name=f"golden-{os_name}-{n}")["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    snapshots = aws_images.snapshots_of(ec2.describe_images(ImageIds=[image_id])["Images"][0])
    ec2.create_tags(Resources=[image_id, *snapshots], Tags=[{"Key": k, "Value": v} for k, v in {
        "ManagedBy": "golden-ami", "OS": os_name, "Status": "approved", "BuildId": f"{os_name}-{n}",
        "CreatedAt": f"2026-11-{n + 1:02d}T00:00:00Z", "ApprovedAt": f"2026-11-{n + 1:02d}T01:00:00Z"}.items()])
    return image_id


def _exists(ec2, image_id: str) -> bool:
    return not aws_images.image_gone(ec2, image_id)


def _world(ec2, ssm) -> dict:
    """Everything prune could change, for before/after comparisons."""
    images = ec2.describe_images(Owners=["self"])["Images"]
    return {
        "images": sorted((i["ImageId"], i["State"], i.get("DeprecationTime"), tuple(sorted(aws_images.tags_of(i).items())))
                         for i in images),
        "snapshots": sorted(s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]),
        "parameters": sorted((p["Name"], p.get("Version")) for p in ssm.describe_parameters()["Parameters"]),
    }


def _only_deregistrations(plan: plans.PrunePlan) -> plans.PrunePlan:
    # moto has no enable_image_deprecation: deprecations are applied in the Stubber tests below.
    return replace(plan, actions=[a for a in plan.actions if a.kind == "deregister"])


def test_prune_never_removes_what_is_still_in_use(aws):
    ec2, ssm = aws
    a0, a1, a2, a3, a4, a5, a6 = (_approved(ec2, n) for n in range(7))
    # a1: the published pointer (a rollback pinned it); a2: version 2 of a launch template;
    # a3: a stopped instance; a4: a launch template that resolves an SSM parameter.
    ssm.put_parameter(Name="/golden-ami/debian12/latest", Value=a1, Type="String", DataType="aws:ec2:image")
    ec2.create_launch_template(LaunchTemplateName="web", LaunchTemplateData={"ImageId": a6})
    ec2.create_launch_template_version(LaunchTemplateName="web", LaunchTemplateData={"ImageId": a2})
    ec2.create_launch_template_version(LaunchTemplateName="web", LaunchTemplateData={"ImageId": a6})
    instance = ec2.run_instances(ImageId=a3, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[instance])
    ssm.put_parameter(Name="/team/web/ami", Value=a4, Type="String")
    ec2.create_launch_template(LaunchTemplateName="api", LaunchTemplateData={"ImageId": "resolve:ssm:/team/web/ami"})
    # a terminated instance of a0 does not protect it
    old = ec2.run_instances(ImageId=a0, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[old])

    plan = aws_prune.plan_aws(_settings(keep_approved=2), "debian12", ec2=ec2, ssm=ssm, now=NOW)

    by_kind = {kind: [a.image_id for a in plan.actions if a.kind == kind] for kind in ("deregister", "deprecate")}
    assert by_kind["deregister"] == [a0]
    assert sorted(by_kind["deprecate"]) == sorted([a5, a4, a3, a2])  # not a1 (published), not a6 (newest)
    why = {p.image_id: " ".join(p.why) for p in plan.protected}
    assert why[a6] == "the newest approved image"
    assert "SSM parameter /golden-ami/debian12/latest" in why[a1]
    assert "launch template web version 2" in why[a2]
    assert f"instance {instance} (stop" in why[a3]
    assert "launch template api version 1" in why[a4] and "/team/web/ami" in why[a4]
    assert "within keep_approved=2" in why[a5]
    snapshots = aws_images.snapshots_of(ec2.describe_images(ImageIds=[a0])["Images"][0])
    assert plan.actions[[a.image_id for a in plan.actions].index(a0)].snapshots == tuple(snapshots) and snapshots

    outcomes = lifecycle.apply(_only_deregistrations(plan), ec2=ec2, ssm=ssm)
    assert [o.status for o in outcomes] == ["done"]
    assert not _exists(ec2, a0) and all(aws_images.snapshot_gone(ec2, s) for s in snapshots)
    assert all(_exists(ec2, image) for image in (a1, a2, a3, a4, a5, a6))


def test_keep_n_is_honoured_and_snapshots_go_with_their_image(aws):
    ec2, ssm = aws
    images = [_approved(ec2, n) for n in range(5)]
    other_os = _approved(ec2, 9, "al2023")
    snapshots = {i: aws_images.snapshots_of(ec2.describe_images(ImageIds=[i])["Images"][0]) for i in images}

    plan = aws_prune.plan_aws(_settings(keep_approved=3), "debian12", ec2=ec2, ssm=ssm, now=NOW)
    assert sorted(a.image_id for a in plan.actions if a.kind == "deregister") == sorted(images[:2])
    lifecycle.apply(_only_deregistrations(plan), ec2=ec2, ssm=ssm)

    left = [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]]
    assert sorted(left) == sorted(images[2:] + [other_os])
    for gone in images[:2]:
        assert all(aws_images.snapshot_gone(ec2, s) for s in snapshots[gone])
    for kept in images[2:]:
        assert not any(aws_images.snapshot_gone(ec2, s) for s in snapshots[kept])
    again = aws_prune.plan_aws(_settings(keep_approved=3), "debian12", ec2=ec2, ssm=ssm, now=NOW)
    assert [a for a in again.actions if a.kind == "deregister"] == []


def test_keep_one_still_spares_the_newest(aws):
    ec2, ssm = aws
    images = [_approved(ec2, n) for n in range(3)]
    plan = aws_prune.plan_aws(_settings(keep_approved=1), "debian12", ec2=ec2, ssm=ssm, now=NOW)
    assert sorted(a.image_id for a in plan.actions) == sorted(images[:2])
    assert images[2] not in {a.image_id for a in plan.actions}
    assert aws_prune.plan_aws(_settings(), "al2023", ec2=ec2, ssm=ssm, now=NOW).actions == []


def test_a_plan_alone_changes_nothing(aws):
    ec2, ssm = aws
    for n in range(5):
        _approved(ec2, n)
    ssm.put_parameter(Name="/golden-ami/debian12/latest", Value=_approved(ec2, 6), Type="String")
    before = _world(ec2, ssm)
    plans = lifecycle.plan(_settings(keep_approved=1), "aws", state_dir=None, os_names=["debian12"], now=NOW)
    assert len(plans) == 1 and len([a for a in plans[0].actions if a.kind == "deregister"]) == 5
    assert _world(ec2, ssm) == before


def test_apply_checks_again_before_deregistering(aws):
    ec2, ssm = aws
    old, _newer = _approved(ec2, 0), _approved(ec2, 1)
    plan = aws_prune.plan_aws(_settings(keep_approved=1), "debian12", ec2=ec2, ssm=ssm, now=NOW)
    assert [a.image_id for a in plan.actions] == [old]
    # Between the plan and --yes, someone launched from the old image.
    ec2.run_instances(ImageId=old, MinCount=1, MaxCount=1)
    outcomes = lifecycle.apply(plan, ec2=ec2, ssm=ssm)
    assert outcomes[0].status == "skipped" and "runs it" in outcomes[0].detail
    assert _exists(ec2, old)


def test_a_snapshot_that_backs_another_image_is_kept(aws, monkeypatch):
    ec2, ssm = aws
    old = _approved(ec2, 0)
    _approved(ec2, 1)
    snapshot = aws_images.snapshots_of(ec2.describe_images(ImageIds=[old])["Images"][0])[0]
    # moto's register_image makes a snapshot of its own, so the sharing is told by a stand-in.
    real = aws_images.snapshot_users

    def shared(client):
        users = real(client)
        assert users[snapshot] == {old}  # the real lookup sees the snapshot under its image
        return {**users, snapshot: {old, "ami-0000000000000twin"}}

    monkeypatch.setattr(aws_images, "snapshot_users", shared)
    plan = aws_prune.plan_aws(_settings(keep_approved=1), "debian12", ec2=ec2, ssm=ssm, now=NOW)
    assert plan.actions[0].image_id == old and plan.actions[0].snapshots == ()
    assert any(snapshot in note for note in plan.notes)
    lifecycle.apply(plan, ec2=ec2, ssm=ssm)
    assert not _exists(ec2, old) and not aws_images.snapshot_gone(ec2, snapshot)


def test_unreadable_launch_templates_fail_closed(aws):
    ec2, ssm = aws
    stub = Stubber(ec2)
    stub.add_client_error("describe_launch_templates", "UnauthorizedOperation", "not allowed")
    with stub, pytest.raises(lifecycle.UserError, match="UnauthorizedOperation"):
        aws_images.image_references(ec2, ssm, ["ami-0123456789abcdef0"], [])


# --- deprecation: moto lacks enable_image_deprecation, so Stubber stands in ----------------------
def _deprecation_plan(aws):
    ec2, ssm = aws
    older, newest = _approved(ec2, 0), _approved(ec2, 1)
    plan = aws_prune.plan_aws(_settings(keep_approved=3, deprecate_after_days=30), "debian12", ec2=ec2, ssm=ssm, now=NOW)
    return plan, older, newest


def test_older_approved_images_are_deprecated_and_read_back(aws):
    plan, older, newest = _deprecation_plan(aws)
    assert [(a.kind, a.image_id, a.deprecate_at) for a in plan.actions] == [("deprecate", older, "2026-12-29T12:00:00Z")]
    ec2 = boto3.client("ec2", REGION)
    stub = Stubber(ec2)
    when = datetime(2026, 12, 29, 12, 0, tzinfo=timezone.utc)
    stub.add_response("enable_image_deprecation", {"Return": True}, {"ImageId": older, "DeprecateAt": when})
    stub.add_response("describe_images", {"Images": [{"ImageId": older, "DeprecationTime": "2026-12-29T12:00:00.000Z"}]},
                      {"ImageIds": [older]})
    with stub:
        outcomes = lifecycle.apply(plan, ec2=ec2, ssm=boto3.client("ssm", REGION))
    stub.assert_no_pending_responses()
    assert [o.status for o in outcomes] == ["done"]


def test_a_deprecation_that_did_not_land_fails_loudly(aws):
    plan, older, _ = _deprecation_plan(aws)
    ec2 = boto3.client("ec2", REGION)
    stub = Stubber(ec2)
    stub.add_response("enable_image_deprecation", {"Return": True}, {"ImageId": older, "DeprecateAt": ANY})
    stub.add_response("describe_images", {"Images": [{"ImageId": older}]}, {"ImageIds": [older]})
    with stub, pytest.raises(plans.NotApplied, match=f"deprecate {older}") as raised:
        lifecycle.apply(plan, ec2=ec2, ssm=boto3.client("ssm", REGION))
    assert raised.value.outcomes[0].status == "failed"

    stub = Stubber(ec2)
    stub.add_client_error("enable_image_deprecation", "UnauthorizedOperation", "no")
    with stub, pytest.raises(plans.NotApplied, match="UnauthorizedOperation"):
        lifecycle.apply(plan, ec2=ec2, ssm=boto3.client("ssm", REGION))


def test_every_region_that_holds_copies_gets_a_plan(aws):
    ec2, ssm = aws
    _approved(ec2, 0)
    settings = Settings.model_validate({"aws": {"copy_regions": ["eu-west-1", REGION]}})
    plans = lifecycle.plan(settings, "aws", state_dir=None, os_names=["debian12", "al2023"], now=NOW)
    assert [(p.where, p.os) for p in plans] == [(REGION, "debian12"), (REGION, "al2023"),
                                               ("eu-west-1", "debian12"), ("eu-west-1", "al2023")]


# --- local --------------------------------------------------------------------------------------
def _stored(store: Store, tmp_path, n: int, status: str = "approved", os_name: str = "debian12"):
    disk = tmp_path / f"disk-{os_name}-{n}-{status}.qcow2"
    disk.write_bytes(b"QFI\xfb fake disk")
    tags = {"Status": status, "OS": os_name, "CreatedAt": f"2026-11-{n + 1:02d}T00:00:00Z"}
    if status == "approved":
        tags["ApprovedAt"] = f"2026-11-{n + 1:02d}T01:00:00Z"
    return store.add(disk, tags)


def test_local_keeps_n_and_never_the_newest(state_dir, tmp_path):
    store = Store(state_dir / "store")
    approved = [_stored(store, tmp_path, n) for n in range(5)]
    candidate = _stored(store, tmp_path, 7, "candidate")
    rejected = _stored(store, tmp_path, 0, "rejected")
    lone = _stored(store, tmp_path, 1, "approved", "al2023")

    before = sorted(p.name for p in store.root.iterdir())
    plan = local_prune.plan_local(_settings(keep_approved=2), state_dir, "debian12", processes={})
    assert sorted(p.name for p in store.root.iterdir()) == before  # planning changed nothing
    assert sorted(a.image_id for a in plan.actions) == sorted(i.id for i in approved[:3])
    assert all(a.kind == "delete" for a in plan.actions)
    assert any("no deprecation" in note for note in plan.notes)
    assert plan.protected[0].image_id == approved[-1].id

    outcomes = lifecycle.apply(plan)
    assert [o.status for o in outcomes] == ["done"] * 3
    assert sorted(i.id for i in store.list()) == sorted([approved[3].id, approved[4].id, candidate.id, rejected.id, lone.id])
    assert local_prune.plan_local(_settings(keep_approved=2), state_dir, "debian12", processes={}).actions == []
    assert local_prune.plan_local(_settings(keep_approved=1), state_dir, "al2023", processes={}).actions == []


def test_local_image_in_use_by_a_process_is_kept(state_dir, tmp_path):
    store = Store(state_dir / "store")
    approved = [_stored(store, tmp_path, n) for n in range(3)]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'rb'); time.sleep(60)",
                               str(approved[0].path)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the file is really open
            plan = local_prune.plan_local(_settings(keep_approved=1), state_dir, "debian12")
            if len(plan.actions) == 1:
                break
            time.sleep(0.1)
        assert [a.image_id for a in plan.actions] == [approved[1].id]
        why = {p.image_id: " ".join(p.why) for p in plan.protected}
        assert f"PID {holder.pid}" in why[approved[0].id]
    finally:
        holder.kill()
        holder.wait()


def test_after_approval_prunes_the_os_just_approved_counting_only_approvals_that_verify(state_dir, tmp_path):
    from golden_ami import config
    from golden_ami.targets.local.target import LocalTarget
    from tests.unit.test_attest import _approved as signed_approval

    cfg = config.resolve("debian12", "local")
    target = LocalTarget(cfg.settings, cfg.state_dir)
    approved = [signed_approval(target, tmp_path, f"b{n}", created=f"2026-11-{n + 1:02d}T00:00:00Z")[0] for n in range(5)]
    # Tagged approved by hand, newest of all: no signed statement, so neither kept as the newest
    # nor counted in keep_approved - and not removed either.
    forged = _stored(Store(state_dir / "store"), tmp_path, 20)
    assert cfg.settings.lifecycle.keep_approved == 3 and cfg.settings.lifecycle.deprecate_after_days == 30
    plans = lifecycle.after_approval(cfg, Progress(quiet=True))
    assert [sorted(a.image_id for a in p.actions) for p in plans] == [sorted(i.id for i in approved[:2])]
    assert plans[0].protected[0].image_id == approved[-1].id
    assert any(forged.id in note and "does not verify" in note for note in plans[0].notes)
    assert sorted(i.id for i in target.store.list()) == sorted([forged.id, *(i.id for i in approved[2:])])
    # `invoke latest` prints the image prune keeps as the newest.
    proc = invoke_cmd("latest", "--os=debian12", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["id"] == approved[-1].id, proc.stderr


def test_after_approval_reports_an_aws_failure_instead_of_failing_the_build(state_dir, monkeypatch):
    import botocore.exceptions

    from golden_ami import config

    def unreachable(*args, **kwargs):
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://ec2.us-east-1.amazonaws.com")

    monkeypatch.setattr(lifecycle, "plan", unreachable)
    said = []
    progress = Progress(quiet=True)
    monkeypatch.setattr(progress, "say", said.append)
    assert lifecycle.after_approval(config.resolve("debian12", "local"), progress) == []
    assert said and said[0].startswith("WARNING: pruning older debian12 images did not finish")
    assert "invoke prune --os=debian12 --target=local --yes" in said[0]


def test_lifecycle_settings_are_validated(tmp_path):
    from golden_ami import config
    from golden_ami.errors import UserError

    bad = tmp_path / "bad.yaml"
    bad.write_text("lifecycle: {keep_approved: 0}\n")
    with pytest.raises(UserError, match="lifecycle.keep_approved"):
        config.resolve("debian12", "local", str(bad))
    good = tmp_path / "good.yaml"
    good.write_text("lifecycle: {keep_approved: 5, deprecate_after_days: 7}\n")
    settings = config.resolve("debian12", "local", str(good)).settings
    assert (settings.lifecycle.keep_approved, settings.lifecycle.deprecate_after_days) == (5, 7)


# --- one meaning of "newest" ------------------------------------------------------------------
def test_latest_and_prune_agree_on_the_newest_when_an_older_build_is_approved_again(state_dir, tmp_path):
    """Built first but approved last (a re-verification of an older image): the newest is still
    the later build, for `latest` and prune alike - prune never removes what `latest` prints."""
    from golden_ami import config
    from golden_ami.targets.local.target import LocalTarget

    store = Store(state_dir / "store")
    older = _stored(store, tmp_path, 1)
    newer = _stored(store, tmp_path, 2)
    store.set_tags(older.id, {"ApprovedAt": "2026-11-20T00:00:00Z"})
    cfg = config.resolve("debian12", "local")
    latest = LocalTarget(cfg.settings, cfg.state_dir).list_images("debian12", "approved")[-1]
    plan = local_prune.plan_local(_settings(keep_approved=1), state_dir, "debian12", processes={})
    assert latest.id == newer.id
    assert plan.protected[0].image_id == newer.id and [a.image_id for a in plan.actions] == [older.id]


def test_latest_and_prune_agree_on_the_newest_on_aws(aws, state_dir):
    from golden_ami import config
    from golden_ami.targets.aws.target import AwsTarget

    ec2, ssm = aws
    older, newer = _approved(ec2, 1), _approved(ec2, 2)
    ec2.create_tags(Resources=[older], Tags=[{"Key": "ApprovedAt", "Value": "2026-11-20T00:00:00Z"}])
    cfg = config.resolve("debian12", "aws")
    latest = AwsTarget(cfg.settings, cfg.state_dir).list_images("debian12", "approved")[-1]
    plan = aws_prune.plan_aws(_settings(keep_approved=1), "debian12", ec2=ec2, ssm=ssm, now=NOW)
    assert latest.id == newer
    assert plan.protected[0].image_id == newer and older in {a.image_id for a in plan.actions}
