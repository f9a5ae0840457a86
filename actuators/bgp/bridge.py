"""The program ExaBGP runs as its API process: a byte pipe between ExaBGP and the scaler.

ExaBGP's process API talks to a child it starts itself: it reads commands from the child's stdout
and writes acknowledgements and JSON events to the child's stdin. The scaler cannot be that child
(it starts ExaBGP, not the other way round), so ExaBGP runs this bridge, which connects to the
unix socket the `bgp` router driver listens on and copies bytes both ways, unchanged.

It exits as soon as either side closes: when ExaBGP dies, its stdin reaches EOF (ExaBGP's API
child would otherwise outlive a kill -9 of its parent); when the scaler goes away, the socket
reaches EOF and ExaBGP sees its process end. Standard library only, so it starts in ~30 ms.

    python -m actuators.bgp.bridge /run/scaler/bgp/api.sock
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time

CONNECT_ATTEMPTS = 50        # times 0.1 s: the driver listens before it starts ExaBGP; this only covers a race
CHUNK = 65536


def connect(path: str) -> socket.socket:
    last: OSError | None = None
    for _ in range(CONNECT_ATTEMPTS):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as exc:
            s.close()
            last = exc
            time.sleep(0.1)
    raise SystemExit(f"exabgp_bridge: cannot connect to {path}: {last}")


def pump(sock: socket.socket, stdin_fd: int, stdout_fd: int) -> None:
    sel = selectors.DefaultSelector()
    sel.register(stdin_fd, selectors.EVENT_READ, "exabgp")
    sel.register(sock, selectors.EVENT_READ, "scaler")
    while True:
        for key, _ in sel.select():
            if key.data == "exabgp":
                data = os.read(stdin_fd, CHUNK)
                if not data:
                    return          # ExaBGP is gone
                sock.sendall(data)
            else:
                data = sock.recv(CHUNK)
                if not data:
                    return          # the scaler closed the session
                view = memoryview(data)
                while view:
                    n = os.write(stdout_fd, view)
                    view = view[n:]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m actuators.bgp.bridge SOCKET", file=sys.stderr)
        return 2
    sock = connect(argv[1])
    try:
        pump(sock, sys.stdin.fileno(), sys.stdout.fileno())
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
