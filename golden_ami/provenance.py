"""Provenance tags: the one schema both targets write on an image they build.

``tags`` is the only place the keys are spelt. The local target stores them with its candidate;
the aws target hands them to Packer as the template's ``provenance`` map (a build-time
variable: the build id, fingerprint and commit differ per build, so they stay out of the
rendered files), and the template merges that map into the AMI's, snapshots' and build
instance's tags.

Images tagged before the schema was one carry ``SourceAmi``/``SourceAmiName`` (the aws
template's old names). ``migrated`` reads them as ``SourceImage``/``SourceImageName``; the
targets apply it to every image they read, so no reader needs to know the old names.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from .config import Resolved
    from .targets.base import BuildContext

MANAGED_BY = "golden-ami"
SOURCE_IMAGE = "SourceImage"
SOURCE_IMAGE_NAME = "SourceImageName"
# Old key -> the key of the schema. Nothing writes the old keys any more.
RENAMED = {"SourceAmi": SOURCE_IMAGE, "SourceAmiName": SOURCE_IMAGE_NAME}


def tags(cfg: Resolved, ctx: BuildContext) -> dict[str, str]:
    """The provenance tags of one build, the same keys on every target."""
    return {
        "BuildId": ctx.build_id,
        "Fingerprint": ctx.fingerprint,
        SOURCE_IMAGE: ctx.source.id,
        SOURCE_IMAGE_NAME: ctx.source.name,
        "OS": cfg.os.name,
        "Profile": cfg.profile,
        "PipelineCommit": ctx.commit,
        "ManagedBy": MANAGED_BY,
    }


def migrated(image_tags: Mapping[str, str]) -> dict[str, str]:
    """An image's tags as the schema names them: an old key is also read under its new name
    (unless the image has the new key too). The old keys stay: nothing is removed on read."""
    out = dict(image_tags)
    for old, new in RENAMED.items():
        if old in out and new not in out:
            out[new] = out[old]
    return out


# What `invoke list` and `invoke latest` show of an image, the same for every target.
ROW_TAGS = ("Status", "OS", "CreatedAt", "ApprovedAt", "Fingerprint", SOURCE_IMAGE, "BuildId", "PipelineCommit",
            "FailedControls")


def image_row(image_id: str, location: str, image_tags: Mapping[str, str]) -> dict[str, str]:
    return {"id": image_id, "location": location, **{k: image_tags.get(k, "") for k in ROW_TAGS}}
