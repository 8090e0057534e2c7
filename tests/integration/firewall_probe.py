"""Traffic for tests/integration/test_firewall_netns.py, run inside a network namespace with
`ip netns exec NS python3 firewall_probe.py MODE ...`. Prints "ok" or "fail <reason>".

  serve PORT...        TCP (IPv4 and IPv6) and UDP echo listeners on each port, for 120 s
  tcp ADDRESS PORT     a TCP connection
  udp ADDRESS PORT     one datagram out and its echo back
  ping ADDRESS         one ICMP (or ICMPv6) echo request and its reply, on a raw socket
  raw ADDRESS PROTO    one IPv4 packet of another protocol (e.g. 47, GRE): does it leave?

Standard library only; no output but the verdict, so the test reads one word.
"""
import socket
import struct
import sys
import threading

TIMEOUT = 3


def _checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def tcp(address, port):
    with socket.socket(_family(address), socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect((address, int(port)))


def udp(address, port):
    with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(b"probe", (address, int(port)))
        sock.recvfrom(64)


def ping(address):
    six = _family(address) == socket.AF_INET6
    family, protocol, request, reply = ((socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129) if six
                                        else (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0))
    packet = struct.pack("!BBHHH", request, 0, 0, 0x6761, 1) + b"probe!"
    if not six:  # the kernel fills in the ICMPv6 checksum, not the ICMP one
        packet = packet[:2] + struct.pack("!H", _checksum(packet)) + packet[4:]
    with socket.socket(family, socket.SOCK_RAW, protocol) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(packet, (address, 0))
        while True:
            data, _ = sock.recvfrom(256)
            icmp = data if six else data[(data[0] & 0x0F) * 4:]  # IPv4 raw sockets see the IP header
            if icmp[0] == reply:
                return


def raw(address, protocol):
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, int(protocol)) as sock:
        sock.sendto(b"probe!", (address, 0))  # a drop in the output hook is EPERM here


def serve(*ports):
    def stream(family, port):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
            sock.listen()
            while True:
                sock.accept()[0].close()

    def datagrams(port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("0.0.0.0", port))
            while True:
                data, sender = sock.recvfrom(64)
                sock.sendto(data, sender)

    for port in map(int, ports):
        for target, args in ((stream, (socket.AF_INET, port)), (stream, (socket.AF_INET6, port)),
                             (datagrams, (port,))):
            threading.Thread(target=target, args=args, daemon=True).start()
    print("ok", flush=True)
    threading.Event().wait(120)


def main(argv):
    mode, args = argv[1], argv[2:]
    try:
        {"serve": serve, "tcp": tcp, "udp": udp, "ping": ping, "raw": raw}[mode](*args)
    except OSError as exc:
        print("fail", exc)
        return
    print("ok")


if __name__ == "__main__":
    main(sys.argv)
