"""The verify suite's wiring: a pinned-host-key testinfra host and the build's controls.

This suite checks a booted system against the control catalogue. It reads data only - the
build's controls.json and the OS data file - and never imports the code that rendered the
image, so a bug in rendering cannot hide itself here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import testinfra.host
import yaml

from ga_report import ControlReport, control_id_of
from ga_ssh import PinnedParamikoBackend

OS_DATA_DIR = Path(__file__).resolve().parent.parent / "os"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("golden-ami", "the instance under test")
    group.addoption("--ga-host", required=True, help="SSH address of the instance")
    group.addoption("--ga-port", type=int, default=22)
    group.addoption("--ga-user", required=True, help="login user (has passwordless sudo)")
    group.addoption("--ga-identity", required=True, help="private key file for the login user")
    group.addoption("--ga-known-hosts", required=True, help="known_hosts with the pinned host keys")
    group.addoption("--ga-controls", required=True, help="the build's controls.json")
    group.addoption("--ga-report", required=True, help="where to write the per-control JSON report")
    group.addoption("--ga-image-id", required=True)
    group.addoption("--ga-fingerprint", required=True)
    group.addoption("--ga-build-id", default="")
    group.addoption("--ga-instance-id", default="", help="cloud-init instance-id of this boot")
    group.addoption("--ga-login-public-key", default="", help="the one key allowed in authorized_keys")


def _controls_document(config: pytest.Config) -> dict[str, Any]:
    return json.loads(Path(config.getoption("--ga-controls")).read_text())


def pytest_configure(config: pytest.Config) -> None:
    document = _controls_document(config)
    header = {
        "image_id": config.getoption("--ga-image-id"),
        "fingerprint": config.getoption("--ga-fingerprint"),
        "build_id": config.getoption("--ga-build-id"),
        "os": document["os"],
        "target": document["target"],
        "profile": document["profile"],
    }
    config.pluginmanager.register(
        ControlReport(Path(config.getoption("--ga-report")), header, document["controls"]), "ga_control_report"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    controls = {c["id"]: c for c in _controls_document(config)["controls"]}
    keep, drop = [], []
    for item in items:
        control_id = control_id_of(item)
        if control_id is None:
            raise pytest.UsageError(f"{item.nodeid} names no control: mark it @pytest.mark.control('<id>')")
        control = controls.get(control_id)
        if control is None:  # not in this profile, or disabled in the config
            drop.append(item)
            continue
        if not control["applicable"]:
            item.add_marker(pytest.mark.skip(reason=f"not-applicable: {control['reason']}"))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def host(pytestconfig: pytest.Config) -> testinfra.host.Host:
    opt = pytestconfig.getoption
    spec = f"{opt('--ga-user')}@{opt('--ga-host')}:{opt('--ga-port')}"
    backend = PinnedParamikoBackend(
        spec, known_hosts=opt("--ga-known-hosts"), ssh_identity_file=opt("--ga-identity"), timeout=30, sudo=True
    )
    return testinfra.host.Host(backend)


@pytest.fixture(scope="session")
def controls(pytestconfig: pytest.Config) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in _controls_document(pytestconfig)["controls"]}


@pytest.fixture(scope="session")
def target(pytestconfig: pytest.Config) -> str:
    return _controls_document(pytestconfig)["target"]


@pytest.fixture(scope="session")
def os_data(pytestconfig: pytest.Config) -> dict[str, Any]:
    name = _controls_document(pytestconfig)["os"]
    return yaml.safe_load((OS_DATA_DIR / f"{name}.yaml").read_text())


@pytest.fixture(scope="session")
def target_os(os_data: dict[str, Any], target: str) -> dict[str, Any]:
    return os_data["targets"][target]


@pytest.fixture(scope="session")
def boot_time(host) -> int:
    """Seconds since the epoch when the instance booted (files older than this were baked in)."""
    return int(host.check_output("awk '/^btime/ {print $2}' /proc/stat"))


@pytest.fixture(scope="session")
def homes(host) -> list[str]:
    out = host.check_output("getent passwd | awk -F: '$6 ~ /^\\/(root|home\\/)/ {print $6}' | sort -u")
    return [line for line in out.splitlines() if line]


@pytest.fixture
def params(request: pytest.FixtureRequest, controls) -> dict[str, Any]:
    """The parameters of the control the requesting check is marked with."""
    control_id = control_id_of(request.node)
    return controls[control_id]["params"] if control_id in controls else {}
