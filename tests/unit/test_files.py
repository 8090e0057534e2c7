"""golden_ami/files.py: a file is replaced whole or not at all, and a failed write leaves nothing."""
from __future__ import annotations

import os
import stat

import pytest

from golden_ami.files import write_atomic, write_new


def test_a_write_replaces_the_file_whole_with_its_mode(tmp_path):
    path = tmp_path / "tags.json"
    path.write_text("old")
    write_atomic(path, '{"Status": "approved"}', mode=0o600)
    assert path.read_text() == '{"Status": "approved"}' and stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(path, b"bytes too")
    assert path.read_bytes() == b"bytes too" and sorted(p.name for p in tmp_path.iterdir()) == ["tags.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "build.json"
    path.write_text("old")

    def no_rename(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["build.json"]


def test_a_new_file_is_never_written_over_one_that_appeared_meanwhile(tmp_path, monkeypatch):
    path = tmp_path / "sbom.json"
    write_new(path, "first")
    assert path.read_text() == "first"
    with pytest.raises(FileExistsError):
        write_new(path, "second")
    real_link = os.link

    def someone_else_first(source, target):  # the name is taken between the check and the link
        path.write_text("theirs")
        real_link(source, target)

    monkeypatch.setattr(os, "link", someone_else_first)
    path.unlink()
    with pytest.raises(FileExistsError):
        write_new(path, "ours")
    assert path.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["sbom.json"]
    with pytest.raises(FileNotFoundError):
        write_new(tmp_path / "missing" / "x.json", "x")
