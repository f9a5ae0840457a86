"""The FAKE OpenStack cloud's state: projects, images, flavors, networks, ports, servers, server
groups and stacks in memory, with the rules of the real services that the scaler depends on.

Only for tests. It keeps what a client can observe (ids, states, tags, quotas, 403/409 answers,
ports bound to servers, anti-affinity scheduling, BUILD → ACTIVE/ERROR after a delay) and nothing
else: there are no hypervisors, no DHCP, no real networking. Every method takes the lock, so the
threaded HTTP front end (`tests.fake_openstack.http`) may call it from many threads at once.

States advance lazily: a server due to leave BUILD does so the next time anyone reads it, so the
fake needs no background thread and a test's outcome does not depend on a scheduler's timing.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]


class ApiError(Exception):
    """An API refusal: the HTTP front end turns it into the service's own error body."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind          # Neutron's error type ("OverQuota", "PortNotFound", …)


def new_id() -> str:
    return str(uuid.uuid4())


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Knobs:
    """What a test can change at any time (under `FakeCloud.lock`, or between requests)."""

    boot_delay_s: float = 0.0             # BUILD lasts this long (then ACTIVE, or ERROR if planned)
    delete_delay_s: float = 0.0           # a deleted server stays visible (task_state deleting) this long
    stuck_in_build: bool = False          # servers created while set never leave BUILD
    error_next_boots: int = 0             # the next N servers created go ERROR instead of ACTIVE
    error_fault: str = "Build of instance aborted: fake hypervisor failure"
    conflict_next_server_creates: int = 0  # the next N POST /servers answer 409
    conflict_next_stack_updates: int = 0   # the next N stack updates answer 409 (another update raced)
    # Make the next N successful requests of a kind vanish: the effect happens, the client gets a
    # closed connection instead of the answer ("server.create", "port.create", "port.delete",
    # "server.delete", "stack.update", …), as if the API node crashed right after committing.
    drop_responses: dict[str, int] = field(default_factory=dict)
    quota_instances: int | None = None
    quota_cores: int | None = None
    quota_ports: int | None = None
    quota_server_group_members: int | None = None
    quota_status: int = 403               # Nova answers 403 (modern) or 413 (old "overLimit")
    max_page_size: int = 1000             # Nova's osapi_max_limit / Neutron's pagination_max_limit
    api_delay_s: float = 0.0              # every request waits this long first (for client timeouts)
    neutron_tags_on_create: bool = True   # False: an older Neutron, POST /ports refuses `tags`


@dataclass
class Hooks:
    """Let a test back the fake's servers with something real (e.g. a lab instance).

    Called with the lock held, from an HTTP worker thread: they must not call the fake's API.
    - `allocate_ip(port)` picks the fixed IP of a new port (None: next free address of the subnet).
    - `on_active(server)` runs once when a server leaves BUILD; raising makes the server go ERROR
      with the exception's text as its fault.
    - `on_delete(server)` runs once when a server is deleted.
    """

    allocate_ip: Callable[[Json], str | None] | None = None
    on_active: Callable[[Json], None] | None = None
    on_delete: Callable[[Json], None] | None = None


NOVA_TAG_RE = re.compile(r"^[^,/]{1,60}$")


class FakeCloud:
    """One project in one region. Public attributes are the state; tests read them directly."""

    def __init__(self, *, username: str = "scaler", password: str = "secret", project: str = "lb",
                 domain: str = "Default", region: str = "RegionOne",
                 hosts: Iterable[str] = ("cmp-1", "cmp-2", "cmp-3", "cmp-4"),
                 availability_zones: Iterable[str] = ("nova",),
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time,
                 hooks: Hooks | None = None, knobs: Knobs | None = None) -> None:
        self.lock = threading.RLock()
        self.clock, self.wallclock = clock, wallclock
        self.hooks = hooks or Hooks()
        self.knobs = knobs or Knobs()
        self.region = region
        self.domain = {"id": "default" if domain == "Default" else new_id(), "name": domain}
        self.user = {"id": uuid.uuid4().hex, "name": username, "domain": self.domain}
        self.password = password
        self.project = {"id": uuid.uuid4().hex, "name": project, "domain": self.domain}
        self.app_credentials: dict[str, Json] = {}      # id -> {id, name, secret}
        self.tokens: dict[str, float] = {}              # token -> expiry (wall clock)
        self.hosts = list(hosts)
        self.availability_zones = list(availability_zones)
        self.images: dict[str, Json] = {}
        self.flavors: dict[str, Json] = {}
        self.keypairs: dict[str, Json] = {}
        self.networks: dict[str, Json] = {}
        self.subnets: dict[str, Json] = {}
        self.security_groups: dict[str, Json] = {}
        self.ports: dict[str, Json] = {}
        self.servers: dict[str, Json] = {}
        self.server_groups: dict[str, Json] = {}
        self.stacks: dict[str, Json] = {}
        self.requests: list[tuple[str, str, int]] = []   # (method, path, status) of every request
        self._used_ips: dict[str, set[str]] = {}         # subnet id -> allocated addresses
        self.add_security_group("default")

    # ---- set-up helpers for tests ---------------------------------------------------------------

    def add_image(self, name: str) -> Json:
        with self.lock:
            now = iso(self.wallclock())
            img: Json = {"id": new_id(), "name": name, "status": "active", "visibility": "public",
                   "container_format": "bare", "disk_format": "qcow2", "min_disk": 0, "min_ram": 0,
                   "size": 1 << 28, "checksum": uuid.uuid4().hex, "protected": False, "os_hidden": False,
                   "owner": self.project["id"], "tags": [], "created_at": now, "updated_at": now}
            img.update({"self": f"/v2/images/{img['id']}", "file": f"/v2/images/{img['id']}/file",
                        "schema": "/v2/schemas/image"})
            self.images[img["id"]] = img
            return img

    def add_flavor(self, name: str, *, vcpus: int = 2, ram: int = 2048, disk: int = 20) -> Json:
        with self.lock:
            fl: Json = {"id": new_id(), "name": name, "vcpus": vcpus, "ram": ram, "disk": disk,
                  "OS-FLV-EXT-DATA:ephemeral": 0, "swap": 0, "rxtx_factor": 1.0,
                  "os-flavor-access:is_public": True, "OS-FLV-DISABLED:disabled": False,
                  "description": None, "extra_specs": {}}
            self.flavors[fl["id"]] = fl
            return fl

    def add_keypair(self, name: str) -> Json:
        with self.lock:
            kp: Json = {"name": name, "type": "ssh", "fingerprint": "00:11:22", "public_key": "ssh-ed25519 AAAA fake",
                  "user_id": self.user["id"]}
            self.keypairs[name] = kp
            return kp

    def add_network(self, name: str, cidr: str) -> tuple[Json, Json]:
        with self.lock:
            now = iso(self.wallclock())
            net: Json = {"id": new_id(), "name": name, "status": "ACTIVE", "admin_state_up": True,
                   "shared": False, "subnets": [], "tenant_id": self.project["id"],
                   "project_id": self.project["id"], "mtu": 1450, "port_security_enabled": True,
                   "router:external": False, "tags": [], "description": "", "created_at": now,
                   "updated_at": now, "revision_number": 1, "availability_zones": ["nova"]}
            subnet_net = ipaddress.IPv4Network(cidr)
            sub: Json = {"id": new_id(), "name": f"{name}-subnet", "network_id": net["id"], "cidr": cidr,
                   "ip_version": 4, "gateway_ip": str(subnet_net.network_address + 1), "enable_dhcp": True,
                   "allocation_pools": [{"start": str(subnet_net.network_address + 10),
                                         "end": str(subnet_net.broadcast_address - 1)}],
                   "tenant_id": self.project["id"], "project_id": self.project["id"], "tags": [],
                   "description": "", "created_at": now, "updated_at": now, "revision_number": 1,
                   "dns_nameservers": [], "host_routes": []}
            net["subnets"].append(sub["id"])
            self.networks[net["id"]] = net
            self.subnets[sub["id"]] = sub
            self._used_ips[sub["id"]] = set()
            return net, sub

    def add_security_group(self, name: str) -> Json:
        with self.lock:
            now = iso(self.wallclock())
            sg: Json = {"id": new_id(), "name": name, "description": "", "tenant_id": self.project["id"],
                  "project_id": self.project["id"], "security_group_rules": [], "tags": [],
                  "stateful": True, "created_at": now, "updated_at": now, "revision_number": 1}
            self.security_groups[sg["id"]] = sg
            return sg

    def add_application_credential(self, name: str, secret: str) -> Json:
        with self.lock:
            cred: Json = {"id": uuid.uuid4().hex, "name": name, "secret": secret}
            self.app_credentials[cred["id"]] = cred
            return cred

    def take_drop(self, kind: str) -> bool:
        """True (once per count) if the answer to this kind of request must vanish."""
        with self.lock:
            left = self.knobs.drop_responses.get(kind, 0)
            if left <= 0:
                return False
            self.knobs.drop_responses[kind] = left - 1
            return True

    # ---- identity -------------------------------------------------------------------------------

    def issue_token(self, auth: Json) -> str:
        identity = auth.get("identity") or {}
        methods = identity.get("methods") or []
        if "password" in methods:
            user = (identity.get("password") or {}).get("user") or {}
            name_ok = user.get("id") == self.user["id"] or (
                user.get("name") == self.user["name"]
                and ((user.get("domain") or {}).get("name") == self.domain["name"]
                     or (user.get("domain") or {}).get("id") == self.domain["id"]))
            if not (name_ok and user.get("password") == self.password):
                raise ApiError(401, "The request you have made requires authentication.")
            scope = (auth.get("scope") or {}).get("project") or {}
            if scope and not (scope.get("id") == self.project["id"] or scope.get("name") == self.project["name"]):
                raise ApiError(401, "User has no access to project")
        elif "application_credential" in methods:
            ac = identity.get("application_credential") or {}
            cred = self.app_credentials.get(ac.get("id", "")) or next(
                (c for c in self.app_credentials.values() if c["name"] == ac.get("name")), None)
            if cred is None or ac.get("secret") != cred["secret"]:
                raise ApiError(401, "The request you have made requires authentication.")
        else:
            raise ApiError(401, f"unsupported auth methods {methods}")
        token = uuid.uuid4().hex
        with self.lock:
            self.tokens[token] = self.wallclock() + 3600
        return token

    def check_token(self, token: str | None) -> None:
        with self.lock:
            if not token or self.tokens.get(token, 0) < self.wallclock():
                raise ApiError(401, "The request you have made requires authentication.")

    # ---- servers (Nova) -------------------------------------------------------------------------

    def advance_server(self, s: Json) -> None:
        """Move a server along BUILD → ACTIVE/ERROR and deleting → gone, as time says."""
        now = self.clock()
        if s["status"] == "BUILD" and not s["_stuck"] and now >= s["_ready_at"]:
            fault = s["_fault"]
            if fault is None and self.hooks.on_active is not None:
                try:
                    self.hooks.on_active(self.server_view(s, admin=True))
                except Exception as exc:
                    fault = f"on_active hook: {exc}"
            if fault is None:
                s.update({"status": "ACTIVE", "OS-EXT-STS:vm_state": "active", "OS-EXT-STS:task_state": None,
                          "OS-EXT-STS:power_state": 1, "OS-SRV-USG:launched_at": iso(self.wallclock())})
            else:
                s.update({"status": "ERROR", "OS-EXT-STS:vm_state": "error", "OS-EXT-STS:task_state": None,
                          "fault": {"code": 500, "message": fault, "created": iso(self.wallclock())}})
            s["updated"] = iso(self.wallclock())

    def _reap(self) -> None:
        now = self.clock()
        for sid in [sid for sid, s in self.servers.items() if s["_gone_at"] is not None and now >= s["_gone_at"]]:
            self._remove_server(sid)

    def _remove_server(self, sid: str) -> None:
        s = self.servers.pop(sid)
        for p in self.ports.values():
            if p["device_id"] == sid:
                if p["_nova_created"]:
                    p["_doomed"] = True
                else:      # a port the user made is unbound, not deleted (as Nova does)
                    p.update({"device_id": "", "device_owner": "", "status": "DOWN", "binding:host_id": ""})
        for pid in [pid for pid, p in self.ports.items() if p.get("_doomed")]:
            self._release_port(self.ports.pop(pid))
        for g in self.server_groups.values():
            if sid in g["members"]:
                g["members"].remove(sid)
        if self.hooks.on_delete is not None:
            self.hooks.on_delete(self.server_view(s, admin=True))

    def live_servers(self) -> list[Json]:
        with self.lock:
            self._reap()
            for s in self.servers.values():
                self.advance_server(s)
            return list(self.servers.values())

    def get_server(self, sid: str) -> Json:
        with self.lock:
            self._reap()
            s = self.servers.get(sid)
            if s is None:
                raise ApiError(404, f"Instance {sid} could not be found.")
            self.advance_server(s)
            return s

    def server_view(self, s: Json, *, admin: bool = False) -> Json:
        addresses: dict[str, list[Json]] = {}
        for p in self.ports.values():
            if p["device_id"] == s["id"]:
                net = self.networks[p["network_id"]]
                for ip in p["fixed_ips"]:
                    addresses.setdefault(net["name"], []).append({
                        "version": 4, "addr": ip["ip_address"], "OS-EXT-IPS:type": "fixed",
                        "OS-EXT-IPS-MAC:mac_addr": p["mac_address"]})
        view = {k: v for k, v in s.items() if not k.startswith("_")}
        view["addresses"] = addresses
        if not admin:
            for k in [k for k in view if k.startswith("OS-EXT-SRV-ATTR:")]:
                del view[k]
        if s["_gone_at"] is not None:
            view["OS-EXT-STS:task_state"] = "deleting"
        return view

    def create_server(self, body: Json, hints: Json, microversion: tuple[int, int]) -> Json:
        with self.lock:
            self._reap()
            k = self.knobs
            name = body.get("name")
            if not isinstance(name, str) or not name.strip() or len(name) > 255:
                raise ApiError(400, "Invalid input for field/attribute name.")
            flavor = self.flavors.get(str(body.get("flavorRef", "")).rsplit("/", 1)[-1])
            if flavor is None:
                raise ApiError(400, f"Flavor {body.get('flavorRef')} could not be found.")
            image = self.images.get(str(body.get("imageRef", "")).rsplit("/", 1)[-1])
            if image is None:
                raise ApiError(400, f"Can not find requested image {body.get('imageRef')}")
            key_name = body.get("key_name")
            if key_name is not None and key_name not in self.keypairs:
                raise ApiError(400, "Invalid key_name provided.")
            az = body.get("availability_zone")
            if az is not None and az not in self.availability_zones:
                raise ApiError(400, "The requested availability zone is not available")
            tags = body.get("tags", [])
            if tags and microversion < (2, 52):
                raise ApiError(400, "Additional properties are not allowed ('tags' was unexpected)")
            if len(tags) > 50 or not all(isinstance(t, str) and NOVA_TAG_RE.match(t) for t in tags):
                raise ApiError(400, f"Invalid input for field/attribute tags: {tags!r}")
            metadata = body.get("metadata", {})
            if not all(isinstance(v, str) and len(str(key)) <= 255 and len(v) <= 255 for key, v in metadata.items()):
                raise ApiError(400, "Invalid input for field/attribute metadata.")
            user_data = body.get("user_data")
            if user_data is not None:
                if len(user_data) > 65535:
                    raise ApiError(400, "user_data is too long (at most 65535 bytes, base64)")
                try:
                    base64.b64decode(user_data, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ApiError(400, "User data needs to be valid base 64.") from exc
            networks = body.get("networks")
            if networks is None and microversion >= (2, 37):
                raise ApiError(400, "Invalid input for field/attribute networks.")
            port_ids: list[str] = []
            for nic in networks if isinstance(networks, list) else []:
                pid = nic.get("port")
                if pid is None:
                    raise ApiError(400, "this fake only boots on ports made beforehand (networks: [{port: …}])")
                port = self.ports.get(pid)
                if port is None:
                    raise ApiError(400, f"Port id {pid} could not be found.")
                if port["device_id"]:
                    raise ApiError(409, f"Port {pid} is still in use.")
                port_ids.append(pid)
            group = None
            group_id = hints.get("group")
            if group_id is not None:
                group = self.server_groups.get(group_id)
                if group is None:
                    raise ApiError(400, f"Invalid server group {group_id}")
                if k.quota_server_group_members is not None and len(group["members"]) >= k.quota_server_group_members:
                    raise ApiError(k.quota_status, "Quota exceeded, too many servers in group")
            used = [s for s in self.servers.values() if s["_gone_at"] is None]
            if k.quota_instances is not None and len(used) + 1 > k.quota_instances:
                raise ApiError(k.quota_status, f"Quota exceeded for instances: Requested 1, but already used "
                                               f"{len(used)} of {k.quota_instances} instances")
            cores = sum(s["flavor"]["vcpus"] for s in used)
            if k.quota_cores is not None and cores + flavor["vcpus"] > k.quota_cores:
                raise ApiError(k.quota_status, f"Quota exceeded for cores: Requested {flavor['vcpus']}, but "
                                               f"already used {cores} of {k.quota_cores} cores")
            if k.conflict_next_server_creates > 0:
                k.conflict_next_server_creates -= 1
                raise ApiError(409, "Conflict: the server could not be created now (fake)")
            # Scheduling: the first host that satisfies the group's policy.
            host, fault = self._schedule(group), None
            if host is None:
                fault = "No valid host was found. There are not enough hosts available."
            if k.error_next_boots > 0:
                k.error_next_boots -= 1
                fault = k.error_fault
            now = iso(self.wallclock())
            sid = new_id()
            s: Json = {
                "id": sid, "name": name, "status": "BUILD", "tenant_id": self.project["id"],
                "user_id": self.user["id"], "metadata": dict(metadata), "tags": list(tags),
                "hostId": uuid.uuid5(uuid.NAMESPACE_DNS, f"{host}/{self.project['id']}").hex if host else "",
                "image": {"id": image["id"]},
                "flavor": {"vcpus": flavor["vcpus"], "ram": flavor["ram"], "disk": flavor["disk"],
                           "ephemeral": 0, "swap": 0, "original_name": flavor["name"], "extra_specs": {}},
                "created": now, "updated": now, "accessIPv4": "", "accessIPv6": "",
                "OS-DCF:diskConfig": "MANUAL", "progress": 0, "OS-EXT-AZ:availability_zone": az or "nova",
                "config_drive": "", "key_name": key_name, "OS-SRV-USG:launched_at": None,
                "OS-SRV-USG:terminated_at": None,
                "security_groups": [{"name": n} for n in sorted({
                    self.security_groups[g]["name"] for p in port_ids for g in self.ports[p]["security_groups"]})],
                "OS-EXT-STS:task_state": "scheduling", "OS-EXT-STS:vm_state": "building",
                "OS-EXT-STS:power_state": 0, "os-extended-volumes:volumes_attached": [], "locked": False,
                "description": body.get("description"), "server_groups": [group["id"]] if group else [],
                "OS-EXT-SRV-ATTR:host": host, "OS-EXT-SRV-ATTR:hypervisor_hostname": host,
                "OS-EXT-SRV-ATTR:user_data": user_data,
                "_ready_at": self.clock() + k.boot_delay_s, "_stuck": k.stuck_in_build, "_fault": fault,
                "_gone_at": None, "_deleted_hook": False,
            }
            self.servers[sid] = s
            if group is not None:
                group["members"].append(sid)
            for pid in port_ids:
                self.ports[pid].update({"device_id": sid, "device_owner": f"compute:{az or 'nova'}",
                                        "status": "ACTIVE", "binding:host_id": host or ""})
            return s

    def _schedule(self, group: Json | None) -> str | None:
        if not self.hosts:
            return None
        load = {h: 0 for h in self.hosts}
        for s in self.servers.values():
            if s["_gone_at"] is None and s["OS-EXT-SRV-ATTR:host"] in load:
                load[s["OS-EXT-SRV-ATTR:host"]] += 1
        candidates = sorted(self.hosts, key=lambda h: (load[h], h))
        if group is None:
            return candidates[0]
        taken = {self.servers[m]["OS-EXT-SRV-ATTR:host"] for m in group["members"] if m in self.servers}
        free = [h for h in candidates if h not in taken]
        if group["policy"] == "anti-affinity":
            return free[0] if free else None
        if group["policy"] == "soft-anti-affinity":
            return free[0] if free else candidates[0]
        if group["policy"] in ("affinity", "soft-affinity") and taken:
            return sorted(taken)[0]
        return candidates[0]

    def delete_server(self, sid: str) -> None:
        with self.lock:
            s = self.get_server(sid)
            if s["_gone_at"] is None:
                s["_gone_at"] = self.clock() + self.knobs.delete_delay_s
                s["OS-EXT-STS:task_state"] = "deleting"
            self._reap()

    def list_servers(self, query: dict[str, list[str]]) -> list[Json]:
        """Newest first, as Nova sorts by default; filters as Nova applies them."""
        servers = self.live_servers()

        def one(key: str) -> str | None:
            vals = query.get(key)
            return vals[-1] if vals else None

        def tagset(key: str) -> set[str] | None:
            v = one(key)
            return set(v.split(",")) if v else None

        name, status = one("name"), one("status")
        tags_all, tags_any, not_all, not_any = tagset("tags"), tagset("tags-any"), tagset("not-tags"), tagset(
            "not-tags-any")
        out = []
        for s in servers:
            t = set(s["tags"])
            if name is not None and not re.search(name, s["name"]):
                continue
            if status is not None and s["status"] != status.upper():
                continue
            if tags_all is not None and not tags_all <= t:
                continue
            if tags_any is not None and not tags_any & t:
                continue
            if not_all is not None and not_all <= t:
                continue
            if not_any is not None and not_any & t:
                continue
            out.append(s)
        out.sort(key=lambda s: (s["created"], s["id"]), reverse=True)
        return out

    # ---- server groups --------------------------------------------------------------------------

    def create_server_group(self, body: Json, microversion: tuple[int, int]) -> Json:
        with self.lock:
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise ApiError(400, "Invalid input for field/attribute name.")
            if microversion >= (2, 64):
                policy = body.get("policy")
                if "policies" in body:
                    raise ApiError(400, "Additional properties are not allowed ('policies' was unexpected)")
            else:
                policies = body.get("policies") or []
                policy = policies[0] if len(policies) == 1 else None
            if policy not in ("anti-affinity", "affinity", "soft-anti-affinity", "soft-affinity"):
                raise ApiError(400, f"Invalid input for field/attribute policy: {policy!r}")
            g = {"id": new_id(), "name": name, "policy": policy, "rules": body.get("rules") or {},
                 "members": [], "project_id": self.project["id"], "user_id": self.user["id"]}
            self.server_groups[g["id"]] = g
            return g

    def server_group_view(self, g: Json, microversion: tuple[int, int]) -> Json:
        view = dict(g, members=list(g["members"]))
        if microversion < (2, 64):
            view["policies"] = [view.pop("policy")]
            view.pop("rules")
            view["metadata"] = {}
        return view

    # ---- ports (Neutron) ------------------------------------------------------------------------

    def _allocate_ip(self, subnet: Json, wanted: str | None) -> str:
        used = self._used_ips[subnet["id"]]
        net = ipaddress.IPv4Network(subnet["cidr"])
        if wanted is not None:
            if ipaddress.IPv4Address(wanted) not in net:
                raise ApiError(400, f"IP address {wanted} is not a valid IP for the specified subnet.",
                               "InvalidIpForSubnet")
            if wanted in used:
                raise ApiError(409, f"IP address {wanted} already allocated in subnet {subnet['id']}",
                               "IpAddressAlreadyAllocated")
            used.add(wanted)
            return wanted
        pool = subnet["allocation_pools"][0]
        start, end = ipaddress.IPv4Address(pool["start"]), ipaddress.IPv4Address(pool["end"])
        addr = start
        while addr <= end:
            if str(addr) not in used:
                used.add(str(addr))
                return str(addr)
            addr += 1
        raise ApiError(409, f"No more IP addresses available on network {subnet['network_id']}.",
                       "IpAddressGenerationFailure")

    def _release_port(self, p: Json) -> None:
        for ip in p["fixed_ips"]:
            self._used_ips.get(ip["subnet_id"], set()).discard(ip["ip_address"])

    def create_port(self, body: Json, *, nova_created: bool = False) -> Json:
        with self.lock:
            net = self.networks.get(body.get("network_id", ""))
            if net is None:
                raise ApiError(404, f"Network {body.get('network_id')} could not be found.", "NetworkNotFound")
            if self.knobs.quota_ports is not None and len(self.ports) + 1 > self.knobs.quota_ports:
                raise ApiError(409, "Quota exceeded for resources: ['port'].", "OverQuota")
            sgs = body.get("security_groups")
            if sgs is None:
                sgs = [g["id"] for g in self.security_groups.values() if g["name"] == "default"]
            for g in sgs:
                if g not in self.security_groups:
                    raise ApiError(404, f"Security group {g} does not exist", "SecurityGroupNotFound")
            pairs = []
            for pair in body.get("allowed_address_pairs") or []:
                try:
                    ipaddress.ip_network(pair["ip_address"], strict=False)
                except (KeyError, ValueError) as exc:
                    raise ApiError(400, f"Invalid input for allowed_address_pairs: {pair!r}",
                                   "InvalidInput") from exc
                pairs.append({"ip_address": pair["ip_address"], "mac_address": pair.get("mac_address")})
            tags = body.get("tags") or []
            if "tags" in body and not self.knobs.neutron_tags_on_create:
                raise ApiError(400, "Unrecognized attribute(s) 'tags'", "HTTPBadRequest")
            if not all(isinstance(t, str) and 0 < len(t) <= 255 for t in tags):
                raise ApiError(400, f"Invalid input for tags: {tags!r}", "InvalidInput")
            pid = new_id()
            mac = "fa:16:3e:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:3])
            for pair in pairs:
                pair["mac_address"] = pair["mac_address"] or mac
            fixed = []
            for want in body.get("fixed_ips") or [{}]:
                subnet_id = want.get("subnet_id") or net["subnets"][0]
                subnet = self.subnets.get(subnet_id)
                if subnet is None or subnet["network_id"] != net["id"]:
                    raise ApiError(400, f"Invalid input for operation: Failed to create port on network "
                                        f"{net['id']}, because fixed_ips included invalid subnet {subnet_id}.",
                                   "InvalidInput")
                addr = want.get("ip_address")
                if addr is None and self.hooks.allocate_ip is not None:
                    addr = self.hooks.allocate_ip({"network_id": net["id"], "name": body.get("name", ""),
                                                   "tags": list(tags)})
                fixed.append({"subnet_id": subnet_id, "ip_address": self._allocate_ip(subnet, addr)})
            now = iso(self.wallclock())
            p = {"id": pid, "name": body.get("name", ""), "network_id": net["id"],
                 "tenant_id": self.project["id"], "project_id": self.project["id"], "mac_address": mac,
                 "admin_state_up": body.get("admin_state_up", True), "status": "DOWN",
                 "device_id": body.get("device_id", ""), "device_owner": body.get("device_owner", ""),
                 "fixed_ips": fixed, "allowed_address_pairs": pairs, "security_groups": list(sgs),
                 "port_security_enabled": body.get("port_security_enabled", True), "tags": list(tags),
                 "description": body.get("description", ""), "created_at": now, "updated_at": now,
                 "revision_number": 1, "binding:vnic_type": "normal", "binding:host_id": "",
                 "extra_dhcp_opts": [], "dns_name": "", "_nova_created": nova_created}
            self.ports[pid] = p
            return p

    def get_port(self, pid: str) -> Json:
        with self.lock:
            p = self.ports.get(pid)
            if p is None:
                raise ApiError(404, f"Port {pid} could not be found.", "PortNotFound")
            return p

    def update_port(self, pid: str, body: Json) -> Json:
        with self.lock:
            p = self.get_port(pid)
            for key in ("name", "description", "allowed_address_pairs", "security_groups", "admin_state_up"):
                if key in body:
                    p[key] = body[key]
            p["revision_number"] += 1
            p["updated_at"] = iso(self.wallclock())
            return p

    def delete_port(self, pid: str) -> None:
        with self.lock:
            self._release_port(self.get_port(pid))
            del self.ports[pid]

    def set_tags(self, collection: dict[str, Json], oid: str, tags: list[str], kind: str) -> Json:
        with self.lock:
            obj = collection.get(oid)
            if obj is None:
                raise ApiError(404, f"{kind} {oid} could not be found.", f"{kind}NotFound")
            obj["tags"] = list(tags)
            return obj

    @staticmethod
    def view(obj: Json) -> Json:
        return {k: v for k, v in obj.items() if not k.startswith("_")}


def neutron_filter(objs: Iterable[Json], query: dict[str, list[str]], fields: Iterable[str]) -> list[Json]:
    """Neutron's list filters: repeated `key=v` means any of the values; tags as in the tag extension."""
    out = []
    for o in objs:
        ok = True
        for key in fields:
            vals = query.get(key)
            if vals is not None and str(o.get(key, "")) not in vals:
                ok = False
        have = set(o.get("tags", []))

        def want(key: str) -> set[str] | None:
            return {x for v in query[key] for x in v.split(",")} if key in query else None

        all_, any_, not_all, not_any = want("tags"), want("tags-any"), want("not-tags"), want("not-tags-any")
        ok = ok and (all_ is None or all_ <= have) and (any_ is None or bool(any_ & have))
        ok = ok and (not_all is None or not not_all <= have) and (not_any is None or not not_any & have)
        if ok:
            out.append(o)
    return out
