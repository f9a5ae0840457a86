"""The service configuration (`scaler.yaml`) and the policy directory, validated as one unit.

`load_config(path)` returns a validated `ServiceConfig` or raises ConfigError listing every problem
as FILE:LINE:COL. `load_policies(cfg)` does the same for the policy files and checks them against
the service config (known pools, known collectors). Driver options are validated by the driver's
own config model, so an error inside `orchestrator.options` still names its line; so is each pool's
`instance:` mapping, by the model the orchestrator validates it with when it creates a member.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from collectors.secrets import Secret
from policies import PolicyFile, PoolPolicy, format_duration
from policies.durations import Duration, PositiveDuration
from scaler import yamlconf
from scaler.alerts.config import AlertsConfig
from scaler.breaker import LaunchBreakerConfig
from scaler.credentials import CredentialName, check_token, check_unique, digest
from scaler.errors import ConfigError

PoolName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(Strict):
    # sqlite:///relative/path is resolved against the directory of scaler.yaml.
    url: str = "sqlite:///scaler.db"
    decisions_kept: int = Field(default=5000, ge=10, description="per pool; older ones are pruned")


ApiScope = Literal["read", "operate"]


class ApiCredential(Strict):
    """A bearer token for the API (`Authorization: Bearer …`) and what it may do: `read` (every GET
    under /v1 and /metrics), `operate` (reload, breaker reset, pause/resume: every state change).
    `name` is what the access log records (never the token)."""

    name: CredentialName
    token: Secret
    scopes: list[ApiScope] = Field(min_length=1)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        check_token(token)
        return token


class TlsConfig(Strict):
    """PEM certificate (chain) and unencrypted key files; relative paths are relative to scaler.yaml."""

    cert: Path
    key: Path

    @model_validator(mode="after")
    def _loadable(self, info: ValidationInfo) -> TlsConfig:
        from scaler.tlsfiles import check_tls

        base = (info.context or {}).get("base_dir")
        check_tls(*(p if p.is_absolute() or base is None else Path(base) / p for p in (self.cert, self.key)))
        return self


class ApiConfig(Strict):
    """The HTTP API (scaler.auth): where it listens and who may use it. Secure by default: with no
    credential, every state change is refused and so is every read unless `anonymous_read`."""

    host: str = "127.0.0.1"
    port: int = Field(default=8750, ge=0, le=65535)
    # Also serve the API on this unix socket (mode 0660: owner and group only). Whoever can connect to
    # it is trusted with every scope, as for Docker's or systemd's sockets.
    socket: Path | None = None
    tls: TlsConfig | None = None
    # GET /v1/… and /metrics without a credential (a lab, or a network where reading is harmless).
    anonymous_read: bool = False
    credentials: list[ApiCredential] = Field(default_factory=list)

    @field_validator("credentials")
    @classmethod
    def _unique(cls, credentials: list[ApiCredential]) -> list[ApiCredential]:
        check_unique([c.name for c in credentials], [digest(c.token) for c in credentials])
        return credentials


class HaConfig(Strict):
    """Several scalers on one PostgreSQL store: one leads (scaler.leader). `lease`: how long a leader
    may act after its last successful lock check; a takeover waits as long before acting. A killed
    leader is replaced after about 1.3 x lease, a frozen or cut-off one after about 2.3 x lease (the
    database drops its silent session after one lease): 2.7 s and 4.7 s with the default."""

    lease: PositiveDuration = 2.0


class Intervals(Strict):
    # More than 0 (the scheduler would silently run a 0 s interval every second).
    collect: PositiveDuration = 5.0
    evaluate: PositiveDuration = 5.0
    reconcile: PositiveDuration = 1.0
    # How often the policy directory is checked for edits (0 = never; SIGHUP and POST /v1/reload
    # still reload).
    policy_watch: Duration = Field(default=2.0, ge=0)
    # How often instances are compared with the orchestrator (unknown servers, vanished members);
    # 0 = only at start.
    audit: Duration = Field(default=60.0, ge=0)


class DriverConfig(Strict):
    driver: str
    options: dict[str, Any] = Field(default_factory=dict)


class TargetTemplate(Strict):
    """How a collector reaches a member; `{address}`, `{instance}` and the instance's endpoints
    (`{metrics_url}`, `{metrics_uds}`, `{netns}`, `{snmp_address}`, … — what the orchestrator reports)
    are substituted. An empty result means "not set"."""

    url: str = "{metrics_url}"
    uds: str | None = "{metrics_uds}"
    netns: str | None = None


class CollectorConfig(Strict):
    driver: str
    options: dict[str, Any] = Field(default_factory=dict)
    target: TargetTemplate = TargetTemplate()


class HealthCheckConfig(Strict):
    """How the scaler checks each routed member (announcing, in service, draining). HAProxy's
    vocabulary: a check every `interval`, failed after `timeout`; `fall` failures in a row mark the
    member down (its route goes at once), `rise` successes mark it up again.

    The check is an HTTP GET of `url` (or a TCP connect to its host and port with `type: tcp`),
    opened from network namespace `netns` when set — a vantage point that sees what the router sees.
    Both are templates filled like collector targets: `{address}` and the instance's endpoints. By
    default the orchestrator's `health_url` (HAProxy's monitor-uri on the member's address: the
    openstack and lab drivers report it) from its `health_netns` (the lab's router namespace; unset
    elsewhere). A member without a usable URL is not checked, and that is reported. Detection takes at most
    `interval x fall + timeout` (plus one router batch, ~1 ms on the kernel router).
    """

    enabled: bool = True
    type: Literal["http", "tcp"] = "http"
    url: str = "{health_url}"
    netns: str | None = "{health_netns}"
    # Status codes that count as healthy: 2xx and 3xx, as HAProxy's `http-check expect` default.
    expect_status: tuple[int, int] = (200, 399)
    interval: Duration = Field(default=0.2, gt=0)
    timeout: Duration = Field(default=0.2, gt=0)
    rise: int = Field(default=2, ge=1, le=100)
    fall: int = Field(default=3, ge=1, le=100)
    # More than this share of the pool down at once: keep routing them all, start no replacement.
    panic_threshold: float = Field(default=0.5, ge=0, le=1, allow_inf_nan=False)
    # A member down this long (announcing or in service) is failed and replaced; one that recovers
    # earlier is only re-announced.
    replace_after: Duration = Field(default=10.0, ge=0)
    # How long a member failed by its health is kept (never routed) before its instance is deleted.
    keep_failed: Duration = Field(default=0.0, ge=0)
    # A member that went down `flap_limit` times within `flap_window` is replaced at its next
    # fall instead of re-announced (0 = never): at most 2 x flap_limit route changes per window.
    flap_limit: int = Field(default=3, ge=0)
    flap_window: Duration = Field(default=300.0, gt=0)

    @field_validator("timeout")
    @classmethod
    def _timeout_within_interval(cls, timeout: float, info: ValidationInfo) -> float:
        # A check still running when the next one is due would delay every later result.
        interval = info.data.get("interval")
        if interval is not None and timeout > interval:
            raise ValueError(f"timeout ({timeout:g}s) is longer than interval ({interval:g}s): a check must "
                             f"finish before the next one starts")
        return timeout


class RebalanceConfig(Strict):
    """Keep-alive load after a scale-out: the router places only *new* connections on a new member,
    so long keep-alive connections would stay on the old members for ever. For `window` after a member
    comes into service, every member in service closes `recycle_percent` % of its responses'
    connections (HAProxy's `connection: close`, through the drain map); those clients reconnect and
    the router places them again, uniformly, so they spread evenly over every member, the new one
    included. 0 turns it off."""

    recycle_percent: int = Field(default=10, ge=0, le=100)
    window: Duration = Field(default=30.0, ge=0)


def instance_template(options: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the options as canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(dict(options), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class PoolConfig(Strict):
    """A pool's infrastructure. What makes it grow or shrink lives in the policy files."""

    vip: IPv4Address
    instance: dict[str, Any] = Field(default_factory=dict, description="passed to the orchestrator, which "
                                     "validates it (so does load_config, with Registries.instances)")
    # More than 0: with 0, every new member would fail before it could boot.
    boot_timeout: PositiveDuration = 300.0
    # Longest a member drains: at this point it is withdrawn whatever it still carries.
    drain_timeout: Duration = 120.0
    # Only used when the router drains by withdrawing (BGP, no weights): how long after HAProxy was
    # asked to close keep-alive connections the member is withdrawn (earlier if it has none left).
    # Clients still connected then are reset, and new ones keep arriving until then: keep it short.
    # Never past drain_timeout: with the default and a shorter drain_timeout, drain_timeout wins.
    drain_grace: Duration = 5.0
    # After `failures` launches in a row that never became healthy, stop creating members for
    # `cool_off` (0: until `scaler breaker reset POOL`).
    launch_breaker: LaunchBreakerConfig = LaunchBreakerConfig()
    # Member health checks: a dead member leaves the VIP at once and is replaced.
    health: HealthCheckConfig = HealthCheckConfig()
    # The longest a live client flow may stay silent: the largest of the members' HAProxy `timeout
    # client`, `timeout server`, `timeout http-keep-alive` and `timeout tunnel` (30 s in the lab and
    # in deploy/cloud-init). A router that moves idle flows (kernel resilient mode) must wait longer.
    max_client_silence: PositiveDuration = 30.0
    rebalance: RebalanceConfig = RebalanceConfig()

    def instance_template(self) -> str:
        """The pool's versioned instance template: a short, stable hash of its `instance:` options
        (JSON, sorted keys). Recorded on each member at its create call (Member.template); a member
        on another hash is outdated, and `scaler rollout` replaces it."""
        return instance_template(self.instance)

    @field_validator("drain_grace")
    @classmethod
    def _grace_within_deadline(cls, grace: float, info: ValidationInfo) -> float:
        # A field validator, so the error names the drain_grace line. It runs only on a grace the
        # operator wrote: a drain_timeout below the default grace is valid on its own (the deadline
        # withdraws first). drain_timeout is declared above, so it is validated already (absent if
        # invalid: that error is reported on its own).
        deadline = info.data.get("drain_timeout")
        if deadline is not None and grace > deadline:
            g, d = format_duration(grace), format_duration(deadline)
            if g == d:          # rounded to the same text: show the exact seconds
                g, d = f"{grace:g}s", f"{deadline:g}s"
            raise ValueError(f"drain_grace ({g}) is longer than drain_timeout ({d}); a member is withdrawn "
                             f"at drain_timeout anyway: make drain_grace at most {d}")
        return grace


class ServiceConfig(Strict):
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    policy_dir: Path = Path("policies")
    intervals: Intervals = Intervals()
    orchestrator: DriverConfig
    router: DriverConfig
    collectors: dict[str, CollectorConfig] = Field(min_length=1)
    pools: dict[PoolName, PoolConfig] = Field(min_length=1)
    # Alarm webhooks (Alertmanager, Grafana) and signed scale signals: who may signal which pool.
    alerts: AlertsConfig = AlertsConfig()
    ha: HaConfig = HaConfig()
    # Set by load_config: where the file was, for resolving relative paths and for messages.
    source: Path = Path("scaler.yaml")

    def resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.source.parent / p)

    def store_url(self) -> str:
        url = self.store.url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url.removeprefix("sqlite:///")
            if rel and rel != ":memory:":
                return "sqlite:///" + str(self.resolve(Path(rel)).absolute())
        return url


@dataclass(frozen=True)
class Registries:
    """Config models of the known drivers, by name: {"lab": LabOrchestratorConfig, ...}; `instances`:
    by orchestrator driver, the model of a pool's `instance:` mapping (a driver not listed: not checked)."""

    orchestrators: Mapping[str, type[BaseModel]]
    routers: Mapping[str, type[BaseModel]]
    collectors: Mapping[str, type[BaseModel]]
    instances: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    # By router driver: why its validated options could move a live flow silent for the given
    # seconds (None: safe) — the kernel driver's resilient mode with a short idle timer.
    router_safety: Mapping[str, Callable[[Any, float], str | None]] = field(default_factory=dict)


def _check_router_safety(cfg: ServiceConfig, registries: Registries, path: Path, doc: Any) -> list[str]:
    """The router must not move a flow that is merely silent: checked against the longest silence
    any pool's HAProxy allows (`pools.*.max_client_silence`)."""
    options = registries.routers[cfg.router.driver].model_validate(cfg.router.options,
                                                                   context={"base_dir": path.parent})
    silence = max(p.max_client_silence for p in cfg.pools.values())
    why = registries.router_safety[cfg.router.driver](options, silence)
    if why is None:
        return []
    for loc in (("router", "options", "idle_timer_s"), ("router", "options", "mode"), ("router", "options"),
                ("router",)):
        try:
            line, col, _ = yamlconf.position(doc, loc)
        except (KeyError, IndexError, TypeError):
            continue
        return [f"{path}:{line}:{col}: {'.'.join(loc)}: {why}"]
    return [f"{path}: router: {why}"]


def _check_driver(kind: str, section: Any, registry: Mapping[str, type[BaseModel]], path: Path, doc: Any,
                  loc: tuple[str, ...]) -> list[str]:
    if section.driver not in registry:
        line, col, _ = yamlconf.position(doc, (*loc, "driver"))
        known = ", ".join(sorted(registry)) or "none"
        return [f"{path}:{line}:{col}: {'.'.join(loc)}.driver: unknown {kind} driver "
                f"{section.driver!r} (known: {known})"]
    try:
        registry[section.driver].model_validate(section.options, context={"base_dir": path.parent})
    except ValidationError as exc:
        return yamlconf.problems_of(exc, path, doc, prefix=(*loc, "options"))
    return []


def _check_instances(cfg: ServiceConfig, instances: Mapping[str, type[BaseModel]], path: Path,
                     doc: Any) -> list[str]:
    """Every pool's `instance:` with the orchestrator's model, as the driver validates
    `InstanceSpec.params` at a create (the mapping as written, no context), so a typo there is
    reported now with its line instead of failing the pool's first scale-out."""
    model = instances.get(cfg.orchestrator.driver)
    if model is None:
        return []
    problems: list[str] = []
    for name, pool in cfg.pools.items():
        try:
            model.model_validate(dict(pool.instance))
        except ValidationError as exc:
            problems += yamlconf.problems_of(exc, path, doc, prefix=("pools", name, "instance"))
    return problems


def load_config(path: Path, registries: Registries) -> ServiceConfig:
    """Read and validate scaler.yaml, including each driver's options."""
    doc = yamlconf.load(path)
    if doc is None:
        raise ConfigError([f"{path}:1:1: the file is empty"])
    cfg = yamlconf.validate(ServiceConfig, path, doc, context={"base_dir": path.parent})
    cfg = cfg.model_copy(update={"source": path})
    problems = _check_driver("orchestrator", cfg.orchestrator, registries.orchestrators, path, doc,
                             ("orchestrator",))
    problems += _check_instances(cfg, registries.instances, path, doc)
    router_problems = _check_driver("router", cfg.router, registries.routers, path, doc, ("router",))
    problems += router_problems
    if not router_problems and cfg.router.driver in registries.router_safety:
        problems += _check_router_safety(cfg, registries, path, doc)
    for name, col in cfg.collectors.items():
        problems += _check_driver("collector", col, registries.collectors, path, doc, ("collectors", name))
    for pool in sorted(cfg.alerts.pools_named() - set(cfg.pools)):
        line, column, _ = yamlconf.position(doc, ("alerts",))
        problems.append(f"{path}:{line}:{column}: alerts: names pool {pool!r}, which is not under pools: "
                        f"({', '.join(sorted(cfg.pools))})")
    if problems:
        raise ConfigError(problems)
    return cfg


def driver_options(section: DriverConfig | CollectorConfig, registry: Mapping[str, type[BaseModel]],
                   base_dir: Path | None = None) -> Any:
    """The validated options model of a section already checked by load_config. Relative secret
    files are relative to `base_dir` (scaler.yaml's directory)."""
    context = {"base_dir": base_dir} if base_dir is not None else None
    return registry[section.driver].model_validate(section.options, context=context)


def policy_files(directory: Path) -> list[Path]:
    # Editors' temporary and backup files (.web.yaml.swp, web.yaml~, .#web.yaml) never match: only
    # visible *.yaml / *.yml files are policies.
    return sorted(p for p in directory.iterdir()
                  if p.suffix in (".yaml", ".yml") and not p.name.startswith((".", "#")) and p.is_file())


def policy_fingerprint(cfg: ServiceConfig) -> tuple[tuple[str, int, int], ...]:
    """What changes when a policy file is edited, added or removed: (name, size, mtime_ns) of each.
    Cheap enough to compute every few seconds; content is re-read only when it changed."""
    directory = cfg.resolve(cfg.policy_dir)
    out = []
    try:
        for p in policy_files(directory):
            try:
                st = p.stat()
            except FileNotFoundError:       # removed between listing and stat
                continue
            out.append((p.name, st.st_size, st.st_mtime_ns))
    except OSError:
        return (("", -1, -1),)
    return tuple(out)


def load_policy_file(path: Path, cfg: ServiceConfig) -> dict[str, PoolPolicy]:
    """Validate one policy file against the service config."""
    doc = yamlconf.load(path)
    pf = yamlconf.validate(PolicyFile, path, doc)
    problems = []
    for name, pol in pf.pools.items():
        if name not in cfg.pools:
            line, col, _ = yamlconf.position(doc, ("pools", name))
            known = ", ".join(sorted(cfg.pools))
            problems.append(f"{path}:{line}:{col}: pools.{name}: unknown pool {name!r} "
                            f"(pools in {cfg.source.name}: {known})")
        for iname, inp in pol.inputs.items():
            if not inp.is_alarm and inp.source not in cfg.collectors:
                line, col, _ = yamlconf.position(doc, ("pools", name, "inputs", iname, "source"))
                known = ", ".join(sorted(cfg.collectors))
                problems.append(f"{path}:{line}:{col}: pools.{name}.inputs.{iname}.source: unknown "
                                f"collector {inp.source!r} (collectors: {known})")
    if problems:
        raise ConfigError(problems)
    return dict(pf.pools)


def check_policy_paths(paths: list[Path], cfg: ServiceConfig | None) -> tuple[dict[str, PoolPolicy], list[str]]:
    """`scaler policy check`: validate policy files (a directory means its policy files) the way the
    service does. With `cfg`, pools and collectors are checked against it too; without, only the
    files themselves. Returns the valid pools and every problem found (all files are read)."""
    files: list[Path] = []
    problems: list[str] = []
    for p in paths:
        if p.is_dir():
            found = policy_files(p)
            if not found:
                problems.append(f"{p}: no *.yaml policy file in this directory")
            files += found
        else:
            files.append(p)
    policies: dict[str, PoolPolicy] = {}
    where: dict[str, Path] = {}
    for path in files:
        try:
            got = load_policy_file(path, cfg) if cfg is not None else dict(yamlconf.validate(PolicyFile, path).pools)
        except ConfigError as exc:
            problems += exc.problems
            continue
        for name, pol in got.items():
            if name in policies:
                problems.append(f"{path}: pools.{name}: pool {name!r} already has a policy in {where[name]}")
            policies[name] = pol
            where[name] = path
    return policies, problems


def load_policies(cfg: ServiceConfig) -> dict[str, PoolPolicy]:
    """Every policy file of the policy directory; every pool needs exactly one policy."""
    directory = cfg.resolve(cfg.policy_dir)
    if not directory.is_dir():
        raise ConfigError([f"{cfg.source}: policy_dir: {directory} is not a directory"])
    problems: list[str] = []
    policies: dict[str, PoolPolicy] = {}
    where: dict[str, Path] = {}
    for path in policy_files(directory):
        try:
            got = load_policy_file(path, cfg)
        except ConfigError as exc:
            problems += exc.problems
            continue
        for name, pol in got.items():
            if name in policies:
                problems.append(f"{path}: pools.{name}: pool {name!r} already has a policy in {where[name]}")
            policies[name] = pol
            where[name] = path
    for name in cfg.pools:
        if name not in policies and not problems:
            problems.append(f"{cfg.source}: pools.{name}: no policy file in {directory} defines pool {name!r}")
    if problems:
        raise ConfigError(problems)
    return policies
