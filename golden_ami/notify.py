"""What a `rebuild` run tells the world: two summary files, and one SNS message.

Every run writes, into its summary directory:
  rebuild-summary.json   for machines (one object per OS: decision, reason, build id, image
                         id, status, failed controls, duration)
  rebuild-summary.md     for people: the GitHub job summary, and the body of the SNS message

Then, when notify.sns_topic_arn is set and some OS ended in one of the outcomes listed in
notify.on (approved / rejected / failed), one message goes to that topic: a short subject
and the Markdown. SNS refuses a message over 256 KiB, so a longer body is cut at a line
boundary and ends with a note saying so and where the whole summary is.

Nothing here knows how a rebuild decides or builds: it reads the per-OS rows that
golden_ami.rebuild's RebuildOutcome.as_dict() produces.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import UserError
from .files import write_atomic
from .layout import SUMMARY_JSON, SUMMARY_MARKDOWN, StateDir
from .progress import Progress

SCHEMA_VERSION = 1

# SNS's limits: a message (body and attributes together) of at most 256 KiB; a subject of at
# most 100 printable ASCII characters on one line.
SNS_MAX_MESSAGE_BYTES = 262_144
SNS_MAX_SUBJECT_CHARS = 100
# Room kept free below the limit for the request's own framing of the attributes.
SNS_HEADROOM_BYTES = 1024

# A per-OS status (golden_ami.rebuild) -> the event that notify.on names. "error" is an OS
# that could not even be decided (its source image could not be resolved, say): a failure.
EVENT_OF_STATUS = {"approved": "approved", "rejected": "rejected", "failed": "failed", "error": "failed"}
# The order statuses are counted in, worst first, in the subject and the headline.
STATUS_ORDER = ("failed", "error", "rejected", "approved", "planned", "skipped")


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_summary_dir(state_dir: Path, run_id: str) -> Path:
    """Where a run's summaries go unless --summary-dir says otherwise."""
    return StateDir(state_dir).runs / run_id


def run_origin() -> str:
    """Where this run happened: a link to the GitHub Actions run, else the host's name."""
    server, repo, run = (os.environ.get(k, "") for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
    if server and repo and run:
        return f"{server}/{repo}/actions/runs/{run}"
    return f"host {socket.gethostname()}"


def full_summary_location(markdown_path: Path, origin: str) -> str:
    """Where a reader of a cut-short message finds the whole summary."""
    if origin.startswith(("https://", "http://")):  # a CI run: its files are the run's artifacts
        return f"the artifacts of {origin}"
    return f"{markdown_path}" + (f" on {origin.removeprefix('host ')}" if origin else "")


def duration_text(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class OsSummary:
    os: str
    decision: str  # what the planner chose: build | skip | error (could not decide)
    reason: str
    status: str  # approved | rejected | failed | error | planned (dry run) | skipped
    build_id: Optional[str] = None
    image_id: Optional[str] = None
    failed_controls: tuple[str, ...] = ()
    duration_seconds: Optional[float] = None
    detail: str = ""  # the gate's summary, or why the build failed

    @property
    def event(self) -> Optional[str]:
        return EVENT_OF_STATUS.get(self.status)

    @classmethod
    def from_outcome(cls, outcome: Any) -> "OsSummary":
        """From a golden_ami.rebuild.RebuildOutcome (or its as_dict())."""
        row = outcome.as_dict() if hasattr(outcome, "as_dict") else dict(outcome)
        decision = row.get("decision") or {}
        error = decision.get("error") or ""
        chosen = "error" if error else ("build" if decision.get("build") else "skip")
        reason = error or "; ".join(decision.get("reasons") or [])
        detail = row.get("detail") or ""
        return cls(
            os=row["os"], decision=chosen, reason=reason,
            status=row.get("status") or "failed", build_id=row.get("build_id"), image_id=row.get("image_id"),
            failed_controls=tuple(row.get("failed_controls") or ()), duration_seconds=row.get("seconds"),
            detail="" if detail == reason else detail,  # an undecided OS repeats its error as detail
        )


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    target: str
    started_at: str
    finished_at: str
    oses: tuple[OsSummary, ...]
    dry_run: bool = False
    commit: str = ""
    origin: str = ""

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[Any], *, run_id: str, target: str, started_at: str,
                      finished_at: Optional[str] = None, dry_run: bool = False, commit: str = "",
                      origin: Optional[str] = None) -> "RunSummary":
        return cls(run_id=run_id, target=target, started_at=started_at, finished_at=finished_at or utc_now(),
                   oses=tuple(OsSummary.from_outcome(o) for o in outcomes), dry_run=dry_run, commit=commit,
                   origin=run_origin() if origin is None else origin)

    @property
    def events(self) -> list[str]:
        """The notify.on events this run had, sorted (approved, failed, rejected)."""
        return sorted({o.event for o in self.oses if o.event})

    @property
    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for o in self.oses:
            found[o.status] = found.get(o.status, 0) + 1
        ordered = [s for s in STATUS_ORDER if s in found] + sorted(s for s in found if s not in STATUS_ORDER)
        return {status: found[status] for status in ordered}

    @property
    def ok(self) -> bool:
        return not any(o.status in ("failed", "error", "rejected") for o in self.oses)

    def headline(self) -> str:
        counted = ", ".join(f"{n} {status}" for status, n in self.counts.items()) or "no OS considered"
        return counted + (" (dry run)" if self.dry_run else "")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = SCHEMA_VERSION
        data["counts"] = self.counts
        data["events"] = self.events
        data["ok"] = self.ok
        for row, o in zip(data["oses"], self.oses, strict=True):
            row["failed_controls"] = list(o.failed_controls)
            row["event"] = o.event
        return data


# --- the Markdown summary -------------------------------------------------------------------
def _cell(text: Any) -> str:
    """A value that stays inside its table cell: no newlines, pipes escaped."""
    if text is None or text == "":
        return "-"
    return " ".join(str(text).split()).replace("|", "\\|")


def _line(text: str) -> str:
    return " ".join(text.split())


def render_markdown(summary: RunSummary) -> str:
    lines = [f"## golden-ami rebuild on `{summary.target}`: {summary.headline()}", ""]
    facts = [f"run `{summary.run_id}`", f"{summary.started_at} to {summary.finished_at}"]
    if summary.commit:
        facts.append(f"pipeline commit `{summary.commit}`")
    if summary.origin:
        facts.append(summary.origin)
    lines.append(", ".join(facts) + ".")
    if summary.dry_run:
        lines.append("")
        lines.append("Dry run: decisions only, nothing was built.")
    lines += ["", "| OS | decision | status | image | build | duration | failed controls |",
              "|---|---|---|---|---|---|---|"]
    for o in summary.oses:
        lines.append("| " + " | ".join(_cell(v) for v in (
            o.os, o.decision, o.status, o.image_id, o.build_id, duration_text(o.duration_seconds),
            len(o.failed_controls) if o.failed_controls else "")) + " |")
    lines += ["", "### Why", ""]
    for o in summary.oses:
        lines.append(f"- **{o.os}** ({o.decision}): {_line(o.reason) or 'no reason recorded'}")
        if o.detail:
            lines.append(f"  - {o.status}: {_line(o.detail)}")
    failing = [o for o in summary.oses if o.failed_controls]
    if failing:
        lines += ["", "### Failed controls", ""]
        for o in failing:
            lines.append(f"- **{o.os}** ({o.status}, {len(o.failed_controls)}): {', '.join(o.failed_controls)}")
    return "\n".join(lines) + "\n"


def write_summaries(summary: RunSummary, directory: Path) -> tuple[Path, Path]:
    """Write rebuild-summary.json and rebuild-summary.md into directory; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / SUMMARY_JSON, directory / SUMMARY_MARKDOWN
    write_atomic(json_path, json.dumps(summary.as_dict(), indent=2, sort_keys=True) + "\n")
    write_atomic(md_path, render_markdown(summary))
    return json_path, md_path


# --- SNS -----------------------------------------------------------------------------------
def subject(summary: RunSummary) -> str:
    """One line of printable ASCII, at most 100 characters (SNS rejects anything else)."""
    text = f"golden-ami rebuild on {summary.target}: {summary.headline()}"
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    if len(text) > SNS_MAX_SUBJECT_CHARS:
        text = text[: SNS_MAX_SUBJECT_CHARS - 3] + "..."
    return text


def fit_message(body: str, limit_bytes: int, full_summary_at: str = "") -> str:
    """body, or as much of it as fits in limit_bytes of UTF-8 followed by a truncation note."""
    encoded = body.encode("utf-8")
    if len(encoded) <= limit_bytes:
        return body
    where = f" The whole summary: {full_summary_at}." if full_summary_at else ""
    note = (f"\n\n[truncated: SNS takes at most {SNS_MAX_MESSAGE_BYTES} bytes per message; this summary has "
            f"{len(encoded)}.{where}]\n")
    room = limit_bytes - len(note.encode("utf-8"))
    if room <= 0:
        raise ValueError(f"limit_bytes={limit_bytes} leaves no room for the truncation note")
    kept = encoded[:room].decode("utf-8", errors="ignore")  # never half a character
    cut = kept.rfind("\n")
    if cut > len(kept) // 2:  # end on a whole line unless that would throw away too much
        kept = kept[:cut]
    return kept + note


def _message_attributes(summary: RunSummary) -> dict[str, dict[str, str]]:
    # For subscription filter policies: e.g. {"events": ["failed", "rejected"]} to page on failures only.
    return {
        "events": {"DataType": "String.Array", "StringValue": json.dumps(summary.events)},
        "target": {"DataType": "String", "StringValue": summary.target},
    }


def _attributes_bytes(attributes: dict[str, dict[str, str]]) -> int:
    return sum(len(name.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode())
               for name, a in attributes.items())


def topic_region(topic_arn: str) -> str:
    parts = topic_arn.split(":")
    if len(parts) < 6 or parts[2] != "sns" or not parts[3]:
        raise UserError(f"notify.sns_topic_arn {topic_arn!r} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
    return parts[3]


def publish_sns(topic_arn: str, summary: RunSummary, *, client: Any = None, full_summary_at: str = "") -> str:
    """Publish the run's subject and Markdown to the topic; return SNS's message id.

    The client defaults to one for the topic's own region (from the ARN). Raises UserError
    with one line when SNS refuses or answers without a message id.
    """
    # Deferred: boto3 and botocore load only when a run publishes to SNS.
    import botocore.exceptions

    from .targets.aws import clients

    sns = client or clients.client("sns", topic_region(topic_arn))
    attributes = _message_attributes(summary)
    budget = SNS_MAX_MESSAGE_BYTES - _attributes_bytes(attributes) - SNS_HEADROOM_BYTES
    request: dict[str, Any] = {
        "TopicArn": topic_arn,
        "Subject": subject(summary),
        "Message": fit_message(render_markdown(summary), budget, full_summary_at),
        "MessageAttributes": attributes,
    }
    if topic_arn.endswith(".fifo"):  # FIFO topics want a group, and dedupe on this id
        request["MessageGroupId"] = "golden-ami-rebuild"
        request["MessageDeduplicationId"] = summary.run_id
    try:
        answer = sns.publish(**request)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise clients.describe_error(exc, f"publish the rebuild summary to {topic_arn}") from None
    message_id = answer.get("MessageId")
    if not message_id:
        raise UserError(f"SNS accepted the publish to {topic_arn} but returned no message id: check the topic")
    return message_id


def wanted_events(summary: RunSummary, on: Iterable[str]) -> list[str]:
    """The run's events that notify.on asks to hear about."""
    chosen = set(on)
    return [event for event in summary.events if event in chosen]


def notify_run(settings: Any, summary: RunSummary, progress: Progress, *, dry_run: bool = False,
               full_summary_at: str = "", client: Any = None) -> Optional[str]:
    """Publish the run's summary when settings (config's notify: section) ask for it.

    Returns the SNS message id, or None when nothing was sent (no topic, no wanted event,
    or a dry run, which only says what it would send).
    """
    if not settings.sns_topic_arn:
        return None
    events = wanted_events(summary, settings.on)
    if not events:
        progress.say(f"notify: no {'/'.join(settings.on)} outcome in this run; nothing published")
        return None
    if dry_run:
        progress.say(f"notify: dry run; would publish \"{subject(summary)}\" to {settings.sns_topic_arn}")
        return None
    message_id = publish_sns(settings.sns_topic_arn, summary, client=client, full_summary_at=full_summary_at)
    progress.say(f"notify: published to {settings.sns_topic_arn} ({', '.join(events)}; message {message_id})")
    return message_id
