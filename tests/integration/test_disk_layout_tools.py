"""The CIS disk layout written by the real tools, and the fstab options the hardening sets.

- disk_layout.write_disk with sfdisk, mke2fs and debugfs on a small tree: the partition table
  as sfdisk reads it back (a BIOS boot partition GRUB can embed in, the filesystems at the
  planned offsets), each filesystem clean (e2fsck) with its files and its root directory's mode.
- set_fstab_options from the rendered shell library, run against a copy of an fstab bind-mounted
  over /etc/fstab in a private mount namespace (the machine's own fstab is never touched): the
  options are added, their opposites dropped, a second run changes nothing, and a mount point
  fstab does not name stops the build.
"""
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from golden_ami.errors import StepFailed
from golden_ami.layout import SHELL_LIBRARY
from golden_ami.targets.local import base_image, disk_layout
from tests.conftest import required_tool
from tests.integration.conftest import rendered_build

pytestmark = pytest.mark.integration



def _debugfs(raw: Path, fs: disk_layout.Filesystem, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, f"{raw}?offset={fs.offset}"], check=True,
                          capture_output=True, text=True).stdout


def test_write_disk_makes_the_planned_partitions_and_filesystems(tmp_path):
    for tool in ("sfdisk", "mke2fs", "debugfs", "e2fsck"):
        required_tool(tool, "scripts/install.sh (e2fsprogs, fdisk)")
    rootfs = tmp_path / "rootfs"
    for directory in ("etc", "boot", "var/lib/dpkg", "var/log", "var/tmp", "home"):
        (rootfs / directory).mkdir(parents=True)
    (rootfs / "var/tmp").chmod(0o1777)
    (rootfs / "etc/hostname").write_text("localhost\n")
    (rootfs / "var/lib/dpkg/status").write_text("status\n")
    (rootfs / "var/log/syslog").write_text("log\n")
    plan = disk_layout.plan("cis")
    trees = disk_layout.split_tree(rootfs, plan, tmp_path)
    raw = tmp_path / "disk.raw"
    disk_layout.write_disk(raw, plan, trees, base_image._run)

    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], check=True, capture_output=True,
                                      text=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    parts = table["partitions"]
    assert parts[0]["type"] == disk_layout.BIOS_BOOT_TYPE and parts[0]["start"] == 2048
    assert [(p["start"] * 512, p["size"] * 512, p["name"]) for p in parts[1:]] == \
        [(fs.offset, fs.size, fs.label) for fs in plan.filesystems]
    assert (parts[-1]["start"] + parts[-1]["size"]) * 512 <= plan.disk_bytes

    by_mount = {fs.mount: fs for fs in plan.filesystems}
    for fs in plan.filesystems:
        check = subprocess.run(["e2fsck", "-fn", f"{raw}?offset={fs.offset}"], capture_output=True, text=True)
        assert check.returncode == 0, f"{fs.mount}: {check.stdout}{check.stderr}"
        assert f"Filesystem UUID:          {fs.uuid}" in subprocess.run(
            ["dumpe2fs", "-h", f"{raw}?offset={fs.offset}"], capture_output=True, text=True).stdout
    assert "Mode:  01777" in _debugfs(raw, by_mount["/var/tmp"], "stat /")
    assert "Mode:  0700" in _debugfs(raw, by_mount["/var/log/audit"], "stat /")
    assert _debugfs(raw, by_mount["/var"], "cat /lib/dpkg/status") == "status\n"
    assert _debugfs(raw, by_mount["/var/log"], "cat /syslog") == "log\n"
    assert _debugfs(raw, by_mount["/"], "cat /etc/hostname") == "localhost\n"
    # the mount points, empty, in the filesystem above them
    for parent, child in (("/", "var"), ("/", "home"), ("/var", "log"), ("/var", "tmp"), ("/var/log", "audit")):
        listing = _debugfs(raw, by_mount[parent], f"ls -l /{child}").split()
        assert "lost+found" not in listing and ".." in listing, f"{parent}: /{child} is not an empty mount point"


def test_a_root_directory_debugfs_did_not_change_stops_the_build(tmp_path):
    """debugfs exits 0 when a request fails: write_disk reads each root back."""
    for tool in ("sfdisk", "mke2fs", "debugfs"):
        required_tool(tool, "scripts/install.sh (e2fsprogs, fdisk)")
    rootfs = tmp_path / "rootfs"
    for directory in ("home", "var/tmp"):
        (rootfs / directory).mkdir(parents=True)
        (rootfs / directory).chmod(0o755)  # /home and /var as mke2fs makes a root anyway
    (rootfs / "var/tmp").chmod(0o1777)
    plan = disk_layout.plan("cis")
    trees = disk_layout.split_tree(rootfs, plan, tmp_path)

    def run_without_setting(argv, what, **kwargs):
        if argv[:2] == ["debugfs", "-w"]:  # as if every request had failed
            return subprocess.CompletedProcess(argv, 0, "", "")
        return base_image._run(argv, what, **kwargs)

    with pytest.raises(StepFailed, match="the /var/tmp filesystem's root did not get mode 1777 and owner 0:0"):
        disk_layout.write_disk(tmp_path / "disk.raw", plan, trees, run_without_setting)


FSTAB = ("# /etc/fstab: static file system information.\n"
         "UUID=aaaa / ext4 defaults,errors=remount-ro 0 1\n"
         "UUID=bbbb /var ext4 defaults 0 2\n"
         "UUID=cccc /var/tmp ext4 defaults,exec,suid 0 2\n"
         "#UUID=dddd /home ext4 defaults 0 2\n")


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    return rendered_build(tmp_path_factory, disk_layout="cis") / SHELL_LIBRARY


def _run_on_fstab(tmp_path: Path, library: Path, calls: str, fstab: str = FSTAB) -> tuple[subprocess.CompletedProcess, str]:
    required_tool("unshare", "util-linux (essential)")
    copy = tmp_path / "fstab"
    copy.write_text(fstab)
    script = (f"set -o errexit -o nounset -o pipefail\nmount --bind {shlex.quote(str(copy))} /etc/fstab\n"
              f"GA_SECTION=test\n. {shlex.quote(str(library))}\n{calls}\n")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, timeout=60)
    return done, copy.read_text()


def test_set_fstab_options_adds_options_and_drops_their_opposites(tmp_path, library):
    done, fstab = _run_on_fstab(tmp_path, library, "set_fstab_options /var nodev,nosuid ''\n"
                                                   "set_fstab_options /var/tmp nodev,nosuid,noexec ''")
    assert done.returncode == 0, done.stderr
    assert "UUID=bbbb /var ext4 defaults,nodev,nosuid 0 2" in fstab.splitlines()
    assert "UUID=cccc /var/tmp ext4 defaults,nodev,nosuid,noexec 0 2" in fstab.splitlines()
    assert fstab.splitlines()[:2] == FSTAB.splitlines()[:2]  # comments and other lines as they were
    assert "changed: /etc/fstab mounts /var with nodev,nosuid" in done.stdout

    again, same = _run_on_fstab(tmp_path, library, "set_fstab_options /var nodev,nosuid ''\n"
                                                   "set_fstab_options /var/tmp nodev,nosuid,noexec ''", fstab)
    assert again.returncode == 0 and same == fstab and "changed" not in again.stdout


def test_set_fstab_options_stops_on_a_mount_point_fstab_does_not_name(tmp_path, library):
    # /home is only in a comment: the layout the controls were rendered for is not this disk's.
    done, fstab = _run_on_fstab(tmp_path, library, "set_fstab_options /home nodev,nosuid ''")
    assert done.returncode == 1 and fstab == FSTAB
    assert "STOPPED /etc/fstab mounts no separate /home" in done.stderr


def test_set_fstab_options_adds_the_given_line_when_missing(tmp_path, library):
    done, fstab = _run_on_fstab(tmp_path, library, "set_fstab_options /dev/shm nodev,noexec,nosuid "
                                                   "'tmpfs /dev/shm tmpfs defaults,nodev,noexec,nosuid 0 0'")
    assert done.returncode == 0, done.stderr
    assert fstab == FSTAB + "tmpfs /dev/shm tmpfs defaults,nodev,noexec,nosuid 0 0\n"
