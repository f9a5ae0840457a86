"""Member health as pure decisions: rise/fall hysteresis, the pool's panic guard, flap dampening.

Nothing here checks anything or reads a clock: the scaler's checker feeds check results and times in,
and the lifecycle asks which members may be routed. The vocabulary is HAProxy's: a member is marked
down after `fall` consecutive failed checks and up again after `rise` consecutive good ones; a
single result never flips it. A check that could not be *made* (the checker's own fault: no socket,
its namespace gone) is neither a success nor a failure and changes nothing.

Panic (Envoy's panic threshold, ELB's fail-open): when more than `panic_threshold` of a pool's
routed members are down at once, the likelier cause is the checker or its path, and withdrawing
them all would turn a monitoring fault into an outage. In panic every member stays routed and no
replacement starts, until the share falls back to the threshold or below.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace


class Health(enum.StrEnum):
    UNKNOWN = "unknown"      # not checked enough yet: routed (the boot probe vouched for it)
    UP = "up"
    DOWN = "down"


class Result(enum.StrEnum):
    OK = "ok"                # the member answered as expected
    FAIL = "fail"            # the member's fault: refused, reset, timed out, wrong status
    ERROR = "error"          # the checker's fault: the check could not be made; counts for nothing


@dataclass(frozen=True, slots=True)
class Counters:
    """One member's health and its consecutive results since the last change."""

    health: Health = Health.UNKNOWN
    oks: int = 0
    fails: int = 0


def observe(c: Counters, result: Result, rise: int, fall: int) -> Counters:
    """The counters after one check result. Health changes only after `rise` (to up) or `fall`
    (to down) consecutive results of one kind; UNKNOWN goes up after `rise` and down after `fall`."""
    if result is Result.ERROR:
        return c
    if result is Result.OK:
        oks, fails = c.oks + 1, 0
        health = Health.UP if oks >= rise and c.health is not Health.UP else c.health
    else:
        oks, fails = 0, c.fails + 1
        health = Health.DOWN if fails >= fall and c.health is not Health.DOWN else c.health
    if health is not c.health:
        return Counters(health, 0, 0) if health is Health.UP else Counters(health, 0, fails)
    return replace(c, oks=oks, fails=fails)


def in_panic(healths: Iterable[Health], threshold: float) -> bool:
    """True when the share of members that are down exceeds `threshold` (0..1). A pool of one
    member that is down is in panic at any threshold below 1: its last route is never withdrawn."""
    states = list(healths)
    if not states:
        return False
    down = sum(1 for h in states if h is Health.DOWN)
    return down > 0 and down / len(states) > threshold


def routable(healths: dict[str, Health], threshold: float) -> set[str]:
    """The members (by key) that keep their route: all of them in panic, else every one not down."""
    if in_panic(healths.values(), threshold):
        return set(healths)
    return {k for k, h in healths.items() if h is not Health.DOWN}


def flapping(downs: Sequence[float], now: float, window_s: float, limit: int) -> bool:
    """Whether a member that went down at the times `downs` has gone down `limit` times or more
    within the last `window_s`: such a member is kept down and replaced instead of re-announced,
    which bounds its route changes to 2 x `limit` per window."""
    return limit > 0 and sum(1 for t in downs if now - t <= window_s) >= limit


__all__ = ["Counters", "Health", "Result", "flapping", "in_panic", "observe", "routable"]
