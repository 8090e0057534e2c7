"""Verify: boot a fresh instance of the candidate, pin its host key, run verify/ over SSH.

Order matters and is fail-closed:
  1. a new throw-away key pair and a fresh instance (the candidate itself stays untouched);
  2. wait for the host-key block on the instance's console and pin those keys;
  3. connect once with RejectPolicy: a different key stops everything before any check;
  4. run the testinfra suite (JUnit XML + per-control JSON report into <build>/verify/);
  5. tear the instance down - on success, failure and Ctrl-C alike.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from . import benchmarks, hostkeys, paths, sshkeys, waivers
from . import report as readable  # (run() calls its report dict `report`)
from .catalogue import controls_for
from .config import Resolved
from .files import write_atomic
from .errors import UserError, VerificationError
from .procs import run_streaming
from .progress import Progress
from .layout import (CONTROLS_FILE, FACTS_FILE, HTML_FILE, JUNIT_FILE, KNOWN_HOSTS_FILE, MARKDOWN_FILE, REPORT_FILE,
                     SBOM_FILE, BuildDir)
from .targets.base import Image, Target



# The verify run seals what it wrote: these tags on the image hold the files' digests, and the
# approval gate judges a report only while it still hashes to its seal.
SEAL_TAGS = {"ReportDigest": REPORT_FILE, "FactsDigest": FACTS_FILE, "JunitDigest": JUNIT_FILE, "SbomDigest": SBOM_FILE}


def report_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def seal(target: Target, image: Image, verify_dir: Path) -> Image:
    """Record the digests of the files this verify run wrote in the image's tags (a file it did
    not write - facts.json of a run that never reached the instance - removes its tag)."""
    return target.set_tags(image.id, {tag: report_digest(verify_dir / name) if (verify_dir / name).is_file() else None
                                      for tag, name in SEAL_TAGS.items()})


def _unsealed(image: Image, verify_dir: Path, tag: str) -> Optional[str]:
    """Why the file behind a seal tag is not the one the verify run sealed; None when it is (or
    the tag is absent: the run wrote no such file)."""
    name, sealed = SEAL_TAGS[tag], image.tags.get(tag)
    path = verify_dir / name
    if sealed and (not path.is_file() or report_digest(path) != sealed):
        return f"{name} is not the file the verify run sealed (its digest differs from the {tag} tag)"
    return None


def sealed_text(image: Image, verify_dir: Path, tag: str) -> str:
    """A file of the verify run, read only while it still hashes to its seal."""
    name = SEAL_TAGS[tag]
    if not image.tags.get(tag):
        raise UserError(f"{image.id} has no {tag} tag: no verify run of this version sealed a {name} (invoke verify)")
    problem = _unsealed(image, verify_dir, tag)
    if problem:
        raise UserError(f"{image.id}: {problem} (in {verify_dir})")
    return (verify_dir / name).read_text(encoding="utf-8")


def seal_problems(image: Image, verify_dir: Path) -> list[str]:
    """Why the files in verify_dir are not the ones the verify run sealed; [] when they are."""
    if not image.tags.get("ReportDigest"):
        return ["the report was never sealed by a verify run (the image has no ReportDigest tag)"]
    return [problem for problem in (_unsealed(image, verify_dir, tag) for tag in SEAL_TAGS) if problem]


def run(cfg: Resolved, target: Target, image: Image, build_dir: Path, build_id: str, progress: Progress) -> dict[str, Any]:
    """Verify image; return the report (also written to <build_dir>/verify/report.json)."""
    verify_dir = BuildDir(build_dir).verify
    verify_dir.mkdir(parents=True, exist_ok=True)
    # This run writes into a directory of its own (its key too, so a killed run's leftovers are
    # in nobody's way); its files replace the last run's only once it has a whole report, so a
    # run that dies leaves the last run's files and seal as they were.
    run_dir = Path(tempfile.mkdtemp(prefix=".run-", dir=verify_dir))
    key = sshkeys.generate(run_dir / "key", "id_ed25519", f"golden-ami-verify-{build_id}")
    try:
        with target.boot_test_instance(cfg, image, key, verify_dir / "instance", progress) as instance:
            boot_timeout = float(instance.boot_timeout_seconds)
            known_hosts = run_dir / KNOWN_HOSTS_FILE
            pinned = _pin_host_keys(cfg, instance, known_hosts, boot_timeout, progress)
            client = hostkeys.connect_pinned(
                instance.ssh_host, instance.ssh_port, instance.login_user, key.private_key_path, known_hosts,
                timeout_seconds=boot_timeout,
            )
            client.close()
            progress.say("SSH host key matches the pin; running the verify suite")
            _run_suite(cfg, image, BuildDir(build_dir).controls, run_dir, build_id, instance, known_hosts, progress,
                       log_path=verify_dir / "pytest.log")
            report = json.loads((run_dir / REPORT_FILE).read_text())
            report["controls"].extend(target.outside_checks(cfg, image, instance))
            exceptions = build_exceptions(BuildDir(build_dir).controls)
            report["controls"].extend(exception_rows(exceptions))
            report["exceptions"] = exceptions
            report["host_key"] = pinned
            report["benchmark"] = benchmarks.load(cfg.os.name).title  # what its os_id numbers refer to
            report["waivers"] = waivers.apply(report["controls"], waivers.load(cfg.waivers_file), cfg.os.name,
                                              cfg.target)
            report["summary"] = readable.summarise(report["controls"])
            write_reports(run_dir, report)
            key.private_key_path.unlink()  # the private key dies with the instance
            _swap_in(run_dir, verify_dir)
            seal(target, image, verify_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return report


def build_exceptions(controls_file: Path) -> list[dict[str, Any]]:
    """The build's exceptions (controls switched off or weakened by the config), as render wrote them."""
    try:
        document = json.loads(controls_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # (the gate refuses an unreadable controls.json by itself)
    found = document.get("exceptions", []) if isinstance(document, dict) else []
    return found if isinstance(found, list) else []


def exception_rows(exceptions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per control the config switched off by exception: it is in the report as
    "disabled", with why and until when, instead of vanishing from it."""
    return [{"id": e["control"], "outcome": "disabled", "exception": e,
             "message": f"switched off by exception until {e['expires']}: {e['justification']}"}
            for e in exceptions if e.get("kind") == "disabled"]


# What a verify run leaves in verify/, replaced as a set (the report last: it names the run).
RUN_OUTPUTS = (MARKDOWN_FILE, HTML_FILE, JUNIT_FILE, FACTS_FILE, SBOM_FILE, KNOWN_HOSTS_FILE, REPORT_FILE)


def _swap_in(run_dir: Path, verify_dir: Path) -> None:
    """Move this run's files over the last run's; a file this run did not write (facts.json of
    a run that never reached the instance) is removed, so no older file passes for this run's."""
    for name in RUN_OUTPUTS:
        if (run_dir / name).is_file():
            os.replace(run_dir / name, verify_dir / name)
        else:
            (verify_dir / name).unlink(missing_ok=True)


def _pin_host_keys(cfg: Resolved, instance, known_hosts: Path, timeout: float, progress: Progress) -> str:
    """Pin the keys the console announces; returns how the host key was established."""
    progress.say(f"waiting for the host-key block on {instance.instance_id}'s console")
    try:
        keys = hostkeys.wait_for_console_host_keys(instance.console_text, timeout, on_wait=lambda waited: progress.touch())
    except VerificationError:
        if not cfg.settings.verify.accept_unpinned_host_key:
            raise
        # The explicit opt-out (verify.accept_unpinned_host_key) for accounts without console
        # output: trust the first key seen, say so loudly, and write it into the report.
        progress.say("WARNING: no host keys on the console; verify.accept_unpinned_host_key is set, so the first "
                     "key the instance presents is trusted (trust on first use)")
        keys = [hostkeys.first_seen_host_key(instance.ssh_host, instance.ssh_port, timeout)]
        hostkeys.write_known_hosts(known_hosts, instance.ssh_host, instance.ssh_port, keys)
        return "trusted on first use (verify.accept_unpinned_host_key)"
    hostkeys.write_known_hosts(known_hosts, instance.ssh_host, instance.ssh_port, keys)
    progress.say(f"pinned {len(keys)} host key(s) from the console: {', '.join(k for k, _ in keys)}")
    return "pinned from the console: " + ", ".join(k for k, _ in keys)


def suite_argv(*, controls_file: Path, report: Path, image_id: str, fingerprint: str, host: str = "", port: int = 22,
               user: str = "", identity: Optional[Path] = None, known_hosts: Optional[Path] = None,
               facts: Optional[Path] = None, build_id: str = "", instance_id: str = "", login_public_key: str = "",
               junit: Optional[Path] = None, verbose: bool = True, mode: str = "verify") -> list[str]:
    """The command line of the verify suite: live (host, user, identity, known_hosts) or offline
    (facts: a saved snapshot to judge). mode "audit": a running instance the pipeline did not
    boot (invoke audit): the suite changes nothing on it and judges lived-in state as such."""
    argv = [sys.executable, "-m", "pytest", str(paths.VERIFY_DIR), "-c", str(paths.VERIFY_DIR / "pytest.ini"),
            "--rootdir", str(paths.VERIFY_DIR), "-v" if verbose else "-q", "--tb=line",
            f"--ga-controls={controls_file}", f"--ga-report={report}", f"--ga-image-id={image_id}",
            f"--ga-fingerprint={fingerprint}", f"--ga-build-id={build_id}", f"--ga-mode={mode}"]
    if junit is not None:
        argv += ["-o", "junit_family=xunit2", f"--junitxml={junit}"]
    if facts is not None:
        return argv + [f"--ga-facts={facts}"]
    return argv + [f"--ga-host={host}", f"--ga-port={port}", f"--ga-user={user}", f"--ga-identity={identity}",
                   f"--ga-known-hosts={known_hosts}", f"--ga-instance-id={instance_id}",
                   f"--ga-login-public-key={login_public_key}"]


def _run_suite(cfg: Resolved, image: Image, controls_file: Path, verify_dir: Path, build_id: str, instance,
               known_hosts: Path, progress: Progress, log_path: Optional[Path] = None) -> None:
    log_path = log_path or verify_dir / "pytest.log"
    argv = suite_argv(controls_file=controls_file, report=verify_dir / REPORT_FILE, image_id=image.id,
                      fingerprint=image.tags.get("Fingerprint", ""), host=instance.ssh_host, port=instance.ssh_port,
                      user=instance.login_user, identity=instance.key.private_key_path, known_hosts=known_hosts,
                      build_id=build_id, instance_id=instance.instance_id, login_public_key=instance.key.public_key,
                      junit=verify_dir / JUNIT_FILE)
    run_suite(argv, verify_dir / REPORT_FILE, log_path, cfg.settings.verify.timeout_minutes * 60, progress)


def run_suite(argv: list[str], report: Path, log_path: Path, timeout_seconds: float, progress: Progress) -> None:
    """Run the suite's command line (suite_argv), its lines as progress; raise when it wrote no report."""

    def on_line(line: str) -> None:
        # "verify/test_ssh.py::test_root_login_disabled PASSED [ 40%]" -> a progress line
        if line.startswith("facts: "):
            progress.detail(line.strip())
        elif "::" in line and any(word in line for word in (" PASSED", " FAILED", " ERROR", " SKIPPED")):
            progress.detail(" ".join(line.split("::", 1)[1].split()))
        elif " passed" in line or " failed" in line:
            progress.detail(line.strip("= "))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # one line per check as it finishes
    status = run_streaming(argv, cwd=paths.PROJECT_ROOT, env=env, log_path=log_path, progress=progress,
                           on_line=on_line, timeout_seconds=timeout_seconds, interrupt_grace_seconds=10)
    if not report.is_file():
        raise VerificationError(f"the verify suite wrote no report (pytest exit {status}): see {log_path}")


def write_reports(directory: Path, report: dict[str, Any]) -> None:
    """report.json and its two readable views, from the one report dict: whoever writes the
    report writes all three, so the views never lag behind the JSON."""
    write_atomic(directory / MARKDOWN_FILE, readable.markdown(report))
    write_atomic(directory / HTML_FILE, readable.html(report))
    write_atomic(directory / REPORT_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")


def probe(cfg: Resolved, target: Target, image: Image, control_ids: list[str], work_dir: Path,
          progress: Progress) -> list[dict[str, Any]]:
    """Check a few controls (as the catalogue has them today) on a fresh instance of image.

    Used by rebuild to ask an approved image for pending security updates (control 1.8)
    without a build directory; the same pinning and teardown as a full verification.
    """
    chosen = controls_for(cfg).as_dict()
    chosen["controls"] = [c for c in chosen["controls"] if c["id"] in control_ids]
    work_dir.mkdir(parents=True, exist_ok=True)
    controls_file = work_dir / CONTROLS_FILE
    controls_file.write_text(json.dumps(chosen))
    key_dir = Path(tempfile.mkdtemp(prefix=".key-", dir=work_dir))  # its own: a killed probe's key is in no one's way
    key = sshkeys.generate(key_dir, "id_ed25519", "golden-ami-probe")
    try:
        with target.boot_test_instance(cfg, image, key, work_dir / "instance", progress) as instance:
            known_hosts = work_dir / KNOWN_HOSTS_FILE
            _pin_host_keys(cfg, instance, known_hosts, float(instance.boot_timeout_seconds), progress)
            hostkeys.connect_pinned(instance.ssh_host, instance.ssh_port, instance.login_user, key.private_key_path,
                                    known_hosts, timeout_seconds=float(instance.boot_timeout_seconds)).close()
            _run_suite(cfg, image, controls_file, work_dir, "probe", instance, known_hosts, progress)
            return json.loads((work_dir / REPORT_FILE).read_text())["controls"]
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)
