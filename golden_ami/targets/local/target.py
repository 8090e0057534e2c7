"""The local target: Packer's qemu builder, a real VM under QEMU, and the local image store."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from datetime import datetime
from typing import Any, Iterator, Mapping, Optional

from ... import provenance
from ...config import Resolved
from ...errors import UserError
from ...layout import BuildDir, StateDir
from ...progress import Progress
from ...render import SourceImage
from ...sshkeys import KeyPair, generate
from ..base import BuildContext, Image, Problem, Target, TestInstance
from . import accel as accelerators
from . import base_image, disk_layout, doctor, prune, reap, vm
from .seed import write_seed_files
from .store import Store, StoredImage

REQUIRED_TOOLS = {
    "packer": "apt-get install packer",
    "qemu-system-x86_64": "apt-get install qemu-system-x86",
    "qemu-img": "apt-get install qemu-utils",
    "xorriso": "apt-get install xorriso",
}


STATEMENT_FILE = "approval.dsse.json"  # the signed approval statement, beside disk and tags


def _image(stored: StoredImage) -> Image:
    return Image(id=stored.id, tags=provenance.migrated(stored.tags), location=str(stored.path))


def _layout_words(cfg: Resolved) -> str:
    return "" if cfg.settings.disk_layout == "single" else f"disk_layout: {cfg.settings.disk_layout} "


def _base_image_how(cfg: Resolved) -> str:
    # The config file names the layout; the single layout needs none.
    config = cfg.config_files[0] if cfg.config_files and cfg.settings.disk_layout != "single" else None
    return base_image.how_to_make(cfg.os.name, bool(cfg.target_os.source.recipe), config)


class LocalTarget(Target):
    name = "local"

    @property
    def store(self) -> Store:
        return Store(StateDir(self.state_dir).store)

    # --- prerequisites and sources ---
    def problems(self, cfg: Optional[Resolved] = None) -> list[Problem]:
        found = [Problem(f"{tool} is not installed", fix) for tool, fix in REQUIRED_TOOLS.items()
                 if shutil.which(tool) is None]
        if cfg is not None and base_image.load(self.state_dir, cfg.os.name, cfg.settings.disk_layout) is None:
            found.append(Problem(f"no {_layout_words(cfg)}base image for {cfg.os.name}", _base_image_how(cfg)))
        return found

    def resolve_source(self, cfg: Resolved, pinned: Optional[str] = None) -> SourceImage:
        if pinned:
            raise UserError("--source-ami applies to the aws target; the local target builds from its base image")
        layout = cfg.settings.disk_layout
        base = base_image.load(self.state_dir, cfg.os.name, layout)
        if base is None:
            raise UserError(f"no {_layout_words(cfg)}base image for {cfg.os.name} yet: run {_base_image_how(cfg)}")
        if cfg.settings.local.disk_size_mb < disk_layout.DISK_MB[layout]:
            raise UserError(f"local.disk_size_mb {cfg.settings.local.disk_size_mb} is smaller than the {layout} "
                            f"base disk ({disk_layout.DISK_MB[layout]} MiB): give at least that")
        return SourceImage(id=base.image_id, name=base.name, location=str(base.path), checksum=f"sha256:{base.sha256}")

    # --- build ---
    def packer_variables(self, cfg: Resolved, ctx: BuildContext) -> dict[str, Any]:
        local = cfg.settings.local
        accel = accelerators.choose(local.accelerator, self.state_dir)
        ctx.progress.say(f"accelerator: {accel.name} ({accel.reason})")
        key = generate(ctx.runtime_dir / "build-key", "id_ed25519", f"golden-ami-build-{ctx.build_id}")
        seed = write_seed_files(ctx.runtime_dir / "seed", f"iid-build-{ctx.build_id}", "golden-build",
                                cfg.target_os.login_user, key.public_key)
        BuildDir(ctx.build_dir).logs.mkdir(parents=True, exist_ok=True)
        return {
            "source_image_path": ctx.source.location,
            "accelerator": accel.name,
            "cpu_model": accel.cpu_model,
            "output_directory": str(ctx.runtime_dir / "packer-output"),
            "serial_log": str(BuildDir(ctx.build_dir).build_console_log),
            "ssh_private_key_file": str(key.private_key_path),
            "seed_files": [str(path) for path in seed],
        }

    def register_candidate(self, cfg: Resolved, ctx: BuildContext, manifest: dict[str, Any]) -> Image:
        disk = ctx.runtime_dir / "packer-output" / "disk.qcow2"
        if not disk.is_file():
            raise RuntimeError(f"Packer reported success but left no disk at {disk}")
        stored = self.store.add(disk, {
            "Status": "candidate",
            "Target": "local",
            "CreatedAt": ctx.created_at,
            **provenance.tags(cfg, ctx),
        })
        return _image(stored)

    # --- verify ---
    @contextlib.contextmanager
    def boot_test_instance(
        self, cfg: Resolved, image: Image, key: KeyPair, work_dir: Path, progress: Progress
    ) -> Iterator[TestInstance]:
        local = cfg.settings.local
        accel = accelerators.choose(local.accelerator, self.state_dir)
        progress.say(f"booting a fresh VM from {image.id} on an overlay ({accel.name})")
        with vm.boot(Path(image.location), work_dir, cfg.target_os.login_user, key, accel,
                     local.cpus, local.memory_mb) as running:
            yield TestInstance(
                ssh_host=running.ssh_host,
                ssh_port=running.ssh_port,
                login_user=running.login_user,
                key=key,
                instance_id=running.instance_id,
                console_text=running.console_text,
                boot_timeout_seconds=local.boot_timeout_seconds,
                details={"accelerator": accel.name, "serial_log": str(running.serial_log)},
            )

    # --- registry ---
    def get_image(self, image_id: str) -> Image:
        return _image(self.store.get(image_id))

    def doctor_findings(self, probe_kvm: bool = True) -> list[doctor.Finding]:
        return doctor.findings(self.state_dir, probe_kvm)

    # --- lifecycle ---
    def prune_plans(self, os_names: list[str], refused: Mapping[str, Mapping[str, list[str]]],
                    now: Optional[datetime] = None) -> list[prune.LocalPrunePlan]:
        return [prune.plan_local(self.settings, self.state_dir, name, refused=refused.get(name, {}))
                for name in os_names]

    def reap_plan(self, older_than_hours: float, candidates_older_than_hours: float,
                  now: Optional[datetime] = None) -> reap.LocalReapPlan:
        return reap.plan_local(self.state_dir, older_than_hours, candidates_older_than_hours, now=now)

    def list_images(self, os_name: Optional[str] = None, status: Optional[str] = None) -> list[Image]:
        return [_image(s) for s in self.store.list(os_name, status)]

    def set_tags(self, image_id: str, tags: dict[str, Optional[str]]) -> Image:
        return _image(self.store.set_tags(image_id, tags))

    # --- approval statements: signed with the state dir's own key ---
    signs_approvals = True

    def approval_signer(self) -> Any:
        from ... import attest  # deferred: securesystemslib and the verify suite, only for approvals

        return attest.local_signer(self.state_dir)

    def approval_keys(self) -> list[Any]:
        from ... import attest  # deferred: securesystemslib and the verify suite, only for approvals

        # Never made here: without the key there is no statement to check either.
        return [attest.local_signer(self.state_dir).public_key] if StateDir(self.state_dir).signing_key.exists() else []

    def subject_digest(self, image: Image) -> dict[str, str]:
        digest = hashlib.sha256()
        with open(image.location, "rb") as disk:
            for block in iter(lambda: disk.read(1 << 20), b""):
                digest.update(block)
        return {"sha256": digest.hexdigest()}

    def save_statement(self, image_id: str, envelope: Optional[dict[str, Any]]) -> None:
        data = None if envelope is None else (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode()
        self.store.put_attachment(image_id, STATEMENT_FILE, data)

    def load_statement(self, image_id: str) -> Optional[dict[str, Any]]:
        data = self.store.attachment(image_id, STATEMENT_FILE)
        if data is None:
            return None
        try:
            loaded = json.loads(data)
        except ValueError:
            return {}  # (checked as "not a DSSE envelope")
        return loaded if isinstance(loaded, dict) else {}
