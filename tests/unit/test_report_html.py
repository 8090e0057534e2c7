"""report.html: the verify report as one self-contained page, from the same dict as report.json.

The report under test is a real one: the verify suite judges the recorded snapshot of the
unhardened debian12 base image (many failures, passes and not-applicable rows), then the
pipeline's own code adds a waiver and an exception; one failure message carries markup, as a
hostile host could send. The page is checked twice: parsed as written (escaping, every row,
the counts, no external asset, the Content-Security-Policy), and as headless Chromium renders
it after its script ran (counts, rows, the filter driven by the URL fragment, a screenshot).
"""
from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from golden_ami import report, verify_runner, waivers
from tests.conftest import required_tool
from tests.unit.offline_suite import FACTS, controls_document, judge

# What a hostile host could put into a failure message: markup that would run if it were
# not escaped, and an ampersand that must survive as text.
HOSTILE = ("<script>alert(1)</script> & <img src=x onerror=\"document.documentElement"
           ".setAttribute('data-injected','1')\"> <b>bold</b>")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> list[dict]:
    """The rows the verify suite writes for the recorded debian12 base image."""
    with pytest.MonkeyPatch.context() as env:
        # Config resolution needs a state dir; nothing is written there.
        env.setenv("GOLDEN_AMI_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        rows = judge(tmp_path_factory.mktemp("judge"), FACTS / "debian12-base.json", controls_document("debian12"))
    return list(rows.values())


@pytest.fixture
def realistic(judged, tmp_path) -> dict:
    """A whole report as verify_runner.run assembles it: a waiver applied by waivers.apply, a
    control switched off by exception (its row made by exception_rows), a hostile message and
    an outcome this page has no colour for (a newer suite's, say)."""
    rows = copy.deepcopy(judged)
    failing = sorted(r["id"] for r in rows if r["outcome"] == "fail")
    waived, disabled, hostile = failing[0], failing[1], failing[2]
    rows = [r for r in rows if r["id"] != disabled]  # a switched-off control is not in the suite's rows
    next(r for r in rows if r["id"] == hostile)["message"] = HOSTILE
    rows.append({"id": "GA-NEWER", "os_id": "", "title": "A check from a newer suite", "outcome": "error",
                 "message": "collector timed out", "checks": []})
    exceptions = [{"control": disabled, "kind": "disabled", "justification": "vendor agent needs it <until> Q3",
                   "expires": "2999-01-01", "approved_by": "security & ops"},
                  {"control": "4.2.16", "kind": "weakened", "justification": "six tries for the bastion",
                   "expires": "2999-01-01"}]
    rows += verify_runner.exception_rows(exceptions)
    waivers_file = tmp_path / "waivers.yaml"
    waivers_file.write_text(json.dumps([{"control": waived, "justification": "legacy <b>bastion</b> & co",
                                         "expires": "2999-01-31"}]))
    listing = waivers.apply(rows, waivers.load(waivers_file), "debian12", "local", dt.date(2026, 12, 1))
    return {"image_id": "li-0123456789abcdef0", "os": "debian12", "target": "local", "profile": "cis-level1-server",
            "fingerprint": "sha256:" + "ab" * 32, "build_id": "debian12-20261202T000000Z-abcdef",
            "started_at": "2026-12-02T00:00:00Z", "finished_at": "2026-12-02T00:02:00Z",
            "host_key": "pinned from the console: ssh-ed25519", "controls": rows, "exceptions": exceptions,
            "waivers": listing, "summary": report.summarise(rows)}


class Page(HTMLParser):
    """What a reader sees on the page: the summary bar's counts, the control rows (hidden or
    not, their cells as text), the waiver and exception tables, every element and attribute."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.counts: dict[str, int] = {}
        self.rows: list[dict] = []
        self.listings: dict[str, int] = {}
        self.texts: dict[str, list[str]] = {"script": [], "style": [], "shown": []}
        self._table = self._bar_outcome = self._text = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("id")
        elif tag == "tbody" and self._table in ("waivers", "exceptions"):
            self.listings[self._table] = 0
        elif tag == "tr" and self._table == "controls" and "data-outcome" in attributes:
            self.rows.append({"outcome": attributes["data-outcome"], "hidden": "hidden" in attributes, "cells": []})
        elif tag == "tr" and self._table in self.listings:
            self.listings[self._table] += 1
        elif tag == "td" and self._table == "controls" and self.rows:
            self._cell = []
        elif tag == "li" and "data-outcome" in attributes:
            self._bar_outcome = attributes["data-outcome"]
        elif tag == "span" and attributes.get("class") == "count" and self._bar_outcome:
            self._cell = []
        elif tag in ("script", "style") or attributes.get("id") == "shown":
            self._text = "shown" if attributes.get("id") == "shown" else tag
            self.texts[self._text].append("")

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._table == "controls":
            self.rows[-1]["cells"].append("".join(self._cell))
            self._cell = None
        elif tag == "span" and self._cell is not None and self._bar_outcome:
            self.counts[self._bar_outcome] = int("".join(self._cell))
            self._cell, self._bar_outcome = None, None
        elif tag == "table":
            self._table = None
        elif tag in ("script", "style", "span") and self._text:
            self._text = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._text:
            self.texts[self._text][-1] += data

    def visible(self) -> Counter:
        return Counter(row["outcome"] for row in self.rows if not row["hidden"])


def _digest(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


# ---- the page as written ---------------------------------------------------------------------

def test_host_text_is_escaped_never_markup(realistic):
    page = Page(report.html(realistic))
    hostile = next(r for r in page.rows if HOSTILE in r["cells"][4])
    assert hostile["cells"][4] == HOSTILE  # shown verbatim, as text, "&" and all
    # The only elements are the page's own: one script (its own), no img, no b.
    assert [tag for tag, _ in page.elements].count("script") == 1 and "alert" not in page.texts["script"][0]
    assert not {"img", "b"} & {tag for tag, _ in page.elements}
    html_text = report.html(realistic)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img" in html_text
    assert "legacy &lt;b&gt;bastion&lt;/b&gt; &amp; co" in html_text and "security &amp; ops" in html_text


def test_every_control_row_in_order_and_the_bar_counts_the_summary(realistic):
    page = Page(report.html(realistic))
    assert len(page.rows) == len(realistic["controls"])
    assert [row["cells"][1] for row in page.rows] == [r["id"] for r in report.ordered_rows(realistic)]
    assert [row["cells"][0] for row in page.rows] == [r.get("os_id") or "" for r in report.ordered_rows(realistic)]
    assert [row["cells"][4] for row in page.rows] == [report.row_detail(r) for r in report.ordered_rows(realistic)]
    assert Counter(row["outcome"] for row in page.rows) == Counter(realistic["summary"])
    # Every outcome of the summary, "error" included, and the known ones even at zero.
    assert {k: v for k, v in page.counts.items() if v} == realistic["summary"]
    assert set(page.counts) == set(realistic["summary"]) | {"pass", "fail", "finding", "waived", "disabled", "not-applicable"}
    assert {"fail", "pass", "not-applicable", "waived", "disabled", "error"} <= set(realistic["summary"])
    waived = next(row for row in page.rows if row["outcome"] == "waived")
    assert waived["cells"][4].startswith("waived until 2999-01-31: legacy <b>bastion</b> & co (failure: ")
    assert page.listings == {"waivers": 1, "exceptions": 2}
    assert not any(row["hidden"] for row in page.rows)  # without JS, every row shows


def test_markdown_shows_the_same_rows_in_the_same_order(realistic):
    lines = report.markdown(realistic).splitlines()
    table = lines[lines.index("| OS benchmark | control | title | outcome | detail |") + 2:]
    cells = [line.removeprefix("| ").split(" | ") for line in table[:len(realistic["controls"])]]
    assert [c[1] for c in cells] == [r["id"] for r in report.ordered_rows(realistic)]
    assert [c[0] for c in cells] == [r.get("os_id") or "" for r in report.ordered_rows(realistic)]
    assert "## Waivers" in lines and "## Exceptions" in lines


def test_no_external_asset_and_only_its_own_style_and_script_may_run(realistic):
    page = Page(report.html(realistic))
    for tag, attributes in page.elements:
        assert not {"src", "href", "srcset", "poster", "data", "action", "background"} & set(attributes), tag
    inline = page.texts["style"] + page.texts["script"]
    for text in inline + [json.dumps(page.elements)]:
        assert "http://" not in text and "https://" not in text and "url(" not in text and "@import" not in text
    [policy] = [a["content"] for tag, a in page.elements if a.get("http-equiv") == "Content-Security-Policy"]
    [style], [script] = page.texts["style"], page.texts["script"]
    assert policy == f"default-src 'none'; style-src '{_digest(style)}'; script-src '{_digest(script)}'"


def test_the_page_is_written_and_swapped_in_with_the_other_outputs(realistic, tmp_path):
    verify_dir, first, second = tmp_path / "verify", tmp_path / "run-1", tmp_path / "run-2"
    for directory in (verify_dir, first, second):
        directory.mkdir()
    verify_runner.write_reports(first, realistic)
    verify_runner._swap_in(first, verify_dir)
    assert (verify_dir / "report.html").read_text() == report.html(json.loads((verify_dir / "report.json").read_text()))
    assert (verify_dir / "report.md").read_text() == report.markdown(realistic)
    (second / "report.json").write_text("{}")  # a run that wrote no page leaves none of the last run's
    verify_runner._swap_in(second, verify_dir)
    assert not (verify_dir / "report.html").exists() and not (verify_dir / "report.md").exists()


# ---- the page as a browser shows it ----------------------------------------------------------

def _chromium(binary: str, work: Path, *args: str, timeout: float = 90) -> str:
    """Run headless Chromium once; its stdout. It runs in a process group of its own, and only
    that group is killed (on a timeout or Ctrl-C)."""
    profile = work / f"profile-{len(list(work.glob('profile-*')))}"
    profile.mkdir(parents=True)
    argv = [binary, "--headless", "--disable-gpu", f"--user-data-dir={profile}", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--hide-scrollbars",
            # No request leaves the machine: no name resolves, and anything that would go out
            # goes to a closed port on the loopback.
            "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9"]
    if os.geteuid() == 0:
        argv.append("--no-sandbox")  # only because CI runs the tests as root: Chromium's sandbox refuses root
    proc = subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "HOME": str(profile)})
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        if proc.returncode is None:  # not reaped yet: its group id is still ours
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err[-3000:]}"
    return out


def test_chromium_shows_the_counts_the_rows_and_filters_by_the_fragment(realistic, tmp_path):
    chromium = required_tool("chromium", "scripts/install.sh --with-tests")
    page_file = tmp_path / "verify" / "report.html"
    page_file.parent.mkdir()
    verify_runner.write_reports(page_file.parent, realistic)
    url, summary, total = page_file.as_uri(), realistic["summary"], len(realistic["controls"])

    shown = Page(_chromium(chromium, tmp_path, "--dump-dom", url))
    assert {k: v for k, v in shown.counts.items() if v} == summary
    assert shown.visible() == Counter(summary)  # no fragment: every row
    assert shown.texts["shown"] == [f"{total} of {total} controls shown"]  # (the script ran)
    hostile = [row for row in shown.rows if row["cells"][4] == HOSTILE]
    assert len(hostile) == 1
    assert not {"img", "b"} & {tag for tag, _ in shown.elements}
    assert "data-injected" not in dict(shown.elements)["html"]

    failing = Page(_chromium(chromium, tmp_path, "--dump-dom", url + "#fail"))
    assert failing.visible() == Counter({"fail": summary["fail"]})
    assert len(failing.rows) == total and failing.texts["shown"] == [f"{summary['fail']} of {total} controls shown"]
    several = Page(_chromium(chromium, tmp_path, "--dump-dom", url + "#waived,error,disabled"))
    assert several.visible() == Counter({k: summary[k] for k in ("waived", "error", "disabled")})

    screenshot = tmp_path / "report.png"
    _chromium(chromium, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,1600", url + "#fail")
    data = screenshot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
