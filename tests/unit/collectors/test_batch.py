"""collectors.batch.collect_all: one round of reads of one collector — a batch collector asked once,
any other once per target, each answer (samples or the error) in order, nothing past the timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from collectors import CollectorError, Sample, Target
from collectors.batch import Answer, BatchCollector, collect_all
from collectors.errors import CollectorTimeout

TARGETS = [Target(key=f"m{i}", url=f"http://10.0.0.{i}/") for i in range(4)]


class OneByOne:
    """Answers each target alone: m1 fails, m2 never answers."""

    name = "one"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def collect(self, target: Target) -> list[Sample]:
        self.calls.append(target.key)
        if target.key == "m1":
            raise CollectorError("refused", reason="connect")
        if target.key == "m2":
            await asyncio.sleep(10)
        return [Sample("sessions", float(target.key[1:]), 0.0)]

    def forget(self, key: str) -> None:
        pass

    async def close(self) -> None:
        pass


class Batch(OneByOne):
    def __init__(self, delay_s: float = 0.0, short: bool = False) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.delay_s, self.short = delay_s, short

    async def collect_many(self, targets: Sequence[Target]) -> list[Answer]:
        self.batches.append([t.key for t in targets])
        await asyncio.sleep(self.delay_s)
        answers: list[Answer] = [[Sample("sessions", float(t.key[1:]), 0.0)] for t in targets]
        return answers[:-1] if self.short else answers


async def test_one_by_one_each_read_has_its_own_deadline_and_error() -> None:
    c = OneByOne()
    assert not isinstance(c, BatchCollector)
    got = await collect_all(c, TARGETS, timeout_s=0.1)
    assert sorted(c.calls) == ["m0", "m1", "m2", "m3"]
    answers = [a for a, _ in got]
    assert answers[0] == [Sample("sessions", 0.0, 0.0)] and answers[3] == [Sample("sessions", 3.0, 0.0)]
    assert isinstance(answers[1], CollectorError) and answers[1].reason == "connect"
    assert isinstance(answers[2], CollectorTimeout) and str(answers[2]) == "timeout after 0.1s"
    assert got[0][1] < 0.1 <= got[2][1]                     # each read's own time


async def test_a_batch_collector_is_asked_once_and_cut_as_a_whole() -> None:
    c = Batch()
    got = await collect_all(c, TARGETS, timeout_s=1)
    assert c.batches == [["m0", "m1", "m2", "m3"]] and c.calls == []
    assert [a for a, _ in got] == [[Sample("sessions", float(i), 0.0)] for i in range(4)]
    slow = await collect_all(Batch(delay_s=1), TARGETS, timeout_s=0.05)
    assert all(isinstance(a, CollectorTimeout) for a, _ in slow)
    short = await collect_all(Batch(short=True), TARGETS, timeout_s=1)
    assert [a.reason for a, _ in short if isinstance(a, CollectorError)] == ["bug"] * 4
    assert await collect_all(c, [], timeout_s=1) == []
