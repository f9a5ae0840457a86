"""What the HA process tests share (tests/integration/scaler/test_ha*.py): each `scaler run` with its
own config directory and API port on one store, and what they ask a running scaler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from scaler.lab.demo import ServiceProcess, free_port, write_config
from scaler.lab.network import LabConfig
from tests.support.wait import eventually


def own_scaler_config(lab: LabConfig, name: str, policy: Path, overrides: dict[str, Any]) -> tuple[Path, int]:
    """The lab's example config with `overrides`, in directory scaler-`name` with a free API port;
    every scaler reads the same policy directory (the one of `policy`)."""
    port = free_port()
    base = write_config(lab, port, policy=policy, overrides=overrides)
    own = base.parent.parent / f"scaler-{name}"
    (own / "policies").mkdir(parents=True, exist_ok=True)
    yaml = YAML(typ="rt")
    doc = yaml.load(base.read_text())
    doc["policy_dir"] = str(policy.parent)
    with (own / "scaler.yaml").open("w") as f:
        yaml.dump(doc, f)
    return own / "scaler.yaml", port


async def role(svc: ServiceProcess) -> str:
    """The scaler's role from GET /v1/cluster, or "unreachable"."""
    try:
        cluster: dict[str, Any] = await svc.get("/v1/cluster")
    except Exception:
        return "unreachable"
    return str(cluster["role"])


async def settled(svc: ServiceProcess, size: int) -> list[dict[str, Any]]:
    """The pool's members once no operation runs and exactly `size` are in service."""
    async def check() -> list[dict[str, Any]] | None:
        pool = await svc.get("/v1/pools/web")
        members: list[dict[str, Any]] = pool["members"]
        return members if pool["operation"] is None and [m["state"] for m in members] == ["in_service"] * size \
            else None
    result: list[dict[str, Any]] = await eventually(check, timeout_s=60, interval_s=0.2,
                                                    what=f"pool settled at {size}", detail=svc.tail)
    return result
