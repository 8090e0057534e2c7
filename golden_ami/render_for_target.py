"""invoke render: the target names the source image, then render.py renders.

Apart from render.py because it asks a target: the targets import render.py (SourceImage),
so render.py must not import them back. Imports only the target, not the build pipeline
(approval, signing, AWS clients), so a render starts quickly."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .catalogue import controls_for, require_site_params
from .config import Resolved
from .layout import StateDir
from .render import RenderResult, render
from .targets import get_target


def render_for_target(cfg: Resolved, out_dir: Optional[Path], source_pin: Optional[str] = None) -> RenderResult:
    controls = controls_for(cfg)
    require_site_params(controls)  # before the target is asked anything (an SSM lookup, a base image)
    source = get_target(cfg.target, cfg.settings, cfg.state_dir).resolve_source(cfg, source_pin)
    out = out_dir or (StateDir(cfg.state_dir).renders / f"{cfg.os.name}-{cfg.target}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
    return render(cfg, source, out, controls)
