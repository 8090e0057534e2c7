"""enforce_apparmor_profiles (GA-MAC-ALL-ENFORCING's hardening) run for real: the rendered shell
library in bash, against a profile directory and a kernel profile list made here, with a
stand-in aa-enforce on PATH that records what it is asked to switch (the real one reloads
profiles into this machine's kernel).

Profiles that load in complain mode - a complain flag on the profile line, or a link in
force-complain/ - are handed to aa-enforce, and only those (a commented-out flag is not one);
with none, nothing runs and nothing is logged as changed; a profile the kernel still has in
complain mode afterwards stops the build, naming it. A profile in unconfined mode (AppArmor 4 on
Ubuntu 24.04: a grant of user namespaces to a named program) is left as shipped.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from golden_ami.layout import SHELL_LIBRARY
from tests.integration.conftest import rendered_build

pytestmark = pytest.mark.integration

STAND_IN_AA_ENFORCE = """#!/bin/sh
printf '%s\\n' "$@" >>"$AA_ENFORCE_CALLS"
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    return rendered_build(tmp_path_factory) / SHELL_LIBRARY


@pytest.fixture
def apparmor(tmp_path) -> dict[str, Path]:
    paths = {"dir": tmp_path / "apparmor.d", "loaded": tmp_path / "profiles", "bin": tmp_path / "bin",
             "calls": tmp_path / "aa-enforce.calls"}
    (paths["dir"] / "force-complain").mkdir(parents=True)
    paths["bin"].mkdir()
    aa_enforce = paths["bin"] / "aa-enforce"
    aa_enforce.write_text(STAND_IN_AA_ENFORCE)
    aa_enforce.chmod(0o755)
    paths["loaded"].write_text("/usr/sbin/chronyd (enforce)\nlsb_release (enforce)\n")
    return paths


def _run(library: Path, paths: dict[str, Path]) -> subprocess.CompletedProcess:
    script = (f"set -o errexit -o nounset -o pipefail\nGA_SECTION=test\n. {shlex.quote(str(library))}\n"
              f"enforce_apparmor_profiles {shlex.quote(str(paths['dir']))} {shlex.quote(str(paths['loaded']))} "
              "apparmor-utils\n")
    env = {"PATH": f"{paths['bin']}:/usr/sbin:/usr/bin:/sbin:/bin", "AA_ENFORCE_CALLS": str(paths["calls"])}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)


def _calls(paths: dict[str, Path]) -> list[str]:
    return paths["calls"].read_text().splitlines() if paths["calls"].exists() else []


def test_profiles_in_complain_mode_are_handed_to_aa_enforce(library, apparmor):
    profiles = apparmor["dir"]
    (profiles / "usr.sbin.demo").write_text("profile demo /usr/sbin/demo flags=(attach_disconnected,complain) {\n}\n")
    (profiles / "usr.sbin.quiet").write_text("# flags=(complain) was here once\nprofile quiet /usr/sbin/quiet {\n}\n")
    (profiles / "usr.sbin.strict").write_text("profile strict /usr/sbin/strict flags=(attach_disconnected) {\n}\n")
    (profiles / "usr.sbin.forced").write_text("profile forced /usr/sbin/forced {\n}\n")
    (profiles / "force-complain" / "usr.sbin.forced").symlink_to(profiles / "usr.sbin.forced")
    done = _run(library, apparmor)
    assert done.returncode == 0, done.stderr
    assert sorted(_calls(apparmor)) == [str(profiles / "usr.sbin.demo"), str(profiles / "usr.sbin.forced")]
    assert "changed: AppArmor profiles put in enforce mode" in done.stdout


def test_nothing_in_complain_mode_changes_nothing(library, apparmor):
    (apparmor["dir"] / "usr.sbin.strict").write_text("profile strict /usr/sbin/strict {\n}\n")
    done = _run(library, apparmor)
    assert done.returncode == 0, done.stderr
    assert _calls(apparmor) == [] and "changed" not in done.stdout


def test_a_profile_the_kernel_still_has_in_complain_mode_stops_the_build(library, apparmor):
    apparmor["loaded"].write_text("/usr/sbin/chronyd (enforce)\nsnap-helper (complain)\n")
    done = _run(library, apparmor)
    assert done.returncode == 1
    assert "STOPPED AppArmor profiles still in complain mode: snap-helper (complain)" in done.stderr


def test_a_profile_in_unconfined_mode_is_left_as_shipped(library, apparmor):
    (apparmor["dir"] / "podman").write_text("abi <abi/4.0>,\nprofile podman /usr/bin/podman flags=(unconfined) {\n"
                                            "  userns,\n}\n")
    apparmor["loaded"].write_text("/usr/sbin/chronyd (enforce)\npodman (unconfined)\n")
    done = _run(library, apparmor)
    assert done.returncode == 0, done.stderr
    assert _calls(apparmor) == [] and "changed" not in done.stdout
