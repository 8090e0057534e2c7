"""Shared shell helpers live once, in hardening/lib/: no section keeps its own copy of a helper
another section also needs, and no rendered build directory defines a function twice."""
import re
import shlex
import subprocess
from collections import defaultdict

import pytest

from golden_ami import catalogue, config, paths, render
from golden_ami.layout import SHELL_LIBRARY
from tests.conftest import SITE_VALUES, site_overrides

LOCAL_SOURCE = render.SourceImage(id="sha256:" + "1" * 64, name="base", location="/images/base.qcow2",
                                  checksum="sha256:" + "1" * 64)
AWS_SOURCE = render.SourceImage(id="ami-0123456789abcdef0", name="debian-12-amd64-20261101", location="us-east-1")
CASES = [(os_name, target) for os_name in config.available_os() for target in config.TARGETS]
PROFILES = catalogue.PROFILES

# A shell function definition at the start of a line (indented ones included): `name() {`.
DEFINITION = re.compile(r"^[ \t]*([A-Za-z_][A-Za-z0-9_]*)\(\)[ \t]*\{", re.MULTILINE)
# The package-manager libraries are alternatives: a render includes exactly one of them.
PKG_LIBS = "lib/pkg-*.sh.j2"


def _shell_templates():
    """hardening/ and its shell templates: the sections and the libraries they include."""
    root = paths.HARDENING_DIR
    return root, sorted([*root.glob("*.sh.j2"), *root.glob("lib/*.j2")])


def _homes() -> dict[str, set[str]]:
    """Each function name and the template files that define it (the pkg-* libraries as one)."""
    root, templates = _shell_templates()
    homes = defaultdict(set)
    for template in templates:
        relative = template.relative_to(root).as_posix()
        home = PKG_LIBS if re.fullmatch(r"lib/pkg-[a-z]+\.sh\.j2", relative) else relative
        for name in DEFINITION.findall(template.read_text()):
            homes[name].add(home)
    return homes


def test_every_shell_function_is_defined_in_one_template_file():
    twice = {name: sorted(files) for name, files in _homes().items() if len(files) > 1}
    assert twice == {}, f"defined in more than one file under hardening/ (move it to hardening/lib/): {twice}"


def test_the_package_manager_libraries_define_the_same_functions():
    root, _ = _shell_templates()
    defined = {path.name: sorted(set(DEFINITION.findall(path.read_text()))) for path in root.glob(PKG_LIBS)}
    assert len(defined) >= 2 and len({tuple(names) for names in defined.values()}) == 1, defined


def test_sections_leave_package_manager_differences_to_the_pkg_libraries():
    root, _ = _shell_templates()
    for section in root.glob("*.sh.j2"):
        text = section.read_text()
        assert re.search(r"\b(apt-get|dnf) [^\n]*\b(purge|remove)\b", text) is None, section.name


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("os_name, target", CASES)
def test_no_rendered_build_defines_a_function_twice(state_dir, tmp_path, os_name, target, profile):
    """Across the whole build directory: the library (files/lib/) and every section script."""
    cfg = config.resolve(os_name, target, overrides=site_overrides(profile=profile))
    result = render.render(cfg, LOCAL_SOURCE if target == "local" else AWS_SOURCE, tmp_path / "build")
    library = result.directory / SHELL_LIBRARY
    scripts = sorted((result.directory / "scripts").glob("*.sh"))
    assert scripts and library.is_file()
    where = defaultdict(list)
    for path in [library, *scripts]:
        for name in DEFINITION.findall(path.read_text()):
            where[name].append(path.relative_to(result.directory).as_posix())
    twice = {name: files for name, files in where.items() if len(files) > 1}
    assert twice == {}, f"functions defined more than once in the build directory: {twice}"
    # Every section reads the library, and takes its helpers from nowhere else.
    for script in scripts:
        assert f". /var/tmp/golden-ami/{SHELL_LIBRARY}\n" in script.read_text(), f"{script.name} does not source the library"


@pytest.mark.parametrize("rpm_stdout, rpm_status, wanted_status, wanted_lines", [
    ("", 0, 0, []),
    # rpm -Va exits 1 whenever a file differs: the lines are the answer, configuration files aside.
    ("S.5....T.  c /etc/ssh/sshd_config\n.......T.    /usr/bin/su\n", 1, 0, [".......T.    /usr/bin/su"]),
    # Exit 1 with nothing named: rpm could not verify at all, which is not "all match".
    ("", 1, 1, []),
])
def test_the_dnf_library_tells_a_failed_package_verification_from_changed_files(
        state_dir, tmp_path, rpm_stdout, rpm_status, wanted_status, wanted_lines):
    result = render.render(config.resolve("al2023", "aws", overrides=SITE_VALUES), AWS_SOURCE, tmp_path / "build")
    fake = tmp_path / "bin"
    fake.mkdir()
    complaint = "echo 'error: cannot open Packages database' >&2\n" if rpm_status and not rpm_stdout else ""
    (fake / "rpm").write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(rpm_stdout)}\n{complaint}exit {rpm_status}\n")
    (fake / "rpm").chmod(0o755)
    proc = subprocess.run(["bash", "-c", 'set -o errexit -o nounset -o pipefail; GA_SECTION=test; . "$1"; pkg_verify_changed',
                           "test", str(result.directory / SHELL_LIBRARY)],
                          capture_output=True, text=True, env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert proc.returncode == wanted_status, proc.stderr
    assert proc.stdout.splitlines() == wanted_lines
    if wanted_status:
        assert "rpm -Va failed (exit 1)" in proc.stderr


def test_key_value_reads_the_last_assignment_and_refuses_a_missing_file(state_dir, tmp_path):
    """The one reader of KEY=VALUE files (set_key_value, 1.6.1.4's mode, the gate's 1.6.1.5)."""
    result = render.render(config.resolve("debian12", "local"), LOCAL_SOURCE, tmp_path / "build")
    conf = tmp_path / "config"
    conf.write_text("# SELINUX=disabled\nSELINUX=permissive\nSELINUXTYPE=targeted\n  SELINUX = enforcing\n")

    def key_value(path, key):
        return subprocess.run(["bash", "-c", 'set -o errexit -o nounset -o pipefail; GA_SECTION=test; . "$1"; '
                               'value="$(key_value "$2" "$3")"; printf "%s" "$value"',
                               "test", str(result.directory / SHELL_LIBRARY), str(path), key],
                              capture_output=True, text=True)

    assert key_value(conf, "SELINUX").stdout == "enforcing"
    assert key_value(conf, "SELINUXTYPE").stdout == "targeted"
    assert key_value(conf, "MISSING").returncode == 0 and key_value(conf, "MISSING").stdout == ""
    missing = key_value(tmp_path / "no-such-file", "SELINUX")
    assert missing.returncode != 0 and "no-such-file" in missing.stderr


def test_modules_refused_on_the_machine_get_the_lines_the_rendered_drop_ins_have(state_dir, tmp_path):
    """modprobe_refusals (unused filesystems, wireless drivers) and the rendered drop-ins
    (3.1.3's sctp here) write one form: files/kernel-modules.jinja's lines."""
    result = render.render(config.resolve("debian12", "local"), LOCAL_SOURCE, tmp_path / "build")
    rendered = [line for line in (result.directory / "files/cis-network/modprobe.conf").read_text().splitlines()
                if line.split()[1:2] == ["sctp"]]
    made = subprocess.run(["bash", "-c", 'set -o errexit -o nounset -o pipefail; GA_SECTION=test; . "$1"; '
                           'printf "sctp\\n" | modprobe_refusals', "test", str(result.directory / SHELL_LIBRARY)],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert made == rendered == ["install sctp /bin/false", "blacklist sctp", "softdep sctp pre: post:"]
