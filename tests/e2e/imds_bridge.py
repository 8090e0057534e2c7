"""QEMU guestfwd helper: one guest connection to 169.254.169.254:80 <-> the test's metadata
service on 127.0.0.1:<port> (QEMU runs this once per connection, on stdin/stdout)."""
import os
import socket
import sys
import threading


def main() -> None:
    upstream = socket.create_connection(("127.0.0.1", int(sys.argv[1])))

    def guest_to_service() -> None:
        while True:
            data = os.read(0, 65536)
            if not data:
                upstream.shutdown(socket.SHUT_WR)
                return
            upstream.sendall(data)

    threading.Thread(target=guest_to_service, daemon=True).start()
    while True:
        data = upstream.recv(65536)
        if not data:
            break
        os.write(1, data)


if __name__ == "__main__":
    main()
