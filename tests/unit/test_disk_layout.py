"""The local base disk's layouts (golden_ami/targets/local/disk_layout.py): partitions that do not
overlap and fit the disk, the root filesystem last (so it can grow), an fstab that mounts parents
first, and a bootstrapped tree split at the mount points with their owners and modes kept."""
import os
import stat

import pytest

from golden_ami.targets.local import disk_layout
from golden_ami.targets.local.disk_layout import MIB, SECTOR

CIS_MOUNTS = {"/home", "/var", "/var/tmp", "/var/log", "/var/log/audit"}


@pytest.mark.parametrize("layout", disk_layout.LAYOUTS)
def test_partitions_fit_the_disk_without_overlap_and_the_root_filesystem_is_last(layout):
    plan = disk_layout.plan(layout)
    assert plan.root.mount == "/" and plan.filesystems[-1] is plan.root
    end = disk_layout.FIRST_PARTITION_OFFSET + (disk_layout.BIOS_BOOT_MB * MIB if layout == "cis" else 0)
    for fs in plan.filesystems:
        assert fs.offset >= end, f"{fs.mount} overlaps the partition before it"
        assert fs.offset % MIB == 0 and fs.size % MIB == 0, f"{fs.mount} is not aligned to 1 MiB"
        end = fs.offset + fs.size
    assert end <= plan.disk_bytes - (disk_layout.GPT_BACKUP_MB * MIB if layout == "cis" else 0)
    assert plan.root.size >= 1024 * MIB, "the root filesystem needs room for the hardened system"


def test_the_cis_layout_has_the_benchmarks_separate_filesystems_and_single_has_one():
    assert {fs.mount for fs in disk_layout.plan("cis").filesystems} == CIS_MOUNTS | {"/"}
    assert [fs.mount for fs in disk_layout.plan("single").filesystems] == ["/"]
    with pytest.raises(ValueError, match="unknown disk layout 'lvm'"):
        disk_layout.plan("lvm")


def test_each_plan_has_new_filesystem_uuids():
    first, second = disk_layout.plan("cis"), disk_layout.plan("cis")
    uuids = [fs.uuid for fs in first.filesystems]
    assert len(set(uuids)) == len(uuids)
    assert not set(uuids) & {fs.uuid for fs in second.filesystems}


def test_fstab_mounts_parents_first_with_plain_defaults():
    plan = disk_layout.plan("cis")
    lines = [line.split() for line in plan.fstab.splitlines()]
    order = [fields[1] for fields in lines]
    for index, mount in enumerate(order):
        parents = [m for m in order if m != mount and (m == "/" or mount.startswith(m + "/"))]
        assert all(order.index(p) < index for p in parents), order
    by_mount = {fields[1]: fields for fields in lines}
    assert by_mount["/"][3] == "defaults,errors=remount-ro" and by_mount["/"][5] == "1"
    # The options CIS asks for are the hardening's to add; the base image must fail those checks.
    assert {by_mount[m][3] for m in CIS_MOUNTS} == {"defaults"}
    assert {fs.uuid for fs in plan.filesystems} == {fields[0].removeprefix("UUID=") for fields in lines}


def test_sfdisk_scripts():
    single = disk_layout.plan("single").sfdisk_script
    assert single.startswith("label: dos\n") and "start=2048, type=83, bootable" in single
    cis = disk_layout.plan("cis")
    lines = cis.sfdisk_script.splitlines()
    assert lines[0] == "label: gpt"
    assert f"type={disk_layout.BIOS_BOOT_TYPE}" in lines[1] and "start=2048, size=2048," in lines[1]
    assert disk_layout.BIOS_BOOT_TYPE == "21686148-6449-6E6F-744E-656564454649"
    for fs, line in zip(cis.filesystems, lines[2:], strict=True):
        assert line == (f"start={fs.offset // SECTOR}, size={fs.size // SECTOR}, "
                        f"type={disk_layout.LINUX_FS_TYPE}, name={fs.label}")


def test_split_tree_moves_each_subtree_and_leaves_its_mount_point(tmp_path):
    rootfs = tmp_path / "rootfs"
    for directory in ("etc", "var/lib/dpkg", "var/log/apt", "var/tmp", "home"):
        (rootfs / directory).mkdir(parents=True)
    (rootfs / "var/tmp").chmod(0o1777)
    (rootfs / "var/log").chmod(0o755)
    (rootfs / "var/lib/dpkg/status").write_text("status\n")
    (rootfs / "var/log/apt/history.log").write_text("log\n")
    (rootfs / "etc/hostname").write_text("localhost\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    trees = disk_layout.split_tree(rootfs, disk_layout.plan("cis"), scratch)

    assert set(trees) == CIS_MOUNTS | {"/"} and trees["/"] == rootfs
    assert (rootfs / "etc/hostname").is_file()
    # every mount point is an empty directory in the filesystem above it
    assert sorted(os.listdir(rootfs / "var")) == []
    assert sorted(os.listdir(trees["/var"])) == ["lib", "log", "tmp"]
    assert os.listdir(trees["/var"] / "log") == [] and os.listdir(trees["/var"] / "tmp") == []
    assert sorted(os.listdir(trees["/var/log"])) == ["apt", "audit"] and os.listdir(trees["/var/log"] / "audit") == []
    assert (trees["/var"] / "lib/dpkg/status").read_text() == "status\n"
    assert (trees["/var/log"] / "apt/history.log").read_text() == "log\n"
    # modes kept on both sides of the mount point; an audit log directory made root's alone
    assert stat.S_IMODE(trees["/var/tmp"].stat().st_mode) == 0o1777
    assert stat.S_IMODE((trees["/var"] / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE(trees["/var/log/audit"].stat().st_mode) == 0o700
    assert stat.S_IMODE((trees["/var/log"] / "audit").stat().st_mode) == 0o700
