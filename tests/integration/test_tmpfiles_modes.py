"""restrict_tmpfiles_modes (control 5.1.2.7's hardening) run for real: the rendered shell
library against this machine's systemd-tmpfiles, in a private mount namespace where test
directories are bind-mounted over /usr/lib/tmpfiles.d, /etc/tmpfiles.d and /var/log/journal
(the machine's own files are never touched).

A tmpfiles.d file of systemd's that grants more than the benchmark (a world-writable journal
directory, world-readable journal files) is overridden in /etc/tmpfiles.d under its own name,
with only those modes lowered; the journal directory that exists gets the mode at once; a
second run changes nothing; compliant configuration is left alone.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from golden_ami.layout import SHELL_LIBRARY
from tests.conftest import required_tool
from tests.integration.conftest import rendered_build

pytestmark = pytest.mark.integration

SYSTEMD_CONF = ("z /var/log/journal {directory} root systemd-journal - -\n"
                "z /var/log/journal/%m 2755 root systemd-journal - -\n"
                "z /var/log/journal/%m/system.journal {file} root systemd-journal - -\n"
                "a+ /var/log/journal - - - - d:group:adm:r-x,group:adm:r-x\n"
                "d /var/lib/unrelated 0777 root root -\n")


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    return rendered_build(tmp_path_factory) / SHELL_LIBRARY


@pytest.fixture
def tmpfiles(tmp_path):
    required_tool("systemd-tmpfiles", "systemd (Debian's init)")
    required_tool("unshare", "util-linux (essential)")
    if os.geteuid() != 0 or not Path("/var/log/journal").is_dir():
        pytest.skip("needs root and a /var/log/journal to mount over (the README's test command runs as root)")
    dirs = {name: tmp_path / name for name in ("usr", "etc", "journal")}
    for directory in dirs.values():
        directory.mkdir()
    return dirs


def _run(library: Path, dirs: dict[str, Path]) -> subprocess.CompletedProcess:
    binds = "".join(f"mount --bind {shlex.quote(str(dirs[name]))} {target}\n" for name, target in
                    (("usr", "/usr/lib/tmpfiles.d"), ("etc", "/etc/tmpfiles.d"), ("journal", "/var/log/journal")))
    script = (f"set -o errexit -o nounset -o pipefail\n{binds}GA_SECTION=test\n. {shlex.quote(str(library))}\n"
              "restrict_tmpfiles_modes 0640 2755 /var/log/journal /run/log/journal\n")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, timeout=60)


def test_a_looser_systemd_file_is_overridden_in_etc_with_only_its_modes_lowered(library, tmpfiles):
    (tmpfiles["usr"] / "systemd.conf").write_text(SYSTEMD_CONF.format(directory="2777", file="0644"))
    tmpfiles["journal"].chmod(0o2777)
    done = _run(library, tmpfiles)
    assert done.returncode == 0, done.stderr
    override = (tmpfiles["etc"] / "systemd.conf").read_text().splitlines()
    assert "z /var/log/journal 2755 root systemd-journal - -" in override
    assert "z /var/log/journal/%m/system.journal 0640 root systemd-journal - -" in override
    assert "d /var/lib/unrelated 0777 root root -" in override  # not under the journal: left as it was
    assert (tmpfiles["usr"] / "systemd.conf").read_text() == SYSTEMD_CONF.format(directory="2777", file="0644")
    assert oct(tmpfiles["journal"].stat().st_mode & 0o7777) == "0o2755"  # applied now, not only at boot
    assert "changed: /etc/tmpfiles.d/systemd.conf: z /var/log/journal now mode 2755" in done.stdout

    again = _run(library, tmpfiles)
    assert again.returncode == 0, again.stderr
    assert "changed" not in again.stdout


def test_compliant_configuration_is_left_alone(library, tmpfiles):
    (tmpfiles["usr"] / "systemd.conf").write_text(SYSTEMD_CONF.format(directory="2755", file="0640"))
    done = _run(library, tmpfiles)
    assert done.returncode == 0, done.stderr
    assert list(tmpfiles["etc"].iterdir()) == [] and "changed" not in done.stdout


def test_an_override_in_etc_is_edited_where_it_is(library, tmpfiles):
    shutil.copy("/dev/null", tmpfiles["usr"] / "systemd.conf")
    (tmpfiles["etc"] / "journal-site.conf").write_text("Z /var/log/journal 2777 root systemd-journal - -\n")
    done = _run(library, tmpfiles)
    assert done.returncode == 0, done.stderr
    assert (tmpfiles["etc"] / "journal-site.conf").read_text() == "Z /var/log/journal 2755 root systemd-journal - -\n"
