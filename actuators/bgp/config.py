"""The `bgp` driver's options (scaler.yaml's `router.options`): the peers, ExaBGP's directory and
program, the timings. Validation only: no I/O but looking the exabgp program up; it lives apart so
that both the router and the speaker supervision can read it without importing each other.
"""

from __future__ import annotations

import shutil
import sys
from ipaddress import IPv4Address
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actuators.errors import RouterError

__all__ = ["UNIX_PATH_MAX", "BgpPeer", "BgpRouterConfig"]

UNIX_PATH_MAX = 107


class BgpPeer(BaseModel):
    """One router the VIPs are announced to (e.g. each of the two ToRs of the LB rack)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: IPv4Address
    asn: int = Field(ge=1, le=4_294_967_295)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # Our address on the link to this peer, when the peers sit on different links (two ToRs).
    local_address: IPv4Address | None = None
    # The hold time we offer; the session uses the lower of both sides'. A dead speaker is usually
    # noticed at once (its TCP connection closes); the hold time covers a hung one.
    hold_time_s: int = Field(default=30, ge=3, le=65535)

    @property
    def label(self) -> str:
        return self.name or str(self.address)


class BgpRouterConfig(BaseModel):
    """How the scaler speaks BGP. `dir` holds ExaBGP's configuration, log, pidfile, API socket and
    `paths.txt`; it must be private to this scaler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    local_as: int = Field(ge=1, le=4_294_967_295)
    router_id: IPv4Address
    local_address: IPv4Address
    peers: list[BgpPeer] = Field(min_length=1)
    netns: str | None = None                   # namespace ExaBGP runs in; None = the scaler's
    dir: Path = Path("/var/lib/scaler/bgp")
    exabgp: Path | None = None                 # the exabgp program; default: next to this Python, else PATH
    # How long routers keep our paths (stale) after the speaker went away: it must cover an
    # ExaBGP restart (about 1 s) and a scaler restart.
    graceful_restart_s: int = Field(default=120, ge=1, le=4095)
    settle_s: float = Field(default=0.3, ge=0, le=10)
    ack_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # At start, how long to wait for ExaBGP's API and then for a first session before going on.
    start_wait_s: float = Field(default=5.0, ge=0, le=120)
    # ExaBGP is a separate process: a scaler stalled this long (SIGSTOP, a frozen loop) gets it
    # SIGKILLed by its API bridge, so that a frozen HA leader stops announcing (the routers keep its
    # paths as stale for `graceful_restart_s`, the new leader's speaker announces its own). 0 = off.
    watchdog_s: float = Field(default=5.0, ge=0, le=300)
    restart_backoff_s: float = Field(default=0.5, gt=0, le=60)
    restart_backoff_max_s: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _check(self) -> BgpRouterConfig:
        addresses = [p.address for p in self.peers]
        dupes = sorted({str(a) for a in addresses if addresses.count(a) > 1})
        if dupes:
            raise ValueError(f"peers: {', '.join(dupes)} listed more than once")
        if len(str(self.dir / "api.sock")) > UNIX_PATH_MAX:
            raise ValueError(f"dir: {self.dir} is too long for a unix socket path (max {UNIX_PATH_MAX - 9} chars)")
        if 0 < self.watchdog_s < 1:
            raise ValueError("watchdog_s must be 0 (off) or at least 1 (the scaler sends a heartbeat every "
                             "watchdog_s / 4)")
        if self.restart_backoff_max_s < self.restart_backoff_s:
            raise ValueError("restart_backoff_max_s must be at least restart_backoff_s")
        return self

    def exabgp_program(self) -> str:
        if self.exabgp is not None:
            return str(self.exabgp)
        beside = Path(sys.executable).parent / "exabgp"
        if beside.exists():
            return str(beside)
        found = shutil.which("exabgp")
        if found is None:
            raise RouterError("exabgp not found (pip install 'exabgp>=5,<6', or set router.options.exabgp)")
        return found

