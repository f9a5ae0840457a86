"""The FAKE OpenStack cloud's Heat: stacks made of the few resource types and functions a scaler
pool template uses, turned into the same fake Nova servers and Neutron ports the other APIs show.

Only for tests. It understands HOT with parameters (string, number, json, comma_delimited_list),
`conditions` (equals/not/and/or), the functions get_param (with a path whose parts may be
functions), get_resource, get_attr, str_replace, list_join, map_merge and if, and the resource
types OS::Nova::ServerGroup, OS::Heat::ResourceGroup (count, removal_policies, index_var, a nested
template from the request's `files`), OS::Neutron::Port and OS::Nova::Server. A ResourceGroup names
its members like Heat does: the first `count` integers not removed before, removed names are never
reused. Stack states follow the members: *_IN_PROGRESS until every server is ACTIVE, *_FAILED with
a reason when a server goes ERROR or a resource cannot be made (quota). An update while one is in
progress answers 409 (Heat's legacy engine), so a client has to wait its turn.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML

from tests.fake_openstack.cloud import ApiError, FakeCloud, Json, iso
from tests.fake_openstack.http import Drop, Request, Response

if TYPE_CHECKING:
    from tests.fake_openstack.http import FakeOpenStack

FUNCTIONS = {"get_param", "get_resource", "get_attr", "str_replace", "list_join", "map_merge", "if"}


class Context:
    """What functions of one template see: its parameters, conditions and made resources."""

    def __init__(self, cloud: FakeCloud, params: Json, conditions: Json, resources: dict[str, Json]) -> None:
        self.cloud, self.params, self.resources = cloud, params, resources
        self.conditions = {name: self.condition(expr) for name, expr in (conditions or {}).items()}

    def condition(self, expr: Any) -> bool:
        if isinstance(expr, bool):
            return expr
        if isinstance(expr, str):
            return self.conditions[expr]
        (fn, args), = expr.items()
        if fn == "equals":
            a, b = (self.resolve(x) for x in args)
            return bool(a == b)
        if fn == "not":
            return not self.condition(args)
        if fn == "and":
            return all(self.condition(x) for x in args)
        if fn == "or":
            return any(self.condition(x) for x in args)
        raise ApiError(400, f"unsupported condition function {fn}")

    def resolve(self, v: Any) -> Any:
        if isinstance(v, list):
            return [self.resolve(x) for x in v]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (fn, args), = v.items()
            if fn in FUNCTIONS:
                return getattr(self, "fn_" + fn)(args)
        out = {k: self.resolve(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x is not DROP}

    def fn_get_param(self, args: Any) -> Any:
        args = self.resolve(args)
        name, path = (args, []) if isinstance(args, str) else (args[0], list(args[1:]))
        if name not in self.params:
            raise ApiError(400, f"The Parameter ({name}) was not defined in template.")
        value = self.params[name]
        for key in path:
            value = value[int(key)] if isinstance(value, list) else value[str(key)]
        return value

    def fn_get_resource(self, name: str) -> Any:
        return self.resources[name]["id"]

    def fn_get_attr(self, args: list[Any]) -> Any:
        args = self.resolve(args)
        res = self.resources[args[0]]
        value: Any = res["attributes"][args[1]]
        for key in args[2:]:
            value = value[int(key)] if isinstance(value, list) else value[key]
        return value

    def fn_str_replace(self, args: Json) -> str:
        args = self.resolve(args)
        text = str(args["template"])
        for k, v in args["params"].items():
            text = text.replace(k, str(v))
        return text

    def fn_list_join(self, args: list[Any]) -> str:
        args = self.resolve(args)
        return str(args[0]).join(str(x) for x in args[1])

    def fn_map_merge(self, args: list[Any]) -> Json:
        out: Json = {}
        for m in self.resolve(args):
            out.update(m)
        return out

    def fn_if(self, args: list[Any]) -> Any:
        value = args[1] if self.condition(args[0]) else args[2]
        return DROP if value is None else self.resolve(value)


DROP = object()      # an `if` that chose null: the property is left out


def parse_template(raw: Any) -> Json:
    if isinstance(raw, dict):
        return raw
    doc = YAML(typ="safe").load(raw) if isinstance(raw, str) else None
    if not isinstance(doc, dict) or "heat_template_version" not in doc:
        raise ApiError(400, "The template is not a HOT template (no heat_template_version).")
    return doc


def coerce_params(tmpl: Json, given: Json, pseudo: Json) -> Json:
    out = dict(pseudo)
    for name, spec in (tmpl.get("parameters") or {}).items():
        if name in given:
            value = given[name]
        elif "default" in spec:
            value = spec["default"]
        else:
            raise ApiError(400, f"The Parameter ({name}) was not provided.")
        kind = spec.get("type", "string")
        if kind == "number":
            value = float(value) if "." in str(value) else int(value)
        elif kind == "json" and isinstance(value, str):
            value = json.loads(value) if value else {}
        elif kind == "comma_delimited_list" and isinstance(value, str):
            value = [x.strip() for x in value.split(",")] if value else []
        elif kind == "string":
            value = "" if value is None else str(value)
        out[name] = value
    return out


def replace_index(v: Any, var: str, index: str) -> Any:
    if isinstance(v, str):
        return v.replace(var, index)
    if isinstance(v, list):
        return [replace_index(x, var, index) for x in v]
    if isinstance(v, dict):
        return {k: replace_index(x, var, index) for k, x in v.items()}
    return v


def dependencies(defn: Any) -> set[str]:
    if isinstance(defn, list):
        return set().union(*(dependencies(x) for x in defn)) if defn else set()
    if isinstance(defn, dict):
        if len(defn) == 1:
            (fn, args), = defn.items()
            if fn == "get_resource":
                return {args}
            if fn == "get_attr":
                return {args[0]} | dependencies(args[1:])
        return set().union(*(dependencies(x) for x in defn.values())) if defn else set()
    return set()


def ordered(resources: Json) -> list[str]:
    done: list[str] = []
    pending = dict(resources)
    while pending:
        ready = [n for n, d in pending.items() if dependencies(d) <= set(done)]
        if not ready:
            raise ApiError(400, f"circular or unknown dependencies among {sorted(pending)}")
        for n in sorted(ready):
            done.append(n)
            del pending[n]
    return done


class FakeHeat:
    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud

    # ---- resources ------------------------------------------------------------------------------

    def _find(self, store: dict[str, Json], name_or_id: str, what: str) -> Json:
        hit = store.get(name_or_id) or next((o for o in store.values() if o.get("name") == name_or_id), None)
        if hit is None:
            raise ApiError(400, f"Property error: {what} {name_or_id} could not be found.")
        return hit

    def _make(self, rtype: str, props: Json, stack: Json, files: Json, path: str) -> Json:
        c = self.cloud
        if rtype == "OS::Nova::ServerGroup":
            g = c.create_server_group({"name": props.get("name") or f"{stack['stack_name']}-group",
                                       "policies": props.get("policies") or ["anti-affinity"]}, (2, 1))
            return {"id": g["id"], "type": rtype, "attributes": {}}
        if rtype == "OS::Neutron::Port":
            net = self._find(c.networks, props["network"], "network")
            body: Json = {"network_id": net["id"], "name": props.get("name", ""), "tags": props.get("tags", []),
                          "allowed_address_pairs": props.get("allowed_address_pairs", [])}
            if "security_groups" in props:
                body["security_groups"] = [self._find(c.security_groups, g, "security group")["id"]
                                           for g in props["security_groups"]]
            if props.get("fixed_ips"):
                body["fixed_ips"] = [{"subnet_id": self._find(c.subnets, f["subnet"], "subnet")["id"]}
                                     for f in props["fixed_ips"]]
            p = c.create_port(body)
            return {"id": p["id"], "type": rtype, "attributes": {"fixed_ips": p["fixed_ips"]}}
        if rtype == "OS::Nova::Server":
            image = self._find(c.images, props["image"], "image")
            flavor = self._find(c.flavors, props["flavor"], "flavor")
            user_data = props.get("user_data", "")
            if props.get("user_data_format", "HEAT_CFNTOOLS") != "RAW":
                raise ApiError(400, "this fake only knows user_data_format RAW")
            server: Json = {"name": props["name"], "imageRef": image["id"], "flavorRef": flavor["id"],
                            "networks": [{"port": n["port"]} for n in props.get("networks", [])],
                            "metadata": props.get("metadata", {}), "tags": props.get("tags", []),
                            "user_data": base64.b64encode(str(user_data).encode()).decode()}
            for key in ("key_name", "availability_zone"):
                if props.get(key):
                    server[key] = props[key]
            s = c.create_server(server, props.get("scheduler_hints") or {}, (2, 96))
            return {"id": s["id"], "type": rtype, "attributes": {}}
        if rtype.endswith((".yaml", ".template")):
            nested = next((v for k, v in files.items() if k == rtype or k.endswith("/" + rtype)), None)
            if nested is None:
                raise ApiError(400, f"Could not fetch remote template {rtype!r}: not in files")
            return self._nested(parse_template(nested), props, stack, files, path)
        raise ApiError(400, f"The Resource Type ({rtype}) could not be found.")

    def _nested(self, tmpl: Json, props: Json, stack: Json, files: Json, path: str) -> Json:
        params = coerce_params(tmpl, props, {"OS::stack_name": f"{stack['stack_name']}-{path}",
                                             "OS::stack_id": str(uuid.uuid4()),
                                             "OS::project_id": self.cloud.project["id"]})
        made: dict[str, Json] = {}
        ctx = Context(self.cloud, params, tmpl.get("conditions") or {}, made)
        name = ""
        try:
            for name in ordered(tmpl.get("resources") or {}):
                defn = tmpl["resources"][name]
                if "condition" in defn and not ctx.condition(defn["condition"]):
                    continue
                made[name] = self._make(defn["type"], ctx.resolve(defn.get("properties") or {}), stack, files,
                                        f"{path}.{name}")
        except ApiError as exc:
            raise ApiError(exc.status, f"resources.{path}.resources.{name}: {exc.message}", exc.kind) from exc
        finally:
            stack["_partial"] = made      # what a failed member left behind, until the next update
        return {"id": str(uuid.uuid4()), "type": "nested", "attributes": {}, "resources": made}

    def _destroy(self, res: Json) -> None:
        c = self.cloud
        for sub in reversed(list((res.get("resources") or {}).values())):
            self._destroy(sub)
        if res["type"] == "OS::Nova::Server":
            if res["id"] in c.servers:
                c.delete_server(res["id"])
        elif res["type"] == "OS::Neutron::Port":
            if res["id"] in c.ports:
                c.delete_port(res["id"])
        elif res["type"] == "OS::Nova::ServerGroup":
            c.server_groups.pop(res["id"], None)

    # ---- the engine -----------------------------------------------------------------------------

    def converge(self, stack: Json, action: str) -> None:
        """Make the stack's resources match its template and parameters (synchronously)."""
        tmpl, files = stack["template"], stack["files"]
        stack["stack_status"], stack["stack_status_reason"] = f"{action}_IN_PROGRESS", f"Stack {action} started"
        ctx = Context(self.cloud, stack["parameters"], tmpl.get("conditions") or {}, stack["_resources"])
        try:
            for name in ordered(tmpl.get("resources") or {}):
                defn = tmpl["resources"][name]
                rtype = defn["type"]
                if rtype == "OS::Heat::ResourceGroup":
                    self._group(stack, name, ctx.resolve(defn.get("properties") or {}), files)
                elif name not in stack["_resources"]:
                    stack["_resources"][name] = self._make(rtype, ctx.resolve(defn.get("properties") or {}),
                                                           stack, files, name)
        except ApiError as exc:
            stack["stack_status"] = f"{action}_FAILED"
            stack["stack_status_reason"] = f"Resource {action} failed: {exc.message}"

    def _group(self, stack: Json, name: str, props: Json, files: Json) -> None:
        group = stack["_resources"].setdefault(name, {"id": str(uuid.uuid4()), "type": "OS::Heat::ResourceGroup",
                                                      "attributes": {}, "members": {}, "blacklist": []})
        # A member that failed half-way last time is cleaned before anything else (Heat replaces it).
        for idx in [i for i, m in group["members"].items() if m.get("failed")]:
            self._destroy(group["members"].pop(idx))
        for policy in props.get("removal_policies") or []:
            for idx in policy.get("resource_list") or []:
                if str(idx) not in group["blacklist"]:
                    group["blacklist"].append(str(idx))
        count = int(props.get("count", 1))
        wanted: list[str] = []
        i = 0
        while len(wanted) < count:
            if str(i) not in group["blacklist"]:
                wanted.append(str(i))
            i += 1
        for idx in [i for i in group["members"] if i not in wanted]:
            self._destroy(group["members"].pop(idx))
        var = props.get("index_var", "%index%")
        rdef = props["resource_def"]
        for idx in wanted:
            if idx in group["members"]:
                continue
            member_props = replace_index(rdef.get("properties") or {}, var, idx)
            try:
                group["members"][idx] = self._make(rdef["type"], member_props, stack, files,
                                                   f"{name}.resources[{idx}]")
            except ApiError:
                group["members"][idx] = {"id": "", "type": "nested", "attributes": {}, "failed": True,
                                         "resources": stack.pop("_partial", {})}
                raise

    def _servers(self, res: Json) -> list[str]:
        out = [res["id"]] if res["type"] == "OS::Nova::Server" else []
        for sub in (res.get("resources") or {}).values():
            out += self._servers(sub)
        for m in (res.get("members") or {}).values():
            out += self._servers(m)
        return out

    def advance(self, stack: Json) -> None:
        """IN_PROGRESS → COMPLETE when every server is ACTIVE, → FAILED when one is ERROR."""
        status = stack["stack_status"]
        if not status.endswith("_IN_PROGRESS"):
            return
        action = status.removesuffix("_IN_PROGRESS")
        states = []
        for res in stack["_resources"].values():
            for sid in self._servers(res):
                s = self.cloud.servers.get(sid)
                if s is not None:
                    self.cloud.advance_server(s)
                    states.append((s["status"], (s.get("fault") or {}).get("message", "")))
        failed = [f for st, f in states if st == "ERROR"]
        if failed:
            stack["stack_status"] = f"{action}_FAILED"
            stack["stack_status_reason"] = f"Resource {action} failed: ResourceInError: {failed[0]}"
        elif all(st == "ACTIVE" for st, _ in states):
            stack["stack_status"] = f"{action}_COMPLETE"
            stack["stack_status_reason"] = f"Stack {action} completed successfully"
        stack["updated_time"] = iso(self.cloud.wallclock())

    # ---- API ------------------------------------------------------------------------------------

    def view(self, stack: Json, base: str) -> Json:
        # Heat shows parameter values as strings (json ones serialised), pseudo-parameters included.
        params = {k: (json.dumps(v) if isinstance(v, dict | list) else str(v)) for k, v in stack["parameters"].items()}
        return {"id": stack["id"], "stack_name": stack["stack_name"], "stack_status": stack["stack_status"],
                "stack_status_reason": stack["stack_status_reason"], "parameters": params,
                "creation_time": stack["creation_time"], "updated_time": stack["updated_time"],
                "description": stack["template"].get("description", ""), "disable_rollback": True,
                "timeout_mins": stack["timeout_mins"], "tags": None, "outputs": [],
                "links": [{"rel": "self", "href": f"{base}/stacks/{stack['stack_name']}/{stack['id']}"}]}

    def get(self, name_or_id: str) -> Json:
        c = self.cloud
        stack = c.stacks.get(name_or_id) or next((s for s in c.stacks.values() if s["stack_name"] == name_or_id), None)
        if stack is None:
            raise ApiError(404, f"The Stack ({name_or_id}) could not be found.", "EntityNotFound")
        self.advance(stack)
        return stack

    def add_routes(self, server: FakeOpenStack) -> None:
        c = self.cloud
        r = server.route
        prefix = r"/heat-api/v1/(?P<project>[^/]+)"

        def base(req: Request) -> str:
            assert req.match
            return f"{server.base}/heat-api/v1/{req.match['project']}"

        @r("GET", r"/heat-api", "identity-public")
        def versions(req: Request) -> Response:
            return Response(300, {"versions": [{"id": "v1.0", "status": "CURRENT", "links": [
                {"rel": "self", "href": f"{server.base}/heat-api/v1/"}]}]})

        @r("POST", prefix + r"/stacks", "heat-api")
        def create(req: Request) -> Response:
            body = req.body or {}
            name = body.get("stack_name")
            with c.lock:
                if any(s["stack_name"] == name for s in c.stacks.values()):
                    raise ApiError(409, f"The Stack ({name}) already exists.", "StackExists")
                tmpl = parse_template(body.get("template"))
                sid = str(uuid.uuid4())
                stack: Json = {"id": sid, "stack_name": name, "template": tmpl, "files": body.get("files") or {},
                               "timeout_mins": body.get("timeout_mins"), "creation_time": iso(c.wallclock()),
                               "updated_time": None, "_resources": {}}
                stack["parameters"] = coerce_params(tmpl, body.get("parameters") or {}, {
                    "OS::stack_name": name, "OS::stack_id": sid, "OS::project_id": c.project["id"]})
                c.stacks[sid] = stack
                self.converge(stack, "CREATE")
                if c.take_drop("stack.create"):
                    raise Drop()
                return Response(201, {"stack": {"id": sid, "links": [
                    {"rel": "self", "href": f"{base(req)}/stacks/{name}/{sid}"}]}})

        @r("GET", prefix + r"/stacks", "heat-api")
        def listing(req: Request) -> Response:
            with c.lock:
                stacks = [self.get(s["id"]) for s in c.stacks.values()
                          if req.q("name") is None or s["stack_name"] == req.q("name")]
                return Response(200, {"stacks": [self.view(s, base(req)) for s in stacks]})

        @r("GET", prefix + r"/stacks/(?P<name>[^/]+)", "heat-api")
        def redirect(req: Request) -> Response:
            assert req.match
            with c.lock:
                s = self.get(req.match["name"])
                return Response(302, {"stack": self.view(s, base(req))},
                                {"Location": f"{base(req)}/stacks/{s['stack_name']}/{s['id']}"})

        @r("GET", prefix + r"/stacks/(?P<name>[^/]+)/(?P<id>[^/]+)", "heat-api")
        def show(req: Request) -> Response:
            assert req.match
            with c.lock:
                return Response(200, {"stack": self.view(self.get(req.match["id"]), base(req))})

        def update(req: Request, patch: bool) -> Response:
            assert req.match
            body = req.body or {}
            with c.lock:
                s = self.get(req.match["id"])
                if c.knobs.conflict_next_stack_updates > 0:
                    c.knobs.conflict_next_stack_updates -= 1
                    raise ApiError(409, f"Stack {s['stack_name']} already has an action (UPDATE) in progress.",
                                   "ActionInProgress")
                if s["stack_status"].endswith("_IN_PROGRESS"):
                    raise ApiError(409, f"Stack {s['stack_name']} already has an action "
                                        f"({s['stack_status'].split('_')[0]}) in progress.", "ActionInProgress")
                if body.get("template") is not None:
                    s["template"] = parse_template(body["template"])
                if body.get("files") is not None:
                    s["files"] = body["files"]
                given = body.get("parameters") or {}
                if patch:
                    old = {k: v for k, v in s["parameters"].items() if not k.startswith("OS::")}
                    given = {**old, **given}
                s["parameters"] = coerce_params(s["template"], given, {
                    "OS::stack_name": s["stack_name"], "OS::stack_id": s["id"], "OS::project_id": c.project["id"]})
                self.converge(s, "UPDATE")
                if c.take_drop("stack.update"):
                    raise Drop()
                return Response(202)

        r("PUT", prefix + r"/stacks/(?P<name>[^/]+)/(?P<id>[^/]+)", "heat-api")(
            lambda req: update(req, patch=False))
        r("PATCH", prefix + r"/stacks/(?P<name>[^/]+)/(?P<id>[^/]+)", "heat-api")(
            lambda req: update(req, patch=True))

        @r("DELETE", prefix + r"/stacks/(?P<name>[^/]+)/(?P<id>[^/]+)", "heat-api")
        def delete(req: Request) -> Response:
            assert req.match
            with c.lock:
                s = self.get(req.match["id"])
                for res in reversed(list(s["_resources"].values())):
                    for m in (res.get("members") or {}).values():
                        self._destroy(m)
                    self._destroy(res)
                del c.stacks[s["id"]]
            return Response(204)


__all__ = ["FakeHeat"]
