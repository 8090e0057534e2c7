"""cloud-init NoCloud seeds: how a local VM gets its login key without one baked into the disk.

A seed is two small files (meta-data, user-data) on a CD labelled "cidata". Each build and
each verification gets its own seed with a unique instance-id, so cloud-init treats every
boot of a fresh copy as a first boot: new host keys (printed on the console), new key for
the login user.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import yaml

from ...errors import UserError


# The top-level keys the seed itself sets: extra user-data may add others, never replace these.
SEED_KEYS = ("ssh_authorized_keys", "ssh_pwauth", "disable_root", "manage_etc_hosts", "system_info")


def write_seed_files(directory: Path, instance_id: str, hostname: str, login_user: str, public_key: str,
                     extra_user_data: Optional[dict[str, Any]] = None) -> list[Path]:
    """meta-data and user-data; the values are JSON-encoded, which YAML reads as plain strings.

    extra_user_data: more cloud-config (write_files, runcmd, ...), as an application team's
    launch would add it; it may not touch the seed's own keys (SEED_KEYS)."""
    extra = dict(extra_user_data or {})
    clash = sorted(set(extra) & set(SEED_KEYS))
    if clash:
        raise ValueError(f"extra user-data may not set the seed's own keys: {', '.join(clash)}")
    directory.mkdir(parents=True, exist_ok=True)
    meta = directory / "meta-data"
    user = directory / "user-data"
    meta.write_text(f"instance-id: {json.dumps(instance_id)}\nlocal-hostname: {json.dumps(hostname)}\n")
    user.write_text(
        "#cloud-config\n"
        "# golden-ami seed: the only credential is this public key; passwords stay off.\n"
        f"ssh_authorized_keys:\n  - {json.dumps(public_key)}\n"
        "ssh_pwauth: false\n"
        "disable_root: true\n"
        # sudo looks the host name up: keep it in /etc/hosts.
        "manage_etc_hosts: localhost\n"
        # A base disk built here names its default user; an imported cloud image may not.
        f"system_info:\n  default_user:\n    name: {json.dumps(login_user)}\n"
        "    sudo: [\"ALL=(ALL) NOPASSWD:ALL\"]\n    lock_passwd: true\n"
        + (yaml.safe_dump(extra, sort_keys=True) if extra else "")
    )
    return [meta, user]


def make_iso(directory: Path, iso_path: Path) -> Path:
    """Pack meta-data and user-data into a 'cidata' ISO with xorriso (also what Packer uses)."""
    if shutil.which("xorriso") is None:
        raise UserError("xorriso is not installed (needed for cloud-init seeds): run invoke doctor")
    subprocess.run(
        ["xorriso", "-as", "genisoimage", "-quiet", "-rock", "-joliet", "-volid", "cidata",
         "-output", str(iso_path), str(directory / "meta-data"), str(directory / "user-data")],
        check=True, capture_output=True,
    )
    return iso_path
