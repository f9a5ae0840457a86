"""`scaler status`: every pool in one table an operator reads at 3 a.m., then one line for each thing
that needs attention (an open breaker, members down, health panic, an operation under way, a pause,
outdated members, rejected policies); `scaler rollout POOL --status`: a rollout's progress.

Only formats what the API returns (`GET /v1/pools`, `/v1/cluster`, `/v1/policies`); a field the API
does not send (an older service) is shown as "-" or left out, never guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from policies import format_duration

# Member states in the order a member goes through them (the ones that serve first).
# `standby`: booted and checked, not announced (next after announcing: a scale-out announces it).
STATE_ORDER = ("in_service", "announcing", "standby", "healthy", "booting", "creating", "draining", "withdrawn",
               "deleting", "failed")
_OUTCOME = {"scale_out": "scale out", "scale_in": "scale in", "hold": "hold"}


def _seconds(at: Any, now: float) -> float | None:
    """How long ago an ISO 8601 time of the API was (None: not a time)."""
    if not isinstance(at, str):
        return None
    try:
        return max(0.0, now - datetime.fromisoformat(at).timestamp())
    except ValueError:
        return None


def _age(at: Any, now: float) -> str | None:
    s = _seconds(at, now)
    return None if s is None else (f"{format_duration(s)} ago" if s >= 0.5 else "just now")


def _for(at: Any, now: float) -> str:
    """" for 2m5s" (since an ISO time), or "" when the time is unknown."""
    s = _seconds(at, now)
    return "" if s is None else f" for {format_duration(s)}"


def _desired(p: Mapping[str, Any]) -> Any:
    """The size the pool is heading for: the API's `desired` if it sends one, else the target of the
    operation under way, else the size (nothing under way)."""
    if "desired" in p:
        return p["desired"]
    op = p.get("operation")
    if isinstance(op, Mapping) and op.get("to_size") is not None:
        return op["to_size"]
    return p.get("size", "?")


def _members(members: Sequence[Mapping[str, Any]]) -> str:
    states = Counter(str(m.get("state")) for m in members if m.get("state") != "deleted")
    order = [s for s in STATE_ORDER if s in states] + sorted(s for s in states if s not in STATE_ORDER)
    return ", ".join(f"{s} {states[s]}" for s in order) or "none"


def _health(p: Mapping[str, Any]) -> str:
    down = sum(1 for m in p.get("members", []) if m.get("health") == "down" and m.get("state") != "deleted")
    text = f"down {down}" if down else "ok"
    return f"PANIC, {text}" if p.get("health_panic") else text


def _paused(value: Any) -> bool:
    """`paused` as the API may send it: a flag, or an object (by, since, reason) or null."""
    if isinstance(value, Mapping):
        return bool(value.get("paused", True))
    return bool(value)


def paused_line(p: Mapping[str, Any], now: float) -> str:
    """'web: paused by api (ops) 5m ago: maintenance — decisions start nothing (`scaler resume web`)';
    `paused` as the API sends it: {at, by, reason}."""
    name = p.get("name", "?")
    d = p.get("paused")
    d = d if isinstance(d, Mapping) else {}
    text = f"{name}: paused" + (f" by {d['by']}" if d.get("by") else "")
    when = _age(d.get("at"), now)
    text += (f" {when}" if when else "") + (f": {d['reason']}" if d.get("reason") else "")
    return text + f" — decisions start nothing (`scaler resume {name}`)"


def _decision(d: Mapping[str, Any] | None, now: float) -> str:
    if not d:
        return "none yet"
    outcome = str(d.get("outcome"))
    words = _OUTCOME.get(outcome, outcome)
    if outcome == "hold":
        words += f" at {d.get('current')}"
    else:
        words += f" {d.get('current')} → {d.get('desired')}"
    if d.get("dry_run") and outcome != "hold":
        words += " (dry-run: not done)"
    age = _age(d.get("at"), now)
    return f"{words}: {d.get('reason', '')}" + (f" ({age})" if age else "")


def _bounds(p: Mapping[str, Any]) -> str:
    if p.get("min") is None and p.get("max") is None:
        return "no policy"
    text = f"{p.get('min', '?')}-{p.get('max', '?')}"
    return text + " dry-run" if p.get("dry_run") else text


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]


def _attention(p: Mapping[str, Any], now: float) -> list[str]:
    name = p.get("name", "?")
    lines = []
    if _paused(p.get("paused")):
        lines.append(paused_line(p, now))
    breaker = p.get("launch_breaker") or {}
    if breaker.get("status") not in (None, "closed"):
        lines.append(f"{name}: {breaker.get('summary', breaker.get('status'))}")
    if p.get("health_panic"):
        lines.append(f"{name}: health {p['health_panic']}")
    for m in p.get("members", []):
        if m.get("health") == "down" and m.get("state") != "deleted":
            lines.append(f"{name}: {m.get('instance')} ({m.get('state')}) is down{_for(m.get('health_since'), now)}: "
                         f"{m.get('health_reason') or '?'}")
        elif m.get("state") == "failed" and m.get("error"):
            lines.append(f"{name}: {m.get('instance')} failed: {m['error']}")
    op = p.get("operation")
    rollout = isinstance(op, Mapping) and op.get("kind") == "rollout"
    if isinstance(op, Mapping):
        lines.append(f"{name}: operation {op.get('id')} {op.get('kind')} {op.get('from_size')} → {op.get('to_size')}"
                     f" {op.get('state')}{_for(op.get('started'), now)}: {op.get('reason')}"
                     + (f" (`scaler rollout {name} --status`)" if rollout else ""))
    if p.get("outdated"):
        n = p["outdated"]
        lines.append(f"{name}: {n} member{'' if n == 1 else 's'} on another instance template than the pool's "
                     f"({p.get('template') or '?'})" + ("" if rollout else f": `scaler rollout {name}` replaces "
                                                        f"{'it' if n == 1 else 'them'}"))
    return lines


def _standby(p: Mapping[str, Any]) -> str:
    """Standby members ready / the policy's standby ("-": the API does not say)."""
    wanted = p.get("standby_wanted")
    return f"{p.get('standby', 0)}/{'-' if wanted is None else wanted}"


def _names(members: Sequence[Any]) -> str:
    return f" ({', '.join(str(m) for m in members)})" if members else ""


def format_rollout(pool: str, r: Mapping[str, Any] | None, now: float) -> str:
    """`GET /v1/pools/{pool}/rollout` as lines an operator reads: what it replaces, how far it got, what
    is under way, the failed launches against the limit that stops it, a pause, the error."""
    if r is None:
        return f"{pool}: no rollout yet\n"
    state = str(r.get("state", "?"))
    head = (f"{pool}: rollout {r.get('operation', '?')} to template {r.get('template', '?')}, "
            f"surge {r.get('surge', '?')}: ")
    if state == "running":
        head += "running" + _for(r.get("started"), now)
    else:
        ended = _age(r.get("finished"), now)
        head += state + (f" {ended}" if ended else "")
    left, standby = list(r.get("outdated") or []), list(r.get("outdated_standby") or [])
    lines = [head,
             f"  replaced {r.get('replaced', 0)}, outdated left {len(left)}"
             + (f" (+{len(standby)} standby)" if standby else "") + f", new in service {r.get('new_in_service', 0)}",
             f"  in flight {len(r.get('in_flight') or [])}{_names(r.get('in_flight') or [])}, "
             f"draining {len(r.get('draining') or [])}{_names(r.get('draining') or [])}"]
    if r.get("new_down"):
        lines.append(f"  new members down {len(r['new_down'])}{_names(r['new_down'])}: no old member is drained for "
                     "them")
    lines.append(f"  failed launches {r.get('failed_launches', 0)} of {r.get('stops_after_failed_launches', '?')} "
                 "(it stops at the limit or when the launch breaker opens)")
    if r.get("paused") and state == "running":
        lines.append(f"  paused with the pool: what is in flight finishes, nothing new starts (`scaler resume {pool}`)")
    if r.get("error"):
        lines.append(f"  error: {r['error']}")
    return "\n".join(lines) + "\n"


def rollout_started(pool: str, r: Mapping[str, Any]) -> str:
    """One line for the answer of `POST /v1/pools/{pool}/rollout`."""
    left, standby = len(r.get("outdated") or []), len(r.get("outdated_standby") or [])
    what = f"{left} outdated member{'' if left == 1 else 's'} to replace" + (
        f", {standby} outdated standby to re-create" if standby else "")
    return (f"{pool}: rollout {r.get('operation', '?')} started to template {r.get('template', '?')}: {what}, "
            f"surge {r.get('surge', '?')} (`scaler rollout {pool} --status`)\n")


def format_status(pools: Sequence[Mapping[str, Any]], now: float, cluster: Mapping[str, Any] | None = None,
                  policies: Mapping[str, Any] | None = None) -> str:
    """The pools of `GET /v1/pools` as a table, a head line (this scaler's role, the policies) and the
    lines that need attention."""
    head = []
    if cluster:
        epoch = cluster.get("epoch")
        head.append(f"scaler {cluster.get('me') or ''}".rstrip() + f": {cluster.get('role', '?')}"
                    + (f" (epoch {epoch})" if epoch is not None else "")
                    + (f", leader {cluster['leader']}" if cluster.get("leader") else ""))
    if policies is not None:
        last = policies.get("last_reload") or {}
        if policies.get("valid", True):
            head.append("policies: valid")
        else:
            problems = last.get("problems") or []
            head.append(f"policies: the last reload ({last.get('trigger', '?')}, {_age(last.get('at'), now) or '?'})"
                        f" was REJECTED, the previous policies keep running: {len(problems)} problem"
                        f"{'' if len(problems) == 1 else 's'} (`scaler policy check`)")
    lines = [" — ".join(head)] if head else []
    if not pools:
        return "\n".join([*lines, "no pool configured"]) + "\n"
    paused = any(_paused(p.get("paused")) for p in pools)     # the column only when it says something
    standby = any(p.get("standby") or p.get("standby_wanted") for p in pools)
    header = ["POOL", "SIZE/DESIRED", "BOUNDS", "MEMBERS", "HEALTH", "BREAKER", *(["STANDBY"] if standby else []),
              *(["PAUSED"] if paused else []), "LAST DECISION"]
    rows = [header]
    for p in pools:
        breaker = str((p.get("launch_breaker") or {}).get("status", "-")).replace("_", "-")
        rows.append([str(p.get("name", "?")), f"{p.get('size', '?')}/{_desired(p)}", _bounds(p),
                     _members(p.get("members", [])), _health(p), breaker,
                     *([_standby(p)] if standby else []),
                     *(["yes" if _paused(p.get("paused")) else "no"] if paused else []),
                     _decision(p.get("last_decision"), now)])
    lines += _table(rows)
    notes = [line for p in pools for line in _attention(p, now)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


__all__ = ["format_rollout", "format_status", "paused_line", "rollout_started"]
