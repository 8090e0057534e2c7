"""The aws target end to end against an EC2 test double: moto's server for the API, real
QEMU VMs for the instances (tests/e2e/ec2_on_qemu.py), the installed Packer 1.6.6.

`invoke build --os=debian12 --target=aws` must: resolve the source AMI through the owner-pinned
filter, run Packer amazon-ebs (temporary key pair and security group from the runner's CIDR,
encrypted copy, provenance tags), set ImdsSupport, boot a test instance with IMDSv2 required,
pin its host key from the console output, verify, approve, publish the SSM pointer - and leave
no instance, key pair or security group behind. The scheduled path: a rebuild right after
builds nothing; a new source image is named by a dry run that launches nothing; prune spares
the pointer's image. Then a verification that fails on purpose (the console never shows the host
key) must reject and clean up just the same, and one killed outright leaves what `reap --yes`
removes.

Cost, measured by `.ci/run`'s durations: one Packer build (two boots of the golden disk: the
builder and the test instance), a minute of a boot for the failed verification, a few seconds
for the killed one. Two things are deliberately not repeated here, each costing minutes of TCG:
  - a second real build from the new source image (its decision is the dry run's; the build
    is this module's; deprecation after approval and prune with removals run against moto in
    tests/unit/test_lifecycle.py and test_rebuild.py);
  - `invoke audit --instance-id` of an instance of the approved AMI (the aws path - address and
    AMI from describe_instances, key pinned from the console, refusals - runs against moto and
    this machine's sshd in tests/integration/test_audit_ssh.py; an audit of a booted approved
    image runs in tests/e2e/test_day_two.py).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import signal
import subprocess
import sys
import time
import json
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import PROJECT_ROOT, free_port, kms_signs_digests, record_packer_requests_on_moto, seed_moto_amis
from tests.e2e.ec2_on_qemu import QemuEc2
from tests.unit.conftest import DEBIAN_OWNER, add_moto_ami

pytestmark = pytest.mark.e2e

REGION = "us-east-1"
SOURCE_AMI = "ami-0deb100000000c0de"


def run_invoke(*args: str) -> tuple[int, str]:
    """`invoke <args>` in this process (so it talks to the in-process EC2 double)."""
    from invoke import Collection, Program

    import tasks

    out = io.StringIO()
    program = Program(namespace=Collection.from_module(tasks), binary="invoke")
    code = 0
    with contextlib.redirect_stdout(out):
        try:
            program.run(["invoke", *args], exit=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


@pytest.fixture(scope="module")
def ec2(tmp_path_factory, golden_disk):
    from moto.server import ThreadedMotoServer

    work = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        # A Debian-owned source AMI whose disk is the approved local golden image (nothing left
        # to patch, so the build exercises the AWS path rather than apt).
        seed_moto_amis(mp, work, [{
            "ami_id": SOURCE_AMI, "name": "debian-12-amd64-20261101-1", "owner_id": "136693071363",
            "state": "available", "public": True, "architecture": "x86_64", "root_device_type": "ebs",
            "root_device_name": "/dev/xvda", "virtualization_type": "hvm", "creation_date": "2026-11-01T00:00:00.000Z",
            "description": "Debian 12", "hypervisor": "xen", "image_location": "debian", "image_type": "machine",
            "platform": None, "sriov": "simple"}])
        for key, value in {"AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
                           "GOLDEN_AMI_STATE_DIR": str(work / "state"), "GOLDEN_AMI_CONFIG": ""}.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        # Packer's calls reach EC2 only through this server: the IAM policy check needs them.
        record_packer_requests_on_moto(mp)
        kms_signs_digests(mp)  # moto's Sign ignores MessageType=DIGEST; KMS does not
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()
        harness = QemuEc2(work / "vms", free_port(), login_user="admin")
        harness.disks[SOURCE_AMI] = golden_disk
        harness.start_imds()
        harness.install(mp)
        signing_key = boto3.client("kms", region_name=REGION).create_key(
            KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256", Description="golden-ami approvals")["KeyMetadata"]["KeyId"]
        config = work / "golden-ami.yaml"
        expires = (dt.date.today() + dt.timedelta(days=30)).isoformat()
        config.write_text(yaml.safe_dump({
            # The AWS path is under test here, not the CIS set (the local end-to-end proves that):
            # the baseline profile keeps this build and its verification short.
            "profile": "baseline",
            "rebuild": {"os": ["debian12"]},  # the one OS this double has a source image for
            "aws": {"region": REGION, "ssh_cidrs": ["127.0.0.1/32"], "ssh_port": harness.ssh_port,
                    "signing_kms_key_id": signing_key},
            # The agents' packages come from S3, which these machines cannot reach: their
            # scripts are rendered and linted, but not run here. 1.8 (apply every update, and
            # verify none is pending) is off: the source disk is the local build's approved
            # image, patched and proven there minutes ago, and each apt run against the archive
            # costs a build here about a minute of emulated CPU, its verification another.
            # Switched off in the open: each with why and until when, in the report and statement.
            "controls": {control: {"enabled": False, "exception": {"justification": why, "expires": expires}}
                         for control, why in (("GA-AGENT-SSM", "the agent's package comes from S3, unreachable here"),
                                              ("GA-AGENT-CWAGENT", "the agent's package comes from S3, unreachable here"),
                                              ("1.8", "the source disk is the local build's patched image"))},
        }))
        try:
            yield harness, config, boto3.client("ec2", region_name=REGION), boto3.client("ssm", region_name=REGION)
        finally:
            harness.close()
            server.stop()


def _leftovers(client) -> dict[str, list[str]]:
    live = [i["InstanceId"] for r in client.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")]
    keys = [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]]
    groups = [g["GroupName"] for g in client.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"]
    return {"instances": live, "key_pairs": keys, "security_groups": groups}


@pytest.fixture(scope="module")
def aws_build(ec2):
    harness, config, client, _ = ec2
    code, out = run_invoke("build", "--os=debian12", "--target=aws", f"--config={config}", "--json")
    assert code == 0, out + "\n" + harness.diagnostics()
    return json.loads(out)


def test_build_on_aws_is_approved_published_and_latest(ec2, aws_build):
    harness, config, client, ssm = ec2
    image_id = aws_build["image_id"]
    assert aws_build["status"] == "approved", aws_build
    image = client.describe_images(ImageIds=[image_id])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["Status"] == "approved" and tags["SourceImage"] == SOURCE_AMI
    assert tags["Fingerprint"] == aws_build["fingerprint"] and tags["ReportDigest"].startswith("sha256:")
    assert tags["SourceImageName"] == "debian-12-amd64-20261101-1" and tags["OS"] == "debian12"
    assert all(m["Ebs"]["Encrypted"] for m in image["BlockDeviceMappings"])
    assert ssm.get_parameter(Name="/golden-ami/debian12/latest")["Parameter"]["Value"] == image_id

    report = json.loads((Path(aws_build["build_dir"]) / "verify" / "report.json").read_text())
    outcomes = {row["id"]: row["outcome"] for row in report["controls"]}
    for control in ("GA-AWS-EBS-ENCRYPTED", "GA-AWS-IMDS-V2", "GA-AWS-NOT-PUBLIC", "GA-AWS-IMDSV2-ENFORCED",
                    "GA-SSH-PASSWORD", "GA-FW-INBOUND", "GA-HYG-HOSTKEYS"):
        assert outcomes[control] == "pass", (control, report)

    code, out = run_invoke("latest", "--os=debian12", "--target=aws", f"--config={config}", "--json")
    assert code == 0 and json.loads(out)["id"] == image_id
    assert _leftovers(client) == {"instances": [], "key_pairs": [], "security_groups": []}
    assert harness.running() == []


def test_the_aws_approval_is_signed_by_kms_and_a_retagged_image_stops_counting(ec2, aws_build, tmp_path):
    """The approval's statement, signed with the KMS key, verifies against the public half a
    consumer pins; a tag changed afterwards is named and the image stops counting until restored."""
    _, config, client, _ = ec2
    image_id = aws_build["image_id"]
    code, out = run_invoke("signing-key", "--target=aws", f"--config={config}", "--json")
    assert code == 0 and json.loads(out)["scheme"] == "ecdsa-sha2-nistp256"
    pinned = tmp_path / "approvals.pem"
    pinned.write_text(json.loads(out)["public_key_pem"])
    attest = ("attest", f"--image-id={image_id}", "--target=aws", f"--config={config}", f"--public-key={pinned}", "--json")
    code, out = run_invoke(*attest)
    verdict = json.loads(out)
    assert code == 0 and verdict["verified"], verdict["problems"]
    assert verdict["statement"]["predicate"]["fingerprint"] == aws_build["fingerprint"]
    # The three controls this module switches off are in the statement, each with its exception.
    assert sorted(e["control"] for e in verdict["statement"]["predicate"]["exceptions"]) == [
        "1.8", "GA-AGENT-CWAGENT", "GA-AGENT-SSM"]
    fingerprint = [t for t in client.describe_images(ImageIds=[image_id])["Images"][0]["Tags"] if t["Key"] == "Fingerprint"]
    client.create_tags(Resources=[image_id], Tags=[{"Key": "Fingerprint", "Value": "sha256:" + "0" * 64}])
    try:
        code, out = run_invoke(*attest)
        assert code == 1 and any("its Fingerprint tag" in p for p in json.loads(out)["problems"]), out
        code, _ = run_invoke("latest", "--os=debian12", "--target=aws", f"--config={config}", "--json")
        assert code != 0  # the only approved image no longer counts
    finally:
        client.create_tags(Resources=[image_id], Tags=fingerprint)
    assert run_invoke(*attest)[0] == 0


def _launched(client) -> int:
    return sum(len(r["Instances"]) for r in client.describe_instances()["Reservations"])


def test_a_rebuild_right_after_the_build_builds_nothing_and_says_why(ec2, aws_build):
    harness, config, client, _ = ec2
    launched = _launched(client)
    code, out = run_invoke("rebuild", "--all", "--target=aws", f"--config={config}", "--json")
    assert code == 0, out
    result = json.loads(out)
    (row,) = result["outcomes"]
    assert row["os"] == "debian12" and row["status"] == "skipped", row
    assert row["decision"]["reasons"] == [
        f"nothing to do: source image, content and age unchanged for {aws_build['image_id']}"]
    assert _launched(client) == launched  # a no-op run launches nothing
    summary = json.loads(Path(result["summary_json"]).read_text())
    assert summary["ok"] and [o["decision"] for o in summary["oses"]] == ["skip"]
    assert Path(result["summary_json"]).with_suffix(".md").is_file()


NEW_SOURCE_AMI = "ami-0deb1000000000009"


def test_a_new_source_image_is_named_by_a_dry_run_that_launches_nothing(ec2, aws_build, golden_disk):
    """Debian publishes a new image: the scheduled dry run names it as the reason to build."""
    harness, config, client, ssm = ec2
    launched = _launched(client)
    add_moto_ami(NEW_SOURCE_AMI, "debian-12-amd64-20261128-9", DEBIAN_OWNER, dt.datetime(2026, 11, 28))
    harness.disks[NEW_SOURCE_AMI] = golden_disk
    code, out = run_invoke("rebuild", "--all", "--target=aws", "--dry-run", f"--config={config}", "--json")
    assert code == 0, out
    (planned,) = json.loads(out)["outcomes"]
    assert planned["status"] == "planned" and planned["decision"]["build"], planned
    assert planned["decision"]["reasons"] == [
        f"new source image: {NEW_SOURCE_AMI} (debian-12-amd64-20261128-9), was {SOURCE_AMI}"]
    assert _launched(client) == launched  # a dry run launches nothing
    assert ssm.get_parameter(Name="/golden-ami/debian12/latest")["Parameter"]["Value"] == aws_build["image_id"]
    assert _leftovers(client) == {"instances": [], "key_pairs": [], "security_groups": []}


def test_prune_keeps_the_image_the_pointer_names(ec2, aws_build):
    harness, config, client, ssm = ec2
    image_id = aws_build["image_id"]
    # keep_approved 1, the strictest setting: the pointer's image is protected, and stays.
    strict = Path(config).with_name("keep-one.yaml")
    strict.write_text(yaml.safe_dump({**yaml.safe_load(Path(config).read_text()), "lifecycle": {"keep_approved": 1}}))
    code, out = run_invoke("prune", "--os=debian12", "--target=aws", "--yes", f"--config={strict}", "--json")
    assert code == 0, out
    (plan,) = json.loads(out)["plans"]
    assert image_id in {p["image_id"] for p in plan["protected"]}
    assert all(action["image_id"] != image_id for action in plan["actions"])
    assert image_id in {image["ImageId"] for image in client.describe_images(Owners=["self"])["Images"]}
    assert ssm.get_parameter(Name="/golden-ami/debian12/latest")["Parameter"]["Value"] == image_id


def test_a_failed_verification_rejects_and_still_cleans_up(ec2, aws_build):
    """The test instance's console never shows its host keys: after console_timeout_seconds
    (60 here, the least allowed) the verification fails closed, the image is tagged rejected,
    and the instance, key pair and security group are gone. (A console that lies about the
    key is refused by the same pinning code: tests/integration/test_pinned_ssh.py, against this
    machine's sshd - here it would cost a whole boot of the instance more.)"""
    harness, config, client, _ = ec2
    image_id = aws_build["image_id"]
    impatient = Path(config).with_name("impatient.yaml")
    document = yaml.safe_load(Path(config).read_text())
    impatient.write_text(yaml.safe_dump({**document, "aws": {**document["aws"], "console_timeout_seconds": 60}}))
    harness.silence_console = True
    try:
        code, out = run_invoke("verify", f"--image-id={image_id}", "--target=aws", f"--config={impatient}", "--json")
    finally:
        harness.silence_console = False
    assert code == 1, out
    decision = json.loads(out)
    assert not decision["approved"] and "no SSH host key block on the console" in " ".join(decision["reasons"]), decision
    tags = {t["Key"]: t["Value"] for t in client.describe_images(ImageIds=[image_id])["Images"][0]["Tags"]}
    assert tags["Status"] == "rejected"
    assert _leftovers(client) == {"instances": [], "key_pairs": [], "security_groups": []}
    deadline = time.monotonic() + 60
    while harness.running() and time.monotonic() < deadline:
        time.sleep(1)
    assert harness.running() == []


def test_a_run_killed_after_its_test_instance_launched_is_reaped_completely(ec2, aws_build):
    harness, config, client, _ = ec2
    image_id = aws_build["image_id"]
    # A verification in its own process, killed outright (no teardown) once its instance runs.
    proc = subprocess.Popen([str(Path(sys.executable).with_name("invoke")), "--search-root", str(PROJECT_ROOT), "verify",
                             f"--image-id={image_id}", "--target=aws", f"--config={config}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not _leftovers(client)["instances"] or not harness.running():
            assert proc.poll() is None and time.monotonic() < deadline, "the verification never launched its instance"
            time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    left = _leftovers(client)
    assert left["instances"] and left["key_pairs"] and left["security_groups"], left

    code, out = run_invoke("reap", "--target=aws", "--older-than-hours=0", f"--config={config}", "--json")
    assert code == 0, out
    planned = {(x["kind"], x["id"]) for x in json.loads(out)["plans"][0]["leftovers"]}
    assert {("instance", i) for i in left["instances"]} <= planned
    assert _leftovers(client) == left  # without --yes nothing changes

    code, out = run_invoke("reap", "--target=aws", "--older-than-hours=0", "--yes", f"--config={config}", "--json")
    assert code == 0, out
    assert _leftovers(client) == {"instances": [], "key_pairs": [], "security_groups": []}
    deadline = time.monotonic() + 60
    while harness.running() and time.monotonic() < deadline:
        time.sleep(1)
    assert harness.running() == []
