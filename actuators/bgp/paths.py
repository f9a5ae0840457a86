"""The paths the routers may hold, kept in `DIR/paths.txt` across restarts of the scaler so that the
first replay can withdraw what an earlier run left behind. It only reads and writes that file: it sends
nothing to ExaBGP and never decides which paths are wanted (`actuators.bgp.router` does).

The file is a log of "+ VIP NEXT_HOP" / "- VIP NEXT_HOP" lines, appended to on every change and
rewritten compactly once it is much longer than the set it describes.
"""

from __future__ import annotations

import logging
import os
from ipaddress import IPv4Address
from pathlib import Path

__all__ = ["PATHS_FILE", "Path_", "PathsLog"]

log = logging.getLogger(__name__)

PATHS_FILE = "paths.txt"
Path_ = tuple[IPv4Address, IPv4Address]         # (vip, next hop)


class PathsLog:
    """`held`: the paths the routers may hold, as read from `dir/paths.txt` and then kept by `remember()`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._log_lines = 0
        self.held: set[Path_] = self._load()

    def _load(self) -> set[Path_]:
        """Read `paths.txt`: a log of "+ VIP NEXT_HOP" / "- VIP NEXT_HOP" lines, compacted now and then."""
        path = self.dir / PATHS_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return set()
        except OSError as exc:
            log.error("%s unreadable (%s): stale paths of an earlier run cannot be withdrawn explicitly", path, exc)
            return set()
        out: set[Path_] = set()
        lines = text.splitlines()
        for n, line in enumerate(lines, 1):
            try:
                op, vip, hop = line.split()
                p = (IPv4Address(vip), IPv4Address(hop))
                if op not in "+-":
                    raise ValueError(op)
            except ValueError:
                log.error("%s:%d unreadable (%r): that stale path cannot be withdrawn explicitly", path, n, line)
                continue
            if op == "+":
                out.add(p)
            else:
                out.discard(p)
        self._log_lines = len(lines)
        return out

    def remember(self, paths: set[Path_]) -> None:
        """Record what the routers may hold (before they can have it): appended to `paths.txt`, which is
        rewritten compactly once the log is much longer than the set. O(change), not O(table)."""
        added, gone = paths - self.held, self.held - paths
        if not added and not gone:
            return
        self.held = set(paths)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._log_lines + len(added) + len(gone) > 2 * len(paths) + 1000:
            tmp = self.dir / (PATHS_FILE + ".tmp")
            tmp.write_text("".join(f"+ {v} {h}\n" for v, h in paths))
            os.replace(tmp, self.dir / PATHS_FILE)
            self._log_lines = len(paths)
            return
        with (self.dir / PATHS_FILE).open("a") as f:
            f.write("".join([f"+ {v} {h}\n" for v, h in added] + [f"- {v} {h}\n" for v, h in gone]))
        self._log_lines += len(added) + len(gone)
