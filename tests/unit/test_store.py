"""The local image store: whole images appear at once, tags change atomically."""
import pytest

from golden_ami.errors import UserError
from golden_ami.targets.local.store import Store


def _disk(tmp_path, name="disk.qcow2"):
    path = tmp_path / name
    path.write_bytes(b"QFI\xfb fake disk")
    return path


def test_add_get_list_and_tags(tmp_path):
    store = Store(tmp_path / "store")
    image = store.add(_disk(tmp_path), {"Status": "candidate", "OS": "debian12", "CreatedAt": "2026-01-01T00:00:00Z"})
    assert image.id.startswith("li-") and image.path.read_bytes().startswith(b"QFI")
    assert store.get(image.id).tags["Status"] == "candidate"
    updated = store.set_tags(image.id, {"Status": "approved", "ApprovedAt": "2026-01-01T01:00:00Z"})
    assert updated.status == "approved"
    assert store.set_tags(image.id, {"ApprovedAt": None}).tags.get("ApprovedAt") is None
    second = store.add(_disk(tmp_path, "d2"), {"Status": "approved", "OS": "al2023", "CreatedAt": "2026-02-01T00:00:00Z"})
    assert [i.id for i in store.list()] == [image.id, second.id]
    assert [i.id for i in store.list(os_name="al2023")] == [second.id]
    assert [i.id for i in store.list(status="approved", os_name="debian12")] == [image.id]
    store.delete(image.id)
    assert [i.id for i in store.list()] == [second.id]


def test_a_failed_add_leaves_nothing(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Store, "_write_tags", staticmethod(fail))
    with pytest.raises(OSError):
        store.add(_disk(tmp_path), {"Status": "candidate"})
    assert [p.name for p in (tmp_path / "store").iterdir() if p.name != ".lock"] == []
    assert store.list() == []


def test_unknown_and_malformed_ids(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(UserError, match="no local image"):
        store.get("li-0000000000000000a")
    with pytest.raises(UserError, match="not a local image id"):
        store.get("../../etc")


@pytest.mark.parametrize("damage, named", [
    (lambda d: (d / "tags.json").write_text('{"Status": "appr'), "is not JSON"),
    (lambda d: (d / "tags.json").write_text('["approved"]'), "not an object of string tags"),
    (lambda d: (d / "tags.json").write_text('{"Status": "approved", "OS": 12}'), "not an object of string tags"),
    (lambda d: (d / "tags.json").write_text('{"Status": "approved"}'), "has no OS"),
    (lambda d: (d / "tags.json").write_bytes(b'{"Status": "\xff"}'), "cannot be read"),
    (lambda d: (d / "disk.qcow2").unlink(), "has no disk.qcow2"),
])
def test_a_damaged_image_is_skipped_with_one_warning_and_refused_by_name(tmp_path, capsys, damage, named):
    store = Store(tmp_path / "store")
    good = store.add(_disk(tmp_path), {"Status": "approved", "OS": "debian12", "CreatedAt": "2026-01-01T00:00:00Z"})
    bad = store.add(_disk(tmp_path, "d2"), {"Status": "approved", "OS": "debian12", "CreatedAt": "2026-02-01T00:00:00Z"})
    damage(store.root / bad.id)
    assert [i.id for i in store.list(status="approved")] == [good.id]
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and bad.id in warnings[0] and named in warnings[0], warnings
    with pytest.raises(UserError, match=named):
        store.get(bad.id)
