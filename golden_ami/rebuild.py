"""Scheduled rebuilds: build an OS only when something changed, and say why either way.

For each OS the decision reads the newest approved image's tags and compares:
  * the source image the target resolves today        vs its SourceImage tag;
  * the fingerprint of today's render (templates, scripts, catalogue, config, source)
                                                       vs its Fingerprint tag;
  * its age                                            vs rebuild.max_age_days;
  * optionally, security updates pending on a fresh instance of it (rebuild.probe_updates).
A decision needs no build tool and launches nothing unless the updates probe is on; a no-op
run launches nothing at all. The builds themselves run as separate `invoke build` processes,
up to --jobs at a time, each independent of the others; Ctrl-C or SIGTERM stops them all,
and each tears down what it started.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from . import attest, notify, paths, provenance, render
from .catalogue import controls_for, require_site_params
from .config import Resolved
from .errors import UserError
from .layout import StateDir
from .procs import stop_process
from .progress import Progress
from .targets import get_target
from .targets.base import Image, Target


def pending_updates_probe(cfg: Resolved, target: Target, image: Image) -> list[str]:
    """Security updates an approved image lacks today (a fresh instance of it answers)."""
    from .verify_runner import probe  # deferred: paramiko and the verify suite, only when probing

    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="probe-", dir=cfg.state_dir))
    try:
        rows = probe(cfg, target, image, ["1.8"], work, Progress(quiet=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = [row for row in rows if row["id"] == "1.8" and row["outcome"] == "fail"]
    return [failed[0]["message"]] if failed else []


@dataclass
class RebuildDecision:
    os: str
    build: bool
    reasons: list[str]
    current_image: Optional[str] = None
    error: str = ""


@dataclass
class RebuildOutcome:
    os: str
    decision: RebuildDecision
    status: str = "skipped"  # skipped | approved | rejected | failed | error
    image_id: Optional[str] = None
    build_id: Optional[str] = None
    failed_controls: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""

    def as_dict(self) -> dict:
        data = asdict(self)
        data["decision"] = asdict(self.decision)
        return data


def _created_at(image: Image) -> Optional[dt.datetime]:
    try:
        return dt.datetime.strptime(image.tags.get("CreatedAt", ""), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def decide(cfg: Resolved, target: Target, now: Optional[dt.datetime] = None,
           probe=None) -> RebuildDecision:
    """Whether cfg's OS needs a build, with every reason (never raises for a per-OS problem)."""
    name = cfg.os.name
    try:
        require_site_params(controls_for(cfg))  # a build would refuse to start: say so at once
        source = target.resolve_source(cfg)  # a source that cannot be resolved is an error
        approved, _ = attest.approved_images(target, name)  # a forged approval does not stop a rebuild
        if not approved:
            return RebuildDecision(name, True, [f"no approved image yet (source {source.id})"])
        current = approved[-1]
        reasons: list[str] = []
        was = current.tags.get(provenance.SOURCE_IMAGE) or "?"
        if source.id != was:
            # The fingerprint covers the source image, so it moved too: a content comparison
            # would only repeat this reason (and the new build takes today's content anyway).
            reasons.append(f"new source image: {source.id} ({source.name}), was {was}")
        else:
            with tempfile.TemporaryDirectory(prefix="golden-ami-rebuild-") as tmp:
                fingerprint = render.render(cfg, source, Path(tmp) / "render").fingerprint
            if fingerprint != current.tags.get("Fingerprint"):
                reasons.append(f"content changed: fingerprint {fingerprint[:19]}…, image has "
                               f"{current.tags.get('Fingerprint', '?')[:19]}…")
        created = _created_at(current)
        max_age = cfg.settings.rebuild.max_age_days
        now = now or dt.datetime.now(dt.timezone.utc)
        if created is None:
            reasons.append("image age unknown (no CreatedAt tag)")
        elif now - created > dt.timedelta(days=max_age):
            reasons.append(f"older than {max_age} days (created {created:%Y-%m-%d})")
        if probe is not None and not reasons:
            pending = probe(cfg, target, current)
            if pending:
                reasons.append(f"pending security updates on {current.id}: {', '.join(pending[:10])}")
        if reasons:
            return RebuildDecision(name, True, reasons, current.id)
        found = f"nothing to do: source image, content and age unchanged for {current.id}"
        return RebuildDecision(name, False, [found + ("; no pending security updates" if probe else "")], current.id)
    except UserError as exc:
        return RebuildDecision(name, False, [], error=str(exc))


def _invoke_build(os_name: str, cfg: Resolved, config_file: Optional[str], progress: Progress,
                  stop: threading.Event, children: list) -> RebuildOutcome:
    """One `invoke build` in its own process; its JSON result becomes the outcome."""
    invoke = str(Path(sys.executable).with_name("invoke"))
    argv = [invoke, "--search-root", str(paths.PROJECT_ROOT), "build", f"--os={os_name}", f"--target={cfg.target}",
            f"--profile={cfg.profile}", "--json"]
    if config_file:
        argv.append(f"--config={config_file}")
    log = StateDir(cfg.state_dir).runs / f"build-{os_name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    progress.say(f"{os_name}: building (log: {log})")
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=dict(os.environ))
        children.append(proc)
        out, _ = proc.communicate()
    seconds = round(time.monotonic() - started, 1)
    if stop.is_set():
        return RebuildOutcome(os_name, RebuildDecision(os_name, True, []), "failed", seconds=seconds, detail="interrupted")
    try:
        result = json.loads(out.decode())
    except ValueError:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return RebuildOutcome(os_name, RebuildDecision(os_name, True, []), "failed", seconds=seconds, detail=tail[0][:300])
    return RebuildOutcome(os_name, RebuildDecision(os_name, True, []), result.get("status", "failed"), result.get("image_id"),
                   result.get("build_id"), result.get("failed_controls", []), seconds, result.get("decision") or "")


def run(configs: list[Resolved], config_file: Optional[str], dry_run: bool, jobs: int, progress: Progress,
        probe=None) -> list[RebuildOutcome]:
    """Decide for every OS, then build those that need it (unless dry_run), jobs at a time."""
    outcomes: dict[str, RebuildOutcome] = {}
    for cfg in configs:
        target = get_target(cfg.target, cfg.settings, cfg.state_dir)
        decision = decide(cfg, target, probe=probe)
        why = decision.error or "; ".join(decision.reasons)
        progress.say(f"{cfg.os.name}: {'build' if decision.build else 'error' if decision.error else 'skip'} - {why}")
        status = "error" if decision.error else "planned" if decision.build else "skipped"
        outcomes[cfg.os.name] = RebuildOutcome(cfg.os.name, decision, status, detail=decision.error)
    wanted = [cfg for cfg in configs if outcomes[cfg.os.name].decision.build]
    if dry_run or not wanted:
        return [outcomes[cfg.os.name] for cfg in configs]

    stop = threading.Event()
    children: list[subprocess.Popen] = []
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="rebuild")
    try:
        futures = {cfg.os.name: pool.submit(_invoke_build, cfg.os.name, cfg, config_file, progress, stop, children)
                   for cfg in wanted}
        for name, future in futures.items():
            built = future.result()
            built.decision = outcomes[name].decision
            outcomes[name] = built
            progress.say(f"{name}: {built.status} {built.image_id or ''} {built.detail}".rstrip())
    except BaseException:
        stop.set()
        # Each `invoke build` turns SIGTERM into its own clean teardown. A further interrupt
        # only hurries the rest along: every child is still stopped before we leave.
        for proc in children:
            if proc.poll() is None:
                try:
                    stop_process(proc, polite=signal.SIGTERM, grace_seconds=300)
                except KeyboardInterrupt:
                    continue
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [outcomes[cfg.os.name] for cfg in configs]


@dataclass
class RunReport:
    run_id: str
    outcomes: list[RebuildOutcome]
    summary: notify.RunSummary
    json_path: Path
    markdown_path: Path


def run_and_report(settings_cfg: Resolved, configs: list[Resolved], config_file: Optional[str], *, dry_run: bool,
                   jobs: int, progress: Progress, probe=None, summary_dir: Optional[Path] = None) -> RunReport:
    """One scheduled run: decide and build (run), then write the JSON and Markdown summaries
    (default: <state dir>/runs/<run id>/) and send them where notify: says. settings_cfg: the
    settings every OS shares (state dir, notify:)."""
    run_id, started = notify.new_run_id(), notify.utc_now()
    where = summary_dir or notify.default_summary_dir(settings_cfg.state_dir, run_id)
    if where.exists() and not where.is_dir():  # found before any build, not after all of them
        raise UserError(f"--summary-dir {where} is a file, not a directory")
    outcomes = run(configs, config_file, dry_run, jobs, progress, probe)
    summary = notify.RunSummary.from_outcomes(outcomes, run_id=run_id, target=settings_cfg.target,
                                              started_at=started, dry_run=dry_run)
    json_path, md_path = notify.write_summaries(summary, where)
    progress.say(f"summary: {md_path}")
    notify.notify_run(settings_cfg.settings.notify, summary, progress, dry_run=dry_run,
                      full_summary_at=notify.full_summary_location(md_path, summary.origin))
    return RunReport(run_id, outcomes, summary, json_path, md_path)
