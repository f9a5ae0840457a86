"""The `openstack` driver's pure parts: the user-data template and its rendering (checked by HAProxy
itself), secrets, option validation, tags and naming, error translation and Heat membership. No
cloud, no HTTP: the driver against the fake cloud is in tests/integration/actuators/test_openstack_driver.py."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import requests
from openstack import exceptions as sdk
from pydantic import ValidationError
from ruamel.yaml import YAML

from actuators.errors import OrchestratorConflict, OrchestratorError, OrchestratorTimeout, QuotaExceeded
from actuators.openstack.api import ServerInfo, StackInfo, refused, translate
from actuators.openstack.heat import ADDRESS_TOKEN, NAME_TOKEN, membership, membership_parameters, next_index
from actuators.openstack.options import (
    InstanceOptions,
    OpenStackOrchestratorConfig,
    endpoints_of,
    instance_options,
    operation_of,
    pick_zone,
)
from actuators.openstack.userdata import (
    SHIPPED_TEMPLATE,
    TEMPLATE_VARIABLES,
    SecretRef,
    UserDataInputs,
    render,
    render_user_data,
    template_problems,
)

VIP = IPv4Address("198.51.100.10")
ADDR = IPv4Address("10.20.0.11")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "auth").write_text("auth-key-123\n")
    (tmp_path / "priv").write_text("priv-key-456\n")
    return {"user": "scaler", "auth_key": {"file": str(tmp_path / "auth")},
            "priv_key": {"file": str(tmp_path / "priv")}}


def inputs(keys: dict[str, Any] | None = None, **haproxy: Any) -> UserDataInputs:
    return UserDataInputs.model_validate({"haproxy": {"backends": ["10.0.1.10:8080"], **haproxy},
                                          **({"snmp": keys} if keys else {})})


def rendered_files(text: str) -> dict[str, str]:
    doc = YAML(typ="safe").load(text)
    return {f["path"]: f["content"] for f in doc["write_files"]}


# ---- the template language -------------------------------------------------------------------

@pytest.mark.parametrize(("template", "values", "expected"), [
    pytest.param("a: $x\n", {"x": "1"}, "a: 1\n", id="inline placeholder"),
    pytest.param("  $block\nend\n", {"block": "- one\n- two"}, "  - one\n  - two\nend\n",
                 id="a placeholder alone on its line is a block at that indentation"),
    pytest.param("  - $x\n", {"x": "one"}, "  - one\n", id="not alone on its line: inline"),
    pytest.param("k:\n    ${block}\n", {"block": "a\n\nb"}, "k:\n    a\n\n    b\n",
                 id="braced block keeps blank lines unindented"),
    pytest.param("x\n  $block\ny\n", {"block": ""}, "x\ny\n", id="an empty block removes its line"),
    pytest.param("cost: $$5 $x\n", {"x": "a"}, "cost: $5 a\n", id="two dollars make one"),
    pytest.param("v: $x\n", {"x": "$y"}, "v: $y\n", id="a dollar inside a value is not substituted again"),
    pytest.param("  $x\n", {"x": "$y\n$z"}, "  $y\n  $z\n", id="nor inside a block"),
])
def test_render(template: str, values: dict[str, str], expected: str) -> None:
    assert render(template, values) == expected


def test_render_names_the_line_of_an_unknown_placeholder() -> None:
    with pytest.raises(OrchestratorError, match="line 2"):
        render("a\nb: $nope\n", {})


def test_the_shipped_template_uses_only_known_placeholders() -> None:
    assert template_problems(SHIPPED_TEMPLATE.read_text()) == []
    assert template_problems("x: $name $typo\n") == ["unknown placeholder $typo"]
    assert template_problems("x: $\n") == ["invalid placeholder (write $$ for a literal dollar sign)"]


def test_every_variable_is_rendered(keys: dict[str, Any]) -> None:
    from actuators.openstack.userdata import user_data_values
    values = user_data_values(inputs(keys), name="web-1", pool="web", vip=VIP, address=ADDR)
    assert set(values) == set(TEMPLATE_VARIABLES)


# ---- the rendered boot configuration ---------------------------------------------------------------

def test_user_data_puts_the_vip_on_lo_and_configures_haproxy_and_snmp(keys: dict[str, Any]) -> None:
    text = render_user_data(SHIPPED_TEMPLATE, inputs(keys, runtime_api_port=9999), name="web-1", pool="web",
                            vip=VIP, address=ADDR)
    assert text.startswith("#cloud-config\n")
    files = rendered_files(text)
    assert f"ExecStart=/sbin/ip addr replace {VIP}/32 dev lo" in files["/etc/systemd/system/scaler-vip.service"]
    assert "arp_ignore = 1" in files["/etc/sysctl.d/60-scaler-vip.conf"]
    cfg = files["/etc/haproxy/haproxy.cfg"]
    assert f"bind {VIP}:80" in cfg and "server s1 10.0.1.10:8080 check" in cfg
    assert f"bind {ADDR}:8404" in cfg and f"bind {ADDR}:8405" in cfg
    assert f"stats socket ipv4@{ADDR}:9999 level admin" in cfg
    assert "map(/etc/haproxy/scaler-drain.map,0)" in cfg
    assert files["/etc/haproxy/scaler-drain.map"] == "drain 0\n"
    assert 'createUser scaler SHA-256 "auth-key-123" AES "priv-key-456"' in files["/etc/snmp/snmpd.conf"]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize("haproxy", [
    pytest.param({}, id="http with drain lines"),
    pytest.param({"mode": "tcp", "port": 443, "check": False}, id="tcp without drain lines"),
    pytest.param({"runtime_api_port": 9999, "backends": ["a.example:80", "[::1]:81"]}, id="runtime API, names"),
])
def test_haproxy_accepts_the_rendered_configuration(tmp_path: Path, haproxy: dict[str, Any]) -> None:
    cfg = rendered_files(render_user_data(SHIPPED_TEMPLATE, inputs(**haproxy), name="web-1", pool="web", vip=VIP,
                                          address=ADDR))["/etc/haproxy/haproxy.cfg"]
    (tmp_path / "scaler-drain.map").write_text("drain 0\n")
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg.replace("/etc/haproxy/scaler-drain.map", str(tmp_path / "scaler-drain.map")))
    proc = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if haproxy.get("mode") == "tcp":
        assert "http-after-response" not in cfg


def test_member_bgp_mode_renders_a_placeholder(keys: dict[str, Any]) -> None:
    inp = UserDataInputs.model_validate({"haproxy": {"backends": ["10.0.1.10:8080"]}, "router": {
        "mode": "member-bgp", "bgp": {"local_as": 65001, "peer_as": 65000, "peers": ["10.20.0.1"]}}})
    text = render_user_data(SHIPPED_TEMPLATE, inp, name="web-1", pool="web", vip=VIP, address=ADDR)
    files = rendered_files(text)
    assert "PLACEHOLDER" in files["/etc/exabgp/exabgp.conf"] and "peer-as 65000;" in files["/etc/exabgp/exabgp.conf"]
    with pytest.raises(ValidationError, match=r"needs router\.bgp"):
        UserDataInputs.model_validate({"haproxy": {"backends": ["a:1"]}, "router": {"mode": "member-bgp"}})


def test_heat_tokens_survive_rendering() -> None:
    text = render_user_data(SHIPPED_TEMPLATE, inputs(), name=NAME_TOKEN, pool="web", vip=VIP, address=ADDRESS_TOKEN)
    assert f"hostname: {NAME_TOKEN}" in text and f"bind {ADDRESS_TOKEN}:8404" in text
    YAML(typ="safe").load(text)


def test_an_operator_template_replaces_the_shipped_one(tmp_path: Path) -> None:
    own = tmp_path / "member.tmpl"
    own.write_text("#cloud-config\nruncmd:\n  - [echo, $name, $vip]\n")
    assert render_user_data(own, inputs(), name="web-1", pool="web", vip=VIP, address=ADDR) == (
        "#cloud-config\nruncmd:\n  - [echo, web-1, 198.51.100.10]\n")
    own.write_text("x: $nmae\n")
    with pytest.raises(OrchestratorError, match=r"unknown placeholder \$nmae"):
        render_user_data(own, inputs(), name="web-1", pool="web", vip=VIP, address=ADDR)


def test_user_data_over_novas_limit_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.tmpl"
    big.write_text("#cloud-config\n# " + "x" * 60000 + "\n")
    with pytest.raises(OrchestratorError, match="at most 49152"):
        render_user_data(big, inputs(), name="web-1", pool="web", vip=VIP, address=ADDR)


# ---- secrets ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ref", "environ", "message"), [
    pytest.param({"env": "SNMP_AUTH"}, {}, "SNMP_AUTH is not set", id="unset variable"),
    pytest.param({"file": "/nonexistent/scaler-snmp"}, {}, "cannot read /nonexistent/scaler-snmp", id="no file"),
    pytest.param({"env": "SNMP_AUTH"}, {"SNMP_AUTH": ""}, "is empty", id="empty value"),
])
def test_secret_errors_name_the_source(ref: dict[str, str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(OrchestratorError, match=message):
        SecretRef.model_validate(ref).read(environ)


def test_secret_from_env_and_its_shape() -> None:
    assert SecretRef(env="K").read({"K": "abcdefgh"}).get_secret_value() == "abcdefgh"
    with pytest.raises(ValidationError, match="exactly one"):
        SecretRef.model_validate({"file": "/a", "env": "B"})
    with pytest.raises(ValidationError):
        InstanceOptions.model_validate({"image": "i", "flavor": "f", "networks": ["n"], "haproxy": {
            "backends": ["a:1"]}, "snmp": {"user": "u", "auth_key": "inline-secret", "priv_key": {"env": "P"}}})


def test_a_bad_snmp_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    (tmp_path / "auth").write_text('has"quote\n')
    (tmp_path / "priv").write_text("priv-key-456\n")
    keys = {"user": "scaler", "auth_key": {"file": str(tmp_path / "auth")},
            "priv_key": {"file": str(tmp_path / "priv")}}
    with pytest.raises(OrchestratorError) as caught:
        render_user_data(SHIPPED_TEMPLATE, inputs(keys), name="web-1", pool="web", vip=VIP, address=ADDR)
    assert "has\"quote" not in str(caught.value) and "snmp.auth_key" in str(caught.value)


# ---- options ---------------------------------------------------------------------------------------------

def test_instance_options_report_every_problem_at_once() -> None:
    with pytest.raises(OrchestratorError) as caught:
        instance_options({"flavor": "f", "networks": [], "haproxy": {"backends": ["no-port"]}, "colour": "red"}, "web")
    text = str(caught.value)
    for key in ("pool web", "image", "networks", "haproxy.backends", "colour"):
        assert key in text


@pytest.mark.parametrize(("options", "message"), [
    pytest.param({"tag_prefix": "Scaler"}, "tag_prefix", id="tag prefix must be lower case"),
    pytest.param({"tag_prefix": "averyverylongprefix"}, "tag_prefix", id="tag prefix keeps Nova tags short"),
    pytest.param({"clouds_yaml": "/nonexistent/clouds.yaml"}, "is not a file", id="clouds.yaml must exist"),
    pytest.param({"user_data_template": "/nonexistent/t"}, "user-data template", id="template must exist"),
    pytest.param({"cloud": "prod", "password": "x"}, "Extra inputs", id="no credentials in scaler.yaml"),
])
def test_driver_config_validation(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OpenStackOrchestratorConfig.model_validate(options)


def test_driver_config_defaults() -> None:
    cfg = OpenStackOrchestratorConfig.model_validate({"cloud": "prod", "region": "RegionTwo"})
    assert cfg.template_path == SHIPPED_TEMPLATE and cfg.tag_prefix == "scaler"


# ---- naming, zones, endpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize(("pool", "name", "op"), [
    pytest.param("web", "web-1a2b3c4d-0", "op-1a2b3c4d", id="the scaler's naming"),
    pytest.param("web-eu", "web-eu-1a2b3c4d-12", "op-1a2b3c4d", id="pool with a dash, two-digit index"),
    pytest.param("web", "api-1a2b3c4d-0", None, id="other pool's name"),
    pytest.param("web", "web-handmade", None, id="no index"),
    pytest.param("web", "web-op-9-1", "op-9", id="already prefixed"),
])
def test_operation_of(pool: str, name: str, op: str | None) -> None:
    assert operation_of(pool, name) == op


def srv(az: str) -> ServerInfo:
    return ServerInfo(id=az, name=az, status="ACTIVE", availability_zone=az)


@pytest.mark.parametrize(("zones", "servers", "expected"), [
    pytest.param([], [srv("az1")], None, id="no zones: Nova picks"),
    pytest.param(["az1", "az2"], [], "az1", id="empty pool: first zone"),
    pytest.param(["az1", "az2"], [srv("az1")], "az2", id="least used"),
    pytest.param(["az1", "az2"], [srv("az1"), srv("az2")], "az1", id="tie: first listed"),
    pytest.param(["az1", "az2"], [srv("az3"), srv("az3")], "az1", id="servers elsewhere do not count"),
])
def test_pick_zone(zones: list[str], servers: list[ServerInfo], expected: str | None) -> None:
    assert pick_zone(zones, servers) == expected


def test_endpoints_follow_the_haproxy_options() -> None:
    opts = InstanceOptions.model_validate({"image": "i", "flavor": "f", "networks": ["n"], "haproxy": {
        "backends": ["a:1"], "exporter_port": 9101, "runtime_api_port": 9999},
        "endpoints": {"metrics_uds": "/run/{name}.sock"}})
    assert endpoints_of(opts, "web-1", ADDR, "sid") == {
        "metrics_url": f"http://{ADDR}:9101/metrics", "health_url": f"http://{ADDR}:8405/healthz",
        "runtime_api": f"tcp:{ADDR}:9999", "metrics_uds": "/run/web-1.sock", "server_id": "sid"}


# ---- SDK failures → our errors -------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "message", "error", "is_refusal"), [
    pytest.param(403, "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances",
                 QuotaExceeded, True, id="nova 403 quota"),
    pytest.param(413, "Quota exceeded for cores", QuotaExceeded, True, id="nova 413 over limit"),
    pytest.param(409, "Quota exceeded for resources: ['port'].", QuotaExceeded, True, id="neutron OverQuota"),
    pytest.param(409, "Port 1 is still in use.", OrchestratorConflict, True, id="conflict"),
    pytest.param(403, "Policy doesn't allow os_compute_api:servers:create", OrchestratorError, True,
                 id="forbidden by policy is not quota"),
    pytest.param(504, "Gateway Timeout", OrchestratorTimeout, False, id="gateway timeout"),
    pytest.param(500, "Internal error", OrchestratorError, False, id="server error: outcome unknown"),
])
def test_translate_http_errors(status: int, message: str, error: type[OrchestratorError], is_refusal: bool) -> None:
    response = requests.Response()
    response.status_code = status
    exc = sdk.HttpException(message=message, response=response)
    got = translate("create instance web-1: boot server", exc)
    assert type(got) is error
    assert got is not None and "create instance web-1" in str(got)
    got.__cause__ = exc
    assert refused(got) is is_refusal


def test_translate_connection_failures() -> None:
    from keystoneauth1 import exceptions as ksa
    assert isinstance(translate("x", ksa.ConnectTimeout("slow")), OrchestratorTimeout)
    lost = translate("x", ksa.ConnectFailure("reset"))
    assert type(lost) is OrchestratorError and "may or may not" in str(lost)
    assert translate("x", ValueError("a bug")) is None      # not the SDK's: not ours to translate


# ---- Heat membership ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("names", "removed", "expected"), [
    pytest.param({}, [], "0", id="first member"),
    pytest.param({"0": "a", "1": "b"}, [], "2", id="next after the members"),
    pytest.param({"0": "a", "2": "c"}, ["1"], "3", id="a removed index is never reused"),
    pytest.param({"1": "b"}, ["0"], "2", id="removed first member"),
])
def test_next_index_is_the_one_heat_will_use(names: dict[str, str], removed: list[str], expected: str) -> None:
    assert next_index(names, removed) == expected


def test_membership_round_trips_through_heats_string_parameters() -> None:
    import json
    params = membership_parameters({"0": "web-a-0", "2": "web-b-0"}, ["1"])
    shown = {k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in params.items()}
    assert params["count"] == 2
    assert membership(StackInfo("id", "s", "UPDATE_COMPLETE", parameters=shown)) == (
        {"0": "web-a-0", "2": "web-b-0"}, ["1"])
    assert membership(None) == ({}, [])
