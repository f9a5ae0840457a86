"""The service's own Prometheus metrics (`GET /metrics`), in one registry passed to whoever counts.

Names follow `scaler_<noun>_<unit|total>`. A registry per service (not the global default) keeps
tests independent of each other.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scaler import __version__

SESSION_STATES = ("down", "connected", "up", "synced")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.evaluations = Counter("scaler_evaluations_total", "Policy evaluations", ["pool"], registry=r)
        self.decisions = Counter("scaler_decisions_total", "Decisions by outcome (scale_out, scale_in, "
                                 "hold, dry_run)", ["pool", "outcome"], registry=r)
        self.actions = Counter("scaler_actions_total", "Side effects by kind and result",
                               ["pool", "action", "result"], registry=r)
        self.members = Gauge("scaler_pool_members", "Members by state", ["pool", "state"], registry=r)
        self.desired = Gauge("scaler_pool_desired_members", "Size asked by the last decision", ["pool"],
                             registry=r)
        self.collector_errors = Counter("scaler_collector_errors_total", "Failed reads by reason",
                                        ["collector", "reason"], registry=r)
        self.collector_latency = Histogram("scaler_collector_latency_seconds", "Time to read one target",
                                           ["collector"], registry=r,
                                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.input_value = Gauge("scaler_input_value", "An input's latest pool-level value (NaN: no data)",
                                 ["pool", "input"], registry=r)
        self.input_members = Gauge("scaler_input_members", "Members read for an input in the latest round, "
                                   "with data (ok) and without (missing)", ["pool", "input", "state"], registry=r)
        self.router_apply = Histogram("scaler_router_apply_seconds", "Time of one router batch",
                                      registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                           0.25, 0.5, 1))
        self.router_changes = Counter("scaler_router_changes_total", "Next-hop changes applied",
                                      ["change"], registry=r)
        self.router_errors = Counter("scaler_router_errors_total", "Failed router batches", registry=r)
        self.jobs_missed = Counter("scaler_scheduler_missed_runs_total",
                                   "Scheduled runs skipped or missed (the previous run was still going, "
                                   "or the loop was blocked)", ["job"], registry=r)
        self.policy_reloads = Counter("scaler_policy_reloads_total", "Policy reloads by trigger and result "
                                      "(applied, unchanged, rejected)", ["trigger", "result"], registry=r)
        self.policy_valid = Gauge("scaler_policy_valid", "1 when the policy files on disk are the ones running; "
                                  "0 when the last edit was rejected and the last good policy keeps running",
                                  registry=r)
        self.policy_loaded = Gauge("scaler_policy_loaded_timestamp_seconds",
                                   "When the running policy was loaded", registry=r)
        self.drain_seconds = Histogram("scaler_drain_seconds", "Time from drain start to withdrawal",
                                       ["pool"], registry=r, buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300))
        # The pool's effective bounds (schedules applied) at its latest evaluation, beside
        # scaler_pool_desired_members: the dashboards draw size vs desired vs bounds.
        # Requests the API's access control refused (scaler.auth): 401 no or bad credential, 403 scope.
        self.api_refused = Counter("scaler_api_refused_total", "API requests refused by access control",
                                   ["scope", "status"], registry=r)
        # 1 while an operator has paused the pool (POST /v1/pools/{pool}/pause), at its latest evaluation.
        self.paused = Gauge("scaler_pool_paused", "1 while an operator has paused the pool's decisions",
                            ["pool"], registry=r)
        self.bounds = Gauge("scaler_pool_bounds_members", "The pool's effective min and max at its latest "
                            "evaluation (schedules applied)", ["pool", "bound"], registry=r)
        # Which scaler answers (dashboards, alert rules joining on version), and the process itself:
        # process_* (CPU, memory, file descriptors, start time) and python_info in this registry, not
        # only in prometheus_client's global one, which GET /metrics does not serve.
        build = Gauge("scaler_build_info", "Always 1; the labels say which scaler this is",
                      ["version", "python"], registry=r)
        build.labels(__version__, platform.python_version()).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)


class RouterHealthMetrics(Collector):
    """The router driver's sessions and speaker, read from its `health()` at scrape time.

    Only drivers with sessions report these (today `bgp`): per peer, the session state (one series
    per state, 1 for the current one), flaps, replays and the last replay's size and duration; the
    speaker process's restarts and whether its API is connected; the paths it holds.
    """

    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        h = self.health()
        state = GaugeMetricFamily("scaler_bgp_session_state", "1 for the state each router session is in "
                                  "(synced: full desired state and End-of-RIB sent)", labels=["peer", "state"])
        flaps = CounterMetricFamily("scaler_bgp_session_downs", "Times each session went down", labels=["peer"])
        replays = CounterMetricFamily("scaler_bgp_replays", "Full replays (desired state + End-of-RIB) per "
                                      "router session", labels=["peer"])
        paths = GaugeMetricFamily("scaler_bgp_last_replay_paths", "Paths sent by the last replay", labels=["peer"])
        took = GaugeMetricFamily("scaler_bgp_last_replay_seconds", "Time from the replay's first command to "
                                 "its last acknowledgement", labels=["peer"])
        for s in h.get("sessions", []):
            for st in SESSION_STATES:
                state.add_metric([s["peer"], st], 1.0 if s["state"] == st else 0.0)
            flaps.add_metric([s["peer"]], s["downs"])
            replays.add_metric([s["peer"]], s["replays"])
            paths.add_metric([s["peer"]], s["last_replay_paths"])
            took.add_metric([s["peer"]], s["last_replay_s"])
        yield from (state, flaps, replays, paths, took)
        sp = h.get("speaker") or {}
        restarts = CounterMetricFamily("scaler_bgp_speaker_restarts", "Restarts of the BGP speaker (ExaBGP) "
                                       "after it exited")
        restarts.add_metric([], sp.get("restarts", 0))
        up = GaugeMetricFamily("scaler_bgp_speaker_connected", "1 while the speaker's API is connected")
        up.add_metric([], 1.0 if sp.get("connected") else 0.0)
        held = GaugeMetricFamily("scaler_bgp_paths", "Paths the speaker holds (acknowledged announcements)")
        held.add_metric([], h.get("paths", 0))
        yield from (restarts, up, held)
        if "conntrack_max" in h:
            entries = GaugeMetricFamily("scaler_router_conntrack_entries", "Entries in the router's conntrack "
                                        "table (kernel driver, mode conntrack)")
            entries.add_metric([], h.get("conntrack_entries", 0))
            limit = GaugeMetricFamily("scaler_router_conntrack_max", "The router's nf_conntrack_max: new flows "
                                      "are dropped when the table is full")
            limit.add_metric([], h["conntrack_max"])
            yield from (entries, limit)
        if "unreplied_ratio" in h:
            unreplied = GaugeMetricFamily("scaler_router_unreplied_ratio", "Share of flows to the VIPs whose "
                                          "replies the router never saw (asymmetric routing breaks pinning)")
            unreplied.add_metric([], h["unreplied_ratio"])
            yield unreplied


class LeaderMetrics(Collector):
    """This scaler's role among the scalers of its store (scaler.leader), read at scrape time."""

    def __init__(self, view: Callable[[], Any]) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        v = self.view()
        leader = GaugeMetricFamily("scaler_leader", "1 while this scaler leads (acts), 0 as a follower")
        leader.add_metric([], 1.0 if v.role == "leader" else 0.0)
        epoch = GaugeMetricFamily("scaler_leader_epoch", "The leadership epoch this scaler holds (0: none)")
        epoch.add_metric([], float(v.epoch or 0))
        lease = GaugeMetricFamily("scaler_leader_lease_seconds", "Seconds left on this leader's lease")
        lease.add_metric([], float(v.lease_left_s or 0.0))
        yield from (leader, epoch, lease)
