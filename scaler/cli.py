"""Command line: `scaler run`, `scaler check`, `scaler policy check`, `scaler status`, `scaler why`,
`scaler router`, `scaler cluster`, `scaler breaker`, `scaler pause`/`resume`, `scaler rollout`,
`scaler reload`, `scaler signal-url`, `scaler simulate`, `scaler lab …`, `scaler demo`.

The commands that ask the running service (status, why, router, cluster, breaker, pause, resume,
rollout, reload) reach its
API by URL, by unix socket or through the address in scaler.yaml, with a bearer token read from a file
(scaler.client); `--json` prints the API's JSON as it came. Exit codes: EXIT_CODES below, the same in
`scaler --help` and the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaler.client import (
    ENV_API,
    ENV_CACERT,
    ENV_SOCKET,
    ENV_TOKEN_FILE,
    ApiClient,
    ApiError,
    ApiTarget,
    InputError,
    env,
)
from scaler.errors import ConfigError, ScalerError
from scaler.logs import FORMATS as LOG_FORMATS
from scaler.logs import setup_logging

if TYPE_CHECKING:
    import httpx

# Every command exits with one of these (scripts, systemd's RestartPreventExitStatus=, monitoring).
EXIT_OK = 0
EXIT_PROBLEMS = 1       # problems in what the command was given or checked: fix the input, retrying will not help
EXIT_USAGE = 2          # the command line does not parse (argparse's own code)
EXIT_API = 3            # the service's API cannot be reached, refused the request (401/403) or answered an error
EXIT_FAILED = 4         # failed while running (`scaler run` stopped on an error …): retrying may help
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    success (check: everything is valid; status, why …: the answer was printed)
  {EXIT_PROBLEMS}    problems in what the command was given or checked: invalid scaler.yaml or policy
       files (check, policy check, run, simulate), a bad option value or recording, a pool
       the service does not know, an unreadable token file, a policy reload the service rejected
  {EXIT_USAGE}    the command line does not parse (unknown option, missing argument)
  {EXIT_API}    the API cannot be reached, refused the request (401/403: no or a wrong token) or
       answered with an error (409: the pool's state refuses it, e.g. another operation runs)
  {EXIT_FAILED}    failed while running: `scaler run` stopped on an error, Prometheus failed (simulate)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


def cmd_run(args: argparse.Namespace) -> int:
    from scaler.service import run

    asyncio.run(run(Path(args.config)))
    return 0


def _policies_json(ok: bool, problems: list[str], pools: dict[str, Any]) -> None:
    print(json.dumps({"ok": ok, "problems": problems, "pools": pools}, indent=2))


def cmd_check(args: argparse.Namespace) -> int:
    from scaler.config import load_config, load_policies
    from scaler.service import REGISTRIES

    try:
        cfg = load_config(Path(args.config), REGISTRIES)
        policies = load_policies(cfg)
    except ConfigError as exc:
        if not args.json:
            raise
        _policies_json(False, exc.problems, {})
        return EXIT_PROBLEMS
    if args.json:
        _policies_json(True, [], {name: {"vip": str(cfg.pools[name].vip), "min": pol.min, "max": pol.max,
                                         "rules": len(pol.rules), "dry_run": pol.dry_run}
                                  for name, pol in sorted(policies.items())})
        return EXIT_OK
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

    try:
        cfg = _service_config(args.config, required=args.config_given)
    except ConfigError as exc:
        if not args.json:
            raise
        _policies_json(False, exc.problems, {})
        return EXIT_PROBLEMS
    if cfg is None:
        print(f"note: {args.config} not found: pools and collectors are not checked (use -c)", file=sys.stderr)
    assert cfg is None or isinstance(cfg, ServiceConfig)
    policies, problems = check_policy_paths([Path(p) for p in args.paths], cfg)
    if args.json:
        _policies_json(not problems, problems, {} if problems else {
            name: {"min": pol.min, "max": pol.max, "inputs": len(pol.inputs), "rules": len(pol.rules),
                   "dry_run": pol.dry_run} for name, pol in sorted(policies.items())})
        return EXIT_PROBLEMS if problems else EXIT_OK
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", file=sys.stderr)
        return EXIT_PROBLEMS
    for name, pol in sorted(policies.items()):
        print(f"{name}: min {pol.min}, max {pol.max}, {len(pol.inputs)} inputs, {len(pol.rules)} rules"
              + (" (dry-run)" if pol.dry_run else ""))
    print("OK")
    return 0


def _api_target(args: argparse.Namespace) -> ApiTarget:
    """Where the API is: --socket, --api, $SCALER_SOCKET, $SCALER_API, else api.host:port of -c's config
    (a wildcard address asked on loopback); the token file from --token-file or $SCALER_TOKEN_FILE."""
    token_file, token_from = args.token_file, "--token-file"
    if not token_file and env(ENV_TOKEN_FILE):
        token_file, token_from = env(ENV_TOKEN_FILE), ENV_TOKEN_FILE
    common: dict[str, Any] = {"token_file": token_file, "token_from": token_from,
                              "cacert": args.cacert or env(ENV_CACERT)}
    socket = args.socket or (None if args.api else env(ENV_SOCKET))
    if socket:
        return ApiTarget(base="http://localhost", socket=socket, **common)
    api = args.api or env(ENV_API)
    if api:
        if not str(api).startswith(("http://", "https://")):
            raise InputError(f"--api {api}: not an http:// or https:// URL")
        return ApiTarget(base=str(api).rstrip("/"), **common)
    from scaler.config import ServiceConfig

    cfg = _service_config(args.config, required=True)
    assert isinstance(cfg, ServiceConfig)
    # The API's own unix socket when it serves one and this user may connect to it (whoever may, may do
    # everything: no token); else its TCP address (from another host, or a user outside the socket's group).
    if cfg.api.socket is not None and os.access(cfg.resolve(cfg.api.socket), os.R_OK | os.W_OK):
        return ApiTarget(base="http://localhost", socket=str(cfg.resolve(cfg.api.socket)), **common)
    host = "127.0.0.1" if cfg.api.host in ("0.0.0.0", "::", "") else cfg.api.host
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if cfg.api.tls is not None else "http"
    return ApiTarget(base=f"{scheme}://{host}:{cfg.api.port}", **common)


def _client(args: argparse.Namespace, timeout: float = 10.0) -> ApiClient:
    return ApiClient(_api_target(args), timeout=timeout)


def _print_json(r: httpx.Response | Any) -> None:
    """The API's JSON as it came (one document, a newline after it); a part of one as JSON."""
    import httpx

    text = r.text if isinstance(r, httpx.Response) else json.dumps(r)
    print(text if text.endswith("\n") else text + "\n", end="")


def cmd_why(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if args.json:
            _print_json(api.request("GET", f"/v1/pools/{args.pool}/decisions", params={"limit": args.n}))
        else:
            print(api.request("GET", f"/v1/pools/{args.pool}/why", params={"limit": args.n}).text, end="")
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


def _api_get(args: argparse.Namespace, path: str, fmt: Any) -> int:
    """GET a JSON document from the running service's API and print it: as it came with --json, else
    as `fmt(document)` formats it."""
    with _client(args) as api:
        r = api.request("GET", path)
    if args.json:
        _print_json(r)
    else:
        print(fmt(r.json()), end="")
    return 0


def cmd_router(args: argparse.Namespace) -> int:
    import time

    return _api_get(args, "/v1/router", lambda h: format_router(h, time.time()))


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
    return _api_get(args, "/v1/cluster", format_cluster)


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from scaler.status import format_status

    with _client(args) as api:
        r = api.request("GET", "/v1/pools")
        if args.json:
            _print_json(r)
            return 0
        cluster = api.get_json("/v1/cluster")
        policies = api.get_json("/v1/policies")
    print(format_status(r.json(), time.time(), cluster=cluster, policies=policies), end="")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    import time

    from scaler.status import paused_line

    with _client(args) as api:
        if args.pause_cmd == "pause":
            r = api.request("POST", f"/v1/pools/{args.pool}/pause", json={"reason": args.reason or ""})
        else:
            r = api.request("POST", f"/v1/pools/{args.pool}/resume")
    if args.json:
        _print_json(r)
    else:
        pool = r.json()
        print(paused_line(pool, time.time()) if pool.get("paused") else f"{args.pool}: not paused: decisions act")
    return 0


# POST /v1/pools/{pool}/rollout's bounds for `surge` (scaler.api.RolloutIn), checked here so a bad
# value is a bad option (exit 1), not an error the API answered (3).
SURGE_RANGE = (1, 100)


def cmd_rollout(args: argparse.Namespace) -> int:
    import time

    from scaler.status import format_rollout, rollout_started

    if args.status:
        if args.surge is not None:
            raise InputError("--surge: only when starting a rollout, not with --status")
        with _client(args) as api:
            r = api.request("GET", f"/v1/pools/{args.pool}/rollout")
        if args.json:
            _print_json(r)
        else:
            print(format_rollout(args.pool, r.json(), time.time()), end="")
        return 0
    surge = 1 if args.surge is None else args.surge
    if not SURGE_RANGE[0] <= surge <= SURGE_RANGE[1]:
        raise InputError(f"--surge {surge}: members replaced at a time, {SURGE_RANGE[0]} to {SURGE_RANGE[1]}")
    # 409 (another operation runs, nothing is outdated) is an error the API answered: ApiError, exit 3,
    # with its message, like pause and breaker reset.
    with _client(args) as api:
        r = api.request("POST", f"/v1/pools/{args.pool}/rollout", json={"surge": surge}, ok=(201,))
    if args.json:
        _print_json(r)
    else:
        print(rollout_started(args.pool, r.json()), end="")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    with _client(args, timeout=30) as api:
        r = api.request("POST", "/v1/reload", ok=(200, 422))
    body = r.json()
    if args.json:
        _print_json(r)
        return 0 if body["ok"] else EXIT_PROBLEMS
    if not body["ok"]:
        print("policy reload rejected; the previous policies keep running:", file=sys.stderr)
        for problem in body["problems"]:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_PROBLEMS
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
        raise InputError(f"unknown pool {args.pool!r} (pools: {', '.join(sorted(cfg.pools))})")
    base = args.base_url or f"http://{cfg.api.host}:{cfg.api.port}"
    try:
        ttl = parse_duration(args.ttl) if args.ttl else None
    except ValueError as exc:
        raise InputError(f"--ttl: {exc}") from None
    try:
        url = signal_url_for(cfg.alerts.signals, base, args.pool, args.action, time.time(), ttl_s=ttl,
                             key_id=args.key)
    except ConfigError as exc:      # the configuration is valid, but does not allow what was asked
        raise InputError("; ".join(exc.problems)) from None
    print(url)
    return 0


def cmd_breaker(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if args.breaker_cmd == "reset":
            r = api.request("POST", f"/v1/pools/{args.pool}/breaker/reset")
            body = r.json()
        else:
            r = api.request("GET", f"/v1/pools/{args.pool}")
            body = r.json()["launch_breaker"]
    if args.json:
        _print_json(r if args.breaker_cmd == "reset" else body)
    else:
        print(body["summary"])
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


def _api_options(json_output: bool = True) -> argparse.ArgumentParser:
    """The options of the commands that ask the running service (a parent parser)."""
    a = argparse.ArgumentParser(add_help=False)
    g = a.add_argument_group("reaching the API")
    g.add_argument("-c", "--config", default="scaler.yaml",
                   help="scaler.yaml, for the API's address (api.host, api.port) when neither --api nor --socket "
                   "is given (default ./scaler.yaml)")
    g.add_argument("--api", metavar="URL", default=None,
                   help=f"the API's base URL, e.g. https://scaler1:8750 (default: ${ENV_API})")
    g.add_argument("--socket", metavar="PATH", default=None,
                   help=f"the API's unix socket, on the scaler's host (default: ${ENV_SOCKET})")
    g.add_argument("--token-file", metavar="FILE", default=None,
                   help=f"send the token in FILE as 'Authorization: Bearer' (default: ${ENV_TOKEN_FILE})")
    g.add_argument("--cacert", metavar="FILE", default=None,
                   help=f"CA certificates (PEM) that sign the API's TLS certificate (default: ${ENV_CACERT}, "
                   "else the system's)")
    if json_output:
        a.add_argument("--json", action="store_true", help="print the API's JSON as it came, not text")
    return a


def _fail(args: argparse.Namespace, message: str, problems: list[str] | None = None) -> None:
    """Report why the command failed: on stderr, or as a log record when `run` logs JSON (so every line
    of its output stays one JSON object)."""
    if getattr(args, "fn", None) is cmd_run and args.log_format == "json":
        extra = {"problems": problems} if problems else None
        logging.getLogger("scaler").error("%s", message.removeprefix("scaler: "), extra=extra)
        return
    print(message if problems is None else f"{message}:", file=sys.stderr)
    for problem in problems or []:
        print(f"  {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from scaler import __version__

    p = argparse.ArgumentParser(prog="scaler", description="Autoscaler for HAProxy LB fleets on one ECMP VIP",
                                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"scaler {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log DEBUG records too")
    log_format_help = ("how log records are written to stderr: text (one line each) or json (one object per line: "
                       "ts, level, logger, message, pool, member, operation, exc); default: $SCALER_LOG_FORMAT, "
                       "else text")
    p.add_argument("--log-format", choices=LOG_FORMATS, default=None, help=log_format_help)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the service")
    r.add_argument("-c", "--config", default="scaler.yaml")
    r.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS, help=log_format_help)
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("check", help="validate scaler.yaml and the policy files, then exit (1: problems found)")
    c.add_argument("-c", "--config", default="scaler.yaml")
    c.add_argument("--json", action="store_true", help="print {ok, problems, pools} as JSON")
    c.set_defaults(fn=cmd_check)

    pol = sub.add_parser("policy", help="policy files: check")
    pol_sub = pol.add_subparsers(dest="policy_cmd", required=True)
    pc = pol_sub.add_parser("check", help="validate policy files; every problem as FILE:LINE:COL: message "
                            "(1: problems found)")
    pc.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    pc.add_argument("-c", "--config", default=None,
                    help="scaler.yaml to check pools and collectors against (default: ./scaler.yaml if present)")
    pc.add_argument("--json", action="store_true", help="print {ok, problems, pools} as JSON")
    pc.set_defaults(fn=cmd_policy_check)

    st = sub.add_parser("status", parents=[_api_options()],
                        help="every pool at a glance: size, bounds, members, health, breaker, last decision "
                        "(asks the running service)")
    st.set_defaults(fn=cmd_status)

    w = sub.add_parser("why", parents=[_api_options()],
                       help="the latest evaluations of a pool, explained (asks the running service)")
    w.add_argument("pool")
    w.add_argument("-n", type=int, default=3, help="how many evaluations (default 3)")
    w.set_defaults(fn=cmd_why)

    ro = sub.add_parser("router", parents=[_api_options()],
                        help="the router driver's state: BGP speaker and sessions (asks the running service)")
    ro.set_defaults(fn=cmd_router)

    cl = sub.add_parser("cluster", parents=[_api_options()],
                        help="which scaler leads: this one's role, the epoch, the leader, the lease (asks the "
                        "running service)")
    cl.set_defaults(fn=cmd_cluster)

    for name, text in (("pause", "pause a pool's decisions: evaluated and shown, they start nothing; health "
                                 "checks keep withdrawing dead members (asks the running service)"),
                       ("resume", "resume a paused pool's decisions (asks the running service)")):
        pa = sub.add_parser(name, parents=[_api_options()], help=text)
        pa.add_argument("pool")
        if name == "pause":
            pa.add_argument("--reason", default=None, help="why, for the events, `scaler status` and `scaler why`")
        pa.set_defaults(fn=cmd_pause, pause_cmd=name)

    rt = sub.add_parser("rollout", parents=[_api_options()],
                        help="replace a pool's members on another instance template than its current one, "
                        "surge at a time, new member in service before an old one drains; or show its "
                        "progress (asks the running service)")
    rt.add_argument("pool")
    rt.add_argument("--surge", type=int, default=None, metavar="N",
                    help=f"members replaced at a time, {SURGE_RANGE[0]}-{SURGE_RANGE[1]} (default 1)")
    rt.add_argument("--status", action="store_true",
                    help="do not start one: show the running rollout, else the last one")
    rt.set_defaults(fn=cmd_rollout)

    rl = sub.add_parser("reload", parents=[_api_options()],
                        help="make the running service re-read its policy files (like SIGHUP; 1: rejected)")
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

    br = sub.add_parser("breaker", parents=[_api_options()],
                        help="a pool's launch circuit breaker: show or reset (asks the running service)")
    br.add_argument("breaker_cmd", choices=["show", "reset"])
    br.add_argument("pool")
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
    if args.log_format is None:
        args.log_format = env("SCALER_LOG_FORMAT") or "text"
        if args.log_format not in LOG_FORMATS:
            p.error(f"SCALER_LOG_FORMAT={args.log_format}: one of {', '.join(LOG_FORMATS)}")
    if getattr(args, "api", None) and getattr(args, "socket", None):
        p.error("--api and --socket: give one of them")
    if getattr(args, "fn", None) is cmd_policy_check:
        args.config_given = args.config is not None
        args.config = args.config or "scaler.yaml"
    setup_logging(args.log_format, args.verbose)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        _fail(args, "configuration is invalid", exc.problems)
        return EXIT_PROBLEMS
    except (InputError, ApiError) as exc:
        _fail(args, f"scaler: {exc}")
        return exc.exit_code
    except ScalerError as exc:
        _fail(args, f"scaler: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
