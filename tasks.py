"""Golden AMI pipeline tasks: `invoke --list`, and `invoke <task> --help` for each one.

The flow: config -> render -> build -> verify -> approve. Two targets share it: `local`
(the default: Packer qemu and a real VM, no AWS account needed) and `aws` (Packer
amazon-ebs and EC2). Progress goes to stderr; --json prints one JSON document on stdout.
"""
from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

from invoke import Exit, task

from golden_ami import config as gconfig
from golden_ami.errors import UsageError, UserError
from golden_ami.procs import terminate_as_interrupt
from golden_ami.progress import Progress

TARGET_HELP = "aws or local (default: local, a real VM under QEMU; no AWS account needed)"
PROFILE_HELP = "baseline, cis-level1-server or cis-level2-server (the default: see README, Profiles)"
OS_HELP = "one of: " + ", ".join(gconfig.available_os())
CONFIG_HELP = "a config file (default: ./golden-ami.yaml if present, or $GOLDEN_AMI_CONFIG)"
JSON_HELP = "print the result as JSON on stdout"


def _user_errors(func):
    """One line and exit 1 for user errors, 130 for Ctrl-C; internal errors keep tracebacks."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with terminate_as_interrupt():  # SIGTERM tears down like Ctrl-C does
                return func(*args, **kwargs)
        except UsageError as exc:  # the command line itself: exit 2, as a parser would
            _emit_error(kwargs.get("json_"), "usage", str(exc))
            raise Exit(f"error: {exc}", code=2) from None
        except UserError as exc:
            _emit_error(kwargs.get("json_"), "error", str(exc))
            raise Exit(f"error: {exc}", code=1) from None
        except Exception as exc:
            # An AWS answer that no caller turned into a UserError (an endpoint that is down,
            # a reply that is not EC2's): still one line, not a traceback.
            if not type(exc).__module__.startswith("botocore"):
                raise
            message = f"AWS: {' '.join(str(exc).split())[:300]}"
            _emit_error(kwargs.get("json_"), "error", message)
            raise Exit(f"error: {message}", code=1) from None
        except KeyboardInterrupt:
            _emit_error(kwargs.get("json_"), "interrupted", "stopped by a signal")
            raise Exit("interrupted: what this run started has been stopped and removed", code=130) from None

    return wrapper


def _emit_error(as_json, kind: str, message: str) -> None:
    """With --json a script still gets one JSON document on stdout when the task fails."""
    if as_json:
        print(json.dumps({"error": kind, "message": message}, indent=2, sort_keys=True))


ACCEL_HELP = "local: auto (KVM only if a probe boots a kernel with it), kvm or tcg"


UNPINNED_HELP = ("DANGEROUS, only for AWS accounts without console output: trust the test instance's first "
                 "host key instead of pinning it from the console (recorded in the report)")


def _resolve(os_name, target, config_file, profile=None, accelerator=None, accept_unpinned=False, region=None):
    if not os_name:
        raise UserError(f"--os is required: {OS_HELP}")
    overrides = {}
    if profile:
        overrides["profile"] = profile
    if accelerator:
        overrides["local"] = {"accelerator": accelerator}
    if accept_unpinned:
        overrides["verify"] = {"accept_unpinned_host_key": True}
    if region:
        overrides["aws"] = {"region": region}
    return gconfig.resolve(os_name, target or gconfig.DEFAULT_TARGET, config_file, overrides=overrides)


def _emit(as_json: bool, data, text: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def _settings(target: str, config_file, region=None):
    """The settings of commands that span every OS (list, approve): defaults + the user's
    config file, resolved for any one OS (the OS-specific part goes unused)."""
    return gconfig.resolve(gconfig.available_os()[0], target, config_file,
                           overrides={"aws": {"region": region}} if region else None)


def _settings_target(target: str, config_file, region=None):
    """A target for commands that span every OS (list)."""
    cfg = _settings(target, config_file, region)
    from golden_ami.targets import get_target

    return get_target(target, cfg.settings, cfg.state_dir)


@task(help={"os_": OS_HELP, "target": TARGET_HELP, "out": "directory to write (default: under the state dir)",
            "source_ami": "aws: pin the source AMI id instead of resolving it",
            "profile": PROFILE_HELP, "config_": CONFIG_HELP, "json_": JSON_HELP})
@_user_errors
def render(c, os_=None, target="local", out=None, source_ami=None, profile=None, config_=None, json_=False):
    """Render the Packer template, hardening scripts and variables for one OS into a build directory.

    The directory is self-contained and deterministic (same inputs, same bytes); its
    fingerprint (sha256 over every rendered byte plus the resolved source image) is printed.
    """
    from golden_ami.render_for_target import render_for_target  # not the pipeline: a render needs none of it

    cfg = _resolve(os_, target, config_, profile)
    result = render_for_target(cfg, Path(out) if out else None, source_ami)
    _emit(json_, {"directory": str(result.directory), "fingerprint": result.fingerprint,
                 "source_image": result.source.as_dict(), "files": result.files},
          f"rendered {len(result.files)} files into {result.directory}\nfingerprint {result.fingerprint}")


@task(name="base-image",
      help={"os_": OS_HELP, "from_": "use this cloud image (qcow2 or raw) instead of building one",
            "rebuild": "build again even if a base image is cached", "accelerator": ACCEL_HELP,
            "point_release_kernel": "keep the point release's kernel (all else current): the golden build "
                                    "must then patch the kernel and reboot, like on a weeks-old vendor image",
            "config_": CONFIG_HELP, "json_": JSON_HELP})
@_user_errors
def base_image(c, os_=None, from_=None, rebuild=False, accelerator=None, point_release_kernel=False, config_=None,
               json_=False):
    """Build (or import) the base disk the local target builds from, and cache it.

    debian12 is built from Debian's archive (mmdebstrap, then GRUB installed by the guest
    itself); other OSes take their official cloud image with --from PATH. The configuration's
    disk_layout chooses one root filesystem (single) or CIS's separate filesystems (cis);
    each layout has its own cached base image.
    """
    from golden_ami.targets.local import base_image as base

    cfg = _resolve(os_, "local", config_, accelerator=accelerator)
    progress = Progress()
    cached = base.load(cfg.state_dir, cfg.os.name, cfg.settings.disk_layout)
    if from_:
        image = base.import_image(cfg, Path(from_), progress)
    elif cached and not rebuild:
        image = cached
        progress.say(f"cached base image for {cfg.os.name} reused (--rebuild to build again)")
    else:
        image = base.build_debootstrap(cfg, progress, point_release_kernel=point_release_kernel)
    _emit(json_, {"os": image.os, "path": str(image.path), "id": image.image_id, "name": image.name, **image.meta},
          f"base image {image.name}: {image.path} ({image.image_id[:19]}…)")


@task(help={"os_": OS_HELP, "target": TARGET_HELP, "source_ami": "aws: pin the source AMI id",
            "from_render": "build exactly this rendered directory (its fingerprint is recomputed)",
            "profile": PROFILE_HELP, "accelerator": ACCEL_HELP, "config_": CONFIG_HELP,
            "accept_unpinned_host_key": UNPINNED_HELP, "json_": JSON_HELP})
@_user_errors
def build(c, os_=None, target="local", source_ami=None, from_render=None, profile=None, accelerator=None,
          config_=None, accept_unpinned_host_key=False, json_=False):
    """Render, build, verify and approve (or reject) a golden image for one OS.

    Exits 0 only when the new image is approved; a rejected image exits 1 and names the
    failing control ids. Temporary VMs, keys and disks are removed on failure and Ctrl-C too.
    """
    from golden_ami import pipeline

    cfg = _resolve(os_, target, config_, profile, accelerator, accept_unpinned_host_key)
    progress = Progress()
    result = pipeline.build(cfg, progress, source_pin=source_ami,
                            from_render=Path(from_render) if from_render else None)
    data = result.as_dict()
    _emit(json_, data, f"{data['image_id']}: {data['status']} ({data['decision']})\nbuild directory: {data['build_dir']}")
    if data["status"] != "approved":
        raise Exit(code=1)


def _image_and_build_dir(target_name, image_id, config_file):
    from golden_ami.pipeline import image_and_build_dir

    target = _settings_target(target_name, config_file)
    return (target, *image_and_build_dir(target, image_id))


@task(help={"image_id": "the image to judge (li-… or ami-…)", "target": TARGET_HELP, "config_": CONFIG_HELP,
            "json_": JSON_HELP})
@_user_errors
def approve(c, image_id=None, target="local", config_=None, json_=False):
    """Run the approval gate again on an image's stored verification report.

    Approves only when the report names this image id and its fingerprint, the build
    directory still hashes to that fingerprint, and every control in force has one row that
    passed (or is not-applicable with a reason, or waived by a waiver the waivers file holds
    today); otherwise tags the image rejected.
    """
    from golden_ami import approve as gate
    from golden_ami import waivers

    target_obj, image, build_dir = _image_and_build_dir(target, image_id, config_)
    waivers_file = _settings(target, config_).waivers_file
    decision = gate.decide(image, gate.load_report(build_dir), build_dir, waivers.load(waivers_file))
    image = gate.apply(target_obj, image, decision, build_dir)
    _emit(json_, {"image_id": image.id, "status": image.status, "failed_controls": decision.failed_controls,
                 "reasons": decision.reasons}, f"{image.id}: {decision.summary()}")
    if not decision.approved:
        raise Exit(code=1)


@task(help={"image_id": "the candidate to verify again", "target": TARGET_HELP, "config_": CONFIG_HELP,
            "accept_unpinned_host_key": UNPINNED_HELP, "json_": JSON_HELP})
@_user_errors
def verify(c, image_id=None, target="local", config_=None, accept_unpinned_host_key=False, json_=False):
    """Boot a fresh instance of an image, verify it over SSH (pinned host key), then approve or reject."""
    from golden_ami import pipeline

    target_obj, image, build_dir = _image_and_build_dir(target, image_id, config_)
    cfg = _resolve(image.tags["OS"], target, config_, image.tags.get("Profile"),
                   accept_unpinned=accept_unpinned_host_key)
    progress = Progress()
    decision = pipeline.verify_and_decide(cfg, target_obj, image, build_dir, image.tags.get("BuildId", ""), progress)
    _emit(json_, {"image_id": image.id, "approved": decision.approved, "failed_controls": decision.failed_controls,
                 "reasons": decision.reasons}, f"{image.id}: {decision.summary()}")
    if not decision.approved:
        raise Exit(code=1)


@task(help={"host": "SSH address of the instance to audit (or --instance-id with --target=aws)",
            "port": "SSH port (default 22; aws: aws.ssh_port)",
            "user": "login user on the instance; it needs passwordless sudo (required)",
            "identity": "private key file of --user (required; read by the SSH client only, never copied)",
            "known_hosts": "known_hosts file holding the host's key, checked out of band (required with --host "
                           "unless --trust-first-use; aws: instead of the console's key block)",
            "trust_first_use": "DANGEROUS: do not pin the host key, trust the first one presented (a WARNING, "
                               "and written into the report)",
            "instance_id": "aws: the EC2 instance to audit (address and image from describe_instances, host key "
                           "from its console)",
            "target": "aws with --instance-id; which registry to look the image up in otherwise (default: local)",
            "os_": "the instance's OS, when its image has no build in this state dir (the current catalogue "
                   "is used then); " + OS_HELP,
            "image_id": "the image the instance was launched from, when the platform cannot say (local/SSH)",
            "out": "directory to write the report files into; must not exist (default: "
                   "<state>/audits/<host or instance>-<UTC time>)",
            "config_": CONFIG_HELP, "json_": "print the report summary as JSON on stdout"})
@_user_errors
def audit(c, host="", port=22, user="", identity="", known_hosts="", trust_first_use=False, instance_id="",
          target="local", os_=None, image_id="", out="", config_=None, json_=False):
    """Run the verify suite against a running instance the pipeline did not boot (read-only).

    The host key is pinned (--known-hosts, or the console with --instance-id); the report
    (JSON, Markdown, JUnit) names the image the instance was launched from and where the
    controls came from. Exit 0: no control failed; 1: a control failed (or the audit could
    not run); 2: a usage error. What an audit touches on the host: docs/audit.md.
    """
    from golden_ami import audit as gaudit

    request = gaudit.AuditRequest(host=host, port=int(port), user=user, identity=identity, known_hosts=known_hosts,
                                  trust_first_use=trust_first_use, instance_id=instance_id, target=target,
                                  os_name=os_ or "", image_id=image_id, out=out, config_file=config_)
    report, directory = gaudit.run(request, Progress())
    summary = gaudit.summary_of(report, directory)
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(summary["summary"].items()))
    _emit(json_, summary, f"{summary['image_id'] or 'image unknown'}: {counts}\nreport: {directory}")
    if gaudit.failed(report):
        raise Exit(code=1)


@task(help={"image_id": "the image whose SBOM to write (li-… or ami-…)", "target": TARGET_HELP,
            "out": "the file to write (default: standard output); an existing file is never overwritten",
            "config_": CONFIG_HELP})
@_user_errors
def sbom(c, image_id=None, target="local", out=None, config_=None):
    """Write an image's SBOM: CycloneDX JSON of the packages on the instance it was verified on.

    Exactly the file its verify run wrote and sealed (the SbomDigest tag); refused when the
    file in the build directory no longer hashes to that seal.
    """
    from golden_ami import verify_runner
    from golden_ami.files import write_new
    from golden_ami.layout import BuildDir

    _, image, build_dir = _image_and_build_dir(target, image_id, config_)
    text = verify_runner.sealed_text(image, BuildDir(build_dir).verify, "SbomDigest")
    if out is None:
        sys.stdout.write(text)
        return
    try:
        write_new(Path(out), text)
    except FileExistsError:
        raise UserError(f"--out {out}: exists already") from None
    except FileNotFoundError:
        raise UserError(f"--out {out}: its directory does not exist") from None
    print(f"{image.id}: SBOM written to {out}", file=sys.stderr)


def _counted_approved(target_obj, os_name):
    """Images tagged approved whose signed approval verifies; a warning line for each other."""
    from golden_ami import attest as statements

    return statements.counted_approved(target_obj, os_name, Progress().say)


@task(name="signing-key", help={"target": TARGET_HELP, "config_": CONFIG_HELP, "json_": JSON_HELP})
@_user_errors
def signing_key(c, target="local", config_=None, json_=False):
    """Print the public key approvals are signed with, for consumers to pin.

    local: the private half is made once in <state>/signing/ (0600) and never printed.
    aws: the public half of aws.signing_kms_key_id, read from KMS (the private half never
    leaves KMS); save it and set aws.signing_public_key to pin it.
    """
    from golden_ami import attest as statements

    target_obj = _settings_target(target, config_)
    if not target_obj.signs_approvals:
        raise UserError(f"approvals on the {target} target are not signed: set aws.signing_kms_key_id")
    key = target_obj.approval_signer().public_key
    pem = statements.public_key_pem(key)
    _emit(json_, {"keyid": key.keyid, "scheme": key.scheme, "public_key_pem": pem}, f"{pem.rstrip()}\n# keyid {key.keyid}")


@task(help={"image_id": "the image whose approval to check (li-… or ami-…)", "target": TARGET_HELP,
            "public_key": "a PEM public key file to check against (default: local: the key of this state dir; "
                          "aws: aws.signing_public_key, else the public half of aws.signing_kms_key_id)",
            "config_": CONFIG_HELP, "json_": JSON_HELP})
@_user_errors
def attest(c, image_id=None, target="local", public_key=None, config_=None, json_=False):
    """Print an image's signed approval statement and whether it verifies; exit 1 when not.

    Verifies: the signature against the pinned key, that the statement is about this image and
    this disk, that the image's tags agree with it, and that no waiver inside has expired.
    """
    from golden_ami import attest as statements

    if not image_id:
        raise UserError("--image-id is required (see invoke list)")
    target_obj = _settings_target(target, config_)
    image = target_obj.get_image(image_id)
    keys = None
    if public_key:
        try:
            keys = [statements.key_from_pem(Path(public_key).read_text())]
        except OSError as exc:
            raise UserError(f"--public-key {public_key}: {exc.strerror}") from None
    reasons, statement = statements.check(target_obj, image, keys)
    verdict = "verified" if not reasons else "NOT verified: " + "; ".join(reasons)
    _emit(json_, {"image_id": image.id, "verified": not reasons, "problems": reasons, "statement": statement},
          (json.dumps(statement, indent=2, sort_keys=True) + "\n" if statement else "") + f"{image.id}: {verdict}")
    if reasons:
        raise Exit(code=1)


def _image_row(image) -> dict:
    from golden_ami.provenance import image_row

    return image_row(image.id, image.location, image.tags)


REGION_HELP = "aws: the region to look in (default: aws.region of the config)"


@task(help={"os_": OS_HELP, "target": TARGET_HELP, "region": REGION_HELP, "config_": CONFIG_HELP, "json_": JSON_HELP})
@_user_errors
def latest(c, os_=None, target="local", region=None, config_=None, json_=False):
    """Print the newest approved image for an OS (what application teams should launch)."""
    cfg = _resolve(os_, target, config_, region=region)
    from golden_ami.pipeline import target_for

    approved = _counted_approved(target_for(cfg), cfg.os.name)
    if not approved:
        raise UserError(f"no approved {cfg.os.name} image on the {cfg.target} target yet: run invoke build --os={cfg.os.name}"
                        f" --target={cfg.target}")
    newest = approved[-1]
    _emit(json_, _image_row(newest), f"{newest.id}\t{newest.tags.get('ApprovedAt', '')}\t{newest.location}")


@task(name="list", help={"os_": "only this OS", "target": TARGET_HELP, "status": "candidate, approved or rejected",
                         "region": REGION_HELP, "config_": CONFIG_HELP, "json_": JSON_HELP})
@_user_errors
def list_(c, os_=None, target="local", status=None, region=None, config_=None, json_=False):
    """List the pipeline's images with their status and provenance tags."""
    if os_ and os_ not in gconfig.available_os():
        raise UserError(f"unknown --os {os_!r}: {OS_HELP}")
    if status and status not in ("candidate", "approved", "rejected"):
        raise UserError(f"unknown --status {status!r}: candidate, approved or rejected")
    target_obj = _settings_target(target, config_, region)
    images = _counted_approved(target_obj, os_) if status == "approved" else target_obj.list_images(os_, status)
    rows = [_image_row(i) for i in images]
    if json_:
        _emit(True, rows, "")
        return
    columns = ("id", "OS", "Status", "CreatedAt", "FailedControls")
    widths = {col: max([len(col)] + [len(str(r[col])) for r in rows]) for col in columns}
    print("  ".join(col.ljust(widths[col]) for col in columns))
    for row in rows:
        print("  ".join(str(row[col]).ljust(widths[col]) for col in columns))


@task(help={"target": "check only this target (aws or local)", "json_": JSON_HELP})
@_user_errors
def doctor(c, target=None, json_=False):
    """Check this machine: Packer, QEMU, a working accelerator, base images, AWS credentials."""
    from golden_ami import doctor as checks

    if target is not None and target not in gconfig.TARGETS:
        raise UserError(f"unknown --target {target!r}: choose aws or local")
    cfg = gconfig.resolve(gconfig.available_os()[0], "local", None)
    findings = checks.check(cfg.state_dir, (target,) if target else ("local", "aws"))
    if json_:
        _emit(True, [f.as_dict() for f in findings], "")
    else:
        for f in findings:
            mark = "ok " if f.ok else "MISSING"
            print(f"[{mark}] {f.area:6} {f.detail}" + (f"\n          fix: {f.fix}" if f.fix else ""))
    if not all(f.ok for f in findings):
        raise Exit(code=1)


@task(help={"os_": OS_HELP, "target": TARGET_HELP, "profile": PROFILE_HELP,
            "config_": CONFIG_HELP, "json_": JSON_HELP})
@_user_errors
def controls(c, os_=None, target="local", profile=None, config_=None, json_=False):
    """List the controls in force for an OS and target (ids, benchmark numbers, applicability),
    then how they account for the OS's whole CIS benchmark: per Server level and assessment,
    implemented and checked, not applicable, manual, known gaps, outside the profile. Values
    only your site has (the log host of al2023's 5.1.1.6) are named when still unset. "Proven on
    a running system" says whether the test suite runs these checks on a booted instance."""
    from golden_ami.benchmarks import format_table
    from golden_ami.catalogue import controls_for, coverage

    cfg = _resolve(os_, target, config_, profile)
    chosen = controls_for(cfg)
    covered = coverage(chosen, cfg.os)
    if json_:
        _emit(True, {**chosen.as_dict(), "coverage": covered, "unset_site_params": list(chosen.unset_site_params)}, "")
        return
    for control in chosen.controls:
        state = "applies" if control.applicable else f"n/a: {control.reason}"
        print(f"{control.os_id or '-':12} {control.id:18} {control.title}  [{state}]")
    for exception in chosen.exceptions:
        print(f"{'':12} {exception['control']:18} SWITCHED OFF by exception until {exception['expires']}: "
              f"{exception['justification']}")
    for unset in chosen.unset_site_params:
        print(f"a build needs your value first: {unset}", file=sys.stderr)
    print(f"{cfg.os.name}/{cfg.target}, profile {chosen.profile}: {covered['applicable']} applicable controls "
          f"({covered['not_applicable']} not applicable)", file=sys.stderr)
    proven = covered["proven_on_running_system"] or "no - these checks have run only on recorded or hand-written snapshots"
    for line in format_table(cfg.os.name, covered["benchmark"], covered["table"], proven):
        print(line, file=sys.stderr)


@task(help={"os_": "an OS to consider (repeatable); default with --all: rebuild.os of the config",
            "all_": "every OS in rebuild.os", "target": TARGET_HELP, "dry_run": "decide and print, build nothing",
            "jobs": "builds at a time (default: rebuild.jobs)", "probe_updates": "also boot each approved image "
            "and ask for pending security updates", "summary_dir": "where rebuild-summary.json and .md go "
            "(default: <state dir>/runs/<run id>)", "config_": CONFIG_HELP, "json_": JSON_HELP},
      iterable=["os_"])
@_user_errors
def rebuild(c, os_=None, all_=False, target="local", dry_run=False, jobs=0, probe_updates=False, summary_dir=None,
            config_=None, json_=False):
    """Rebuild only what changed: for each OS, build when its source image moved, the rendered
    content changed, the approved image is older than rebuild.max_age_days, or (with
    --probe-updates) it lacks security updates; otherwise say why not. Writes a JSON and a
    Markdown summary, publishes it to notify.sns_topic_arn if set. Exits 1 if a build failed
    or was rejected, or an OS could not be decided."""
    from golden_ami import rebuild as planner

    names = list(os_ or [])
    if all_ == bool(names):
        raise UserError("name the OSes with --os (repeatable) or use --all")
    if jobs and not 1 <= int(jobs) <= 16:
        raise UserError(f"--jobs must be between 1 and 16, not {jobs}")
    settings_cfg = _resolve(gconfig.available_os()[0], target, config_)
    settings = settings_cfg.settings
    configs = [_resolve(name, target, config_) for name in names or settings.rebuild.os]
    probe = planner.pending_updates_probe if (probe_updates or settings.rebuild.probe_updates) else None
    run = planner.run_and_report(settings_cfg, configs, config_, dry_run=dry_run, jobs=int(jobs or settings.rebuild.jobs),
                                 progress=Progress(), probe=probe, summary_dir=Path(summary_dir) if summary_dir else None)
    text = "\n".join(f"{o.os:11} {('build' if o.decision.build else 'skip'):5} {o.status:9} {o.image_id or '-':22} "
                     f"{o.decision.error or '; '.join(o.decision.reasons)}" for o in run.outcomes)
    _emit(json_, {"dry_run": dry_run, "run_id": run.run_id, "summary_json": str(run.json_path),
                  "outcomes": [o.as_dict() for o in run.outcomes]}, text)
    if not run.summary.ok:
        raise Exit(code=1)


@task(help={"os_": "only this OS (repeatable; default: every OS)", "target": TARGET_HELP,
            "yes": "carry out the plan (without it, only show it)", "config_": CONFIG_HELP, "json_": JSON_HELP},
      iterable=["os_"])
@_user_errors
def prune(c, os_=None, target="local", yes=False, config_=None, json_=False):
    """Image lifecycle: deprecate older approved images and remove those beyond
    lifecycle.keep_approved with their snapshots. Never the newest approved image, nor (aws)
    one a launch template version, an instance or the published SSM pointer uses. Shows the
    plan; changes something only with --yes."""
    from golden_ami import lifecycle

    names = list(os_ or [])
    cfg = _resolve(names[0] if names else gconfig.available_os()[0], target, config_)
    for name in names:
        if name not in gconfig.available_os():
            raise UserError(f"unknown --os {name!r}: {OS_HELP}")
    _apply_plans(lifecycle.plan(cfg.settings, target, cfg.state_dir, names or None), yes, json_, "prune")


@task(help={"target": TARGET_HELP, "older_than_hours": "leftovers younger than this are kept, a run may still "
            "own them (default: 2)", "candidates_older_than_hours": "candidate images younger than this are kept "
            "(default: 24)", "yes": "remove what the plan lists (without it, only show it)", "config_": CONFIG_HELP,
            "json_": JSON_HELP})
@_user_errors
def reap(c, target="local", older_than_hours=None, candidates_older_than_hours=None, yes=False, config_=None,
         json_=False):
    """Find what crashed or killed runs left behind, by the pipeline's tags and names: instances,
    key pairs, security groups, old candidate images (aws); VMs, runtime dirs and partial
    images (local). Shows the plan; removes only with --yes, then reads every removal back."""
    from golden_ami import reaper

    cfg = _resolve(gconfig.available_os()[0], target, config_)
    hours = {}
    for name, value in (("older_than_hours", older_than_hours), ("candidates_older_than_hours",
                                                                   candidates_older_than_hours)):
        if value is not None:
            try:
                hours[name] = float(value)
            except ValueError:
                hours[name] = math.nan
            if not math.isfinite(hours[name]):  # (nan and inf parse as floats)
                raise UserError(f"--{name.replace('_', '-')} must be a number of hours, not {value!r}")
    _apply_plans([reaper.plan(cfg.settings, target, cfg.state_dir, **hours)], yes, json_, "reap")


def _apply_plans(plans, yes, as_json, verb):
    """Print each plan (golden_ami/plans.py); with yes, carry out those with something to do."""
    outcomes = []
    for each in plans:
        for line in each.describe():
            print(line, file=sys.stderr)
        if yes and each.has_work:
            outcomes += [{"action": o.action, "status": o.status, "detail": o.detail} for o in each.apply()]
    if not yes and any(p.has_work for p in plans):
        print(f"{verb}: nothing changed; run again with --yes to carry out the plan above", file=sys.stderr)
    if as_json:
        print(json.dumps({"applied": bool(yes), "plans": [p.as_dict() for p in plans], "outcomes": outcomes},
                         indent=2, sort_keys=True))
    else:
        for outcome in outcomes:
            print(f"{outcome['status']:8} {outcome['action']}" + (f" ({outcome['detail']})" if outcome["detail"] else ""))
