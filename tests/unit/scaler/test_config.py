"""scaler.yaml and policy files: every problem is reported with FILE:LINE:COL and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.config import driver_options, load_config, load_policies
from scaler.errors import ConfigError
from scaler.service import REGISTRIES
from tests.support.examples import copy_examples


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    copy_examples(tmp_path)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_shipped_example_is_valid(conf: Path) -> None:
    cfg = load_config(conf / "scaler.yaml", REGISTRIES)
    policies = load_policies(cfg)
    assert set(policies) == {"web"} and str(cfg.pools["web"].vip) == "198.19.0.1"


def test_the_shipped_bgp_example_is_valid(conf: Path) -> None:
    cfg = load_config(conf / "scaler-bgp.yaml", REGISTRIES)
    options = driver_options(cfg.router, REGISTRIES.routers, conf)
    assert cfg.router.driver == "bgp" and [str(p.address) for p in options.peers] == ["198.18.255.1"]
    assert cfg.pools["web"].drain_grace == 5.0


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param("policy_dir: policies", "policy_dri: policies", ":19:1: policy_dri: unknown key",
                     id="unknown top-level key"),
        pytest.param("vip: 198.19.0.1", "vip: 198.19.0.300", ":73:5: pools.web.vip: Input is not a valid IPv4 address",
                     id="bad VIP"),
        pytest.param("driver: kernel ", "driver: ospf ", ":36:3: router.driver: unknown router driver 'ospf' "
                     "(known: bgp, fake, kernel)", id="unknown driver"),
        pytest.param("    mode: conntrack ", "    mode: ecmp ", ":39:5: router.options.mode: Input should be "
                     "'conntrack' or 'resilient'", id="driver option of the wrong value"),
        pytest.param("    mode: conntrack ", "    buckets: many\n    mode: conntrack ",
                     ":39:5: router.options.buckets: Input should be a valid integer",
                     id="driver option of the wrong type"),
        pytest.param("    mode: conntrack ", "    mode: resilient\n    idle_timer_s: 5 #", ":40:5: "
                     "router.options.idle_timer_s: idle_timer_s (5) must be longer than the longest silence a live "
                     "flow may have (30s: pools.*.max_client_silence)",
                     id="resilient timer shorter than a silent flow"),
        pytest.param("  collect: 2s", "  collect: 2 seconds", ":22:3: intervals.collect: not a duration",
                     id="bad duration"),
        pytest.param("boot_timeout: 60s", "boot_timeout: 60s\n    boot_timout: 1m", ":75:5: "
                     "pools.web.boot_timout: unknown key", id="typo in a pool"),
    ],
)
def test_service_config_errors(conf: Path, old: str, new: str, expected: str) -> None:
    edit(conf / "scaler.yaml", old, new)
    with pytest.raises(ConfigError) as err:
        load_config(conf / "scaler.yaml", REGISTRIES)
    assert any(p.startswith(str(conf / "scaler.yaml")) and expected in p for p in err.value.problems), \
        err.value.problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param("  web:", "  api:", ":4:3: pools.api: unknown pool 'api'", id="pool not in scaler.yaml"),
        pytest.param("source: haproxy", "source: snmpx", ":9:9: pools.web.inputs.sessions.source: unknown "
                     "collector 'snmpx'", id="unknown collector"),
        pytest.param("    max: 3", "    max: 0", ":6:5: pools.web.max: Input should be greater than or equal to 1",
                     id="max below one"),
        pytest.param("adjust: +1", "adjust: +one", ":23:9: pools.web.rules.0.adjust: adjust must look like",
                     id="bad adjustment"),
        pytest.param("    min: 1 ", "    min: 5 ", ":4:3: pools.web: min (5) is greater than max (3)",
                     id="min above max"),
    ],
)
def test_policy_errors(conf: Path, old: str, new: str, expected: str) -> None:
    policy = conf / "policies" / "web.yaml"
    edit(policy, old, new)
    cfg = load_config(conf / "scaler.yaml", REGISTRIES)
    with pytest.raises(ConfigError) as err:
        load_policies(cfg)
    assert any(p.startswith(str(policy)) and expected in p for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once(conf: Path) -> None:
    policy = conf / "policies" / "web.yaml"
    edit(policy, "adjust: +1", "adjust: +one")
    edit(policy, "for: 10s", "for: later")
    cfg = load_config(conf / "scaler.yaml", REGISTRIES)
    with pytest.raises(ConfigError) as err:
        load_policies(cfg)
    assert len(err.value.problems) == 2


def test_yaml_syntax_error_has_a_position(conf: Path) -> None:
    edit(conf / "scaler.yaml", "api:\n", "api: [\n")
    with pytest.raises(ConfigError, match=r"scaler.yaml:\d+:\d+: YAML syntax"):
        load_config(conf / "scaler.yaml", REGISTRIES)


def test_a_pool_without_policy_is_an_error(conf: Path) -> None:
    (conf / "policies" / "web.yaml").unlink()
    cfg = load_config(conf / "scaler.yaml", REGISTRIES)
    with pytest.raises(ConfigError, match=r"no policy file .* defines pool 'web'"):
        load_policies(cfg)


# Every duration and number of scaler.yaml (and of the collectors' options) on a line of its own, so
# that a case can replace one. Secret files are relative to this file.
SERVICE = """\
intervals:
  collect: 5s
  evaluate: 5s
  reconcile: 1s
  policy_watch: 2s
  audit: 1m
orchestrator:
  driver: fake
router:
  driver: fake
collectors:
  haproxy:
    driver: haproxy
    options:
      max_rate_gap_s: 60
  scrape:
    driver: prometheus_scrape
    options:
      metrics:
        sessions:
          name: haproxy_frontend_current_sessions
      start_tolerance_s: 1
      max_rate_gap_s: 90
      max_age_s: 300
  query:
    driver: prometheus_query
    options:
      url: http://prometheus:9090
      metrics:
        cpu:
          query: node_load1
      max_age_s: 60
  snmp:
    driver: snmp
    options:
      community:
        file: community
      max_rate_gap_s: 120
      start_tolerance_s: 5
      oids:
        octets:
          oid: 1.3.6.1.2.1.31.1.1.1.6
          type: counter
          scale: 8
          max_rate: 1000000000
pools:
  web:
    vip: 198.19.0.1
    boot_timeout: 60s
    drain_timeout: 60s
    drain_grace: 5s
    launch_breaker:
      cool_off: 10m
alerts:
  read_timeout: 10s
  grafana:
    hmac:
      secret:
        file: key
      pools: [web]
      max_skew: 5m
  signals:
    keys:
      - id: k1
        secret:
          file: key
        pools: [web]
    hold:
      scale_out: 5m
      scale_in: 5m
    replay_window: 5m
    default_ttl: 30d
    max_ttl: 365d
"""

FINITE = "Input should be a finite number"
FINITE_DURATION = "duration must be a finite number of seconds"
POSITIVE = "Input should be greater than 0"


def service_config(tmp_path: Path, old: str, new: str, *more: tuple[str, str]) -> tuple[Path, int, int]:
    """SERVICE with line `old` replaced by `new` (and each further (old, new) pair), written to
    tmp_path/scaler.yaml with its secret files; returns (path, line, column) of the first line's key."""
    lines = SERVICE.splitlines()
    for o, n in ((old, new), *more):
        (i,) = [i for i, line in enumerate(lines) if line == o]
        lines[i] = n
    index = lines.index(new)
    (tmp_path / "community").write_text("public-0123456789\n")
    (tmp_path / "key").write_text("signal-key-0123456789abcdef\n")
    path = tmp_path / "scaler.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, index + 1, len(new) - len(new.lstrip(" ")) + 1


def test_the_edge_value_template_is_valid(tmp_path: Path) -> None:
    path, _, _ = service_config(tmp_path, "  collect: 5s", "  collect: 5s")
    cfg = load_config(path, REGISTRIES)
    assert cfg.intervals.collect == 5 and cfg.alerts.signals.max_ttl == 365 * 86400


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        # intervals: a job every 0 s would silently run every second (APScheduler); never infinite
        pytest.param("  collect: 5s", "  collect: 0", "intervals.collect", POSITIVE, id="collect: 0"),
        pytest.param("  collect: 5s", "  collect: .inf", "intervals.collect", FINITE_DURATION, id="collect: .inf"),
        pytest.param("  evaluate: 5s", "  evaluate: 0s", "intervals.evaluate", POSITIVE, id="evaluate: 0s"),
        pytest.param("  reconcile: 1s", "  reconcile: .nan", "intervals.reconcile", FINITE_DURATION,
                     id="reconcile: .nan"),
        pytest.param("  policy_watch: 2s", "  policy_watch: .inf", "intervals.policy_watch", FINITE_DURATION,
                     id="policy_watch: .inf (0 is off)"),
        pytest.param("  audit: 1m", "  audit: 1e999", "intervals.audit", FINITE_DURATION,
                     id="audit: 1e999 (0 is only at start)"),
        # pools
        pytest.param("    boot_timeout: 60s", "    boot_timeout: 0", "pools.web.boot_timeout", POSITIVE,
                     id="boot_timeout: 0 (every launch fails)"),
        pytest.param("    boot_timeout: 60s", "    boot_timeout: .inf", "pools.web.boot_timeout", FINITE_DURATION,
                     id="boot_timeout: .inf"),
        pytest.param("    drain_timeout: 60s", "    drain_timeout: .inf", "pools.web.drain_timeout", FINITE_DURATION,
                     id="drain_timeout: .inf (a member drains forever)"),
        pytest.param("    drain_grace: 5s", "    drain_grace: .nan", "pools.web.drain_grace", FINITE_DURATION,
                     id="drain_grace: .nan"),
        pytest.param("      cool_off: 10m", "      cool_off: .inf", "pools.web.launch_breaker.cool_off",
                     FINITE_DURATION, id="launch_breaker cool_off: .inf (0 is until reset)"),
        # alerts: an infinite skew, window or lifetime turns a protection off
        pytest.param("  read_timeout: 10s", "  read_timeout: .inf", "alerts.read_timeout", FINITE_DURATION,
                     id="alerts read_timeout: .inf"),
        pytest.param("      max_skew: 5m", "      max_skew: .inf", "alerts.grafana.hmac.max_skew", FINITE_DURATION,
                     id="grafana hmac max_skew: .inf"),
        pytest.param("      scale_out: 5m", "      scale_out: .nan", "alerts.signals.hold.scale_out", FINITE_DURATION,
                     id="signals hold scale_out: .nan"),
        pytest.param("      scale_in: 5m", "      scale_in: 0", "alerts.signals.hold.scale_in", POSITIVE,
                     id="signals hold scale_in: 0"),
        pytest.param("    replay_window: 5m", "    replay_window: .nan", "alerts.signals.replay_window",
                     FINITE_DURATION, id="signals replay_window: .nan"),
        pytest.param("    default_ttl: 30d", "    default_ttl: .inf", "alerts.signals.default_ttl", FINITE_DURATION,
                     id="signals default_ttl: .inf"),
        pytest.param("    max_ttl: 365d", "    max_ttl: .inf", "alerts.signals.max_ttl", FINITE_DURATION,
                     id="signals max_ttl: .inf (permanent URLs)"),
        # collectors' options
        pytest.param("      max_rate_gap_s: 60", "      max_rate_gap_s: .inf",
                     "collectors.haproxy.options.max_rate_gap_s", FINITE, id="haproxy max_rate_gap_s: .inf"),
        pytest.param("      start_tolerance_s: 1", "      start_tolerance_s: .nan",
                     "collectors.scrape.options.start_tolerance_s", FINITE,
                     id="prometheus_scrape start_tolerance_s: .nan"),
        pytest.param("      max_age_s: 300", "      max_age_s: .inf", "collectors.scrape.options.max_age_s", FINITE,
                     id="prometheus_scrape max_age_s: .inf"),
        pytest.param("      max_age_s: 60", "      max_age_s: 1e999", "collectors.query.options.max_age_s", FINITE,
                     id="prometheus_query max_age_s: 1e999"),
        pytest.param("      start_tolerance_s: 5", "      start_tolerance_s: .inf",
                     "collectors.snmp.options.start_tolerance_s", FINITE, id="snmp start_tolerance_s: .inf"),
        pytest.param("          scale: 8", "          scale: .nan", "collectors.snmp.options.oids.octets.scale", FINITE,
                     id="snmp oid scale: .nan"),
        pytest.param("          max_rate: 1000000000", "          max_rate: .inf",
                     "collectors.snmp.options.oids.octets.max_rate", FINITE, id="snmp oid max_rate: .inf"),
    ],
)
def test_edge_values_are_refused_at_their_line(tmp_path: Path, old: str, new: str, key: str, message: str) -> None:
    path, line, col = service_config(tmp_path, old, new)
    with pytest.raises(ConfigError) as err:
        load_config(path, REGISTRIES)
    assert any(p.startswith(f"{path}:{line}:{col}: {key}: {message}") for p in err.value.problems), \
        err.value.problems


@pytest.mark.parametrize(
    ("old", "new", "also"),
    [
        pytest.param("  policy_watch: 2s", "  policy_watch: 0", None, id="policy_watch: 0 (off)"),
        pytest.param("  audit: 1m", "  audit: 0", None, id="audit: 0 (only at start)"),
        pytest.param("    drain_timeout: 60s", "    drain_timeout: 0", ("    drain_grace: 5s", "    drain_grace: 0"),
                     id="drain_timeout: 0 (withdraw at once)"),
        pytest.param("    drain_grace: 5s", "    drain_grace: 0", None, id="drain_grace: 0"),
        pytest.param("      cool_off: 10m", "      cool_off: 0", None, id="cool_off: 0 (until reset)"),
    ],
)
def test_zeros_that_mean_something_are_kept(tmp_path: Path, old: str, new: str, also: tuple[str, str] | None) -> None:
    path, _, _ = service_config(tmp_path, old, new, *([also] if also else []))
    load_config(path, REGISTRIES)


def line_of(path: Path, text: str) -> tuple[int, int]:
    """(line, column) of the one line of `path` that is `text` (its first non-blank character)."""
    (index,) = [i for i, line in enumerate(path.read_text().splitlines()) if line == text]
    return index + 1, len(text) - len(text.lstrip(" ")) + 1


def test_a_typo_in_a_lab_pool_instance_is_reported_at_its_line(conf: Path) -> None:
    # The lab reads nothing from `instance:`: every key there is unknown.
    path = conf / "scaler.yaml"
    edit(path, "    vip: 198.19.0.1\n", "    vip: 198.19.0.1\n    instance:\n      flavour: big\n")
    line, col = line_of(path, "      flavour: big")
    with pytest.raises(ConfigError) as err:
        load_config(path, REGISTRIES)
    assert err.value.problems == [f"{path}:{line}:{col}: pools.web.instance.flavour: unknown key"]


# Two OpenStack pools sharing their instance options through a YAML anchor, as docs/openstack.md shows.
OPENSTACK = """\
orchestrator:
  driver: openstack
  options:
    cloud: lb-prod
router:
  driver: fake
collectors:
  haproxy:
    driver: haproxy
pools:
  web:
    vip: 198.51.100.10
    instance: &lb
      image: haproxy-lb
      flavor: lb.medium
      networks: [lb-vip-net]
      server_group:
        policy: anti-affinity
      haproxy:
        backends: ["10.0.1.10:8080"]
  api:
    vip: 198.51.100.20
    instance:
      <<: *lb
      haproxy:
        backends: ["10.0.2.10:8443"]
        mode: tcp
"""


def test_the_openstack_instance_template_is_valid(tmp_path: Path) -> None:
    (tmp_path / "scaler.yaml").write_text(OPENSTACK)
    cfg = load_config(tmp_path / "scaler.yaml", REGISTRIES)
    assert cfg.pools["api"].instance["flavor"] == "lb.medium"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param("      flavor: lb.medium", "      flavour: lb.medium",
                     [("      flavour: lb.medium", "pools.web.instance.flavour: unknown key"),
                      ("      flavour: lb.medium", "pools.api.instance.flavour: unknown key"),
                      ("    instance: &lb", "pools.web.instance.flavor: required key is missing"),
                      ("    instance:", "pools.api.instance.flavor: required key is missing")],
                     id="a typo in the anchored options: both pools, at the anchor's line"),
        pytest.param("        mode: tcp", "        mode: tpc",
                     [("        mode: tpc", "pools.api.instance.haproxy.mode: Input should be 'http' or 'tcp'")],
                     id="a bad value in one pool's own options"),
        pytest.param("        policy: anti-affinity", "        polcy: anti-affinity",
                     [("        polcy: anti-affinity", "pools.web.instance.server_group.polcy: unknown key"),
                      ("        polcy: anti-affinity", "pools.api.instance.server_group.polcy: unknown key")],
                     id="a typo in a nested mapping"),
        pytest.param("      networks: [lb-vip-net]", "      networks: []",
                     [("      networks: []", "pools.web.instance.networks: List should have at least 1 item"),
                      ("      networks: []", "pools.api.instance.networks: List should have at least 1 item")],
                     id="no network"),
    ],
)
def test_openstack_pool_instance_errors_are_reported_at_their_line(tmp_path: Path, old: str, new: str,
                                                                    expected: list[tuple[str, str]]) -> None:
    path = tmp_path / "scaler.yaml"
    assert old in OPENSTACK
    path.write_text(OPENSTACK.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path, REGISTRIES)
    assert len(err.value.problems) == len(expected), err.value.problems
    for text, message in expected:
        line, col = line_of(path, text)
        assert any(p.startswith(f"{path}:{line}:{col}: {message}") for p in err.value.problems), \
            (line, col, message, err.value.problems)


def test_an_orchestrator_without_an_instance_model_is_not_checked(tmp_path: Path) -> None:
    # The fake orchestrator registers no instance model: its pools' `instance:` is not validated.
    path, _, _ = service_config(tmp_path, "    vip: 198.19.0.1", "    vip: 198.19.0.1\n    instance: {anything: 1}")
    assert load_config(path, REGISTRIES).pools["web"].instance == {"anything": 1}
