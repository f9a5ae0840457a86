"""The composition root: builds drivers from the config, wires engine, lifecycle, scheduler and API,
and runs them on one asyncio event loop until SIGTERM/SIGINT.

Start-up order matters for safety: open and migrate the store (exclusive lock), then one lifecycle
pass (re-programs the router from the store's desired state in one batch and resumes half-done
operations), then report instances the orchestrator has that the store does not know, then start
the periodic jobs and the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

import collectors
from actuators.drainer import Drainer, HAProxyDrainer
from actuators.handoff import peers_from
from actuators.orchestrator import Orchestrator
from actuators.registry import ORCHESTRATORS, ROUTERS
from actuators.router import Router
from collectors import Collector
from policies import PoolPolicy, effective_bounds
from scaler.alerts import alarm_states
from scaler.alerts import prune as prune_alerts
from scaler.api import create_app
from scaler.apiserver import ApiServer
from scaler.audit import Auditor
from scaler.config import (
    PoolConfig,
    Registries,
    ServiceConfig,
    driver_options,
    load_config,
    load_policies,
    policy_fingerprint,
)
from scaler.engine import Engine
from scaler.errors import ConfigError, ScalerError
from scaler.health import HealthChecker
from scaler.leader import Leadership, NotLeader, SoleLeader, leadership_for
from scaler.lifecycle import Lifecycle
from scaler.metrics import LeaderMetrics, Metrics, RouterHealthMetrics
from scaler.store import EventRow, Store

log = logging.getLogger("scaler")

ALERTS_KEPT_S = 7 * 86400.0

# The config models of every known driver, for validating scaler.yaml.
REGISTRIES = Registries(
    orchestrators={k: v.config for k, v in ORCHESTRATORS.items()},
    routers={k: v.config for k, v in ROUTERS.items()},
    collectors={k: v.config for k, v in collectors.COLLECTORS.items()},
    instances={k: v.instance for k, v in ORCHESTRATORS.items() if v.instance is not None},
    router_safety={k: v.safety for k, v in ROUTERS.items() if v.safety is not None},
)


def build_all(cfg: ServiceConfig) -> tuple[Orchestrator, Router, Drainer, dict[str, Collector]]:
    """The drivers and collectors named in the config, built from their validated options."""
    base = cfg.source.parent
    orchestrator = ORCHESTRATORS[cfg.orchestrator.driver].factory(
        driver_options(cfg.orchestrator, REGISTRIES.orchestrators, base))
    router = ROUTERS[cfg.router.driver].factory(driver_options(cfg.router, REGISTRIES.routers, base))
    built = {name: collectors.COLLECTORS[c.driver].factory(driver_options(c, REGISTRIES.collectors, base))
             for name, c in cfg.collectors.items()}
    return orchestrator, router, HAProxyDrainer(), built


# With several scalers and the bgp driver: the longest graceful restart time worth advertising
# (a takeover, about 1.3-2.3 leases, plus ExaBGP's start, with margin at the 2 s default lease).
HA_GRACEFUL_RESTART_S = 15


def ha_warnings(cfg: ServiceConfig) -> list[str]:
    """What a configuration for several scalers (a PostgreSQL store) should change."""
    if not cfg.store_url().startswith("postgresql") or cfg.router.driver != "bgp":
        return []
    gr = cfg.router.options.get("graceful_restart_s", 120)
    if not isinstance(gr, int) or gr <= HA_GRACEFUL_RESTART_S:
        return []
    # The routers keep a former leader's paths (stale) in ECMP for its restart time: whatever the
    # new leader withdraws meanwhile (a dead member, a drain) stays routed that long.
    return [f"router.options.graceful_restart_s is {gr} s with several scalers: after a takeover the routers "
            f"keep the former leader's paths for that long, withdrawn members included; about "
            f"{HA_GRACEFUL_RESTART_S} s suits HA (README, High availability)"]


# Health checks one process makes per second with room left for its jobs (bench/bench_health.py:
# ~190 µs of CPU per check, 2,000 checks/s ≈ 0.4 core; bench_fleet: the jobs starve past ~5,000/s).
HEALTH_CHECKS_PER_S = 2000


def health_warnings(pools: Mapping[str, PoolConfig], policies: Mapping[str, PoolPolicy]) -> list[str]:
    """The health checks the pools ask for at their policies' max, if more than one process makes."""
    rate = sum(policies[name].max / p.health.interval for name, p in pools.items()
               if p.health.enabled and name in policies)
    if rate <= HEALTH_CHECKS_PER_S:
        return []
    return [f"health checks: up to {rate:,.0f} a second at the pools' max sizes and health.interval, more than "
            f"one scaler makes with room for its jobs (~{HEALTH_CHECKS_PER_S:,}/s); raise pools.*.health.interval "
            f"(README, Fleet size)"]


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of one policy reload. `ok` False: `problems` lists every FILE:LINE:COL message and
    the previous policies keep running unchanged."""

    ok: bool
    trigger: str
    at: float
    changed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Service:
    def __init__(self, cfg: ServiceConfig, policies: dict[str, PoolPolicy], *, store: Store,
                 orchestrator: Orchestrator, router: Router, drainer: Drainer,
                 collectors: dict[str, Collector], metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.pools = dict(cfg.pools)
        self.policies = dict(policies)
        self.store = store
        self.orchestrator = orchestrator
        self.router = router
        self.collectors = collectors
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.metrics.registry.register(RouterHealthMetrics(self.router_health))
        self.lifecycle = Lifecycle(store, orchestrator, router, drainer, self.pools, self.metrics, clock,
                                   breakers={n: p.launch_breaker for n, p in self.pools.items()},
                                   peers=peers_from(orchestrator))
        self.alerts = cfg.alerts
        self.engine = Engine(store, collectors, cfg.collectors, self.pools, self.policies, self.metrics, clock,
                             collect_timeout_s=max(0.5, cfg.intervals.collect * 0.8),
                             decisions_kept=cfg.store.decisions_kept, on_operation=self.wake,
                             alarms=lambda pool, now: alarm_states(store, pool, now))
        self.lifecycle.on_deleted = self.engine.forget
        self.auditor = Auditor(self.lifecycle)
        self.checker = HealthChecker(store, self.pools, self.metrics.registry, reroute=self.lifecycle.reroute,
                                     wake=self.wake, max_of=self._max_of, clock=clock)
        # One leader per store: the leader's writes are fenced by its epoch and its side effects
        # need a valid lease (scaler.leader).
        self.leadership: Leadership = leadership_for(cfg.store_url(), lease_s=cfg.ha.lease)
        store.fence = self.leadership.fence
        self.lifecycle.guard = self.leadership.check
        self._leader_task: asyncio.Task[None] | None = None
        self.metrics.registry.register(LeaderMetrics(self.leadership.view))
        self.scheduler = AsyncIOScheduler()
        self.api: ApiServer | None = None
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.started_at: float | None = None
        self.last_run: dict[str, float] = {}
        self.last_reload: ReloadResult | None = None
        self._policy_fp = policy_fingerprint(cfg)
        self.metrics.policy_valid.set(1)
        self.metrics.policy_loaded.set(clock())

    # --- policy reload ----------------------------------------------------------------------------

    def reload_policies(self, trigger: str) -> ReloadResult:
        """Re-read and validate every policy file; apply them only if all are valid.

        Synchronous on purpose: it runs between two jobs of the single event loop, so an evaluation
        sees either the old policies or the new ones, never a mix, and none is skipped. A rejected
        edit leaves the running policies untouched and is reported in the log, the events, the
        metrics and the API (`GET /v1/policies`) until a valid edit replaces it.
        """
        now = self.clock()
        self._policy_fp = policy_fingerprint(self.cfg)
        try:
            new = load_policies(self.cfg)
        except ConfigError as exc:
            result = ReloadResult(False, trigger, now, problems=list(exc.problems))
            self.metrics.policy_reloads.labels(trigger, "rejected").inc()
            self.metrics.policy_valid.set(0)
            log.error("policy reload (%s) rejected, the previous policies keep running:\n  %s", trigger,
                      "\n  ".join(exc.problems))
            self._events([(pool, "policy_rejected", f"policy reload ({trigger}) rejected, previous policy keeps "
                                 f"running: {'; '.join(exc.problems)}") for pool in self.pools], now)
            self.last_reload = result
            return result
        changed = sorted(name for name in set(new) | set(self.policies) if new.get(name) != self.policies.get(name))
        for name in changed:
            self.engine.policy_replaced(name, self.policies.get(name), new.get(name))
        # In place: the engine and the API hold this same dict.
        self.policies.clear()
        self.policies.update(new)
        self.metrics.policy_valid.set(1)
        self.metrics.policy_reloads.labels(trigger, "applied" if changed else "unchanged").inc()
        if changed:
            self.metrics.policy_loaded.set(now)
            log.info("policy reload (%s): applied, changed pools: %s", trigger, ", ".join(changed))
            self._events([(pool, "policy_applied", f"policy reloaded ({trigger}): min {pol.min}, max {pol.max}, "
                           f"{len(pol.rules)} rules" + (", dry-run" if pol.dry_run else ""))
                          for pool in changed if (pol := new.get(pool)) is not None], now)
        result = ReloadResult(True, trigger, now, changed=changed)
        self.last_reload = result
        return result

    def _events(self, events: list[tuple[str, str, str]], now: float) -> None:
        """A reload's events (pool, kind, message), in one transaction. On the event loop (SIGHUP, the
        file watch) they go to the store's thread without waiting: a reload of 1,000 pools must not
        hold the loop (and the leader's lease renewal) for 1,000 round trips. From the API's threads,
        written before the answer."""
        def write() -> None:
            with self.store.session() as s:
                s.add_all([EventRow(at=now, pool=pool, kind=kind, message=message) for pool, kind, message in events])
                s.commit()

        if not events:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            write()
            return
        task = loop.create_task(self.store.call(write), name="reload-events")
        self._tasks.add(task)
        task.add_done_callback(self._reload_events_done)

    def _reload_events_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("storing the policy reload's events failed: %s", task.exception())

    def _max_of(self, pool: str, now: float) -> int | None:
        policy = self.policies.get(pool)
        return effective_bounds(policy, now).max if policy is not None else None

    def member_check(self, member_id: str) -> dict[str, Any] | None:
        return self.checker.view(member_id)

    def health_panic(self, pool: str) -> str | None:
        return self.checker.panic.get(pool)

    async def _prune_off_loop(self) -> None:
        await self.store.call(self.prune)

    def prune(self) -> None:
        self.engine.prune()
        # Alarm records older than a week: far above any Alertmanager repeat_interval, so a repeat
        # is still recognised as a duplicate.
        prune_alerts(self.store, self.clock(), ALERTS_KEPT_S)

    def _watch_policies(self) -> None:
        if policy_fingerprint(self.cfg) != self._policy_fp:
            self.reload_policies("file")

    # --- jobs -------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Run a lifecycle pass now (a new operation should not wait for the next tick)."""
        task = asyncio.get_running_loop().create_task(self._job("reconcile", self.lifecycle.reconcile))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _job(self, name: str, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
            if asyncio.iscoroutine(result):
                await result
            self.last_run[name] = self.clock()
        except NotLeader as exc:
            log.warning("job %s stopped: %s", name, exc)
        except Exception:
            log.exception("job %s failed", name)

    def _on_job_event(self, ev: JobExecutionEvent) -> None:
        if ev.code in (EVENT_JOB_MISSED, EVENT_JOB_MAX_INSTANCES):
            self.metrics.jobs_missed.labels(ev.job_id).inc()

    def router_health(self) -> dict[str, Any]:
        """The router driver's own view (sessions, speaker) if it has one; always names the driver."""
        out: dict[str, Any] = dict(self.router.health())
        out.setdefault("driver", self.cfg.router.driver)
        return out

    def health(self) -> dict[str, Any]:
        """ok: a leader runs its jobs on time; a follower serves (it runs none)."""
        now = self.clock()
        view = self.leadership.view()
        leading = view.role == "leader"
        stale = {name: round(now - t, 1) for name, t in self.last_run.items()
                 if hasattr(self.cfg.intervals, name) and now - t > 5 * max(getattr(self.cfg.intervals, name), 1.0)}
        ok = self.scheduler.running and (not leading or (not stale and "reconcile" in self.last_run))
        return {"ok": ok, "started_at": self.started_at, "jobs_late_s": stale if leading else {},
                "pools": sorted(self.pools), "role": view.role, "epoch": view.epoch}

    # --- run --------------------------------------------------------------------------------------

    async def start(self) -> None:
        iv = self.cfg.intervals
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        self.scheduler.add_job(self._job, "interval", seconds=iv.collect, args=["collect", self.engine.collect],
                               id="collect", max_instances=1, coalesce=True, misfire_grace_time=1)
        self.scheduler.add_job(self._job, "interval", seconds=iv.evaluate,
                               args=["evaluate", self.engine.evaluate_off_loop],
                               id="evaluate", max_instances=1, coalesce=True, misfire_grace_time=1)
        self.scheduler.add_job(self._job, "interval", seconds=iv.reconcile,
                               args=["reconcile", self.lifecycle.reconcile], id="reconcile",
                               max_instances=1, coalesce=True, misfire_grace_time=1)
        self.scheduler.add_job(self._job, "interval", seconds=300, args=["prune", self._prune_off_loop], id="prune")
        if iv.audit > 0:
            self.scheduler.add_job(self._job, "interval", seconds=iv.audit, args=["audit", self.auditor.audit],
                                   id="audit", max_instances=1, coalesce=True, misfire_grace_time=1)
        if iv.policy_watch > 0:
            self.scheduler.add_job(self._job, "interval", seconds=iv.policy_watch,
                                   args=["policy_watch", self._watch_policies], id="policy_watch",
                                   max_instances=1, coalesce=True)
        # Paused until this scaler leads: followers run no job (they serve the API and webhooks).
        self.scheduler.start(paused=True)
        self.started_at = self.clock()
        log.info("scaler started: pools %s, store %s", ", ".join(sorted(self.pools)), self.cfg.store_url()
                 if self.cfg.store_url().startswith("sqlite") else "(database URL hidden)")
        for warning in ha_warnings(self.cfg) + health_warnings(self.pools, self.policies):
            log.warning("%s", warning)
        if isinstance(self.leadership, SoleLeader):
            await self._lead()          # the only scaler of its store: leads at once
        else:
            self._leader_task = asyncio.get_running_loop().create_task(
                self.leadership.run(self._on_lead, self._on_lose), name="leadership")

    async def _lead(self) -> None:
        """Start acting: resume half-done work and re-program the router from the store (first pass),
        report what the orchestrator has that the store does not, then run the jobs and the checks."""
        await self.store.call(self.store.ensure_pools, {name: str(p.vip) for name, p in self.pools.items()},
                              self.clock())
        await self.lifecycle.reconcile()
        self.last_run["reconcile"] = self.clock()
        await self.auditor.audit()
        self.scheduler.resume()
        # Health checks start after the first pass: members found down before a restart stay
        # withdrawn (their health is stored) until `rise` checks pass again.
        self.checker.start()

    async def _on_lead(self) -> None:
        task = asyncio.get_running_loop().create_task(self._lead_or_resign(), name="lead")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lead_or_resign(self) -> None:
        """Start leading; if that fails (the store, the router, a lost lease), stop acting and give the
        leadership up at once, so another scaler can lead instead of a leader that does nothing."""
        try:
            await self._lead()
            self.last_run["lead"] = self.clock()
        except Exception as exc:
            log.error("starting to lead failed: %s; resigning", exc)
            await self._on_lose()
            await self.leadership.resign()

    async def _on_lose(self) -> None:
        """Stop acting at once: no job, no check, no speaker of ours announcing (routes stay)."""
        self.scheduler.pause()
        await self.checker.stop()
        try:
            await asyncio.wait_for(self.router.stand_down(), 5)
        except Exception as exc:
            log.error("router stand-down after losing leadership: %s", exc)

    def cluster(self) -> dict[str, Any]:
        return self.leadership.view().as_dict()

    def listen(self) -> None:
        """Bind the API's sockets (TCP, TLS, unix socket): ScalerError naming what is wrong. Called
        before start(), so a port in use stops `scaler run` before it acts on anything."""
        if self.api is None:
            self.api = ApiServer.open(create_app(self, self.clock, access=self.cfg.api), self.cfg)

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT or stop()."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_policies, "SIGHUP")
        self.listen()
        assert self.api is not None
        log.info("API on %s", self.api.description)
        api_task = asyncio.create_task(self.api.serve())
        stop_task = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait({api_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if api_task in done:
            api_task.result()       # ScalerError if it failed
            raise ScalerError(f"API server on {self.api.description} stopped")
        self.api.stop()
        await asyncio.gather(api_task, return_exceptions=True)

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self._leader_task is not None:
            self._leader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leader_task
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self.checker.stop()
        # Let a pass in progress finish its current step: every step is resumable, but finishing is kinder.
        if self.leadership.may_act():
            with contextlib.suppress(TimeoutError, NotLeader):
                await asyncio.wait_for(self.lifecycle.reconcile(), 10)
        for c in self.collectors.values():
            await c.close()
        await self.orchestrator.close()
        await self.router.close()
        await self.leadership.close()       # a clean stop hands over at once
        if self.api is not None:
            self.api.close()
        self.store.close()


def build(config_path: Path) -> Service:
    """Load and validate everything, open the store: a Service ready to start, or a ConfigError."""
    cfg = load_config(config_path, REGISTRIES)
    policies = load_policies(cfg)
    store = Store(cfg.store_url())
    try:
        store.migrate()
        orchestrator, router, drainer, collectors = build_all(cfg)
    except BaseException:
        store.close()
        raise
    return Service(cfg, policies, store=store, orchestrator=orchestrator, router=router, drainer=drainer,
                   collectors=collectors)


async def run(config_path: Path) -> None:
    service = build(config_path)
    try:
        service.listen()
        await service.start()
        await service.serve()
    finally:
        await service.close()
        log.info("scaler stopped")
