"""The audit: the orchestrator's instances of each pool compared with the store, and what differs resolved.

Instances nobody knows are reported (never adopted, never deleted), instances of members the store
says are deleted are deleted again, and members whose instance vanished are failed (draining ones
withdrawn) so their route goes in the same call. It acts only through the lifecycle's store and
pass, under the lifecycle's lock, so an audit never races a pass.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlmodel import col, select

from actuators.errors import ActuatorError, InstanceNotFound
from policies import format_duration
from scaler.lifecycle import EXISTING, Lifecycle, instance_of
from scaler.store import Member, MemberState

log = logging.getLogger("scaler.audit")

AUDIT_KINDS = ("unknown_instance", "leftover", "vanished", "missing", "inconsistent", "list_failed")


@dataclass(frozen=True, slots=True)
class Finding:
    """One discrepancy the audit found between the orchestrator and the store.

    kind: `unknown_instance` (an instance of the pool no member ever had: reported, left alone),
    `leftover` (the instance of a member the store says is deleted: deleted again), `vanished`
    (a member's instance is gone: member failed, or withdrawn if it was draining), `missing` (not
    listed, not confirmed gone yet: checked again at the next audit), `inconsistent` (not listed,
    yet it answers: nothing done), `list_failed` (the orchestrator could not list the pool).
    action: what was done: `reported`, `deleted`, `failed`, `withdrawn`, `confirming`, `none`.
    """

    pool: str
    kind: str
    instance: str | None
    action: str
    message: str


class Auditor:
    """Runs audits for one lifecycle; remembers instances missed once (confirmed at the next audit)
    and findings already reported (said once per process)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lc = lifecycle
        self._missing: dict[str, float] = {}         # member id → audit time its instance was first missed
        self._reported: set[tuple[str, str, str]] = set()   # (pool, kind, instance) already in the events

    async def audit(self) -> list[Finding]:
        """Compare every pool's instances with the store's members and resolve what differs.

        Run it at start (after the first pass) and periodically. Listing happens outside the pass
        lock (a slow cloud must not stall routing); decisions are taken under it, only about
        members that were already in their state when the listing began, so a member that moved
        meanwhile is never mistaken for a vanished one. A member whose instance is not listed is
        confirmed gone by a probe answering "not found", or by a second audit still missing it.
        Members failed or withdrawn here lose their route before this returns.
        """
        findings: list[Finding] = []
        for pool in self.lc.pools:
            findings += await self._audit_pool(pool)
        await self.lc.store.call(self._report, findings)
        return findings

    async def _audit_pool(self, pool: str) -> list[Finding]:
        started = self.lc.clock()
        try:
            listing = self.lc.orchestrator.list(pool)
            listed = {i.name: i for i in await asyncio.wait_for(listing, self.lc.action_timeout_s)}
        except (ActuatorError, TimeoutError) as exc:
            return [Finding(pool, "list_failed", None, "none", f"listing the instances of pool {pool} failed: "
                            f"{exc or 'timeout'}; nothing checked")]
        out: list[Finding] = []
        async with self.lc._lock:
            live = {m.instance: m for m in await self.lc.store.call(self.lc.store.members, pool)}
            strangers = [n for n in listed if n not in live]
            leftovers = await self.lc.store.call(self._deleted_members, strangers)
            for name in sorted(strangers):
                if name not in leftovers:
                    out.append(Finding(pool, "unknown_instance", name, "reported",
                                       f"instance {name} of pool {pool} is not in the store: left alone, not "
                                       f"routed (delete it in the cloud, or let it be if someone else owns it)"))
            acted = False
            for m in live.values():
                if m.instance in listed:
                    self._missing.pop(m.id, None)
                    continue
                if MemberState(m.state) not in EXISTING or m.state_since >= started:
                    continue
                finding = await self._vanished(pool, m)
                out.append(finding)
                acted = acted or finding.action in ("failed", "withdrawn")
            if acted:
                await self.lc._pass()          # withdraw their routes now, not at the next tick
        # Outside the lock: a delete waits for the cloud to drop the server.
        for name, m in sorted(leftovers.items()):
            out.append(await self._delete_leftover(pool, name, m))
        return out

    def _deleted_members(self, names: list[str]) -> dict[str, Member]:
        if not names:
            return {}
        with self.lc.store.session() as s:
            rows = s.exec(select(Member).where(col(Member.instance).in_(names),
                                               Member.state == MemberState.DELETED))
            return {m.instance: m for m in rows}

    async def _delete_leftover(self, pool: str, name: str, m: Member) -> Finding:
        # Our own instance (our name, our member), whose delete the store recorded as done: e.g. a
        # create answered too late for the delete that followed it. Finishing that delete is safe:
        # names carry the operation id, so no live member can have this one.
        try:
            self.lc.check()
            await asyncio.wait_for(self.lc.orchestrator.delete(name), self.lc.action_timeout_s)
        except (ActuatorError, TimeoutError) as exc:
            return Finding(pool, "leftover", name, "none", f"instance {name} of member {m.id} (deleted in the "
                           f"store) still exists; deleting it failed: {exc or 'timeout'}")
        self.lc.metrics.actions.labels(pool, "delete", "ok").inc()
        return Finding(pool, "leftover", name, "deleted", f"instance {name} of member {m.id} (deleted in the store) "
                       f"still existed: deleted it again")

    async def _vanished(self, pool: str, m: Member) -> Finding:
        now = self.lc.clock()
        try:
            serving = await asyncio.wait_for(self.lc.orchestrator.probe(instance_of(m)), self.lc.action_timeout_s)
            gone = False
        except InstanceNotFound:
            serving, gone = False, True
        except (ActuatorError, TimeoutError):
            serving, gone = False, False
        if serving:
            self._missing.pop(m.id, None)
            return Finding(pool, "inconsistent", m.instance, "none", f"{m.instance} ({m.state}) is not in the "
                           f"orchestrator's list but answers its probe: nothing done")
        if not gone and m.id not in self._missing:
            self._missing[m.id] = now
            return Finding(pool, "missing", m.instance, "confirming", f"{m.instance} ({m.state}) is not in the "
                           f"orchestrator's list; checking again at the next audit")
        since = self._missing.pop(m.id, now)
        why = ("its instance is gone" if gone else
               f"its instance has not been listed for {format_duration(now - since)}")
        if MemberState(m.state) is MemberState.DRAINING:
            await self.lc.store.call(self.lc.store.transition, m.id, MemberState.WITHDRAWN, now,
                                     detail=f"audit: {why}")
            action = "withdrawn"
        else:
            await self.lc.store.call(self.lc.store.transition, m.id, MemberState.FAILED, now,
                                     error=f"audit: {why}")
            action = "failed"
        return Finding(pool, "vanished", m.instance, action, f"{m.instance} ({m.state}): {why}: {action}, its "
                       f"route removed")

    def _report(self, findings: list[Finding]) -> None:
        now = self.lc.clock()
        counts = {(p, k): 0 for p in self.lc.pools for k in AUDIT_KINDS}
        for f in findings:
            counts[(f.pool, f.kind)] = counts.get((f.pool, f.kind), 0) + 1
            key = (f.pool, f.kind, f.instance or "")
            if f.kind in ("unknown_instance", "inconsistent", "missing") and key in self._reported:
                continue        # said once per process; the metric keeps counting them
            self._reported.add(key)
            (log.error if f.kind == "list_failed" else log.warning)("audit: %s", f.message,
                                                                    extra={"pool": f.pool, "member": f.instance})
            kind = "unknown_instance" if f.kind == "unknown_instance" else "audit"
            self.lc.store.add_event(f.pool, kind, f.message, now, member=f.instance)
        for (p, k), n in counts.items():
            self.lc.breaker_metrics.findings.labels(p, k).set(n)


__all__ = ["AUDIT_KINDS", "Auditor", "Finding"]
