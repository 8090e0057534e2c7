"""The whole flow for one OS and target: render -> build -> verify -> approve.

Nothing here knows which target it drives. A build directory (<state>/builds/<build id>/)
keeps the rendered files, logs, Packer's manifest and the verification report; the
runtime/ directory inside it (keys, seeds, Packer's output) is removed when the build ends,
however it ends.
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from . import approve, lifecycle, packer, paths, render, verify_runner, waivers
from .catalogue import controls_for, require_site_params
from .config import Resolved
from .files import write_atomic
from .layout import BuildDir, StateDir
from .errors import UserError, VerificationError
from .procs import terminate_as_interrupt
from .render_for_target import render_for_target
from .progress import Progress
from .targets import get_target
from .targets.base import BuildContext, Image, Target


@dataclass
class BuildResult:
    build_id: str
    build_dir: Path
    image: Optional[Image]
    decision: Optional[approve.ApprovalDecision]
    fingerprint: str
    # What publish did after an approval (pointer, sharing, launch template versions); the
    # signed statement was made before it, so it cannot name these.
    published: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "build_id": self.build_id,
            "build_dir": str(self.build_dir),
            "image_id": self.image.id if self.image else None,
            "status": self.image.status if self.image else "failed",
            "fingerprint": self.fingerprint,
            "decision": self.decision.summary() if self.decision else None,
            "failed_controls": self.decision.failed_controls if self.decision else [],
            "published": dict(self.published),
        }


def pipeline_commit() -> str:
    """The commit the pipeline runs from, "-dirty" when the checkout has local changes."""
    try:
        head = subprocess.run(["git", "-C", str(paths.PROJECT_ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(paths.PROJECT_ROOT), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def new_build_id(os_name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{os_name}-{stamp}-{secrets.token_hex(3)}"


def image_and_build_dir(target: Target, image_id: str) -> tuple[Image, Path]:
    """An image and its build directory (<state>/builds/<its BuildId tag>), which verify,
    approve and sbom read: refused when the image was not built in this state dir."""
    if not image_id:
        raise UserError("--image-id is required (see invoke list)")
    image = target.get_image(image_id)
    build_id = image.tags.get("BuildId", "")
    build_dir = StateDir(target.state_dir).build(build_id).path
    if not build_id or "/" in build_id or not build_dir.is_dir():
        raise UserError(f"{image_id}'s build directory (BuildId {build_id or 'missing'}) is not in this state dir: "
                        "verify and approve run where the image was built")
    return image, build_dir


def target_for(cfg: Resolved) -> Target:
    return get_target(cfg.target, cfg.settings, cfg.state_dir)


def render_only(cfg: Resolved, out_dir: Optional[Path], source_pin: Optional[str] = None) -> render.RenderResult:
    return render_for_target(cfg, out_dir, source_pin)


def _check_prerequisites(target: Target, cfg: Resolved) -> None:
    problems = target.problems(cfg)
    if problems:
        first = problems[0]
        more = f" (+{len(problems) - 1} more: invoke doctor)" if len(problems) > 1 else ""
        raise UserError(f"{first.what}: {first.fix}{more}")


def build(
    cfg: Resolved,
    progress: Progress,
    source_pin: Optional[str] = None,
    from_render: Optional[Path] = None,
) -> BuildResult:
    """Render (or take a rendered directory), build, verify and approve or reject."""
    waivers.load(cfg.waivers_file)  # a bad waivers file is refused now, not after the build and verify
    require_site_params(controls_for(cfg))  # so is a control still waiting for the site's value
    target = target_for(cfg)
    _check_prerequisites(target, cfg)
    build_id = new_build_id(cfg.os.name)
    build_dir = StateDir(cfg.state_dir).build(build_id).path
    commit = pipeline_commit()

    record: dict = {"build_id": build_id, "os": cfg.os.name, "target": cfg.target, "profile": cfg.profile,
                    "commit": commit, "status": "failed", "seconds": {}}
    started = time.monotonic()
    with terminate_as_interrupt():
        try:
            result = _build(cfg, target, progress, build_id, build_dir, commit, record, source_pin, from_render)
            record["status"] = result.image.status if result.image else "failed"
            return result
        finally:
            record["seconds"]["total"] = round(time.monotonic() - started, 1)
            if build_dir.is_dir():
                write_atomic(BuildDir(build_dir).record, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _build(cfg: Resolved, target: Target, progress: Progress, build_id: str, build_dir: Path, commit: str,
           record: dict, source_pin: Optional[str], from_render: Optional[Path]) -> BuildResult:
    clock = time.monotonic()
    if from_render is not None:
        _, fingerprint, source = render.load_for_build(from_render, cfg)
        shutil.copytree(from_render, build_dir, symlinks=True)
        progress.say(f"build {build_id}: from {from_render} (fingerprint checked: {fingerprint[:19]}…)")
    else:
        source = target.resolve_source(cfg, source_pin)
        result = render.render(cfg, source, build_dir)
        fingerprint = result.fingerprint
        progress.say(f"build {build_id}: rendered {len(result.files)} files, fingerprint {fingerprint[:19]}…")

    record["fingerprint"] = fingerprint
    record["seconds"]["render"] = round(time.monotonic() - clock, 1)
    clock = time.monotonic()
    ctx = BuildContext(
        build_id=build_id, build_dir=build_dir, runtime_dir=BuildDir(build_dir).runtime,
        fingerprint=fingerprint, commit=commit, source=source, progress=progress,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    image: Optional[Image] = None
    try:
        with progress.step(f"packer build ({cfg.os.name}, {cfg.target})"):
            variables = target.packer_variables(cfg, ctx)
            variables.update({
                "build_id": build_id, "fingerprint": fingerprint, "pipeline_commit": commit,
                "manifest_path": str(BuildDir(build_dir).packer_manifest),
            })
            runtime_vars = packer.write_runtime_vars(ctx.runtime_dir, variables)
            if packer.init_if_supported(build_dir, ctx.runtime_dir, progress, binary=cfg.settings.packer.binary):
                progress.say("packer init: the template's plugins are installed")
            packer.build(build_dir, ctx.runtime_dir, runtime_vars, progress,
                         cfg.settings.packer.timeout_minutes, env=target.packer_environment(cfg),
                         binary=cfg.settings.packer.binary)
            manifest = json.loads(BuildDir(build_dir).packer_manifest.read_text())
            image = target.register_candidate(cfg, ctx, manifest)
            progress.say(f"candidate {image.id} stored, Status=candidate")
    finally:
        shutil.rmtree(ctx.runtime_dir, ignore_errors=True)
    record["seconds"]["packer_build"] = round(time.monotonic() - clock, 1)
    record["image_id"] = image.id
    if image.location and Path(image.location).is_file():
        record["image_bytes"] = Path(image.location).stat().st_size
    clock = time.monotonic()

    decision = verify_and_decide(cfg, target, image, build_dir, build_id, progress)
    record["seconds"]["verify_and_approve"] = round(time.monotonic() - clock, 1)
    image = target.get_image(image.id)
    published = publish_if_approved(cfg, target, image, progress)
    if published is not None:
        record["published"] = published
        # Only after the pointer names the new image: older approved ones are deprecated and
        # beyond lifecycle.keep_approved removed (never one still in use); a failure here is
        # reported with its fix and does not undo the approval.
        lifecycle.after_approval(cfg, progress)
    return BuildResult(build_id, build_dir, image, decision, fingerprint, published or {})


def publish_if_approved(cfg: Resolved, target: Target, image: Image, progress: Progress) -> Optional[dict[str, str]]:
    """Publish an image the gate approved (pointer, sharing, copies, launch template versions)
    and say what changed; None, and nothing touched, for an image in any other state."""
    if image.status != "approved":
        return None
    published = target.publish(cfg, image, progress)
    for key, value in published.items():
        progress.say(f"published {key}: {value}")
    return published


def verify_and_decide(cfg: Resolved, target: Target, image: Image, build_dir: Path, build_id: str,
                      progress: Progress) -> approve.ApprovalDecision:
    """Verify a candidate, then approve or reject it. A broken verification rejects too."""
    report = None
    error = None
    try:
        with progress.step(f"verify {image.id}"):
            report = verify_runner.run(cfg, target, image, build_dir, build_id, progress)
        image = target.get_image(image.id)  # with the seal the run just set
    except (VerificationError, UserError) as exc:
        error = str(exc)
        progress.say(f"verification refused: {error}")
    decision = approve.decide(image, report, build_dir, waivers.load(cfg.waivers_file))
    if error:
        decision.approved = False
        decision.reasons.insert(0, f"verification did not complete: {error}")
    approve.apply(target, image, decision, build_dir)
    progress.say(f"{image.id}: {decision.summary()}")
    return decision
