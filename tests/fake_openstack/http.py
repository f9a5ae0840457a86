"""The FAKE OpenStack cloud's HTTP front end: Keystone v3, Nova, Neutron, Glance and Heat on one
loopback port, close enough to the API reference that openstacksdk talks to it unchanged.

Only for tests. A stdlib `ThreadingHTTPServer` in a daemon thread: openstacksdk is synchronous and
the driver calls it from worker threads, so a thread-per-request server is the natural peer. It
serves version discovery documents (keystoneauth reads them), a token with a service catalog
pointing at itself, microversion negotiation for Nova, pagination (limit/marker with `next`
links), and each service's own error body shape.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.fake_openstack.cloud import ApiError, FakeCloud, Json, iso, neutron_filter

NOVA_MIN, NOVA_MAX = (2, 1), (2, 96)
NOVA_ERROR_KEYS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
                   406: "notAcceptable", 409: "conflictingRequest", 413: "overLimit"}


class Drop(Exception):
    """Close the connection instead of answering (a crashed API node)."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    match: re.Match[str] | None = None

    def q(self, key: str) -> str | None:
        vals = self.query.get(key)
        return vals[-1] if vals else None


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


class FakeOpenStack:
    """The fake cloud served over HTTP on 127.0.0.1. Use as a context manager, or start()/stop()."""

    def __init__(self, cloud: FakeCloud | None = None) -> None:
        self.cloud = cloud or FakeCloud()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.routes: list[tuple[str, re.Pattern[str], Handler, str]] = []
        self.internal_errors: list[str] = []      # bugs of the fake itself; tests assert it stays empty
        self._add_routes()
        from tests.fake_openstack.heat import FakeHeat  # the Heat part has its own module
        self.heat = FakeHeat(self.cloud)
        self.heat.add_routes(self)

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        assert self._httpd is not None, "not started"
        port = self._httpd.server_address[1]
        return f"http://127.0.0.1:{port}"

    @property
    def auth_url(self) -> str:
        return f"{self.base}/identity/v3"

    def start(self) -> FakeOpenStack:
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body in one segment, no Nagle: otherwise every answer waits ~40 ms for a
            # delayed ACK and the tests crawl.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:   # quiet
                return None

            def _serve(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-openstack",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd, self._thread = None, None

    def __enter__(self) -> FakeOpenStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clouds_yaml(self, path: Path, *, cloud: str = "fake", api_timeout: float | None = None) -> Path:
        """Write a clouds.yaml naming this fake as `cloud` (password auth)."""
        c = self.cloud
        entry: Json = {"auth": {"auth_url": self.auth_url, "username": c.user["name"], "password": c.password,
                                "project_name": c.project["name"], "user_domain_name": c.domain["name"],
                                "project_domain_name": c.domain["name"]},
                       "region_name": c.region, "identity_api_version": 3, "interface": "public"}
        if api_timeout is not None:
            entry["api_timeout"] = api_timeout
        path.write_text(json.dumps({"clouds": {cloud: entry}}, indent=2))   # JSON is YAML
        return path

    # ---- dispatch -------------------------------------------------------------------------------

    def route(self, method: str, pattern: str, service: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.routes.append((method, re.compile(pattern + r"/?$"), fn, service))
            return fn
        return deco

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        delay = self.cloud.knobs.api_delay_s
        if delay > 0:
            time.sleep(delay)
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        req = Request(h.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                      {k.lower(): v for k, v in h.headers.items()}, body)
        try:
            resp = self._dispatch(req)
        except Drop:
            self.cloud.requests.append((req.method, req.path, 0))
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        except ApiError as exc:
            resp = self._error(self._service_of(req.path), exc)
        except Exception as exc:     # a bug in the fake: answer 500 and keep it for the test to see
            self.internal_errors.append(f"{req.method} {req.path}: {exc!r}")
            resp = self._error(self._service_of(req.path), ApiError(500, f"fake internal error: {exc!r}"))
        self.cloud.requests.append((req.method, req.path, resp.status))
        payload = b"" if resp.body is None else (
            resp.body if isinstance(resp.body, bytes) else json.dumps(resp.body).encode())
        h.send_response(resp.status)
        if resp.body is not None:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.send_header("X-Openstack-Request-Id", "req-fake")
        for k, v in resp.headers.items():
            h.send_header(k, v)
        h.end_headers()
        if req.method != "HEAD":
            h.wfile.write(payload)

    def _service_of(self, path: str) -> str:
        return path.strip("/").split("/", 1)[0] or "identity"

    def _dispatch(self, req: Request) -> Response:
        service = self._service_of(req.path)
        path_matched = False
        for method, pattern, fn, svc in self.routes:
            m = pattern.match(req.path)
            if m is None:
                continue
            path_matched = True
            if method != req.method:
                continue
            req.match = m
            if svc != "identity-public":
                self.cloud.check_token(req.headers.get("x-auth-token"))
            resp = fn(req)
            return resp
        if path_matched:
            raise ApiError(405, f"method {req.method} not allowed on {req.path}")
        raise ApiError(404, f"The resource could not be found ({service} {req.path}).")

    def _error(self, service: str, exc: ApiError) -> Response:
        status, msg = exc.status, exc.message
        if service == "compute":
            return Response(status, {NOVA_ERROR_KEYS.get(status, "computeFault"): {"code": status, "message": msg}},
                            {"Retry-After": "0"} if status == 413 else {})
        if service == "network":
            return Response(status, {"NeutronError": {"type": exc.kind or "HTTPError", "message": msg,
                                                      "detail": ""}})
        if service == "heat-api":
            return Response(status, {"code": status, "title": "Error", "explanation": msg,
                                     "error": {"type": exc.kind or "Error", "message": msg, "traceback": None}})
        if service == "image":
            return Response(status, f"{status} Error\n\n{msg}\n\n   ".encode())
        return Response(status, {"error": {"code": status, "title": "Error", "message": msg}})

    # ---- helpers --------------------------------------------------------------------------------

    def _microversion(self, req: Request) -> tuple[int, int]:
        raw = req.headers.get("openstack-api-version", "")
        text = raw.split()[-1] if raw.startswith("compute") else req.headers.get("x-openstack-nova-api-version")
        if not text:
            return NOVA_MIN
        if text == "latest":
            return NOVA_MAX
        try:
            v = _version(text)
        except ValueError as exc:
            raise ApiError(400, f"Invalid API version {text}") from exc
        if not NOVA_MIN <= v <= NOVA_MAX:
            raise ApiError(406, f"Version {text} is not supported by the API. Minimum is 2.1 and maximum is 2.96.")
        return v

    def _nova(self, req: Request, status: int, body: Any = None, headers: dict[str, str] | None = None) -> Response:
        v = self._microversion(req)
        hdrs = {"OpenStack-API-Version": f"compute {v[0]}.{v[1]}", "X-OpenStack-Nova-API-Version": f"{v[0]}.{v[1]}",
                "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version", **(headers or {})}
        return Response(status, body, hdrs)

    def _page(self, req: Request, items: list[Json], key: str, link_path: str,
              id_of: Callable[[Json], str] = lambda o: o["id"]) -> tuple[list[Json], list[Json]]:
        """limit/marker pagination: the page and its `next` link (when the page is full)."""
        max_limit = self.cloud.knobs.max_page_size
        limit_text = req.q("limit")
        try:
            limit = min(int(limit_text), max_limit) if limit_text else max_limit
        except ValueError as exc:
            raise ApiError(400, f"Invalid limit {limit_text!r}") from exc
        marker = req.q("marker")
        start = 0
        if marker:
            ids = [id_of(o) for o in items]
            if marker not in ids:
                raise ApiError(400 if key == "servers" else 404, f"marker [{marker}] not found", "MarkerNotFound")
            start = ids.index(marker) + 1
        page = items[start:start + limit]
        links = []
        # Nova links to a next page whenever a page is full; Neutron and Glance only if more exist.
        if page and len(page) == limit and (key == "servers" or start + limit < len(items)):
            q = {k: v[-1] for k, v in req.query.items() if k not in ("marker", "limit")}
            q.update(limit=str(limit), marker=id_of(page[-1]))
            links.append({"rel": "next", "href": f"{self.base}{link_path}?{urlencode(q)}"})
        return page, links

    # ---- routes ---------------------------------------------------------------------------------

    def _add_routes(self) -> None:
        c = self.cloud
        r = self.route

        # identity
        def versions_identity(req: Request) -> Response:
            v3 = {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                  "links": [{"rel": "self", "href": f"{self.base}/identity/v3/"}],
                  "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}
            if req.path.rstrip("/").endswith("/v3"):
                return Response(200, {"version": v3})
            return Response(300, {"versions": {"values": [v3]}})

        r("GET", r"/identity", "identity-public")(versions_identity)
        r("GET", r"/identity/v3", "identity-public")(versions_identity)

        @r("POST", r"/identity/v3/auth/tokens", "identity-public")
        def tokens(req: Request) -> Response:
            auth = (req.body or {}).get("auth") or {}
            token = c.issue_token(auth)
            now = c.wallclock()
            catalog = []
            for stype, name, path in (("identity", "keystone", "/identity"), ("compute", "nova", "/compute/v2.1"),
                                      ("network", "neutron", "/network"), ("image", "glance", "/image"),
                                      ("orchestration", "heat", f"/heat-api/v1/{c.project['id']}")):
                catalog.append({"type": stype, "name": name, "id": name, "endpoints": [
                    {"id": f"{name}-{i}", "interface": i, "region": c.region, "region_id": c.region,
                     "url": self.base + path} for i in ("public", "internal", "admin")]})
            body = {"token": {
                "methods": (auth.get("identity") or {}).get("methods", []), "expires_at": iso(now + 3600),
                "issued_at": iso(now), "user": {"id": c.user["id"], "name": c.user["name"], "domain": c.domain,
                                                "password_expires_at": None},
                "project": c.project, "roles": [{"id": "member", "name": "member"}], "catalog": catalog,
                "audit_ids": ["fake"], "is_domain": False}}
            return Response(201, body, {"X-Subject-Token": token})

        # compute
        def nova_version_doc() -> Json:
            return {"id": "v2.1", "status": "CURRENT", "version": f"{NOVA_MAX[0]}.{NOVA_MAX[1]}",
                    "min_version": "2.1", "updated": "2013-07-23T11:33:21Z",
                    "links": [{"rel": "self", "href": f"{self.base}/compute/v2.1/"}],
                    "media-types": [{"base": "application/json",
                                     "type": "application/vnd.openstack.compute+json;version=2.1"}]}

        @r("GET", r"/compute", "identity-public")
        def nova_versions(req: Request) -> Response:
            return Response(200, {"versions": [nova_version_doc()]})

        @r("GET", r"/compute/v2\.1", "identity-public")
        def nova_version(req: Request) -> Response:
            return Response(200, {"version": nova_version_doc()})

        def flavor_view(f: Json, req: Request) -> Json:
            view = dict(f, links=[{"rel": "self", "href": f"{self.base}/compute/v2.1/flavors/{f['id']}"}])
            if self._microversion(req) < (2, 61):
                view.pop("extra_specs")
            return view

        @r("GET", r"/compute/v2\.1/flavors/(?P<id>(?!detail$)[^/]+)", "compute")
        def flavor_show(req: Request) -> Response:
            assert req.match
            f = c.flavors.get(req.match["id"])
            if f is None:
                raise ApiError(404, f"Flavor {req.match['id']} could not be found.")
            return self._nova(req, 200, {"flavor": flavor_view(f, req)})

        @r("GET", r"/compute/v2\.1/flavors(?P<detail>/detail)?", "compute")
        def flavor_list(req: Request) -> Response:
            assert req.match
            flavors = sorted(c.flavors.values(), key=lambda f: f["id"])
            page, links = self._page(req, flavors, "flavors", req.path)
            items = [flavor_view(f, req) if req.match["detail"] else {"id": f["id"], "name": f["name"]}
                     for f in page]
            return self._nova(req, 200, {"flavors": items, **({"flavors_links": links} if links else {})})

        @r("GET", r"/compute/v2\.1/os-keypairs/(?P<name>[^/]+)", "compute")
        def keypair_show(req: Request) -> Response:
            assert req.match
            kp = c.keypairs.get(req.match["name"])
            if kp is None:
                raise ApiError(404, f"Keypair {req.match['name']} not found for user {c.user['id']}")
            return self._nova(req, 200, {"keypair": kp})

        @r("POST", r"/compute/v2\.1/servers", "compute")
        def server_create(req: Request) -> Response:
            v = self._microversion(req)
            body = req.body or {}
            hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
            s = c.create_server(body.get("server") or {}, hints, v)
            if c.take_drop("server.create"):
                raise Drop()
            link = f"{self.base}/compute/v2.1/servers/{s['id']}"
            return self._nova(req, 202, {"server": {
                "id": s["id"], "links": [{"rel": "self", "href": link}], "OS-DCF:diskConfig": "MANUAL",
                "security_groups": s["security_groups"], "adminPass": "fake-admin-pass"}}, {"Location": link})

        @r("GET", r"/compute/v2\.1/servers(?P<detail>/detail)?", "compute")
        def server_list(req: Request) -> Response:
            assert req.match
            servers = c.list_servers(req.query)
            with c.lock:
                page, links = self._page(req, servers, "servers", req.path)
                items = [c.server_view(s) if req.match["detail"] else
                         {"id": s["id"], "name": s["name"], "links": []} for s in page]
            return self._nova(req, 200, {"servers": items, **({"servers_links": links} if links else {})})

        @r("GET", r"/compute/v2\.1/servers/(?P<id>(?!detail$)[^/]+)", "compute")
        def server_show(req: Request) -> Response:
            assert req.match
            with c.lock:
                return self._nova(req, 200, {"server": c.server_view(c.get_server(req.match["id"]))})

        @r("DELETE", r"/compute/v2\.1/servers/(?P<id>(?!detail$)[^/]+)", "compute")
        def server_delete(req: Request) -> Response:
            assert req.match
            c.delete_server(req.match["id"])
            if c.take_drop("server.delete"):
                raise Drop()
            return self._nova(req, 204)

        @r("GET", r"/compute/v2\.1/servers/(?P<id>[^/]+)/tags", "compute")
        def server_tags(req: Request) -> Response:
            assert req.match
            return self._nova(req, 200, {"tags": list(c.get_server(req.match["id"])["tags"])})

        @r("POST", r"/compute/v2\.1/os-server-groups", "compute")
        def group_create(req: Request) -> Response:
            v = self._microversion(req)
            g = c.create_server_group((req.body or {}).get("server_group") or {}, v)
            return self._nova(req, 200, {"server_group": c.server_group_view(g, v)})

        @r("GET", r"/compute/v2\.1/os-server-groups", "compute")
        def group_list(req: Request) -> Response:
            v = self._microversion(req)
            groups = sorted(c.server_groups.values(), key=lambda g: g["id"])
            offset = int(req.q("offset") or 0)
            limit = min(int(req.q("limit") or c.knobs.max_page_size), c.knobs.max_page_size)
            return self._nova(req, 200, {"server_groups": [c.server_group_view(g, v)
                                                           for g in groups[offset:offset + limit]]})

        @r("GET", r"/compute/v2\.1/os-server-groups/(?P<id>[^/]+)", "compute")
        def group_show(req: Request) -> Response:
            assert req.match
            g = c.server_groups.get(req.match["id"])
            if g is None:
                raise ApiError(404, f"Instance group {req.match['id']} could not be found.")
            return self._nova(req, 200, {"server_group": c.server_group_view(g, self._microversion(req))})

        @r("DELETE", r"/compute/v2\.1/os-server-groups/(?P<id>[^/]+)", "compute")
        def group_delete(req: Request) -> Response:
            assert req.match
            with c.lock:
                if c.server_groups.pop(req.match["id"], None) is None:
                    raise ApiError(404, f"Instance group {req.match['id']} could not be found.")
            return self._nova(req, 204)

        # network
        @r("GET", r"/network", "identity-public")
        def neutron_versions(req: Request) -> Response:
            return Response(200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                                                "links": [{"rel": "self", "href": f"{self.base}/network/v2.0/"}]}]})

        def neutron_collection(plural: str, store: dict[str, Json], fields: tuple[str, ...]) -> None:
            key = plural.replace("-", "_")     # /security-groups answers {"security_groups": …}

            @r("GET", rf"/network/v2\.0/{plural}", "network")
            def listing(req: Request) -> Response:
                with c.lock:
                    items = neutron_filter(sorted(store.values(), key=lambda o: o["created_at"] + o["id"]),
                                           req.query, fields)
                    page, links = self._page(req, items, plural, req.path)
                    body: Json = {key: [c.view(o) for o in page]}
                    if links:
                        body[f"{key}_links"] = links
                    return Response(200, body)

            @r("GET", rf"/network/v2\.0/{plural}/(?P<id>[^/]+)", "network")
            def show(req: Request) -> Response:
                assert req.match
                with c.lock:
                    o = store.get(req.match["id"])
                    if o is None:
                        kind = plural.title().replace("-", "").rstrip("s")
                        raise ApiError(404, f"{kind} {req.match['id']} could not be found.", f"{kind}NotFound")
                    return Response(200, {key.rstrip("s"): c.view(o)})

            @r("PUT", rf"/network/v2\.0/{plural}/(?P<id>[^/]+)/tags", "network")
            def put_tags(req: Request) -> Response:
                assert req.match
                o = c.set_tags(store, req.match["id"], list((req.body or {}).get("tags") or []), plural)
                return Response(200, {"tags": list(o["tags"])})

        neutron_collection("networks", c.networks, ("id", "name", "status", "shared"))
        neutron_collection("subnets", c.subnets, ("id", "name", "network_id", "cidr"))
        neutron_collection("security-groups", c.security_groups, ("id", "name"))
        neutron_collection("ports", c.ports, ("id", "name", "network_id", "device_id", "device_owner",
                                              "status", "mac_address"))

        @r("POST", r"/network/v2\.0/ports", "network")
        def port_create(req: Request) -> Response:
            p = c.create_port((req.body or {}).get("port") or {})
            if c.take_drop("port.create"):
                raise Drop()
            return Response(201, {"port": c.view(p)})

        @r("PUT", r"/network/v2\.0/ports/(?P<id>[^/]+)", "network")
        def port_update(req: Request) -> Response:
            assert req.match
            return Response(200, {"port": c.view(c.update_port(req.match["id"], (req.body or {}).get("port") or {}))})

        @r("DELETE", r"/network/v2\.0/ports/(?P<id>[^/]+)", "network")
        def port_delete(req: Request) -> Response:
            assert req.match
            c.delete_port(req.match["id"])
            if c.take_drop("port.delete"):
                raise Drop()
            return Response(204)

        # image
        @r("GET", r"/image", "identity-public")
        def glance_versions(req: Request) -> Response:
            return Response(300, {"versions": [{"id": "v2.16", "status": "CURRENT",
                                                "links": [{"rel": "self", "href": f"{self.base}/image/v2/"}]}]})

        @r("GET", r"/image/v2/images/(?P<id>[^/]+)", "image")
        def image_show(req: Request) -> Response:
            assert req.match
            img = c.images.get(req.match["id"])
            if img is None:
                raise ApiError(404, f"No image found with ID {req.match['id']}")
            return Response(200, dict(img))

        @r("GET", r"/image/v2/images", "image")
        def image_list(req: Request) -> Response:
            with c.lock:
                items = [i for i in sorted(c.images.values(), key=lambda i: i["created_at"] + i["id"])
                         if req.q("name") is None or i["name"] == req.q("name")]
                page, links = self._page(req, items, "images", req.path)
            body: Json = {"images": [dict(i) for i in page], "schema": "/v2/schemas/images", "first": "/v2/images"}
            if links:
                body["next"] = links[0]["href"].removeprefix(f"{self.base}/image")
            return Response(200, body)
