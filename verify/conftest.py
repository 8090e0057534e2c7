"""The verify suite's wiring: one fact snapshot per run, the build's controls, the report.

This suite checks a system against the control catalogue. It reads data only - the build's
controls.json and the OS data file - and never imports the code that rendered the image, so a
bug in rendering cannot hide itself here.

Two ways to run it:
  live     --ga-host/--ga-user/--ga-identity/--ga-known-hosts: connect over SSH (pinned host
           key, sudo), gather the facts in one remote command (verify/collector.py), judge them
           here, save them as facts.json beside the report;
  offline  --ga-facts FILE: judge a saved snapshot (a reviewer re-checking a verdict, the unit
           tier proving every check against recorded snapshots of real hosts).
Either way every check reads the snapshot (the `facts` fixture), never the host.
"""
from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import json
import yaml

import ga_facts
from ga_report import MODES, ControlReport, control_id_of

OS_DATA_DIR = Path(__file__).resolve().parent.parent / "os"
FACTS_FILE = "facts.json"
# Fixtures that make the collector do its slow parts; requested only when a check in force uses them.
OPTIONAL_FACTS = {"walk": "walk", "secret_scan": "secret_scan"}
# Fixtures that are dynamic commands: started beside the collector when a check in force uses them.
DYNAMIC_FIXTURES = ("pending_updates",)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("golden-ami", "the instance under test")
    group.addoption("--ga-host", default="", help="SSH address of the instance (live run)")
    group.addoption("--ga-port", type=int, default=22)
    group.addoption("--ga-user", default="", help="login user (has passwordless sudo)")
    group.addoption("--ga-identity", default="", help="private key file for the login user")
    group.addoption("--ga-known-hosts", default="", help="known_hosts with the pinned host keys")
    group.addoption("--ga-facts", default="", help="judge this saved snapshot instead of a live host (offline run)")
    group.addoption("--ga-controls", required=True, help="the build's controls.json")
    group.addoption("--ga-report", required=True, help="where to write the per-control JSON report")
    group.addoption("--ga-image-id", required=True)
    group.addoption("--ga-fingerprint", required=True)
    group.addoption("--ga-build-id", default="")
    group.addoption("--ga-instance-id", default="", help="cloud-init instance-id of this boot")
    group.addoption("--ga-login-public-key", default="", help="the one key allowed in authorized_keys")
    group.addoption("--ga-mode", default="verify", choices=MODES,
                    help="verify: the golden image itself (default); audit: a running instance made from it, "
                         "where what the instance may add (firewall drop-ins) is reported as a finding")


def _controls_document(config: pytest.Config) -> dict[str, Any]:
    return json.loads(Path(config.getoption("--ga-controls")).read_text())


class FactSession:
    """The snapshot of this run: gathered once, on first use, then shared by every check."""

    def __init__(self, config: pytest.Config, document: dict[str, Any]):
        self.config = config
        self.document = document
        self.optional: set[str] = set()
        self.dynamic: set[str] = set()  # DYNAMIC_FIXTURES the checks in force use
        self.snapshot: ga_facts.Snapshot | None = None
        self.timings: dict[str, Any] = {}
        self.offline = bool(config.getoption("--ga-facts"))
        self.backend = None
        self._connecting: threading.Thread | None = None
        self._host = None

    def connect_early(self) -> None:
        """Live runs: open the pinned SSH connection while pytest still collects the checks."""
        from ga_ssh import pinned_host

        opt = self.config.getoption
        if self.offline or not opt("--ga-host"):
            return
        self._host = pinned_host(opt("--ga-user"), opt("--ga-host"), opt("--ga-port"), opt("--ga-identity"),
                                 opt("--ga-known-hosts"))
        self.backend = self._host.backend

        def connect() -> None:
            try:
                self._host.backend.client  # noqa: B018 - a refused key is reported by take() when it retries
            except Exception:  # noqa: BLE001, S110 - take() connects again and records the error
                pass

        self._connecting = threading.Thread(target=connect, name="ssh-connect", daemon=True)
        self._connecting.start()

    def os_data(self) -> dict[str, Any]:
        return yaml.safe_load((OS_DATA_DIR / f"{self.document['os']}.yaml").read_text())

    def get(self) -> ga_facts.Snapshot:
        if self.snapshot is None:
            self.snapshot = self._load() if self.offline else self._gather()
        return self.snapshot

    def _load(self) -> ga_facts.Snapshot:
        path = Path(self.config.getoption("--ga-facts"))
        snapshot = ga_facts.Snapshot.load(path)
        self.timings["facts_source"] = str(path)
        return snapshot

    def _gather(self) -> ga_facts.Snapshot:
        if self._host is None:
            raise pytest.UsageError("give --ga-host (with --ga-user, --ga-identity, --ga-known-hosts) or --ga-facts")
        if self._connecting is not None:
            self._connecting.join()
        host = self._host
        os_data = self.os_data()
        target_os = os_data["targets"][self.document["target"]]
        login_user = target_os["login_user"]
        applicable = [c for c in self.document["controls"] if c["applicable"]]
        request = ga_facts.build_request(applicable, os_data, target_os, self.optional)
        updates = ga_facts.pending_updates_name(os_data["package_manager"], self.config.getoption("--ga-mode"))
        prefetch = [updates] if "pending_updates" in self.dynamic else []
        return ga_facts.take(host, request, self._context(login_user), prefetch, announce=_progress)

    def _context(self, login_user: str) -> dict[str, Any]:
        """What the checks compare the host with, besides the catalogue: saved with the facts."""
        opt = self.config.getoption
        pinned = []
        known_hosts = opt("--ga-known-hosts")
        if known_hosts:
            for line in Path(known_hosts).read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    pinned.append(f"{parts[1]} {parts[2]}")
        return {"os": self.document["os"], "target": self.document["target"], "login_user": login_user,
                "image_id": opt("--ga-image-id"), "instance_id": opt("--ga-instance-id"),
                "login_public_key": opt("--ga-login-public-key"), "pinned_host_keys": pinned,
                "mode": opt("--ga-mode")}

    def save(self, directory: Path) -> dict[str, Any]:
        """facts.json beside the report (live runs) and its digest; offline: the input's digest."""
        if self.snapshot is None:
            return {}
        if self.offline:
            data = Path(self.config.getoption("--ga-facts")).read_bytes()
            return {"file": str(self.config.getoption("--ga-facts")),
                    "digest": "sha256:" + hashlib.sha256(data).hexdigest()}
        directory.mkdir(parents=True, exist_ok=True)
        return _write_beside(directory, FACTS_FILE, self.snapshot.dump())

    def save_sbom(self, directory: Path, image: dict[str, str]) -> dict[str, Any]:
        """sbom.cdx.json beside the report (live runs), from the snapshot's package list."""
        if self.snapshot is None or self.offline:
            return {}
        import ga_sbom  # (not at start-up: offline runs never write one, and cyclonedx takes a while to import)

        try:
            text = ga_sbom.document(self.snapshot, self.os_data()["sbom"], image)
        except Exception as exc:  # noqa: BLE001 - an SBOM that cannot be made is said in the report, never a lost report
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {**_write_beside(directory, ga_sbom.SBOM_FILE, text.encode()), **ga_sbom.summary(text)}

    def transport(self) -> dict[str, Any]:
        counters = getattr(self.backend, "counters", None)
        return {**self.timings, **(self.snapshot.timings if self.snapshot else {}), **(counters or {}),
                "dynamic_seconds": round(self.snapshot.dynamic_seconds if self.snapshot else 0.0, 3)}


def _write_beside(directory: Path, name: str, data: bytes) -> dict[str, str]:
    """A file beside the report, whole or not at all; its name and digest for the report."""
    tmp = directory / (name + ".tmp")
    tmp.write_bytes(data)
    tmp.rename(directory / name)
    return {"file": name, "digest": "sha256:" + hashlib.sha256(data).hexdigest()}


def _progress(line: str) -> None:
    """A progress line while the checks wait on the host (pytest prints nothing until a check is
    judged); golden_ami's verify runner shows lines that start with "facts: "."""
    sys.__stdout__.write(f"facts: {line}\n")
    sys.__stdout__.flush()


def pytest_configure(config: pytest.Config) -> None:
    document = _controls_document(config)
    header = {
        "image_id": config.getoption("--ga-image-id"),
        "fingerprint": config.getoption("--ga-fingerprint"),
        "build_id": config.getoption("--ga-build-id"),
        "os": document["os"],
        "target": document["target"],
        "profile": document["profile"],
        "mode": config.getoption("--ga-mode"),
    }
    facts = FactSession(config, document)
    facts.connect_early()
    config.pluginmanager.register(facts, "ga_facts_session")
    config.pluginmanager.register(
        ControlReport(Path(config.getoption("--ga-report")), header, document["controls"], facts,
                      mode=config.getoption("--ga-mode")), "ga_control_report"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    controls = {c["id"]: c for c in _controls_document(config)["controls"]}
    session: FactSession = config.pluginmanager.get_plugin("ga_facts_session")
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
        else:
            session.optional |= {group for name, group in OPTIONAL_FACTS.items() if name in item.fixturenames}
            session.dynamic |= {name for name in DYNAMIC_FIXTURES if name in item.fixturenames}
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def facts(pytestconfig: pytest.Config) -> ga_facts.Snapshot:
    """The host's facts: gathered on first use (live) or loaded (offline)."""
    session: FactSession = pytestconfig.pluginmanager.get_plugin("ga_facts_session")
    started = time.monotonic()
    snapshot = session.get()
    session.timings.setdefault("facts_fixture_seconds", round(time.monotonic() - started, 3))
    return snapshot


@pytest.fixture(scope="session")
def ga_mode(pytestconfig: pytest.Config) -> str:
    """"verify" (the golden image: anything an instance would add is a failure) or "audit"."""
    return pytestconfig.getoption("--ga-mode")


@pytest.fixture(scope="session")
def walk(facts) -> dict[str, Any]:
    """The one filesystem walk (world-writable, unowned, setuid/setgid), when a check needs it."""
    return facts.section("walk")


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """For a check that passes with something a reader should see (an inventory): the text
    becomes its control's message in the report (ga_report), beside the outcome."""
    def record(text: str) -> None:
        request.node.user_properties.append(("evidence", text))
    return record


@pytest.fixture(scope="session")
def secret_scan(facts) -> dict[str, Any]:
    """Files that hold something shaped like a secret: names and kinds only (collector.secret_scan)."""
    return facts.section("secret_scan")


@pytest.fixture(scope="session")
def pending_updates(facts, os_data) -> str:
    """The upgrade simulation after refreshing the package lists (a dynamic command: it asks the
    archive, not the host; live runs start it beside the collector)."""
    return facts.dynamic_output(ga_facts.pending_updates_name(os_data["package_manager"], facts.context.get("mode")))


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


class ControlParams(dict):
    """A control's params as the build's controls.json has them. A name the check reads and the
    file lacks means the build directory was rendered from an older catalogue than this suite:
    the check fails saying so (not with a bare KeyError)."""

    def __init__(self, control_id: str, values: dict[str, Any]):
        super().__init__(values)
        self.control_id = control_id

    def __missing__(self, name: str) -> Any:
        raise AssertionError(f"{self.control_id} has no param {name!r} in this build's controls.json: the build "
                             "directory was rendered from an older catalogue than this verify suite - render it "
                             "again (a new build) before verifying")


@pytest.fixture
def params(request: pytest.FixtureRequest, controls) -> dict[str, Any]:
    """The parameters of the control the requesting check is marked with."""
    control_id = control_id_of(request.node)
    return ControlParams(control_id, controls[control_id]["params"] if control_id in controls else {})
