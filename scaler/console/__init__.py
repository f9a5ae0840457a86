"""The web console: read-only HTML pages served by the scaler's own API, under /console/.

    /console/                 every pool: size against desired and bounds, paused, breaker,
                              members by state and health, the last decision in words
    /console/pools/{pool}     members, a chart of size and of each input against its rules'
                              thresholds with the decisions marked, the decisions with their
                              `why` text, the events
    …/live                    the part of each page that changes, which console.js fetches every
                              few seconds and swaps in (no reload)

Server-rendered (Jinja2 templates, the chart as inline SVG: scaler.console.chart); the CSS and the
~60 lines of JS ship in this package, nothing comes from a CDN and nothing is built at install.

Access: the pages need the API's `read` scope, decided by scaler.auth's rules (anonymous_read, the
unix socket, `Authorization: Bearer <token>`). A browser cannot send that header by itself, so the
console also takes the token from the HttpOnly cookie `scaler_console`, which the login form
(/console/login) sets after checking the token the same way (SameSite=Strict, Secure over TLS,
path /console, gone when the browser closes; /console/logout clears it). The cookie is only
read under /console: the JSON API still wants the header. A page without a credential redirects
to the login form; a fragment answers 401 and the page's script then reloads into the login form.
Every answer carries a Content-Security-Policy allowing only this origin's CSS and JS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from scaler.auth import CREDENTIAL, VIA_SOCKET, Access, Principal
from scaler.console import views

PREFIX: Final = "/console"
COOKIE: Final = "scaler_console"
HOURS: Final = (1, 3, 6, 12, 24)
DEFAULT_HOURS: Final = 3
REFRESH_S: Final = 5
STATIC: Final = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
                 "favicon.svg": "image/svg+xml"}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_env = Environment(loader=PackageLoader("scaler.console", "templates"), autoescape=select_autoescape(default=True),
                   trim_blocks=True, lstrip_blocks=True)
_env.globals.update(ago=views.ago, clock=views.clock_text, prefix=PREFIX, hours_choices=HOURS,
                    refresh_s=REFRESH_S, fmt_duration=views.format_duration, quote=quote)


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(template).render(**context), status_code=status, headers=SECURITY_HEADERS)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def authorize(request: Request) -> Principal:
    """The request's Principal if it may read, by scaler.auth's rules, with the console cookie taken
    as a bearer token when no Authorization header came; else _Refused (401 or 403)."""
    access: Access = request.app.state.access
    header = request.headers.get("authorization")
    cookie = request.cookies.get(COOKIE)
    if header is None and cookie:
        header = f"Bearer {cookie}"
    try:
        who = access.identify("read", header, local=bool(request.scope.get(VIA_SOCKET)),
                              what=f"{request.method} {request.url.path}")
    except HTTPException as exc:
        raise _Refused(exc.status_code, str(exc.detail)) from None
    request.scope[CREDENTIAL] = who.name
    if "read" not in who.scopes:
        raise _Refused(403, f"credential {who.name!r} lacks scope 'read', which the console needs")
    return who


def _refusal(request: Request, refused: _Refused, fragment: bool) -> Response:
    if fragment:
        return Response(refused.message, status_code=refused.status, media_type="text/plain; charset=utf-8",
                        headers={**SECURITY_HEADERS, "WWW-Authenticate": 'Bearer realm="scaler"'})
    if refused.status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        error = "" if COOKIE not in request.cookies else "&error=" + quote("the stored token is no longer valid")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target)}{error}", status_code=303,
                                headers=SECURITY_HEADERS)
    return render("error.html", status=refused.status, title="refused", message=refused.message)


def who_context(request: Request) -> dict[str, Any]:
    """Who the page is read as, and whether it came with the login cookie (then: a log-out button)."""
    return {"who": request.scope.get(CREDENTIAL), "cookie": COOKIE in request.cookies}


def _next(value: str | None) -> str:
    """Where to go after logging in: only a page of the console (no open redirect)."""
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/"


def console_router(service: views.ConsoleService, clock: Callable[[], float] = time.time) -> APIRouter:
    """The console's routes, for `app.include_router` in scaler.api.create_app."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    charts = views.ChartCache()

    def guarded(fragment: bool, request: Request, page: Callable[[Principal], Response]) -> Response:
        try:
            who = authorize(request)
        except _Refused as refused:
            return _refusal(request, refused, fragment)
        return page(who)

    def known(pool: str) -> None:
        if pool not in service.pools:
            raise _Refused(404, f"unknown pool {pool!r}; pools: {', '.join(sorted(service.pools))}")

    def overview_context(now: float) -> dict[str, Any]:
        return {"pools": views.pool_summaries(service, now), "now": now}

    def pool_context(pool: str, now: float, hours: float) -> dict[str, Any]:
        summary = views.pool_summaries(service, now, only=pool)[0]
        return {"p": summary, "now": now, "hours": hours,
                "members": views.member_views(service, pool, summary.members, now),
                "chart": views.pool_chart(service, pool, now, hours, charts),
                "decisions": views.decision_list(service.store, pool, now),
                "events": views.recent_events(service.store, pool)}

    def hours_of(request: Request) -> float:
        raw = request.query_params.get("hours", str(DEFAULT_HOURS))
        try:
            hours = float(raw)
        except ValueError:
            raise _Refused(422, f"hours must be a number of hours (one of {', '.join(map(str, HOURS))}), "
                                f"got {raw!r}") from None
        if not 0 < hours <= 24 * 7:
            raise _Refused(422, f"hours must be more than 0 and at most {24 * 7}, got {raw}")
        return hours

    def page(request: Request, fragment: bool, build: Callable[[], Response]) -> Response:
        def run(_: Principal) -> Response:
            try:
                return build()
            except _Refused as refused:
                if fragment:
                    return _refusal(request, refused, True)
                return render("error.html", status=refused.status, title="error", message=refused.message)
        return guarded(fragment, request, run)

    @router.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> Response:
        return page(request, False, lambda: render("overview.html", **overview_context(clock()),
                                                   **who_context(request)))

    @router.get("/live", response_class=HTMLResponse)
    def overview_live(request: Request) -> Response:
        return page(request, True, lambda: render("_overview_live.html", **overview_context(clock())))

    @router.get("/pools/{pool}", response_class=HTMLResponse)
    def pool_page(request: Request, pool: str) -> Response:
        def build() -> Response:
            known(pool)
            return render("pool.html", **pool_context(pool, clock(), hours_of(request)), **who_context(request))
        return page(request, False, build)

    @router.get("/pools/{pool}/live", response_class=HTMLResponse)
    def pool_live(request: Request, pool: str) -> Response:
        def build() -> Response:
            known(pool)
            return render("_pool_live.html", **pool_context(pool, clock(), hours_of(request)))
        return page(request, True, build)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        return render("login.html", next=_next(request.query_params.get("next")),
                      error=request.query_params.get("error"))

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
        token = (form.get("token") or [""])[0].strip()
        target = _next((form.get("next") or [""])[0])
        if not token:
            return render("login.html", status=400, next=target, error="enter an API token with scope read")
        access: Access = request.app.state.access
        try:
            who = access.identify("read", f"Bearer {token}", local=False, what="the console")
        except HTTPException as exc:
            return render("login.html", status=401, next=target, error=str(exc.detail))
        request.scope[CREDENTIAL] = who.name
        if "read" not in who.scopes:
            return render("login.html", status=403, next=target,
                          error=f"credential {who.name!r} lacks scope 'read', which the console needs")
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, token, path=PREFIX, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no such file: {name}")
        body = resources.files("scaler.console").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name],
                        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})

    return router


__all__ = ["COOKIE", "PREFIX", "authorize", "console_router"]
