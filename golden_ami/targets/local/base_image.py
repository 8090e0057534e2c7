"""Base disks for the local target: built from Debian's archive, or imported from a file.

A base disk is what an AMI is to the aws target: a bootable cloud image (partition table,
GRUB, kernel, systemd, openssh-server, cloud-init with NoCloud) that Packer starts from.

The debootstrap recipe needs no loop devices and no mounts:
  1. mmdebstrap fills a directory with the packages the OS data lists;
  2. mke2fs -d writes that directory into ext4 filesystems at the partitions' offsets of a
     raw disk file (sfdisk writes the partition table into the same file); disk_layout.py
     says which filesystems: one root (disk_layout: single) or CIS's separate /home, /var,
     /var/tmp, /var/log and /var/log/audit (disk_layout: cis), each layout cached apart;
  3. the disk's own kernel boots once under QEMU (direct kernel boot) into a one-shot unit
     that runs grub-install and update-grub on the guest's /dev/vda, then powers off - the
     boot loader is installed by the guest, the way an installer would;
  4. the raw disk becomes a compressed qcow2 in the cache, with a metadata file (sha256,
     kernel, suite, packages). Everything happens in a work dir that is removed at the end;
     the cache entry appears by one rename, so a failed or interrupted build leaves nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ...config import Resolved
from ...errors import StepFailed, UserError
from ...layout import StateDir
from ...procs import run_streaming, stop_process
from ...progress import Progress
from . import disk_layout
from .accel import Accelerator
from .accel import choose as choose_accelerator

BASE_FILE = "base.qcow2"
META_FILE = "base.json"
KERNEL_FILE = "vmlinuz"
FINALIZE_MARKER = "GOLDEN-AMI-FINALIZE-OK"


@dataclass(frozen=True)
class BaseImage:
    os: str
    path: Path
    sha256: str
    name: str
    meta: dict

    @property
    def image_id(self) -> str:
        return f"sha256:{self.sha256}"


def cache_dir(state_dir: Path, os_name: str, layout: str = "single") -> Path:
    return StateDir(state_dir).base(os_name, layout)


def how_to_make(os_name: str, has_recipe: bool, config_file: Optional[str] = None) -> str:
    """The command that makes (or, without a recipe here, imports) a base image for os_name."""
    config = f" --config {config_file}" if config_file else ""
    return f"invoke base-image --os={os_name}{config}" + ("" if has_recipe else " --from PATH-TO-CLOUD-IMAGE")


def load(state_dir: Path, os_name: str, layout: str = "single") -> Optional[BaseImage]:
    """The cached base disk of os_name with that disk layout (disk_layout.LAYOUTS), if any."""
    directory = cache_dir(state_dir, os_name, layout)
    meta_path, disk = directory / META_FILE, directory / BASE_FILE
    if not (meta_path.is_file() and disk.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    return BaseImage(os=os_name, path=disk, sha256=meta["sha256"], name=meta["name"], meta=meta)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(4 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(argv: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise UserError(f"{argv[0]} is not installed (needed to {what}): run invoke doctor") from None
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-5:]
        raise StepFailed(f"{what} failed ({argv[0]} exit {exc.returncode}): {' | '.join(tail)}") from None


def _publish(work: Path, final: Path) -> None:
    """Replace the cache entry with the finished work dir in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        retired = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(retired)
        work.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        work.rename(final)


def _write_meta(work: Path, meta: dict) -> None:
    (work / META_FILE).write_text(json.dumps(meta, sort_keys=True, indent=2) + "\n")


# --- import a user-supplied cloud image -----------------------------------------------------
def import_image(cfg: Resolved, source: Path, progress: Progress) -> BaseImage:
    """Take a cloud image (qcow2 or raw) supplied by the user as the OS's base disk."""
    source = source.expanduser().resolve()
    if not source.is_file():
        raise UserError(f"--from {source}: no such file")
    info = json.loads(_run(["qemu-img", "info", "--output=json", str(source)], "inspect the image").stdout)
    fmt = info.get("format")
    if fmt not in ("qcow2", "raw"):
        raise UserError(f"--from {source}: a {fmt!r} image; give a qcow2 or raw cloud image")
    if info.get("backing-filename"):
        raise UserError(f"--from {source}: has a backing file; give a standalone image (qemu-img convert)")
    layout = cfg.settings.disk_layout
    final = cache_dir(cfg.state_dir, cfg.os.name, layout)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".work-{cfg.os.name}-", dir=final.parent))
    try:
        with progress.step(f"import {source.name}"):
            _run(["qemu-img", "convert", "-O", "qcow2", "-f", fmt, str(source), str(work / BASE_FILE)],
                 "convert the image to qcow2")
            digest = sha256_file(work / BASE_FILE)
            _write_meta(work, {
                "os": cfg.os.name, "recipe": "imported", "name": source.name, "sha256": digest,
                # as declared by the configuration: the checks of the built image tell the truth
                "disk_layout": layout,
                "imported_from_sha256": sha256_file(source),
                "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            })
        _publish(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    image = load(cfg.state_dir, cfg.os.name, layout)
    assert image is not None
    return image


# --- build from Debian's archive -------------------------------------------------------------
def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _write_sources(rootfs: Path, mirrors: list[str]) -> None:
    _write(rootfs / "etc/apt/sources.list", "".join(f"{line}\n" for line in mirrors))


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts", encoding="utf-8") as handle:
        points = [line.split()[1].encode().decode("unicode_escape") for line in handle]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a scratch tree, first unmounting what an interrupted bootstrap left mounted in it.

    Never deletes across a mount point: if something stays mounted, the tree stays too and
    the error says where.
    """
    if not path.exists():
        return
    for point in _mounts_below(path):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    remaining = _mounts_below(path)
    if remaining:
        raise StepFailed(f"{remaining[0]} is still mounted; unmount it, then remove {path}")
    shutil.rmtree(path, ignore_errors=True)


def _configure_rootfs(rootfs: Path, fstab: str, login_user: str) -> None:
    """Files a cloud image has that a bare bootstrap lacks."""
    _write(rootfs / "etc/fstab", fstab)
    _write(rootfs / "etc/hostname", "localhost\n")
    # The console on the serial port last, so /dev/console (and cloud-init's key block) is there.
    _write(rootfs / "etc/default/grub.d/50-golden-ami.cfg",
           'GRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX_DEFAULT="console=tty0 console=ttyS0,115200n8"\n'
           'GRUB_TERMINAL="console serial"\nGRUB_SERIAL_COMMAND="serial --speed=115200"\n')
    # NoCloud (a cidata seed) first; no metadata-service probing on a local VM.
    _write(rootfs / "etc/cloud/cloud.cfg.d/90-golden-ami-datasource.cfg",
           "datasource_list: [ NoCloud, None ]\n"
           # The only locale a minimal system always has; cloud-init's default one is not generated.
           "locale: C.UTF-8\n")
    _write(rootfs / "etc/default/locale", "LANG=C.UTF-8\n")
    _write(rootfs / "etc/cloud/cloud.cfg.d/91-golden-ami-user.cfg",
           f"system_info:\n  default_user:\n    name: {login_user}\n    lock_passwd: true\n"
           "    sudo: ['ALL=(ALL) NOPASSWD:ALL']\n    shell: /bin/bash\n    groups: [adm, sudo]\n")
    _write(rootfs / "etc/systemd/system/golden-ami-finalize.service",
           "[Unit]\nDescription=golden-ami: install the boot loader on the base disk\n"
           "After=local-fs.target\n\n[Service]\nType=oneshot\n"
           "ExecStart=/usr/local/sbin/golden-ami-finalize\n"
           # Powers off whether the script succeeded or failed: the marker on the console says
           # which, and a failure is reported at once instead of after the boot's time limit.
           "ExecStopPost=/bin/systemctl --no-block poweroff\n"
           "StandardOutput=journal+console\nStandardError=journal+console\n")
    _write(rootfs / "etc/systemd/system/golden-ami-finalize.target",
           "[Unit]\nDescription=golden-ami: finalize the base disk\n"
           "Requires=golden-ami-finalize.service\nAfter=golden-ami-finalize.service\nAllowIsolate=yes\n")
    _write(rootfs / "usr/local/sbin/golden-ami-finalize",
           "#!/bin/sh\n# Runs once, inside the base disk's first boot, then deletes itself.\n"
           "set -eu\n"
           "echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | debconf-set-selections\n"
           "grub-install --target=i386-pc /dev/vda\n"
           "update-grub\n"
           "rm -f /etc/systemd/system/golden-ami-finalize.service /etc/systemd/system/golden-ami-finalize.target\n"
           "rm -f /usr/local/sbin/golden-ami-finalize\n"
           "rm -f /etc/ssh/ssh_host_* /var/lib/systemd/random-seed\n"
           ": > /etc/machine-id\n"
           f"echo {FINALIZE_MARKER}\n",
           mode=0o755)
    # man-db rebuilds its index after every package change: minutes under emulation, for a
    # server nobody reads manual pages on. (Debian's man-db runs it only when this flag exists.)
    (rootfs / "var/lib/man-db/auto-update").unlink(missing_ok=True)
    # No host keys and no machine identity in a base disk: every boot of a copy makes its own.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(rootfs / "etc/machine-id", "")


POINT_RELEASE_PIN = "etc/apt/preferences.d/golden-ami-point-release-kernel"


def build_debootstrap(cfg: Resolved, progress: Progress, accel: Optional[Accelerator] = None,
                      point_release_kernel: bool = False) -> BaseImage:
    """Build the base disk from the suite, its -updates and its -security pockets.

    point_release_kernel: keep the kernel of the point release (everything else current), as
    a vendor image a few weeks old would have - the golden build then has a newer kernel to
    install and must reboot into it. Used by the end-to-end tests to prove that path.
    """
    source = cfg.target_os.source
    if source.recipe != "debootstrap":
        raise UserError(
            f"{cfg.os.name} has no base-image recipe on this machine: supply its cloud image with "
            f"invoke base-image --os={cfg.os.name} --from PATH"
        )
    layout = cfg.settings.disk_layout
    if os.geteuid() != 0:
        raise UserError("invoke base-image needs root (mmdebstrap creates device nodes and file owners): run it as root")
    for tool in ("mmdebstrap", "mke2fs", "debugfs", "sfdisk", "qemu-img", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} is not installed (needed to build a base image): run invoke doctor")
    local = cfg.settings.local
    accel = accel or choose_accelerator(local.accelerator, cfg.state_dir)
    final = cache_dir(cfg.state_dir, cfg.os.name, layout)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".work-{cfg.os.name}-", dir=final.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".scratch-{cfg.os.name}-", dir=final.parent))
    try:
        rootfs = scratch / "rootfs"
        suite = source.suite or "stable"
        components = " ".join(source.components or ["main"])
        mirrors = [
            f"deb {local.debian_mirror} {suite} {components}",
            f"deb {local.debian_mirror} {suite}-updates {components}",
            f"deb {local.debian_security_mirror} {suite}-security {components}",
        ]
        hooks = []
        if point_release_kernel:
            # Hold back the kernel meta-package(s) of the package list to the point release; the
            # kernel they depend on then comes from there too.
            kernel_meta = " ".join(p for p in source.packages if p.startswith("linux-image-"))
            if not kernel_meta:
                raise UserError(f"os/{cfg.os.name}.yaml lists no linux-image-* package to hold back")
            pin = "".join(f"Package: {kernel_meta}\nPin: release n={suite}-{pocket}\nPin-Priority: -1\n\n"
                          for pocket in ("updates", "security"))
            hooks = [f"--setup-hook=mkdir -p \"$1/etc/apt/preferences.d\" && printf %s {shlex.quote(pin)} "
                     f"> \"$1/{POINT_RELEASE_PIN}\""]
        with progress.step(f"bootstrap {suite} from {local.debian_mirror}"):
            argv = ["mmdebstrap", "--variant=apt", "--include=" + ",".join(source.packages), *hooks, suite,
                    str(rootfs), *mirrors]
            status = run_streaming(argv, log_path=scratch / "mmdebstrap.log", progress=progress, timeout_seconds=3600,
                                   interrupt_signal=signal.SIGTERM, interrupt_grace_seconds=120)
            if status != 0:
                tail = " | ".join((scratch / "mmdebstrap.log").read_text(errors="replace").strip().splitlines()[-3:])
                raise StepFailed(f"mmdebstrap failed (exit {status}): {tail}")
        _write_sources(rootfs, mirrors)
        (rootfs / POINT_RELEASE_PIN).unlink(missing_ok=True)  # the golden build may upgrade the kernel
        disk = disk_layout.plan(layout)
        root_uuid = disk.root.uuid
        _configure_rootfs(rootfs, disk.fstab, cfg.target_os.login_user)
        kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
        initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise RuntimeError("the bootstrap installed no kernel/initrd: check the package list in the OS data")
        kernel_version = kernels[-1].name.removeprefix("vmlinuz-")

        raw = scratch / "disk.raw"
        with progress.step(f"write the disk ({layout} layout: partition table + "
                           f"{len(disk.filesystems)} ext4 filesystem(s))"):
            trees = disk_layout.split_tree(rootfs, disk, scratch)
            disk_layout.write_disk(raw, disk, trees, _run)

        serial = scratch / "finalize-serial.log"
        with progress.step(f"install the boot loader inside the guest ({accel.name})"):
            argv = ["qemu-system-x86_64", *accel.qemu_args, "-smp", str(local.cpus), "-m", str(local.memory_mb),
                    "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
                    "-serial", f"file:{serial}",
                    "-drive", f"file={raw},format=raw,if=virtio",
                    "-kernel", str(kernels[-1]), "-initrd", str(initrds[-1]),
                    "-append", f"root=UUID={root_uuid} ro console=ttyS0 systemd.unit=golden-ami-finalize.target"]
            _boot_once(argv, serial, timeout_seconds=max(600, local.boot_timeout_seconds))

        with progress.step("convert to a compressed qcow2"):
            _run(["qemu-img", "convert", "-c", "-O", "qcow2", "-f", "raw", str(raw), str(work / BASE_FILE)],
                 "convert the disk to qcow2")
        shutil.copy2(kernels[-1], work / KERNEL_FILE)  # kept for the KVM probe
        digest = sha256_file(work / BASE_FILE)
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        _write_meta(work, {
            "os": cfg.os.name, "recipe": "debootstrap", "suite": suite, "mirror": local.debian_mirror,
            "name": f"{cfg.os.name}-base-{'' if layout == 'single' else layout + '-'}{created[:10]}",
            "sha256": digest, "kernel": kernel_version,
            "packages": list(source.packages), "created_at": created, "accelerator": accel.name,
            "point_release_kernel": point_release_kernel, "disk_layout": layout,
            "filesystems": [fs.mount for fs in disk.filesystems],
        })
        _publish(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        remove_tree(scratch)
    image = load(cfg.state_dir, cfg.os.name, layout)
    assert image is not None
    return image


def _boot_once(argv: list[str], serial: Path, timeout_seconds: float) -> None:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        try:
            _, err = proc.communicate(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"the finalize boot did not power off within {timeout_seconds:.0f} s "
                               f"(serial log: {serial.name})") from None
    finally:
        stop_process(proc, grace_seconds=5)
    log = serial.read_text(errors="replace") if serial.exists() else ""
    if proc.returncode != 0 or FINALIZE_MARKER not in log:
        tail = " | ".join(log.strip().splitlines()[-5:])
        raise StepFailed(f"installing the boot loader failed (qemu exit {proc.returncode}): {tail or err.decode()[-300:]}")
