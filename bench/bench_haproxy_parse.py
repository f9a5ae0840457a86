"""Benchmark: parsing a real HAProxy 2.6 full `/metrics` with our name-filtered parser vs prometheus_client.

Generates a config with 50 backends x 10 servers (servers on closed loopback ports, no health checks),
starts the real haproxy on 127.0.0.1, captures its full `/metrics` (no scope) and the scoped answer the
collector actually asks for, stops it, then times both parsers on the same text in the same run.
Writes `<out>/haproxy_parse.json`. It must stay on loopback and finish well under 60 s.

    python bench/bench_haproxy_parse.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collectors.base import Target
from collectors.haproxy import METRIC_NAMES, SCOPES
from collectors.prometheus_scrape import PrometheusScrapeCollector, PrometheusScrapeConfig
from collectors.promtext import parse

BACKENDS = 50
SERVERS_PER_BACKEND = 10
FRONTENDS = 5
TIME_BUDGET_S = 45.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def generate_config(metrics_port: int) -> str:
    lines = [
        "global",
        "    maxconn 4000",  # stay under a 20k FD limit
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 10s",
        "    timeout server 10s",
        "frontend metrics",
        f"    bind 127.0.0.1:{metrics_port}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    http-request return status 404",
    ]
    for f in range(FRONTENDS):
        lines += [f"frontend fe{f}", f"    bind 127.0.0.1:{free_port()}", f"    default_backend be{f}"]
        lines += [f"    use_backend be{b} if {{ path_beg /app{b}/ }}" for b in range(f, BACKENDS, FRONTENDS)]
    for b in range(BACKENDS):
        lines += [f"backend be{b}", "    balance roundrobin"]
        # Port 9 (discard) is closed on loopback; without `check` HAProxy never connects anyway.
        lines += [f"    server s{s} 127.0.0.{1 + s}:9" for s in range(SERVERS_PER_BACKEND)]
    return "\n".join(lines) + "\n"


def capture(haproxy: str) -> tuple[str, str, str]:
    """Start haproxy, return (full text, scoped text, version line); always stop it."""
    version = subprocess.run([haproxy, "-v"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    with tempfile.TemporaryDirectory(prefix="bench-hx-") as tmp:
        port = free_port()
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(generate_config(port))
        process = subprocess.Popen(
            [haproxy, "-f", str(cfg), "-p", str(Path(tmp) / "pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            base = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + 10
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"haproxy exited: {process.stderr.read().decode() if process.stderr else ''}")
                try:
                    full = httpx.get(base, timeout=5, trust_env=False)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            full.raise_for_status()
            scoped = httpx.get(base, params=[("scope", s) for s in SCOPES], timeout=5, trust_env=False)
            scoped.raise_for_status()
            return full.text, scoped.text, version
        finally:
            process.kill()
            process.wait(timeout=10)


def time_runs(fn: Callable[[], object], *, min_runs: int, max_runs: int, budget_s: float) -> list[float]:
    """Seconds per run; at least `min_runs`, then more while within `budget_s`."""
    runs: list[float] = []
    start = time.perf_counter()
    while len(runs) < max_runs and (len(runs) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return runs


def reference_parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


# What an operator would select from the full answer with the generic `prometheus_scrape` collector:
# frontend sessions and their rate, the worst backend queue, and servers that are not up.
SCRAPE_CONFIG = {
    "metrics": {
        "sessions": {"name": "haproxy_frontend_current_sessions", "labels": {"proxy": "!=metrics"}},
        "session_rate": {
            "name": "haproxy_frontend_sessions_total",
            "labels": {"proxy": "!=metrics"},
            "type": "counter",
        },
        "queue_max": {"name": "haproxy_backend_current_queue", "aggregate": "max"},
        "servers_down": {"name": "haproxy_server_status", "labels": {"state": "DOWN"}},
    },
    "start_marker": "haproxy_process_start_time_seconds",
}


def scrape_collector_runs(full: str) -> tuple[list[float], int]:
    """Seconds per answer for the `prometheus_scrape` collector's CPU part (parse + select + rates)."""
    collector = PrometheusScrapeCollector(PrometheusScrapeConfig.model_validate(SCRAPE_CONFIG))
    names = {spec["name"] for spec in SCRAPE_CONFIG["metrics"].values()} | {SCRAPE_CONFIG["start_marker"]}
    target = Target(key="lb1", url="http://lb1/metrics")
    clock = [0.0]

    def once() -> None:
        clock[0] += 10.0
        collector.samples(target, "bench", parse(full, names), 1e9 + clock[0], clock[0])

    once()
    samples = len(parse(full, names))
    return time_runs(once, min_runs=20, max_runs=500, budget_s=2.0), samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    args = parser.parse_args()
    began = time.monotonic()

    full, scoped, version = capture(args.haproxy)
    lines = full.count("\n")

    # Same answer, same wanted series: the comparison is only fair if both find the same samples.
    ours = sorted((s.name, sorted(s.labels.items()), s.value) for s in parse(full, METRIC_NAMES))
    theirs = sorted((n, sorted(lb.items()), v) for n, lb, v in reference_parse(full) if n in METRIC_NAMES)
    if ours != theirs:
        raise SystemExit("parsers disagree on the wanted series")

    ours_runs = time_runs(lambda: parse(full, METRIC_NAMES), min_runs=20, max_runs=500, budget_s=3.0)
    ref_runs = time_runs(lambda: reference_parse(full), min_runs=3, max_runs=10, budget_s=8.0)
    scoped_ours = time_runs(lambda: parse(scoped, METRIC_NAMES), min_runs=20, max_runs=2000, budget_s=1.0)
    scoped_ref = time_runs(lambda: reference_parse(scoped), min_runs=3, max_runs=50, budget_s=3.0)

    scrape_runs, scrape_samples = scrape_collector_runs(full)

    value_ms = statistics.median(ours_runs) * 1000
    reference_ms = statistics.median(ref_runs) * 1000
    result = {
        "name": "haproxy_full_metrics_parse",
        "description": (
            f"parse HAProxy full /metrics ({BACKENDS} backends x {SERVERS_PER_BACKEND} servers, "
            f"{FRONTENDS + 1} frontends), keeping the collector's {len(METRIC_NAMES)} metric names; "
            "median over runs"
        ),
        "value": round(value_ms, 3),
        "unit": "ms/scrape",
        "reference": round(reference_ms, 3),
        "reference_name": "prometheus_client.parser.text_string_to_metric_families (all samples)",
        "ratio": round(reference_ms / value_ms, 1),
        "bytes": len(full.encode()),
        "lines": lines,
        "wanted_samples": len(ours),
        "lines_per_s": round(lines / (value_ms / 1000)),
        "reference_lines_per_s": round(lines / (reference_ms / 1000)),
        "runs": len(ours_runs),
        "reference_runs": len(ref_runs),
        "scoped": {
            "scopes": list(SCOPES),
            "bytes": len(scoped.encode()),
            "lines": scoped.count("\n"),
            "value_ms": round(statistics.median(scoped_ours) * 1000, 3),
            "reference_ms": round(statistics.median(scoped_ref) * 1000, 3),
        },
        "prometheus_scrape": {
            "what": "prometheus_scrape collector on the full answer: parse + label matching + aggregation + rates",
            "metrics": sorted(SCRAPE_CONFIG["metrics"]),
            "wanted_samples": scrape_samples,
            "value_ms": round(statistics.median(scrape_runs) * 1000, 3),
            "ratio_vs_reference": round(reference_ms / (statistics.median(scrape_runs) * 1000), 1),
        },
        "haproxy": version,
        "python": platform.python_version(),
    }
    elapsed = time.monotonic() - began
    result["elapsed_s"] = round(elapsed, 1)
    if elapsed > TIME_BUDGET_S:
        print(f"warning: took {elapsed:.1f} s, over the {TIME_BUDGET_S:g} s budget", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "haproxy_parse.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
