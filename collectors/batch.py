"""Reading many targets of one collector in one round: `collect_all`.

The engine reads every member of a pool once per round. A collector that answers a whole batch at
once (`BatchCollector.collect_many`: one PromQL query serves every member) is asked once; any other
is asked target by target, concurrently, each read in a task of its own. Either way each target gets
its samples or the error why not, and no read outlives `timeout_s`: a batch past it fails every
target it held with a timeout, a single read past it fails alone.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from typing import Protocol, cast, runtime_checkable

from collectors.base import Collector, Sample, Target
from collectors.errors import CollectorError, CollectorTimeout

# One target's answer: its samples, or why there are none.
Answer = list[Sample] | CollectorError


@runtime_checkable
class BatchCollector(Protocol):
    """A collector that reads many targets at once: the same answers as `collect` on each, in
    order, with a target's failure as its CollectorError (never raised for one target)."""

    async def collect_many(self, targets: Sequence[Target]) -> list[Answer]: ...


async def collect_all(collector: Collector, targets: Sequence[Target],
                      timeout_s: float) -> list[tuple[Answer, float]]:
    """Every target's answer with the seconds it took (a batch's: the whole batch), in order."""
    if not targets:
        return []
    if _batches(type(collector)):
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                answers: list[Answer] = await cast(BatchCollector, collector).collect_many(targets)
        except TimeoutError:
            answers = [CollectorTimeout(f"timeout after {timeout_s:g}s") for _ in targets]
        if len(answers) != len(targets):        # a collector bug: no answer is trusted
            answers = [CollectorError(f"{len(answers)} answers for {len(targets)} targets", reason="bug")
                       for _ in targets]
        took = time.perf_counter() - t0
        return [(a, took) for a in answers]
    return list(await asyncio.gather(*(_one(collector, t, timeout_s) for t in targets)))


@functools.cache
def _batches(kind: type) -> bool:
    # Checked once per class: a runtime protocol check walks the protocol's attributes each time.
    return callable(getattr(kind, "collect_many", None))


async def _one(collector: Collector, target: Target, timeout_s: float) -> tuple[Answer, float]:
    t0 = time.perf_counter()
    answer: Answer
    try:
        async with asyncio.timeout(timeout_s):
            answer = await collector.collect(target)
    except CollectorError as exc:
        answer = exc
    except TimeoutError:
        answer = CollectorTimeout(f"timeout after {timeout_s:g}s")
    return answer, time.perf_counter() - t0


__all__ = ["Answer", "BatchCollector", "collect_all"]
