"""refuse_unused_filesystem_modules (GA-MODULE-FS-UNUSED's hardening) run for real: the rendered
shell library in bash, against kernel module trees and a loaded-module list made here (the
modules.dep format depmod writes: "path: dependency ...", every dependency listed).

Refused: each module under kernel/fs of any installed kernel that is not loaded, not kept and
not needed by a loaded or kept module in any of the kernels ("-" and "_" are one); modules
outside kernel/fs never.
Each refused module also gets an empty softdep line (kmod ignores the install command of a module
with soft dependencies, as btrfs has on Debian 12: seen on a real VM). The drop-in is written
whole (with nothing to refuse, as a header alone), and a second run with
nothing new changes nothing; no filesystem module at all stops the build, naming the tree it read.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from golden_ami.layout import SHELL_LIBRARY
from tests.integration.conftest import rendered_build

pytestmark = pytest.mark.integration

OLD_KERNEL = """\
kernel/fs/ext4/ext4.ko.zst: kernel/fs/jbd2/jbd2.ko.zst kernel/fs/mbcache.ko.zst kernel/lib/crc16.ko.zst
kernel/fs/jbd2/jbd2.ko.zst:
kernel/fs/mbcache.ko.zst:
kernel/fs/nfs/nfs.ko.zst: kernel/fs/lockd/lockd.ko.zst kernel/fs/netfs/netfs.ko.zst kernel/net/sunrpc/sunrpc.ko.zst
kernel/fs/lockd/lockd.ko.zst: kernel/net/sunrpc/sunrpc.ko.zst
kernel/fs/netfs/netfs.ko.zst:
kernel/net/sunrpc/sunrpc.ko.zst:
kernel/lib/crc16.ko.zst:
kernel/fs/cifs/cifs.ko.zst: kernel/fs/smbfs_common/cifs_arc4.ko.zst kernel/fs/netfs/netfs.ko.zst
kernel/fs/smbfs_common/cifs_arc4.ko.zst:
kernel/fs/nls/nls_iso8859-1.ko.zst:
kernel/fs/isofs/isofs.ko.zst:
kernel/drivers/block/nbd.ko.zst:
"""
# The newer kernel brings a filesystem the older one lacks, and its nfs needs fscache, which the
# older kernel has standalone: needed in one kernel is needed (the drop-in applies to both).
NEW_KERNEL = (OLD_KERNEL.replace("kernel/fs/netfs/netfs.ko.zst kernel/net/sunrpc/sunrpc.ko.zst\n",
                                 "kernel/fs/netfs/netfs.ko.zst kernel/fs/fscache/fscache.ko.zst "
                                 "kernel/net/sunrpc/sunrpc.ko.zst\n", 1)
              + "kernel/fs/erofs/erofs.ko.zst: kernel/lib/crc16.ko.zst\n")
OLD_KERNEL += "kernel/fs/fscache/fscache.ko.zst:\n"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    return rendered_build(tmp_path_factory) / SHELL_LIBRARY


@pytest.fixture
def tree(tmp_path) -> dict[str, Path]:
    root = tmp_path / "lib-modules"
    for release, dep in (("6.8.0-1019-aws", OLD_KERNEL), ("6.8.0-1021-aws", NEW_KERNEL)):
        (root / release).mkdir(parents=True)
        (root / release / "modules.dep").write_text(dep)
    loaded = tmp_path / "proc-modules"
    # isofs (the seed CD) and nls_iso8859_1 are loaded: the build's own boot mounted them.
    loaded.write_text("isofs 61440 1 - Live 0x0000000000000000\nnls_iso8859_1 12288 1 - Live 0x0000000000000000\n")
    return {"root": root, "loaded": loaded, "conf": tmp_path / "modprobe.d" / "61-unused.conf"}


def _run(library: Path, tree: dict[str, Path], *kept: str) -> subprocess.CompletedProcess:
    tree["conf"].parent.mkdir(exist_ok=True)
    arguments = " ".join(shlex.quote(str(a)) for a in (tree["root"], tree["loaded"], tree["conf"], *kept))
    script = (f"set -o errexit -o nounset -o pipefail\nGA_SECTION=test\n. {shlex.quote(str(library))}\n"
              f"refuse_unused_filesystem_modules {arguments}\n")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)


def _refused(tree: dict[str, Path]) -> list[str]:
    lines = tree["conf"].read_text().splitlines()
    installs = [line.split()[1] for line in lines if line.startswith("install ")]
    assert [line.split()[1] for line in lines if line.startswith("blacklist ")] == installs
    assert all(line.endswith(" /bin/false") for line in lines if line.startswith("install "))
    # Empty soft dependencies: kmod ignores the install command of a module that has some.
    assert [line for line in lines if line.startswith("softdep ")] == [f"softdep {m} pre: post:" for m in installs]
    return installs


def test_what_is_neither_loaded_kept_nor_needed_is_refused(library, tree):
    done = _run(library, tree, "ext4", "nfs")
    assert done.returncode == 0, done.stderr
    # jbd2, mbcache (ext4's), lockd, netfs and - in the newer kernel - fscache (nfs's) are needed;
    # crc16, sunrpc and nbd are not under kernel/fs; erofs comes from the newer kernel only.
    assert _refused(tree) == ["cifs", "cifs_arc4", "erofs"]
    assert tree["conf"].stat().st_mode & 0o777 == 0o644
    assert f"changed: {tree['conf']} refuses 3 unused filesystem modules" in done.stdout


def test_a_kept_name_with_a_dash_keeps_the_module_and_a_rerun_changes_nothing(library, tree):
    assert _run(library, tree, "ext4", "nfs", "cifs").returncode == 0
    assert _refused(tree) == ["erofs"]
    again = _run(library, tree, "ext4", "nfs", "cifs")
    assert again.returncode == 0 and "changed" not in again.stdout
    (tree["root"] / "6.8.0-1021-aws" / "modules.dep").write_text(OLD_KERNEL)  # the newer kernel went
    assert "refuses 1 unused filesystem modules" in _run(library, tree, "ext4", "nfs", "cifs").stdout
    assert _refused(tree) == ["fscache"]  # no kernel's nfs needs it any more
    assert "refuses 0 unused" in _run(library, tree, "ext4", "nfs", "cifs", "fscache").stdout


def test_no_kernel_tree_at_all_stops_the_build(library, tree):
    for dep in tree["root"].glob("*/modules.dep"):
        dep.unlink()
    done = _run(library, tree, "ext4")
    assert done.returncode == 1
    assert f"STOPPED no modules.dep under {tree['root']}/*" in done.stderr


def test_no_filesystem_module_at_all_stops_the_build(library, tree):
    for dep in tree["root"].glob("*/modules.dep"):
        dep.write_text("kernel/drivers/block/nbd.ko.zst:\n")
    done = _run(library, tree, "ext4")
    assert done.returncode == 1
    assert f"STOPPED no filesystem module found under {tree['root']}/*/kernel/fs (modules.dep)" in done.stderr
    assert not tree["conf"].exists()
