"""Child processes the pipeline starts (Packer, QEMU, pytest) and how they are stopped.

Every child runs in a session of its own, so a Ctrl-C at the terminal reaches only us; we
then stop the child deliberately (a polite signal first, so Packer can clean up its VM, then
SIGKILL for the child's own process group) in a ``finally`` block. SIGTERM to the pipeline is
turned into KeyboardInterrupt so that the same ``finally`` blocks run.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from .progress import Progress


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM behaves like Ctrl-C: teardown code in finally blocks runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_process(proc: subprocess.Popen, polite: int = signal.SIGTERM, grace_seconds: float = 30.0) -> None:
    """Stop a child we started: polite signal, wait, then SIGKILL its whole process group.

    A second Ctrl-C or SIGTERM while we wait (an impatient user, systemd's stop) cuts the
    wait short but not the SIGKILL: the interrupt is re-raised only once the group is gone."""
    hurried: Optional[BaseException] = None
    if proc.poll() is None:
        # To the whole group, as a terminal's Ctrl-C would be: Packer's outer process ignores
        # SIGINT sent to it alone and leaves the interrupt to the inner one, which cancels the
        # build and removes its VM; signalled by PID, it ran on until the SIGKILL below.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, polite)
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt as exc:
            hurried = exc
    # The child was started as a session leader: its pgid is its pid. Anything it left in
    # that group (Packer's QEMU, say) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for _ in range(3):  # the group is already killed: further interrupts only repeat the wait
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            break
        except KeyboardInterrupt as exc:
            hurried = hurried or exc
    if hurried is not None:
        raise hurried


def run_streaming(
    argv: Sequence[str],
    *,
    cwd: Optional[Path] = None,
    env: Optional[dict[str, str]] = None,
    log_path: Path,
    progress: Progress,
    on_line: Optional[Callable[[str], None]] = None,
    timeout_seconds: Optional[float] = None,
    interrupt_signal: int = signal.SIGINT,
    interrupt_grace_seconds: float = 120.0,
) -> int:
    """Run a command, copy its output to log_path, hand each line to on_line; return its status.

    On Ctrl-C / SIGTERM / timeout the child gets interrupt_signal and time to clean up.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_seconds if timeout_seconds else None
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=str(cwd) if cwd else None,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        timed_out = threading.Event()

        def watchdog() -> None:
            while proc.poll() is None:
                if deadline and time.monotonic() > deadline:
                    timed_out.set()
                    stop_process(proc, interrupt_signal, interrupt_grace_seconds)
                    return
                time.sleep(1)

        threading.Thread(target=watchdog, daemon=True).start()
        try:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                if on_line:
                    on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
                progress.touch()
            status = proc.wait()
        finally:
            if proc.poll() is None:
                progress.say(f"stopping {Path(argv[0]).name} (pid {proc.pid}) and letting it clean up")
                stop_process(proc, interrupt_signal, interrupt_grace_seconds)
    if timed_out.is_set():
        raise TimeoutError(f"{Path(argv[0]).name} ran longer than {timeout_seconds:.0f} s and was stopped")
    return status
