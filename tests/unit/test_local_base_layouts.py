"""The local target builds from the base image of the configured disk layout: each layout is
cached apart, a missing one is named with the command that makes it, and a disk size smaller
than the layout's base disk is refused before Packer runs."""
import json

import pytest

from golden_ami import config
from golden_ami.errors import UserError
from golden_ami.layout import StateDir
from golden_ami.targets.local import base_image
from golden_ami.targets.local.target import LocalTarget


def _cache(state_dir, layout: str, sha: str) -> None:
    directory = base_image.cache_dir(state_dir, "debian12", layout)
    directory.mkdir(parents=True)
    (directory / base_image.BASE_FILE).write_bytes(b"disk")
    (directory / base_image.META_FILE).write_text(json.dumps({"sha256": sha, "name": f"debian12-{layout}",
                                                              "disk_layout": layout}))


def test_each_layout_has_its_own_base_image(state_dir, tmp_path):
    assert base_image.cache_dir(state_dir, "debian12") == StateDir(state_dir).base("debian12")
    assert base_image.cache_dir(state_dir, "debian12", "cis") == state_dir / "base" / "debian12.cis"
    _cache(state_dir, "single", "a" * 64)
    single = config.resolve("debian12", "local")
    cis_file = tmp_path / "cis.yaml"
    cis_file.write_text("disk_layout: cis\n")
    cis = config.resolve("debian12", "local", str(cis_file))
    target = LocalTarget(cis.settings, cis.state_dir)
    assert LocalTarget(single.settings, single.state_dir).resolve_source(single).id == "sha256:" + "a" * 64
    with pytest.raises(UserError, match=r"no disk_layout: cis base image for debian12 yet: run "
                                        r"invoke base-image --os=debian12 --config .*cis\.yaml"):
        target.resolve_source(cis)
    assert "no disk_layout: cis base image for debian12" in [p.what for p in target.problems(cis)]
    _cache(state_dir, "cis", "c" * 64)
    assert target.resolve_source(cis).id == "sha256:" + "c" * 64


def test_a_disk_smaller_than_the_layouts_base_disk_is_refused(state_dir, tmp_path):
    _cache(state_dir, "cis", "c" * 64)
    small = tmp_path / "small.yaml"
    small.write_text("disk_layout: cis\nlocal: {disk_size_mb: 3072}\n")
    cfg = config.resolve("debian12", "local", str(small))
    with pytest.raises(UserError, match="local.disk_size_mb 3072 is smaller than the cis base disk .4096 MiB."):
        LocalTarget(cfg.settings, cfg.state_dir).resolve_source(cfg)


def test_an_unknown_layout_is_refused_with_the_key(state_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("disk_layout: lvm\n")
    with pytest.raises(UserError, match="disk_layout"):
        config.resolve("debian12", "local", str(bad))
