"""invoke audit: the verify suite against a running instance the pipeline did not boot.

Verification judges a fresh instance of a candidate; an audit judges an instance that has been
living on its own (an application's server), by the same checks over the same pinned SSH:

  1. the arguments are checked before anything connects (usage errors exit 2);
  2. the host key is pinned: from the caller's known_hosts file (only that host's entries are
     kept), from the instance's console (aws, like verify), or - only with the loud
     --trust-first-use opt-out - from whatever the host presents first (said in the report);
  3. the image the instance was launched from: aws describe_instances, else --image-id, else
     the instance's cloud-init data (an EC2 ami-id), else unknown;
  4. the controls: the controls.json of the build that made that image when this state dir has
     it (its BuildId tag), else the current catalogue for --os;
  5. the suite runs with --ga-mode=audit: nothing on the host is changed (the pending-updates
     question uses throw-away package lists) and the checks about the pristine image judge
     what still holds on a lived-in host (AUDIT_JUDGED);
  6. the report files are written into a temporary directory beside --out and renamed into
     place at the end: the output directory is complete or absent.

The caller's private key is read by the SSH client only; it is never copied or logged.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import paramiko

from . import config as gconfig
from . import hostkeys, verify_runner
from .targets import get_target, target_class
from .errors import HostKeyMismatch, UsageError, UserError, VerificationError
from .files import write_atomic
from .progress import Progress
from .layout import CONTROLS_FILE, HTML_FILE, JUNIT_FILE, KNOWN_HOSTS_FILE, MARKDOWN_FILE, REPORT_FILE, StateDir
from .report import html, markdown, summarise

SSH_TIMEOUT_SECONDS = 60.0  # a running host answers at once; this is not a boot
CONSOLE_TIMEOUT_SECONDS = 30.0

# Checks that are about the pristine image and judge something else in audit mode
# (verify/test_hygiene.py, `_audit`): each row of these says what it judged.
AUDIT_JUDGED = {
    "GA-HYG-AUTHKEYS": "audit: authorized_keys files and their .ssh directories must be owned by the home's owner "
                       "(or root) and not writable by group or others; which keys they hold is not compared",
    "GA-HYG-CLOUDINIT": "audit: cloud-init must hold this instance's state (when its id is known); state of "
                        "earlier instances is not counted against it",
    "GA-HYG-HOSTKEYS": "audit: the host's keys must include the pinned one; their age against this boot is not "
                       "compared (a running host reboots)",
    "GA-HYG-MACHINEID": "audit: /etc/machine-id must be a machine id; its age against this boot is not compared",
}

# Names that become a directory name under <state>/audits (the host or instance id, sanitised).
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class AuditRequest:
    """The command line of `invoke audit`, as given."""

    host: str = ""
    port: int = 22
    user: str = ""
    identity: str = ""
    known_hosts: str = ""
    trust_first_use: bool = False
    instance_id: str = ""
    target: str = "local"
    os_name: str = ""
    image_id: str = ""
    out: str = ""
    config_file: Optional[str] = None


@dataclass
class Connection:
    """Where the suite connects, with the host key pinned in run_dir's own known_hosts."""

    host: str
    port: int
    known_hosts: Path
    host_key: str  # how the key was established (into the report)
    instance_id: str = ""
    image_id: str = ""  # what the platform says the instance was launched from (aws)
    details: dict[str, Any] = field(default_factory=dict)


def validate(req: AuditRequest) -> None:
    """Every usage error, before anything connects or is written."""
    if bool(req.host) == bool(req.instance_id):
        raise UsageError("give either --host (an SSH address) or --instance-id with --target=aws, not "
                         + ("both" if req.host else "neither"))
    if req.instance_id and not target_class(req.target).finds_instances_by_id:
        raise UsageError(f"--instance-id needs --target=aws (got --target={req.target})")
    if not req.user:
        raise UsageError("--user is required: the login user of the instance (it needs passwordless sudo)")
    if not req.identity:
        raise UsageError("--identity is required: the private key file of --user")
    if not Path(req.identity).is_file():
        raise UsageError(f"--identity {req.identity}: no such file")
    if not 0 < req.port < 65536:
        raise UsageError(f"--port {req.port}: not a TCP port")
    if req.known_hosts and req.trust_first_use:
        raise UsageError("--known-hosts pins the host key, --trust-first-use trusts whatever key is presented: "
                         "give one of them")
    if req.host and not req.known_hosts and not req.trust_first_use:
        raise UsageError("--known-hosts FILE is required to pin the host key of --host (a known_hosts line for "
                         f"{hostkeys.host_key_entry(req.host, req.port)}; ssh-keyscan output checked out of band "
                         "will do); --trust-first-use skips pinning and says so in the report")
    if req.known_hosts and not Path(req.known_hosts).is_file():
        raise UsageError(f"--known-hosts {req.known_hosts}: no such file")
    if req.out and Path(req.out).exists():
        raise UsageError(f"--out {req.out} exists already: an audit writes a new directory")
    if req.out and not Path(req.out).resolve().parent.is_dir():
        raise UsageError(f"--out {req.out}: its parent directory does not exist")
    if req.host and req.known_hosts:
        pinned_keys(Path(req.known_hosts), req.host, req.port)  # a file without this host: said before anything


def pinned_keys(known_hosts: Path, host: str, port: int) -> list[tuple[str, str]]:
    """(type, base64) of the keys known_hosts holds for host:port (hashed entries too); a usage
    error when it holds none, before anything connects."""
    entry = hostkeys.host_key_entry(host, port)
    try:
        known = paramiko.HostKeys(str(known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise UsageError(f"--known-hosts {known_hosts}: unreadable ({exc})") from None
    keys = known.lookup(entry)
    if not keys:
        raise UsageError(f"--known-hosts {known_hosts} has no key for {entry}: add that host's line (checked out of "
                         "band), or give --trust-first-use to skip pinning")
    return [(kind, keys[kind].get_base64()) for kind in keys.keys()]


def _connect_ssh(req: AuditRequest, run_dir: Path, progress: Progress) -> Connection:
    known_hosts = run_dir / KNOWN_HOSTS_FILE
    if req.trust_first_use:
        progress.say("WARNING: --trust-first-use: the host key is NOT pinned; the first key "
                     f"{req.host}:{req.port} presents is trusted (an interceptor would be audited instead)")
        kind, blob = hostkeys.first_seen_host_key(req.host, req.port, SSH_TIMEOUT_SECONDS)
        hostkeys.write_known_hosts(known_hosts, req.host, req.port, [(kind, blob)])
        how = f"trusted on first use (--trust-first-use): {kind} {_fingerprint(blob)}"
    else:
        keys = pinned_keys(Path(req.known_hosts), req.host, req.port)
        hostkeys.write_known_hosts(known_hosts, req.host, req.port, keys)
        how = f"pinned from {req.known_hosts}: " + ", ".join(kind for kind, _ in keys)
    return Connection(req.host, req.port, known_hosts, how)


def _fingerprint(blob: str) -> str:
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")


def _connect_instance(req: AuditRequest, cfg: gconfig.Resolved, run_dir: Path, progress: Progress) -> Connection:
    """The instance's address and image from its target; its host key from its console (or the
    caller's known_hosts, or - loudly - the first key seen)."""
    found = get_target(req.target, cfg.settings, cfg.state_dir).find_instance(cfg, req.instance_id)
    address, image_id, details = found.address, found.image_id, found.details
    port = req.port if req.port != 22 else found.port
    if req.known_hosts or req.trust_first_use:
        connection = _connect_ssh(dataclasses.replace(req, host=address, port=port), run_dir, progress)
    else:
        console_text = found.console_text
        progress.say(f"reading {req.instance_id}'s console for its host-key block")
        try:
            keys = hostkeys.wait_for_console_host_keys(console_text, CONSOLE_TIMEOUT_SECONDS, poll_seconds=3)
        except VerificationError:
            raise UserError(f"{req.instance_id}'s console holds no SSH host key block (an instance running for a "
                            "long time may have scrolled it away): give --known-hosts with its key checked out of "
                            "band, or --trust-first-use") from None
        known_hosts = run_dir / KNOWN_HOSTS_FILE
        hostkeys.write_known_hosts(known_hosts, address, port, keys)
        connection = Connection(address, port, known_hosts,
                                "pinned from the console: " + ", ".join(kind for kind, _ in keys))
    connection.instance_id, connection.image_id, connection.details = req.instance_id, image_id, details
    return connection


def _image_id_on_host(client: paramiko.SSHClient) -> str:
    """The image id the instance's own cloud-init data names (EC2's ami-id); "" when none.
    (instance-data.json is world-readable: no sudo, nothing written.)"""
    _, stdout, _ = client.exec_command("cat /run/cloud-init/instance-data.json", timeout=30)
    try:
        data = json.loads(stdout.read(4 * 1024 * 1024) or b"{}")
    except ValueError:
        return ""
    meta = data.get("ds", {}).get("meta_data", {}) if isinstance(data, dict) else {}
    if not isinstance(meta, dict):
        return ""
    value = meta.get("ami-id") or meta.get("ami_id") or ""
    return value if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9-]{1,64}", value) else ""


def _image_of(req: AuditRequest, connection: Connection, client: paramiko.SSHClient) -> tuple[str, str]:
    """(image id, where it came from)."""
    if connection.image_id:
        if req.image_id and req.image_id != connection.image_id:
            raise UsageError(f"--image-id {req.image_id}, but EC2 says {req.instance_id} was launched from "
                             f"{connection.image_id}")
        return connection.image_id, "describe_instances"
    if req.image_id:
        return req.image_id, "--image-id"
    found = _image_id_on_host(client)
    if found:
        return found, "cloud-init instance data (ami-id)"
    return "", "no --image-id, and the instance's cloud-init data names none"


def _controls(req: AuditRequest, settings: gconfig.Resolved, image_id: str,
              run_dir: Path) -> tuple[Path, str, gconfig.Resolved, dict[str, str]]:
    """(controls.json, which controls, the config resolved for the image's OS, the image's tags)."""
    tags: dict[str, str] = {}
    if image_id:
        registry = "aws" if image_id.startswith("ami-") else "local"
        try:
            tags = get_target(registry, settings.settings, settings.state_dir).get_image(image_id).tags
        except UserError:
            tags = {}  # not in this state dir / account: the current catalogue then
    os_name = req.os_name or tags.get("OS", "")
    build_id = tags.get("BuildId", "")
    build_file = StateDir(settings.state_dir).build(build_id).controls
    path = run_dir / CONTROLS_FILE  # a copy beside the report: what this audit judged against
    if build_id and "/" not in build_id and build_file.is_file():
        shutil.copyfile(build_file, path)
        document = json.loads(path.read_text(encoding="utf-8"))
        cfg = gconfig.resolve(document["os"], document["target"], req.config_file)
        return path, f"from build {build_id}", cfg, tags
    if not os_name:
        raise UsageError("--os is required: the instance's image has no build in this state dir to take the "
                         f"controls from ({image_id or 'image unknown'}), so the current catalogue is used for --os "
                         f"(one of {', '.join(gconfig.available_os())})")
    from .catalogue import controls_for

    cfg = gconfig.resolve(os_name, req.target, req.config_file, overrides=_profile(tags))
    path.write_text(json.dumps(controls_for(cfg).as_dict()), encoding="utf-8")
    return path, "current catalogue", cfg, tags


def _profile(tags: dict[str, str]) -> Optional[dict[str, Any]]:
    return {"profile": tags["Profile"]} if tags.get("Profile") else None


def default_out(state_dir: Path, name: str, now: Optional[datetime] = None) -> Path:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return StateDir(state_dir).audits / f"{_UNSAFE.sub('_', name).strip('._') or 'host'}-{stamp}"


def write_report_files(directory: Path, report: dict[str, Any]) -> None:
    """The report files of an audit: JSON, Markdown with the audit's header, the HTML page
    (JUnit is written by the suite beside them)."""
    write_atomic(directory / REPORT_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_atomic(directory / MARKDOWN_FILE, audit_markdown(report))
    write_atomic(directory / HTML_FILE, html(report))


def audit_markdown(report: dict[str, Any]) -> str:
    audit = report["audit"]
    head = [
        f"# Audit of {audit['host']}:{audit['port']}" + (f" ({audit['instance_id']})" if audit["instance_id"] else ""),
        "",
        f"- launched from image: {report.get('image_id') or 'unknown'} ({audit['image_id_source']})",
        f"- controls: {audit['controls']}",
        f"- host key: {report.get('host_key')}",
        f"- audited as {audit['user']} on {report.get('started_at', '')}",
        "",
    ]
    body = markdown(report).splitlines(keepends=True)
    if body and body[0].startswith("# "):  # verify's title: this is an audit, not a verification
        body[0] = "## Controls\n"
    return "\n".join(head) + "".join(body)


def summary_of(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """What `--json` prints: enough for a script to act on; the rows are in the report files."""
    rows = report["controls"]
    return {
        "out": str(out),
        "image_id": report.get("image_id", ""),
        "image_id_source": report["audit"]["image_id_source"],
        "controls": report["audit"]["controls"],
        "host_key": report["host_key"],
        "summary": report["summary"],
        "failed_controls": sorted(r["id"] for r in rows if r["outcome"] == "fail"),
        "findings": [{"id": r["id"], "message": r.get("message", "")} for r in rows if r["outcome"] == "finding"],
    }


def failed(report: dict[str, Any]) -> bool:
    return any(row["outcome"] == "fail" for row in report["controls"])


def run(req: AuditRequest, progress: Progress) -> tuple[dict[str, Any], Path]:
    """Audit; returns the report and the directory its files are in."""
    validate(req)
    # The suite runs from the project root: every path it is given must not depend on our cwd.
    req = dataclasses.replace(req, identity=_absolute(req.identity), known_hosts=_absolute(req.known_hosts),
                              out=_absolute(req.out))
    settings = gconfig.resolve(gconfig.available_os()[0], req.target, req.config_file)
    out = Path(req.out) if req.out else default_out(settings.state_dir, req.instance_id or req.host)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        report = _audit(req, settings, run_dir, progress)
        os.rename(run_dir, out)  # whole or not at all (a --out made meanwhile: the rename fails)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return report, out


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def _audit(req: AuditRequest, settings: gconfig.Resolved, run_dir: Path, progress: Progress) -> dict[str, Any]:
    if req.instance_id:
        connection = _connect_instance(req, settings, run_dir, progress)
    else:
        connection = _connect_ssh(req, run_dir, progress)
    # One pinned login first: a key that differs ends the audit here, before any check.
    try:
        client = hostkeys.connect_pinned(connection.host, connection.port, req.user, Path(req.identity),
                                         connection.known_hosts, timeout_seconds=SSH_TIMEOUT_SECONDS)
    except HostKeyMismatch:
        raise HostKeyMismatch(f"{connection.host}:{connection.port} presented a host key other than the one "
                              f"{connection.host_key.split(':', 1)[0]}: refusing to audit (possible interception, "
                              "or the host was rebuilt: check its key out of band)") from None
    try:
        image_id, image_source = _image_of(req, connection, client)
    finally:
        client.close()
    progress.say(f"host key {connection.host_key}; image {image_id or 'unknown'} ({image_source})")
    controls_file, controls_source, cfg, tags = _controls(req, settings, image_id, run_dir)
    progress.say(f"controls: {controls_source}; running the verify suite in audit mode")
    argv = verify_runner.suite_argv(
        controls_file=controls_file, report=run_dir / REPORT_FILE, image_id=image_id,
        fingerprint=tags.get("Fingerprint", ""), host=connection.host, port=connection.port, user=req.user,
        identity=Path(req.identity), known_hosts=connection.known_hosts, build_id=tags.get("BuildId", ""),
        instance_id=connection.instance_id, junit=run_dir / JUNIT_FILE, mode="audit")
    verify_runner.run_suite(argv, run_dir / REPORT_FILE, run_dir / "pytest.log",
                            cfg.settings.verify.timeout_minutes * 60, progress)
    report = json.loads((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    for row in report["controls"]:
        if row["id"] in AUDIT_JUDGED and row["outcome"] != "not-applicable":
            row["audit_note"] = AUDIT_JUDGED[row["id"]]
            row["message"] = "; ".join(m for m in (row.get("message"), AUDIT_JUDGED[row["id"]]) if m)
    report["host_key"] = connection.host_key
    report["audit"] = {"host": connection.host, "port": connection.port, "user": req.user,
                       "instance_id": connection.instance_id, "image_id_source": image_source,
                       "controls": controls_source, **connection.details}
    report["summary"] = summarise(report["controls"])
    write_report_files(run_dir, report)
    return report
