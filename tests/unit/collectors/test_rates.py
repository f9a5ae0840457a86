"""Reset-aware counter rates: every interval the tracker cannot vouch for yields no rate."""

from __future__ import annotations

import math

import pytest

from collectors.rates import COUNTER32, COUNTER64, RateResult, RateTracker

# A reading: (value, timestamp, start marker).
Reading = tuple[int | float, float, float | None]


@pytest.mark.parametrize(
    ("readings", "modulus", "expected"),
    [
        pytest.param([(100, 0.0, 1.0)], None, [RateResult(None, "first")], id="first reading has no rate"),
        pytest.param(
            [(100, 0.0, 1.0), (150, 5.0, 1.0), (250, 15.0, 1.0)],
            None,
            [RateResult(None, "first"), RateResult(10.0, "ok"), RateResult(10.0, "ok")],
            id="steady increase",
        ),
        pytest.param(
            [(100, 0.0, 1.0), (100, 5.0, 1.0)],
            None,
            [RateResult(None, "first"), RateResult(0.0, "ok")],
            id="unchanged counter is a zero rate",
        ),
        pytest.param(
            [(1000, 0.0, 1.0), (5000, 5.0, 2.0), (5050, 10.0, 2.0)],
            None,
            [RateResult(None, "first"), RateResult(None, "reset"), RateResult(10.0, "ok")],
            id="restart marker changed: no rate even though the counter grew, then re-baseline",
        ),
        pytest.param(
            [(1000, 0.0, 1.0), (20, 5.0, 1.0), (70, 10.0, 1.0)],
            None,
            [RateResult(None, "first"), RateResult(None, "reset"), RateResult(10.0, "ok")],
            id="counter decrease without marker change is a reset",
        ),
        pytest.param(
            [(1000, 0.0, None), (20, 5.0, None)],
            None,
            [RateResult(None, "first"), RateResult(None, "reset")],
            id="counter decrease without any marker is a reset",
        ),
        pytest.param(
            [(100, 0.0, 1.0), (150, 5.0, None)],
            None,
            [RateResult(None, "first"), RateResult(None, "reset")],
            id="marker vanished: no rate",
        ),
        pytest.param(
            [(100, 0.0, 1.0), (200, 100.0, 1.0), (300, 110.0, 1.0)],
            None,
            [RateResult(None, "first"), RateResult(None, "gap"), RateResult(10.0, "ok")],
            id="gap too long: no rate, then re-baseline",
        ),
        pytest.param(
            [(100, 0.0, 1.0), (200, 60.0, 1.0)],
            None,
            [RateResult(None, "first"), RateResult(100 / 60, "ok")],
            id="gap exactly at the limit still counts",
        ),
        pytest.param(
            [(100, 5.0, 1.0), (200, 5.0, 1.0), (300, 4.0, 1.0)],
            None,
            [RateResult(None, "first"), RateResult(None, "clock"), RateResult(None, "clock")],
            id="timestamp not advancing gives no rate",
        ),
        pytest.param(
            [(COUNTER32 - 100, 0.0, 1.0), (50, 5.0, 1.0)],
            COUNTER32,
            [RateResult(None, "first"), RateResult(30.0, "wrapped")],
            id="32-bit wrap",
        ),
        pytest.param(
            [(COUNTER64 - 10, 0.0, 1.0), (40, 5.0, 1.0)],
            COUNTER64,
            [RateResult(None, "first"), RateResult(10.0, "wrapped")],
            id="64-bit wrap keeps integer precision",
        ),
        pytest.param(
            [(1_000_000_000, 0.0, 1.0), (5, 5.0, 1.0)],
            COUNTER32,
            [RateResult(None, "first"), RateResult(None, "reset")],
            id="32-bit decrease too large to be a wrap is a reset",
        ),
        pytest.param(
            [(10**12, 0.0, 1.0), (5, 5.0, 1.0)],
            COUNTER64,
            [RateResult(None, "first"), RateResult(None, "reset")],
            id="64-bit decrease far from the top is a reset",
        ),
        pytest.param(
            [(COUNTER32 - 100, 0.0, 1.0), (50, 5.0, 2.0)],
            COUNTER32,
            [RateResult(None, "first"), RateResult(None, "reset")],
            id="a marker change wins over a plausible wrap",
        ),
        pytest.param(
            [(100, 0.0, 1.0), (math.nan, 5.0, 1.0), (200, 10.0, 1.0), (250, 15.0, 1.0)],
            None,
            [
                RateResult(None, "first"),
                RateResult(None, "invalid"),
                RateResult(None, "first"),
                RateResult(10.0, "ok"),
            ],
            id="NaN drops the baseline",
        ),
    ],
)
def test_rate_sequence(readings: list[Reading], modulus: int | None, expected: list[RateResult]) -> None:
    tracker = RateTracker(max_gap_s=60.0)
    got = [tracker.update("lb1", "s", v, ts, start=start, modulus=modulus) for v, ts, start in readings]
    assert got == expected


def test_no_rate_is_ever_negative_or_huge_across_restarts() -> None:
    tracker = RateTracker(max_gap_s=60.0)
    # A counter that climbs and restarts at random-looking points, with the marker moving each time.
    values = [0, 10, 20, 3, 13, 23, 1, 2, 1_000_000, 5]
    starts = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0]
    rates = [
        tracker.update("lb1", "s", v, float(i), start=s).rate
        for i, (v, s) in enumerate(zip(values, starts, strict=True))
    ]
    assert all(r is None or 0 <= r <= 1_000_000 for r in rates)
    assert rates[3] is None and rates[6] is None and rates[9] is None


def test_start_tolerance_absorbs_jitter_of_a_derived_start() -> None:
    # SNMP: start = now - sysUpTime jitters by polling latency; a real reboot moves it by far more.
    tracker = RateTracker(start_tolerance_s=2.0)
    assert tracker.update("vm", "if1", 100, 0.0, start=1000.0).status == "first"
    assert tracker.update("vm", "if1", 200, 10.0, start=1000.4) == RateResult(10.0, "ok")
    assert tracker.update("vm", "if1", 300, 20.0, start=1015.0).status == "reset"


def test_series_and_keys_are_independent_and_forget_drops_a_key() -> None:
    tracker = RateTracker()
    tracker.update("lb1", "a", 0, 0.0)
    tracker.update("lb1", "b", 0, 0.0)
    tracker.update("lb2", "a", 0, 0.0)
    assert tracker.update("lb1", "a", 10, 1.0).rate == 10.0
    assert tracker.update("lb2", "a", 30, 1.0).rate == 30.0
    tracker.forget("lb1")
    tracker.forget("never-seen")
    assert tracker.keys() == ["lb2"]
    assert tracker.update("lb1", "b", 50, 2.0).status == "first"
    assert tracker.update("lb2", "a", 40, 2.0).rate == 10.0


def test_no_gap_limit() -> None:
    tracker = RateTracker(max_gap_s=None)
    tracker.update("k", "s", 0, 0.0)
    assert tracker.update("k", "s", 3600, 3600.0) == RateResult(1.0, "ok")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_gap_s": 0}, id="zero gap"),
        pytest.param({"start_tolerance_s": -1}, id="negative tolerance"),
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateTracker(**kwargs)
