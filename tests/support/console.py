"""A pool's stored history for the console's tests and its benchmark: evaluations every few seconds
with their inputs, verdicts and reasons (mostly holds, a scale-out when sessions stay high, a
scale-in when they stay low), the members those decisions made, in several states, and events.
Written straight into a real store (what the engine and lifecycle would have written)."""

from __future__ import annotations

import json
import math
from typing import Any

from policies import PolicyFile, PoolPolicy
from scaler.store import DecisionRow, MemberState, OpState, Store

IDLE_REASON = "idle: sessions 3 < 5 for 2m"

POLICY: dict[str, Any] = {
    "min": 2, "max": 8,
    "inputs": {"sessions": {"source": "haproxy", "metric": "current_sessions"},
               "cpu": {"source": "snmp", "metric": "cpu_busy"}},
    "rules": [{"name": "busy", "input": "sessions", "above": 20, "for": "30s", "adjust": "+1"},
              {"name": "idle", "input": "sessions", "below": 5, "for": "2m", "adjust": "-1"},
              {"name": "cpu", "input": "cpu", "target": 60, "tolerance": "10%", "scale_in": False}],
}


def policy(name: str = "web", **changes: Any) -> PoolPolicy:
    return PolicyFile.model_validate({"pools": {name: {**POLICY, **changes}}}).pools[name]


def seed_decisions(store: Store, pool: str, count: int, now: float, every_s: float = 5.0) -> dict[str, int]:
    """`count` evaluations ending at `now`, `every_s` apart: sessions follow a slow wave between about
    0 and 40 (a gap without data now and then), cpu follows it. Returns how many of each outcome."""
    rows: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    size = 2
    for i in range(count):
        at = now - (count - 1 - i) * every_s
        phase = i / 240.0
        sessions: float | None = round(20 + 19 * math.sin(phase) + (i % 7) * 0.3, 2)
        if i % 97 in (0, 1):
            sessions = None
        cpu = None if sessions is None else round(30 + sessions * 1.2, 1)
        outcome, desired = "hold", size
        if sessions is None:
            reason = "missing data for input sessions: connect refused"
            verdicts = [{"rule": "busy", "verdict": "no_data", "step": 0, "detail": reason}]
        elif sessions > 20 and i % 60 == 30 and size < 4:
            outcome, desired = "scale_out", size + 1
            reason = f"busy: sessions {sessions:g} > 20 for 30s"
            verdicts = [{"rule": "busy", "verdict": "fire", "step": 1, "detail": f"sessions {sessions:g} > 20 for 30s"}]
        elif sessions < 5 and i % 60 == 30 and size > 2:
            outcome, desired = "scale_in", size - 1
            reason = f"idle: sessions {sessions:g} < 5 for 2m"
            verdicts = [{"rule": "idle", "verdict": "fire", "step": -1, "detail": f"sessions {sessions:g} < 5 for 2m"}]
        else:
            reason = "no rule fired"
            verdicts = [{"rule": "busy", "verdict": "quiet", "step": 0, "detail": f"sessions {sessions:g} ≤ 20"},
                        {"rule": "idle", "verdict": "quiet", "step": 0, "detail": f"sessions {sessions:g} ≥ 5"}]
        rows.append({"pool": pool, "at": at, "outcome": outcome, "current": size, "desired": desired,
                     "rule": None if outcome == "hold" else verdicts[0]["rule"], "reason": reason, "dry_run": False,
                     "inputs": json.dumps({"sessions": sessions, "cpu": cpu}), "verdicts": json.dumps(verdicts),
                     "op_id": None, "context": json.dumps({"cause": None if outcome != "hold" else "rules"})})
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        size = desired
    for start in range(0, len(rows), 1000):
        store.add_decisions(rows[start:start + 1000])
    return outcomes


def seed_members(store: Store, pool: str, now: float) -> list[str]:
    """Four members: three in service (one of them found down), one draining for 20 s since the
    scale-in 4 → 3 decided at `now` (the newest decision). Returns their instance names."""
    op = store.start_scale_out(pool, 4, 0, "below min: 0 < 2", now - 3600)
    members = store.members_of(op.id)
    for i, m in enumerate(members):
        t = now - 3600 + 10 * i
        store.transition(m.id, MemberState.BOOTING, t, address=f"10.250.0.{i + 1}")
        store.transition(m.id, MemberState.HEALTHY, t + 5)
        store.transition(m.id, MemberState.ANNOUNCING, t + 5)
        store.transition(m.id, MemberState.IN_SERVICE, t + 6)
    store.finish_operation(op.id, OpState.DONE, now - 3500)
    store.set_health(members[0].id, "up", now - 3500, "3 checks passed")
    store.set_health(members[1].id, "down", now - 40, "connect: connection refused (3 in a row)",
                     event=f"{members[1].instance} is down: connect refused")
    victims = [store.member(members[3].id)]
    scale_in = store.start_scale_in(pool, [v for v in victims if v is not None], 4, IDLE_REASON, now - 20)
    assert scale_in.state == OpState.RUNNING
    verdicts = [{"rule": "idle", "verdict": "fire", "step": -1, "detail": "sessions 3 < 5 for 2m"}]
    store.add_decision(DecisionRow(pool=pool, at=now - 20, outcome="scale_in", current=4, desired=3, rule="idle",
                                   reason=IDLE_REASON, inputs=json.dumps({"sessions": 3, "cpu": 33.6}),
                                   verdicts=json.dumps(verdicts), op_id=scale_in.id,
                                   context=json.dumps({"cause": "rules"})))
    return [m.instance for m in members]
