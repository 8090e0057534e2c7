"""`invoke doctor` for local: QEMU and the image tools, an accelerator, base images, root."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ... import config
from ..base import Finding, tool_finding
from . import accel, base_image, disk_layout


def findings(state_dir: Path, probe_kvm: bool = True) -> list[Finding]:
    found = [
        tool_finding("local", "qemu-system-x86_64", "qemu-system-x86"),
        tool_finding("local", "qemu-img", "qemu-utils"),
        tool_finding("local", "xorriso", "xorriso"),
        tool_finding("local", "mmdebstrap", "mmdebstrap"),
        tool_finding("local", "mke2fs", "e2fsprogs"),
        tool_finding("local", "debugfs", "e2fsprogs"),
        tool_finding("local", "sfdisk", "fdisk"),
    ]
    if probe_kvm and shutil.which("qemu-system-x86_64"):
        chosen = accel.choose("auto", state_dir)
        if chosen.name == "kvm":
            found.append(Finding("local", True, f"accelerator: KVM ({chosen.reason})"))
        else:
            found.append(Finding("local", True, f"accelerator: TCG software emulation ({chosen.reason}); "
                                                "builds are slower but work"))
    for os_name in config.available_os():
        image = base_image.load(state_dir, os_name)
        if image:
            found.append(Finding("local", True, f"base image {os_name}: {image.name} ({image.path})"))
        else:
            data = config.load_os_data(os_name)
            how = base_image.how_to_make(os_name, bool(data.targets["local"].source.recipe))
            found.append(Finding("local", False, f"no base image for {os_name}", how))
        for layout in disk_layout.LAYOUTS[1:]:  # other layouts only when one was built
            other = base_image.load(state_dir, os_name, layout)
            if other:
                found.append(Finding("local", True, f"base image {os_name} (disk_layout: {layout}): "
                                                    f"{other.name} ({other.path})"))
    if os.geteuid() != 0:
        found.append(Finding("local", False, "not root: invoke base-image needs root", "run it as root"))
    return found
