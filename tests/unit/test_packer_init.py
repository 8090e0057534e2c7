"""`packer init` runs before the build when the installed Packer has it (>= 1.7, where the
template's builder is a plugin), and not with Packer 1.6. A fake `packer` on PATH records how
it was called and fails the build, which ends the pipeline there."""
from __future__ import annotations

import os

import pytest

from golden_ami import config, pipeline, render
from golden_ami.errors import StepFailed
from golden_ami.progress import Progress
from golden_ami.targets.local.target import LocalTarget

FAKE_PACKER = """#!/bin/sh
printf '%s|%s\\n' "$(pwd -P)" "$*" >> {log}
case "$1" in
  version) echo "Packer v{version}" ;;
  build) exit 1 ;;
esac
exit 0
"""


class NoToolsTarget(LocalTarget):
    """The local target without QEMU or a base image: only Packer (the fake) runs."""

    def problems(self, cfg=None):
        return []

    def resolve_source(self, cfg, pinned=None):
        return render.SourceImage(id="sha256:" + "1" * 64, name="base", location="/nonexistent/base.qcow2",
                                  checksum="sha256:" + "1" * 64)

    def packer_variables(self, cfg, ctx):
        return {}


@pytest.mark.parametrize("version, runs_init", [("1.9.4", True), ("1.6.6", False)])
def test_packer_init_runs_in_the_build_dir_before_the_build_from_packer_1_7(state_dir, tmp_path, monkeypatch,
                                                                             version, runs_init):
    bin_dir, log = tmp_path / "bin", tmp_path / "packer-calls.log"
    bin_dir.mkdir()
    fake = bin_dir / "packer"
    fake.write_text(FAKE_PACKER.format(log=log, version=version))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(pipeline, "target_for", lambda cfg: NoToolsTarget(cfg.settings, cfg.state_dir))

    with pytest.raises(StepFailed, match="packer build failed"):
        pipeline.build(config.resolve("debian12", "local"), Progress(quiet=True))

    calls = [line.split("|", 1) for line in log.read_text().splitlines()]
    [build_dir] = list((state_dir / "builds").iterdir())
    after_version = [(cwd, args.split()) for cwd, args in calls if args != "version"]
    if runs_init:
        assert after_version[0] == (str(build_dir.resolve()), ["init", render.TEMPLATE_FILE])
        assert after_version[1][0] == str(build_dir.resolve()) and after_version[1][1][0] == "build"
        assert len(after_version) == 2
    else:
        assert [args[0] for _, args in after_version] == ["build"]
