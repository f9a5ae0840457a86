"""Rolling replacement: every member of a pool re-created from the pool's current instance template.

The pool's `instance:` options in scaler.yaml are the versioned template: each member records the
hash it was created with (`Member.template`, `PoolConfig.instance_template`), so after an operator
edits them (a new image) and restarts the scaler, the members on another hash are *outdated*.
`POST /v1/pools/{pool}/rollout {surge}` starts an operation of kind `rollout`; the lifecycle calls
`advance` once per pass, which reads only the store, so a scaler killed mid-rollout resumes it:

- a new member of the rollout in service that no old member has made room for yet: the oldest
  outdated member in service (a down one first) is drained, joined to the rollout, and goes through
  the normal drain path (draining → withdrawn → deleting → deleted). New member first, old one
  second, so the pool never has fewer members in service than when the rollout started;
- nothing of the rollout in flight and outdated members left: `surge` more are launched, ready
  standby members on the current template first (announced at once), new members otherwise;
- outdated standby members are deleted (the engine boots replacements on the current template);
- a new member its health checks found down earns no drain and counts as in flight; down for
  `health.replace_after`, the rollout fails it (a failed launch; the health checker replaces
  nobody while an operation runs);
- no outdated member left, nothing in flight and nothing draining: done.

It stops (the operation ends `failed`, the old members keep serving) when the pool's launch breaker
opens or after `surge + 2` failed launches. While the pool is paused it takes no step. A scale
decision is held while it runs (a rollout is a busy operation); a standby replenishment is not.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaler.breaker import breaker_state
from scaler.config import PoolConfig
from scaler.store import Member, MemberState, Operation, OpState, Store

# Members of the rollout on their way into service.
IN_FLIGHT = frozenset({MemberState.CREATING, MemberState.BOOTING, MemberState.HEALTHY, MemberState.ANNOUNCING})
# Old members of the rollout on their way out.
LEAVING = frozenset({MemberState.DRAINING, MemberState.WITHDRAWN, MemberState.DELETING})


@dataclass(frozen=True)
class Progress:
    """Where a rollout stands, from the store alone."""

    op: Operation
    template: str                   # the template members are replaced with (the pool's current one)
    surge: int
    outdated: list[Member]          # in service on another template, oldest (down ones) first
    outdated_standby: list[Member]  # standby members on another template
    in_flight: list[Member]         # new members of the rollout not in service yet
    leaving: list[Member]           # old members of the rollout draining or being deleted
    served: int                     # new members that came into service
    replaced: int                   # old members drained for them
    failed: int                     # launches of the rollout that failed
    new_down: list[Member]          # new members in service that their health checks found down
    new_up: int                     # new members in service not found down

    @property
    def stop_after(self) -> int:
        return self.surge + 2

    @property
    def finished(self) -> bool:
        return not (self.outdated or self.outdated_standby or self.in_flight or self.leaving)

    def as_dict(self) -> dict[str, object]:
        return {"operation": self.op.id, "state": self.op.state, "template": self.template, "surge": self.surge,
                "outdated": [m.instance for m in self.outdated],
                "outdated_standby": [m.instance for m in self.outdated_standby],
                "in_flight": [m.instance for m in self.in_flight], "draining": [m.instance for m in self.leaving],
                "new_down": [m.instance for m in self.new_down],
                "replaced": self.replaced, "new_in_service": self.served, "failed_launches": self.failed,
                "stops_after_failed_launches": self.stop_after, "error": self.op.error}


def outdated(members: list[Member], template: str) -> tuple[list[Member], list[Member]]:
    """The members in service and the standby members on another template than `template`; a
    member without a recorded template (created before templates were recorded) is outdated too."""
    serving = sorted((m for m in members if m.state == MemberState.IN_SERVICE and m.template != template),
                     key=lambda m: (m.health != "down", m.created_at, m.id))
    standby = [m for m in members if m.state == MemberState.STANDBY and m.template != template]
    return serving, standby


def progress(store: Store, op: Operation, template: str) -> Progress:
    members = store.members(op.pool)
    steps = store.steps(op.id)
    names = [s.name for s in steps]
    serving, standby = outdated(members, template)
    return Progress(
        op=op, template=template, surge=int(op.param("surge", 1)), outdated=serving, outdated_standby=standby,
        in_flight=[m for m in members if m.op_id == op.id and m.state in IN_FLIGHT],
        leaving=[m for m in members if m.op_id == op.id and m.state in LEAVING],
        served=names.count(MemberState.IN_SERVICE), replaced=names.count(MemberState.DRAINING),
        failed=names.count(MemberState.FAILED),
        new_down=[m for m in members if m.op_id == op.id and m.state == MemberState.IN_SERVICE
                  and m.health == "down"],
        new_up=sum(1 for m in members if m.op_id == op.id and m.state == MemberState.IN_SERVICE
                   and m.health != "down"))


def advance(store: Store, op: Operation, cfg: PoolConfig, now: float) -> bool:
    """One step of a running rollout, in the store's thread. True if it changed a member (the
    caller routes again at once)."""
    row = store.pool(op.pool)
    if row is not None and row.paused_at is not None:
        return False            # paused: what is in flight finishes, nothing new starts
    template = cfg.instance_template()
    p = progress(store, op, template)
    changed = False
    # A new member found down serves nobody: it earns no drain and counts as in flight. Down for
    # health.replace_after, it is failed (a failed launch of the rollout; its instance is deleted) —
    # the health checker does not replace members while an operation runs.
    for m in p.new_down:
        if now - (m.health_since or now) >= cfg.health.replace_after:
            store.transition(m.id, MemberState.FAILED, now,
                             error=f"rollout {op.id}: new member down for {now - (m.health_since or now):.1f}s "
                                   f"({m.health_reason})")
            changed = True
    if changed:
        return True
    outdated_left = list(p.outdated)
    # New members in service first, then as many old ones drained: never fewer in service. Not while
    # a new one is found down (it serves nobody): the old ones wait for it to be up or replaced.
    # In service now: (members at the start - replaced) + new_up; one more drain keeps it at least the
    # start's while new_up > replaced.
    for _ in range(p.new_up - p.replaced):
        if not outdated_left:
            break
        old = outdated_left.pop(0)
        store.rollout_drain(op.id, old, f"rollout {op.id}: outdated template {old.template or 'unknown'}, "
                                        f"replaced by a member on {template}", now)
        changed = True
    if p.outdated_standby:
        store.drop_standby(p.outdated_standby, f"rollout {op.id}: outdated template", now)
        changed = True
    breaker = breaker_state(store, op.pool, now)
    keep = f"{len(outdated_left)} outdated member{'' if len(outdated_left) == 1 else 's'} keep serving"
    if breaker.open:
        store.finish_operation(op.id, OpState.FAILED, now, f"stopped: {breaker.summary(now)}; {keep}")
        return True
    if p.failed >= p.stop_after:
        errors = [s.detail for s in store.steps(op.id) if s.name == MemberState.FAILED and s.detail][-3:]
        store.finish_operation(op.id, OpState.FAILED, now,
                               f"stopped after {p.failed} failed launches (surge {p.surge} + 2): "
                               f"{'; '.join(errors) or 'no detail'}; {keep}")
        return True
    if not p.in_flight and not p.new_down and outdated_left:
        store.rollout_launch(op.id, min(p.surge, len(outdated_left)), template, now)
        return True
    if not p.in_flight and not p.new_down and not outdated_left and not p.leaving and not changed:
        store.finish_operation(op.id, OpState.DONE, now)
        return True
    return changed


__all__ = ["IN_FLIGHT", "LEAVING", "Progress", "advance", "outdated", "progress"]
