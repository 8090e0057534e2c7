"""Rebuild decisions against moto: build only on a new source image, changed content or age;
say why for every OS; a dry run and a no-op run launch nothing."""
from __future__ import annotations

import datetime as dt
import json

import boto3

from golden_ami import config, rebuild, render
from golden_ami.progress import Progress
from golden_ami.targets.aws.target import AwsTarget
from tests.conftest import SITE_VALUES
from tests.unit.conftest import DEBIAN_OWNER, REGION, add_moto_ami

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)


def _cfg(tmp_path, os_name, extra=None):
    path = tmp_path / "golden-ami.yaml"
    path.write_text(json.dumps({"aws": {"ssh_cidrs": ["203.0.113.7/32"]}, **(extra or {})}))
    return config.resolve(os_name, "aws", str(path))


def _approve_current(tmp_path, cfg, created=NOW):
    """An approved image of cfg's OS, built from today's source and today's content."""
    target = AwsTarget(cfg.settings, cfg.state_dir)
    source = target.resolve_source(cfg)
    fingerprint = render.render(cfg, source, tmp_path / f"render-{cfg.os.name}").fingerprint
    ec2 = boto3.client("ec2", REGION)
    instance = ec2.run_instances(ImageId=source.id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=instance, Name=f"golden-{cfg.os.name}")["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    tags = {"ManagedBy": "golden-ami", "OS": cfg.os.name, "Status": "approved", "SourceAmi": source.id,
            "Fingerprint": fingerprint, "CreatedAt": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ApprovedAt": created.strftime("%Y-%m-%dT%H:%M:%SZ")}
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return image_id


def _decide(cfg, now=NOW):
    return rebuild.decide(cfg, AwsTarget(cfg.settings, cfg.state_dir), now=now)


def test_nothing_to_do_then_exactly_the_os_whose_source_moved(aws_env, tmp_path):
    debian, ubuntu = _cfg(tmp_path, "debian12"), _cfg(tmp_path, "ubuntu2404")
    _approve_current(tmp_path, debian)
    _approve_current(tmp_path, ubuntu)
    first = rebuild.run([debian, ubuntu], None, dry_run=True, jobs=1, progress=Progress(quiet=True))
    assert [o.decision.build for o in first] == [False, False]
    assert all(o.decision.reasons[0].startswith("nothing to do") for o in first)

    add_moto_ami("ami-0deb1000000000009", "debian-12-amd64-20261128-9", DEBIAN_OWNER, dt.datetime(2026, 11, 28))
    second = rebuild.run([debian, ubuntu], None, dry_run=True, jobs=1, progress=Progress(quiet=True))
    planned = {o.os: o.decision for o in second}
    assert planned["debian12"].build and len(planned["debian12"].reasons) == 1
    assert planned["debian12"].reasons[0].startswith("new source image: ami-0deb1000000000009")
    assert not planned["ubuntu2404"].build
    assert all(o.status in ("planned", "skipped") for o in second)  # a dry run builds nothing


def test_changed_content_and_age(aws_env, tmp_path):
    debian = _cfg(tmp_path, "debian12")
    _approve_current(tmp_path, debian, created=NOW - dt.timedelta(days=3))
    assert not _decide(debian).build
    changed = _cfg(tmp_path, "debian12", {"controls": {"4.2.16": {"params": {"max_auth_tries": 3}}}})
    decision = _decide(changed)
    assert decision.build and decision.reasons[0].startswith("content changed")
    old = _decide(debian, now=NOW + dt.timedelta(days=40))
    assert old.build and old.reasons == ["older than 30 days (created 2026-11-26)"]


def test_an_os_without_an_approved_image_is_built_and_an_unresolvable_one_is_an_error(aws_env, tmp_path):
    assert _decide(_cfg(tmp_path, "debian12")).reasons[0].startswith("no approved image yet")
    broken = _decide(_cfg(tmp_path, "ubuntu2204"))  # no Canonical 22.04 image in this region
    assert not broken.build and "no AMI named" in broken.error


def test_the_updates_probe_is_asked_only_when_nothing_else_changed(aws_env, tmp_path):
    debian = _cfg(tmp_path, "debian12")
    _approve_current(tmp_path, debian)
    asked = []

    def probe(cfg, target, image):
        asked.append(image.id)
        return ["openssl 3.0.17-1~deb12u3 (bookworm-security)"]

    decision = rebuild.decide(debian, AwsTarget(debian.settings, debian.state_dir), now=NOW, probe=probe)
    assert decision.build and decision.reasons[0].startswith("pending security updates") and len(asked) == 1
    changed = _cfg(tmp_path, "debian12", {"controls": {"4.2.16": {"params": {"max_auth_tries": 3}}}})
    assert rebuild.decide(changed, AwsTarget(changed.settings, changed.state_dir), now=NOW, probe=probe).build
    assert len(asked) == 1  # a build is due anyway: no instance is booted to ask

    def nothing_pending(cfg, target, image):
        return []

    quiet = rebuild.decide(debian, AwsTarget(debian.settings, debian.state_dir), now=NOW, probe=nothing_pending)
    assert not quiet.build and quiet.reasons[0].endswith("; no pending security updates")


def test_an_os_still_waiting_for_a_site_value_is_an_error_not_a_build(aws_env, tmp_path):
    """al2023 without its log host (5.1.1.6): the decision names the missing key instead of
    planning a build that would refuse to start; with it, the decision goes on to the source
    image (which moto's SSM parameter names but its EC2 does not hold: an error of its own)."""
    waiting = _decide(_cfg(tmp_path, "al2023"))
    assert not waiting.build and waiting.error.startswith("controls.5.1.1.6.params.log_host is not set")
    ready = _decide(_cfg(tmp_path, "al2023", SITE_VALUES))
    assert "5.1.1.6" not in ready.error and "source AMI" in ready.error, ready
