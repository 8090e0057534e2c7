"""Host keys from console text: parsed strictly, waited for, fail closed."""
import base64

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from golden_ami import hostkeys
from golden_ami.errors import VerificationError


def _ed25519_line(comment="root@vm") -> tuple[str, str]:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    kind, blob = public.split()
    return f"{kind} {blob} {comment}", blob


def _console(*blocks: list[str], noise: str = "[   12.3] random: crng init done\n") -> str:
    text = noise
    for lines in blocks:
        text += f"{hostkeys.BEGIN}\n" + "\n".join(lines) + f"\n{hostkeys.END}\n" + noise
    return text


def test_parses_the_key_block_and_ignores_noise():
    line, blob = _ed25519_line()
    keys = hostkeys.parse_console_host_keys(_console([line, "[   13.0] kernel: some noise", "ssh-rsa notbase64!!"]))
    assert keys == [("ssh-ed25519", blob)]


def test_the_last_complete_block_wins():
    old, _ = _ed25519_line()
    new, new_blob = _ed25519_line()
    text = _console([old], [new]) + f"{hostkeys.BEGIN}\nssh-ed25519 AAAAtruncated"
    assert hostkeys.parse_console_host_keys(text) == [("ssh-ed25519", new_blob)]


def test_no_block_yet_means_no_keys():
    assert hostkeys.parse_console_host_keys("booting...\n" + hostkeys.BEGIN + "\n") == []


def test_garbled_key_data_is_not_a_key():
    bogus = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"\x00" * 5).decode()
    assert hostkeys.parse_console_host_keys(_console([f"ssh-ed25519 {bogus}"])) == []


def test_waiting_fails_closed_on_timeout():
    with pytest.raises(VerificationError, match="refusing to connect"):
        hostkeys.wait_for_console_host_keys(lambda: "no keys here", timeout_seconds=0.2, poll_seconds=0.05)


def test_known_hosts_entry_and_pinned_client(tmp_path):
    line, blob = _ed25519_line()
    path = tmp_path / "known_hosts"
    hostkeys.write_known_hosts(path, "127.0.0.1", 2222, [("ssh-ed25519", blob)])
    assert path.read_text() == f"[127.0.0.1]:2222 ssh-ed25519 {blob}\n"
    client = hostkeys.pinned_client(path)
    assert isinstance(client._policy, paramiko.RejectPolicy)
    assert client.get_host_keys().lookup("[127.0.0.1]:2222") is not None


@pytest.mark.parametrize("console, says", [
    ("", "the console stayed empty"),
    ("\x1b[2J\x1b[1;1H\r\n", "the console stayed empty"),
    ("SeaBIOS\r\nBooting from Hard Disk...\r\n\x1b[0;32m  OK  \x1b[0m] Reached target network.target\r\n",
     "3 console lines, the last: 'OK  ] Reached target network.target'"),
    (_console(["ssh-ed25519 AAAA[  12.0] audit: garbled"]), "a key block was printed, but no line in it holds a readable key"),
])
def test_a_timeout_says_what_the_console_showed(console, says):
    with pytest.raises(VerificationError) as raised:
        hostkeys.wait_for_console_host_keys(lambda: console, timeout_seconds=0.05, poll_seconds=0.01)
    assert f"({says})" in str(raised.value)
