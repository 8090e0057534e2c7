"""One report row per control: what the approval gate reads.

Every check carries @pytest.mark.control("<id>"). A control passes when all of its checks
pass; fails when any fails (the message names the control id); is not-applicable (with the
catalogue's reason) when the build's controls.json says so. An applicable control with no
check at all is a failure ("no check implemented"), never a silent gap.

Audit mode (`--ga-mode=audit`, a running application instance rather than the golden image
itself): a check may raise Finding for what an instance is allowed to add (its own firewall
drop-ins); the control's row is then "finding", with what was found. A finding is never a
pass: the approval gate accepts only "pass". In verify mode a Finding is an ordinary failure.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pytest


MODES = ("verify", "audit")


class Finding(Exception):
    """Raised by a check, in audit mode only, for something the instance added that is allowed
    there but must be seen (the message says what)."""


def control_id_of(item: pytest.Item) -> Optional[str]:
    marker = item.get_closest_marker("control")
    return str(marker.args[0]) if marker and marker.args else None


def _short_message(report: pytest.TestReport) -> str:
    if report.passed:
        return ""
    stashed = getattr(report, "ga_message", None)
    if stashed is not None:
        return stashed
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        # The assertion's own message is its first line; the rest is pytest's explanation.
        first = str(crash.message).strip().splitlines()[0] if str(crash.message).strip() else ""
        for prefix in ("AssertionError: ", "ga_facts.FactUnavailable: ", "FactUnavailable: "):
            first = first.removeprefix(prefix)
        return first
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr).strip().splitlines()[-1] if longrepr else ""


class ControlReport:
    """pytest plugin: collects outcomes per control and writes the JSON report."""

    def __init__(self, path: Path, header: dict[str, Any], controls: list[dict[str, Any]], facts=None,
                 mode: str = "verify"):
        self.path = path
        self.mode = mode
        self.facts = facts  # the run's FactSession: facts.json is saved and sealed with the report
        self.seconds = {"setup": 0.0, "call": 0.0, "teardown": 0.0}
        self.checks_run = 0
        self.loop_seconds = 0.0
        self.header = header
        self.controls = {c["id"]: c for c in controls}
        self.checks: dict[str, list[dict[str, str]]] = {cid: [] for cid in self.controls}
        self.started = datetime.now(timezone.utc)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call):
        outcome = yield
        report = outcome.get_result()
        control_id = control_id_of(item)
        report.user_properties.append(("control", control_id or ""))
        if self.mode == "audit" and call.excinfo is not None and call.excinfo.errisinstance(Finding):
            # Seen, not failed: recorded as a finding (pytest counts it as passed).
            report.outcome, report.longrepr = "passed", None
            report.ga_finding = str(call.excinfo.value)
        if control_id and report.failed and control_id in self.controls:
            # Name the control in the failure text JUnit shows, too.
            title = self.controls[control_id]["title"]
            message = _short_message(report)
            report.ga_message = message
            report.longrepr = f"[{control_id}] {title}: {message or report.longrepr}"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtestloop(self, session: pytest.Session):
        # The whole loop over the checks, pytest's own per-check work included.
        started = time.perf_counter()
        yield
        self.loop_seconds = time.perf_counter() - started

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.when] = self.seconds.get(report.when, 0.0) + report.duration
        if report.when == "call":
            self.checks_run += 1
        if report.when != "call" and not (report.failed or report.skipped):
            return
        control_id = dict(report.user_properties).get("control")
        if not control_id or control_id not in self.checks:
            return
        finding = getattr(report, "ga_finding", None)
        if finding is not None:
            self.checks[control_id].append({"test": report.nodeid, "outcome": "finding", "message": finding})
            return
        outcome = "pass" if report.passed else "skip" if report.skipped else "fail"
        # A passing check may leave what it saw for the reader (the evidence fixture, verify/conftest.py).
        message = dict(report.user_properties).get("evidence", "") if report.passed else _short_message(report)
        self.checks[control_id].append({"test": report.nodeid, "outcome": outcome, "message": message})

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for control_id, control in self.controls.items():
            checks = self.checks[control_id]
            if control["applicable"] and control.get("check", "suite") != "suite":
                continue  # checked from outside the instance; the runner adds that row
            if not control["applicable"]:
                outcome, message = "not-applicable", control["reason"]
            elif not checks:
                outcome, message = "fail", "no check implemented for this control"
            elif any(c["outcome"] == "fail" for c in checks):
                outcome = "fail"
                message = "; ".join(c["message"] for c in checks if c["outcome"] == "fail")
            elif any(c["outcome"] == "skip" for c in checks):
                # An applicable control whose check skipped was not verified: that is a failure.
                outcome = "fail"
                message = "check skipped: " + "; ".join(c["message"] for c in checks if c["outcome"] == "skip")
            elif any(c["outcome"] == "finding" for c in checks):
                outcome = "finding"
                message = "; ".join(c["message"] for c in checks if c["outcome"] == "finding")
            else:
                outcome = "pass"
                message = "; ".join(c["message"] for c in checks if c["message"])
            rows.append({
                "id": control_id,
                "title": control["title"],
                "section": control["section"],
                "os_id": control.get("os_id", ""),
                "outcome": outcome,
                "message": message,
                "checks": checks,
            })
        return rows

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        rows = self.rows()
        summary: dict[str, int] = {}
        for row in rows:
            summary[row["outcome"]] = summary.get(row["outcome"], 0) + 1
        facts, transport, sbom = {}, {}, {}
        if self.facts is not None:
            facts = self.facts.save(self.path.parent)
            transport = self.facts.transport()
            sbom = self.facts.save_sbom(self.path.parent, {
                "id": self.header["image_id"], "os": self.header["os"], "fingerprint": self.header["fingerprint"],
                "build_id": self.header["build_id"]})
        # Time spent judging, without gathering: the loop over every check (pytest's own work
        # per check included), less connecting, the collector run and the dynamic commands
        # (each paid inside the first check that needed it).
        evaluation = max(self.loop_seconds - transport.get("facts_fixture_seconds", 0)
                         - transport.get("gather_wait_seconds", 0) - transport.get("dynamic_seconds", 0), 0)
        report = {
            "schema": 1,
            **self.header,
            "facts": facts,
            "sbom": sbom,
            "transport": transport,
            "evaluation": {"checks": self.checks_run, "seconds": round(evaluation, 4),
                           "check_phases_seconds": round(sum(self.seconds.values()), 4),
                           "call_seconds": round(self.seconds["call"], 4)},
            "started_at": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "pytest_exit_status": int(exitstatus),
            "summary": summary,
            "controls": rows,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        tmp.rename(self.path)
