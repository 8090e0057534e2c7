"""Stopping the children we start: a second interrupt during teardown must not leave them running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from golden_ami.procs import stop_process, terminate_as_interrupt

# A child that ignores the polite signal (as Packer busy cleaning up may seem to) and has a
# grandchild in its process group (as Packer has QEMU).
STUBBORN_CHILD = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(grandchild.pid, flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie waits for its reaper, but runs no more


def _stubborn_child():
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN_CHILD], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc, int(proc.stdout.readline())


def test_a_child_that_ignores_the_polite_signal_is_killed_with_its_group():
    proc, grandchild = _stubborn_child()
    stop_process(proc, signal.SIGTERM, grace_seconds=1)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(grandchild)


def test_a_second_sigterm_during_the_grace_period_still_kills_the_group():
    proc, grandchild = _stubborn_child()
    started = time.monotonic()
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    with terminate_as_interrupt():
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            stop_process(proc, signal.SIGTERM, grace_seconds=60)
    timer.join()
    assert time.monotonic() - started < 30  # the wait was cut short...
    assert proc.returncode == -signal.SIGKILL  # ...but not the kill
    deadline = time.monotonic() + 10
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(grandchild)


# Packer's shape: an outer process that ignores SIGINT sent to it alone and waits for an inner
# one, which handles the interrupt by cleaning up (Packer removes its VM) and exiting.
WRAPPED_CHILD = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
inner = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
def cleanup(signum, frame):
    open(sys.argv[1], "w").write("cleaned up")
    sys.exit(1)
signal.signal(signal.SIGINT, cleanup)
print("ready", flush=True)
time.sleep(300)
''', sys.argv[1]])
sys.exit(inner.wait())
"""


def test_the_interrupt_reaches_the_inner_process_of_a_wrapper_like_packer(tmp_path):
    marker = tmp_path / "cleanup"
    proc = subprocess.Popen([sys.executable, "-c", WRAPPED_CHILD, str(marker)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    stop_process(proc, signal.SIGINT, grace_seconds=60)
    # Signalled by PID alone, the outer process ignored it and the inner one was SIGKILLed
    # after the grace period, its clean-up never run.
    assert marker.is_file() and marker.read_text() == "cleaned up", "the inner process never saw the interrupt"
    assert proc.returncode == 1, proc.returncode
