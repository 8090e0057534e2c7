"""The rendered AIDE configuration, run by AIDE itself on a small tree of files.

AIDE's root_prefix makes it read <tree>/etc/shadow as /etc/shadow, so the configuration the
image gets is used unchanged apart from where its database lives. What a new instance changes at
its first boot must pass; every other change must be found. And verify/ga_aide.py, which the
checks use to read the configuration, must agree with AIDE on what decides each path.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from golden_ami import paths
from tests.conftest import required_tool
from tests.integration.conftest import rendered_build

sys.path.insert(0, str(paths.VERIFY_DIR))

import ga_aide  # noqa: E402

pytestmark = pytest.mark.integration

# A few files of each kind, relative to the tree: (path, content).
TREE = {
    "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "etc/hostname": "build\n",
    "etc/shadow": "root:*:20000:0:99999:7:::\n",
    "etc/ssh/sshd_config": "PermitRootLogin no\n",
    "etc/sudoers": "root ALL=(ALL:ALL) ALL\n",
    "boot/grub/grubenv": "# GRUB Environment Block\n",
    "boot/grub/grub.cfg": "set timeout=0\n",
    "usr/bin/passwd": "a program\n",
    "usr/sbin/auditctl": "an audit tool\n",
    "usr/lib/libexample.so": "a library\n",
    "usr/local/sbin/golden-ami-helper": "a helper\n",
    "var/lib/app/state": "data\n",
}
# Empty directories of the image (the firewall's drop-in directory).
TREE_DIRS = ("etc/nftables.d",)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    return rendered_build(tmp_path_factory, profile="cis-level2-server") / "files" / "cis-file-integrity"


@pytest.fixture(scope="module")
def aide_conf(rendered) -> str:
    return (rendered / "aide.conf").read_text()


@pytest.fixture
def aide(tmp_path, aide_conf):
    """(tree, check): a tree initialised into a database; check() runs `aide --check` on it."""
    binary = required_tool("aide", "scripts/install.sh --with-tests")
    tree = tmp_path / "tree"
    for relative, content in TREE.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_text(content)
    for relative in TREE_DIRS:
        (tree / relative).mkdir(parents=True)
    os.chmod(tree / "etc/shadow", 0o640)
    database = tmp_path / "aide.db"
    text = aide_conf.replace("file:/var/lib/aide/aide.db", f"file:{database}")
    assert text != aide_conf, "the rendered configuration no longer names /var/lib/aide/aide.db"
    conf = tmp_path / "aide.conf"
    conf.write_text(f"root_prefix={tree}\n" + text)

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "--config", str(conf), mode], capture_output=True, text=True, timeout=120)

    initialised = run("--init")
    assert initialised.returncode == 0, initialised.stderr
    Path(f"{database}.new").rename(database)
    return tree, lambda: run("--check"), (conf, database)


def test_the_accept_helper_makes_a_deliberate_change_the_new_baseline(aide, rendered, tmp_path):
    """golden-ami-aide-accept (what docs/app-teams.md tells a team to run after a change)."""
    tree, check, (conf, database) = aide
    helper = tmp_path / "golden-ami-aide-accept"
    text = (rendered / "golden-ami-aide-accept").read_text()
    moved = text.replace("conf=/etc/aide/aide.conf", f"conf={conf}").replace("database=/var/lib/aide/aide.db",
                                                                              f"database={database}")
    assert moved.count(str(tmp_path)) == 2, "the rendered helper no longer names the configuration and database"
    helper.write_text(moved)
    helper.chmod(0o755)
    (tree / "etc/nftables.d/web.nft").write_text("tcp dport 8080 accept\n")
    assert check().returncode == 1
    accepted = subprocess.run([str(helper)], capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Added: /etc/nftables.d/web.nft" in ga_aide.reported_entries(accepted.stdout)
    assert oct(database.stat().st_mode & 0o777) == "0o600" and not Path(f"{database}.new").exists()
    assert check().returncode == 0
    (tree / "etc/nftables.d/web.nft").write_text("tcp dport 8081 accept\n")
    assert check().returncode == 4, "after accepting, a later change is still found"


def test_a_first_boot_changes_nothing_aide_reports(aide):
    tree, check, _ = aide
    (tree / "etc/machine-id").write_text("fedcba9876543210fedcba9876543210\n")
    (tree / "etc/hostname").write_text("ip-10-0-0-7\n")
    # cloud-init sets up the login user: a new shadow file put in place by rename (a new inode)
    (tree / "etc/shadow.new").write_text("root:*:20000:0:99999:7:::\ndebian:!:20001:0:99999:7:::\n")
    os.chmod(tree / "etc/shadow.new", 0o640)
    (tree / "etc/shadow.new").rename(tree / "etc/shadow")
    (tree / "etc/ssh/ssh_host_ed25519_key").write_text("a host key\n")
    (tree / "etc/ssh/ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA\n")
    (tree / "boot/grub/grubenv").write_text("# GRUB Environment Block\nrecordfail=1\n")
    (tree / "var/lib/app/state").write_text("more data\n")
    # a tool writes a config file again with the same content (a new inode): not a change
    (tree / "etc/ssh/sshd_config.new").write_text("PermitRootLogin no\n")
    (tree / "etc/ssh/sshd_config.new").rename(tree / "etc/ssh/sshd_config")
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_audit_tool_written_again_with_the_same_content_is_still_found(aide):
    """The benchmark's attributes for the audit tools include the inode."""
    tree, check, _ = aide
    (tree / "usr/sbin/auditctl.new").write_text("an audit tool\n")
    (tree / "usr/sbin/auditctl.new").rename(tree / "usr/sbin/auditctl")
    result = check()
    assert result.returncode == 4 and "Changed: /usr/sbin/auditctl" in ga_aide.reported_entries(result.stdout)


@pytest.mark.parametrize("change, code, entry", [
    (lambda t: (t / "etc/ssh/sshd_config").write_text("PermitRootLogin yes\n"), 4, "Changed: /etc/ssh/sshd_config"),
    (lambda t: (t / "usr/sbin/auditctl").write_text("a replaced audit tool\n"), 4, "Changed: /usr/sbin/auditctl"),
    (lambda t: (t / "usr/lib/libexample.so").write_text("a library!\n"), 4, "Changed: /usr/lib/libexample.so"),
    (lambda t: os.chmod(t / "etc/shadow", 0o644), 4, "Changed: /etc/shadow"),
    (lambda t: (t / "usr/bin/new-tool").write_text("x\n"), 1, "Added: /usr/bin/new-tool"),
    (lambda t: (t / "usr/local/sbin/golden-ami-helper").unlink(), 2, "Removed: /usr/local/sbin/golden-ami-helper"),
    (lambda t: (t / "boot/grub/grub.cfg").write_text("set timeout=5\n"), 4, "Changed: /boot/grub/grub.cfg"),
], ids=["config", "audit tool", "library", "shadow readable", "new program", "removed helper", "boot config"])
def test_every_other_change_is_found_and_read_back(aide, change, code, entry):
    tree, check, _ = aide
    change(tree)
    result = check()
    assert result.returncode == code, result.stdout + result.stderr
    assert entry in ga_aide.reported_entries(result.stdout)


def test_the_checks_reading_of_the_configuration_agrees_with_aide(aide_conf):
    """For each file of the tree: ga_aide's deciding line compares content exactly where AIDE
    reports a content change (the tests above), and excludes exactly what AIDE ignores."""
    _, rules = ga_aide.parse(aide_conf)
    hashed = {path for path in ("/etc/ssh/sshd_config", "/usr/sbin/auditctl", "/usr/lib/libexample.so",
                                "/boot/grub/grub.cfg", "/usr/bin/passwd")}
    content_blind = {"/etc/machine-id", "/etc/hostname", "/etc/shadow"}
    excluded = {"/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub", "/boot/grub/grubenv"}
    for path in hashed:
        rule = ga_aide.deciding_rule(rules, path)
        assert rule is not None and rule.kind != "!" and rule.attributes & ga_aide.HASHES, (path, str(rule))
    for path in content_blind:
        rule = ga_aide.deciding_rule(rules, path)
        assert rule is not None and rule.kind != "!" and not rule.attributes & ga_aide.HASHES, (path, str(rule))
        assert "p" in rule.attributes, (path, str(rule))
    for path in excluded:
        assert ga_aide.deciding_rule(rules, path).kind == "!", path
    assert ga_aide.deciding_rule(rules, "/var/lib/app/state") is None
