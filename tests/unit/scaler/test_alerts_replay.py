"""Replay the real captured Alertmanager deliveries, in the order they arrived, through the receiver
on a real SQLite store, and check exactly which ones change an alarm (= could cause an action) and
which are recognised as duplicates — also after a restart of the receiver."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from scaler.alerts import alarm_states, recent_signals
from scaler.migrations import upgrade
from scaler.store import Store
from tests.support.alerts import (
    AM_BEARER,
    FAIL_BEARER,
    FIXTURES,
    Delivery,
    Harness,
    alerts_config,
    delivery,
    harness,
    wire_body,
)

KNOWN = {"lb-a", "lb-b", "lb-c", "lb-d", "lb-e", "lb-f", "lb-fail"}   # lb-4xx is not ours
AM = "/v1/alerts/alertmanager"


def first_firing(resolved: Delivery, timeline_file: str) -> Delivery:
    """The first `firing` delivery of an alert whose capture kept only the `resolved` one, rebuilt
    from that body and the timeline entry that recorded the firing (same fingerprint, startsAt)."""
    entry = next(e for e in json.loads((FIXTURES / "timeline.json").read_text()) if e["file"] == timeline_file)
    body = copy.deepcopy(resolved.body)
    body["status"] = entry["status"]
    for alert, seen in zip(body["alerts"], entry["alerts"], strict=True):
        assert alert["fingerprint"] == seen["fp"] and alert["startsAt"] == seen["startsAt"]
        alert["status"], alert["endsAt"] = seen["status"], seen["endsAt"]
    received = datetime.fromisoformat(entry["received_at"]).timestamp()
    return Delivery(f"{timeline_file} (rebuilt)", received, resolved.headers, body)


@dataclass(frozen=True)
class Step:
    delivery: Delivery
    status: int
    results: list[str]                       # per alert: new, duplicate, unknown_pool
    changes: dict[tuple[str, str], bool] = field(default_factory=dict)   # (pool, alarm) → firing now
    auth: str | None = None                  # a bearer token when the capture had none


def steps() -> list[Step]:
    d = delivery
    stale_fire = first_firing(d("11"), "raw_run1/0019_alert_scaler_200.json")
    reopen_fire = first_firing(d("12a"), "raw_run1/0020_alert_scaler_200.json")
    return [
        Step(d("01"), 200, ["new"], {("lb-a", "LBAlwaysFiring"): True}),
        Step(d("03a"), 200, ["new"], {("lb-fail", "LBFailingReceiver"): True}, auth=FAIL_BEARER),
        Step(d("02"), 200, ["new", "new"], {("lb-b", "LBMemberHot"): True}),
        # Alertmanager's retries after our 500s (here: the same body again): nothing new.
        Step(d("03b"), 200, ["duplicate"], auth=FAIL_BEARER),
        Step(d("03c"), 200, ["duplicate"], auth=FAIL_BEARER),
        Step(d("03d"), 200, ["duplicate"], auth=FAIL_BEARER),
        Step(d("04"), 200, ["new"], {("lb-a", "LBHighLoad"): True}),
        Step(d("05"), 200, ["duplicate"]),                                  # repeat_interval
        Step(d("06"), 200, ["new"], {("lb-a", "LBHighLoad"): False}),       # resolved
        Step(d("07"), 200, ["new", "new"], {("lb-c", "GroupTest"): True}),
        Step(d("08"), 200, ["duplicate", "duplicate", "new"]),              # c3 joins a firing alarm
        Step(d("09"), 200, ["new", "duplicate", "duplicate"]),              # c1 resolved, c2 c3 fire on
        Step(d("10"), 200, ["new", "new"], {("lb-c", "GroupTest"): False}),
        Step(stale_fire, 200, ["new"], {("lb-d", "StaleSource"): True}),
        Step(reopen_fire, 200, ["new"], {("lb-e", "Reopen"): True}),
        Step(d("12a"), 200, ["new"], {("lb-e", "Reopen"): False}),
        Step(d("12b"), 200, ["new"], {("lb-e", "Reopen"): True}),           # same fingerprint, new startsAt
        # The source went silent: a resolved like any other. It clears the alarm; it never asks
        # for a scale-in (the policy decides that from the scaler's own measurements).
        Step(d("11"), 200, ["new"], {("lb-d", "StaleSource"): False}),
        Step(d("13"), 200, ["duplicate"]),                                  # AM crash, nflog lost
        Step(d("14"), 200, ["new"], {("lb-f", "ReceiverOutage"): True}),
        # Not our pool: recorded, 202, nothing to do — and no 4xx that Alertmanager would re-send forever.
        Step(d("15a"), 202, ["unknown_pool"], auth=FAIL_BEARER),
        Step(d("15b"), 202, ["unknown_pool"], auth=FAIL_BEARER),
    ]


def snapshot(store: Store, now: float) -> dict[tuple[str, str], tuple[bool | None, float | None, int]]:
    return {(p, a): (s.firing, s.since, s.instances) for p in sorted(KNOWN)
            for a, s in alarm_states(store, p, now).items()}


async def post(h: Harness, step: Step) -> dict[str, Any]:
    headers = dict(step.delivery.headers)
    if step.auth is not None:
        headers["Authorization"] = f"Bearer {step.auth}"
    h.clock.now = step.delivery.received
    response = await h.client.post(AM, content=step.delivery.wire, headers=headers)
    assert response.status_code == step.status, (step.delivery.name, response.text)
    answer: dict[str, Any] = response.json()
    return answer


async def test_captured_deliveries_change_alarms_exactly_once(tmp_path: Path) -> None:
    config = alerts_config(tmp_path)
    plan = steps()
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        for step in plan:
            before = {k: v[0] for k, v in snapshot(h.store, step.delivery.received).items()}
            answer = await post(h, step)
            assert [a["result"] for a in answer["alerts"]] == step.results, step.delivery.name
            after = {k: v[0] for k, v in snapshot(h.store, step.delivery.received).items()}
            changed = {k: v for k, v in after.items() if before.get(k) != v}
            assert changed == step.changes, step.delivery.name

        final = snapshot(h.store, h.clock.now)
        assert {k: v[0] for k, v in final.items()} == {
            ("lb-a", "LBAlwaysFiring"): True, ("lb-a", "LBHighLoad"): False,
            ("lb-b", "LBMemberHot"): True, ("lb-c", "GroupTest"): False,
            ("lb-d", "StaleSource"): False, ("lb-e", "Reopen"): True,
            ("lb-f", "ReceiverOutage"): True, ("lb-fail", "LBFailingReceiver"): True,
        }
        assert final[("lb-b", "LBMemberHot")][2] == 2          # two members' alerts fire

        new = sum(r == "new" for s in plan for r in s.results)
        unknown = 1                                            # 15a stored once, 15b is its duplicate
        duplicates = sum(r == "duplicate" for s in plan for r in s.results) + 1
        assert len(h.signals()) == new + unknown
        assert h.metric("scaler_alert_duplicates_total", receiver="alertmanager") == duplicates
        assert h.metric("scaler_alert_signals_total", receiver="alertmanager", status="firing") \
            + h.metric("scaler_alert_signals_total", receiver="alertmanager", status="resolved") == new + unknown

        # truncatedAlerts: on the signal, in an event of the pool, in a metric.
        assert [s.truncated for s in h.signals() if s.pool == "lb-b"] == [1, 1]
        assert [e.message for e in h.store.events("lb-b") if e.kind == "alerts_truncated"] == [
            'Alertmanager dropped 1 alert(s) of group {}/{pool="lb-b"}:{pool="lb-b"} (max_alerts); '
            "the pool's alarms may be incomplete"]
        assert h.metric("scaler_alert_truncated_alerts_total", receiver="alertmanager") == 1

        # What `scaler why` shows: the newest signals with their source.
        latest = recent_signals(h.store, "lb-e", limit=2)
        assert [(s.alarm, s.status, s.effect, s.source) for s in latest] == [
            ("Reopen", "firing", "fired", "alertmanager/am-basic"),
            ("Reopen", "resolved", "resolved", "alertmanager/am-basic")]
        assert [s.effect for s in h.signals() if s.pool == "lb-4xx"] == ["unknown_pool"]


async def test_after_a_restart_every_captured_delivery_is_a_duplicate(tmp_path: Path) -> None:
    config = alerts_config(tmp_path)
    plan = steps()
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        for step in plan:
            await post(h, step)
        before, rows = snapshot(h.store, h.clock.now), len(h.signals())
    # A new process on the same database (the receiver crashed or was restarted; Alertmanager
    # re-sends everything it is not sure about).
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        h.clock.now = plan[-1].delivery.received
        for step in plan:
            answer = await post(h, step)
            assert answer["new"] == 0, step.delivery.name
        assert snapshot(h.store, h.clock.now) == before
        assert len(h.signals()) == rows


async def test_a_resolved_that_overtook_its_firing_wins(tmp_path: Path) -> None:
    """A firing delivered after the resolved of the same occurrence (a retry that arrived late)
    is recorded as stale and does not re-fire the alarm."""
    async with harness(tmp_path / "s.db", alerts_config(tmp_path), KNOWN) as h:
        await post(h, Step(delivery("06"), 200, ["new"]))
        answer = await post(h, Step(delivery("04"), 200, ["new"]))
        assert answer["alerts"][0]["effect"] == "stale"
        assert alarm_states(h.store, "lb-a", h.clock.now)["LBHighLoad"].firing is False


async def test_a_delivery_that_cannot_be_stored_is_not_acknowledged(tmp_path: Path) -> None:
    """503 (Alertmanager retries 5xx) and nothing recorded; the retry after recovery counts once."""
    db = tmp_path / "s.db"
    store = Store(f"sqlite:///{db}")
    upgrade(store.engine, "0001")       # the receivers' tables are missing: every write fails
    store.close()
    async with harness(db, alerts_config(tmp_path), KNOWN, migrate=False) as h:
        step = Step(delivery("01"), 503, [])
        response = await h.client.post(AM, content=step.delivery.wire, headers=step.delivery.headers)
        assert response.status_code == 503
        assert h.metric("scaler_alert_deliveries_total", receiver="alertmanager", result="unavailable") == 1
        h.store.migrate()
        for expected in (["new"], ["duplicate"]):
            answer = await post(h, Step(delivery("01"), 200, expected))
            assert [a["result"] for a in answer["alerts"]] == expected
        assert len(h.signals()) == 1


@pytest.mark.parametrize(("label", "expected"), [
    pytest.param("pool", {"lb-a": ["LBAlwaysFiring"]}, id="default pool label"),
    pytest.param("team", {}, id="a label the alerts lack: recorded without a pool"),
])
async def test_the_pool_comes_from_the_configured_label(tmp_path: Path, label: str,
                                                        expected: dict[str, list[str]]) -> None:
    config = alerts_config(tmp_path).model_copy(update={"pool_label": label})
    async with harness(tmp_path / "s.db", config, KNOWN) as h:
        response = await h.client.post(AM, content=delivery("01").wire, headers=delivery("01").headers)
        assert response.status_code == (200 if expected else 202)
        found = {p: list(alarm_states(h.store, p, h.clock.now)) for p in KNOWN}
        assert {p: a for p, a in found.items() if a} == expected
        assert [s.effect for s in h.signals()] == (["fired"] if expected else ["no_pool"])


async def test_a_group_for_several_pools_counts_each_alert_for_its_own_pool(tmp_path: Path) -> None:
    body = copy.deepcopy(delivery("07").body)
    body["alerts"][1]["labels"]["pool"] = "lb-d"
    body["alerts"][1]["fingerprint"] = "0000000000000001"
    async with harness(tmp_path / "s.db", alerts_config(tmp_path), KNOWN) as h:
        response = await h.client.post(AM, content=wire_body(body), headers=delivery("07").headers)
        assert response.status_code == 200
        assert [(a["pool"], a["result"]) for a in response.json()["alerts"]] == [("lb-c", "new"), ("lb-d", "new")]
        assert alarm_states(h.store, "lb-c", h.clock.now)["GroupTest"].instances == 1
        assert alarm_states(h.store, "lb-d", h.clock.now)["GroupTest"].instances == 1


def test_the_bearer_fixture_token_is_the_one_configured() -> None:
    assert delivery("02").headers["Authorization"] == f"Bearer {AM_BEARER}"
