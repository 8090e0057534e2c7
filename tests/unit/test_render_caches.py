"""The per-process caches of rendering (parsed YAML data, Jinja environments) are correct:
a changed file is read again, a caller's edits stay its own, and renders in one process give
the bytes that renders in fresh processes give. How fast they are is bench/figures.py's
business, never a test's."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from golden_ami import catalogue, config, packer, paths, render, yamlfiles
from tests.conftest import SITE_VALUES

from .test_render import AWS_SOURCE, LOCAL_SOURCE

OLD_NS = (time.time_ns() // 10**9 - 3600) * 10**9  # an hour ago: past the racy window


def _rewrite(path, text, mtime_ns):
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_changed_data_file_is_parsed_again(tmp_path):
    data = tmp_path / "data.yaml"
    _rewrite(data, "value: aaaa\n", OLD_NS)
    assert yamlfiles.load_cached(data) == {"value": "aaaa"}
    # Same size, one second newer: only the modification time tells the two apart.
    _rewrite(data, "value: bbbb\n", OLD_NS + 10**9)
    assert yamlfiles.load_cached(data) == {"value": "bbbb"}
    # Longer, same time: the size tells.
    _rewrite(data, "value: cccccc\n", OLD_NS + 10**9)
    assert yamlfiles.load_cached(data) == {"value": "cccccc"}


def test_a_file_rewritten_within_one_clock_tick_is_parsed_again(tmp_path):
    # A coarse file system clock can give two writes in a row the same time: an entry made
    # while its file was that fresh is checked against the bytes, not trusted on time and size.
    data = tmp_path / "data.yaml"
    data.write_text("value: aaaa\n")
    stamped = data.stat().st_mtime_ns
    assert yamlfiles.load_cached(data) == {"value": "aaaa"}
    _rewrite(data, "value: bbbb\n", stamped)
    assert yamlfiles.load_cached(data) == {"value": "bbbb"}


def test_each_caller_gets_a_copy_of_its_own(tmp_path):
    data = tmp_path / "data.yaml"
    _rewrite(data, "settings:\n  names: [a, b]\n", OLD_NS)
    first = yamlfiles.load_cached(data)
    first["settings"]["names"].append("edited")
    first["added"] = True
    assert yamlfiles.load_cached(data) == {"settings": {"names": ["a", "b"]}}
    specs = catalogue.load_catalogue()
    spec = next(s for s in specs if any(isinstance(v, list) for v in s.params.values()))
    name = next(n for n, v in spec.params.items() if isinstance(v, list))
    spec.params[name].append("edited")
    again = next(s for s in catalogue.load_catalogue() if s.id == spec.id)
    assert "edited" not in again.params[name]


def test_edited_os_data_and_catalogue_copies_are_what_the_next_resolve_reads(state_dir, tmp_path, monkeypatch):
    # Read the project's own files first, so their entries are in the cache.
    assert config.resolve("debian12").target_os.login_user == "debian"
    title = catalogue.load_catalogue()[0].title
    # A copy of each directory (same file names), each edit keeping the file's size; the first
    # edit even keeps the original's modification time, so only the path tells them apart.
    os_dir, controls_dir = tmp_path / "os", tmp_path / "controls"
    shutil.copytree(paths.OS_DATA_DIR, os_dir)
    shutil.copytree(paths.CONTROLS_DIR, controls_dir)
    monkeypatch.setattr(paths, "OS_DATA_DIR", os_dir)
    monkeypatch.setattr(paths, "CONTROLS_DIR", controls_dir)
    debian = os_dir / "debian12.yaml"
    original = (paths.PROJECT_ROOT / "os" / "debian12.yaml").stat().st_mtime_ns
    text = debian.read_text()
    _rewrite(debian, text.replace("login_user: debian", "login_user: debiax", 1), original)
    assert config.resolve("debian12").target_os.login_user == "debiax"
    _rewrite(debian, text.replace("login_user: debian", "login_user: debiay", 1), original + 10**9)
    assert config.resolve("debian12").target_os.login_user == "debiay"
    first = min(controls_dir.glob("*.yaml"))
    original = (paths.PROJECT_ROOT / "controls" / first.name).stat().st_mtime_ns
    text = first.read_text()
    _rewrite(first, text.replace(f"title: {title}", f"title: {title[:-1]}X", 1), original)
    assert catalogue.load_catalogue()[0].title == title[:-1] + "X"
    _rewrite(first, text.replace(f"title: {title}", f"title: {title[:-1]}Y", 1), original + 10**9)
    assert catalogue.load_catalogue()[0].title == title[:-1] + "Y"


COMBINATIONS = [("debian12", "local"), ("al2023", "aws"), ("ubuntu2404", "local"), ("debian12", "aws")]

_FRESH = """
import json, sys
from pathlib import Path
from golden_ami import config, render
from tests.conftest import SITE_VALUES
from tests.unit.test_render import AWS_SOURCE, LOCAL_SOURCE
os_name, target, out = sys.argv[1:]
source = LOCAL_SOURCE if target == "local" else AWS_SOURCE
result = render.render(config.resolve(os_name, target, overrides=SITE_VALUES), source, Path(out), packer_plugins=False)
print(json.dumps(result.fingerprint))
"""


def test_renders_in_one_process_match_renders_in_fresh_processes(state_dir, tmp_path):
    fresh = {}
    for os_name, target in COMBINATIONS:
        out = tmp_path / f"fresh-{os_name}-{target}"
        done = subprocess.run([sys.executable, "-c", _FRESH, os_name, target, str(out)], cwd=paths.PROJECT_ROOT,
                              env={**os.environ, "PYTHONPATH": str(paths.PROJECT_ROOT)}, capture_output=True,
                              text=True, check=True)
        fresh[os_name, target] = json.loads(done.stdout)
        assert json.loads((out / render.RENDER_MANIFEST).read_text())["fingerprint"] == fresh[os_name, target]
    # Twice round, in turn: each render follows renders of other OSes and targets.
    for round_ in range(2):
        for os_name, target in COMBINATIONS:
            source = LOCAL_SOURCE if target == "local" else AWS_SOURCE
            out = tmp_path / f"here-{round_}-{os_name}-{target}"
            result = render.render(config.resolve(os_name, target, overrides=SITE_VALUES), source, out,
                                   packer_plugins=False)
            manifest = json.loads((out / render.RENDER_MANIFEST).read_text())
            fresh_manifest = json.loads((tmp_path / f"fresh-{os_name}-{target}" / render.RENDER_MANIFEST).read_text())
            assert result.fingerprint == manifest["fingerprint"] == fresh[os_name, target], (round_, os_name, target)
            assert manifest == fresh_manifest


def test_environments_are_shared_and_hold_nothing_of_a_render(state_dir, tmp_path):
    assert render.shell_env() is render.shell_env() and render.hcl_env() is render.hcl_env()
    envs = (render.shell_env(), render.config_env(), render.hcl_env())
    assert len({id(env) for env in envs}) == 3
    before = [set(env.globals) for env in envs]
    render.render(config.resolve("debian12", "local"), LOCAL_SOURCE, tmp_path / "out", packer_plugins=False)
    assert [set(env.globals) for env in envs] == before


@pytest.fixture(autouse=True)
def _fresh_yaml_cache():
    yamlfiles.cache_clear()
    yield
    yamlfiles.cache_clear()


def _fake_packer(where, version, mtime_ns=None):
    script = where / "packer"
    script.write_text(f"#!/bin/sh\necho 'Packer v{version}'\n")
    script.chmod(0o755)
    if mtime_ns is not None:
        os.utime(script, ns=(mtime_ns, mtime_ns))
    return script


def test_packer_is_asked_again_when_its_binary_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _fake_packer(tmp_path, "1.6.6", OLD_NS)
    assert packer.version() == (1, 6, 6)
    _fake_packer(tmp_path, "1.8.6", OLD_NS + 10**9)  # same size, newer
    assert packer.version() == (1, 8, 6)
    script = _fake_packer(tmp_path, "1.9.6")  # fresh: not trusted on time and size
    assert packer.version() == (1, 9, 6)
    _fake_packer(tmp_path, "1.7.6", script.stat().st_mtime_ns)
    assert packer.version() == (1, 7, 6)


def test_a_control_as_a_dict_is_what_dataclasses_asdict_gives(state_dir):
    import dataclasses

    for os_name in config.available_os():
        for target in config.TARGETS:
            for control in catalogue.controls_for(config.resolve(os_name, target)).controls:
                as_dict = control.as_dict()
                assert list(as_dict.items()) == list(dataclasses.asdict(control).items())
                assert as_dict["params"] is not control.params or not control.params


def test_compiled_templates_are_kept_only_in_a_directory_no_one_else_can_write(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    where = tmp_path / "cache" / "golden-ami" / "templates"
    assert isinstance(render._bytecode_cache(), render.jinja2.FileSystemBytecodeCache)
    assert where.is_dir() and (where.stat().st_mode & 0o777) == 0o700
    where.chmod(0o770)  # a group that may write there could put code in it
    assert render._bytecode_cache() is None
    where.chmod(0o700)
    monkeypatch.setattr(os, "getuid", lambda: where.stat().st_uid + 1)  # someone else's directory
    assert render._bytecode_cache() is None


def test_a_render_in_a_new_process_leaves_compiled_templates_that_the_next_one_uses(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "GOLDEN_AMI_STATE_DIR": str(tmp_path / "state")}
    script = ("import sys, pathlib; from golden_ami import config, render; from tests.unit.test_render import LOCAL_SOURCE;"
              "print(render.render(config.resolve('debian12', 'local'), LOCAL_SOURCE, pathlib.Path(sys.argv[1])).fingerprint)")
    first = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a")], env=env, cwd=paths.PROJECT_ROOT,
                           capture_output=True, text=True, check=True).stdout
    cached = sorted((tmp_path / "cache" / "golden-ami" / "templates").iterdir())
    assert cached, "no compiled template was kept"
    second = subprocess.run([sys.executable, "-c", script, str(tmp_path / "b")], env=env, cwd=paths.PROJECT_ROOT,
                            capture_output=True, text=True, check=True).stdout
    assert first == second  # the same bytes from cached code as from freshly compiled code
