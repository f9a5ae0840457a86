"""The shared test helpers keep their contracts: tests/support/clock.py and tests/support/wait.py."""

from __future__ import annotations

import pytest

from scaler.store import Store
from tests.support.clock import ManualClock
from tests.support.wait import eventually, eventually_sync


def test_the_clock_moves_only_when_told() -> None:
    clock = ManualClock(1000.0, mono=5.0)
    assert (clock(), clock.time(), clock.monotonic()) == (1000.0, 1000.0, 5.0)
    clock.advance(2.5)
    assert (clock(), clock.monotonic()) == (1002.5, 7.5)
    clock.now -= 3600                                   # an NTP step moves the wall clock alone
    assert (clock(), clock.monotonic()) == (-2597.5, 7.5)


async def test_eventually_returns_the_first_truthy_result_of_a_plain_or_async_check() -> None:
    calls: list[int] = []

    def plain() -> list[int]:
        calls.append(1)
        return calls if len(calls) >= 3 else []

    async def asynchronous() -> str:
        return "ready"

    assert await eventually(plain, interval_s=0, what="three calls") == [1, 1, 1]
    assert await eventually(asynchronous, what="ready") == "ready"


async def test_eventually_fails_naming_what_it_waited_for_with_the_detail() -> None:
    async def detail() -> str:
        return "the log tail"

    with pytest.raises(AssertionError, match=r"(?s)the pool at 2: not within 0\.05s; last: 0\n.*the log tail"):
        await eventually(lambda: 0, timeout_s=0.05, interval_s=0.01, what="the pool at 2", detail=detail)


async def test_eventually_retries_only_the_errors_it_is_told_to() -> None:
    attempts: list[int] = []

    def flaky() -> bool:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("not listening yet")
        return True

    def broken() -> bool:
        raise ValueError("broken")

    assert await eventually(flaky, interval_s=0, retry_on=(ConnectionError,), what="listening") is True
    with pytest.raises(ValueError, match="broken"):
        await eventually(broken, retry_on=(ConnectionError,), what="never retried")
    attempts.clear()
    with pytest.raises(AssertionError, match="a refusal: not within 0s; last error: ConnectionRefusedError") as failed:
        await eventually(flaky, timeout_s=0, retry_on=(ConnectionError,), what="a refusal")
    assert isinstance(failed.value.__cause__, ConnectionRefusedError)


def test_eventually_sync_has_the_same_contract() -> None:
    calls: list[int] = []

    def second_call() -> bool:
        calls.append(1)
        return len(calls) >= 2

    assert eventually_sync(second_call, interval_s=0, what="two calls") is True
    with pytest.raises(AssertionError, match=r"nothing: not within 0s\nthe detail"):
        eventually_sync(lambda: None, timeout_s=0, what="nothing", detail=lambda: "the detail")


def test_the_store_fixture_is_migrated_and_empty(store: Store) -> None:
    assert store.pools() == []
    store.ensure_pool("web", "198.19.0.1", 0)            # the schema is there
    assert [p.name for p in store.pools()] == ["web"]
