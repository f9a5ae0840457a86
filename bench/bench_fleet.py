"""Benchmark the whole service's periodic work for a large fleet: 1,000 pools x 4 members.

The real `scaler.service.Service` (engine, lifecycle, store and its thread, scheduler, leadership; no
API server) is built in-process from a scaler.yaml and one policy file written to a temporary
directory, on a store seeded with the fleet at steady state (every member in service for an hour,
one finished scale-out per pool), with the fake drivers: `FakeOrchestrator` (its instances listed,
so the audit at start finds nothing to fix) and `FakeRouter` (already holding every route). The
service runs its jobs at the example intervals (collect 2 s, evaluate 2 s, reconcile 1 s,
policy_watch 2 s) for --seconds after a warm-up; the audit (60 s) and the prune (300 s) run only
at start. On SQLite and on PostgreSQL 15 (started for the run: tests/support/postgres.py, root;
stopped at the end; without it only SQLite runs).

Collector. The main runs use an in-process collector under the policies' source name: it answers,
with no I/O, the five samples the `haproxy` collector returns for a member (sessions in the
policy's neutral band, so every evaluation is a hold on complete data), a whole round at once as
`prometheus_query` does (collectors.batch: no task per member). That measures the scaler's
own work (engine, evaluation, store, lifecycle, router) without the transport, whose cost per
member bench_collectors.py measures; a collector that cannot reach anything would measure the error
path instead (every input missing, every read an exception). Two variants on SQLite:
`prometheus_query` against an in-process Prometheus (httpx.MockTransport answering /api/v1/query
with one series per member: one query per metric per round, the collector for a fleet this size),
and `haproxy` against a loopback port that refuses connections (one HTTP attempt per member and
round, without the exchange). A third adds the real HealthChecker (each pool every 200 ms, the
default) with a prober that answers OK without network: its rounds' store reads and bookkeeping.

Figures per run:
- value: the process's CPU seconds per wall second (cores; reference 0.30, the aim). One event loop
  plus one store thread under the GIL get about one core at most: a value near 1 means saturated;
- demand_cores: what the three jobs ask for at their intervals, from one tick of each run alone
  (scheduler paused, median of 3): CPU per tick / interval, summed. Unlike `value` it is not
  capped by what the process can get;
- per job: tick time p50/p99/max while they overlap, lateness (start minus the scheduler's planned
  time), late ticks (started more than one interval after they were due), missed ones (skipped by
  the scheduler: the previous one still running, or past its grace time);
- PostgreSQL: the server's CPU, and leaderships lost (a lease not renewed in time while the
  process was busy).
One more run is profiled (cProfile on CPU time, in the event loop's thread and in the store's) and
its time grouped: store queries, collectors, evaluation, router, metrics, event loop, our own code
(builtins and generic library code count for their callers' group).

Writes fleet_<engine>.json, fleet_<engine>_health.json, fleet_sqlite_prometheus_query.json,
fleet_sqlite_haproxy_refused.json and fleet_profile_<engine>.json (SQLite by default) to --out;
about 5 minutes.

    python bench/bench_fleet.py --out bench/results [--seconds 30] [--variant-seconds 10] [--only sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import pstats
import socket
import statistics
import sys
import tempfile
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from benchinfo import machine

from actuators.drainer import HAProxyDrainer
from actuators.fake import FakeOrchestrator, FakeRouter
from actuators.orchestrator import Instance
from actuators.router import HopState
from collectors import Collector, CollectorError, Sample, Target
from collectors.prometheus_query import PrometheusQueryCollector
from policies.health import Result
from scaler.config import driver_options, load_config, load_policies
from scaler.health import Outcome
from scaler.service import REGISTRIES, Service, build_all
from scaler.store import Member, MemberState, Operation, OpKind, OpState, Pool, Store

POOLS = 1000
MEMBERS = 4
REFERENCE_CORES = 0.30
INTERVALS = {"collect": 2.0, "evaluate": 2.0, "reconcile": 1.0, "policy_watch": 2.0}
WARMUP_S = 3.0
TIME_BUDGET_S = 300.0
HEALTH_INTERVAL_S = 0.2

POLICY = """\
    min: 2
    max: 12
    inputs:
      sessions: {source: lb, metric: current_sessions, aggregate: avg}
      queue: {source: lb, metric: queue, aggregate: max}
    rules:
      - {name: busy, input: sessions, above: 40, for: 30s, adjust: +1}
      - {name: queueing, input: queue, above: 0, for: 30s, adjust: +50%, max_step: 4}
      - {name: idle, input: sessions, below: 5, for: 10m, adjust: -1}
    cooldown: {scale_out: 1m, scale_in: 5m}
    stale_after: 10s
"""


def write(out: Path, name: str, doc: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, **doc, "machine": machine()}
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")


def address(i: int) -> str:
    """Member i's address: 10.200.0.1 … (unique for up to 62,500 members)."""
    return f"10.{200 + i // 62500}.{i // 250 % 250}.{1 + i % 250}"


def vip(p: int) -> str:
    return f"198.18.{p // 250}.{1 + p % 250}"


def pool_name(p: int) -> str:
    return f"p{p:04d}"


# --- collectors ---------------------------------------------------------------------------------------

class InProcessCollector:
    """What the `haproxy` collector returns for a member, computed in memory (no socket, no parse).
    Sessions 20-24 per member: between the idle (5) and busy (40) thresholds, so every pool holds."""

    name = "haproxy"

    def __init__(self) -> None:
        self.calls = 0

    async def collect(self, target: Target) -> list[Sample]:
        self.calls += 1
        h = zlib.crc32(target.key.encode())
        now = time.time()
        return [Sample("current_connections", 30.0 + h % 7, now), Sample("current_sessions", 20.0 + h % 5, now),
                Sample("session_rate", 50.0 + h % 11, now), Sample("request_rate", 120.0 + h % 13, now),
                Sample("queue", 0.0, now)]

    async def collect_many(self, targets: Sequence[Target]) -> list[list[Sample] | CollectorError]:
        """A round at once, like prometheus_query (collectors.batch): no task per member."""
        return [await self.collect(t) for t in targets]

    def forget(self, key: str) -> None:
        return None

    async def close(self) -> None:
        return None


class FakePrometheus:
    """/api/v1/query answered in memory: one series per member for each metric, evaluated now."""

    def __init__(self, members: int) -> None:
        self.queries = 0

        def answer(value: Callable[[int], int]) -> bytes:
            result = ",".join(f'{{"metric":{{"instance":"{address(i)}:8404","job":"lb"}},"value":[@T@,"{value(i)}"]}}'
                              for i in range(members))
            return f'{{"status":"success","data":{{"resultType":"vector","result":[{result}]}}}}'.encode()

        self.sessions = answer(lambda i: 20 + i % 5)
        self.queue = answer(lambda i: 0)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.queries += 1
        query = dict(httpx.QueryParams(request.content.decode())).get("query", "")
        body = self.queue if "queue" in query else self.sessions
        return httpx.Response(200, content=body.replace(b"@T@", f"{time.time():.3f}".encode()),
                              headers={"content-type": "application/json"})


def refused_port() -> int:
    """A loopback port nothing listens on (bound then closed): a connect is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def collector_section(kind: str, port: int) -> str:
    if kind == "prometheus_query":
        return ("  lb:\n    driver: prometheus_query\n    options:\n      url: http://prometheus.bench:9090\n"
                "      timeout_s: 1.5\n      metrics:\n"
                "        current_sessions: {query: 'sum by (instance) (haproxy_frontend_current_sessions)'}\n"
                "        queue: {query: 'sum by (instance) (haproxy_backend_current_queue)'}\n"
                "    target: {url: '{metrics_url}', uds: null}\n")
    url = f"http://127.0.0.1:{port}/metrics" if kind == "haproxy_refused" else "{metrics_url}"
    return (f"  lb:\n    driver: haproxy\n    options: {{timeout_s: 1.5}}\n"
            f"    target: {{url: '{url}', uds: null}}\n")


def write_config(tmp: Path, store_url: str, collector: str) -> Path:
    (tmp / "policies").mkdir()
    iv = "".join(f"  {k}: {v:g}s\n" for k, v in INTERVALS.items())
    pools = "".join(f"  {pool_name(p)}:\n    vip: {vip(p)}\n" for p in range(POOLS))
    (tmp / "scaler.yaml").write_text(
        f"store: {{url: '{store_url}'}}\napi: {{port: 0}}\npolicy_dir: policies\nintervals:\n{iv}"
        f"orchestrator: {{driver: fake}}\nrouter: {{driver: fake}}\n"
        f"collectors:\n{collector_section(collector, refused_port())}pools:\n{pools}")
    (tmp / "policies" / "fleet.yaml").write_text(
        "pools:\n" + "".join(f"  {pool_name(p)}:\n" + POLICY for p in range(POOLS)))
    return tmp / "scaler.yaml"


def seed(store: Store, now: float) -> list[Member]:
    """The fleet at steady state: every member in service for an hour, each pool's scale-out done."""
    members: list[Member] = []
    with store.session() as s:
        for p in range(POOLS):
            name = pool_name(p)
            s.add(Pool(name=name, vip=vip(p), created_at=now - 7200, last_scale_out_at=now - 3600))
        s.flush()
        for p in range(POOLS):
            name = pool_name(p)
            op = f"op-{p:08x}"
            s.add(Operation(id=op, pool=name, kind=OpKind.SCALE_OUT, state=OpState.DONE, from_size=0,
                            to_size=MEMBERS, reason="bench seed", created_at=now - 3700, finished_at=now - 3600))
            for j in range(MEMBERS):
                i = p * MEMBERS + j
                addr = address(i)
                eps = json.dumps({"metrics_url": f"http://{addr}:8404/metrics",
                                  "health_url": f"http://{addr}:8405/healthz"})
                m = Member(id=f"m-{i:08x}", pool=name, instance=f"{name}-{op[3:]}-{j}", op_id=op,
                           state=MemberState.IN_SERVICE, address=addr, endpoints=eps, created_at=now - 3700 + j,
                           state_since=now - 3600 + j, health="up", health_since=now - 3600)
                s.add(m)
                members.append(m)
        s.commit()
    return members


class FakeProber:
    """Every check answers OK at once: the checker's rounds without the network."""

    def __init__(self) -> None:
        self.checks = 0

    async def check_all(self, targets: Any) -> list[Outcome]:
        self.checks += len(targets)
        return [Outcome(Result.OK, "HTTP 200", 0.0002) for _ in targets]


# --- the timed service ------------------------------------------------------------------------------

class TimedService(Service):
    """The service with every job's start, planned time and duration recorded."""

    def setup_timing(self) -> None:
        self.ticks: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # (start, late, took)
        self._planned: dict[str, deque[float]] = defaultdict(deque)
        self.measuring = False
        self.running = 0
        self.winding_down = False
        self.scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)

    async def _lead(self) -> None:
        # A leadership regained after the measured window must not resume the paused jobs.
        if not self.winding_down:
            await super()._lead()

    def _on_submitted(self, ev: JobSubmissionEvent) -> None:
        # Submitted (a task created) before the job's coroutine starts: queue its planned time.
        if ev.scheduled_run_times:
            self._planned[ev.job_id].append(ev.scheduled_run_times[-1].timestamp())

    async def _job(self, name: str, fn: Callable[[], Any]) -> None:
        start = time.time()
        planned = self._planned[name].popleft() if self._planned[name] else None
        kind = name if planned is not None or name != "reconcile" else "reconcile_wake"
        t0 = time.perf_counter()
        self.running += 1
        try:
            await super()._job(name, fn)
        finally:
            self.running -= 1
        took = time.perf_counter() - t0
        if self.measuring:
            self.ticks[kind].append((start, start - planned if planned is not None else 0.0, took))


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def collector_errors(svc: Service) -> dict[str, float]:
    """Failed member reads so far, by reason (scaler_collector_errors_total)."""
    out: dict[str, float] = {}
    for metric in svc.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "scaler_collector_errors_total":
                out[sample.labels["reason"]] = out.get(sample.labels["reason"], 0) + sample.value
    return out


def tick_summary(svc: TimedService, seconds: float, missed0: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for job, interval in INTERVALS.items():
        rows = svc.ticks.get(job, [])
        took = [r[2] for r in rows]
        late = [r[1] for r in rows]
        missed = (svc.metrics.registry.get_sample_value("scaler_scheduler_missed_runs_total", {"job": job}) or 0)
        out[job] = {
            "interval_s": interval, "ticks": len(rows), "expected": int(seconds / interval),
            "p50_ms": round(quantile(took, 0.5) * 1000, 1), "p99_ms": round(quantile(took, 0.99) * 1000, 1),
            "max_ms": round(max(took, default=0) * 1000, 1),
            "lateness_p50_ms": round(quantile(late, 0.5) * 1000, 1),
            "lateness_p99_ms": round(quantile(late, 0.99) * 1000, 1),
            "lateness_max_ms": round(max(late, default=0) * 1000, 1),
            "late": sum(1 for x in late if x > interval),
            "overran": sum(1 for x in took if x > interval),
            "missed": int(missed - missed0.get(job, 0)),
        }
    if svc.ticks.get("reconcile_wake"):
        out["reconcile_wake"] = {"ticks": len(svc.ticks["reconcile_wake"])}
    return out


def postgres_cpu_s(postmaster: int) -> float:
    """User + system CPU of the postmaster and its children (the backends), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pid, ppid = int(d.name), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def isolated_ticks(svc: TimedService, reps: int = 3,
                         jobs: tuple[str, ...] = ("collect", "evaluate", "reconcile")) -> dict[str, dict[str, float]]:
    """Each job's tick run alone (scheduler paused, nothing else running), `reps` times: the median
    CPU (this process, all threads) and wall time of one tick. While the jobs overlap and the process
    is saturated, tick times measure waiting as much as work; these do not. CPU per tick / interval,
    summed, is the load the jobs ask for even when it is more than the process gets."""
    args = {job.id: job.args for job in svc.scheduler.get_jobs()}
    out: dict[str, dict[str, float]] = {}
    for name in jobs:
        job_name, fn = args[name]
        cpu: list[float] = []
        wall: list[float] = []
        for _ in range(reps):
            c0, t0 = time.process_time(), time.perf_counter()
            await Service._job(svc, job_name, fn)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
        out[name] = {"cpu_ms": round(statistics.median(cpu) * 1000, 1),
                     "wall_ms": round(statistics.median(wall) * 1000, 1)}
    return out


# --- one run ------------------------------------------------------------------------------------------

async def run_one(engine: str, store_url: str, *, seconds: float, collector: str = "inprocess",
                  health: bool = False, profile: tuple[cProfile.Profile, cProfile.Profile] | None = None,
                  postmaster: int | None = None, isolated: int = 3,
                  isolated_jobs: tuple[str, ...] = ("collect", "evaluate", "reconcile")) -> dict[str, Any]:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="scaler-fleet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        url = store_url.replace("@TMP@", str(tmp))
        cfg = load_config(write_config(tmp, url, collector), REGISTRIES)
        policies = load_policies(cfg)
        store = Store(cfg.store_url())
        store.migrate()
        now = time.time()
        members = seed(store, now)
        orchestrator = FakeOrchestrator()
        for m in members:
            orchestrator.instances[m.instance] = Instance(m.instance, m.pool, IPv4Address(m.address or ""), "active",
                                                          m.endpoint_map())
        router = FakeRouter()
        for p in range(POOLS):
            ms = members[p * MEMBERS:(p + 1) * MEMBERS]
            router.routes[IPv4Address(vip(p))] = {IPv4Address(m.address or ""): HopState.ACTIVE for m in ms}
        fake_prometheus: FakePrometheus | None = None
        built: dict[str, Collector]
        if collector == "inprocess":
            built = {"lb": InProcessCollector()}
        elif collector == "prometheus_query":
            fake_prometheus = FakePrometheus(POOLS * MEMBERS)
            handler = fake_prometheus.handler
            options = driver_options(cfg.collectors["lb"], REGISTRIES.collectors, tmp)
            built = {"lb": PrometheusQueryCollector(options,
                                                    transport_factory=lambda uds: httpx.MockTransport(handler))}
        else:
            built = build_all(cfg)[3]
        svc = TimedService(cfg, policies, store=store, orchestrator=orchestrator, router=router,
                           drainer=HAProxyDrainer(), collectors=built)
        svc.setup_timing()
        prober = FakeProber()
        svc.checker.prober = prober
        rounds: list[float] = []
        if health:
            inner = svc.checker.round

            async def timed_round(pool: str) -> None:
                t0 = time.perf_counter()
                await inner(pool)
                if svc.measuring:
                    rounds.append(time.perf_counter() - t0)

            svc.checker.round = timed_round  # type: ignore[method-assign]
        else:
            svc.checker.start = lambda: None  # type: ignore[method-assign]
        # Leadership lost (PostgreSQL: the lock session's lease not renewed in time) and regained.
        losses: list[float] = []
        on_lose = svc._on_lose

        async def counted_lose() -> None:
            losses.append(time.monotonic())
            await on_lose()

        svc._on_lose = counted_lose  # type: ignore[method-assign]
        t_start = time.monotonic()
        await svc.start()
        deadline = time.monotonic() + 90
        while "reconcile" not in svc.last_run:                 # PostgreSQL: the leader waits one lease
            if time.monotonic() > deadline:
                await svc.close()
                raise RuntimeError(f"the service did not lead within 90 s ({len(losses)} leaderships lost)")
            await asyncio.sleep(0.1)
        startup_s = time.monotonic() - t_start
        losses_at_start = len(losses)
        if seconds <= 0:                        # no scheduled window: only the ticks alone
            svc.scheduler.pause()
        await asyncio.sleep(WARMUP_S)
        missed0 = {job: svc.metrics.registry.get_sample_value("scaler_scheduler_missed_runs_total", {"job": job})
                   or 0 for job in INTERVALS}
        calls0 = getattr(built["lb"], "calls", 0)
        queries0 = fake_prometheus.queries if fake_prometheus else 0
        checks0 = prober.checks
        errors0 = collector_errors(svc)
        svc.measuring = True
        pg0 = postgres_cpu_s(postmaster) if postmaster else 0.0
        cpu0, t0 = time.process_time(), time.monotonic()
        if profile is not None:
            # One profiler in the event loop's thread, one in the store's (Store.call's thread).
            profile[0].enable()
            await svc.store.call(profile[1].enable)
        await asyncio.sleep(max(seconds, 0.0))
        if profile is not None:
            profile[0].disable()
            await svc.store.call(profile[1].disable)
        cpu1, t1 = time.process_time(), time.monotonic()
        pg1 = postgres_cpu_s(postmaster) if postmaster else 0.0
        svc.measuring = False
        wall = max(t1 - t0, 1e-9)
        errors = {k: round((v - errors0.get(k, 0)) / wall) for k, v in collector_errors(svc).items()
                  if v > errors0.get(k, 0)}
        decisions = {o: svc.metrics.registry.get_sample_value("scaler_decisions_total",
                                                              {"pool": pool_name(0), "outcome": o}) or 0
                     for o in ("hold", "scale_out", "scale_in")}
        last = svc.store.decisions(pool_name(0), limit=1)
        svc.winding_down = True
        svc.scheduler.pause()
        await svc.checker.stop()
        for _ in range(600):                                    # let the jobs in progress finish (≤ 30 s)
            if not svc.running:
                break
            await asyncio.sleep(0.05)
        if os.environ.get("BENCH_DEBUG"):
            print(f"wind-down: {svc.running} jobs still running", file=sys.stderr)
        # Ticks alone need the lease all along: not after a leadership was lost in this run.
        before_alone = collector_errors(svc)
        alone = (await isolated_ticks(svc, isolated, isolated_jobs)
                 if isolated and len(losses) == losses_at_start else {})
        errors_alone = {k: int(v - before_alone.get(k, 0)) for k, v in collector_errors(svc).items()
                        if v > before_alone.get(k, 0)}
        await svc.close()
    cores = (cpu1 - cpu0) / wall if seconds > 0 else None
    doc: dict[str, Any] = {
        "engine": engine, "collector": collector, "health_checks": health,
        "value": round(cores, 3) if cores is not None else None, "unit": "cores", "reference": REFERENCE_CORES,
        "ratio": round(cores / REFERENCE_CORES, 2) if cores is not None else None,
        "pools": POOLS, "members": POOLS * MEMBERS, "intervals_s": INTERVALS,
        "seconds": round(wall, 1) if seconds > 0 else 0,
        "ticks": tick_summary(svc, wall, missed0) if seconds > 0 else {},
        "alone": alone,
        "demand_cores": round(sum(a["cpu_ms"] / 1000 / INTERVALS[job] for job, a in alone.items()), 3),
        "startup_s": round(startup_s, 2),
        "leadership_lost": {"before_first_pass": losses_at_start,
                            "in_run": sum(1 for t in losses if t0 <= t <= t1)},
        "failed_member_reads_per_s": errors,
        "failed_member_reads_alone": errors_alone,
        "pool0_decisions_in_run": decisions,
        "pool0_last_decision": f"{last[0].outcome}: {last[0].reason}" if last else None,
        "run_s": round(time.monotonic() - began, 1),
    }
    if collector == "inprocess":
        doc["member_reads_per_s"] = round((built["lb"].calls - calls0) / wall)  # type: ignore[attr-defined]
    if fake_prometheus is not None:
        doc["prometheus_queries_per_s"] = round((fake_prometheus.queries - queries0) / wall, 2)
    if postmaster:
        doc["postgres_server_cores"] = round((pg1 - pg0) / wall, 3)
    if health:
        doc["health"] = {"interval_s": HEALTH_INTERVAL_S, "checks_per_s": round((prober.checks - checks0) / wall),
                         "expected_checks_per_s": round(POOLS * MEMBERS / HEALTH_INTERVAL_S),
                         "rounds_per_s": round(len(rounds) / wall),
                         "expected_rounds_per_s": round(POOLS / HEALTH_INTERVAL_S),
                         "round_p50_ms": round(quantile(rounds, 0.5) * 1000, 2),
                         "round_p99_ms": round(quantile(rounds, 0.99) * 1000, 2)}
    return doc


# --- profile ------------------------------------------------------------------------------------------

GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("store queries (scaler/store.py, breaker/alerts reads, SQLAlchemy, SQLModel, DB driver)",
     ("/sqlalchemy/", "/sqlmodel/", "/psycopg", "sqlite3", "scaler/store.py", "scaler/breaker.py",
      "scaler/alerts/", "scaler/leader.py", "_sqlite")),
    ("collectors (collectors/, the bench's in-process collector, httpx)",
     ("collectors/", "bench_fleet.py", "/httpx/", "/httpcore/", "/json/")),
    ("evaluation (policies/)", ("policies/",)),
    ("router (FakeRouter, lifecycle.desired_routes, actuators/)", ("actuators/",)),
    ("metrics (prometheus_client)", ("/prometheus_client/",)),
    ("health checker (scaler/health.py)", ("scaler/health.py",)),
    ("event loop and scheduler (asyncio: tasks, futures, wait_for; APScheduler)",
     ("/asyncio/", "/apscheduler/", "selectors", "/tzlocal/", "concurrent/futures")),
    ("engine and lifecycle (own code)", ("scaler/engine.py", "scaler/lifecycle.py", "scaler/service.py")),
]
# Anything else (builtins, enum, ipaddress, pydantic, json…) counts for the group of its callers.


def group_of(filename: str, func: str) -> str:
    if func == "desired_routes":
        return GROUPS[3][0]
    for name, needles in GROUPS:
        if any(n in filename for n in needles):
            return name
    return "other"


def short(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    root = str(Path(__file__).resolve().parents[1]) + "/"
    name = filename.replace(root, "")
    if "site-packages/" in name:
        name = name.split("site-packages/", 1)[1]
    elif "/lib/python3" in name:
        name = "stdlib/" + name.split("/lib/python3", 1)[1].split("/", 1)[1]
    return f"{name}:{line}({func})"


def profile_summary(loop: cProfile.Profile, store: cProfile.Profile, seconds: float) -> dict[str, Any]:
    threads = {name: sum(v[2] for v in pstats.Stats(p).stats.values())  # type: ignore[attr-defined]
               for name, p in (("event loop", loop), ("store thread", store))}
    st = pstats.Stats(loop)
    st.add(store)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, dict[Any, Any]]] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    resolved: dict[tuple[str, int, str], str] = {}

    def resolve(key: tuple[str, int, str], seen: frozenset[tuple[str, int, str]] = frozenset()) -> str:
        # Builtins and generic stdlib code (isinstance, json, enum…) belong to whoever called them:
        # the group of the caller that spent the most in them.
        if key in resolved:
            return resolved[key]
        group = group_of(key[0], key[2])
        if group == "other" and key in raw and key not in seen:
            callers = raw[key][4]
            if callers:
                top = max(callers, key=lambda c: callers[c][3] if isinstance(callers[c], tuple) else 0)
                group = resolve(top, seen | {key})
        resolved[key] = group
        return group

    groups: dict[str, float] = defaultdict(float)
    for key, (_cc, _nc, tt, _ct, callers) in raw.items():
        if group_of(key[0], key[2]) == "other" and callers:
            # Split among the callers by the time each one's calls took.
            edges = {c: v[2] for c, v in callers.items() if isinstance(v, tuple)}
            spent = sum(edges.values())
            if spent > 0:
                for c, t in edges.items():
                    groups[resolve(c)] += tt * t / spent
                continue
        groups[resolve(key)] += tt
    top_self = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:20]
    ours = ("scaler/", "policies/", "collectors/", "actuators/")
    project = [(k, v) for k, v in raw.items() if any(o in k[0] for o in ours) and "site-packages" not in k[0]]
    top_cum = sorted(project, key=lambda kv: kv[1][3], reverse=True)[:25]
    store_calls = sorted(((k, v) for k, v in raw.items() if k[0].endswith(("scaler/store.py", "scaler/breaker.py",
                                                                           "scaler/alerts/store.py"))
                          and not k[2].startswith("_") and k[2] not in ("<listcomp>", "<genexpr>", "<lambda>")),
                         key=lambda kv: kv[1][3], reverse=True)[:15]
    return {
        "profiled_seconds": round(seconds, 1),
        "profiled_cpu_s": round(total, 2),
        "threads_cpu_s": {k: round(v, 2) for k, v in threads.items()},
        "groups_self_time_share": {k: round(v / total, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_self_time": [{"function": short(k), "calls": v[1], "self_s": round(v[2], 3), "cum_s": round(v[3], 3)}
                          for k, v in top_self],
        "top_cumulative_project": [{"function": short(k), "calls": v[1], "cum_s": round(v[3], 3),
                                    "calls_per_s": round(v[1] / seconds)} for k, v in top_cum],
        "store_calls": [{"function": short(k), "calls": v[1], "calls_per_s": round(v[1] / seconds, 1),
                         "cum_s": round(v[3], 3)} for k, v in store_calls],
    }


# --- main ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def postgres() -> Iterator[Any]:
    from tests.support.postgres import PostgresServer, unavailable

    why = unavailable()
    if why is not None:
        print(f"PostgreSQL runs skipped: {why}", file=sys.stderr)
        yield None
        return
    with PostgresServer() as pg:
        yield pg


def show(doc: dict[str, Any]) -> None:
    ticks = doc["ticks"]
    parts = [f"{job} p50/p99 {t['p50_ms']:g}/{t['p99_ms']:g} ms late {t['late']} missed {t['missed']}"
             for job, t in ticks.items() if job in INTERVALS and job != "policy_watch"]
    extra = f", postgres {doc['postgres_server_cores']} cores" if "postgres_server_cores" in doc else ""
    extra += f", health {doc['health']['checks_per_s']} checks/s" if "health" in doc else ""
    lost = doc["leadership_lost"]
    extra += f", leadership lost {lost['before_first_pass']}+{lost['in_run']}" if any(lost.values()) else ""
    alone = ", ".join(f"{job} {a['cpu_ms']:g}" for job, a in doc["alone"].items())
    print(f"{doc['name']:36} {doc['value']:.3f} cores{extra}; " + "; ".join(parts)
          + f"\n{'':36} alone (CPU ms per tick): {alone} → {doc['demand_cores']} cores", file=sys.stderr,
          flush=True)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds of each main run")
    ap.add_argument("--variant-seconds", type=float, default=10.0,
                    help="measured seconds of the health and collector variants")
    ap.add_argument("--profile-seconds", type=float, default=10.0, help="profiled seconds")
    ap.add_argument("--only", choices=["sqlite", "postgresql"], help="one engine only")
    ap.add_argument("--profile", choices=["sqlite", "postgresql", "none"], default="sqlite",
                    help="the engine of the profiled run (falls back to sqlite without PostgreSQL)")
    ap.add_argument("--no-variants", action="store_true", help="main runs (and the profile) only")
    ap.add_argument("--profile-only", action="store_true", help="the profiled run only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING if os.environ.get("BENCH_DEBUG") else logging.ERROR)
    if not os.environ.get("BENCH_DEBUG"):
        logging.getLogger("scaler.leader").setLevel(logging.CRITICAL)   # losses are counted
    began = time.monotonic()
    engines = [args.only] if args.only else ["sqlite", "postgresql"]
    with postgres() if "postgresql" in engines or args.profile == "postgresql" else contextlib.nullcontext() as pg:
        def url_of(engine: str, n: int) -> tuple[str, int | None]:
            if engine == "sqlite":
                return "sqlite:///@TMP@/scaler.db", None
            assert pg is not None
            return pg.create_database(f"fleet_{n}"), pg.pid

        n = 0
        main_alone: dict[str, Any] = {}
        for engine in [] if args.profile_only else engines:
            if engine == "postgresql" and pg is None:
                continue
            runs: list[tuple[str, dict[str, Any]]] = [(f"fleet_{engine}", {"seconds": args.seconds})]
            if not args.no_variants:
                # Health checks are no job: the ticks alone are the main run's.
                runs.append((f"fleet_{engine}_health", {"seconds": args.variant_seconds, "health": True,
                                                        "isolated": 0}))
                if engine == "sqlite":
                    # A collect tick of the refused variant takes ~12 s of CPU: one alone, no window.
                    runs += [("fleet_sqlite_prometheus_query", {"seconds": args.variant_seconds,
                                                                "collector": "prometheus_query"}),
                             ("fleet_sqlite_haproxy_refused", {"seconds": 0,
                                                               "collector": "haproxy_refused", "isolated": 1,
                                                               "isolated_jobs": ("collect",)})]
            for name, kw in runs:
                n += 1
                url, postmaster = url_of(engine, n)
                doc = await run_one(engine, url, postmaster=postmaster, **kw)
                if name == f"fleet_{engine}":
                    main_alone = doc["alone"]
                elif doc["alone"] and set(doc["alone"]) != set(main_alone):
                    # Only some jobs run alone here: the others' cost is the main run's.
                    mixed = {**main_alone, **doc["alone"]}
                    doc["demand_cores"] = round(sum(a["cpu_ms"] / 1000 / INTERVALS[j] for j, a in mixed.items()), 3)
                    doc["demand_note"] = (f"{', '.join(doc['alone'])} alone in this run, the other jobs' ticks "
                                          f"from fleet_{engine}")
                if doc["value"] is None:        # no scheduled window: the value is the demand
                    doc["value"], doc["ratio"] = doc["demand_cores"], round(doc["demand_cores"] / REFERENCE_CORES, 2)
                    doc["value_is"] = "demand_cores (no scheduled window in this run)"
                if kw.get("collector") == "haproxy_refused":
                    doc["note"] = ("one HTTP attempt per member and round to a loopback port that refuses "
                                   "connections, no exchange; reads that did not fail within the collect "
                                   "timeout (1.6 s) count as timeouts; every input is missing data, so every "
                                   "pool holds")
                write(args.out, name, doc)
                show({"name": name, **doc})
        if args.profile != "none":
            engine = "postgresql" if args.profile == "postgresql" and pg is not None else "sqlite"
            n += 1
            url, postmaster = url_of(engine, n)
            # CPU time per thread (time.thread_time), not wall time: waits in epoll or on the
            # store thread are not anybody's work.
            profs = (cProfile.Profile(time.thread_time), cProfile.Profile(time.thread_time))
            doc = await run_one(engine, url, seconds=args.profile_seconds, profile=profs, postmaster=postmaster,
                                isolated=0)
            summary = profile_summary(*profs, doc["seconds"])
            write(args.out, f"fleet_profile_{engine}", {
                "engine": engine, "collector": "inprocess",
                "value": round(summary["profiled_cpu_s"] / doc["seconds"], 3), "unit": "cores (under cProfile)",
                "note": "cProfile slows the process; use the shares, not the absolute time", **summary,
                "ticks": doc["ticks"], "leadership_lost": doc["leadership_lost"]})
            print("profile (" + engine + "): " + ", ".join(f"{k.split(' (')[0]} {v:.0%}" for k, v in
                                                            summary["groups_self_time_share"].items()),
                  file=sys.stderr)
    elapsed = time.monotonic() - began
    print(f"bench_fleet: {elapsed:.0f} s", file=sys.stderr)
    if elapsed > TIME_BUDGET_S:
        print(f"warning: took {elapsed:.0f} s, over the {TIME_BUDGET_S:g} s budget", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
