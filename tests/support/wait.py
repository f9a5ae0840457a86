"""Waiting for what happens on its own time (a daemon answering, a route reaching the FIB, a scaler
settling): a check polled until a deadline, never a fixed sleep.

    await eventually(lambda: fib(ns, VIP) == {hop(1)}, timeout_s=20, what="hop 1 in the FIB")
    pool = await eventually(lambda: settled(svc, 2), timeout_s=60, interval_s=0.2,
                            what="the pool settled at 2", detail=svc.tail)

One contract, for `eventually` (async code) and `eventually_sync` (sync fixtures, daemon launchers):

- `check` is called every `interval_s` until it returns something truthy, and that is returned. In
  `eventually` a check may be plain or async (an awaitable it returns is awaited).
- An exception from `check` ends the wait at once (a daemon that died will not answer), unless its
  type is in `retry_on`: then it means "not yet", and the last one is chained to the failure.
- At `timeout_s` the wait fails with AssertionError naming `what`, with the last falsy result or the
  last retried error, and the text of `detail()` if given (a log tail, what the service reports).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["eventually", "eventually_sync"]

T = TypeVar("T")
Detail = Callable[[], Awaitable[str] | str]


# Two signatures so that mypy gives an async check's result type, not its coroutine's. `T | None`: a
# check may answer None for "not yet", what it returns in the end is not None.
@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]], *, what: str, timeout_s: float = ..., interval_s: float = ...,
    retry_on: tuple[type[Exception], ...] = ..., detail: Detail | None = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None], *, what: str, timeout_s: float = ..., interval_s: float = ...,
    retry_on: tuple[type[Exception], ...] = ..., detail: Detail | None = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    *,
    what: str,
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    retry_on: tuple[type[Exception], ...] = (),
    detail: Detail | None = None,
) -> Any:
    """Poll `check` until it returns something truthy (returned); see the module's docstring."""
    end = time.monotonic() + timeout_s
    last: object = None
    error: Exception | None = None
    while True:
        try:
            got = check()
            if inspect.isawaitable(got):
                got = await got
        except retry_on as exc:
            last, error = None, exc
        else:
            if got:
                return got
            last, error = got, None
        if time.monotonic() >= end:
            break
        await asyncio.sleep(interval_s)
    extra = detail() if detail is not None else None
    if inspect.isawaitable(extra):
        extra = await extra
    raise AssertionError(_failure(what, timeout_s, last, error, extra)) from error


def eventually_sync(
    check: Callable[[], T | None],
    *,
    what: str,
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    retry_on: tuple[type[Exception], ...] = (),
    detail: Callable[[], str] | None = None,
) -> T:
    """`eventually` for code that cannot await: the same contract, sleeping with time.sleep."""
    end = time.monotonic() + timeout_s
    last: object = None
    error: Exception | None = None
    while True:
        try:
            got = check()
        except retry_on as exc:
            last, error = None, exc
        else:
            if got:
                return got
            last, error = got, None
        if time.monotonic() >= end:
            break
        time.sleep(interval_s)
    raise AssertionError(_failure(what, timeout_s, last, error, detail() if detail is not None else None)) from error


def _failure(what: str, timeout_s: float, last: object, error: Exception | None, detail: str | None) -> str:
    message = f"{what}: not within {timeout_s:g}s"
    if error is not None:
        message += f"; last error: {type(error).__name__}: {error}"
    elif last is not None and last is not False:
        message += f"; last: {last!r}"
    if detail:
        message += f"\n{detail}"
    return message
