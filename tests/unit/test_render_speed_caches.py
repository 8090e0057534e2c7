"""What makes a render fast must not change what it writes (issue 11 item 5): the JSON files are
what json.dumps writes, what is validated once is made again when its file changes, parsed YAML
kept between processes stands only for the bytes it was parsed from, and Packer's version,
asked while the rest renders, still decides the template. How fast: bench/figures.py, never a test."""
import datetime
import json
import os
import pickle
import shutil

import pytest

from golden_ami import benchmarks, catalogue, config, paths, render, yamlfiles
from golden_ami.errors import UserError

from .test_render import AWS_SOURCE, LOCAL_SOURCE
from .test_render_caches import OLD_NS, _fake_packer, _rewrite


@pytest.fixture(autouse=True)
def _own_caches(tmp_path, monkeypatch):
    """A cache home of the test's own, and no parsed file remembered from another test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yamlfiles.cache_clear()
    yield
    yamlfiles.cache_clear()


def _kept(tmp_path):
    return sorted((tmp_path / "cache" / "golden-ami" / "yaml").glob("*.pickle"))


class _Text(str):
    pass


@pytest.mark.parametrize("value", [
    {"b": 1, "a": [1, 2.5, -0.0, 1e300, 2**70, True, False, None], "c": {}, "d": [], "e": [[], {}, [{}]]},
    {"unicode ü ☃": "tab\t newline\n quote\" backslash\\ nul\x00 \u2028", "": ""},
    [("a", 1), {"z": {"y": {"x": []}}}],
    "just a string", 3, None, [], {},
    {"nan": float("nan"), "inf": [float("inf"), float("-inf")]},  # json's own spellings: NaN, Infinity
    {2: "int keys", 10: "sorted as ints"}, {2.5: "a float key"},  # keys json.dumps converts
    {True: "a bool key"}, {None: 1},
    {"text": _Text("a str subclass")}, [_Text("x")],
], ids=repr)
def test_json_files_are_byte_for_byte_what_json_dumps_writes(value):
    assert render.json_text(value) == json.dumps(value, sort_keys=True, indent=2)


def test_what_json_dumps_refuses_json_text_refuses():
    with pytest.raises(TypeError):
        render.json_text({"a": 1, 2: 3})  # keys that do not sort
    with pytest.raises(TypeError):
        render.json_text({"a": object()})
    looped: list = []
    looped.append(looped)
    with pytest.raises(ValueError, match="Circular"):
        render.json_text(looped)


def test_every_controls_json_is_what_json_dumps_writes_and_shares_nothing_it_should_not(state_dir):
    for os_name in config.available_os():
        for target in config.TARGETS:
            chosen = catalogue.controls_for(config.resolve(os_name, target))
            copied, shared = chosen.as_dict(), chosen.as_dict(shared=True)
            assert copied == shared
            assert render.json_text(shared) == json.dumps(copied, sort_keys=True, indent=2)
    control = next(c for c in chosen.controls if any(isinstance(v, list) for v in c.params.values()))
    name = next(n for n, v in control.params.items() if isinstance(v, list))
    assert control.as_dict(shared=True)["params"] is control.params
    control.as_dict()["params"][name].append("edited")
    assert "edited" not in control.params[name]


def test_a_derived_value_is_made_once_per_version_of_its_file(tmp_path):
    data = tmp_path / "data.yaml"
    _rewrite(data, "value: aaaa\n", OLD_NS)
    made = []

    def make(path, document):
        made.append((path.name, document))
        return document["value"]

    assert yamlfiles.derived(data, make) == yamlfiles.derived(data, make) == "aaaa"
    assert made == [("data.yaml", {"value": "aaaa"})]
    _rewrite(data, "value: bbbb\n", OLD_NS + 10**9)  # same size, newer
    assert yamlfiles.derived(data, make) == "bbbb" and len(made) == 2
    data.write_text("value: cccc\n")  # fresh: judged on its bytes, like load_cached
    assert yamlfiles.derived(data, make) == "cccc"
    _rewrite(data, "value: dddd\n", data.stat().st_mtime_ns)
    assert yamlfiles.derived(data, make) == "dddd"


def test_a_derived_value_that_fails_is_not_kept(tmp_path):
    data = tmp_path / "data.yaml"
    _rewrite(data, "value: aaaa\n", OLD_NS)
    calls = []

    def refuse(path, document):
        calls.append(path)
        raise UserError("no")

    for _ in range(2):
        with pytest.raises(UserError):
            yamlfiles.derived(data, refuse)
    assert len(calls) == 2


def test_a_benchmark_list_is_validated_again_when_it_changes_and_a_bad_one_is_named(tmp_path, monkeypatch):
    where = tmp_path / "benchmarks"
    shutil.copytree(paths.CONTROLS_DIR / "benchmarks", where)
    monkeypatch.setattr(benchmarks, "BENCHMARKS_DIR", where)
    listed = where / "debian12.yaml"
    text = listed.read_text()
    assert benchmarks.load("debian12").benchmark.version == "v1.1.0"
    assert benchmarks.load("debian12") is benchmarks.load("debian12")  # frozen: one per process
    # Same size, one second newer: only the modification time tells.
    _rewrite(listed, text.replace('version: "v1.1.0"', 'version: "v9.9.9"', 1), listed.stat().st_mtime_ns + 10**9)
    assert benchmarks.load("debian12").benchmark.version == "v9.9.9"
    listed.write_text("benchmark: {name: x, version: '1'}\nrecommendations: [{number: x}]\n")
    with pytest.raises(UserError, match=r"^controls/benchmarks/debian12.yaml: recommendations.0"):
        benchmarks.load("debian12")


def test_parsed_yaml_is_kept_between_processes_for_those_bytes_only(tmp_path, monkeypatch):
    data = tmp_path / "data.yaml"
    _rewrite(data, "names: [a, b]\nwhen: 2026-01-02\nstamp: 2026-01-02T03:04:05+01:00\n", OLD_NS)
    first = yamlfiles.load_cached(data)
    assert first["when"] == datetime.date(2026, 1, 2) and len(_kept(tmp_path)) == 1
    yamlfiles.cache_clear()  # as a new process starts

    def no_parse(text):
        raise AssertionError("parsed again")

    parse = yamlfiles.parse
    monkeypatch.setattr(yamlfiles, "parse", no_parse)
    assert yamlfiles.load_cached(data) == first
    monkeypatch.setattr(yamlfiles, "parse", parse)
    _rewrite(data, "names: [a, c]\n", OLD_NS + 10**9)
    assert yamlfiles.load_cached(data) == {"names": ["a", "c"]} and len(_kept(tmp_path)) == 2


class _Calls:
    """Unpickled, it would call os.getcwd: a kept document must never do that."""

    def __reduce__(self):
        return os.getcwd, ()


def test_a_kept_document_is_used_only_when_it_holds_yaml_types_and_no_one_else_can_write_there(tmp_path):
    data = tmp_path / "data.yaml"
    raw = b"value: parsed\n"
    data.write_bytes(raw)
    where = tmp_path / "cache" / "golden-ami" / "yaml"
    where.mkdir(parents=True, mode=0o700)
    (where / yamlfiles._kept_name(raw)).write_bytes(pickle.dumps({"value": _Calls()}))
    assert yamlfiles.load_cached(data) == {"value": "parsed"}
    yamlfiles.cache_clear()
    (where / yamlfiles._kept_name(raw)).write_bytes(pickle.dumps({"value": "planted"}))
    where.chmod(0o770)  # a group that may write there could plant what it likes
    assert yamlfiles.private_directory(where) is None
    assert yamlfiles.load_cached(data) == {"value": "parsed"}
    where.chmod(0o700)
    yamlfiles.cache_clear()
    assert yamlfiles.load_cached(data) == {"value": "planted"}  # (what the test put there: it is used)


def test_kept_documents_are_pruned_oldest_first(tmp_path, monkeypatch):
    monkeypatch.setattr(yamlfiles, "KEPT_MAX", 4)
    names = {}
    for index in range(7):
        raw = f"index: {index}\n".encode()
        (tmp_path / f"data{index}.yaml").write_bytes(raw)
        yamlfiles.load_cached(tmp_path / f"data{index}.yaml")
        assert len(_kept(tmp_path)) <= 4
        names[index] = yamlfiles._kept_name(raw)
        kept = tmp_path / "cache" / "golden-ami" / "yaml" / names[index]
        os.utime(kept, ns=(OLD_NS + index, OLD_NS + index))  # (a clock that tells them apart)
    # The fifth went over four: the three oldest went, leaving two; the next two were added.
    assert [path.name for path in _kept(tmp_path)] == sorted(names[index] for index in (3, 4, 5, 6))


def test_packer_asked_while_the_rest_renders_still_decides_the_template(state_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for version, plugins in (("1.6.6", False), ("1.8.6", True)):
        _fake_packer(tmp_path, version, OLD_NS + (10**9 if plugins else 0))
        result = render.render(config.resolve("debian12", "aws"), AWS_SOURCE, tmp_path / version)
        manifest = json.loads((result.directory / render.RENDER_MANIFEST).read_text())
        assert manifest["packer_plugins"] is plugins
        assert ("github.com/hashicorp/amazon" in (result.directory / "template.pkr.hcl").read_text()) is plugins
        given = render.render(config.resolve("debian12", "aws"), AWS_SOURCE, tmp_path / f"given-{version}",
                              packer_plugins=plugins)
        assert given.fingerprint == result.fingerprint


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_rendered_files_have_the_modes_they_always_had(state_dir, tmp_path, umask):
    before = os.umask(umask)
    try:
        result = render.render(config.resolve("debian12", "local"), LOCAL_SOURCE, tmp_path / "out", packer_plugins=False)
    finally:
        os.umask(before)
    modes = {p.relative_to(result.directory).as_posix(): p.stat().st_mode & 0o777
             for p in result.directory.rglob("*") if p.is_file()}
    assert {mode for rel, mode in modes.items() if rel.startswith("scripts/")} == {0o755}
    assert {mode for rel, mode in modes.items() if not rel.startswith("scripts/")} == {0o666 & ~umask}
    assert set(modes) - {render.RENDER_MANIFEST} == set(result.files)
