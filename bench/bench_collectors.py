"""Benchmark: how many LB members one core can poll every 10 s, per HAProxy collector.

Starts a real HAProxy 2.6 on 127.0.0.1 (tests/support/daemons.py; stopped by PID at the end, even on
failure) with the exporter on TCP and the stats socket on TCP and on a unix socket, once with the
50 backends x 10 servers configuration of bench_haproxy_parse.py and once with a small one (one
frontend, one backend). For each collector, rounds of concurrent polls (as the engine runs them: one
`collect` per member, all members gathered) are timed with `time.process_time()` of this process,
i.e. the scaler's CPU only; HAProxy's own CPU per poll is read from /proc/<pid>/stat alongside.
Every member is its own target key (its own rate baselines), all answered by the one HAProxy.

    members per core (10 s interval) = 10 s / scaler CPU seconds per poll

A last, daemon-free figure gives prometheus_query's CPU per member when one shared answer of 1,000
series serves a round of 1,000 members (decode once, index once, one pick per member).
Writes `<out>/collectors_poll_cost.json`. It must stay on loopback and finish well under 60 s.

    python bench/bench_collectors.py --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_haproxy_parse import BACKENDS, SERVERS_PER_BACKEND, generate_config

from collectors import Collector, CollectorError, Target
from collectors.haproxy import HAProxyCollector, HAProxyCollectorConfig
from collectors.haproxy_stats import HAProxyStatsCollector, HAProxyStatsConfig
from collectors.prometheus_query import PrometheusQueryCollector, PrometheusQueryConfig, decode_answer
from collectors.prometheus_scrape import PrometheusScrapeCollector, PrometheusScrapeConfig
from tests.support.daemons import HAProxy, free_port, haproxy

INTERVAL_S = 10.0
MEMBERS = 100  # members per round (all gathered at once, as the engine does)
ROUNDS = 10  # measured rounds, after one warm-up round (first readings, connections)
TIME_BUDGET_S = 60.0

SMALL_CONFIG = """\
global
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend metrics
    bind 127.0.0.1:{metrics_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
frontend web
    bind 127.0.0.1:{web_port}
    default_backend app
backend app
    server s1 127.0.0.1:9
"""


def with_stats_sockets(config: str, stats_port: int) -> str:
    """Add the stats sockets (unix, placeholder filled by tests.support.daemons, and TCP) to `global`."""
    lines = config.splitlines()
    at = lines.index("global") + 1
    lines[at:at] = [
        # The CLI accepts 10 connections at a time by default; here one HAProxy stands in for every
        # member at once (in production each member's HAProxy sees one poll at a time).
        f"    stats maxconn {MEMBERS + 10}",
        "    stats socket {stats_socket} mode 600 level user",
        f"    stats socket ipv4@127.0.0.1:{stats_port} level user",
    ]
    return "\n".join(lines) + "\n"


def metrics_port_of(config: str) -> int:
    lines = config.splitlines()
    at = lines.index("frontend metrics")
    return int(lines[at + 1].rsplit(":", 1)[1])


def haproxy_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    name: str, collector: Collector, targets: list[Target], hx: HAProxy, expect: str
) -> dict[str, Any]:
    async def round_() -> None:
        results = await asyncio.gather(*(collector.collect(t) for t in targets), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise RuntimeError(f"{name}: a poll failed: {result!r}")
            if expect not in {s.metric for s in result}:
                raise RuntimeError(f"{name}: no {expect} in {result}")

    await round_()  # warm-up: first readings, client set-up
    per_round: list[float] = []
    cpu0, wall0, hx0 = time.process_time(), time.perf_counter(), haproxy_cpu_s(hx.pid)
    for _ in range(ROUNDS):
        c = time.process_time()
        await round_()
        per_round.append(time.process_time() - c)
    cpu, wall, hx_cpu = time.process_time() - cpu0, time.perf_counter() - wall0, haproxy_cpu_s(hx.pid) - hx0
    polls = ROUNDS * len(targets)
    cpu_per_poll = cpu / polls
    await collector.close()
    return {
        "collector": name,
        "scaler_cpu_ms_per_poll": round(cpu_per_poll * 1000, 4),
        "scaler_cpu_ms_per_poll_rounds": [round(r / len(targets) * 1000, 4) for r in per_round],
        "members_per_core_at_10s": int(INTERVAL_S / cpu_per_poll),
        "haproxy_cpu_ms_per_poll": round(hx_cpu / polls * 1000, 3),
        "wall_ms_per_round": round(wall / ROUNDS * 1000, 1),
        "polls": polls,
    }


async def bench_config(label: str, config: str) -> list[dict[str, Any]]:
    stats_port = free_port()
    metrics_port = metrics_port_of(config)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-col-") as tmp, haproxy(
        Path(tmp), with_stats_sockets(config, stats_port)
    ) as hx:
        exporter_url = f"http://127.0.0.1:{metrics_port}/metrics"
        runs: list[tuple[str, Callable[[], Collector], Callable[[int], Target], str]] = [
            (
                "haproxy (exporter, scoped, TCP)",
                lambda: HAProxyCollector(HAProxyCollectorConfig(exclude_frontends=("metrics",))),
                lambda i: Target(key=f"m{i}", url=exporter_url),
                "current_sessions",
            ),
            (
                "haproxy_stats (stats socket, TCP)",
                lambda: HAProxyStatsCollector(HAProxyStatsConfig(exclude_frontends=("metrics",))),
                lambda i: Target(key=f"m{i}", url=f"tcp:127.0.0.1:{stats_port}"),
                "current_sessions",
            ),
            (
                "haproxy_stats (stats socket, unix)",
                lambda: HAProxyStatsCollector(HAProxyStatsConfig(exclude_frontends=("metrics",))),
                lambda i: Target(key=f"m{i}", url=str(hx.stats_socket)),
                "current_sessions",
            ),
            (
                "prometheus_scrape (exporter, scoped, TCP)",
                lambda: PrometheusScrapeCollector(
                    PrometheusScrapeConfig.model_validate(
                        {
                            "metrics": {
                                "current_sessions": {
                                    "name": "haproxy_frontend_current_sessions",
                                    "labels": {"proxy": "!=metrics"},
                                },
                                "session_rate": {
                                    "name": "haproxy_frontend_sessions_total",
                                    "labels": {"proxy": "!=metrics"},
                                    "type": "counter",
                                },
                                "queue": {"name": "haproxy_backend_current_queue"},
                            },
                            "start_marker": "haproxy_process_start_time_seconds",
                        }
                    )
                ),
                lambda i: Target(key=f"m{i}", url=exporter_url + "?scope=global&scope=frontend&scope=backend"),
                "current_sessions",
            ),
        ]
        for name, build, target, expect in runs:
            result = await measure(name, build(), [target(i) for i in range(MEMBERS)], hx, expect)
            result["haproxy_config"] = label
            results.append(result)
    return results


def bench_query_sharing(members: int = 1000) -> dict[str, Any]:
    """CPU per member of one shared prometheus_query answer (no daemon: the HTTP part is one query per
    round whatever the pool size, measured by the integration tests)."""
    body = json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    {"metric": {"instance": f"10.0.{i // 250}.{i % 250}:9100", "job": "lb"}, "value": [1e9, str(i)]}
                    for i in range(members)
                ],
            },
        }
    ).encode()
    config = PrometheusQueryConfig.model_validate({"url": "http://p:9090", "metrics": {"x": {"query": "q"}}})
    collector = PrometheusQueryCollector(config, clock=lambda: 1e9)
    spec = config.metrics["x"]
    targets = [f"10.0.{i // 250}.{i % 250}:9100" for i in range(members)]
    runs = []
    for _ in range(5):
        c = time.process_time()
        answer = decode_answer(200, body, "q")
        for member in targets:
            got = collector._pick("x", spec, "q", member, answer, 1e9)
            if isinstance(got, str):
                raise RuntimeError(got)
        runs.append(time.process_time() - c)
    per_member = statistics.median(runs) / members
    return {
        "collector": "prometheus_query (one shared answer, CPU after the HTTP exchange)",
        "members": members,
        "scaler_cpu_ms_per_member": round(per_member * 1000, 5),
        "members_per_core_at_10s": int(INTERVAL_S / per_member),
    }


async def run() -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    big = generate_config(free_port())
    small = SMALL_CONFIG.format(metrics_port=free_port(), web_port=free_port())
    results += await bench_config(f"{BACKENDS} backends x {SERVERS_PER_BACKEND} servers", big)
    results += await bench_config("1 frontend, 1 backend", small)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    began = time.monotonic()
    try:
        polls = asyncio.run(run())
    except CollectorError as exc:
        raise SystemExit(f"a collector failed: {exc}") from exc
    sharing = bench_query_sharing()
    big = {r["collector"]: r for r in polls if r["haproxy_config"].startswith(str(BACKENDS))}
    exporter = big["haproxy (exporter, scoped, TCP)"]
    stats = big["haproxy_stats (stats socket, TCP)"]
    result = {
        "name": "collectors_poll_cost",
        "description": (
            f"members one core can poll every {INTERVAL_S:g} s (10 s / scaler CPU per poll), real HAProxy 2.6 on "
            f"loopback, {MEMBERS} members per round gathered, {ROUNDS} rounds after a warm-up"
        ),
        "value": stats["members_per_core_at_10s"],
        "unit": f"members/core at {INTERVAL_S:g} s, haproxy_stats over TCP, {BACKENDS}x{SERVERS_PER_BACKEND} config",
        "reference": exporter["members_per_core_at_10s"],
        "reference_name": "haproxy exporter collector (scoped /metrics over TCP), same config, same run",
        "ratio": round(stats["members_per_core_at_10s"] / exporter["members_per_core_at_10s"], 1),
        "polls": polls,
        "prometheus_query_sharing": sharing,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    elapsed = time.monotonic() - began
    result["elapsed_s"] = round(elapsed, 1)
    if elapsed > TIME_BUDGET_S:
        print(f"warning: took {elapsed:.1f} s, over the {TIME_BUDGET_S:g} s budget", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "collectors_poll_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
