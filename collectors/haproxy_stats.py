"""Reads one LB member's HAProxy (2.6) through its runtime API, the stats socket (a unix socket path
or `tcp:HOST:PORT`): `show info` and `show stat -1 3 -1` (frontends and backends only, ~16 KB with
50 backends, where the exporter's full answer is megabytes) sent as one command line, so both
answers come from the same process even during a reload.

It returns the `haproxy` collector's metric names where they overlap (current_sessions,
session_rate, request_rate, queue, current_connections) plus idle_percent, max_connections and
session_limit. Rates come from counter deltas (`stot`, `req_tot`) and are reset-aware: a reload
zeroes every counter, detected through `Pid`, `Start_time_sec` and `Uptime_sec`.

It only sends read commands, never blocks the event loop (asyncio connection, bounded by
`timeout_s`), and never turns a failed read into a zero: a refused connection, a timeout, an
unexpected answer raise a `CollectorError` naming the target.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from collectors.base import Sample, Target
from collectors.errors import CollectorAuthError, CollectorError, CollectorParseError, CollectorTimeout
from collectors.rates import RateTracker

__all__ = [
    "COMMAND",
    "HAProxyStatsCollector",
    "HAProxyStatsConfig",
    "StatsAddress",
    "parse_address",
    "parse_show_info",
    "parse_show_stat",
    "split_answer",
]

# `show stat <iid> <type mask> <sid>`: all proxies, frontends (1) + backends (2), all servers' rows
# excluded by the mask. Both commands on one line: HAProxy runs them in order on one connection.
COMMAND = b"show info;show stat -1 3 -1\n"
_STAT_HEADER = "# pxname,"


class HAProxyStatsConfig(BaseModel):
    """Settings of the `haproxy_stats` collector; the frontend selection is `haproxy`'s.

    `frontend`: read only that frontend's sessions and rates (default: sum over all frontends).
    `exclude_frontends`: frontends left out of the sums (a stats or metrics frontend).
    `max_rate_gap_s`: no rate across a longer gap between two successful reads. The backend queue is
    always summed over all backends. `max_answer_bytes` bounds what one read may hold in memory.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(default=2.0, gt=0, le=60)
    frontend: str | None = Field(default=None, min_length=1)
    exclude_frontends: tuple[str, ...] = ()
    max_rate_gap_s: FiniteFloat = Field(default=60.0, gt=0)
    max_answer_bytes: int = Field(default=8 * 1024 * 1024, ge=4096)

    @model_validator(mode="after")
    def _frontend_or_exclusions(self) -> Self:
        if self.frontend is not None and self.exclude_frontends:
            raise ValueError("set either frontend or exclude_frontends, not both")
        return self


@dataclass(frozen=True, slots=True)
class StatsAddress:
    """A unix socket `path`, or a TCP `host` and `port`."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path is not None else f"tcp:{self.host}:{self.port}"


def parse_address(target: Target) -> StatsAddress:
    """Where the runtime API of `target` listens: `target.uds`, else `target.url` as `/path`,
    `unix:/path`, `unix:///path`, `tcp:HOST:PORT`, `tcp://HOST:PORT` or `HOST:PORT` (`[v6]:PORT`).
    Raises ValueError."""
    if target.uds:
        return StatsAddress(path=target.uds)
    url = target.url.strip()
    for prefix in ("unix://", "unix:"):
        if url.startswith(prefix):
            url = url[len(prefix) :]
            if not url.startswith("/"):
                raise ValueError(f"unix socket path must be absolute: {target.url!r}")
            return StatsAddress(path=url)
    if url.startswith("/"):
        return StatsAddress(path=url)
    for prefix in ("tcp://", "tcp:"):
        if url.startswith(prefix):
            url = url[len(prefix) :]
            break
    host, sep, port = url.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"want a unix socket path or tcp:HOST:PORT, not {target.url!r}")
    return StatsAddress(host=host, port=int(port))


def split_answer(text: str) -> tuple[str, str]:
    """Split the answer to `COMMAND` into the `show info` part and the `show stat` CSV part."""
    at = text.find(_STAT_HEADER)
    if at < 0:
        return text, ""
    return text[:at], text[at:]


def parse_show_info(text: str) -> dict[str, str]:
    """`show info` (`Name: value` lines) as a dict."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key:
            info[key.strip()] = value.strip()
    return info


def parse_show_stat(text: str) -> list[dict[str, str]]:
    """`show stat` CSV (header `# pxname,svname,...`) as one dict per row; [] without a header."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith(_STAT_HEADER):
        return []
    header = lines[0][2:].split(",")
    # csv: a field HAProxy quotes (a description holding a comma) stays one field.
    return [dict(zip(header, row, strict=False)) for row in csv.reader(ln for ln in lines[1:] if ln)]


def _number(row: Mapping[str, str], column: str) -> float | None:
    text = row.get(column, "")
    if text == "":
        return None  # HAProxy leaves a column empty where it does not apply (qcur of a frontend)
    return float(text)


@dataclass(slots=True)
class _Epoch:
    pid: str
    start: str | None
    uptime: float | None


class HAProxyStatsCollector:
    """The `haproxy_stats` collector. One instance serves every target; rate baselines and process
    identity are kept per `target.key`.

    `clock` stamps samples (epoch seconds); `monotonic` measures rate intervals.
    """

    name = "haproxy_stats"

    def __init__(
        self,
        config: HAProxyStatsConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or HAProxyStatsConfig()
        self._clock = clock
        self._monotonic = monotonic
        self._rates = RateTracker(max_gap_s=self.config.max_rate_gap_s)
        self._epochs: dict[str, _Epoch] = {}

    async def collect(self, target: Target) -> list[Sample]:
        try:
            address = parse_address(target)
        except ValueError as exc:
            raise CollectorError(f"haproxy_stats {target.key}: {exc}", reason="config") from exc
        what = f"haproxy_stats {target.key} ({address})"
        if target.netns and address.path is None:
            raise CollectorError(
                f"{what}: netns {target.netns!r} is not supported for TCP; use the unix socket", reason="config"
            )
        text = await self._read(address, what)
        now = self._clock()
        mono = self._monotonic()
        return self.samples(target.key, what, text, now, mono)

    def forget(self, key: str) -> None:
        self._rates.forget(key)
        self._epochs.pop(key, None)

    async def close(self) -> None:
        """Nothing to release: every read opens and closes its own connection."""

    # -- internals -------------------------------------------------------------------------------

    async def _read(self, address: StatsAddress, what: str) -> str:
        limit = self.config.max_answer_bytes
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.config.timeout_s):
                if address.path is not None:
                    reader, writer = await asyncio.open_unix_connection(address.path)
                else:
                    reader, writer = await asyncio.open_connection(address.host, address.port)
                writer.write(COMMAND)
                await writer.drain()
                # Non-interactive mode: HAProxy answers every command, then closes. Read to EOF.
                chunks: list[bytes] = []
                size = 0
                while chunk := await reader.read(65536):
                    size += len(chunk)
                    if size > limit:
                        raise CollectorParseError(f"{what}: answer larger than max_answer_bytes={limit}")
                    chunks.append(chunk)
        except TimeoutError as exc:
            raise CollectorTimeout(f"{what}: no answer within {self.config.timeout_s:g}s") from exc
        except PermissionError as exc:
            raise CollectorAuthError(f"{what}: not allowed to connect: {exc.strerror or exc}") from exc
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise CollectorError(f"{what}: connect failed: {exc.strerror or exc}", reason="connect") from exc
        except OSError as exc:
            raise CollectorError(f"{what}: {exc.strerror or exc}", reason="connect") from exc
        finally:
            if writer is not None:
                writer.close()
        try:
            return b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CollectorParseError(f"{what}: answer is not UTF-8: {exc}") from exc

    def samples(self, key: str, what: str, text: str, now: float, mono: float) -> list[Sample]:
        """Turn one answer into samples (public for benchmarks and tests: the part after the read)."""
        info_text, stat_text = split_answer(text)
        info = parse_show_info(info_text)
        if "Pid" not in info or not stat_text:
            first = text.strip().splitlines()[0][:200] if text.strip() else "(empty answer)"
            if "permission denied" in text.lower():
                raise CollectorAuthError(f"{what}: HAProxy refused: {first} (the socket needs level user or above)")
            raise CollectorParseError(f"{what}: not a show info/show stat answer: {first!r}")
        try:
            connections = float(info["CurrConns"])
            idle = float(info["Idle_pct"])
            maxconn = float(info["Maxconn"])
            uptime = float(info["Uptime_sec"]) if "Uptime_sec" in info else None
            rows = parse_show_stat(stat_text)
            totals = self._sums(rows)
        except (KeyError, ValueError) as exc:
            raise CollectorParseError(f"{what}: unexpected value in the answer: {exc!r}") from exc
        sessions, limit, sessions_total, requests_total, frontends_seen, http_seen, queue, backends_seen = totals
        config = self.config
        if config.frontend is not None and frontends_seen == 0:
            raise CollectorError(f"{what}: frontend {config.frontend!r} not found", reason="no_frontend")

        restarted = self._restarted(key, _Epoch(info["Pid"], info.get("Start_time_sec"), uptime))
        if restarted:
            # Every counter of this HAProxy started again from 0: no delta across the restart.
            self._rates.forget(key)
        # Unlabelled even with `frontend:` set, as in `haproxy`: one series per metric, the one a policy
        # input without `labels:` reads.
        out = [
            Sample("current_connections", connections, now),
            Sample("idle_percent", idle, now),
            Sample("max_connections", maxconn, now),
        ]
        if frontends_seen:
            out.append(Sample("current_sessions", sessions, now))
            if limit is not None:
                out.append(Sample("session_limit", limit, now))
            rate = self._rates.update(key, "session_rate", sessions_total, mono)
            if rate.rate is not None:
                out.append(Sample("session_rate", rate.rate, now))
        if http_seen:
            rate = self._rates.update(key, "request_rate", requests_total, mono)
            if rate.rate is not None:
                out.append(Sample("request_rate", rate.rate, now))
        if backends_seen:
            out.append(Sample("queue", queue, now))
        return out

    def _sums(self, rows: list[dict[str, str]]) -> tuple[float, float | None, float, float, int, int, float, int]:
        config = self.config
        sessions = sessions_total = requests_total = queue = 0.0
        limit: float | None = 0.0
        frontends_seen = http_seen = backends_seen = 0
        for row in rows:
            kind = row.get("svname")
            if kind == "BACKEND":
                queue += _number(row, "qcur") or 0.0
                backends_seen += 1
                continue
            if kind != "FRONTEND":
                continue
            proxy = row.get("pxname")
            if config.frontend is not None:
                if proxy != config.frontend:
                    continue
            elif proxy in config.exclude_frontends:
                continue
            sessions += float(row["scur"])
            sessions_total += float(row["stot"])
            slim = _number(row, "slim")
            limit = None if slim is None or limit is None else limit + slim
            frontends_seen += 1
            requests = _number(row, "req_tot")
            # A `mode tcp` frontend reports req_tot 0, not empty: going by the value would read as idle.
            if requests is not None and row.get("mode") != "tcp":
                requests_total += requests
                http_seen += 1
        return sessions, limit, sessions_total, requests_total, frontends_seen, http_seen, queue, backends_seen

    def _restarted(self, key: str, epoch: _Epoch) -> bool:
        """Whether the HAProxy behind `key` is another process than at the last read (a reload or a
        restart). Any of: another Pid, another Start_time_sec, an uptime that went backwards."""
        previous = self._epochs.get(key)
        self._epochs[key] = epoch
        if previous is None:
            return False
        if epoch.pid != previous.pid or epoch.start != previous.start:
            return True
        return epoch.uptime is not None and previous.uptime is not None and epoch.uptime < previous.uptime
