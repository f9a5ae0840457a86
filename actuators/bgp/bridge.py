"""The program ExaBGP runs as its API process: a byte pipe between ExaBGP and the scaler.

ExaBGP's process API talks to a child it starts itself: it reads commands from the child's stdout
and writes acknowledgements and JSON events to the child's stdin. The scaler cannot be that child
(it starts ExaBGP, not the other way round), so ExaBGP runs this bridge, which connects to the
unix socket the `bgp` router driver listens on and copies bytes both ways, unchanged.

It exits as soon as either side closes: when ExaBGP dies, its stdin reaches EOF (ExaBGP's API
child would otherwise outlive a kill -9 of its parent); when the scaler goes away, the socket
reaches EOF and ExaBGP sees its process end. Standard library only, so it starts in ~30 ms.

Watchdog (WATCHDOG_S > 0): the scaler sends a HEARTBEAT line several times per WATCHDOG_S (the bridge
drops it; every other line goes to ExaBGP unchanged). A scaler that sends nothing for WATCHDOG_S is
stalled (SIGSTOP, a frozen event loop) while ExaBGP, a separate process, would keep its sessions and
keep announcing the scaler's last state for as long as the stall lasts (measured: a frozen HA leader's
speaker kept announcing the paths its successor withdrew). The bridge then SIGKILLs ExaBGP — no
Cease, so the routers keep the paths as stale for the graceful-restart time, like after any crash
of the speaker — and exits.

    python -m actuators.bgp.bridge /run/scaler/bgp/api.sock [WATCHDOG_S]
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time

CONNECT_ATTEMPTS = 50        # times 0.1 s: the driver listens before it starts ExaBGP; this only covers a race
CHUNK = 65536
HEARTBEAT = b"#scaler-alive"  # a whole line from the scaler, never forwarded to ExaBGP


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


def pump(sock: socket.socket, stdin_fd: int, stdout_fd: int, watchdog_s: float = 0.0) -> str:
    """Copy until a side closes ("exabgp", "scaler") or, with a watchdog, the scaler has sent nothing
    for `watchdog_s` ("watchdog"). Scaler → ExaBGP goes line by line so that heartbeats can be dropped."""
    sel = selectors.DefaultSelector()
    sel.register(stdin_fd, selectors.EVENT_READ, "exabgp")
    sel.register(sock, selectors.EVENT_READ, "scaler")
    last = time.monotonic()
    pending = b""
    while True:
        timeout = max(0.0, last + watchdog_s - time.monotonic()) if watchdog_s > 0 else None
        ready = sel.select(timeout)
        if not ready and watchdog_s > 0 and time.monotonic() - last >= watchdog_s:
            return "watchdog"
        for key, _ in ready:
            if key.data == "exabgp":
                data = os.read(stdin_fd, CHUNK)
                if not data:
                    return "exabgp"     # ExaBGP is gone
                sock.sendall(data)
            else:
                data = sock.recv(CHUNK)
                if not data:
                    return "scaler"     # the scaler closed the session
                last = time.monotonic()
                *lines, pending = (pending + data).split(b"\n")
                out = b"".join(line + b"\n" for line in lines if line != HEARTBEAT)
                view = memoryview(out)
                while view:
                    n = os.write(stdout_fd, view)
                    view = view[n:]


def kill_exabgp() -> None:
    """SIGKILL our parent if it is ExaBGP (it started us as its API process)."""
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return
    if b"exabgp" in cmdline:
        os.kill(ppid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    try:
        watchdog_s = float(argv[2]) if len(argv) == 3 else 0.0
    except ValueError:
        watchdog_s = -1.0
    if len(argv) not in (2, 3) or watchdog_s < 0:
        print("usage: python -m actuators.bgp.bridge SOCKET [WATCHDOG_S]", file=sys.stderr)
        return 2
    sock = connect(argv[1])
    why = "exabgp"
    try:
        why = pump(sock, sys.stdin.fileno(), sys.stdout.fileno(), watchdog_s)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    if why == "watchdog":
        print(f"exabgp_bridge: the scaler sent nothing for {watchdog_s:g}s (stalled): killing ExaBGP",
              file=sys.stderr)
        kill_exabgp()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
