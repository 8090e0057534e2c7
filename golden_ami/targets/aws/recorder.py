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
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

ENV_FILE = "GOLDEN_AMI_RECORD_AWS_ACTIONS"

# Actions AWS allows without consulting IAM: recording them is fine, granting them is noise.
NO_PERMISSION_NEEDED = frozenset({"sts:GetCallerIdentity"})

# User-Agent fragments of Packer's requests (its amazon builders use the AWS SDK for Go);
# boto3 and botocore call themselves "Boto3/..." and "Botocore/...".
PACKER_USER_AGENT_MARKERS = ("aws-sdk-go", "Packer/")

_PACKAGE_DIR = os.path.realpath(Path(__file__).resolve().parents[2]) + os.sep  # .../golden_ami/
_THIS_FILE = os.path.realpath(__file__)


def iam_action(service_prefix: str, operation: str) -> str:
    """The IAM action an API operation needs: the service's prefix and the operation's name
    (so for EC2, SSM, SNS and STS, the services the pipeline uses)."""
    return f"{service_prefix}:{operation}"


class ActionRecord:
    """IAM actions seen, each with where it came from ("boto3" or "packer")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: dict[str, set[str]] = {}
        self._listeners: list[set[str]] = []

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
    """Is golden_ami's code (other than this module) anywhere on the calling stack?"""
    frame = sys._getframe(1)
    while frame is not None:
        if _is_pipeline_file(frame.f_code.co_filename):
            return True
        frame = frame.f_back
    return False


def _on_parameter_build(model: Any = None, **_: Any) -> None:
    """botocore handler: an API call is about to be built (and perhaps stubbed or mocked)."""
    if model is not None and called_by_pipeline():
        service = model.service_model
        RECORD.add(iam_action(service.signing_name or service.endpoint_prefix, model.name), "boto3")


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
    import boto3
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


@contextlib.contextmanager
def capture() -> Iterator[set[str]]:
    """The actions the pipeline calls while the block runs (recording is installed if needed)."""
    install()
    with RECORD.capture() as seen:
        yield seen
