"""Command line: `scaler run`, `scaler check`, `scaler policy check`, `scaler why`, `scaler reload`,
`scaler lab …`, `scaler demo`.

Exit codes: 0 success, 1 failure at run time, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from scaler.errors import ConfigError, ScalerError


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("apscheduler", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    from scaler.service import run

    asyncio.run(run(Path(args.config)))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from scaler.config import load_config, load_policies
    from scaler.service import REGISTRIES

    cfg = load_config(Path(args.config), REGISTRIES)
    policies = load_policies(cfg)
    for name, pol in sorted(policies.items()):
        print(f"{name}: vip {cfg.pools[name].vip}, min {pol.min}, max {pol.max}, {len(pol.rules)} rules"
              + (" (dry-run)" if pol.dry_run else ""))
    print(f"{args.config}: OK")
    return 0


def _service_config(path: str, required: bool) -> object | None:
    from scaler.config import load_config
    from scaler.service import REGISTRIES

    p = Path(path)
    if not required and not p.exists():
        return None
    return load_config(p, REGISTRIES)


def cmd_policy_check(args: argparse.Namespace) -> int:
    from scaler.config import ServiceConfig, check_policy_paths

    cfg = _service_config(args.config, required=args.config_given)
    if cfg is None:
        print(f"note: {args.config} not found: pools and collectors are not checked (use -c)", file=sys.stderr)
    assert cfg is None or isinstance(cfg, ServiceConfig)
    policies, problems = check_policy_paths([Path(p) for p in args.paths], cfg)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", file=sys.stderr)
        return 1
    for name, pol in sorted(policies.items()):
        print(f"{name}: min {pol.min}, max {pol.max}, {len(pol.inputs)} inputs, {len(pol.rules)} rules"
              + (" (dry-run)" if pol.dry_run else ""))
    print("OK")
    return 0


def _api_base(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    from scaler.config import ServiceConfig

    cfg = _service_config(args.config, required=True)
    assert isinstance(cfg, ServiceConfig)
    host = "127.0.0.1" if cfg.api.host in ("0.0.0.0", "::", "") else cfg.api.host
    return f"http://{host}:{cfg.api.port}"


def cmd_why(args: argparse.Namespace) -> int:
    import httpx

    base = _api_base(args)
    try:
        r = httpx.get(f"{base}/v1/pools/{args.pool}/why", params={"limit": args.n}, timeout=10, trust_env=False)
    except httpx.HTTPError as exc:
        raise ScalerError(f"cannot reach the scaler API at {base}: {exc}") from exc
    if r.status_code != 200:
        raise ScalerError(f"{base}: HTTP {r.status_code}: {r.text.strip()}")
    print(r.text, end="")
    return 0


def format_router(h: dict[str, Any], now: float) -> str:
    """GET /v1/router as lines an operator reads: the speaker, then one line per router session."""
    lines = [f"router driver: {h.get('driver', '?')}"]
    sp = h.get("speaker")
    if sp:
        state = "connected" if sp.get("connected") else ("running, API not connected" if sp.get("running")
                                                         else "NOT RUNNING")
        lines.append(f"speaker: {state}, pid {sp.get('pid') or '-'}, started {sp.get('starts', 0)} times, "
                     f"{sp.get('restarts', 0)} restarts" + (f", last exit: {sp['last_exit']}" if sp.get("last_exit")
                                                              else ""))
        lines.append(f"paths announced: {h.get('paths', 0)} (possibly held by routers: {h.get('paths_maybe_held', 0)})")
    for s in h.get("sessions", []):
        since = max(0.0, now - float(s.get("since", now)))
        lines.append(f"  {s['peer']:<16} {s['address']:<15} {s['state']:<9} for {since:.0f}s  ups {s['ups']} "
                     f"downs {s['downs']} replays {s['replays']} (last: {s['last_replay_paths']} paths in "
                     f"{s['last_replay_s'] * 1000:.0f} ms)")
    return "\n".join(lines) + "\n"


def _api_get(args: argparse.Namespace, path: str) -> Any:
    """GET a JSON document from the running service's API; ScalerError naming the API if it fails."""
    import httpx

    base = _api_base(args)
    try:
        r = httpx.get(f"{base}{path}", timeout=10, trust_env=False)
    except httpx.HTTPError as exc:
        raise ScalerError(f"cannot reach the scaler API at {base}: {exc}") from exc
    if r.status_code != 200:
        raise ScalerError(f"{base}: HTTP {r.status_code}: {r.text.strip()}")
    return r.json()


def cmd_router(args: argparse.Namespace) -> int:
    import time

    print(format_router(_api_get(args, "/v1/router"), time.time()), end="")
    return 0


def format_cluster(c: dict[str, Any]) -> str:
    """GET /v1/cluster as one line: this scaler's role, the epoch, who leads and the lease left."""
    lease = c.get("lease_left_s")
    parts = [f"this scaler ({c.get('me', '?')}): {c.get('role', '?')}",
             f"epoch {c.get('epoch') if c.get('epoch') is not None else '-'}",
             f"leader {c.get('leader') or 'unknown'}"]
    if lease is not None:
        parts.append(f"lease {lease:.1f}s left")
    return ", ".join(parts) + "\n"


def cmd_cluster(args: argparse.Namespace) -> int:
    print(format_cluster(_api_get(args, "/v1/cluster")), end="")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    import httpx

    base = _api_base(args)
    try:
        r = httpx.post(f"{base}/v1/reload", timeout=30, trust_env=False)
    except httpx.HTTPError as exc:
        raise ScalerError(f"cannot reach the scaler API at {base}: {exc}") from exc
    if r.status_code not in (200, 422):
        raise ScalerError(f"{base}: HTTP {r.status_code}: {r.text.strip()}")
    body = r.json()
    if not body["ok"]:
        print("policy reload rejected; the previous policies keep running:", file=sys.stderr)
        for problem in body["problems"]:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"reloaded; changed pools: {', '.join(body['changed']) or 'none'}")
    return 0


def cmd_signal_url(args: argparse.Namespace) -> int:
    import time

    from policies import parse_duration
    from scaler.alerts import signal_url_for
    from scaler.config import ServiceConfig

    cfg = _service_config(args.config, required=True)
    assert isinstance(cfg, ServiceConfig)
    if args.pool not in cfg.pools:
        raise ScalerError(f"unknown pool {args.pool!r} (pools: {', '.join(sorted(cfg.pools))})")
    base = args.base_url or f"http://{cfg.api.host}:{cfg.api.port}"
    try:
        ttl = parse_duration(args.ttl) if args.ttl else None
    except ValueError as exc:
        raise ConfigError([f"--ttl: {exc}"]) from None
    print(signal_url_for(cfg.alerts.signals, base, args.pool, args.action, time.time(), ttl_s=ttl, key_id=args.key))
    return 0


def cmd_breaker(args: argparse.Namespace) -> int:
    import httpx

    base = _api_base(args)
    try:
        if args.breaker_cmd == "reset":
            r = httpx.post(f"{base}/v1/pools/{args.pool}/breaker/reset", timeout=10, trust_env=False)
        else:
            r = httpx.get(f"{base}/v1/pools/{args.pool}", timeout=10, trust_env=False)
    except httpx.HTTPError as exc:
        raise ScalerError(f"cannot reach the scaler API at {base}: {exc}") from exc
    if r.status_code != 200:
        raise ScalerError(f"{base}: HTTP {r.status_code}: {r.text.strip()}")
    body = r.json()
    print((body if args.breaker_cmd == "reset" else body["launch_breaker"])["summary"])
    return 0


def _lab_name(value: str) -> str:
    """--name: checked here so a bad one is a usage error, not a traceback."""
    import re

    from actuators.lab.orchestrator import LAB_NAME_PATTERN

    if not re.match(LAB_NAME_PATTERN, value):
        raise argparse.ArgumentTypeError(f"{value!r}: a lab name is 1-6 lowercase letters or digits, "
                                         "starting with a letter")
    return value


def cmd_lab(args: argparse.Namespace) -> int:
    from scaler.lab import network as lab

    cfg = lab.LabConfig(name=args.name, router=args.router)
    if args.lab_cmd == "up":
        asyncio.run(lab.lab_up(cfg))
        print(f"lab {cfg.name} is up (files in {cfg.dir}, router {cfg.router})")
        if cfg.router == "bgp":
            print(f"FRR (AS {lab.BGP_ROUTER_ASN}, {lab.BGP_ROUTER_ADDRESS}) runs in {cfg.router_ns}; the scaler's "
                  f"speaker belongs in {cfg.ctl_ns} ({lab.BGP_SPEAKER_ADDRESS}, AS {lab.BGP_SPEAKER_ASN}). "
                  "For scaler.yaml:")
            from ruamel.yaml import YAML

            YAML(typ="rt").dump({"router": {"driver": "bgp", "options": cfg.bgp_router_options()}}, sys.stdout)
    elif args.lab_cmd == "down":
        removed = asyncio.run(lab.lab_down(cfg))
        print(f"lab {cfg.name} is down; removed: {removed}")
    elif args.lab_cmd == "status":
        print(asyncio.run(lab.lab_status(cfg)))
    elif args.lab_cmd == "load":
        return asyncio.run(_lab_load(lab, cfg, args))
    return 0


async def _lab_load(lab: object, cfg: object, args: argparse.Namespace) -> int:
    from scaler.lab.network import LoadRun

    run = LoadRun(cfg, max_seconds=args.seconds, short_rps=args.rps,  # type: ignore[arg-type]
                  keepalive_clients=args.keepalive)
    await run.start()
    try:
        async for stats in run.stats():
            print(json.dumps(stats), flush=True)
    finally:
        summary = await run.stop()
    print(json.dumps(summary))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from scaler.lab.demo import demo

    return asyncio.run(demo(router=args.router, keep=args.keep, name=args.name, scenario=args.scenario))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scaler", description="Autoscaler for HAProxy LB fleets on one ECMP VIP")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the service")
    r.add_argument("-c", "--config", default="scaler.yaml")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("check", help="validate scaler.yaml and the policy files, then exit")
    c.add_argument("-c", "--config", default="scaler.yaml")
    c.set_defaults(fn=cmd_check)

    pol = sub.add_parser("policy", help="policy files: check")
    pol_sub = pol.add_subparsers(dest="policy_cmd", required=True)
    pc = pol_sub.add_parser("check", help="validate policy files; every problem as FILE:LINE:COL: message")
    pc.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    pc.add_argument("-c", "--config", default=None,
                    help="scaler.yaml to check pools and collectors against (default: ./scaler.yaml if present)")
    pc.set_defaults(fn=cmd_policy_check)

    w = sub.add_parser("why", help="the latest evaluations of a pool, explained (asks the running service)")
    w.add_argument("pool")
    w.add_argument("-n", type=int, default=3, help="how many evaluations (default 3)")
    w.add_argument("-c", "--config", default="scaler.yaml", help="to find the API address")
    w.add_argument("--api", default=None, help="the API's base URL (instead of -c)")
    w.set_defaults(fn=cmd_why)

    ro = sub.add_parser("router", help="the router driver's state: BGP speaker and sessions (asks the running "
                        "service)")
    ro.add_argument("-c", "--config", default="scaler.yaml", help="to find the API address")
    ro.add_argument("--api", default=None, help="the API's base URL (instead of -c)")
    ro.set_defaults(fn=cmd_router)

    cl = sub.add_parser("cluster", help="which scaler leads: this one's role, the epoch, the leader, the lease "
                        "(asks the running service)")
    cl.add_argument("-c", "--config", default="scaler.yaml", help="to find the API address")
    cl.add_argument("--api", default=None, help="the API's base URL (instead of -c)")
    cl.set_defaults(fn=cmd_cluster)

    rl = sub.add_parser("reload", help="make the running service re-read its policy files (like SIGHUP)")
    rl.add_argument("-c", "--config", default="scaler.yaml", help="to find the API address")
    rl.add_argument("--api", default=None, help="the API's base URL (instead of -c)")
    rl.set_defaults(fn=cmd_reload)

    su = sub.add_parser("signal-url", help="print a signed URL that asks a pool to scale (for Aodh/Heat-style "
                        "alarms and scripts)")
    su.add_argument("pool")
    su.add_argument("action", choices=["scale-out", "scale-in"])
    su.add_argument("--ttl", default=None, help="how long the URL stays valid, e.g. 30d (default: alerts.signals."
                    "default_ttl)")
    su.add_argument("--base-url", default=None, help="how callers reach the API, e.g. https://scaler.example:8750 "
                    "(default: api.host:port from the config)")
    su.add_argument("--key", default=None, help="sign with this key id (default: the first of alerts.signals.keys)")
    su.add_argument("-c", "--config", default="scaler.yaml")
    su.set_defaults(fn=cmd_signal_url)

    from scaler.simulate import add_arguments as add_simulate

    add_simulate(sub.add_parser("simulate", help="replay recorded metrics through a policy: timeline, summary, "
                                "plot"))

    br = sub.add_parser("breaker", help="a pool's launch circuit breaker: show or reset (asks the running service)")
    br.add_argument("breaker_cmd", choices=["show", "reset"])
    br.add_argument("pool")
    br.add_argument("-c", "--config", default="scaler.yaml", help="to find the API address")
    br.add_argument("--api", default=None, help="the API's base URL (instead of -c)")
    br.set_defaults(fn=cmd_breaker)

    lab = sub.add_parser("lab", help="the network-namespace lab: up, down, status, load")
    lab.add_argument("lab_cmd", choices=["up", "down", "status", "load"])
    lab.add_argument("--name", type=_lab_name, default="scl",
                     help="lab name: prefix of every namespace (default scl)")
    lab.add_argument("--router", choices=["kernel", "bgp"], default="kernel",
                     help="up: what routes the VIP: kernel (the kernel driver's nexthop group) or bgp (FRR in the "
                     "router, a ctl namespace for the scaler's ExaBGP); default kernel")
    lab.add_argument("--seconds", type=float, default=30, help="load: how long (bounded)")
    lab.add_argument("--rps", type=float, default=50, help="load: new-connection requests per second")
    lab.add_argument("--keepalive", type=int, default=4, help="load: keep-alive clients")
    lab.set_defaults(fn=cmd_lab)

    d = sub.add_parser("demo", help="lab up, run the scaler, ramp load up and down, print the timeline")
    d.add_argument("--router", choices=["kernel", "bgp"], default="kernel",
                   help="kernel: resilient nexthop group over netlink (breaks no flow); bgp: ExaBGP → FRR "
                   "(plain ECMP: changes reset some flows)")
    d.add_argument("--name", type=_lab_name, default="scl", help="lab name: prefix of every namespace (default scl)")
    d.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    d.add_argument("--scenario", choices=["scale", "health"], default="scale",
                   help="scale: 1 → 2+ → 1 under load (default); health: one of three members dies, "
                        "leaves the FIB and is replaced")
    d.set_defaults(fn=cmd_demo)

    args = p.parse_args(argv)
    if getattr(args, "fn", None) is cmd_policy_check:
        args.config_given = args.config is not None
        args.config = args.config or "scaler.yaml"
    _setup_logging(args.verbose)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print("configuration is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except ScalerError as exc:
        print(f"scaler: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
