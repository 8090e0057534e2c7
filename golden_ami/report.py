"""The human-readable reports beside the JSON: Markdown and a self-contained HTML page.

Both are views of the one report dict report.json holds. What they show - the header, the
count per outcome, the control rows in order with each row's detail text, the waivers and the
exceptions - is worked out once here (`view`); markdown() and html() only lay it out.
"""
from __future__ import annotations

import base64
import hashlib
from typing import Any

import jinja2

from . import paths

# Problems first: the order of the control rows and of the summary bar.
# "finding": what an audit saw an instance add (verify --ga-mode=audit); never a pass.
_ORDER = {"fail": 0, "finding": 1, "disabled": 2, "waived": 3, "pass": 4, "not-applicable": 5}
HTML_TEMPLATE = "report.html.j2"


def ordered_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The control rows, problems first, then by control id."""
    return sorted(report.get("controls", []), key=lambda r: (_ORDER.get(r["outcome"], 9), r["id"]))


def row_detail(row: dict[str, Any]) -> str:
    """What a row says beyond its outcome: the failure message, or for a waived failure the
    waiver (until when, why) with the failure it covers."""
    detail = row.get("message", "")
    if row["outcome"] == "waived":
        waiver = row.get("waiver", {})
        detail = f"waived until {waiver.get('expires')}: {waiver.get('justification')} (failure: {detail})"
    return str(detail or "")


def outcome_counts(report: dict[str, Any]) -> list[tuple[str, int]]:
    """(outcome, count) for every outcome the pipeline knows (zero when absent), then any other
    outcome the summary or a row names."""
    summary = report.get("summary", {})
    others = (set(summary) | {r["outcome"] for r in report.get("controls", [])}) - set(_ORDER)
    return [(outcome, int(summary.get(outcome, 0))) for outcome in [*_ORDER, *sorted(others)]]


def _scope(waiver: dict[str, Any]) -> str:
    return f"{','.join(waiver.get('os') or ['all'])} / {','.join(waiver.get('target') or ['all'])}"


def view(report: dict[str, Any]) -> dict[str, Any]:
    """Everything a human-readable report shows, as plain strings and numbers."""
    return {
        "image_id": str(report.get("image_id", "?")),
        "header": [
            ("OS / target / profile", f"{report.get('os')} / {report.get('target')} / {report.get('profile')}"),
            ("benchmark", str(report.get("benchmark", ""))),
            ("fingerprint", str(report.get("fingerprint", ""))),
            ("build", str(report.get("build_id", ""))),
            ("verified", f"{report.get('started_at', '')} - {report.get('finished_at', '')}"),
            ("host key", str(report.get("host_key", "pinned from the console"))),
        ],
        "counts": outcome_counts(report),
        # The OS's own benchmark number leads: it is what an auditor holds the report against.
        "columns": ("OS benchmark", "control", "title", "outcome", "detail"),
        "rows": [{"id": str(r["id"]), "os_id": str(r.get("os_id") or ""), "title": str(r.get("title") or ""),
                  "outcome": str(r["outcome"]), "detail": row_detail(r)} for r in ordered_rows(report)],
        "waiver_columns": ("control", "scope", "expires", "state", "justification"),
        "waivers": [(str(w["control"]), _scope(w), str(w["expires"]), str(w["state"]), str(w["justification"]))
                    for w in report.get("waivers", [])],
        "exception_columns": ("control", "kind", "expires", "approved by", "justification"),
        "exceptions": [(str(e["control"]), str(e.get("kind", "")), str(e.get("expires", "")),
                        str(e.get("approved_by", "")), str(e.get("justification", "")))
                       for e in report.get("exceptions", [])],
    }


def _cell(text: Any) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns),
            *(f"| {' | '.join(_cell(cell) for cell in row)} |" for row in rows)]


def markdown(report: dict[str, Any]) -> str:
    shown = view(report)
    lines = [f"# Verification report: {shown['image_id']}", ""]
    lines += [f"- {label}: {value}" for label, value in shown["header"]]
    lines += ["- summary: " + ", ".join(f"{count} {outcome}" for outcome, count in shown["counts"]), ""]
    lines += _table(shown["columns"], [(r["os_id"], r["id"], r["title"], r["outcome"], r["detail"])
                                       for r in shown["rows"]])
    for title, columns, rows in (("Waivers", "waiver_columns", "waivers"),
                                 ("Exceptions", "exception_columns", "exceptions")):
        if shown[rows]:
            lines += ["", f"## {title}", "", *_table(shown[columns], shown[rows])]
    return "\n".join(lines) + "\n"


_HTML_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(paths.TEMPLATES_DIR)),
    undefined=jinja2.StrictUndefined,
    # Failure messages, titles and justifications come from the checked host and from config
    # files: every value is escaped, none may become markup.
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _csp_digest(text: str) -> str:
    """The Content-Security-Policy source that allows exactly this inline style or script."""
    return "sha256-" + base64.b64encode(hashlib.sha256(str(text).encode("utf-8")).digest()).decode("ascii")


_HTML_ENVIRONMENT.filters["csp_digest"] = _csp_digest


def html(report: dict[str, Any]) -> str:
    """One HTML page with no external assets (inline CSS and JS): the same view as markdown(),
    rows filterable by outcome."""
    return _HTML_ENVIRONMENT.get_template(HTML_TEMPLATE).render(view(report))


def summarise(rows: list[dict[str, Any]]) -> dict[str, int]:
    summary: dict[str, int] = {}
    for row in rows:
        summary[row["outcome"]] = summary.get(row["outcome"], 0) + 1
    return summary
