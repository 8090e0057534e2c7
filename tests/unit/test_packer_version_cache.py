"""Packer's version, kept between processes (issue 11 item 5), stands only for the binary it was
asked of: a changed binary is asked again, a freshly written one is not trusted on its stat
alone, and a kept answer is read only from this user's private cache directory. How fast:
bench/figures.py, never a test."""
import json
import os
import subprocess
import sys
import time

import pytest

from golden_ami import packer, paths
from golden_ami.layout import RENDER_MANIFEST


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A cache home of the test's own, a PATH that finds the fake packer first, and no version
    remembered by this process (each test starts as a new process would)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(packer, "_VERSIONS", {})


def _counting_packer(where, version):
    """A fake packer that answers `version` and writes one line into asked.log each time it runs."""
    script = where / "bin" / "packer"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\necho asked >> '{where / 'asked.log'}'\necho 'Packer v{version}'\n")
    script.chmod(0o755)
    return script


def _asked(where):
    log = where / "asked.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _as_a_new_process():
    packer._VERSIONS.clear()


def _kept_files(where):
    return sorted((where / "cache" / "golden-ami" / "packer").glob("*.json"))


def test_a_packer_on_path_is_asked_once_across_two_renders_in_two_processes(tmp_path):
    _counting_packer(tmp_path, "1.8.6")
    env = {**os.environ, "GOLDEN_AMI_STATE_DIR": str(tmp_path / "state")}
    env.pop("GOLDEN_AMI_CONFIG", None)
    # RACY_NS = 0: the fake packer was written a moment ago, which alone would keep it from being kept.
    script = ("import sys, pathlib; from golden_ami import config, packer, render; from tests.unit.test_render import "
              "AWS_SOURCE; packer.RACY_NS = 0; print(render.render(config.resolve('debian12', 'aws'), AWS_SOURCE, "
              "pathlib.Path(sys.argv[1])).fingerprint)")
    fingerprints = [subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], env=env,
                                   cwd=paths.PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
                    for name in ("first", "second")]
    assert _asked(tmp_path) == 1
    assert fingerprints[0] == fingerprints[1]
    for name in ("first", "second"):
        assert json.loads((tmp_path / name / RENDER_MANIFEST).read_text())["packer_plugins"] is True


def test_a_kept_version_is_asked_again_when_the_binary_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(packer, "RACY_NS", 0)
    script = _counting_packer(tmp_path, "1.6.6")
    assert packer.version() == (1, 6, 6)
    _as_a_new_process()
    assert packer.version() == (1, 6, 6) and _asked(tmp_path) == 1  # kept
    assert len(_kept_files(tmp_path)) == 1
    # Rewritten in place with the same size, its modification time put back: the change time moves.
    before = script.stat()
    time.sleep(0.05)  # past the file system clock's tick
    script.write_text(script.read_text().replace("1.6.6", "1.8.6"))
    os.utime(script, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (script.stat().st_size, script.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    _as_a_new_process()
    assert packer.version() == (1, 8, 6) and _asked(tmp_path) == 2
    # Replaced by another file (a new inode) at the same path.
    replacement = tmp_path / "bin" / "packer.new"
    replacement.write_text(script.read_text().replace("1.8.6", "1.9.6"))
    replacement.chmod(0o755)
    os.replace(replacement, script)
    _as_a_new_process()
    assert packer.version() == (1, 9, 6) and _asked(tmp_path) == 3
    _as_a_new_process()
    assert packer.version() == (1, 9, 6) and _asked(tmp_path) == 3


def test_a_binary_written_a_moment_ago_is_asked_every_time(tmp_path):
    _counting_packer(tmp_path, "1.7.6")
    for _ in range(2):
        _as_a_new_process()
        assert packer.version() == (1, 7, 6)
    assert _asked(tmp_path) == 2
    assert _kept_files(tmp_path) == []


def test_a_kept_version_is_read_only_from_a_private_directory_and_only_for_its_own_key(tmp_path, monkeypatch):
    monkeypatch.setattr(packer, "RACY_NS", 0)
    _counting_packer(tmp_path, "1.6.6")
    packer.version()
    [kept] = _kept_files(tmp_path)
    # A version written there for another binary (or by hand) is not taken for this one.
    record = json.loads(kept.read_text())
    kept.write_text(json.dumps({"key": [*record["key"][:-1], record["key"][-1] + 1], "version": [9, 9, 9]}))
    _as_a_new_process()
    assert packer.version() == (1, 6, 6) and _asked(tmp_path) == 2
    for broken in ("", "{", json.dumps({"key": record["key"], "version": ["1", 9, 9]}), "[]"):
        kept.write_text(broken)
        _as_a_new_process()
        assert packer.version() == (1, 6, 6)
    asked = _asked(tmp_path)
    # A directory others may write: a version found there could steer the template; not read.
    kept.write_text(json.dumps({"key": record["key"], "version": [1, 9, 9]}))
    kept.parent.chmod(0o770)
    _as_a_new_process()
    assert packer.version() == (1, 6, 6) and _asked(tmp_path) == asked + 1
    kept.parent.chmod(0o700)
    _as_a_new_process()
    assert packer.version() == (1, 9, 9)  # the same file, now in a private directory: read
