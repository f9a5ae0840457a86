"""The boot configuration of an OpenStack LB member: the user-data template and what fills it.

A member boots with cloud-init user data rendered from a template (the project ships
`actuators/openstack/templates/member.yaml.tmpl` as package data, so an installed scaler finds it;
operators may point `user_data_template` at their own). The
template is Python's `string.Template`: `$name` placeholders, `$$` for a literal dollar sign, and a
placeholder alone on its line is a *block*, expanded line by line at that line's indentation (so a
multi-line value lands correctly inside a YAML literal block). The values are listed in
`TEMPLATE_VARIABLES`; an unknown placeholder is an error, not an empty string.

Credentials (the SNMPv3 keys) are written as references `{file: PATH}` or `{env: NAME}`, the same
shape the collectors use, and read only when a member's user data is rendered; they never appear in
a log line or an error message. This module is pure apart from reading the template and the
secret files; it must not talk to the cloud.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path
from string import Template
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from actuators.errors import OrchestratorError
from actuators.haproxy_runtime import DRAIN_MAP_INITIAL, drain_config_lines

# The shipped template is package data (pyproject.toml), found the same way in a checkout and in an
# installed wheel. A regular package on disk gives a real path; a zipped install is not supported.
SHIPPED_TEMPLATE = Path(str(resources.files("actuators.openstack") / "templates" / "member.yaml.tmpl"))
MEMBER_DRAIN_MAP = "/etc/haproxy/scaler-drain.map"
# Nova's limit is 65535 bytes of base64: 49152 bytes of text at most.
USER_DATA_MAX_BYTES = 49152

TEMPLATE_VARIABLES: dict[str, str] = {
    "name": "the instance's name (also the server's name and hostname)",
    "pool": "the pool's name",
    "vip": "the pool's VIP (put on lo; HAProxy's frontend binds it)",
    "address": "the member's fixed IP on the VIP network: the next hop routers announce",
    "haproxy_mode": "http or tcp",
    "frontend_port": "the port HAProxy serves on the VIP",
    "maxconn": "HAProxy's global maxconn",
    "keepalive_ms": "HAProxy's `timeout http-keep-alive`, in ms",
    "exporter_port": "HAProxy's Prometheus exporter port (bound on `address`)",
    "health_port": "HAProxy's health monitor port (bound on `address`, GET /healthz)",
    "backend_servers": "block: one `server …` line per backend",
    "drain_lines": "block: the frontend lines scaler's drain needs (empty in tcp mode)",
    "drain_map": "the drain map file the drain lines read",
    "drain_map_initial": "the drain map's initial content (`drain 0`)",
    "runtime_api": "block: a `stats socket` line exposing the runtime API on `address` (or a comment)",
    "snmpd_conf": "block: snmpd.conf (agent address, view, v3 user); a comment when SNMP is off",
    "snmp_user": "the SNMPv3 user name ('' when SNMP is off)",
    "router_mode": "scaler (the scaler's router driver announces the VIP) or member-bgp",
    "router_files": "block: extra cloud-init write_files items the router mode needs (may be empty)",
    "router_commands": "block: extra cloud-init runcmd items the router mode needs (may be empty)",
}

_BLOCK_LINE = re.compile(
    r"^(?P<indent>[ \t]*)\$(?:(?P<a>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<b>[A-Za-z_][A-Za-z0-9_]*)\})[ \t]*$")
# Values that end up inside quoted config text (snmpd.conf): keep them free of quotes and controls.
_SAFE_SECRET = re.compile(r"^[\x21\x23-\x26\x28-\x5b\x5d-\x7e]{8,64}$")


class SecretRef(BaseModel):
    """A credential kept outside the config: exactly one of `file` (its first line) or `env`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret needs exactly one of 'file' or 'env' (never the value itself)")
        return self

    def describe(self) -> str:
        return f"file {self.file}" if self.file is not None else f"env ${self.env}"

    def read(self, environ: Mapping[str, str] | None = None) -> SecretStr:
        """The value; raises OrchestratorError naming where it looked (never the value)."""
        if self.env is not None:
            value = (os.environ if environ is None else environ).get(self.env)
            if value is None:
                raise OrchestratorError(f"secret: environment variable {self.env} is not set")
        else:
            assert self.file is not None
            try:
                lines = self.file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise OrchestratorError(f"secret: cannot read {self.file}: {exc.strerror or exc}") from None
            value = lines[0].strip() if lines else ""
        if not value:
            raise OrchestratorError(f"secret from {self.describe()} is empty")
        return SecretStr(value)


class HAProxyOptions(BaseModel):
    """What the member's HAProxy serves."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["http", "tcp"] = "http"
    port: int = Field(default=80, ge=1, le=65535)
    backends: list[str] = Field(min_length=1, description="HOST:PORT of each backend server")
    check: bool = True
    maxconn: int = Field(default=20000, ge=1)
    keepalive_timeout_s: float = Field(default=2.0, gt=0, le=25)
    exporter_port: int = Field(default=8404, ge=1, le=65535)
    health_port: int = Field(default=8405, ge=1, le=65535)
    # The runtime API over TCP lets the scaler drain the member; `level admin` has no password:
    # only enable it with a security group that admits the scaler's address alone.
    runtime_api_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("backends")
    @classmethod
    def _host_port(cls, v: list[str]) -> list[str]:
        for b in v:
            host, sep, port = b.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(
                    c.isspace() for c in b):
                raise ValueError(f"backend {b!r}: want HOST:PORT")
        return v


class SnmpOptions(BaseModel):
    """An SNMPv3 authPriv user for the collectors (SHA-256 + AES-128 interoperates with pysnmp 7)."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
    auth_key: SecretRef
    priv_key: SecretRef
    auth_protocol: Literal["SHA-256", "SHA-512", "SHA"] = "SHA-256"
    priv_protocol: Literal["AES"] = "AES"      # net-snmp's AES-256 variants do not interoperate
    port: int = Field(default=161, ge=1, le=65535)


class BgpOptions(BaseModel):
    """Placeholder values for a member that announces the VIP itself (not wired yet)."""

    model_config = ConfigDict(extra="forbid")

    local_as: int = Field(ge=1, le=4294967295)
    peer_as: int = Field(ge=1, le=4294967295)
    peers: list[IPv4Address] = Field(min_length=1)


class RouterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # scaler: the scaler's router driver announces the VIP with this member as next hop (kernel, BGP
    # from the scaler's speaker); the member only needs the VIP on lo. member-bgp: each member runs
    # its own speaker (a placeholder here: the rendered config says what is missing).
    mode: Literal["scaler", "member-bgp"] = "scaler"
    bgp: BgpOptions | None = None

    @model_validator(mode="after")
    def _bgp_needs_settings(self) -> RouterOptions:
        if self.mode == "member-bgp" and self.bgp is None:
            raise ValueError("router.mode member-bgp needs router.bgp (local_as, peer_as, peers)")
        return self


class UserDataInputs(BaseModel):
    """Everything the template needs apart from the member's identity."""

    model_config = ConfigDict(extra="forbid")

    haproxy: HAProxyOptions
    snmp: SnmpOptions | None = None
    router: RouterOptions = RouterOptions()


def template_problems(text: str) -> list[str]:
    """Placeholders the template uses that the renderer does not provide (and bad `$` uses)."""
    t = Template(text)
    if not t.is_valid():
        return ["invalid placeholder (write $$ for a literal dollar sign)"]
    return [f"unknown placeholder ${n}" for n in t.get_identifiers() if n not in TEMPLATE_VARIABLES]


def load_template(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OrchestratorError(f"user-data template {path}: {exc.strerror or exc}") from None
    problems = template_problems(text)
    if problems:
        raise OrchestratorError(f"user-data template {path}: " + "; ".join(problems))
    return text


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill a template line by line: a placeholder alone on its line is replaced by its value's lines
    at that indentation (an empty value removes the line); other lines substitute inline. Values are
    inserted verbatim, never substituted again, so a `$` inside a value stays a `$`."""
    out: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        m = _BLOCK_LINE.match(line)
        name = (m.group("a") or m.group("b")) if m else None
        if m and name is not None and name in values:
            out += [m.group("indent") + ln if ln else "" for ln in values[name].splitlines()]
            continue
        try:
            out.append(Template(line).substitute(values))
        except (KeyError, ValueError) as exc:
            raise OrchestratorError(f"user-data template line {n}: bad placeholder {exc}") from None
    return "\n".join(out) + "\n"


def _snmpd_conf(snmp: SnmpOptions | None, address: IPv4Address | str, environ: Mapping[str, str] | None) -> str:
    if snmp is None:
        return "# SNMP is not configured for this pool (instance option `snmp`)."
    auth, priv = snmp.auth_key.read(environ), snmp.priv_key.read(environ)
    for what, key in (("auth_key", auth), ("priv_key", priv)):
        if not _SAFE_SECRET.match(key.get_secret_value()):
            raise OrchestratorError(f"snmp.{what} from {getattr(snmp, what).describe()}: want 8-64 printable "
                                    "characters without quotes, backslashes or spaces (net-snmp needs ≥ 8)")
    return "\n".join([
        f"agentAddress udp:{address}:{snmp.port}",
        "view all included .1",
        f'createUser {snmp.user} {snmp.auth_protocol} "{auth.get_secret_value()}" '
        f'{snmp.priv_protocol} "{priv.get_secret_value()}"',
        f"rouser {snmp.user} priv -V all",
    ])


def _router_blocks(router: RouterOptions, vip: IPv4Address, address: IPv4Address | str) -> tuple[str, str]:
    if router.mode == "scaler":
        return "", ""
    assert router.bgp is not None
    peers = "\n".join(
        f"neighbor {p} {{\n    router-id {address};\n    local-address {address};\n"
        f"    local-as {router.bgp.local_as};\n    peer-as {router.bgp.peer_as};\n}}"
        for p in router.bgp.peers)
    files = "\n".join([
        "- path: /etc/exabgp/exabgp.conf",
        "  permissions: '0644'",
        "  content: |",
        "    # PLACEHOLDER (scaler router mode member-bgp): this member would announce",
        f"    # {vip}/32 next-hop {address} itself, with a health check that withdraws it when HAProxy",
        "    # fails. Not wired yet: start ExaBGP with its healthcheck program from your image.",
        *("    " + ln for ln in peers.splitlines()),
    ])
    commands = "- [sh, -c, 'echo \"scaler: member-bgp is a placeholder; start your BGP speaker here\"']"
    return files, commands


def user_data_values(inputs: UserDataInputs, *, name: str, pool: str, vip: IPv4Address,
                     address: IPv4Address | str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The template's values. `name` and `address` may be tokens another renderer fills later
    (Heat mode: the member's address is known only once Heat made its port)."""
    h = inputs.haproxy
    check = " check" if h.check else ""
    servers = "\n".join(f"server s{i} {b}{check}" for i, b in enumerate(h.backends, 1))
    drain = "\n".join(drain_config_lines(MEMBER_DRAIN_MAP)) if h.mode == "http" else ""
    runtime = (f"stats socket ipv4@{address}:{h.runtime_api_port} level admin" if h.runtime_api_port
               else "# no runtime API over TCP (haproxy.runtime_api_port is not set)")
    router_files, router_commands = _router_blocks(inputs.router, vip, address)
    return {
        "name": name, "pool": pool, "vip": str(vip), "address": str(address),
        "haproxy_mode": h.mode, "frontend_port": str(h.port), "maxconn": str(h.maxconn),
        "keepalive_ms": str(round(h.keepalive_timeout_s * 1000)), "exporter_port": str(h.exporter_port),
        "health_port": str(h.health_port), "backend_servers": servers, "drain_lines": drain,
        "drain_map": MEMBER_DRAIN_MAP, "drain_map_initial": DRAIN_MAP_INITIAL.strip(),
        "runtime_api": runtime, "snmpd_conf": _snmpd_conf(inputs.snmp, address, environ),
        "snmp_user": inputs.snmp.user if inputs.snmp else "", "router_mode": inputs.router.mode,
        "router_files": router_files, "router_commands": router_commands,
    }


def render_user_data(template_path: Path, inputs: UserDataInputs, *, name: str, pool: str, vip: IPv4Address,
                     address: IPv4Address | str, environ: Mapping[str, str] | None = None) -> str:
    """The member's user data. Raises OrchestratorError (template, secret or size problems)."""
    values = user_data_values(inputs, name=name, pool=pool, vip=vip, address=address, environ=environ)
    text = render(load_template(template_path), values)
    if len(text.encode()) > USER_DATA_MAX_BYTES:
        raise OrchestratorError(f"user data for {name}: {len(text.encode())} bytes, Nova accepts at most "
                                f"{USER_DATA_MAX_BYTES} before base64")
    return text


__all__ = [
    "SHIPPED_TEMPLATE", "TEMPLATE_VARIABLES", "BgpOptions", "HAProxyOptions", "RouterOptions", "SecretRef",
    "SnmpOptions", "UserDataInputs", "load_template", "render", "render_user_data", "template_problems",
    "user_data_values",
]
