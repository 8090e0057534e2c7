"""The aws target's boto3 logic against moto in-process (and botocore's Stubber where moto
lacks an API): source images, test-instance lifecycle, tags, the SSM pointer, outside checks."""
from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber

from golden_ami import config, sshkeys
from golden_ami.errors import UserError, VerificationError
from golden_ami.progress import Progress
from golden_ami.targets.aws import checks, source
from golden_ami.targets.aws.target import AwsTarget, runner_cidrs
from tests.unit.conftest import DEBIAN_OWNER, REGION


def _cfg(os_name="debian12", **aws):
    user = {"aws": {"ssh_cidrs": ["203.0.113.7/32"], **aws}}
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(json.dumps(user))
    return config.resolve(os_name, "aws", handle.name)


def _target(cfg):
    return AwsTarget(cfg.settings, cfg.state_dir)


def test_source_from_the_owner_pinned_filter_takes_the_newest(aws_env):
    cfg = _cfg()
    src = _target(cfg).resolve_source(cfg)
    assert src.id == "ami-0deb1000000000002" and src.name == "debian-12-amd64-20261102-1"


def test_source_from_the_ssm_parameter(aws_env):
    # moto keeps /aws/service/ to itself, so the parameter read is stubbed; the AMI is real.
    cfg = _cfg("ubuntu2404")
    ssm = boto3.client("ssm", REGION)
    stub = Stubber(ssm)
    stub.add_response("get_parameter", {"Parameter": {"Name": "p", "Value": "ami-0deb1000000000001"}},
                      {"Name": "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"})
    with stub:
        resolved = source.resolve(cfg, boto3.client("ec2", REGION), ssm)
    assert resolved.id == "ami-0deb1000000000001" and resolved.name == "debian-12-amd64-20261101-1"


def test_source_errors_are_actionable(aws_env):
    cfg = _cfg("ubuntu2204")  # no parameter, no Canonical images in this account's view
    with pytest.raises(UserError, match="no AMI named ubuntu/images"):
        _target(cfg).resolve_source(cfg)
    with pytest.raises(UserError, match="does not exist"):
        _target(cfg).resolve_source(cfg, pinned="ami-0000000000000dead")
    with pytest.raises(UserError, match="not an AMI id"):
        _target(cfg).resolve_source(cfg, pinned="$(reboot)")


def test_a_filter_always_names_its_owners(aws_env):
    # The OS data may never resolve through an owner-less filter.
    cfg = _cfg()
    ec2 = boto3.client("ec2", REGION)
    stub = Stubber(ec2)
    stub.add_response("describe_images", {"Images": []}, {
        "Owners": [DEBIAN_OWNER],
        "Filters": [{"Name": "name", "Values": ["debian-12-amd64-*"]}, {"Name": "state", "Values": ["available"]},
                    {"Name": "architecture", "Values": ["x86_64"]}]})
    with stub, pytest.raises(UserError):
        source.resolve(cfg, ec2, boto3.client("ssm", REGION))
    stub.assert_no_pending_responses()


def _candidate(ec2, build_id="debian12-test-1", created="2026-11-29T00:00:00Z"):
    instance = ec2.run_instances(ImageId="ami-0deb1000000000001", MinCount=1, MaxCount=1)["Instances"][0]
    image_id = ec2.create_image(InstanceId=instance["InstanceId"], Name=f"golden-{build_id}")["ImageId"]
    snapshots = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]
                 if "Ebs" in m]
    # The image and its snapshots, as Packer's tags and snapshot_tags do (the IAM policy's conditions read them).
    ec2.create_tags(Resources=[image_id, *snapshots], Tags=[{"Key": k, "Value": v} for k, v in {
        "ManagedBy": "golden-ami", "BuildId": build_id, "OS": "debian12", "Status": "candidate",
        "Fingerprint": "sha256:abc", "CreatedAt": created}.items()])
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    return image_id


def test_tags_list_and_the_ssm_pointer(aws_env):
    cfg = _cfg()
    target = _target(cfg)
    ec2 = boto3.client("ec2", REGION)
    first, second = _candidate(ec2, "b1"), _candidate(ec2, "b2", created="2026-11-29T00:30:00Z")
    # Approved in the other order: the later build is still the newer image (targets.base.age_order).
    target.set_tags(second, {"Status": "approved", "ApprovedAt": "2026-11-29T01:00:00Z"})
    target.set_tags(first, {"Status": "approved", "ApprovedAt": "2026-11-29T02:00:00Z"})
    approved = target.list_images("debian12", "approved")
    assert [i.id for i in approved] == [first, second]
    assert target.set_tags(first, {"Status": "rejected", "ApprovedAt": None}).tags.get("ApprovedAt") is None
    published = target.publish(cfg, target.get_image(second), Progress(quiet=True))
    parameter = boto3.client("ssm", REGION).get_parameter(Name="/golden-ami/debian12/latest")["Parameter"]
    assert parameter["Value"] == second and parameter["DataType"] == "aws:ec2:image"
    assert published == {f"/golden-ami/debian12/latest ({REGION})": second}


def test_sharing_happens_only_in_publish(aws_env):
    cfg = _cfg(share_accounts=["111122223333"])
    target = _target(cfg)
    image_id = _candidate(boto3.client("ec2", REGION))
    permissions = boto3.client("ec2", REGION).describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    assert permissions["LaunchPermissions"] == []
    target.publish(cfg, target.get_image(image_id), Progress(quiet=True))
    permissions = boto3.client("ec2", REGION).describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    assert permissions["LaunchPermissions"] == [{"UserId": "111122223333"}]


def test_test_instance_is_locked_down_and_torn_down(aws_env, tmp_path):
    cfg = _cfg()
    target = _target(cfg)
    ec2 = boto3.client("ec2", REGION)
    image = target.get_image(_candidate(ec2))
    key = sshkeys.generate(tmp_path / "k", "id", "verify")
    with target.boot_test_instance(cfg, image, key, tmp_path, Progress(quiet=True)) as instance:
        described = ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"][0]["Instances"][0]
        assert described["MetadataOptions"]["HttpTokens"] == "required"
        assert "IamInstanceProfile" not in described
        tags = {t["Key"]: t["Value"] for t in described["Tags"]}
        assert tags["Purpose"] == "verify" and tags["BuildId"] == "debian12-test-1"
        group = ec2.describe_security_groups(GroupIds=[instance.details["security_group"]])["SecurityGroups"][0]
        ranges = [r["CidrIp"] for p in group["IpPermissions"] for r in p["IpRanges"]]
        assert ranges == ["203.0.113.7/32"]
        assert "0.0.0.0/0" not in json.dumps(group["IpPermissions"])
        assert ec2.describe_key_pairs(KeyNames=[instance.details["key_pair"]])["KeyPairs"]
        attribute = ec2.describe_instance_attribute(InstanceId=instance.instance_id,
                                                    Attribute="instanceInitiatedShutdownBehavior")
        assert attribute["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        details = instance.details
    state = ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "terminated"
    assert not [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] == details["key_pair"]]
    assert not [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupId"] == details["security_group"]]


def test_teardown_runs_when_verification_blows_up(aws_env, tmp_path):
    cfg = _cfg()
    target = _target(cfg)
    ec2 = boto3.client("ec2", REGION)
    image = target.get_image(_candidate(ec2))
    key = sshkeys.generate(tmp_path / "k", "id", "verify")
    with pytest.raises(KeyboardInterrupt):
        with target.boot_test_instance(cfg, image, key, tmp_path, Progress(quiet=True)) as instance:
            raise KeyboardInterrupt
    running = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:Purpose", "Values": ["verify"]}])["Reservations"]
               for i in r["Instances"] if i["State"]["Name"] != "terminated"]
    assert running == []
    assert not [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("golden-ami-verify-")]
    assert instance.instance_id


def test_private_interface_without_address_is_refused(aws_env, tmp_path, monkeypatch):
    cfg = _cfg(ssh_interface="public_ip")
    target = _target(cfg)
    ec2 = boto3.client("ec2", REGION)
    image = target.get_image(_candidate(ec2))
    key = sshkeys.generate(tmp_path / "k", "id", "verify")
    subnet = ec2.describe_subnets()["Subnets"][0]
    ec2.modify_subnet_attribute(SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": False})
    cfg = _cfg(ssh_interface="public_ip", subnet_id=subnet["SubnetId"])
    with pytest.raises(VerificationError, match="no public ip"):
        with target.boot_test_instance(cfg, image, key, tmp_path, Progress(quiet=True)):
            pass


def test_outside_checks_read_what_moto_cannot_show(aws_env):
    ec2 = boto3.client("ec2", REGION)
    stub = Stubber(ec2)
    image = {"ImageId": "ami-0abc", "Public": False, "BlockDeviceMappings": [
        {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "SnapshotId": "snap-1"}}]}
    stub.add_response("describe_images", {"Images": [image]})
    stub.add_response("describe_image_attribute", {"ImageId": "ami-0abc", "ImdsSupport": {"Value": "v2.0"}})
    stub.add_response("describe_image_attribute", {"ImageId": "ami-0abc", "LaunchPermissions": []})
    stub.add_response("describe_images", {"Images": [image]})
    with stub:
        rows = {row["id"]: row for row in checks.image_checks(ec2, "ami-0abc")}
    assert {k: r["outcome"] for k, r in rows.items()} == {
        "GA-AWS-EBS-ENCRYPTED": "pass", "GA-AWS-IMDS-V2": "pass", "GA-AWS-NOT-PUBLIC": "pass"}

    bad = {**image, "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": False}}]}
    stub = Stubber(ec2)
    stub.add_response("describe_images", {"Images": [bad]})
    stub.add_response("describe_image_attribute", {"ImageId": "ami-0abc"})
    stub.add_response("describe_image_attribute", {"ImageId": "ami-0abc", "LaunchPermissions": [{"Group": "all"}]})
    stub.add_response("describe_images", {"Images": [bad]})
    with stub:
        rows = {row["id"]: row for row in checks.image_checks(ec2, "ami-0abc")}
    assert all(r["outcome"] == "fail" for r in rows.values())
    assert "/dev/xvda" in rows["GA-AWS-EBS-ENCRYPTED"]["message"]
    assert "None" in rows["GA-AWS-IMDS-V2"]["message"]


def test_runner_address(monkeypatch):
    assert runner_cidrs(["10.0.0.0/24"]) == ["10.0.0.0/24"]

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(UserError, match="set aws.ssh_cidrs"):
        runner_cidrs([])


def test_the_cis_disk_layout_is_refused_before_any_aws_call(state_dir):
    # No aws_env: a call to AWS here would fail on credentials, not with this message.
    cfg = config.resolve("debian12", "aws", overrides={"disk_layout": "cis", "aws": {"ssh_cidrs": ["203.0.113.7/32"]}})
    with pytest.raises(UserError, match="disk_layout: cis is built on the local target only"):
        _target(cfg).resolve_source(cfg)
