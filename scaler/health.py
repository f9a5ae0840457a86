"""Member health: checks every routed member of every pool, marks members down and up with rise/fall
hysteresis, has a dead member's route withdrawn at once and the member replaced.

One task per pool runs a round every `health.interval`: every member in state announcing, in service
or draining is checked concurrently (an HTTP GET to HAProxy, or a TCP connect), each check bounded
by `health.timeout`. A change of health is written to the store (with its event) before anything
acts on it; the lifecycle then re-computes the router's desired state from the store, where a down
member has no route unless the pool is in panic (`policies.health`). A member down for
`replace_after` (or flapping) is failed and replaced in one store transaction; the lifecycle carries
the replacement out like any scale-out. This module never calls a router or an orchestrator.

When its own inputs fail: a check that cannot be made (namespace gone, no file descriptors) counts
for nothing and is reported as a checker error; a store error skips the round (nothing changes, the
routes stay as they are); a checker that sees every member fail puts the pool in panic, which keeps
every route. So a fault of the checker never empties a VIP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from actuators.errors import ActuatorError
from actuators.linux import netns
from policies import format_duration
from policies.health import Counters, Health, Result, flapping, in_panic, observe
from scaler.config import HealthCheckConfig, PoolConfig
from scaler.errors import StoreError
from scaler.store import Member, MemberState, Store

log = logging.getLogger("scaler.health")

# Members whose health is checked: the ones a router may send flows to, and the warm standby (a
# standby member found down is failed, deleted and booted again; it never had a route).
CHECKED = frozenset({MemberState.ANNOUNCING, MemberState.IN_SERVICE, MemberState.DRAINING, MemberState.STANDBY})
# Members a replacement may stand in for (a draining one is leaving anyway).
REPLACEABLE = frozenset({MemberState.ANNOUNCING, MemberState.IN_SERVICE})


@dataclass(frozen=True, slots=True)
class CheckTarget:
    """One member's check, resolved from the pool's templates."""

    key: str                    # member id
    kind: Literal["http", "tcp"]
    host: str
    port: int
    path: str
    netns: str | None
    timeout_s: float
    expect: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    detail: str                 # "HTTP 200", "connection refused", "timed out after 200ms", ...
    latency_s: float


class Prober(Protocol):
    """Checks targets. `check_all` never raises: a check that could not be made is `Result.ERROR`."""

    async def check_all(self, targets: Sequence[CheckTarget]) -> list[Outcome]: ...


def resolve(cfg: HealthCheckConfig, m: Member) -> CheckTarget | str:
    """The check target of a member, or why there is none (an unusable template or address)."""
    values = m.template_values()
    try:
        url = urlsplit(cfg.url.format_map(values))
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError as exc:
        return f"health.url {cfg.url!r} gives no usable address for {m.instance}: {exc}"
    if not url.hostname:
        return f"health.url {cfg.url!r} gives no host for {m.instance}"
    ns = cfg.netns.format_map(values) if cfg.netns else ""
    return CheckTarget(m.id, cfg.type, url.hostname, port, url.path or "/", ns or None, cfg.timeout, cfg.expect_status)


_FAILS = {errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: "connection reset",
          errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable",
          errno.ETIMEDOUT: "timed out", errno.EPIPE: "connection closed"}


class SocketProber:
    """Checks over plain non-blocking sockets on the event loop: a few syscalls and no HTTP library
    per check, so thousands of members per second cost little CPU. Sockets for checks made from a
    network namespace are created in one short-lived thread per namespace and round."""

    async def check_all(self, targets: Sequence[CheckTarget]) -> list[Outcome]:
        by_ns: dict[str | None, list[int]] = {}
        for i, t in enumerate(targets):
            by_ns.setdefault(t.netns, []).append(i)
        socks: list[socket.socket | str] = [""] * len(targets)
        for ns, idx in by_ns.items():
            try:
                # A thread spawn per namespace and round (~0.1 ms, on the loop): cheaper than a hop
                # through the executor, and a socket creation never blocks.
                made = netns.call_in(ns, functools.partial(_sockets, len(idx)))
            except (OSError, ActuatorError) as exc:
                for i in idx:
                    socks[i] = f"cannot open a socket in {ns or 'the scaler namespace'}: {exc}"
                continue
            for i, s in zip(idx, made, strict=True):
                socks[i] = s
        return list(await asyncio.gather(*(self._one(t, s) for t, s in zip(targets, socks, strict=True))))

    async def _one(self, t: CheckTarget, sock: socket.socket | str) -> Outcome:
        if isinstance(sock, str):
            return Outcome(Result.ERROR, sock, 0.0)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        stage = "connect"
        try:
            async with asyncio.timeout(t.timeout_s):
                await loop.sock_connect(sock, (t.host, t.port))
                if t.kind == "tcp":
                    return Outcome(Result.OK, "TCP connect", time.perf_counter() - t0)
                stage = "response"
                await loop.sock_sendall(sock, f"GET {t.path} HTTP/1.0\r\nHost: {t.host}\r\n"
                                              f"User-Agent: scaler-health\r\n\r\n".encode())
                head = b""
                while b"\r\n" not in head and len(head) < 512:
                    chunk = await loop.sock_recv(sock, 512)
                    if not chunk:
                        break
                    head += chunk
        except TimeoutError:
            return Outcome(Result.FAIL, f"{stage} timed out after {format_duration(t.timeout_s)}",
                           time.perf_counter() - t0)
        except OSError as exc:
            what = _FAILS.get(exc.errno or 0, exc.strerror or str(exc))
            return Outcome(Result.FAIL, what, time.perf_counter() - t0)
        finally:
            sock.close()
        took = time.perf_counter() - t0
        parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return Outcome(Result.FAIL, "no HTTP response" if not head else f"not HTTP: {head[:40]!r}", took)
        status = int(parts[1])
        lo, hi = t.expect
        return Outcome(Result.OK if lo <= status <= hi else Result.FAIL, f"HTTP {status}", took)


def _sockets(n: int) -> list[socket.socket]:
    out = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            out.append(s)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


class HealthMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.health = Gauge("scaler_member_health", "Health of each checked member: 1 up, 0 down, -1 not "
                            "decided yet", ["pool", "member"], registry=r)
        self.latency = Histogram("scaler_health_check_seconds", "Time of one health check (failed ones "
                                 "included)", ["pool"], registry=r,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
        self.checks = Counter("scaler_health_checks_total", "Health checks by result (ok, fail, error: the "
                              "check could not be made)", ["pool", "result"], registry=r)
        self.withdrawals = Counter("scaler_health_withdrawals_total", "Members marked down (route withdrawn "
                                   "unless the pool is in panic), by the last failure", ["pool", "reason"],
                                   registry=r)
        self.replacements = Counter("scaler_health_replacements_total", "Dead members failed and replaced, by "
                                    "reason (down, flapping)", ["pool", "reason"], registry=r)
        self.panic = Gauge("scaler_health_panic", "1 while more than the panic threshold of the pool is down: "
                           "every route kept, no replacement", ["pool"], registry=r)
        self._children: dict[tuple[str, Result], tuple[Any, Any]] = {}
        self.round_seconds = Histogram("scaler_health_round_seconds", "Time of one round of checks of a pool",
                                       ["pool"], registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1))


    def count(self, pool: str, out: Outcome) -> None:
        """One check's counter and latency (the labelled children looked up once per pool and result)."""
        children = self._children.get((pool, out.result))
        if children is None:
            children = self._children[(pool, out.result)] = (self.checks.labels(pool, str(out.result)),
                                                              self.latency.labels(pool))
        children[0].inc()
        if out.result is not Result.ERROR:
            children[1].observe(out.latency_s)


@dataclass
class MemberCheck:
    """What the checker knows of one member beyond its stored health (in memory, for the API)."""

    pool: str
    instance: str
    counters: Counters
    last_at: float | None = None
    last: Outcome | None = None
    exported: bool = False           # scaler_member_health set for it (then only on changes)
    downs: deque[float] = field(default_factory=lambda: deque(maxlen=64))

    def as_dict(self) -> dict[str, object]:
        return {"health": str(self.counters.health), "last_check_at": self.last_at,
                "last_result": str(self.last.result) if self.last else None,
                "last_detail": self.last.detail if self.last else None,
                "latency_ms": round(self.last.latency_s * 1000, 2) if self.last else None,
                "consecutive_failures": self.counters.fails, "consecutive_successes": self.counters.oks}


# The pool's effective max now (policies' bounds, schedules included), None when unknown.
MaxOf = Callable[[str, float], int | None]


@dataclass
class HealthChecker:
    store: Store
    pools: Mapping[str, PoolConfig]
    registry: CollectorRegistry
    reroute: Callable[[], Awaitable[None]]          # apply the routes now (lifecycle fast path)
    wake: Callable[[], None]                        # start a lifecycle pass (a replacement was started)
    max_of: MaxOf = lambda pool, now: None
    clock: Callable[[], float] = time.time
    prober: Prober = field(default_factory=SocketProber)

    def __post_init__(self) -> None:
        self.metrics = HealthMetrics(self.registry)
        self.members: dict[str, MemberCheck] = {}
        self.panic: dict[str, str | None] = {}       # pool → why it is in panic (None: it is not)
        self._tasks: list[asyncio.Task[None]] = []
        self._said: set[tuple[str, str]] = set()     # (pool, message) logged once
        self._targets: dict[str, tuple[tuple[str | None, str], CheckTarget | str]] = {}

    # --- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        for name, pool in self.pools.items():
            if pool.health.enabled:
                self._tasks.append(asyncio.get_running_loop().create_task(self._run(name, pool.health),
                                                                          name=f"health-{name}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    async def _run(self, pool: str, cfg: HealthCheckConfig) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            t0 = loop.time()
            try:
                await self.round(pool)
            except Exception:       # one bad round must not stop the checks of the pool
                log.exception("health round of pool %s failed", pool, extra={"pool": pool})
            self.metrics.round_seconds.labels(pool).observe(loop.time() - t0)
            next_at = max(next_at + cfg.interval, loop.time())
            await asyncio.sleep(next_at - loop.time())

    # --- one round -------------------------------------------------------------------------------

    async def round(self, pool: str) -> None:
        """Check every routed member of `pool` once and act on what changed."""
        cfg = self.pools[pool].health
        try:
            # The members as last read if the database confirmed them within one interval (no I/O:
            # a round of each pool every 200 ms would be 5,000 reads a second at 1,000 pools), else
            # read in the store's own thread (Store.call): the loop never waits for the database.
            mine = self.store.members_if_fresh(pool, cfg.interval)
            if mine is None:
                mine = await self.store.call(self.store.members, pool)
            members = [m for m in mine if m.state in CHECKED]
        except StoreError as exc:
            self._say(pool, f"health checks skipped: the store cannot be read: {exc}", logging.ERROR)
            return
        self._forget_gone(pool, {m.id for m in members})
        targets: list[CheckTarget] = []
        checked: list[Member] = []
        for m in members:
            # Resolved once per member and kept while its address and endpoints stay the same: the
            # templates and the endpoints' JSON cost more than the check itself at 4,000 checks/s.
            key = (m.address, m.endpoints)
            cached = self._targets.get(m.id)
            t = cached[1] if cached is not None and cached[0] == key else resolve(cfg, m)
            self._targets[m.id] = (key, t)
            if isinstance(t, str):
                self._say(pool, t, logging.ERROR)
                continue
            targets.append(t)
            checked.append(m)
        outcomes = await self.prober.check_all(targets) if targets else []
        now = self.clock()
        changes = [c for m, out in zip(checked, outcomes, strict=True)
                   if (c := self._observe(pool, cfg, m, out)) is not None]
        # Panic is about the routed members: standby members neither cause nor hide it.
        healths = {m.id: Health(m.health) for m in members if m.state != MemberState.STANDBY}
        healths.update({m.id: after for m, _, after, _ in changes if m.state != MemberState.STANDBY})
        panic = self._panic_reason(cfg, list(healths.values()))
        if not changes and pool in self.panic and panic == self.panic[pool] and all(
                m.health != Health.DOWN for m in members):
            return      # nothing to write, nobody to replace: the usual round
        try:
            started = await self.store.call(self._act, pool, cfg, changes, members, panic, now)
        except StoreError as exc:
            self._say(pool, f"health: the store refused a write, routes left as they are: {exc}", logging.ERROR)
            return
        if changes:
            await self.reroute()
        if started:
            self.wake()

    def _act(self, pool: str, cfg: HealthCheckConfig, changes: list[tuple[Member, Health, Health, Outcome]],
             members: list[Member], panic: str | None, now: float) -> bool:
        """The round's writes, in the store's thread: new healths with their events, the panic
        state, a replacement. True if a replacement started."""
        for m, before, after, out in changes:
            self._record(pool, cfg, m, before, after, out, panic, now)
        self._note_panic(pool, panic, now)
        return self._replace(pool, cfg, members, now)

    def _observe(self, pool: str, cfg: HealthCheckConfig, m: Member,
                 out: Outcome) -> tuple[Member, Health, Health, Outcome] | None:
        """Feed one result into the member's counters; (member, before, after, outcome) if its health changed."""
        mc = self.members.get(m.id)
        if mc is None:
            mc = self.members[m.id] = MemberCheck(pool, m.instance, Counters(Health(m.health)))
        mc.last_at, mc.last = self.clock(), out
        self.metrics.count(pool, out)
        if out.result is Result.ERROR:
            self._say(pool, f"health check of {m.instance} could not be made: {out.detail}", logging.WARNING)
        before = mc.counters.health
        mc.counters = observe(mc.counters, out.result, cfg.rise, cfg.fall)
        after = mc.counters.health
        if after is not before or not mc.exported:
            self.metrics.health.labels(pool, m.instance).set({Health.UP: 1, Health.DOWN: 0}.get(after, -1))
            mc.exported = True
        if after is before or after is Health.UNKNOWN:
            return None
        if after is Health.DOWN:
            mc.downs.append(self.clock())
        return m, before, after, out

    def _record(self, pool: str, cfg: HealthCheckConfig, m: Member, before: Health, after: Health, out: Outcome,
                panic: str | None, now: float) -> None:
        if after is Health.DOWN:
            kind = "HTTP check" if cfg.type == "http" else "TCP check"
            reason = f"{kind} failed {cfg.fall} times (fall {cfg.fall}): {out.detail}"
            self.metrics.withdrawals.labels(pool, _reason_label(out.detail)).inc()
            event = f"{m.instance} unhealthy: {reason}: " + (
                "standby, never routed: failed" if m.state == MemberState.STANDBY else
                "kept routed (pool in panic)" if panic else "withdrawn")
            log.warning("pool %s: %s", pool, event, extra={"pool": pool, "member": m.instance})
        else:
            reason = f"{cfg.rise} checks passed (rise {cfg.rise}): {out.detail}"
            if before is not Health.DOWN:       # first verdict on a new member: stored, not an event
                self.store.set_health(m.id, str(after), now, reason)
                return
            event = f"{m.instance} healthy again: {reason}: re-announced"
            log.info("pool %s: %s", pool, event, extra={"pool": pool, "member": m.instance})
        self.store.set_health(m.id, str(after), now, reason, event)

    @staticmethod
    def _panic_reason(cfg: HealthCheckConfig, healths: list[Health]) -> str | None:
        if not in_panic(healths, cfg.panic_threshold):
            return None
        down = sum(1 for h in healths if h is Health.DOWN)
        return (f"panic: {down} of {len(healths)} members down (more than {cfg.panic_threshold:.0%}): every "
                f"route kept and no replacement started; suspect the checker or its path first")

    def _note_panic(self, pool: str, panic: str | None, now: float) -> None:
        was = self.panic.get(pool)
        self.panic[pool] = panic
        self.metrics.panic.labels(pool).set(1 if panic else 0)
        if panic and was is None:
            log.error("pool %s: %s", pool, panic, extra={"pool": pool})
            self.store.add_event(pool, "health_panic", panic, now)
        elif not panic and was is not None:
            msg = "panic over: down members are withdrawn again"
            log.warning("pool %s: %s", pool, msg, extra={"pool": pool})
            self.store.add_event(pool, "health_panic", msg, now)

    def _replace(self, pool: str, cfg: HealthCheckConfig, members: list[Member], now: float) -> bool:
        """Fail and replace members down for `replace_after` (or flapping). One at a time per pool,
        never in panic, never above the pool's max."""
        if self.panic.get(pool):
            return False
        for m in members:
            if m.state == MemberState.STANDBY and m.health == Health.DOWN and (
                    (now_m := self.store.member(m.id)) is not None and now_m.state == MemberState.STANDBY):
                # Serves nobody: failed at once (then deleted), and the engine boots another.
                self.store.transition(m.id, MemberState.FAILED, now,
                                      error=f"standby member found down: {m.health_reason}")
                log.warning("pool %s: standby member %s is down: failed (%s)", pool, m.instance, m.health_reason,
                            extra={"pool": pool, "member": m.instance})
        for m in sorted(members, key=lambda m: (m.health_since or 0.0, m.id)):
            if m.health != Health.DOWN or MemberState(m.state) not in REPLACEABLE:
                continue
            mc = self.members.get(m.id)
            flaps = mc is not None and flapping(mc.downs, now, cfg.flap_window, cfg.flap_limit)
            down_for = now - (m.health_since or now)
            if down_for < cfg.replace_after and not flaps:
                continue
            size = sum(1 for x in self.store.members(pool) if MemberState(x.state) in REPLACEABLE or (
                x.state in (MemberState.CREATING, MemberState.BOOTING, MemberState.HEALTHY) and not x.standby))
            top = self.max_of(pool, now)
            why = (f"went down {cfg.flap_limit} times within {format_duration(cfg.flap_window)}" if flaps else
                   f"down for {format_duration(down_for)}") + f" ({m.health_reason})"
            row = self.store.pool(pool)
            if row is not None and row.paused_at is not None:
                # Withdrawn (the route is safety), not replaced: a pause stops every change of the fleet.
                self._say(pool, f"{m.instance} {why}: not replaced while the pool is {row.pause_summary()}",
                          logging.WARNING)
                return False
            if top is not None and size > top:
                self._say(pool, f"{m.instance} {why}: not replaced, the pool ({size}) is above its max ({top})",
                          logging.WARNING)
                continue
            try:
                # A ready standby member stands in first (announced at once), else a new one boots.
                pool_cfg = self.pools.get(pool)
                op = self.store.start_replacement(m, size, f"replace {m.instance}: {why}", now,
                                                  pool_cfg.instance_template() if pool_cfg else None)
            except StoreError as exc:
                self._say(pool, f"replacing {m.instance} waits: {exc}", logging.INFO)
                return False
            self.metrics.replacements.labels(pool, "flapping" if flaps else "down").inc()
            log.warning("pool %s: %s: replacing %s (%s)", pool, op.id, m.instance, why,
                        extra={"pool": pool, "member": m.instance, "operation": op.id})
            return True
        return False

    def _forget_gone(self, pool: str, ids: set[str]) -> None:
        for mid in [k for k, mc in self.members.items() if k not in ids and mc.pool == pool]:
            mc = self.members.pop(mid)
            self._targets.pop(mid, None)
            with contextlib.suppress(KeyError):
                self.metrics.health.remove(pool, mc.instance)

    def _say(self, pool: str, message: str, level: int) -> None:
        if (pool, message) not in self._said:
            self._said.add((pool, message))
            log.log(level, "pool %s: %s", pool, message, extra={"pool": pool})

    # --- views -----------------------------------------------------------------------------------

    def view(self, member_id: str) -> dict[str, object] | None:
        mc = self.members.get(member_id)
        return mc.as_dict() if mc is not None else None


def _reason_label(detail: str) -> str:
    for word in ("refused", "timed out", "reset", "unreachable", "HTTP"):
        if word in detail:
            return {"timed out": "timeout", "HTTP": "status"}.get(word, word)
    return "other"


__all__ = ["CHECKED", "CheckTarget", "HealthChecker", "Outcome", "Prober", "SocketProber", "resolve"]
