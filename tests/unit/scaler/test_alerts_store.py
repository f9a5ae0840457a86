"""Alarm state from signals, on a real store (SQLite and PostgreSQL): ordering, duplicates under
concurrency, signal holds, staleness, and pruning."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from scaler.alerts import alarm_state, alarm_states, prune, recent_signals
from scaler.alerts.store import Incoming, record_alerts, record_signal
from scaler.store import Store


def alert(status: str = "firing", starts: float = 100.0, fp: str = "f1", *, pool: str = "web", alarm: str = "High",
          group: str = "g", known: bool = True) -> Incoming:
    return Incoming(receiver="alertmanager", credential="am", pool=pool, known_pool=known, alarm=alarm,
                    status=status, fingerprint=fp, starts_at=starts,  # type: ignore[arg-type]
                    starts_at_text=str(starts), group_key=group)


F, R = "firing", "resolved"
STORE_ENGINES = ("sqlite", "postgresql")          # tests/conftest.py


@pytest.mark.parametrize(("sequence", "effects", "firing"), [
    pytest.param([(F, 100)], ["fired"], True, id="first firing"),
    pytest.param([(F, 100), (F, 100)], ["fired", None], True, id="repeat is a duplicate"),
    pytest.param([(F, 100), (R, 100)], ["fired", "resolved"], False, id="resolved"),
    pytest.param([(R, 100)], ["resolved"], False, id="resolved never seen firing"),
    pytest.param([(F, 100), (R, 100), (F, 200)], ["fired", "resolved", "fired"], True,
                 id="re-fired with a new startsAt"),
    pytest.param([(R, 100), (F, 100)], ["resolved", "stale"], False, id="late firing of a resolved occurrence"),
    pytest.param([(F, 200), (R, 100)], ["fired", "stale"], True, id="resolved of an older occurrence"),
    pytest.param([(F, 100), (F, 200)], ["fired", "refreshed"], True, id="missed resolve, new occurrence"),
    pytest.param([(F, 100), (R, 100), (R, 100), (F, 100)], ["fired", "resolved", None, None], False,
                 id="re-sends after resolution"),
])
def test_state_only_moves_forward(store: Store, sequence: list[tuple[str, float]], effects: list[str | None],
                                  firing: bool) -> None:
    got = [record_alerts(store, [alert(st, t)], now=1000.0 + i)[0].effect for i, (st, t) in enumerate(sequence)]
    assert got == effects
    assert alarm_state(store, "web", "High", 2000.0).firing is firing


def test_same_alert_in_two_groups_is_two_signals_one_state(store: Store) -> None:
    assert [r.effect for r in record_alerts(store, [alert(group="g1")], 1.0)] == ["fired"]
    assert [r.effect for r in record_alerts(store, [alert(group="g2")], 2.0)] == ["refreshed"]
    state = alarm_state(store, "web", "High", 3.0)
    assert (state.firing, state.since, state.instances) == (True, 1.0, 1)


def test_concurrent_identical_deliveries_store_one_signal(store: Store) -> None:
    """Alertmanager HA peers (or a retry racing the original) deliver the same alert at once."""
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: record_alerts(store, [alert()], 10.0 + i)[0].new, range(16)))
    assert results.count(True) == 1
    assert len(recent_signals(store, "web", 100)) == 1


def test_concurrent_deliveries_about_one_alert_apply_one_after_the_other(store: Store) -> None:
    """Several groups (or HA scalers) carry the same alert at once, half of them resolved: each is a
    new signal, and they move the one instance in turn — no lost update, no duplicate-key error."""
    def deliver(i: int) -> str | None:
        return record_alerts(store, [alert(R if i % 2 else F, group=f"g{i}")], 10.0 + i)[0].effect

    with ThreadPoolExecutor(8) as pool:
        effects = list(pool.map(deliver, range(16)))
    # Whatever the order: the first creates it; once resolved, a firing of the same startsAt is stale.
    assert effects.count("resolved") == 1 and effects.count("fired") <= 1
    assert set(effects) <= {"fired", "refreshed", "resolved", "stale"}
    assert len(recent_signals(store, "web", 100)) == 16
    assert alarm_state(store, "web", "High", 100.0).firing is False


def test_alarm_fires_while_any_instance_fires(store: Store) -> None:
    record_alerts(store, [alert(fp="a"), alert(fp="b")], 10.0)
    record_alerts(store, [alert(R, fp="a")], 20.0)
    s = alarm_state(store, "web", "High", 30.0)
    assert (s.firing, s.since, s.instances, s.value) == (True, 10.0, 1, 1.0)
    record_alerts(store, [alert(R, fp="b")], 40.0)
    s = alarm_state(store, "web", "High", 50.0)
    assert (s.firing, s.since, s.instances, s.value) == (False, 40.0, 0, 0.0)


def test_never_heard_of_is_no_data(store: Store) -> None:
    s = alarm_state(store, "web", "High", 0.0)
    assert (s.firing, s.value, s.since) == (None, None, None)
    assert alarm_states(store, "web", 0.0) == {}


def test_a_firing_alarm_not_re_sent_goes_stale(store: Store) -> None:
    """With stale_after_s (e.g. repeat_interval + margin) a firing alert that Alertmanager stopped
    re-sending is no longer believed: no data, not 'firing forever'."""
    record_alerts(store, [alert()], 100.0)
    assert alarm_state(store, "web", "High", 150.0, stale_after_s=60).firing is True
    assert alarm_state(store, "web", "High", 161.0, stale_after_s=60).firing is None
    record_alerts(store, [alert()], 170.0)          # the repeat refreshes last_seen
    assert alarm_state(store, "web", "High", 200.0, stale_after_s=60).firing is True


def signal(now: float, hold: float = 60.0, pool: str = "web") -> Incoming:
    return Incoming(receiver="signal", credential="k1", pool=pool, known_pool=True, alarm="signal:scale-out",
                    status="firing", fingerprint="signal:scale-out", starts_at=now, expires_at=now + hold)


def test_signal_hold_and_replay_window(store: Store) -> None:
    def send(now: float) -> Any:
        return record_signal(store, signal(now), "url:x", remember_until=now + 30, window_s=30, now=now)

    assert send(0.0).effect == "fired"
    assert send(10.0).new is False                  # inside the window
    assert alarm_state(store, "web", "signal:scale-out", 59.0).firing is True
    ended = alarm_state(store, "web", "signal:scale-out", 60.0)
    assert (ended.firing, ended.since) == (False, 60.0)
    assert send(45.0).effect == "refreshed"         # outside the window, hold still running: re-armed
    assert alarm_state(store, "web", "signal:scale-out", 100.0).firing is True
    assert send(200.0).effect == "fired"            # the hold had run out: fires again
    assert [r.effect for r in recent_signals(store, "web", 10)] == ["fired", "refreshed", "fired"]


def test_recent_signals_pages_newest_first(store: Store) -> None:
    for i in range(5):
        record_alerts(store, [alert(starts=float(i))], float(i))
    first = recent_signals(store, "web", limit=2)
    assert [r.starts_at for r in first] == [4.0, 3.0]
    assert [r.starts_at for r in recent_signals(store, "web", limit=2, before_id=first[-1].id)] == [2.0, 1.0]
    assert recent_signals(store, "other", 10) == []
    assert first[0].describe() == "High firing via alertmanager/am → refreshed"


def test_prune_keeps_what_is_firing(store: Store) -> None:
    record_alerts(store, [alert(fp="old-resolved")], 0.0)
    record_alerts(store, [alert(R, fp="old-resolved")], 10.0)
    record_alerts(store, [alert(fp="still-firing")], 10.0)
    record_signal(store, signal(10.0), "url:y", remember_until=40.0, window_s=30, now=10.0)
    record_alerts(store, [alert(fp="recent", starts=500.0)], 950.0)
    removed = prune(store, now=1000.0, keep_s=100.0)
    assert removed == 4 + 1 + 2     # 4 old signals, 1 replay key, 2 ended instances
    assert [r.fingerprint for r in recent_signals(store, None, 10)] == ["recent"]
    states = alarm_states(store, "web", 1000.0)
    assert states["High"].instances == 2            # still-firing and recent survive
    assert "signal:scale-out" not in states
    # A pruned signal's dedup key is forgotten; the instance still keeps a re-send from acting.
    assert record_alerts(store, [alert(fp="still-firing")], 1001.0)[0].effect == "refreshed"


def test_migration_0002_matches_the_models_and_downgrades(store_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    from scaler.migrations import alembic_config

    s = Store(store_url)
    try:
        s.migrate()
        ours = {"alarm_signals", "alarm_instances", "signal_seen"}
        with s.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        mine = [d for d in diff if any(t in repr(d) for t in ours)]
        assert mine == []
        command.downgrade(alembic_config(s.engine), "0001")
        assert not ours & set(inspect(s.engine).get_table_names())
        s.migrate()
        assert ours <= set(inspect(s.engine).get_table_names())
    finally:
        s.close()
