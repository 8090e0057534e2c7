"""Which QEMU accelerator to use: KVM only when it demonstrably boots a kernel, else TCG.

/dev/kvm existing proves nothing: under nested virtualisation KVM may abort ("failed to set
MSR"), hang, or stop with an emulation failure. The probe boots a real Linux kernel with no
root disk; a kernel that gets as far as its "unable to mount root" panic has run fine. The
answer is cached per host boot and QEMU version.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...files import write_atomic
from ...layout import StateDir

QEMU = "qemu-system-x86_64"
PROBE_SECONDS = 25
_PANIC_MARKERS = ("Kernel panic", "VFS: Unable to mount root")


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" | "tcg"
    cpu_model: str  # "host" for KVM, "max" for TCG
    reason: str

    @property
    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", self.cpu_model]
        return ["-accel", "tcg,thread=multi", "-cpu", self.cpu_model]


TCG = Accelerator("tcg", "max", "software emulation")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def probe_kernel(state_dir: Path) -> Optional[Path]:
    """A kernel to probe with: one kept beside a cached base image, else the host's own."""
    candidates = sorted(StateDir(state_dir).bases.glob("*/vmlinuz"))
    candidates += sorted(Path("/boot").glob("vmlinuz-*"))
    for path in candidates:
        if path.is_file() and os.access(path, os.R_OK):
            return path
    return None


def kvm_boots(kernel: Path) -> tuple[bool, str]:
    """Boot the kernel under KVM for a few seconds; True when it reaches its root-mount panic."""
    argv = [
        QEMU, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-m", "256", "-nodefaults",
        "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 loglevel=4",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return False, f"a kernel did not boot under KVM within {PROBE_SECONDS} s (nested KVM hangs)"
    text = out.decode("utf-8", errors="replace")
    if any(marker in text for marker in _PANIC_MARKERS):
        return True, "KVM boots a kernel (probe)"
    first = next((line for line in text.splitlines() if line.strip()), "no output")
    return False, f"KVM probe failed: {first[:160]}"


def choose(requested: str, state_dir: Path) -> Accelerator:
    """The accelerator for `requested` (auto | kvm | tcg)."""
    if requested == "tcg":
        return Accelerator("tcg", "max", "tcg requested")
    if requested == "kvm":
        return Accelerator("kvm", "host", "kvm requested")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accelerator("tcg", "max", "no usable /dev/kvm")
    if shutil.which(QEMU) is None:
        return Accelerator("tcg", "max", f"{QEMU} not installed")
    cache = StateDir(state_dir).accelerator_cache
    key = {"boot_id": _boot_id(), "qemu": _qemu_version()}
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return Accelerator(cached["name"], cached["cpu_model"], cached["reason"] + " (cached)")
    except (OSError, ValueError, KeyError):
        pass
    kernel = probe_kernel(state_dir)
    if kernel is None:
        return Accelerator("tcg", "max", "no kernel to probe KVM with yet")
    works, reason = kvm_boots(kernel)
    chosen = Accelerator("kvm", "host", reason) if works else Accelerator("tcg", "max", reason)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps({"key": key, "name": chosen.name, "cpu_model": chosen.cpu_model, "reason": reason}))
    return chosen
