"""The human-readable report beside the JSON: one table row per control, waivers listed."""
from __future__ import annotations

from typing import Any

# "finding": what an audit saw an instance add (verify --ga-mode=audit); never a pass.
_ORDER = {"fail": 0, "finding": 1, "disabled": 2, "waived": 3, "pass": 4, "not-applicable": 5}


def _cell(text: Any) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def markdown(report: dict[str, Any]) -> str:
    rows = sorted(report.get("controls", []), key=lambda r: (_ORDER.get(r["outcome"], 9), r["id"]))
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(report.get("summary", {}).items()))
    lines = [
        f"# Verification report: {report.get('image_id', '?')}",
        "",
        f"- OS / target / profile: {report.get('os')} / {report.get('target')} / {report.get('profile')}",
        f"- fingerprint: `{report.get('fingerprint', '')}`",
        f"- build: {report.get('build_id', '')}, verified {report.get('started_at', '')} - {report.get('finished_at', '')}",
        f"- host key: {report.get('host_key', 'pinned from the console')}",
        f"- summary: {summary}",
        "",
        "| control | OS benchmark | title | outcome | detail |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        detail = row.get("message", "")
        if row["outcome"] == "waived":
            waiver = row.get("waiver", {})
            detail = f"waived until {waiver.get('expires')}: {waiver.get('justification')} (failure: {detail})"
        lines.append(f"| {_cell(row['id'])} | {_cell(row.get('os_id'))} | {_cell(row.get('title'))} | "
                     f"{row['outcome']} | {_cell(detail)} |")
    waivers = report.get("waivers", [])
    if waivers:
        lines += ["", "## Waivers", "", "| control | scope | expires | state | justification |", "|---|---|---|---|---|"]
        for waiver in waivers:
            scope = f"{','.join(waiver.get('os') or ['all'])} / {','.join(waiver.get('target') or ['all'])}"
            lines.append(f"| {_cell(waiver['control'])} | {_cell(scope)} | {waiver['expires']} | "
                         f"{_cell(waiver['state'])} | {_cell(waiver['justification'])} |")
    return "\n".join(lines) + "\n"


def summarise(rows: list[dict[str, Any]]) -> dict[str, int]:
    summary: dict[str, int] = {}
    for row in rows:
        summary[row["outcome"]] = summary.get(row["outcome"], 0) + 1
    return summary
