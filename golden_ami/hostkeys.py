"""Host keys announced on the console, and an SSH client that accepts nothing else.

cloud-init prints the instance's freshly generated host keys on the serial console between
"-----BEGIN SSH HOST KEY KEYS-----" and "-----END SSH HOST KEY KEYS-----"; on EC2 the same
text is what GetConsoleOutput returns. Those keys are pinned: a server that shows any other
key is refused before a single check runs (never trust on first use).
"""
from __future__ import annotations

import base64
import binascii
import logging
import re
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import paramiko

from .errors import HostKeyMismatch, VerificationError

# paramiko logs connection resets while a server is still booting as tracebacks on stderr;
# connect_pinned reports what matters itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512", "ssh-rsa")
_KEY_LINE = re.compile(r"(?P<type>" + "|".join(re.escape(t) for t in KEY_TYPES) + r") (?P<blob>[A-Za-z0-9+/=]{20,})")


def parse_console_host_keys(console_text: str) -> list[tuple[str, str]]:
    """(type, base64 blob) of every key in the last complete key block; [] if none yet.

    The last block counts: an instance that rebooted prints the block again, and a block
    cut off mid-way (console still being written) is ignored until it is complete.
    """
    text = console_text.replace("\r", "")
    end = text.rfind(END)
    if end < 0:
        return []
    begin = text.rfind(BEGIN, 0, end)
    if begin < 0:
        return []
    keys: list[tuple[str, str]] = []
    for line in text[begin + len(BEGIN) : end].splitlines():
        match = _KEY_LINE.search(line)
        if not match:
            continue
        try:
            paramiko.PKey.from_type_string(match["type"], base64.b64decode(match["blob"]))
        except (binascii.Error, paramiko.SSHException, ValueError):
            continue  # a console line garbled by interleaved kernel output is not a key
        keys.append((match["type"], match["blob"]))
    return keys


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def console_state(console_text: str) -> str:
    """What a console without a usable key block did show: enough to tell a machine that never
    started from one that stalled in its boot, or one whose key lines came out unreadable."""
    lines = [line.strip() for line in _CONTROL.sub("", console_text.replace("\r", "")).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "the console stayed empty"
    if BEGIN in console_text and END in console_text:
        return "a key block was printed, but no line in it holds a readable key"
    last = lines[-1] if len(lines[-1]) <= 160 else lines[-1][:157] + "..."
    return f"{len(lines)} console lines, the last: {last!r}"


def wait_for_console_host_keys(
    read_console: Callable[[], str],
    timeout_seconds: float,
    on_wait: Optional[Callable[[float], None]] = None,
    poll_seconds: float = 3.0,
) -> list[tuple[str, str]]:
    """Poll the console until the key block appears; fail closed when it does not."""
    started = time.monotonic()
    while True:
        keys = parse_console_host_keys(read_console())
        if keys:
            return keys
        waited = time.monotonic() - started
        if waited > timeout_seconds:
            raise VerificationError(
                f"no SSH host key block on the console after {timeout_seconds:.0f} s "
                f"({console_state(read_console())}): refusing to connect to a host whose key cannot be pinned"
            )
        if on_wait:
            on_wait(waited)
        time.sleep(poll_seconds)


def host_key_entry(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def write_known_hosts(path: Path, host: str, port: int, keys: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    name = host_key_entry(host, port)
    path.write_text("".join(f"{name} {kind} {blob}\n" for kind, blob in keys))


def pinned_client(known_hosts: Path) -> paramiko.SSHClient:
    """An SSHClient that knows only the pinned keys and rejects every other key."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def connect_pinned(
    host: str,
    port: int,
    user: str,
    private_key: Path,
    known_hosts: Path,
    timeout_seconds: float,
    on_wait: Optional[Callable[[float], None]] = None,
) -> paramiko.SSHClient:
    """Connect once the server is up; a key that differs from the pin is fatal at once."""
    started = time.monotonic()
    last_error = ""
    while time.monotonic() - started < timeout_seconds:
        client = pinned_client(known_hosts)
        try:
            client.connect(
                host, port=port, username=user, key_filename=str(private_key),
                look_for_keys=False, allow_agent=False, timeout=15, banner_timeout=30, auth_timeout=30,
            )
            return client
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(
                f"{host}:{port} presented a {exc.key.get_name()} host key that the console did not announce: "
                "refusing to verify (possible interception)"
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyMismatch(
                    f"{host}:{port} offered only host key types the console did not announce: refusing to verify"
                ) from None
            last_error = str(exc)
        except (OSError, socket.timeout, EOFError) as exc:
            client.close()
            last_error = str(exc) or type(exc).__name__
        if on_wait:
            on_wait(time.monotonic() - started)
        time.sleep(3)
    raise VerificationError(f"SSH to {host}:{port} did not come up in {timeout_seconds:.0f} s ({last_error})")


def first_seen_host_key(host: str, port: int, timeout_seconds: float) -> tuple[str, str]:
    """The host key a server presents (for the explicit trust-on-first-use opt-out only)."""
    started = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, port), timeout=15) as sock:
                transport = paramiko.Transport(sock)
                try:
                    transport.start_client(timeout=30)
                    key = transport.get_remote_server_key()
                    return key.get_name(), key.get_base64()
                finally:
                    transport.close()
        except (OSError, paramiko.SSHException, EOFError):
            if time.monotonic() - started > timeout_seconds:
                raise VerificationError(f"SSH to {host}:{port} did not come up in {timeout_seconds:.0f} s") from None
            time.sleep(3)
