"""Progress lines for long waits: one line per step, and a heartbeat while a step is quiet.

Lines go to stderr so that ``--json`` output on stdout stays machine-readable.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Iterator, Optional, TextIO


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Prints "[golden-ami] <step>: <message>" lines, and "still <step> (elapsed)" heartbeats."""

    def __init__(self, stream: Optional[TextIO] = None, heartbeat_seconds: float = 30.0, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.heartbeat_seconds = heartbeat_seconds
        self.quiet = quiet
        self._step: Optional[str] = None
        self._step_started = 0.0
        self._last_output = time.monotonic()
        self._last_detail = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def say(self, message: str) -> None:
        if self.quiet:
            return
        with self._lock:
            prefix = f"[golden-ami] {self._step}: " if self._step else "[golden-ami] "
            print(prefix + message, file=self.stream, flush=True)
            self._last_output = time.monotonic()

    def detail(self, message: str) -> None:
        """A noteworthy line from a child process: shown, and remembered for the heartbeat."""
        self._last_detail = message
        self.say(message)

    def touch(self) -> None:
        """Something happened (a quiet line of output): no heartbeat needed yet."""

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        previous, previous_start = self._step, self._step_started
        self._step, self._step_started, self._last_detail = name, time.monotonic(), ""
        self.say("started")
        self._start_heartbeat()
        ok = False
        try:
            yield
            ok = True
        finally:
            elapsed = _clock(time.monotonic() - self._step_started)
            self.say(f"done in {elapsed}" if ok else f"stopped after {elapsed}")
            self._step, self._step_started = previous, previous_start

    def _start_heartbeat(self) -> None:
        if self._thread is not None or self.quiet:
            return

        def beat() -> None:
            while not self._stop.wait(5):
                if self._step and time.monotonic() - self._last_output >= self.heartbeat_seconds:
                    elapsed = _clock(time.monotonic() - self._step_started)
                    last = f" - last: {self._last_detail}" if self._last_detail else ""
                    self.say(f"still running ({elapsed}){last}")

        self._thread = threading.Thread(target=beat, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
