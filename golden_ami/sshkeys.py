"""Throw-away SSH client keys: one per build and one per verification, never reused."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    private_key_path: Path
    public_key: str  # "ssh-ed25519 AAAA… comment"


def generate(directory: Path, name: str, comment: str) -> KeyPair:
    """Write an ed25519 private key (mode 0600, created that way) and return its public half."""
    # cryptography only here: every invoke task imports KeyPair (the targets' interface), few make a key.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    return KeyPair(private_key_path=path, public_key=f"{public.decode()} {comment}")
