"""The local target's test VM: the ports it forwards."""
import socket


def test_forwarded_ports_come_from_outside_the_ephemeral_range():
    """A port the kernel may hand to an outgoing connection before QEMU binds it is not offered."""
    from golden_ami.targets.local.vm import _ephemeral_ports, free_loopback_port

    ephemeral = _ephemeral_ports()
    seen: list[int] = []
    for _ in range(30):
        port = free_loopback_port(exclude=seen)
        assert port not in ephemeral and port not in seen
        seen.append(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", seen[-1]))  # free when offered
