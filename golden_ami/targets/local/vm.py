"""A throw-away QEMU VM booted from an image without touching it.

The VM runs on a copy-on-write overlay (the candidate disk is only its read-only backing
file), with a fresh NoCloud seed, user-mode networking and SSH forwarded on 127.0.0.1 only.
Its serial console goes to a file: that is the "console output" host keys are pinned from.
Leaving the context manager stops QEMU and removes the overlay and seed, whatever happened.
"""
from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from ...errors import UserError, VerificationError
from ...procs import stop_process
from ...sshkeys import KeyPair
from .accel import Accelerator
from .seed import make_iso, write_seed_files


@dataclass
class RunningVm:
    ssh_host: str
    ssh_port: int
    login_user: str
    key: KeyPair
    serial_log: Path
    instance_id: str
    process: subprocess.Popen
    forwards: dict[int, int]  # guest TCP port -> its port on 127.0.0.1 (22 included)

    def console_text(self) -> str:
        if self.process.poll() is not None:
            raise VerificationError(f"the test VM exited early (qemu status {self.process.returncode})")
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _ephemeral_ports() -> range:
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_loopback_port(exclude: Iterable[int] = (), attempts: int = 200) -> int:
    """A TCP port on 127.0.0.1 that is free now and that QEMU binds a moment (or minutes) later.

    It is drawn from below the kernel's ephemeral range: a port from that range can be handed
    to any outgoing connection in the meantime, and a QEMU that then cannot bind it never boots.
    """
    ephemeral = _ephemeral_ports()
    taken = set(exclude)
    candidates = [p for p in range(10000, 32768) if p not in ephemeral and p not in taken]
    for port in random.sample(candidates, min(attempts, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a machine with no room below
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def boot(
    image: Path,
    work_dir: Path,
    login_user: str,
    key: KeyPair,
    accel: Accelerator,
    cpus: int,
    memory_mb: int,
    *,
    forward_ports: Sequence[int] = (),
    extra_user_data: Optional[dict[str, Any]] = None,
    may_reboot: bool = False,
) -> Iterator[RunningVm]:
    """forward_ports: guest TCP ports reachable on 127.0.0.1 beside SSH; extra_user_data: more
    cloud-config for the seed; may_reboot: a reboot inside the guest restarts it instead of
    ending QEMU (verification keeps -no-reboot: a test VM that reboots has gone wrong)."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        raise UserError("QEMU is not installed (qemu-system-x86 and qemu-utils): run invoke doctor")
    work_dir.mkdir(parents=True, exist_ok=True)
    overlay = work_dir / "overlay.qcow2"
    seed_dir = work_dir / "seed"
    seed_iso = work_dir / "seed.iso"
    serial = work_dir / "serial.log"
    instance_id = f"iid-verify-{uuid.uuid4().hex[:12]}"
    # A console log left by an earlier boot must not be read as this boot's console.
    serial.unlink(missing_ok=True)
    proc = None
    try:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.resolve()), str(overlay)],
            check=True, capture_output=True,
        )
        write_seed_files(seed_dir, instance_id, "golden-verify", login_user, key.public_key, extra_user_data)
        make_iso(seed_dir, seed_iso)
        forwards: dict[int, int] = {}
        for guest in dict.fromkeys([22, *forward_ports]):
            forwards[guest] = free_loopback_port(exclude=forwards.values())
        port = forwards[22]
        argv = [
            "qemu-system-x86_64", *accel.qemu_args, "-smp", str(cpus), "-m", str(memory_mb),
            "-nodefaults", "-display", "none", "-vga", "none", *([] if may_reboot else ["-no-reboot"]),
            "-serial", f"file:{serial}",
            "-drive", f"file={overlay},format=qcow2,if=virtio",
            "-drive", f"file={seed_iso},format=raw,if=virtio,readonly=on",
            "-netdev", "user,id=net0," + ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}"
                                                  for guest, host in forwards.items()),
            "-device", "virtio-net-pci,netdev=net0",
        ]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=(work_dir / "qemu.log").open("wb"), start_new_session=True)
        yield RunningVm("127.0.0.1", port, login_user, key, serial, instance_id, proc, forwards)
    finally:
        if proc is not None:
            stop_process(proc, grace_seconds=5)
        for path in (overlay, seed_iso):
            path.unlink(missing_ok=True)
        shutil.rmtree(seed_dir, ignore_errors=True)
