"""Launch templates follow approvals (aws.launch_templates), against moto's launch templates.

After an approval, publish gives each configured template a new version whose only change is
the approved ImageId, made from the template's default version, and makes it the default
when asked. A template its team has not tagged GoldenAmiFollow=true is refused by name
(the IAM policy would deny it too); a rejected image touches no template; publishing the same
image again adds no version. (moto ignores SourceVersion, so these tests see only the ImageId
in the new version; the request's SourceVersion is checked from what EC2 was asked.)
"""
from __future__ import annotations

import json

import boto3
import botocore.client
import pytest

from golden_ami import config, pipeline
from golden_ami.errors import UserError
from golden_ami.progress import Progress
from golden_ami.targets.aws import recorder
from golden_ami.targets.aws.target import AwsTarget
from tests.unit.conftest import REGION

FOLLOW = {"GoldenAmiFollow": "true"}


def _cfg(tmp_path, templates):
    path = tmp_path / "golden-ami.yaml"
    path.write_text(json.dumps({"aws": {"ssh_cidrs": ["203.0.113.7/32"], "launch_templates": templates}}))
    return config.resolve("debian12", "aws", str(path))


def _image(ec2, status="approved", build_id="debian12-lt-1"):
    instance = ec2.run_instances(ImageId="ami-0deb1000000000001", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=instance, Name=f"golden-{build_id}")["ImageId"]
    snapshots = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]
                 if "Ebs" in m]
    ec2.create_tags(Resources=[image_id, *snapshots], Tags=[{"Key": k, "Value": v} for k, v in {
        "ManagedBy": "golden-ami", "BuildId": build_id, "OS": "debian12", "Status": status}.items()])
    ec2.terminate_instances(InstanceIds=[instance])
    return image_id


def _template(ec2, name, tags=FOLLOW, image_id="ami-0deb1000000000001"):
    spec = [{"ResourceType": "launch-template", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}] if tags else []
    return ec2.create_launch_template(LaunchTemplateName=name, TagSpecifications=spec, LaunchTemplateData={
        "ImageId": image_id, "InstanceType": "t3.micro"})["LaunchTemplate"]["LaunchTemplateId"]


def _versions(ec2, template_id):
    found = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)["LaunchTemplateVersions"]
    return sorted(found, key=lambda v: v["VersionNumber"])


def _publish(cfg, image_id):
    target = AwsTarget(cfg.settings, cfg.state_dir)
    return pipeline.publish_if_approved(cfg, target, target.get_image(image_id), Progress(quiet=True))


def test_by_name_a_new_default_version_launches_the_approved_image(aws_env, tmp_path):
    ec2 = boto3.client("ec2", REGION)
    template_id = _template(ec2, "web")
    image_id = _image(ec2)
    cfg = _cfg(tmp_path, [{"name": "web", "set_default": True}])
    with recorder.capture() as called:
        published = _publish(cfg, image_id)
    versions = _versions(ec2, template_id)
    assert [v["VersionNumber"] for v in versions] == [1, 2]
    new = versions[-1]
    assert new["LaunchTemplateData"]["ImageId"] == image_id and new["DefaultVersion"]
    assert image_id in new["VersionDescription"] and "debian12-lt-1" in new["VersionDescription"]
    assert published[f"launch template web ({template_id})"] == "version 2 (default)"
    assert {"ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate"} <= called


def test_by_id_without_set_default_the_default_stays(aws_env, tmp_path):
    ec2 = boto3.client("ec2", REGION)
    template_id = _template(ec2, "batch")
    image_id = _image(ec2)
    published = _publish(_cfg(tmp_path, [{"id": template_id}]), image_id)
    versions = _versions(ec2, template_id)
    assert [v["LaunchTemplateData"]["ImageId"] for v in versions] == ["ami-0deb1000000000001", image_id]
    assert versions[0]["DefaultVersion"] and not versions[1]["DefaultVersion"]
    assert published[f"launch template batch ({template_id})"] == "version 2"


def test_the_new_version_is_made_from_the_default_version(aws_env, tmp_path, monkeypatch):
    ec2 = boto3.client("ec2", REGION)
    template_id = _template(ec2, "web")
    ec2.create_launch_template_version(LaunchTemplateId=template_id, SourceVersion="1",
                                       LaunchTemplateData={"InstanceType": "t3.large"})  # a draft, not the default
    image_id = _image(ec2)
    asked = []
    original = botocore.client.BaseClient._make_api_call

    def spy(self, operation, params):
        if operation == "CreateLaunchTemplateVersion":
            asked.append(params)
        return original(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", spy)
    _publish(_cfg(tmp_path, [{"name": "web"}]), image_id)
    assert [(p["SourceVersion"], p["LaunchTemplateData"]) for p in asked] == [("1", {"ImageId": image_id})]


def test_a_template_not_tagged_to_follow_is_refused_by_name_and_left_unchanged(aws_env, tmp_path):
    ec2 = boto3.client("ec2", REGION)
    tagged = _template(ec2, "web")
    untagged = _template(ec2, "payments", tags={"Team": "payments"})
    image_id = _image(ec2)
    cfg = _cfg(tmp_path, [{"name": "web", "set_default": True}, {"name": "payments", "set_default": True}])
    with pytest.raises(UserError, match=r"launch template payments \(lt-[0-9a-f]+\) is not tagged GoldenAmiFollow=true"):
        _publish(cfg, image_id)
    # Refused before anything changed: neither template, nor the pointer.
    assert len(_versions(ec2, untagged)) == 1 and len(_versions(ec2, tagged)) == 1
    assert not boto3.client("ssm", REGION).describe_parameters()["Parameters"]


def test_a_missing_template_is_named(aws_env, tmp_path):
    ec2 = boto3.client("ec2", REGION)
    image_id = _image(ec2)
    with pytest.raises(UserError, match="launch template nowhere"):
        _publish(_cfg(tmp_path, [{"name": "nowhere"}]), image_id)


def test_a_rejected_image_touches_no_template(aws_env, tmp_path):
    ec2 = boto3.client("ec2", REGION)
    template_id = _template(ec2, "web")
    image_id = _image(ec2, status="rejected")
    assert _publish(_cfg(tmp_path, [{"name": "web", "set_default": True}]), image_id) is None
    versions = _versions(ec2, template_id)
    assert len(versions) == 1 and versions[0]["LaunchTemplateData"]["ImageId"] == "ami-0deb1000000000001"


def test_publishing_the_same_image_again_adds_no_version(aws_env, tmp_path):
    ec2 = boto3.client("ec2", REGION)
    template_id = _template(ec2, "web")
    image_id = _image(ec2)
    cfg = _cfg(tmp_path, [{"name": "web"}])
    first = _publish(cfg, image_id)
    # Asked again with set_default: still no new version, but the existing one becomes the default.
    again = _publish(_cfg(tmp_path, [{"name": "web", "set_default": True}]), image_id)
    versions = _versions(ec2, template_id)
    assert len(versions) == 2 and versions[1]["DefaultVersion"]
    assert first[f"launch template web ({template_id})"] == "version 2"
    assert again[f"launch template web ({template_id})"] == "version 2 (default)"


def test_the_recorder_names_the_launch_template_and_its_tags(aws_env, tmp_path):
    ec2 = boto3.client("ec2", REGION)
    template_id = _template(ec2, "web")
    image_id = _image(ec2)
    before = len(recorder.recorded_contexts())
    recorder.install()
    _publish(_cfg(tmp_path, [{"name": "web", "set_default": True}]), image_id)
    contexts = [c for c in recorder.recorded_contexts()[before:]
                if c.action in ("ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate")]
    assert {c.action for c in contexts} == {"ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate"}
    for context in contexts:
        assert context.resource == f"arn:aws:ec2:{REGION}:{recorder.ANY_ACCOUNT}:launch-template/{template_id}"
        assert dict(context.resource_tags or ()) == FOLLOW


def test_a_version_that_does_not_read_back_as_asked_stops_the_publish(aws_env, tmp_path, monkeypatch):
    ec2 = boto3.client("ec2", REGION)
    _template(ec2, "web")
    image_id = _image(ec2)
    original = botocore.client.BaseClient._make_api_call

    def stale_read(self, operation, params):  # EC2 answering as if the change had not landed
        answer = original(self, operation, params)
        if operation == "DescribeLaunchTemplateVersions" and params.get("Versions", ["$"])[0].isdigit():
            for version in answer["LaunchTemplateVersions"]:
                version["DefaultVersion"] = False
        return answer

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", stale_read)
    with pytest.raises(RuntimeError, match="launch template web version 2 did not become the default"):
        _publish(_cfg(tmp_path, [{"name": "web", "set_default": True}]), image_id)
