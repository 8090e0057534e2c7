"""Which AWS actions does golden-ami call? A recorder that answers from botocore's own hooks.

The pipeline's IAM policy (iam/golden-ami-pipeline-policy.json) should grant exactly what the
pipeline calls. Once install() has run, every API call that golden_ami's code makes is recorded
as the IAM action it needs ("ec2:RunInstances"), by a handler on botocore's
`before-parameter-build` event. botocore emits that event for every client call before anything
is sent, so calls that a botocore Stubber answers, and calls that moto intercepts in-process,
are recorded too.

Only the pipeline's calls count: a call is recorded when golden_ami's code is on the calling
stack. A test's own set-up and assertions (boto3 called directly) are not the pipeline; a test
that hands its own client to a pipeline function still records the calls that function makes.

Packer reaches EC2 through the AWS SDK for Go, which botocore never sees. An endpoint that
receives Packer's requests (the end-to-end tests run moto's server in-process) passes each one
to record_server_request(), which keeps those that Packer sent.

With GOLDEN_AMI_RECORD_AWS_ACTIONS=FILE in the environment every recorded action is appended
to FILE too ("action<TAB>origin" per line), so that other processes can add to one record, and
a run against a real account can show what that deployment calls.

For the pipeline's own calls the recorder also keeps, in this process only, one RequestContext
per resource a call acts on: the resource's ARN, the tags the call sets, the tags the resource
carried just before the call (when a lookup can tell: see RESOURCE_TAGS), and the tagging EC2
implies when a call creates resources with TagSpecifications (ec2:CreateTags with
ec2:CreateAction), so that a test can evaluate the policy's conditions, not only its actions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

ENV_FILE = "GOLDEN_AMI_RECORD_AWS_ACTIONS"

# Actions AWS allows without consulting IAM: recording them is fine, granting them is noise.
NO_PERMISSION_NEEDED = frozenset({"sts:GetCallerIdentity"})

# User-Agent fragments of Packer's requests (its amazon builders use the AWS SDK for Go);
# boto3 and botocore call themselves "Boto3/..." and "Botocore/...".
PACKER_USER_AGENT_MARKERS = ("aws-sdk-go", "Packer/")

_PACKAGE_DIR = os.path.realpath(Path(__file__).resolve().parents[2]) + os.sep  # .../golden_ami/
_THIS_FILE = os.path.realpath(__file__)
# `invoke audit` runs with the auditor's credentials, not the pipeline's role (it reads instances the
# pipeline never launched): its calls are not the pipeline policy's to grant (iam/README.md, Auditing).
_AUDIT_FILE = os.path.realpath(Path(__file__).resolve().parents[2] / "audit.py")


def iam_action(service_prefix: str, operation: str) -> str:
    """The IAM action an API operation needs: the service's prefix and the operation's name
    (so for EC2, SSM, SNS and STS, the services the pipeline uses)."""
    return f"{service_prefix}:{operation}"


# The policy names no account, so the ARNs built here carry a placeholder.
ANY_ACCOUNT = "000000000000"
NEW = "(new)"  # the id of a resource the call creates


@dataclasses.dataclass(frozen=True)
class RequestContext:
    """What IAM evaluates for one resource of one call. resource_tags is None when unknown."""

    action: str
    resource: str
    request_tags: Optional[tuple[tuple[str, str], ...]] = None  # tags the call sets on the resource
    resource_tags: Optional[tuple[tuple[str, str], ...]] = None
    tag_keys: Optional[tuple[str, ...]] = None  # aws:TagKeys, when the call names tag keys
    create_action: Optional[str] = None  # ec2:CreateAction, for tagging as part of a create call


class ActionRecord:
    """IAM actions seen, each with where it came from ("boto3" or "packer")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: dict[str, set[str]] = {}
        self._listeners: list[set[str]] = []
        self._contexts: list[RequestContext] = []

    def add_contexts(self, contexts: list[RequestContext]) -> None:
        with self._lock:
            self._contexts.extend(contexts)

    def contexts(self) -> list[RequestContext]:
        """The request contexts of the pipeline's calls made in this process."""
        with self._lock:
            return list(self._contexts)

    def add(self, action: str, origin: str) -> None:
        with self._lock:
            self._actions.setdefault(action, set()).add(origin)
            for seen in self._listeners:
                seen.add(action)
            target = os.environ.get(ENV_FILE)
            if target:
                # One short append per action: lines from several processes do not interleave.
                with open(target, "a", encoding="utf-8") as handle:
                    handle.write(f"{action}\t{origin}\n")

    def actions(self, extra_file: Optional[Path] = None) -> dict[str, set[str]]:
        """What this process recorded, plus what other processes appended to extra_file."""
        with self._lock:
            result = {action: set(origins) for action, origins in self._actions.items()}
        if extra_file is not None and extra_file.exists():
            for line in extra_file.read_text(encoding="utf-8").splitlines():
                action, _, origin = line.partition("\t")
                if action:
                    result.setdefault(action, set()).add(origin or "?")
        return result

    @contextlib.contextmanager
    def capture(self) -> Iterator[set[str]]:
        """The actions recorded while the block runs."""
        seen: set[str] = set()
        with self._lock:
            self._listeners.append(seen)
        try:
            yield seen
        finally:
            with self._lock:
                self._listeners.remove(seen)


RECORD = ActionRecord()  # what install() records into
_installed = False
_install_lock = threading.Lock()
_pipeline_files: dict[str, bool] = {}  # code file -> is it golden_ami's own (this module excluded)


def _is_pipeline_file(filename: str) -> bool:
    known = _pipeline_files.get(filename)
    if known is None:
        real = os.path.realpath(filename)
        known = _pipeline_files[filename] = real.startswith(_PACKAGE_DIR) and real != _THIS_FILE
    return known


def called_by_pipeline() -> bool:
    """Is golden_ami's code (other than this module) anywhere on the calling stack - and not
    under an audit (the auditor's own credentials)?"""
    frame = sys._getframe(1)
    found = False
    while frame is not None:
        if os.path.realpath(frame.f_code.co_filename) == _AUDIT_FILE:
            return False
        found = found or _is_pipeline_file(frame.f_code.co_filename)
        frame = frame.f_back
    return found


# (service prefix, region, resource id) -> the resource's tags now, or None when they cannot be
# known. Unset, every resource's tags are unknown; the tests set one that asks moto.
RESOURCE_TAGS: Optional[Callable[[str, str, str], Optional[dict[str, str]]]] = None

_EC2_ID_KINDS = {"ami": "image", "snap": "snapshot", "i": "instance", "vol": "volume", "sg": "security-group",
                 "key": "key-pair", "vpc": "vpc", "subnet": "subnet", "eni": "network-interface",
                 "lt": "launch-template"}
_EC2_SPEC_KINDS = {"instance", "volume", "security-group", "key-pair", "image", "snapshot"}


def _arn(service: str, region: str, kind: str, ident: str) -> str:
    account = "" if (service, kind) in (("ec2", "image"), ("ec2", "snapshot")) else ANY_ACCOUNT
    return f"arn:aws:{service}:{region}:{account}:{kind}/{ident}"


def _tag_pairs(tags: Any) -> tuple[tuple[str, str], ...]:
    return tuple((t["Key"], t.get("Value", "")) for t in tags or [])


def _spec_tags(params: dict[str, Any], kind: str) -> Optional[tuple[tuple[str, str], ...]]:
    for spec in params.get("TagSpecifications") or []:
        if spec.get("ResourceType") == kind:
            return _tag_pairs(spec.get("Tags"))
    return None


def _ec2_resources(operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, id) of what an EC2 call acts on; ids of resources it creates are NEW."""
    found: list[tuple[str, str]] = []
    created = {"RunInstances": ["instance", "volume"], "CreateSecurityGroup": ["security-group"],
               "CreateImage": ["image", "snapshot"], "CopyImage": ["image", "snapshot"]}.get(operation, [])
    found += [(kind, NEW) for kind in created]
    if operation in ("CreateKeyPair", "ImportKeyPair", "DeleteKeyPair", "RunInstances") and params.get("KeyName"):
        found.append(("key-pair", params["KeyName"]))
    if params.get("LaunchTemplateName") and not params.get("LaunchTemplateId"):
        found.append(("?", f"launch template named {params['LaunchTemplateName']}"))  # (its ARN holds the id)
    for name in ("ImageId", "SourceImageId", "SnapshotId", "InstanceId", "GroupId", "VolumeId", "VpcId", "SubnetId",
                 "LaunchTemplateId"):
        if params.get(name) and not (operation == "CreateSecurityGroup" and name == "GroupId"):
            found.append((_EC2_ID_KINDS.get(params[name].split("-")[0], "?"), params[name]))
    for name in ("ImageIds", "InstanceIds", "SecurityGroupIds", "Resources"):
        if operation.startswith("Describe"):
            break
        found += [(_EC2_ID_KINDS.get(ident.split("-")[0], "?"), ident) for ident in params.get(name) or []]
    return found


def request_contexts(service: str, operation: str, params: dict[str, Any], region: str) -> list[RequestContext]:
    """The request contexts of one call, as far as its parameters tell them (see RequestContext)."""
    action = iam_action(service, operation)
    if action in NO_PERMISSION_NEEDED:
        return []
    if operation.startswith(("Describe", "List")):
        return [RequestContext(action, "*")]
    if service == "ssm" and params.get("Name"):
        name = params["Name"]
        return [RequestContext(action, f"arn:aws:ssm:{region}:{ANY_ACCOUNT}:parameter/{name.lstrip('/')}")]
    if service == "sns" and params.get("TopicArn"):
        return [RequestContext(action, params["TopicArn"])]
    if service == "kms" and params.get("KeyId"):
        key = params["KeyId"]
        arn = key if key.startswith("arn:") else None if key.startswith("alias/") else _arn("kms", region, "key", key)
        return [RequestContext(action, arn or f"(the key behind {key})")]
    if service != "ec2":
        return [RequestContext(action, "(no resource derived)")]
    contexts = []
    setting = _tag_pairs(params.get("Tags")) if operation == "CreateTags" else None
    naming = tuple(t["Key"] for t in params.get("Tags") or []) if operation in ("CreateTags", "DeleteTags") else None
    for kind, ident in _ec2_resources(operation, params):
        tags: Optional[dict[str, str]] = {} if ident == NEW else None
        if tags is None and RESOURCE_TAGS is not None and kind != "?":
            tags = RESOURCE_TAGS(service, region, ident)
        request_tags = setting if setting is not None else _spec_tags(params, kind) if kind in _EC2_SPEC_KINDS else None
        arn = _arn("ec2", region, kind, ident) if kind != "?" else f"(unknown resource {ident})"
        known = tuple(sorted(tags.items())) if tags is not None else None
        contexts.append(RequestContext(action, arn, request_tags, known, naming))
        spec = _spec_tags(params, kind)
        if spec is not None and operation != "CreateTags" and kind in _EC2_SPEC_KINDS:
            # Tags given at creation: EC2 also authorises ec2:CreateTags for them.
            contexts.append(RequestContext(iam_action("ec2", "CreateTags"), arn, spec, known,
                                           tuple(k for k, _ in spec), operation))
    return contexts


def _on_parameter_build(model: Any = None, params: Any = None, context: Any = None, **_: Any) -> None:
    """botocore handler: an API call is about to be built (and perhaps stubbed or mocked)."""
    if model is not None and called_by_pipeline():
        service = model.service_model
        prefix = service.signing_name or service.endpoint_prefix
        RECORD.add(iam_action(prefix, model.name), "boto3")
        region = (context or {}).get("client_region") or "?"
        try:
            contexts = request_contexts(prefix, model.name, dict(params or {}), region)
        except Exception as exc:  # never break the pipeline's call over the record
            contexts = [RequestContext(iam_action(prefix, model.name), f"(not derived: {exc!r})")]
        RECORD.add_contexts(contexts)


def is_packer_request(user_agent: Optional[str]) -> bool:
    return any(marker in (user_agent or "") for marker in PACKER_USER_AGENT_MARKERS)


def record_server_request(service: str, action: str, user_agent: str, into: ActionRecord = RECORD) -> bool:
    """An EC2-compatible endpoint received a request: record it if Packer sent it. boto3's
    requests are recorded where they are made, and only when the pipeline made them."""
    if not action or not is_packer_request(user_agent):
        return False
    into.add(iam_action(service, action), "packer")
    return True


def install() -> None:
    """Record from now on: every botocore session created later carries the handler."""
    global _installed
    import boto3  # deferred: only a test run that asks for the IAM recording pays for it
    import botocore.handlers

    with _install_lock:
        if _installed:
            return
        botocore.handlers.BUILTIN_HANDLERS.append(("before-parameter-build", _on_parameter_build))
        if boto3.DEFAULT_SESSION is not None:  # made before us: its later clients count too
            boto3.DEFAULT_SESSION.events.register("before-parameter-build", _on_parameter_build)
        _installed = True


def install_from_environment() -> None:
    """Install only when GOLDEN_AMI_RECORD_AWS_ACTIONS names a file to record into."""
    if os.environ.get(ENV_FILE):
        install()


def recorded(extra_file: Optional[Path] = None) -> dict[str, set[str]]:
    return RECORD.actions(extra_file)


def recorded_contexts() -> list[RequestContext]:
    return RECORD.contexts()


@contextlib.contextmanager
def capture() -> Iterator[set[str]]:
    """The actions the pipeline calls while the block runs (recording is installed if needed)."""
    install()
    with RECORD.capture() as seen:
        yield seen
