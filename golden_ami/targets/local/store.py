"""The local image store: what EC2's image registry and its tags are to the aws target.

    <state>/store/<image id>/disk.qcow2   the image (never modified after it arrives)
    <state>/store/<image id>/tags.json    its tags (Status, OS, Fingerprint, ...)

An image appears by one rename of a fully written directory, and tags change by writing a
new file and renaming it over the old one, under a lock: a crash or Ctrl-C leaves either
the old state or the new one, never a half-written image or tag file. Directories starting
with "." are work in progress and are never listed.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ...files import write_atomic
from ...errors import UserError
from ..base import age_order

DISK_FILE = "disk.qcow2"
TAGS_FILE = "tags.json"
REQUIRED_TAGS = ("Status", "OS")  # without them an image can be neither filtered nor judged


@dataclass(frozen=True)
class StoredImage:
    id: str
    path: Path
    tags: dict[str, str]

    @property
    def status(self) -> str:
        return self.tags.get("Status", "")


def _tags_problem(text: str) -> Optional[str]:
    """What is wrong with a tags.json's text, or None: an object of strings naming Status and OS."""
    try:
        tags = json.loads(text)
    except ValueError as exc:
        return f"its {TAGS_FILE} is not JSON ({exc})"
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        return f"its {TAGS_FILE} is not an object of string tags"
    missing = [key for key in REQUIRED_TAGS if not tags.get(key)]
    if missing:
        return f"its {TAGS_FILE} has no {', '.join(missing)}"
    return None


def new_image_id() -> str:
    # The shape of an AMI id, so tools and people read both the same way.
    return "li-" + secrets.token_hex(9)[:17]


class Store:
    def __init__(self, root: Path):
        self.root = root

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _dir(self, image_id: str) -> Path:
        if not image_id.startswith("li-") or "/" in image_id or not image_id[3:].isalnum():
            raise UserError(f"{image_id!r} is not a local image id (li-…)")
        return self.root / image_id

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        write_atomic(path, data)

    @staticmethod
    def _write_tags(directory: Path, tags: dict[str, str]) -> None:
        Store._replace(directory / TAGS_FILE, (json.dumps(tags, sort_keys=True, indent=2) + "\n").encode())

    def add(self, disk: Path, tags: dict[str, str]) -> StoredImage:
        """Move a finished disk into the store with its first tags; returns the new image."""
        image_id = new_image_id()
        incoming = self.root / f".incoming-{image_id}"
        with self._locked():
            incoming.mkdir(parents=True)
            try:
                shutil.move(str(disk), incoming / DISK_FILE)
                self._write_tags(incoming, {k: str(v) for k, v in tags.items()})
                incoming.rename(self.root / image_id)
            except BaseException:
                shutil.rmtree(incoming, ignore_errors=True)
                raise
        return self.get(image_id)

    def get(self, image_id: str) -> StoredImage:
        directory = self._dir(image_id)
        try:
            text = (directory / TAGS_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"no local image {image_id}: see invoke list --target=local") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"image {image_id} is damaged: its {TAGS_FILE} cannot be read ({exc})") from None
        problem = _tags_problem(text)
        if problem is None and not (directory / DISK_FILE).is_file():
            problem = f"it has no {DISK_FILE}"
        if problem:
            raise UserError(f"image {image_id} is damaged: {problem}")
        return StoredImage(id=image_id, path=directory / DISK_FILE, tags=json.loads(text))

    def set_tags(self, image_id: str, updates: dict[str, Optional[str]]) -> StoredImage:
        """Merge tag updates (a None value removes the tag); re-read to prove they landed."""
        with self._locked():
            current = self.get(image_id)
            tags = dict(current.tags)
            for key, value in updates.items():
                if value is None:
                    tags.pop(key, None)
                else:
                    tags[key] = str(value)
            self._write_tags(self._dir(image_id), tags)
        after = self.get(image_id)
        for key, value in updates.items():
            if after.tags.get(key) != (None if value is None else str(value)):
                raise RuntimeError(f"tag {key} of {image_id} did not change as asked")
        return after

    def list(self, os_name: Optional[str] = None, status: Optional[str] = None) -> list[StoredImage]:
        if not self.root.is_dir():
            return []
        images = []
        for directory in sorted(self.root.iterdir()):
            if directory.name.startswith(".") or not (directory / TAGS_FILE).is_file():
                continue
            try:
                image = self.get(directory.name)
            except UserError as exc:
                # One damaged image must not take `latest`, `list`, prune and reap down for all.
                print(f"[golden-ami] warning: skipped {directory.name}: {exc}", file=sys.stderr, flush=True)
                continue
            if os_name and image.tags.get("OS") != os_name:
                continue
            if status and image.status != status:
                continue
            images.append(image)
        return sorted(images, key=lambda i: age_order(i.id, i.tags))

    def _attachment(self, image_id: str, name: str) -> Path:
        if name in (DISK_FILE, TAGS_FILE) or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} is not an attachment name")
        return self._dir(image_id) / name

    def put_attachment(self, image_id: str, name: str, data: Optional[bytes]) -> None:
        """Write (None: remove) a file beside an image, whole or not at all."""
        with self._locked():
            path = self._attachment(image_id, name)
            if data is None:
                path.unlink(missing_ok=True)
            else:
                self._replace(path, data)

    def attachment(self, image_id: str, name: str) -> Optional[bytes]:
        path = self._attachment(image_id, name)
        return path.read_bytes() if path.is_file() else None

    def delete(self, image_id: str) -> None:
        with self._locked():
            directory = self._dir(image_id)
            if directory.exists():
                doomed = self.root / f".deleting-{image_id}"
                directory.rename(doomed)
                shutil.rmtree(doomed)
