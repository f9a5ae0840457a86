"""Command line: `scaler run`, `scaler check`, `scaler lab …`, `scaler demo`.

Exit codes: 0 success, 1 failure at run time, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

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
    from scaler import drivers
    from scaler.config import load_config, load_policies

    cfg = load_config(Path(args.config), drivers.REGISTRIES)
    policies = load_policies(cfg)
    for name, pol in sorted(policies.items()):
        print(f"{name}: vip {cfg.pools[name].vip}, min {pol.min}, max {pol.max}, {len(pol.rules)} rules"
              + (" (dry-run)" if pol.dry_run else ""))
    print(f"{args.config}: OK")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from scaler import lab

    cfg = lab.LabConfig(name=args.name)
    if args.lab_cmd == "up":
        asyncio.run(lab.lab_up(cfg))
        print(f"lab {cfg.name} is up (files in {cfg.dir})")
    elif args.lab_cmd == "down":
        removed = asyncio.run(lab.lab_down(cfg))
        print(f"lab {cfg.name} is down; removed: {removed}")
    elif args.lab_cmd == "status":
        print(asyncio.run(lab.lab_status(cfg)))
    elif args.lab_cmd == "load":
        return asyncio.run(_lab_load(lab, cfg, args))
    return 0


async def _lab_load(lab: object, cfg: object, args: argparse.Namespace) -> int:
    from scaler.lab import LoadRun

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
    from scaler.demo import demo

    return asyncio.run(demo(router=args.router, keep=args.keep))


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

    lab = sub.add_parser("lab", help="the network-namespace lab: up, down, status, load")
    lab.add_argument("lab_cmd", choices=["up", "down", "status", "load"])
    lab.add_argument("--name", default="scl", help="lab name: prefix of every namespace (default scl)")
    lab.add_argument("--seconds", type=float, default=30, help="load: how long (bounded)")
    lab.add_argument("--rps", type=float, default=50, help="load: new-connection requests per second")
    lab.add_argument("--keepalive", type=int, default=4, help="load: keep-alive clients")
    lab.set_defaults(fn=cmd_lab)

    d = sub.add_parser("demo", help="lab up, run the scaler, ramp load up and down, print the timeline")
    d.add_argument("--router", choices=["kernel"], default="kernel")
    d.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    d.set_defaults(fn=cmd_demo)

    args = p.parse_args(argv)
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
