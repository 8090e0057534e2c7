"""Run summaries (JSON + Markdown) and SNS notifications (golden_ami/notify.py).

SNS runs in moto, in process; an SQS queue subscribed to the topic reads back what was
published, the way a real subscriber would see it. For the message that only just fits
SNS's limit, the topic's own record of what it sent is read instead (an SQS message has the
same 256 KiB limit, and SNS's envelope around the body would not fit in it).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import botocore.exceptions
import pytest
from moto import mock_aws

from golden_ami import config, notify
from golden_ami.errors import UserError
from golden_ami.progress import Progress

REGION = "eu-west-1"


def _outcome(os_name, status, *, build=True, reasons=("new source image: ami-0new, was ami-0old",), error="",
             image_id=None, build_id=None, failed=(), seconds=0.0, detail=""):
    """A row in the shape of golden_ami.rebuild.RebuildOutcome.as_dict()."""
    return {"os": os_name, "status": status, "image_id": image_id, "build_id": build_id,
            "failed_controls": list(failed), "seconds": seconds, "detail": detail,
            "decision": {"os": os_name, "build": build, "reasons": list(reasons), "current_image": None,
                         "error": error}}


def _summary(*outcomes, dry_run=False, target="aws"):
    return notify.RunSummary.from_outcomes(outcomes, run_id="20261129T040000Z-abc123", target=target,
                                           started_at="2026-11-29T04:00:00Z", finished_at="2026-11-29T04:41:10Z",
                                           dry_run=dry_run, commit="0123abc", origin="host builder")


def _mixed():
    return _summary(
        _outcome("al2023", "approved", image_id="ami-0aaa", build_id="al2023-20261129T040001Z-111111",
                 seconds=1213, detail="approved: 212 passed"),
        _outcome("ubuntu2204", "rejected", image_id="ami-0bbb", build_id="ubuntu2204-20261129T040001Z-222222",
                 failed=("4.2.7", "5.1.1"), seconds=1500, detail="rejected: 2 controls failed"),
        _outcome("ubuntu2404", "error", build=False, reasons=(), error="no AMI named ubuntu/images/x | y",
                 detail="no AMI named ubuntu/images/x | y"),
        _outcome("debian12", "skipped", build=False, reasons=("nothing to do: source image, content and age "
                                                              "unchanged for ami-0ccc",)),
    )


# --- the summary files ----------------------------------------------------------------------
def test_summaries_are_written_as_json_and_markdown(tmp_path):
    json_path, md_path = notify.write_summaries(_mixed(), tmp_path / "runs" / "r1")
    assert (json_path.name, md_path.name) == ("rebuild-summary.json", "rebuild-summary.md")

    data = json.loads(json_path.read_text())
    assert data["schema"] == 1 and data["target"] == "aws" and data["ok"] is False
    assert data["counts"] == {"error": 1, "rejected": 1, "approved": 1, "skipped": 1}
    assert data["events"] == ["approved", "failed", "rejected"]
    rows = {row["os"]: row for row in data["oses"]}
    assert rows["ubuntu2204"] == {
        "os": "ubuntu2204", "decision": "build", "reason": "new source image: ami-0new, was ami-0old",
        "status": "rejected", "build_id": "ubuntu2204-20261129T040001Z-222222", "image_id": "ami-0bbb",
        "failed_controls": ["4.2.7", "5.1.1"], "duration_seconds": 1500, "detail": "rejected: 2 controls failed",
        "event": "rejected"}
    assert rows["ubuntu2404"]["decision"] == "error" and rows["ubuntu2404"]["event"] == "failed"
    assert rows["ubuntu2404"]["detail"] == ""  # rebuild repeats the error as detail: said once is enough
    assert rows["debian12"]["decision"] == "skip" and rows["debian12"]["event"] is None

    md = md_path.read_text()
    assert md.startswith("## golden-ami rebuild on `aws`: 1 error, 1 rejected, 1 approved, 1 skipped\n")
    assert "| al2023 | build | approved | ami-0aaa | al2023-20261129T040001Z-111111 | 20m13s | - |" in md
    assert "| ubuntu2204 | build | rejected | ami-0bbb | ubuntu2204-20261129T040001Z-222222 | 25m00s | 2 |" in md
    assert "- **ubuntu2204** (rejected, 2): 4.2.7, 5.1.1" in md
    # a pipe inside a reason stays out of the table's structure, in the list below it
    assert "- **ubuntu2404** (error): no AMI named ubuntu/images/x | y" in md
    assert "pipeline commit `0123abc`" in md and "Dry run" not in md
    assert not list((tmp_path / "runs" / "r1").glob(".*.tmp"))  # written by rename, nothing left over


def test_table_cells_escape_pipes_and_newlines():
    summary = _summary(_outcome("debian12", "failed", detail="packer\nfailed", build_id="a|b"))
    md = notify.render_markdown(summary)
    row = next(line for line in md.splitlines() if line.startswith("| debian12"))
    assert row == "| debian12 | build | failed | - | a\\|b | 0s | - |"
    assert "  - failed: packer failed" in md


def test_a_dry_run_says_so_and_is_ok_without_failures(tmp_path):
    summary = _summary(_outcome("debian12", "planned"), _outcome("al2023", "skipped", build=False), dry_run=True)
    assert summary.ok and summary.events == []
    md = notify.render_markdown(summary)
    assert "Dry run: decisions only, nothing was built." in md
    assert notify.subject(summary) == "golden-ami rebuild on aws: 1 planned, 1 skipped (dry run)"


def test_rows_from_the_rebuild_modules_own_outcome():
    from golden_ami import rebuild

    outcome = rebuild.RebuildOutcome("debian12", rebuild.RebuildDecision("debian12", True, ["older than 30 days"]), "approved",
                              "li-123", "debian12-b1", [], 61.0, "approved")
    row = notify.OsSummary.from_outcome(outcome)
    assert (row.os, row.decision, row.reason, row.status, row.image_id, row.build_id, row.duration_seconds) == (
        "debian12", "build", "older than 30 days", "approved", "li-123", "debian12-b1", 61.0)


def test_durations_read_like_a_person_would_write_them():
    assert [notify.duration_text(s) for s in (None, 0, 59.6, 61, 3599, 3600 + 125)] == [
        "-", "0s", "1m00s", "1m01s", "59m59s", "1h02m"]


def test_origin_names_the_github_run_when_there_is_one(monkeypatch):
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/golden-ami")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    assert notify.run_origin() == "https://github.com/acme/golden-ami/actions/runs/42"
    monkeypatch.delenv("GITHUB_RUN_ID")
    assert notify.run_origin().startswith("host ")


def test_a_cut_message_points_at_the_whole_summary():
    md = Path("/var/lib/golden-ami/runs/r1/rebuild-summary.md")
    assert notify.full_summary_location(md, "host builder") == "/var/lib/golden-ami/runs/r1/rebuild-summary.md on builder"
    assert notify.full_summary_location(md, "https://github.com/acme/golden-ami/actions/runs/42") == (
        "the artifacts of https://github.com/acme/golden-ami/actions/runs/42")


# --- subject and size limits -------------------------------------------------------------------
def test_subject_is_one_short_ascii_line():
    assert notify.subject(_mixed()) == "golden-ami rebuild on aws: 1 error, 1 rejected, 1 approved, 1 skipped"
    many = _summary(*[_outcome(f"os{i}", status) for i, status in
                      enumerate(["failed", "error", "rejected", "approved", "planned", "skipped", "weird-é-status"])],
                    target="aws")
    text = notify.subject(many)
    assert len(text) <= 100 and text.endswith("...")
    assert all(" " <= ch <= "~" for ch in text)


def test_fit_message_keeps_short_bodies_and_cuts_long_ones_whole_characters_only():
    assert notify.fit_message("short\n", 100) == "short\n"
    body = "".join(f"line {i}: é€ 𝄞\n" for i in range(2000))  # 2-, 3- and 4-byte characters
    fitted = notify.fit_message(body, 5000, "/var/lib/golden-ami/runs/r1/rebuild-summary.md")
    assert len(fitted.encode("utf-8")) <= 5000
    kept, note = fitted.split("\n\n[truncated:")
    assert body.startswith(kept) and kept.endswith("𝄞")  # cut at the end of a whole line
    assert f"this summary has {len(body.encode())}." in note
    assert "/var/lib/golden-ami/runs/r1/rebuild-summary.md" in note


# --- SNS, in moto ------------------------------------------------------------------------------
@pytest.fixture
def sns_env(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # not the topic's region, on purpose
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    with mock_aws():
        yield


def _topic_with_queue(name="golden-ami-rebuilds"):
    """A topic and an SQS queue subscribed to it: (topic_arn, read_messages)."""
    sns, sqs = boto3.client("sns", REGION), boto3.client("sqs", REGION)
    fifo = name.endswith(".fifo")
    topic_arn = sns.create_topic(Name=name, Attributes={"FifoTopic": "true"} if fifo else {})["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"} if fifo else {})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)

    def read_messages():
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        return [json.loads(m["Body"]) for m in got]  # SNS's envelope: Subject, Message, MessageAttributes

    return topic_arn, read_messages


def _sent_by_topic(topic_arn):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sns.models import sns_backends

    return sns_backends[DEFAULT_ACCOUNT_ID][REGION].topics[topic_arn].sent_notifications


def test_publish_sends_the_subject_and_markdown_to_subscribers(sns_env):
    topic_arn, read_messages = _topic_with_queue()
    summary = _mixed()
    message_id = notify.publish_sns(topic_arn, summary)

    [envelope] = read_messages()
    assert envelope["MessageId"] == message_id and envelope["TopicArn"] == topic_arn
    assert envelope["Subject"] == "golden-ami rebuild on aws: 1 error, 1 rejected, 1 approved, 1 skipped"
    assert envelope["Message"] == notify.render_markdown(summary)
    attributes = envelope["MessageAttributes"]
    assert json.loads(attributes["events"]["Value"]) == ["approved", "failed", "rejected"]
    assert attributes["target"]["Value"] == "aws"


def test_an_oversized_summary_is_cut_to_fit_with_a_note(sns_env):
    topic_arn, _ = _topic_with_queue()
    controls = tuple(f"GA-{n:06d}" for n in range(30_000))  # about 330 KB of failed control ids
    summary = _summary(_outcome("debian12", "rejected", image_id="li-1", failed=controls))
    full = notify.render_markdown(summary)
    assert len(full.encode()) > notify.SNS_MAX_MESSAGE_BYTES
    with pytest.raises(botocore.exceptions.ClientError, match="too long"):  # what SNS does to the uncut body
        boto3.client("sns", REGION).publish(TopicArn=topic_arn, Message=full)

    notify.publish_sns(topic_arn, summary, full_summary_at="the run's rebuild-summary.md artifact")
    [(_, message, subject, _, _)] = _sent_by_topic(topic_arn)
    assert len(message.encode()) <= notify.SNS_MAX_MESSAGE_BYTES - notify.SNS_HEADROOM_BYTES
    assert message.startswith("## golden-ami rebuild on `aws`: 1 rejected\n")
    assert message.rstrip().endswith("The whole summary: the run's rebuild-summary.md artifact.]")
    assert subject == "golden-ami rebuild on aws: 1 rejected"


def test_a_fifo_topic_gets_a_group_and_a_deduplication_id(sns_env):
    topic_arn, read_messages = _topic_with_queue("golden-ami-rebuilds.fifo")
    notify.publish_sns(topic_arn, _mixed())
    [(_, _, _, _, group)] = _sent_by_topic(topic_arn)
    assert group == "golden-ami-rebuild"
    assert [m["Subject"] for m in read_messages()] == [notify.subject(_mixed())]


def test_a_missing_topic_is_one_actionable_line(sns_env):
    missing = f"arn:aws:sns:{REGION}:123456789012:golden-ami-nobody-made-this"
    with pytest.raises(UserError, match=r"AWS refused to publish the rebuild summary to arn:aws:sns:eu-west-1:"
                                        r"123456789012:golden-ami-nobody-made-this: NotFound") as caught:
        notify.publish_sns(missing, _mixed())
    assert "\n" not in str(caught.value)


def test_a_publish_without_a_message_id_fails_loudly():
    class Silent:
        def publish(self, **_):
            return {}

    with pytest.raises(UserError, match="returned no message id"):
        notify.publish_sns("arn:aws:sns:eu-west-1:123456789012:t", _mixed(), client=Silent())


# --- when a run publishes ----------------------------------------------------------------------
def _settings(topic_arn, on=("approved", "failed", "rejected")):
    return SimpleNamespace(sns_topic_arn=topic_arn, on=list(on))


def _progress():
    stream = io.StringIO()
    return Progress(stream=stream, heartbeat_seconds=3600), stream


def test_notify_run_publishes_only_for_the_outcomes_asked_for(sns_env):
    topic_arn, read_messages = _topic_with_queue()
    progress, said = _progress()
    approved_only = _summary(_outcome("al2023", "approved", image_id="ami-0aaa"),
                             _outcome("debian12", "skipped", build=False))

    assert notify.notify_run(_settings(topic_arn, on=["failed", "rejected"]), approved_only, progress) is None
    assert read_messages() == []
    assert "no failed/rejected outcome in this run; nothing published" in said.getvalue()

    message_id = notify.notify_run(_settings(topic_arn), approved_only, progress)
    [envelope] = read_messages()
    assert envelope["MessageId"] == message_id
    assert f"published to {topic_arn} (approved; message {message_id})" in said.getvalue()

    quiet = _summary(_outcome("debian12", "skipped", build=False))
    assert notify.notify_run(_settings(topic_arn), quiet, progress) is None
    assert read_messages() == []


def test_notify_run_does_nothing_without_a_topic_and_only_tells_on_a_dry_run(sns_env):
    topic_arn, read_messages = _topic_with_queue()
    progress, said = _progress()
    failing = _summary(_outcome("debian12", "error", build=False, reasons=(), error="no base image"), dry_run=True)

    assert notify.notify_run(_settings(None), failing, progress) is None
    assert notify.notify_run(_settings(topic_arn), failing, progress, dry_run=True) is None
    assert read_messages() == []
    assert f'would publish "golden-ami rebuild on aws: 1 error (dry run)" to {topic_arn}' in said.getvalue()


# --- the notify: settings --------------------------------------------------------------------------
def _user_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "golden-ami.yaml"
    path.write_text(text)
    return str(path)


def test_notify_settings_default_to_no_topic_and_every_event(state_dir):
    settings = config.resolve("debian12", "aws").settings.notify
    assert settings.sns_topic_arn is None and settings.on == ["approved", "failed", "rejected"]


def test_a_bare_on_key_in_yaml_is_understood(state_dir, tmp_path):
    # PyYAML reads `on:` as the boolean True; the setting must still be found, not refused
    path = _user_config(tmp_path, "notify:\n  sns_topic_arn: arn:aws:sns:eu-west-1:123456789012:builds\n"
                                  "  on: [failed]\n")
    settings = config.resolve("debian12", "aws", path).settings.notify
    assert settings.on == ["failed"]
    assert settings.sns_topic_arn == "arn:aws:sns:eu-west-1:123456789012:builds"


@pytest.mark.parametrize("text, key", [
    ("notify:\n  sns_topic_arn: arn:aws:sqs:eu-west-1:123456789012:q\n", "notify.sns_topic_arn"),
    ("notify:\n  sns_topic_arn: 'arn:aws:sns:eu-west-1:123456789012:t;reboot'\n", "notify.sns_topic_arn"),
    ("notify:\n  on: [succeeded]\n", "notify.on.0"),
    ("notify:\n  email: ops@example.com\n", "notify.email"),
])
def test_bad_notify_settings_are_refused_by_name(state_dir, tmp_path, text, key):
    with pytest.raises(UserError, match=rf"golden-ami.yaml: {key} "):
        config.resolve("debian12", "aws", _user_config(tmp_path, text))
