"""The `scaler simulate` command line: its options, loading the policy and the recording, printing the
report, the exit codes. The only module of the package that prints or exits; the work itself is done
by `sources`, `backtest`, `report` and `plot`.

Exit codes (the same as every `scaler` command, scaler.cli): 0 done, 1 problems in the input (policy,
CSV, query or option), 2 a command line argparse refused, 4 failed while running (the Prometheus server
failed, the plot could not be written); every problem in a file is reported as FILE:LINE:COL: message.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from policies import PoolPolicy, format_duration, parse_duration
from scaler.errors import ConfigError, ScalerError
from scaler.simulate.backtest import DEFAULT_BOOT_DELAY, DEFAULT_DRAIN_DELAY, Options, simulate
from scaler.simulate.plot import plot
from scaler.simulate.recording import Recording, parse_time
from scaler.simulate.report import render_text, summarize, to_json
from scaler.simulate.sources import fetch_prometheus, read_csv

__all__ = ["add_arguments", "cmd_simulate", "load_pool", "main"]

DEFAULT_PROM_STEP = 10.0

EPILOG = """\
CSV (blank lines and # comments skipped):
  timestamp,<input>[,<input>…][,size]
  timestamp: epoch seconds or ISO 8601 (no zone = UTC), strictly increasing.
  one column per input of the pool (alarm inputs too: 1 firing, 0 resolved), holding the pool-level
  value (already aggregated across members); empty cell = no data then (alarms: no notification,
  the state holds). size (optional): the in-service members the values were measured on.
  Long format also accepted: header timestamp,input,value with one row per input and time.

--scale-with-size (default: on when the CSV has a size column) rescales aggregate: avg inputs to
value * recorded size / simulated members in service (same total load, spread evenly).

Times (--from/--to): epoch seconds, ISO 8601, now, now-1h, or +10m (after the recording's start, or
after --from). Exit codes: 0 done, 1 bad input, 2 usage, 4 Prometheus failed or the plot not written.

examples:
  scaler simulate --policy deploy/examples/policies/web.yaml --metrics deploy/examples/metrics/web.csv \\
      --boot-delay 45s --plot web.png
  scaler simulate --policy web.yaml --prometheus http://prom:9090 --from now-6h --step 15s \\
      --query sessions='avg(haproxy_frontend_current_sessions{job="lb"})'
"""


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `scaler simulate` on `parser` (and make it run `cmd_simulate`)."""
    parser.description = ("Replay recorded metrics (a CSV file or a Prometheus server's range queries)\n"
                          "through a pool's policy with a simulated clock, using the service's own\n"
                          "evaluation code: the timeline of decisions and sizes, a summary, a plot.")
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--policy", required=True, metavar="FILE", help="the policy file")
    parser.add_argument("--pool", metavar="NAME", help="the pool, when the file has several")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--metrics", metavar="FILE.csv", help="recorded series (format below)")
    src.add_argument("--prometheus", metavar="URL", help="a Prometheus server to run range queries on")
    parser.add_argument("--query", action="append", default=[], metavar="INPUT=PROMQL",
                        help="with --prometheus: the query of one input (repeat for each input)")
    parser.add_argument("--from", dest="start", metavar="TIME",
                        help="start (default: the recording's first timestamp; required with --prometheus)")
    parser.add_argument("--to", dest="end", metavar="TIME",
                        help="end (default: the recording's last timestamp; now with --prometheus)")
    parser.add_argument("--step", type=_duration_arg, metavar="DURATION",
                        help="evaluation interval (default: the CSV's median spacing; "
                             f"{format_duration(DEFAULT_PROM_STEP)} with --prometheus, also its query step)")
    parser.add_argument("--boot-delay", type=_duration_arg, default=DEFAULT_BOOT_DELAY, metavar="DURATION",
                        help="from a scale-out decision to the new members in service "
                             f"(default {format_duration(DEFAULT_BOOT_DELAY)})")
    parser.add_argument("--drain-delay", type=_duration_arg, default=DEFAULT_DRAIN_DELAY, metavar="DURATION",
                        help="from a scale-in decision to the members drained and deleted "
                             f"(default {format_duration(DEFAULT_DRAIN_DELAY)})")
    parser.add_argument("--start-size", type=int, metavar="N",
                        help="members at the start (default: the recorded size then, else the min in force)")
    parser.add_argument("--scale-with-size", action=argparse.BooleanOptionalAction, default=None,
                        help="rescale avg inputs by recorded size / simulated size (default: on when the "
                             "recording has a size column)")
    parser.add_argument("--plot", metavar="OUT.png", help="write a PNG: the inputs with thresholds, then the size")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--verbose", dest="every_evaluation", action="store_true",
                        help="show every evaluation, not only actions and changes of hold cause")
    auth = parser.add_argument_group("Prometheus access")
    auth.add_argument("--bearer-token-file", metavar="FILE", help="send the token in this file (first line)")
    auth.add_argument("--basic-auth-user", metavar="USER")
    auth.add_argument("--basic-auth-password-file", metavar="FILE")
    auth.add_argument("--ca-file", metavar="FILE", help="PEM bundle to verify the server with")
    auth.add_argument("--timeout", type=_duration_arg, default=30.0, metavar="DURATION",
                      help="per query (default 30s)")
    parser.set_defaults(fn=cmd_simulate)


def load_pool(path: Path, pool: str | None) -> PoolPolicy:
    """The pool's policy from one file, validated as `scaler policy check` does (without scaler.yaml)."""
    from scaler.config import check_policy_paths

    policies, problems = check_policy_paths([path], None)
    if problems:
        raise ConfigError(problems)
    if pool is None:
        if len(policies) > 1:
            raise ConfigError([f"{path}: the file has pools {', '.join(sorted(policies))}: choose one with --pool"])
        return next(iter(policies.values()))
    if pool not in policies:
        raise ConfigError([f"{path}: no pool {pool!r} (pools: {', '.join(sorted(policies))})"])
    return policies[pool]


def _time_arg(option: str, text: str | None, *, base: float | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_time(text, base=base)
    except ValueError as exc:
        raise ConfigError([f"{option}: {exc}"]) from None


def _prometheus(args: argparse.Namespace, policy: PoolPolicy) -> tuple[Recording, float, float, float]:
    from urllib.parse import urlsplit

    from pydantic import ValidationError

    from collectors.httpfetch import HttpOptions

    parts = urlsplit(args.prometheus)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError([f"--prometheus: {args.prometheus!r} is not an http(s) URL"])
    if "@" in parts.netloc:
        raise ConfigError(["--prometheus: credentials do not belong in the URL: use --basic-auth-user and "
                           "--basic-auth-password-file, or --bearer-token-file"])
    if args.start is None:
        raise ConfigError(["--from is required with --prometheus (e.g. --from now-1h)"])
    start = _time_arg("--from", args.start, base=None)
    assert start is not None
    end = _time_arg("--to", args.end, base=start)
    end = end if end is not None else parse_time("now")
    step = args.step if args.step is not None else DEFAULT_PROM_STEP
    queries: dict[str, str] = {}
    for q in args.query:
        name, sep, expr = q.partition("=")
        if not sep or not name.strip() or not expr.strip():
            raise ConfigError([f"--query {q!r}: write INPUT=PROMQL"])
        if name.strip() in queries:
            raise ConfigError([f"--query: input {name.strip()!r} has two queries"])
        queries[name.strip()] = expr.strip()
    if (args.basic_auth_user is None) != (args.basic_auth_password_file is None):
        raise ConfigError(["--basic-auth-user and --basic-auth-password-file go together"])
    http: dict[str, Any] = {"timeout_s": min(args.timeout, 60.0)}
    if args.bearer_token_file:
        http["bearer_token"] = {"file": args.bearer_token_file}
    if args.basic_auth_user:
        http["basic_auth"] = {"username": args.basic_auth_user, "password": {"file": args.basic_auth_password_file}}
    if args.ca_file:
        http["ca_file"] = args.ca_file
    try:
        opts = HttpOptions.model_validate(http)
    except ValidationError as exc:
        raise ConfigError([f"Prometheus access: {e['msg'].removeprefix('Value error, ')}"
                           for e in exc.errors()]) from None
    rec = fetch_prometheus(args.prometheus, queries, policy, start, end, step, headers=opts.auth_headers(),
                           verify=opts.verify(), timeout_s=args.timeout)
    return rec, start, end, step


def cmd_simulate(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Run `scaler simulate` with parsed `args`; prints the result, returns the exit code."""
    start: float | None
    end: float | None
    step: float | None
    try:
        policy = load_pool(Path(args.policy), args.pool)
        if args.prometheus:
            recording, start, end, step = _prometheus(args, policy)
        else:
            if args.query:
                raise ConfigError(["--query goes with --prometheus"])
            recording = read_csv(Path(args.metrics), policy)
            start = _time_arg("--from", args.start, base=recording.start)
            end = _time_arg("--to", args.end, base=start if start is not None else recording.start)
            step = args.step
        options = Options(boot_delay=args.boot_delay, drain_delay=args.drain_delay, step=step, start=start,
                          end=end, start_size=args.start_size, scale_with_size=args.scale_with_size)
        result = simulate(policy, recording, options)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except ScalerError as exc:
        print(f"scaler simulate: {exc}", file=sys.stderr)
        return 4
    summary = summarize(result)
    if args.json:
        out(json.dumps(to_json(result, summary, every=args.every_evaluation), indent=2, default=str))
    else:
        for line in render_text(result, summary, every=args.every_evaluation, policy_path=args.policy):
            out(line)
    if args.plot:
        try:
            plot(result, Path(args.plot), title=f"pool {policy.name} ({args.policy}) on {recording.source}")
        except OSError as exc:
            print(f"scaler simulate: cannot write {args.plot}: {exc.strerror or exc}", file=sys.stderr)
            return 4
        if not args.json:
            out(f"plot written to {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m scaler.simulate …`, the same as `scaler simulate …`."""
    parser = argparse.ArgumentParser(prog="scaler simulate")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.fn(args))

