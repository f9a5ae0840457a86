"""deploy/examples/production (OpenStack + bgp to two ToRs + PostgreSQL + credentials in files) loads
the way `scaler check` and `scaler run` load it, and its pool's user data renders from the template
shipped in the package."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from actuators.openstack.options import instance_options
from actuators.openstack.userdata import SHIPPED_TEMPLATE, UserDataInputs, render_user_data
from scaler.config import driver_options, load_config, load_policies
from scaler.errors import ConfigError
from scaler.service import REGISTRIES, ha_warnings
from tests.support.production import install


def test_the_production_example_is_valid(tmp_path: Path) -> None:
    cfg = load_config(install(tmp_path), REGISTRIES)
    policies = load_policies(cfg)
    assert set(policies) == {"web"} and policies["web"].min == 2
    assert cfg.store_url().startswith("postgresql+psycopg://scaler@db.example.net")
    assert cfg.orchestrator.driver == "openstack" and cfg.router.driver == "bgp"
    router = driver_options(cfg.router, REGISTRIES.routers, tmp_path)
    assert [(p.label, str(p.local_address)) for p in router.peers] == [("tor-a", "10.0.1.5"), ("tor-b", "10.0.2.5")]
    assert cfg.api.tls is not None and cfg.api.socket is not None and not cfg.api.anonymous_read
    assert {c.name: c.scopes for c in cfg.api.credentials} == {"prometheus": ["read"], "ops": ["read", "operate"]}
    orchestrator = driver_options(cfg.orchestrator, REGISTRIES.orchestrators, tmp_path)
    assert orchestrator.template_path == SHIPPED_TEMPLATE


def test_its_member_user_data_renders_from_the_shipped_template(tmp_path: Path) -> None:
    cfg = load_config(install(tmp_path), REGISTRIES)
    pool = cfg.pools["web"]
    opts = instance_options(pool.instance, "web")
    inputs = UserDataInputs(haproxy=opts.haproxy, snmp=opts.snmp, router=opts.router)
    text = render_user_data(SHIPPED_TEMPLATE, inputs, name="web-1", pool="web", vip=pool.vip,
                            address=IPv4Address("10.0.1.20"))
    assert "203.0.113.10" in text and "server s3 10.20.0.12:8443 check" in text
    assert 'createUser scaler SHA-256 "snmp-auth-0123456789"' in text


def test_a_missing_credential_file_is_named_with_its_line(tmp_path: Path) -> None:
    config = install(tmp_path)
    (tmp_path / "secrets" / "alertmanager-token").unlink()
    with pytest.raises(ConfigError) as err:
        load_config(config, REGISTRIES)
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "alertmanager-token" in text)
    assert any(p.startswith(f"{config}:{line}:") and "alertmanager-token" in p for p in err.value.problems), \
        err.value.problems


def test_a_long_graceful_restart_with_several_scalers_is_warned_about(tmp_path: Path) -> None:
    path = install(tmp_path)
    assert ha_warnings(load_config(path, REGISTRIES)) == []
    path.write_text(path.read_text().replace("graceful_restart_s: 15", "graceful_restart_s: 120"))
    [warning] = ha_warnings(load_config(path, REGISTRIES))
    assert warning.startswith("router.options.graceful_restart_s is 120 s with several scalers: after a takeover")
