"""Where the pipeline keeps its files: the project tree (read-only data) and the state dir."""
from __future__ import annotations

import os
from pathlib import Path

# The repository root: templates/, hardening/, verify/, os/ and controls/ live here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
HARDENING_DIR = PROJECT_ROOT / "hardening"
VERIFY_DIR = PROJECT_ROOT / "verify"
OS_DATA_DIR = PROJECT_ROOT / "os"
CONTROLS_DIR = PROJECT_ROOT / "controls"
DEFAULTS_FILE = Path(__file__).resolve().parent / "defaults.yaml"


def default_state_dir() -> Path:
    """The state dir holds builds, the local image store and cached base images.

    GOLDEN_AMI_STATE_DIR wins (tests and CI point it at a temporary directory);
    otherwise the XDG data home is used, so a checkout stays clean.
    """
    explicit = os.environ.get("GOLDEN_AMI_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser().resolve() / "golden-ami"


def cache_dir() -> Path:
    """Where what is worked out once is kept between processes (caches: safe to delete), each
    in a directory of its own: compiled templates, parsed YAML, Packer's version. Not in the
    state dir: it holds no result, and the state dir's contents are the pipeline's record."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser().resolve() / "golden-ami"


def template_cache_dir() -> Path:
    """Where compiled Jinja templates are kept between processes (see cache_dir)."""
    return cache_dir() / "templates"
