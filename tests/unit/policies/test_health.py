"""policies.health: rise/fall hysteresis, the panic guard, flap dampening."""

from __future__ import annotations

import pytest

from policies.health import Counters, Health, Result, flapping, in_panic, observe, routable

OK, FAIL, ERR = Result.OK, Result.FAIL, Result.ERROR


def run(results: list[Result], start: Health = Health.UNKNOWN, rise: int = 2, fall: int = 3) -> list[Health]:
    c, seen = Counters(start), []
    for r in results:
        c = observe(c, r, rise, fall)
        seen.append(c.health)
    return seen


@pytest.mark.parametrize(("start", "results", "want"), [
    pytest.param(Health.UP, [FAIL, FAIL], Health.UP, id="two failures stay up under fall 3"),
    pytest.param(Health.UP, [FAIL, FAIL, FAIL], Health.DOWN, id="fall consecutive failures mark down"),
    pytest.param(Health.UP, [FAIL, FAIL, OK, FAIL, FAIL], Health.UP, id="a success resets the failure count"),
    pytest.param(Health.UP, [FAIL, ERR, FAIL, ERR, FAIL], Health.DOWN, id="checker errors neither count nor reset"),
    pytest.param(Health.UP, [ERR] * 20, Health.UP, id="a blind checker changes nothing"),
    pytest.param(Health.DOWN, [OK], Health.DOWN, id="one success does not bring it back"),
    pytest.param(Health.DOWN, [OK, OK], Health.UP, id="rise consecutive successes mark up"),
    pytest.param(Health.DOWN, [OK, FAIL, OK], Health.DOWN, id="a failure resets the success count"),
    pytest.param(Health.UNKNOWN, [OK, OK], Health.UP, id="unknown goes up after rise"),
    pytest.param(Health.UNKNOWN, [FAIL, FAIL, FAIL], Health.DOWN, id="unknown goes down after fall"),
    pytest.param(Health.UP, [FAIL, OK] * 10, Health.UP, id="alternating faster than rise/fall never flips"),
])
def test_hysteresis(start: Health, results: list[Result], want: Health) -> None:
    assert run(results, start)[-1] is want


def test_counters_restart_after_a_change() -> None:
    c = Counters(Health.UP)
    for _ in range(3):
        c = observe(c, FAIL, 2, 3)
    assert c == Counters(Health.DOWN, 0, 3)
    c = observe(observe(c, OK, 2, 3), OK, 2, 3)
    assert c == Counters(Health.UP, 0, 0)


@pytest.mark.parametrize(("healths", "threshold", "panic"), [
    pytest.param([Health.DOWN, Health.UP], 0.5, False, id="half down is not more than 50%"),
    pytest.param([Health.DOWN, Health.DOWN, Health.UP], 0.5, True, id="two of three down is panic"),
    pytest.param([Health.DOWN], 0.5, True, id="the last member is never withdrawn"),
    pytest.param([Health.DOWN], 0.99, True, id="a pool of one panics at any threshold below 1"),
    pytest.param([Health.UP, Health.UNKNOWN], 0.0, False, id="nobody down: no panic even at 0"),
    pytest.param([Health.DOWN, Health.UP], 0.0, True, id="threshold 0: any down keeps all routes"),
    pytest.param([Health.DOWN, Health.DOWN], 1.0, False, id="threshold 1: never panic"),
    pytest.param([], 0.5, False, id="empty pool"),
])
def test_panic(healths: list[Health], threshold: float, panic: bool) -> None:
    assert in_panic(healths, threshold) is panic


def test_routable_withdraws_down_members_only_outside_panic() -> None:
    assert routable({"a": Health.UP, "b": Health.DOWN, "c": Health.UNKNOWN}, 0.5) == {"a", "c"}
    assert routable({"a": Health.DOWN, "b": Health.DOWN, "c": Health.UP}, 0.5) == {"a", "b", "c"}


def test_flapping_counts_downs_inside_the_window() -> None:
    assert not flapping([0.0, 10.0], 20.0, 300.0, 3)
    assert flapping([0.0, 10.0, 20.0], 20.0, 300.0, 3)
    assert not flapping([0.0, 10.0, 20.0], 310.0, 300.0, 3)       # the first fell out of the window
    assert not flapping([0.0] * 10, 0.0, 300.0, 0)                # 0 turns it off
