"""The approval gate: a candidate becomes approved only on a passing report about itself.

The report must name the candidate's own image id and fingerprint, the build directory must
still hash to that fingerprint (nobody changed controls.json or a script after the build),
and every control in force must have exactly one row - pass, not-applicable with a reason, or
waived under a waiver the waivers file holds *now* - and no row may name a control the build
does not have. Anything else rejects the candidate, naming the failing control ids. Read,
decide, write the tags, read them back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from . import attest, waivers
from .layout import CONTROLS_FILE, BuildDir
from .render import load_render
from .targets.base import Image, Target
from .verify_runner import seal_problems


@dataclass
class ApprovalDecision:
    approved: bool
    failed_controls: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.approved:
            return "approved"
        parts = []
        if self.failed_controls:
            parts.append("failed controls: " + ", ".join(self.failed_controls))
        parts.extend(self.reasons)
        return "rejected - " + "; ".join(parts)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows_problem(report: dict[str, Any], in_force: list[dict[str, Any]],
                  exceptions: Sequence[dict[str, Any]] = ()) -> Optional[str]:
    """What makes the report's rows unusable as a verdict, or None. A row can only be trusted
    as the one verdict on a control in force: not a second row for the same id (which of the
    two would count?), not a row for an id the build does not have."""
    rows = report.get("controls")
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get("id"), str) and isinstance(r.get("outcome"), str) for r in rows):
        return "the report's controls are not a list of rows, each with an id and an outcome"
    ids = [row["id"] for row in rows]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        return f"the report has more than one row for {', '.join(twice)}"
    switched_off = {e.get("control") for e in exceptions}
    unknown = sorted(set(ids) - {c["id"] for c in in_force} - switched_off)
    if unknown and in_force:
        return f"the report has rows for controls this build does not have in force: {', '.join(unknown)}"
    return None


def _waiver_holds(control_id: str, in_force: Sequence[waivers.Waiver], os_name: str, target: str) -> bool:
    today = datetime.now(timezone.utc).date()
    return any(w.covers(control_id, os_name, target) and not w.expired(today) for w in in_force)


def _controls_document(build_dir: Path) -> dict[str, Any] | str:
    """The build's controls.json ({} when there is none), or why it cannot be read as one."""
    path = BuildDir(build_dir).controls
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{CONTROLS_FILE} of the build is unreadable ({type(exc).__name__})"
    controls = document.get("controls") if isinstance(document, dict) else None
    if not isinstance(controls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), str) and "applicable" in c for c in controls):
        return f"{CONTROLS_FILE} of the build is not a list of controls, each with an id and applicable"
    return document


def decide(image: Image, report: Optional[dict[str, Any]], build_dir: Path,
           waivers_in_force: Sequence[waivers.Waiver] = ()) -> ApprovalDecision:
    """Judge a candidate by its report; pure (reads files, changes nothing).

    A "waived" row counts only while a waiver in waivers_in_force (the waivers file, read
    again now) covers that control for the build's OS and target: what a row says about its
    own waiver is never believed."""
    reasons: list[str] = []
    if report is None:
        return ApprovalDecision(False, [], ["no verification report"])
    if not isinstance(report, dict):
        return ApprovalDecision(False, [], ["the verification report is not a JSON object"])
    reasons.extend(seal_problems(image, BuildDir(build_dir).verify))
    if report.get("mode", "verify") != "verify":
        # An audit judges a running instance, which may add what the image must not ship.
        reasons.append(f"the report is from a {report.get('mode')!r} run, not a verification of the image")
    if report.get("image_id") != image.id:
        reasons.append(f"the report names image {report.get('image_id')!r}, not {image.id}")
    fingerprint = image.tags.get("Fingerprint", "")
    if report.get("fingerprint") != fingerprint:
        reasons.append(f"the report names fingerprint {report.get('fingerprint')!r}, not the image's {fingerprint!r}")
    try:
        _, on_disk = load_render(build_dir)
    except Exception as exc:  # noqa: BLE001 - any unreadable build dir is a refusal, with its reason
        reasons.append(f"build directory unreadable: {exc}")
        on_disk = None
    if on_disk is not None and on_disk != fingerprint:
        reasons.append("the build directory no longer hashes to the image's fingerprint (edited after the build)")

    document = _controls_document(build_dir)
    if isinstance(document, str):
        return ApprovalDecision(False, [], reasons + [document])
    in_force = document.get("controls", [])
    exceptions = document.get("exceptions", [])
    problem = _rows_problem(report, in_force, exceptions)
    if problem:
        return ApprovalDecision(False, [], reasons + [problem])
    rows = {row["id"]: row for row in report["controls"]}
    failed: list[str] = []
    for control in in_force:  # (controls checked from outside the instance, the AWS API, included)
        row = rows.get(control["id"])
        if row is None:
            failed.append(control["id"])
            reasons.append(f"{control['id']} has no row in the report")
        elif control["applicable"] and row["outcome"] == "waived":
            if not _waiver_holds(control["id"], waivers_in_force, document.get("os", ""), document.get("target", "")):
                failed.append(control["id"])
                reasons.append(f"{control['id']} is waived in the report, but no waiver in force in the waivers file"
                               " covers it")
        elif control["applicable"] and row["outcome"] != "pass":
            failed.append(control["id"])
        elif not control["applicable"] and not (row["outcome"] == "not-applicable" and row.get("message")):
            failed.append(control["id"])
            reasons.append(f"{control['id']} is not applicable but the report does not say why")
    today = datetime.now(timezone.utc).date().isoformat()
    if report.get("exceptions", []) != exceptions:
        reasons.append("the report's exceptions are not the ones the build was rendered with")
    for exception in exceptions:  # switched off or weakened: said in the report, and still excused
        row = rows.get(exception.get("control"))
        if exception.get("kind") == "disabled" and (row is None or row["outcome"] != "disabled"):
            reasons.append(f"{exception.get('control')} is switched off by exception but the report does not say so")
        elif str(exception.get("expires", "")) < today:
            failed.append(exception["control"])
            reasons.append(f"the exception for {exception['control']} expired on {exception['expires']}")
    for control_id, row in rows.items():
        if row["outcome"] == "disabled" and control_id not in {
                e.get("control") for e in exceptions if e.get("kind") == "disabled"}:
            failed.append(control_id)
            reasons.append(f"{control_id} is disabled in the report, but the build has no exception for it")
    if not in_force:
        reasons.append("the build directory lists no controls")
    return ApprovalDecision(approved=not failed and not reasons, failed_controls=sorted(set(failed)), reasons=reasons)


def load_report(build_dir: Path) -> Optional[dict[str, Any]]:
    path = BuildDir(build_dir).report
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def apply(target: Target, image: Image, decision: ApprovalDecision, build_dir: Path) -> Image:
    """Write the decision as tags and read them back (Target.set_tags checks they landed)."""
    # (ReportDigest is the verify run's seal, never recomputed here from whatever file is there.)
    envelope = None
    if decision.approved:
        report = load_report(build_dir)
        excepted = len((report or {}).get("exceptions", []))
        tags = {"Status": "approved", "ApprovedAt": now(), "Exceptions": str(excepted) if excepted else None,
                "FailedControls": None, "RejectedAt": None, "RejectReason": None}
        # Signed before anything changes: a key that cannot sign leaves the image as it was.
        envelope = _signed_statement(target, image, tags, report)
    else:
        tags = {"Status": "rejected", "RejectedAt": now(),
                "FailedControls": ",".join(decision.failed_controls) or None,
                "RejectReason": "; ".join(decision.reasons)[:250] or None, "ApprovedAt": None}
    target.set_tags(image.id, tags)
    target.save_statement(image.id, envelope)  # a rejection removes an earlier approval's statement
    return target.get_image(image.id)  # (aws: saving the statement tags the image with it)


def _signed_statement(target: Target, image: Image, tags: dict[str, Optional[str]],
                      report: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    if not target.signs_approvals:
        return None
    merged = {k: v for k, v in {**image.tags, **tags}.items() if v is not None}
    approved = Image(image.id, merged, image.location)
    payload = attest.statement(approved, target.subject_digest(image), report, merged["ApprovedAt"])
    return attest.sign(target.approval_signer(), payload)
