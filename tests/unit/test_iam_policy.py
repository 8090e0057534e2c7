"""The pipeline's IAM policy (iam/golden-ami-pipeline-policy.json) against what the pipeline calls.

  * The document's own rules: Sids named by job, no wildcard actions, no grant hidden behind a
    broader grant of the same action, a note in iam/README.md for every Sid, and no destructive
    or exposing action left unscoped unless the table below says why it must be.
  * The recorder (golden_ami/targets/aws/recorder.py) sees the pipeline's calls, Stubber-answered
    ones included, and not the tests' own; on the server side it keeps Packer's requests only.
  * Paths that only some configurations take (copies to other regions, sharing with a customer
    managed key) run here, so the session's record holds their actions.
  * Last in the session (tests/conftest.py orders them): every recorded action is granted, and,
    when the whole suite ran, every granted action was recorded.
"""
from __future__ import annotations

import collections
import fnmatch
import json
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import boto3
import botocore.config
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from golden_ami import config, provenance
from golden_ami.progress import Progress
from golden_ami.targets.aws import checks, recorder
from golden_ami.targets.aws.target import AwsTarget
from tests.conftest import (E2E_HALF_ARGS, FULL_SUITE_ENV, PROJECT_ROOT, RUNS_LAST_CHECKS, UNUSED_GRANT_CHECK,
                            IamRecording, _why_partial, free_port, record_packer_requests_on_moto)
from tests.iam_eval import Request, evaluate, tag_context

IAM_DIR = PROJECT_ROOT / "iam"
POLICY_FILE = IAM_DIR / "golden-ami-pipeline-policy.json"
README_FILE = IAM_DIR / "README.md"
JOBS = ("PackerBuild", "Verify", "Approve", "Lifecycle", "Reap", "Notify")
REGION = "us-east-1"

# Granted although no test can record the call. An entry that starts being recorded is stale.
NOT_RECORDABLE = {
    "ec2:DescribeRegions": "Packer validates the build region with DescribeRegions on AWS; the template sets "
                           "skip_region_validation against an emulator endpoint, so no test sees the call",
}

# Actions that remove, stop, overwrite or expose something, granted without a resource-id pattern
# or a condition, and why they cannot be narrowed. Any other such grant fails; so does a stale entry.
UNSCOPED_ON_PURPOSE = {
    "ec2:AuthorizeSecurityGroupIngress": "Packer 1.6.6 creates its temporary group without tags, and a group's "
                                         "ARN holds its id, not its name",
    "ec2:DeleteSecurityGroup": "as above: Packer deletes its own untagged temporary group",
    "ec2:DeregisterImage": "Packer deregisters its intermediate unencrypted AMI, which it never tags",
    "ec2:DeleteSnapshot": "Packer deletes the intermediate AMI's snapshots, which it never tags",
}
SENSITIVE_VERBS = ("Authorize", "Delete", "Deregister", "Disable", "Enable", "Modify", "Put", "Stop", "Terminate")


class PolicyNotJudged(UserWarning):
    """The unused-grant half of the policy check could not be judged in this session."""


def _listed(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _grants(document: dict) -> dict[str, list[dict]]:
    """action -> the statements granting it."""
    found: dict[str, list[dict]] = {}
    for statement in document["Statement"]:
        for action in _listed(statement["Action"]):
            found.setdefault(action, []).append(statement)
    return found


def granted_actions() -> set[str]:
    return set(_grants(_load(POLICY_FILE)))


def _is_scoped(statement: dict) -> bool:
    """A condition, or a resource pattern that names more than "every resource of a type"."""
    if statement.get("Condition"):
        return True
    for resource in _listed(statement["Resource"]):
        identifier = resource.split(":", 5)[-1].partition("/")[2] if resource != "*" else "*"
        if identifier in ("", "*"):
            return False
    return True


def _covers(broad: dict, narrow: dict) -> bool:
    """Does the unconditioned statement `broad` allow every resource `narrow` names?"""
    if broad.get("Condition"):
        return False
    return all(any(fnmatch.fnmatchcase(resource, pattern) for pattern in _listed(broad["Resource"]))
               for resource in _listed(narrow["Resource"]))


# --- the document ------------------------------------------------------------------------------
def test_the_document_is_well_formed_and_named_by_job():
    document = _load(POLICY_FILE)
    assert document["Version"] == "2012-10-17"
    sids = [statement.get("Sid", "") for statement in document["Statement"]]
    assert len(set(sids)) == len(sids), "Sids must be unique"
    for statement in document["Statement"]:
        sid = statement.get("Sid", "")
        assert re.fullmatch(r"[A-Za-z0-9]+", sid), f"Sid {sid!r}: IAM allows letters and digits only"
        assert sid.startswith(JOBS), f"Sid {sid!r} does not start with a job name ({', '.join(JOBS)})"
        assert statement["Effect"] == "Allow" and statement.get("Resource"), sid
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, sid
        for action in _listed(statement["Action"]):
            assert re.fullmatch(r"[a-z0-9-]+:[A-Z][A-Za-z0-9]+", action), f"{sid}: {action!r} is not one exact action"
    assert {job for job in JOBS if any(sid.startswith(job) for sid in sids)} == set(JOBS)


def test_no_grant_hides_behind_a_broader_grant_of_the_same_action():
    # The effective permission is the union of the statements: a narrower grant of an action
    # that another statement grants more widely would only pretend to scope it.
    hidden = []
    for action, statements in _grants(_load(POLICY_FILE)).items():
        for broad in statements:
            for narrow in statements:
                if broad is not narrow and _covers(broad, narrow):
                    hidden.append(f"{action}: {narrow['Sid']} is covered by {broad['Sid']}")
    assert not hidden, "; ".join(hidden)


def test_destructive_and_exposing_actions_are_scoped_unless_explained():
    unscoped = {action for action, statements in _grants(_load(POLICY_FILE)).items()
                if action.split(":")[1].startswith(SENSITIVE_VERBS) and not all(map(_is_scoped, statements))}
    assert unscoped - set(UNSCOPED_ON_PURPOSE) == set(), "scope these (tag condition or named resources)"
    assert set(UNSCOPED_ON_PURPOSE) - unscoped == set(), "these are scoped now: drop them from UNSCOPED_ON_PURPOSE"


def test_every_statement_has_a_note_in_the_readme():
    readme = README_FILE.read_text()
    missing = [s["Sid"] for s in _load(POLICY_FILE)["Statement"] if f"`{s['Sid']}`" not in readme]
    assert not missing, f"iam/README.md has no note for {', '.join(missing)}"
    for action in UNSCOPED_ON_PURPOSE:
        assert action.split(":")[1] in readme, f"iam/README.md does not explain why {action} is unscoped"


def test_optional_documents_only_add_what_the_pipeline_policy_lacks():
    optional = sorted((IAM_DIR / "optional").glob("*.json"))
    assert optional
    main = granted_actions()
    for path in optional:
        document = _load(path)
        assert document["Version"] == "2012-10-17", path.name
        for statement in document["Statement"]:
            assert re.fullmatch(r"[A-Za-z0-9]+", statement["Sid"]) and statement["Effect"] == "Allow", path.name
            overlap = set(_listed(statement["Action"])) & main
            assert not overlap, f"{path.name} grants what the pipeline policy already does: {overlap}"
        assert path.name in README_FILE.read_text(), f"iam/README.md does not describe {path.name}"


# --- the conditions: what the role may do to resources that are not the pipeline's -----------------
ACCOUNT = "123456789012"
TEMPLATE = PROJECT_ROOT / "templates" / "aws.pkr.hcl.j2"


def _arn(kind: str, ident: str, region: str = REGION) -> str:
    service = {"parameter": "ssm", "topic": "sns", "key": "kms"}.get(kind, "ec2")
    account = "" if kind in ("image", "snapshot") else ACCOUNT  # EC2 puts no account in these ARNs
    if kind == "topic":
        return f"arn:aws:sns:{region}:{ACCOUNT}:{ident}"
    return f"arn:aws:{service}:{region}:{account}:{kind}/{ident}"


def _packer_tags(which: str) -> dict[str, str]:
    """The tags the Packer template sets with `which` (tags, snapshot_tags): the build's provenance
    map (golden_ami/provenance.py, which the template merges) plus the template's extras, with
    made-up values where either has a per-build value."""
    cfg = SimpleNamespace(os=SimpleNamespace(name="<OS>"), profile="<Profile>")
    ctx = SimpleNamespace(build_id="<BuildId>", fingerprint="<Fingerprint>", commit="<PipelineCommit>",
                          source=SimpleNamespace(id="<SourceImage>", name="<SourceImageName>"))
    text = TEMPLATE.read_text()
    extras = re.search(rf"^\s*{which}\s*=\s*merge\(var\.provenance, \{{(.*)\}}\)", text, re.M).group(1)
    pairs = re.findall(r"(\w+)\s*=\s*([^,\n]+)", extras.replace(",", "\n"))
    return {**provenance.tags(cfg, ctx),
            **{k: (v.strip()[1:-1] if re.fullmatch(r'"[^"$]*"', v.strip()) else f"<{k}>") for k, v in pairs}}


MANAGED = {"ManagedBy": "golden-ami"}
APPROVED = {**_packer_tags("tags"), "Status": "approved"}  # an approved image, as the pipeline left it


def _tagging(kind: str, request_tags: dict, resource_tags: dict | None = None, create_action: str | None = None,
             action: str = "ec2:CreateTags", ident: str = "x-0foreign") -> Request:
    return Request(action, _arn(kind, ident), tag_context(request_tags, resource_tags, create_action))


def _on(action: str, kind: str, resource_tags: dict | None = None, ident: str = "x-0foreign") -> Request:
    return Request(action, _arn(kind, ident), tag_context(resource_tags=resource_tags))


# Requests the role must not be able to make: on resources that are not the pipeline's (no
# ManagedBy=golden-ami tag, or another team's), or that would approve, sign or share an image.
HOSTILE = {
    "share an untagged AMI": _on("ec2:ModifyImageAttribute", "image"),
    "share another team's AMI": _on("ec2:ModifyImageAttribute", "image", {"ManagedBy": "team-x"}),
    "approve an untagged AMI": _tagging("image", {"Status": "approved"}),
    "approve an untagged AMI, claiming it": _tagging("image", {**MANAGED, "Status": "approved"}),
    "sign an untagged AMI": _tagging("image", {"ApprovalSignature": "forged", "ApprovalStatement": "sha256:0"}),
    "sign an untagged AMI, claiming it": _tagging("image", {**MANAGED, "ApprovalSignature": "forged"}),
    "claim another team's AMI": _tagging("image", {**MANAGED, "Status": "candidate"}, {"ManagedBy": "team-x"}),
    "approve an untagged snapshot, claiming it": _tagging("snapshot", {**MANAGED, "Status": "approved"}),
    "adopt an untagged AMI with Packer's build tags": _tagging("image", _packer_tags("tags")),
    "adopt an untagged snapshot with Packer's build tags": _tagging("snapshot", _packer_tags("snapshot_tags")),
    "untag another team's AMI": Request("ec2:DeleteTags", _arn("image", "ami-0foreign"),
                                        {"aws:TagKeys": ("Status",), "aws:ResourceTag/ManagedBy": "team-x"}),
    "untag an untagged AMI's snapshot": Request("ec2:DeleteTags", _arn("snapshot", "snap-0foreign"), {"aws:TagKeys": ("x",)}),
    "tag a running instance outside a launch": _tagging("instance", MANAGED),
    "tag an existing security group": _tagging("security-group", MANAGED),
    "share an untagged snapshot": _on("ec2:ModifySnapshotAttribute", "snapshot"),
    "stop an untagged instance": _on("ec2:StopInstances", "instance"),
    "terminate another team's instance": _on("ec2:TerminateInstances", "instance", {"ManagedBy": "team-x"}),
    "read an untagged instance's console": _on("ec2:GetConsoleOutput", "instance"),
    "image an untagged instance": _on("ec2:CreateImage", "instance"),
    "launch an instance without the ManagedBy tag": _tagging("instance", {"Name": "x"}, action="ec2:RunInstances"),
    "delete an untagged volume": _on("ec2:DeleteVolume", "volume"),
    "deprecate an untagged AMI": _on("ec2:EnableImageDeprecation", "image"),
    "deregister an untagged AMI": _on("ec2:DeregisterImage", "image"),
    "delete an untagged snapshot": _on("ec2:DeleteSnapshot", "snapshot"),
    "open an untagged security group": _on("ec2:AuthorizeSecurityGroupIngress", "security-group"),
    "delete an untagged security group": _on("ec2:DeleteSecurityGroup", "security-group"),
    "overwrite a parameter outside /golden-ami/": _on("ssm:PutParameter", "parameter", ident="prod/db/url"),
    "delete a parameter outside /golden-ami/": _on("ssm:DeleteParameter", "parameter", ident="prod/db/url"),
    "publish to another topic": _on("sns:Publish", "topic", ident="billing-alerts"),
    "create a key pair with another name": _on("ec2:CreateKeyPair", "key-pair", ident="prod-admin"),
    "delete a key pair with another name": _on("ec2:DeleteKeyPair", "key-pair", ident="prod-admin"),
    "import a key pair with another name": _tagging("key-pair", MANAGED, create_action="ImportKeyPair",
                                                    action="ec2:ImportKeyPair", ident="prod-admin"),
    "version a launch template not marked to follow": _on("ec2:CreateLaunchTemplateVersion", "launch-template",
                                                         {"Team": "web"}, ident="lt-0foreign"),
    "version a launch template marked otherwise": _on("ec2:CreateLaunchTemplateVersion", "launch-template",
                                                     {"GoldenAmiFollow": "false"}, ident="lt-0foreign"),
    "change the default of an unmarked launch template": _on("ec2:ModifyLaunchTemplate", "launch-template",
                                                            ident="lt-0foreign"),
    "version a launch template merely tagged ManagedBy": _on("ec2:CreateLaunchTemplateVersion", "launch-template",
                                                            MANAGED, ident="lt-0foreign"),
}

# Hostile requests the policy still allows, because Packer 1.6.6 (the build's Packer) needs the
# grant and gives IAM nothing to tell its request from the hostile one. An entry the policy
# starts denying is stale; a hostile request allowed without an entry here fails.
KNOWN_ALLOWED = {
    "adopt an untagged AMI with Packer's build tags":
        "Packer tags its final AMI with CreateTags after CopyImage, no tag-on-create: the AMI is untagged then",
    "adopt an untagged snapshot with Packer's build tags": "as above, for the final AMI's snapshots",
    "deregister an untagged AMI": "Packer deregisters its intermediate unencrypted AMI (encrypt_boot), never tagged",
    "delete an untagged snapshot": "Packer deletes the intermediate AMI's snapshots, never tagged",
    "open an untagged security group": "Packer creates its temporary security group without tags",
    "delete an untagged security group": "Packer deletes its own untagged temporary security group",
}

# What the pipeline and Packer legitimately ask for: the same policy must allow each one.
LEGITIMATE = {
    "Packer tags its final AMI": _tagging("image", _packer_tags("tags"), ident="ami-0new"),
    "Packer tags the final AMI's snapshots": _tagging("snapshot", _packer_tags("snapshot_tags"), ident="snap-0new"),
    "Packer launches its build instance": _tagging("instance", _packer_tags("run_tags"), action="ec2:RunInstances"),
    "Packer tags the instance at launch": _tagging("instance", _packer_tags("run_tags"), create_action="RunInstances"),
    "Packer deregisters its intermediate AMI": _on("ec2:DeregisterImage", "image", ident="ami-0intermediate"),
    "register_candidate sets ImdsSupport": _on("ec2:ModifyImageAttribute", "image", _packer_tags("tags")),
    "register_candidate tags the candidate": _tagging("image", {"Status": "candidate", "Target": "aws"},
                                                      _packer_tags("tags")),
    "the verify seal": _tagging("image", {"VerifiedReport": "sha256:0"}, _packer_tags("tags")),
    "approve tags the image": _tagging("image", {"Status": "approved", "ApprovalSignature": "s"}, _packer_tags("tags")),
    "publish shares the approved AMI": _on("ec2:ModifyImageAttribute", "image", APPROVED),
    "publish shares its snapshots": _on("ec2:ModifySnapshotAttribute", "snapshot", APPROVED),
    "publish claims the cross-region copy": Request("ec2:CreateTags", _arn("image", "ami-0copy", "eu-west-1"),
                                                    tag_context(MANAGED)),
    "publish sets the copy's ImdsSupport": Request("ec2:ModifyImageAttribute", _arn("image", "ami-0copy", "eu-west-1"),
                                                   tag_context(resource_tags=MANAGED)),
    "publish carries the tags to the copy": Request("ec2:CreateTags", _arn("image", "ami-0copy", "eu-west-1"),
                                                    tag_context(APPROVED, MANAGED)),
    "verify tags its security group at creation": _tagging("security-group", MANAGED, create_action="CreateSecurityGroup"),
    "lifecycle deprecates a managed AMI": _on("ec2:EnableImageDeprecation", "image", APPROVED),
    "lifecycle removes the approval tags": Request("ec2:DeleteTags", _arn("image", "ami-0old"),
                                                   {"aws:TagKeys": ("ApprovalSignature",), **tag_context(resource_tags=APPROVED)}),
    "the SSM pointer": _on("ssm:PutParameter", "parameter", ident="golden-ami/debian12/latest"),
    "publish versions a launch template marked to follow": _on("ec2:CreateLaunchTemplateVersion", "launch-template",
                                                              {"GoldenAmiFollow": "true"}, ident="lt-0web"),
    "publish makes the new version default": _on("ec2:ModifyLaunchTemplate", "launch-template",
                                                {"GoldenAmiFollow": "true", "Team": "web"}, ident="lt-0web"),
}


def test_the_template_tags_are_what_packers_untagged_tagging_may_set():
    granted = next(s for s in _load(POLICY_FILE)["Statement"] if s["Sid"] == "PackerBuildTagNewImage")
    keys = set(granted["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"])
    assert keys == set(_packer_tags("tags")) | set(_packer_tags("snapshot_tags")), (
        "PackerBuildTagNewImage's aws:TagKeys must be exactly the keys of the template's tags and snapshot_tags")
    assert _packer_tags("tags")["Status"] == _packer_tags("snapshot_tags")["Status"] == "candidate"


def test_the_policy_denies_every_hostile_request_not_known_to_be_forced_by_packer():
    document = _load(POLICY_FILE)
    allowed = {name: evaluate(document, request) for name, request in HOSTILE.items()}
    allowed = {name: decision.statements for name, decision in allowed.items() if decision.allowed}
    unexpected = {name: sids for name, sids in allowed.items() if name not in KNOWN_ALLOWED}
    assert not unexpected, ("iam/golden-ami-pipeline-policy.json allows what it must not: "
                            + "; ".join(f"{name} (by {', '.join(sids)})" for name, sids in unexpected.items()))
    stale = sorted(set(KNOWN_ALLOWED) - set(allowed))
    assert not stale, f"denied now, drop them from KNOWN_ALLOWED: {', '.join(stale)}"
    assert set(KNOWN_ALLOWED) <= set(HOSTILE)


def test_the_policy_allows_what_the_pipeline_and_packer_ask_for():
    document = _load(POLICY_FILE)
    denied = [name for name, request in LEGITIMATE.items() if not evaluate(document, request).allowed]
    assert not denied, f"iam/golden-ami-pipeline-policy.json denies what the pipeline needs: {', '.join(denied)}"


# --- the recorder ---------------------------------------------------------------------------------
PACKER_USER_AGENT = "aws-sdk-go/1.36.0 (go1.15.6; linux; amd64) APN/1.0 HashiCorp/1.0 Packer/1.6.6 (+https://www.packer.io)"
BOTO3_USER_AGENT = "Boto3/1.44.8 md/Botocore#1.44.8 ua/2.1 os/linux#6.1 lang/python#3.11.2 cfg/retry-mode#standard"


def test_the_recorder_sees_pipeline_calls_even_when_a_stubber_answers_them():
    recorder.install()
    ec2 = boto3.client("ec2", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    image = {"ImageId": "ami-0abc", "Public": False,
             "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "SnapshotId": "snap-1"}}]}
    stub = Stubber(ec2)
    stub.add_response("describe_images", {"Images": [image]})
    stub.add_response("describe_image_attribute", {"ImageId": "ami-0abc", "ImdsSupport": {"Value": "v2.0"}})
    stub.add_response("describe_image_attribute", {"ImageId": "ami-0abc", "LaunchPermissions": []})
    stub.add_response("describe_images", {"Images": [image]})
    stub.add_response("describe_images", {"Images": [image]})
    with stub:
        with recorder.capture() as pipeline_calls:
            checks.image_checks(ec2, "ami-0abc")
        with recorder.capture() as test_calls:
            ec2.describe_images(ImageIds=["ami-0abc"])  # the test's own call: not the pipeline's
    stub.assert_no_pending_responses()
    assert pipeline_calls == {"ec2:DescribeImages", "ec2:DescribeImageAttribute"}
    assert test_calls == set()


def test_the_recorder_keeps_packers_requests_and_shares_them_through_a_file(tmp_path, monkeypatch):
    record = recorder.ActionRecord()  # a private record: the session's stays what the pipeline did
    exchange = tmp_path / "actions.txt"
    monkeypatch.setenv(recorder.ENV_FILE, str(exchange))
    assert recorder.record_server_request("ec2", "CreateKeyPair", PACKER_USER_AGENT, into=record)
    assert not recorder.record_server_request("ec2", "DescribeKeyPairs", BOTO3_USER_AGENT, into=record)
    assert not recorder.record_server_request("ec2", "", PACKER_USER_AGENT, into=record)
    assert exchange.read_text() == "ec2:CreateKeyPair\tpacker\n"
    with exchange.open("a") as other_process:
        other_process.write("ssm:GetParameter\tboto3\n")
    assert record.actions(exchange) == {"ec2:CreateKeyPair": {"packer"}, "ssm:GetParameter": {"boto3"}}


def test_the_moto_server_hook_records_what_packer_sends_and_nothing_else(monkeypatch):
    # The end-to-end harness runs moto's server in-process; Packer's requests reach it over HTTP.
    from moto.server import ThreadedMotoServer

    record = recorder.ActionRecord()
    monkeypatch.delenv(recorder.ENV_FILE, raising=False)  # keep the session's exchange file out of it
    record_packer_requests_on_moto(monkeypatch, into=record)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        def client(**extra):
            return boto3.client("ec2", region_name=REGION, endpoint_url=f"http://127.0.0.1:{port}",
                                aws_access_key_id="x", aws_secret_access_key="x", **extra)

        client(config=botocore.config.Config(user_agent=PACKER_USER_AGENT)).describe_regions()
        client().describe_key_pairs()  # boto3, like the tests' own assertions: not Packer's
    finally:
        server.stop()
    assert record.actions() == {"ec2:DescribeRegions": {"packer"}}


def test_the_recorder_derives_request_contexts_with_resource_tags_from_moto(moto_account):
    ec2 = boto3.client("ec2", region_name=REGION)
    image_id = _approved_image(ec2)
    foreign = ec2.create_image(InstanceId=ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)
                               ["Instances"][0]["InstanceId"], Name="someone-elses")["ImageId"]
    before = len(recorder.recorded_contexts())
    contexts = recorder.request_contexts("ec2", "CreateTags", {"Resources": [image_id, foreign],
                                         "Tags": [{"Key": "Status", "Value": "approved"}]}, REGION)
    assert [c.resource for c in contexts] == [f"arn:aws:ec2:{REGION}::image/{image_id}", f"arn:aws:ec2:{REGION}::image/{foreign}"]
    assert dict(contexts[0].resource_tags)["ManagedBy"] == "golden-ami" and contexts[1].resource_tags == ()
    assert contexts[0].request_tags == (("Status", "approved"),) and contexts[0].tag_keys == ("Status",)
    document = _load(POLICY_FILE)
    assert [evaluate(document, _request_of(c)).allowed for c in contexts] == [True, False]
    launch = recorder.request_contexts("ec2", "RunInstances", {
        "ImageId": image_id, "KeyName": "golden-ami-verify-1", "SecurityGroupIds": ["sg-1"],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "ManagedBy", "Value": "golden-ami"}]}]}, REGION)
    assert {(c.action, c.resource.rsplit(":", 1)[1], c.create_action) for c in launch} == {
        ("ec2:RunInstances", "instance/(new)", None), ("ec2:CreateTags", "instance/(new)", "RunInstances"),
        ("ec2:RunInstances", "volume/(new)", None), ("ec2:RunInstances", f"image/{image_id}", None),
        ("ec2:RunInstances", "key-pair/golden-ami-verify-1", None), ("ec2:RunInstances", "security-group/sg-1", None)}
    assert all(evaluate(document, _request_of(c)).allowed for c in launch if "volume" not in c.resource)
    assert next(c for c in launch if "sg-1" in c.resource).resource_tags is None  # not in moto: unknown
    assert len(recorder.recorded_contexts()) == before  # deriving is not recording


# --- paths only some configurations take -----------------------------------------------------------
@pytest.fixture
def moto_account(state_dir, monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    with mock_aws():
        yield


def _resolved(tmp_path, **aws):
    path = tmp_path / "golden-ami.yaml"
    path.write_text(json.dumps({"aws": {"ssh_cidrs": ["203.0.113.7/32"], **aws}}))
    return config.resolve("debian12", "aws", str(path))


def _approved_image(ec2) -> str:
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=instance, Name="golden-debian12-iam-1")["ImageId"]
    snapshots = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]]
    ec2.create_tags(Resources=[image_id, *snapshots], Tags=[{"Key": k, "Value": v} for k, v in {
        "ManagedBy": "golden-ami", "BuildId": "debian12-iam-1", "OS": "debian12", "Status": "approved"}.items()])
    ec2.terminate_instances(InstanceIds=[instance])
    return image_id


def test_publish_with_a_copy_and_a_customer_managed_key_shares_snapshots_and_tags_the_copy(moto_account, tmp_path):
    cfg = _resolved(tmp_path, copy_regions=["eu-west-1"], kms_key_id="alias/golden-ami", share_accounts=["111122223333"])
    target = AwsTarget(cfg.settings, cfg.state_dir)
    ec2 = boto3.client("ec2", region_name=REGION)
    image_id = _approved_image(ec2)
    with recorder.capture() as called:
        done = target.publish(cfg, target.get_image(image_id), Progress(quiet=True))
    snapshot = ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    permissions = ec2.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
    assert permissions["CreateVolumePermissions"] == [{"UserId": "111122223333"}]
    copy_id = done["/golden-ami/debian12/latest (eu-west-1)"]
    copy = boto3.client("ec2", region_name="eu-west-1").describe_images(ImageIds=[copy_id])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in copy["Tags"]}
    assert tags["CopiedFrom"] == f"{REGION}:{image_id}" and tags["ManagedBy"] == "golden-ami"
    assert {"ec2:CopyImage", "ec2:ModifySnapshotAttribute", "ssm:PutParameter"} <= called


def test_only_a_session_of_the_whole_suite_counts_as_whole(tmp_path):
    def session(args, source=pytest.Config.ArgsSource.ARGS, cwd=PROJECT_ROOT, deselected=0, ignore=None, other_half=False):
        options = {"ignore": ignore, "ignore_glob": None}
        config = SimpleNamespace(rootpath=PROJECT_ROOT, args=args, args_source=source,
                                 invocation_params=SimpleNamespace(dir=cwd), getoption=lambda name, default=None: options[name])
        return _why_partial(config, IamRecording(exchange_file=tmp_path / "x", deselected=deselected), other_half)

    assert session(["tests"], source=pytest.Config.ArgsSource.TESTPATHS) == ""  # plain `pytest`
    assert session(["."]) == "" and session(["tests"]) == "" and session([".."], cwd=PROJECT_ROOT / "tests") == ""
    assert "tests/unit" in session(["tests/unit"])
    assert "::" in session(["tests/unit/test_iam_policy.py::test_every_recorded_action_is_granted"])
    assert "deselected" in session(["tests"], deselected=3)
    assert "--ignore" in session(["tests"], ignore=["tests/e2e"])
    # scripts/test.sh: the end-to-end tier and the policy checks, the other tiers beside them.
    assert session(list(E2E_HALF_ARGS), other_half=True) == ""
    from_tests = ["e2e", *(arg.removeprefix("tests/") for arg in E2E_HALF_ARGS[1:])]
    assert session(from_tests, cwd=PROJECT_ROOT / "tests", other_half=True) == ""  # the same, from tests/
    assert "tests/e2e" in session(list(E2E_HALF_ARGS))  # no other half: partial
    assert "tests/e2e" in session(["tests/e2e"], other_half=True)  # without the checks
    assert "tests/unit" in session([*E2E_HALF_ARGS, "tests/unit"], other_half=True)


def test_the_split_run_names_exactly_the_checks_that_run_last():
    """scripts/test.sh runs RUNS_LAST_CHECKS at the end of the end-to-end session: a runs_last
    check missing from it would never judge that session's calls."""
    marked = sorted(name for name, value in globals().items() if name.startswith("test_")
                    and any(mark.name == "runs_last" for mark in getattr(value, "pytestmark", [])))
    assert marked == sorted(RUNS_LAST_CHECKS)
    assert UNUSED_GRANT_CHECK.endswith("::test_every_granted_action_was_recorded")


# --- the check: runs after every other test of the session ------------------------------------------
@pytest.mark.runs_last
def test_every_recorded_action_is_granted(iam_recording):
    recorded = iam_recording.actions()
    missing = sorted(set(recorded) - granted_actions() - recorder.NO_PERMISSION_NEEDED)
    assert not missing, (
        "the pipeline called actions that iam/golden-ami-pipeline-policy.json does not grant (add each, "
        "scoped where AWS allows, with a note in iam/README.md): "
        + ", ".join(f"{action} (from {'/'.join(sorted(recorded[action]))})" for action in missing))


def _request_of(context: recorder.RequestContext) -> Request:
    keys = tag_context(dict(context.request_tags) if context.request_tags is not None else None,
                       dict(context.resource_tags or ()), context.create_action)
    if context.tag_keys is not None:
        keys["aws:TagKeys"] = context.tag_keys
    return Request(context.action, context.resource, keys)


def _depends_on_resource_tags(document: dict) -> set[str]:
    """Actions whose grant, in some statement, depends on the tags a resource carries."""
    return {action for action, statements in _grants(document).items()
            if any(key.lower().startswith("aws:resourcetag/")
                   for statement in statements for block in statement.get("Condition", {}).values() for key in block)}


@pytest.mark.runs_last
def test_every_recorded_request_is_allowed_with_its_conditions(iam_recording):
    # The pipeline's own calls (not Packer's: the AWS SDK for Go's requests carry no context here),
    # each resource as IAM sees it. A resource whose tags are unknown (a Stubber answered, or moto
    # does not hold it) is judged only for actions whose grants do not read resource tags.
    document = _load(POLICY_FILE)
    tag_dependent = _depends_on_resource_tags(document)
    judged, denied, left_out = 0, [], collections.Counter()
    for context in dict.fromkeys(recorder.recorded_contexts()):
        if context.resource.startswith("("):
            left_out[f"{context.action} {context.resource}"] += 1
            continue
        if context.resource_tags is None and context.action in tag_dependent:
            left_out[f"{context.action} (resource tags unknown)"] += 1
            continue
        judged += 1
        if not evaluate(document, _request_of(context)).allowed:
            denied.append(context)
    iam_recording.conditions_summary = (f"{judged} distinct request context(s) judged, {sum(left_out.values())} left out"
                                        + (": " + "; ".join(f"{k} x{n}" for k, n in sorted(left_out.items())) if left_out else ""))
    assert not denied, ("iam/golden-ami-pipeline-policy.json denies, by its conditions, requests the pipeline made: "
                        + "; ".join(f"{c.action} on {c.resource} (sets {dict(c.request_tags or ())}, carries "
                                    f"{dict(c.resource_tags or ())}, create action {c.create_action})" for c in denied[:10]))


@pytest.mark.runs_last
def test_every_granted_action_was_recorded(iam_recording):
    recorded = set(iam_recording.actions())
    granted = granted_actions()
    stale = sorted(action for action in NOT_RECORDABLE if action in recorded)
    assert not stale, f"recorded after all, drop them from NOT_RECORDABLE: {', '.join(stale)}"
    assert set(NOT_RECORDABLE) <= granted, "NOT_RECORDABLE names actions the policy does not grant"
    assert not recorder.NO_PERMISSION_NEEDED & granted, "the policy grants actions that need no permission"

    unused = sorted(granted - recorded - set(NOT_RECORDABLE))
    if not iam_recording.whole_suite:
        if iam_recording.whole_suite_required:
            pytest.fail(f"{FULL_SUITE_ENV}=1 asks for the whole suite, but this session is partial "
                        f"({iam_recording.partial_because}): the unused-grant check cannot be judged")
        warnings.warn(PolicyNotJudged(
            f"unused IAM grants not judged in a partial run ({iam_recording.partial_because}); "
            f"{len(unused)} granted action(s) were not recorded here: {', '.join(unused) or 'none'}. "
            "A plain `pytest`, or scripts/test.sh (the README's test command, .ci/run), judges them."), stacklevel=1)
        return
    context = ""
    if iam_recording.not_passed:
        context = (f" ({len(iam_recording.not_passed)} earlier test(s) did not pass, so the record may be short: "
                   + "; ".join(iam_recording.not_passed[:5]) + ")")
    assert not unused, ("iam/golden-ami-pipeline-policy.json grants actions the whole suite never called: "
                        + ", ".join(unused) + " - remove them, or exercise the path that needs them" + context)
