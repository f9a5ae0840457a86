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
        pytest.param("policy_dir: policies", "policy_dri: policies", ":15:1: policy_dri: unknown key",
                     id="unknown top-level key"),
        pytest.param("vip: 198.19.0.1", "vip: 198.19.0.300", ":67:5: pools.web.vip: Input is not a valid IPv4 address",
                     id="bad VIP"),
        pytest.param("driver: kernel ", "driver: ospf ", ":32:3: router.driver: unknown router driver 'ospf' "
                     "(known: bgp, fake, kernel)", id="unknown driver"),
        pytest.param("    buckets: 128", "    buckets: many", ":35:5: router.options.buckets: Input should be a "
                     "valid integer", id="driver option of the wrong type"),
        pytest.param("  collect: 2s", "  collect: 2 seconds", ":18:3: intervals.collect: not a duration",
                     id="bad duration"),
        pytest.param("boot_timeout: 60s", "boot_timeout: 60s\n    boot_timout: 1m", ":69:5: "
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
