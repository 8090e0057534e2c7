"""The approval gate: a candidate becomes approved only on a passing report about itself.

The report must name the candidate's own image id and fingerprint, the build directory must
still hash to that fingerprint (nobody changed controls.json or a script after the build),
and every control in force must have a row: pass, or not-applicable with a reason. Anything
else rejects the candidate, naming the failing control ids. Read, decide, write the tags,
read them back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from . import waivers
from .render import CONTROLS_FILE, load_render
from .targets.base import Image, Target
from .verify_runner import REPORT_FILE, report_digest


@dataclass
class Decision:
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


def decide(image: Image, report: Optional[dict[str, Any]], build_dir: Path) -> Decision:
    """Judge a candidate by its report; pure (reads files, changes nothing)."""
    reasons: list[str] = []
    if report is None:
        return Decision(False, [], ["no verification report"])
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

    in_force = json.loads((build_dir / CONTROLS_FILE).read_text())["controls"] if (build_dir / CONTROLS_FILE).is_file() else []
    rows = {row["id"]: row for row in report.get("controls", [])}
    failed: list[str] = []
    for control in in_force:
        row = rows.get(control["id"])
        if row is None:
            failed.append(control["id"])
            reasons.append(f"{control['id']} has no row in the report")
        elif control["applicable"] and row["outcome"] == "waived":
            if not waivers.still_valid(row):
                failed.append(control["id"])
                reasons.append(f"{control['id']}: its waiver has expired since verification")
        elif control["applicable"] and row["outcome"] != "pass":
            failed.append(control["id"])
        elif not control["applicable"] and not (row["outcome"] == "not-applicable" and row.get("message")):
            failed.append(control["id"])
            reasons.append(f"{control['id']} is not applicable but the report does not say why")
    # Rows for controls checked from outside the instance (the AWS API) count the same way.
    for row_id, row in rows.items():
        if row_id not in {c["id"] for c in in_force} and row["outcome"] not in ("pass", "not-applicable"):
            failed.append(row_id)
    if not in_force:
        reasons.append("the build directory lists no controls")
    return Decision(approved=not failed and not reasons, failed_controls=sorted(set(failed)), reasons=reasons)


def load_report(build_dir: Path) -> Optional[dict[str, Any]]:
    path = build_dir / "verify" / REPORT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def apply(target: Target, image: Image, decision: Decision, build_dir: Path) -> Image:
    """Write the decision as tags and read them back (Target.set_tags checks they landed)."""
    report_path = build_dir / "verify" / REPORT_FILE
    digest = report_digest(report_path) if report_path.is_file() else None
    if decision.approved:
        tags = {"Status": "approved", "ApprovedAt": now(), "ReportDigest": digest,
                "FailedControls": None, "RejectedAt": None, "RejectReason": None}
    else:
        tags = {"Status": "rejected", "RejectedAt": now(), "ReportDigest": digest,
                "FailedControls": ",".join(decision.failed_controls) or None,
                "RejectReason": "; ".join(decision.reasons)[:250] or None, "ApprovedAt": None}
    return target.set_tags(image.id, tags)
