"""Back the FAKE cloud's servers with real lab instances: each server that leaves BUILD becomes a
network namespace with HAProxy (`actuators.lab.orchestrator.LabOrchestrator`), at the address of its port on
the lab network, and is removed when Nova drops the server. Only the cloud API is fake: the VIP,
HAProxy, the backend and the routing are the lab's.

Only for tests. Wiring (`lab_backed`):
- `allocate_ip`: a port on the lab network gets the next free lab link address 198.18.N.2 (the
  address the lab gives instance link N), so the member's address — known to the driver at
  create time from its port — is the next hop the router in the lab can reach;
- `on_active`: make the lab instance at that link index, then wait until HAProxy answers on the VIP
  inside it; raising makes Nova put the server in ERROR (with the reason as its fault);
- `on_delete`: delete the lab instance.

The hooks run in the fake's HTTP threads with its lock held, so the lab's coroutines run on this
helper's own event loop (a thread), never on the test's loop: the test may call the fake at any
time without deadlocking. Servers without the scaler's metadata (made by hand) get no instance.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from ipaddress import IPv4Address
from typing import Any, TypeVar

from actuators.lab.orchestrator import (
    FIRST_INDEX,
    LAST_INDEX,
    InstanceMeta,
    LabOrchestrator,
    LabOrchestratorConfig,
    file_lock,
    instance_address,
    write_atomic,
)
from actuators.orchestrator import InstanceSpec
from tests.fake_openstack.cloud import ApiError, FakeCloud, Json

T = TypeVar("T")


class LabBacking:
    """The lab side of a fake cloud; `start()` wires the hooks, `close()` unwires them."""

    def __init__(self, cloud: FakeCloud, lab: LabOrchestratorConfig, network: str, *, tag_prefix: str = "scaler",
                 ready_timeout_s: float = 15.0) -> None:
        self.cloud, self.network, self.prefix = cloud, network, tag_prefix
        self.orch = LabOrchestrator(lab)
        self.ready_timeout_s = ready_timeout_s
        self.made: list[str] = []          # instance names, in the order they became ACTIVE
        self.deleted: list[str] = []
        self.errors: list[str] = []        # hooks that failed (a test asserts it stays empty)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lab-backing", daemon=True)

    def start(self) -> LabBacking:
        self._thread.start()
        hooks = self.cloud.hooks
        hooks.allocate_ip, hooks.on_active, hooks.on_delete = self.allocate_ip, self.on_active, self.on_delete
        return self

    def close(self) -> None:
        hooks = self.cloud.hooks
        hooks.allocate_ip = hooks.on_active = hooks.on_delete = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def _network_id(self) -> str | None:
        return next((n["id"] for n in self.cloud.networks.values() if n["name"] == self.network), None)

    # hooks (the fake's lock is held)

    def allocate_ip(self, port: Json) -> str | None:
        if port["network_id"] != self._network_id():
            return None
        used = {ip["ip_address"] for p in self.cloud.ports.values() for ip in p["fixed_ips"]}
        taken = {m.idx for m in self._metas()}
        for idx in range(FIRST_INDEX, LAST_INDEX + 1):
            addr = str(instance_address(idx))
            if idx not in taken and addr not in used:
                return addr
        raise ApiError(409, f"No more IP addresses available on network {self.network} (lab links).",
                       "IpAddressGenerationFailure")

    def _metas(self) -> list[InstanceMeta]:
        out = []
        root = self.orch.instances_dir
        if root.is_dir():
            for d in root.iterdir():
                meta = self.orch.read_meta(d.name) if d.is_dir() else None
                if meta is not None:
                    out.append(meta)
        return out

    def on_active(self, server: Json) -> None:
        meta = server.get("metadata") or {}
        pool, vip = meta.get(f"{self.prefix}:pool"), meta.get(f"{self.prefix}:vip")
        if pool is None or vip is None:
            return          # not made by the scaler: nothing to back it with
        addrs = [a["addr"] for a in (server.get("addresses") or {}).get(self.network, [])]
        if not addrs:
            raise RuntimeError(f"server {server['name']} has no port on {self.network}")
        idx = int(addrs[0].split(".")[2])
        if addrs[0] != str(instance_address(idx)):
            raise RuntimeError(f"server {server['name']}: {addrs[0]} is not a lab link address")
        try:
            self._run(self._make(server["name"], pool, IPv4Address(vip), idx), self.ready_timeout_s + 30)
        except Exception as exc:
            self.errors.append(f"on_active {server['name']}: {exc!r}")
            raise
        self.made.append(server["name"])

    async def _make(self, name: str, pool: str, vip: IPv4Address, idx: int) -> None:
        # The lab picks a free link index itself; the port already fixed this one, so the
        # instance's meta.json (what the lab's create resumes from) is written first with it.
        async with file_lock(self.orch.cfg.lab_dir / "instances.lock"):
            if self.orch.read_meta(name) is None:
                meta = InstanceMeta(name=name, pool=pool, idx=idx, vip=vip, lab=self.orch.cfg.lab,
                                    created_at=time.time())
                write_atomic(self.orch.paths(name).meta, meta.model_dump_json(indent=2) + "\n")
        inst = await self.orch.create(InstanceSpec(pool, vip), name)
        deadline = time.monotonic() + self.ready_timeout_s
        while not await self.orch.probe(inst):
            if time.monotonic() > deadline:
                raise RuntimeError(f"lab instance {name}: HAProxy does not answer on {vip}:80 after "
                                   f"{self.ready_timeout_s:g}s")
            await asyncio.sleep(0.05)

    def on_delete(self, server: Json) -> None:
        name = server["name"]
        try:
            self._run(self.orch.delete(name), 60)
        except Exception as exc:
            self.errors.append(f"on_delete {name}: {exc!r}")
            return
        self.deleted.append(name)


def lab_backed(cloud: FakeCloud, lab: LabOrchestratorConfig, network: str, **options: Any) -> LabBacking:
    """Wire `cloud`'s hooks so its servers on `network` are real lab instances. Close it when done."""
    return LabBacking(cloud, lab, network, **options).start()


__all__ = ["LabBacking", "lab_backed"]
