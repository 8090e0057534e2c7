"""One provenance schema: both targets write the keys golden_ami/provenance.py makes, the aws
template spells none of them, and tags of images built before (SourceAmi) read as the schema's."""
from __future__ import annotations

import json
import re

import boto3

from golden_ami import config, provenance, render
from golden_ami.progress import Progress
from golden_ami.targets.aws.target import AwsTarget
from golden_ami.targets.base import BuildContext
from golden_ami.targets.local.target import LocalTarget
from tests.unit.conftest import REGION

SOURCE = render.SourceImage(id="ami-0deb1000000000001", name="debian-12-amd64-20261101-1", location=REGION)


def _ctx(tmp_path, source=SOURCE):
    return BuildContext(build_id="debian12-b1", build_dir=tmp_path / "build", runtime_dir=tmp_path / "runtime",
                        fingerprint="sha256:" + "f" * 64, commit="abc123", source=source,
                        progress=Progress(quiet=True), created_at="2026-11-29T12:00:00Z")


def test_the_schema(state_dir, tmp_path):
    cfg = config.resolve("debian12", "aws")
    ctx = _ctx(tmp_path)
    assert provenance.tags(cfg, ctx) == {
        "BuildId": "debian12-b1", "Fingerprint": "sha256:" + "f" * 64, "SourceImage": SOURCE.id,
        "SourceImageName": SOURCE.name, "OS": "debian12", "Profile": cfg.profile, "PipelineCommit": "abc123",
        "ManagedBy": "golden-ami"}


def test_the_local_target_writes_the_schema(state_dir, tmp_path):
    cfg = config.resolve("debian12", "local")
    ctx = _ctx(tmp_path, render.SourceImage(id="sha256:" + "1" * 64, name="base", location="/x"))
    disk = ctx.runtime_dir / "packer-output" / "disk.qcow2"
    disk.parent.mkdir(parents=True)
    disk.write_bytes(b"disk")
    image = LocalTarget(cfg.settings, cfg.state_dir).register_candidate(cfg, ctx, {})
    assert image.tags == {**provenance.tags(cfg, ctx), "Status": "candidate", "Target": "local",
                          "CreatedAt": ctx.created_at}


def test_the_aws_template_takes_the_schema_as_one_map(state_dir, tmp_path, monkeypatch):
    cfg = config.resolve("debian12", "aws", overrides={"aws": {"ssh_cidrs": ["203.0.113.7/32"]}})
    ctx = _ctx(tmp_path)
    variables = AwsTarget(cfg.settings, cfg.state_dir).packer_variables(cfg, ctx)
    assert variables["provenance"] == provenance.tags(cfg, ctx)
    out = render.render(cfg, SOURCE, tmp_path / "render", packer_plugins=False).directory
    template = (out / render.TEMPLATE_FILE).read_text()
    for which in ("run_tags", "run_volume_tags", "snapshot_tags", "tags"):
        assert re.search(rf"^\s*{which}\s*=\s*merge\(var\.provenance, \{{", template, re.M), which
    # The template spells no provenance key: the map is their only writer.
    for key in provenance.tags(cfg, ctx):
        assert not re.search(rf"\b{key}\s*=", template), key
    assert "SourceAmi" not in template
    assert "provenance" not in json.loads((out / render.VARIABLES_FILE).read_text())  # per build: not rendered


def test_tags_written_before_the_schema_read_as_the_schema(aws_env):
    assert provenance.migrated({"SourceAmi": "ami-1", "SourceAmiName": "n", "OS": "x"}) == {
        "SourceAmi": "ami-1", "SourceAmiName": "n", "OS": "x", "SourceImage": "ami-1", "SourceImageName": "n"}
    assert provenance.migrated({"SourceAmi": "ami-old", "SourceImage": "ami-new"})["SourceImage"] == "ami-new"
    ec2 = boto3.client("ec2", REGION)
    instance = ec2.run_instances(ImageId=SOURCE.id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=instance, Name="golden-old")["ImageId"]
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "ManagedBy", "Value": "golden-ami"},
                                                {"Key": "SourceAmi", "Value": SOURCE.id},
                                                {"Key": "SourceAmiName", "Value": SOURCE.name}])
    cfg = config.resolve("debian12", "aws")
    target = AwsTarget(cfg.settings, cfg.state_dir)
    for image in (target.get_image(image_id), *target.list_images()):
        assert image.tags["SourceImage"] == SOURCE.id and image.tags["SourceImageName"] == SOURCE.name
