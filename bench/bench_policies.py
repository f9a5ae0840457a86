"""Benchmark: policy evaluations per second, 2,000 pools x 5 rules, 1 hour of 10 s samples per input.

Each pool has four inputs (sessions avg, CPU avg over a 1-minute window, queue max with a stand-in
for missing data, an alarm) of 360 points each, kept in deques as the engine keeps them, and five
rules (two thresholds with `for`, a target-tracking rule, a threshold with a percent step, an alarm
rule with `for`), plus a scheduled bound, warm-up and a 5-minute scale-in stabilization window with
its history. Three data shapes:

- sustained-high / sustained-low: every condition has held for the whole hour, the worst case for
  `for` windows (a walk back that does not stop at `for` reads all 360 points);
- noisy: values wander around the thresholds, so runs are short.

A second, threshold-only workload (five threshold rules on three inputs) is what the previous
evaluator could also run: `--baseline DIR` runs it against the `policies` package found in DIR (an
older checkout, e.g. `git archive <commit> policies | tar -x -C DIR`) for a before/after figure.
Reports evaluations/s (median of the rounds), the tracemalloc peak of one full round, the memory
the series take, and the process's peak RSS. Writes `<out>/policies.json`.

    python bench/bench_policies.py --out bench/results [--baseline /tmp/old]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import deque
from pathlib import Path
from typing import Any

POOLS = 2000
POINTS = 360            # one hour of 10-second samples
STEP_S = 10.0
NOW = 1_717_405_200.0   # Monday 2024-06-03 09:00 UTC: the business-hours schedule is active
TIME_BUDGET_S = 60.0

FULL = {
    "min": 2,
    "max": 40,
    "warmup": "60s",
    "inputs": {
        "sessions": {"source": "haproxy", "metric": "current_sessions", "aggregate": "avg"},
        "cpu": {"source": "snmp", "metric": "cpu", "aggregate": "avg", "window": "1m", "over": "avg"},
        "queue": {"source": "haproxy", "metric": "queue", "aggregate": "max", "on_missing": {"treat_as": 1000}},
        "latency": {"source": "alarm", "alarm": "HighLatency"},
    },
    "rules": [
        {"name": "busy", "input": "sessions", "above": 200, "for": "2m", "adjust": "+1"},
        {"name": "idle", "input": "sessions", "below": 40, "for": "10m", "adjust": "-1"},
        {"name": "cpu", "input": "cpu", "target": 60, "max_step": 3},
        {"name": "queued", "input": "queue", "above": 50, "for": "30s", "adjust": "+50%", "max_step": 4},
        {"name": "slow", "alarm": "latency", "for": "1m", "adjust": "+2"},
    ],
    "cooldown": {"scale_out": "1m", "scale_in": "5m"},
    "stabilization": {"scale_in": "5m"},
    "schedules": [{"name": "business-hours", "cron": "0 8 * * 1-5", "duration": "10h", "min": 4,
                   "timezone": "Europe/Paris"}],
}

THRESHOLDS = {
    "min": 2,
    "max": 40,
    "inputs": {
        "sessions": {"source": "haproxy", "metric": "current_sessions", "aggregate": "avg"},
        "cpu": {"source": "snmp", "metric": "cpu", "aggregate": "avg"},
        "queue": {"source": "haproxy", "metric": "queue", "aggregate": "max"},
    },
    "rules": [
        {"name": "busy", "input": "sessions", "above": 200, "for": "2m", "adjust": "+1"},
        {"name": "hot", "input": "cpu", "above": 80, "for": "5m", "adjust": "+1"},
        {"name": "queued", "input": "queue", "above": 50, "for": "30s", "adjust": "+50%"},
        {"name": "idle", "input": "sessions", "below": 40, "for": "10m", "adjust": "-1"},
        {"name": "cool", "input": "cpu", "below": 20, "for": "10m", "adjust": "-1"},
    ],
    "cooldown": {"scale_out": "1m", "scale_in": "5m"},
}

# (sessions, cpu, queue, alarm) per shape; noisy draws around these.
SHAPES = {
    "sustained-high": (250.0, 90.0, 80.0, 1.0),
    "sustained-low": (10.0, 5.0, 0.0, 0.0),
    "noisy": (120.0, 50.0, 30.0, 0.0),
}


def build_series(point_cls: Any, shape: str, inputs: list[str], seed: int) -> dict[str, deque[Any]]:
    rnd = random.Random(seed)
    base = dict(zip(("sessions", "cpu", "queue", "latency"), SHAPES[shape], strict=True))
    out: dict[str, deque[Any]] = {}
    for name in inputs:
        d: deque[Any] = deque()
        for i in range(POINTS):
            t = NOW - (POINTS - 1 - i) * STEP_S
            v = base[name]
            if shape == "noisy":
                v = float(rnd.random() < 0.1) if name == "latency" else v * rnd.uniform(0.2, 2.2)
            d.append(point_cls(t, v))
        out[name] = d
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_workload(workload: str, shape: str, rounds: int, budget_s: float) -> dict[str, Any]:
    import policies
    from policies import PolicyFile, PoolState, evaluate

    body = FULL if workload == "full" else THRESHOLDS
    policy = PolicyFile.model_validate({"pools": {"web": body}}).pools["web"]
    names = list(policy.inputs)
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    series = [build_series(policies.Point, shape, names, seed) for seed in range(POOLS)]
    build_s = time.perf_counter() - t0
    series_mb = rss_mb() - before
    if workload == "full":
        history = tuple((NOW - 300 + 10 * i, 4) for i in range(30))     # 5 minutes of evaluations
        state = PoolState(6, toward_max=6, last_scale_out_at=NOW - 3600, last_scale_in_at=NOW - 7200,
                          in_service_since=(NOW - 86400,) * 6, recommendations=history)
    else:
        state = PoolState(4, toward_max=4, last_scale_out_at=NOW - 3600, last_scale_in_at=NOW - 7200)

    def one_round() -> list[Any]:
        return [evaluate(policy, s, state, NOW) for s in series]

    decisions = one_round()         # warm caches (schedule look-ups, imports)
    times: list[float] = []
    start = time.perf_counter()
    # At least `rounds` rounds, then more (up to 3x) while within the budget.
    while len(times) < rounds or (time.perf_counter() - start < budget_s and len(times) < 3 * rounds):
        t = time.perf_counter()
        one_round()
        times.append(time.perf_counter() - t)
    tracemalloc.start()
    one_round()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    median = statistics.median(times)
    outcomes: dict[str, int] = {}
    for d in decisions:
        outcomes[str(d.outcome)] = outcomes.get(str(d.outcome), 0) + 1
    return {
        "workload": workload,
        "shape": shape,
        "evaluations_per_s": round(POOLS / median),
        "us_per_evaluation": round(median / POOLS * 1e6, 1),
        "round_ms": round(median * 1000, 1),
        "rounds": len(times),
        "round_tracemalloc_peak_kb": round(peak / 1024),
        "series_points": POOLS * len(names) * POINTS,
        "series_rss_mb": round(series_mb, 1),
        "series_build_s": round(build_s, 2),
        "outcomes": outcomes,
        "example_reason": decisions[0].reason,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--baseline", type=Path, help="a directory holding an older `policies` package")
    parser.add_argument("--rounds", type=int, default=3)
    # Internal: run one workload with `policies` from another directory and print its JSON.
    parser.add_argument("--policies-from", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=["full", "thresholds"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=list(SHAPES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = args.policies_from or Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))

    if args.workload:
        print(json.dumps(run_workload(args.workload, args.shape or "sustained-high", args.rounds, 2.0)))
        return 0

    began = time.monotonic()
    results = []
    for workload in ("full", "thresholds"):
        for shape in SHAPES:
            # One subprocess per run: each starts with a clean heap, so RSS figures do not add up.
            cmd = [sys.executable, __file__, "--workload", workload, "--shape", shape, "--rounds", str(args.rounds)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            if args.baseline and workload == "thresholds":
                base = json.loads(subprocess.run([*cmd, "--policies-from", str(args.baseline)], check=True,
                                                 capture_output=True, text=True).stdout)
                r["baseline_evaluations_per_s"] = base["evaluations_per_s"]
                r["baseline_us_per_evaluation"] = base["us_per_evaluation"]
                r["speedup"] = round(r["evaluations_per_s"] / base["evaluations_per_s"], 2)
            results.append(r)
            print(f"{workload:10} {shape:15} {r['evaluations_per_s']:>8} eval/s  {r['us_per_evaluation']:>7} us/eval"
                  f"  round peak {r['round_tracemalloc_peak_kb']} KiB"
                  + (f"  (before: {r['baseline_evaluations_per_s']} eval/s, x{r['speedup']})" if "speedup" in r
                     else ""), file=sys.stderr)
    worst = min((r for r in results if r["workload"] == "full"), key=lambda r: r["evaluations_per_s"])
    summary = {
        "name": "policy_evaluations",
        "description": (f"evaluate() for {POOLS} pools x 5 rules, {POINTS} points (1 h of 10 s samples) per input; "
                        "value = the worst data shape of the full workload (thresholds with for, target "
                        "tracking on a 1-minute window, alarm, schedule, warm-up, stabilization)"),
        "value": worst["evaluations_per_s"],
        "unit": "evaluations/s",
        "pools": POOLS,
        "points_per_input": POINTS,
        "round_ms": worst["round_ms"],
        "round_tracemalloc_peak_kb": worst["round_tracemalloc_peak_kb"],
        "max_rss_mb": round(max_rss_mb(results), 1),
        "runs": results,
        "python": platform.python_version(),
    }
    elapsed = time.monotonic() - began
    summary["elapsed_s"] = round(elapsed, 1)
    if elapsed > TIME_BUDGET_S:
        print(f"warning: took {elapsed:.1f} s, over the {TIME_BUDGET_S:g} s budget", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policies.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0


def max_rss_mb(results: list[dict[str, Any]]) -> float:
    # Children's peak RSS: each run was a child process.
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


if __name__ == "__main__":
    raise SystemExit(main())
