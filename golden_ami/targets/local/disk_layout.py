"""How a local base disk is divided into filesystems: one root filesystem, or the CIS layout.

single: one ext4 root filesystem on a DOS partition table, as the cloud images of the
  distributions have.
cis: separate filesystems for /home, /var, /var/tmp, /var/log and /var/log/audit (the CIS
  "separate partition" recommendations, Level 2), so that the Level 1 mount options of those
  filesystems (nodev, nosuid, noexec) can be set by the hardening. GPT, because there are more
  than four partitions; a 1 MiB BIOS boot partition holds GRUB's core image. The root
  filesystem is the last partition, so cloud-init's growpart can still grow it to the size of
  the instance's disk; the others keep the sizes below.

The filesystems are written without loop devices or mounts: the bootstrapped tree is split at
the mount points (each subtree moved to a directory of its own, an empty mount point left in
its place, deepest first), and mke2fs -d writes each directory at its partition's offset.
The fstab the base image boots with mounts them with plain defaults, as an installer would:
the mount options are the hardening's work (hardening/51-cis-initial-setup), and the checks
(verify/test_cis_initial_setup.py) must see a base image fail them.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import StepFailed

LAYOUTS = ("single", "cis")
SECTOR = 512
MIB = 1024 * 1024
FIRST_PARTITION_OFFSET = MIB  # GRUB's core sits before it (DOS) or in the BIOS boot partition (GPT)
BIOS_BOOT_MB = 1
GPT_BACKUP_MB = 1  # the backup GPT at the end of the disk
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"  # "Hah!IdontNeedEFI"
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # not the mount-point types: fstab decides


@dataclass(frozen=True)
class Filesystem:
    mount: str
    label: str
    size_mb: int  # 0: the rest of the disk (the root filesystem)
    uuid: str = ""
    offset: int = 0  # bytes from the start of the disk
    size: int = 0  # bytes

    @property
    def fstab_line(self) -> str:
        options, passno = ("defaults,errors=remount-ro", 1) if self.mount == "/" else ("defaults", 2)
        return f"UUID={self.uuid} {self.mount} ext4 {options} 0 {passno}\n"


# Sizes for a 4 GiB base disk: /var holds the package lists and what a build downloads before
# the image's clean-up; the root filesystem keeps about 1.8 GiB and grows with the instance's disk.
_CIS_FILESYSTEMS = (("/home", "home", 256), ("/var", "var", 1024), ("/var/tmp", "vartmp", 256),
                    ("/var/log", "varlog", 512), ("/var/log/audit", "audit", 256))
DISK_MB = {"single": 3072, "cis": 4096}


@dataclass(frozen=True)
class Plan:
    layout: str
    disk_bytes: int
    filesystems: tuple[Filesystem, ...]  # in partition order; the root filesystem last

    @property
    def root(self) -> Filesystem:
        return self.filesystems[-1]

    @property
    def fstab(self) -> str:
        # Parents before children, so each mount point exists when it is mounted.
        ordered = sorted(self.filesystems, key=lambda fs: (fs.mount != "/", fs.mount.count("/"), fs.mount))
        return "".join(fs.fstab_line for fs in ordered)

    @property
    def sfdisk_script(self) -> str:
        if self.layout == "single":
            return f"label: dos\nstart={self.root.offset // SECTOR}, type=83, bootable\n"
        lines = ["label: gpt",
                 f"start={FIRST_PARTITION_OFFSET // SECTOR}, size={BIOS_BOOT_MB * MIB // SECTOR}, "
                 f"type={BIOS_BOOT_TYPE}, name=bios-boot"]
        lines += [f"start={fs.offset // SECTOR}, size={fs.size // SECTOR}, type={LINUX_FS_TYPE}, name={fs.label}"
                  for fs in self.filesystems]
        return "\n".join(lines) + "\n"


def plan(layout: str) -> Plan:
    """Offsets, sizes and new UUIDs of the layout's filesystems."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown disk layout {layout!r}: choose {' or '.join(LAYOUTS)}")
    disk = DISK_MB[layout] * MIB
    if layout == "single":
        return Plan(layout, disk, (Filesystem("/", "root", 0, str(uuid.uuid4()), FIRST_PARTITION_OFFSET,
                                              disk - FIRST_PARTITION_OFFSET),))
    offset = FIRST_PARTITION_OFFSET + BIOS_BOOT_MB * MIB
    filesystems = []
    for mount, label, size_mb in _CIS_FILESYSTEMS:
        filesystems.append(Filesystem(mount, label, size_mb, str(uuid.uuid4()), offset, size_mb * MIB))
        offset += size_mb * MIB
    filesystems.append(Filesystem("/", "root", 0, str(uuid.uuid4()), offset, disk - GPT_BACKUP_MB * MIB - offset))
    return Plan(layout, disk, tuple(filesystems))


def split_tree(rootfs: Path, disk: Plan, scratch: Path) -> dict[str, Path]:
    """Move each separate filesystem's subtree out of rootfs; {mount point: directory to write}.

    Deepest mount points first, so /var/log/audit leaves /var/log before /var/log leaves /var.
    Each mount point stays behind as an empty directory with the subtree's owner and mode;
    a mount point the bootstrap did not create (/var/log/audit before auditd) is made root's
    alone (0700), as a log directory of the audit daemon should start.
    """
    trees = {"/": rootfs}
    for fs in sorted(disk.filesystems[:-1], key=lambda fs: fs.mount.count("/"), reverse=True):
        source = rootfs / fs.mount.lstrip("/")
        staged = scratch / f"fs-{fs.label}"
        if source.is_dir():
            shutil.move(str(source), str(staged))
        else:
            staged.mkdir()
            os.chmod(staged, 0o700)  # whatever the umask
        info = staged.stat()
        source.mkdir(parents=True, exist_ok=True)
        os.chown(source, info.st_uid, info.st_gid)
        os.chmod(source, info.st_mode & 0o7777)
        trees[fs.mount] = staged
    return trees


def write_disk(raw: Path, disk: Plan, trees: dict[str, Path],
               run: Callable[..., subprocess.CompletedProcess]) -> None:
    """The partition table, then each filesystem at its offset, in one raw disk file.

    run(argv, what, input=...) runs a command, raises on a failed exit and returns the
    CompletedProcess (base_image._run).
    """
    with raw.open("wb") as handle:
        handle.truncate(disk.disk_bytes)
    run(["sfdisk", "--quiet", str(raw)], "write the partition table", input=disk.sfdisk_script)
    for fs in disk.filesystems:
        # nodiscard: the file is new and sparse, there is nothing to discard; mke2fs writes only
        # the filesystem's own blocks.
        run(["mke2fs", "-q", "-t", "ext4", "-L", fs.label, "-U", fs.uuid,
             "-E", f"offset={fs.offset},nodiscard", "-d", str(trees[fs.mount]), str(raw), f"{fs.size // 1024}k"],
            f"write the {fs.mount} filesystem")
        _set_root_owner_and_mode(raw, fs, trees[fs.mount].stat(), run)


_STAT_MODE = re.compile(r"\bMode:\s+([0-7]+)")
_STAT_OWNER = re.compile(r"\bUser:\s+(\d+)\s+Group:\s+(\d+)")


def _set_root_owner_and_mode(raw: Path, fs: Filesystem, info: os.stat_result,
                             run: Callable[..., subprocess.CompletedProcess]) -> None:
    """mke2fs -d gives a filesystem's root directory 0755 root:root, whatever the tree's own:
    /var/tmp must stay 1777, /var/log/audit 0700. debugfs sets it, in one session, and is read
    back: it exits 0 even when a request fails."""
    device = f"{raw}?offset={fs.offset}"
    mode = stat.S_IMODE(info.st_mode)
    run(["debugfs", "-w", "-f", "-", device], f"set the owner and mode of the {fs.mount} filesystem's root",
        input=(f"set_inode_field / mode 0{stat.S_IFDIR | mode:o}\nset_inode_field / uid {info.st_uid}\n"
               f"set_inode_field / gid {info.st_gid}\n"))
    shown = run(["debugfs", "-R", "stat /", device], f"read back the {fs.mount} filesystem's root").stdout
    found_mode, found_owner = _STAT_MODE.search(shown), _STAT_OWNER.search(shown)
    if not (found_mode and found_owner and int(found_mode.group(1), 8) == mode
            and (int(found_owner.group(1)), int(found_owner.group(2))) == (info.st_uid, info.st_gid)):
        raise StepFailed(f"the {fs.mount} filesystem's root did not get mode {mode:04o} and owner "
                         f"{info.st_uid}:{info.st_gid} (debugfs shows: {' | '.join(shown.splitlines()[:3])})")
