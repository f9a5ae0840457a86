"""The SNMP manager side of the `snmp` collector: UDP sockets shared per network namespace, request
demultiplexing, retries, v2c and v3 (USM) exchanges, engine discovery and its recovery.

One `SnmpClient` owns one non-blocking UDP socket per (network namespace, address family), used by
every agent reached from there; answers are matched to requests by request-id/msgID *and* source
address. An `Agent` is one target: its address, timeout, retries and, for v3, its engine state
(engine ID, boots, time, localised keys, pre-encoded ScopedPDU templates). Engine state is rebuilt
by itself when the agent says our engine ID is unknown, when it reports a time-window miss, and after
any timed-out exchange (an agent replaced under the same address may stay silent), so a changed
engine ID never needs a restart.

Failures raise `collectors.errors` exceptions whose message describes the SNMP problem without the
target (the collector prefixes it) and never contains a credential. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from collectors.errors import CollectorAuthError, CollectorError, CollectorParseError, CollectorTimeout
from collectors.snmp.ber import (
    GET,
    OCTET_STRING,
    REPORT,
    REQUEST_ID_MAX,
    REQUEST_ID_MIN,
    RESPONSE,
    BerError,
    Pdu,
    Template,
    encode_oid,
    parse_v2c,
    pdu,
    peek_message_id,
    request_template,
    tlv,
    v2c_message,
)
from collectors.snmp.netns import NamespaceId, NetnsError, namespace_id, open_udp_socket
from collectors.snmp.usm import (
    FLAG_AUTH,
    FLAG_PRIV,
    FLAG_REPORTABLE,
    USM_STATS,
    LocalizedKeys,
    UsmUser,
    V3Message,
    decrypt,
    discovery_message,
    encode_v3,
    parse_scoped_pdu,
    parse_v3,
    scoped_template,
    verify,
)

__all__ = ["Agent", "EngineState", "Request", "SnmpClient", "V2cSecurity", "V3Security"]

log = logging.getLogger(__name__)

SYS_UPTIME = encode_oid("1.3.6.1.2.1.1.3.0")
_MAX_RECOVERIES = 3            # engine-ID / time-window re-syncs allowed within one exchange
_ENGINE_TIME_MAX = 2**31 - 1


class Request:
    """A request PDU (GET, GETNEXT or GETBULK) for a fixed list of OIDs (encoded contents).

    Long-lived requests (`reusable=True`, e.g. a preset's GET) are pre-encoded into templates the first
    time each security context uses them; one-off requests (walk pages) are encoded directly.
    Identity-hashed: it is a template cache key.
    """

    __slots__ = ("__weakref__", "max_repetitions", "non_repeaters", "oids", "reusable", "tag")

    def __init__(self, tag: int, oids: Sequence[bytes], *, non_repeaters: int = 0, max_repetitions: int = 0,
                 reusable: bool = True) -> None:
        self.tag = tag
        self.oids = tuple(oids)
        self.non_repeaters = non_repeaters
        self.max_repetitions = max_repetitions
        self.reusable = reusable

    def pdu(self, request_id: int) -> bytes:
        return pdu(self.tag, request_id, self.oids, error_status=self.non_repeaters,
                   error_index=self.max_repetitions)

    def __repr__(self) -> str:
        return f"Request(0x{self.tag:02x}, {len(self.oids)} oids)"


_PROBE = Request(GET, [SYS_UPTIME])


class V2cSecurity:
    """Community-based security. The community is inside the templates: repr shows neither."""

    version = "v2c"

    def __init__(self, community: bytes) -> None:
        self._community = community
        self._templates: dict[Request, Template] = {}

    def encode(self, request: Request, request_id: int) -> bytes:
        template = self._templates.get(request)
        if template is None:
            if not request.reusable:
                return v2c_message(self._community, request.pdu(request_id))
            template = request_template(request.pdu(REQUEST_ID_MIN), self._wrap)
            self._templates[request] = template
        return template.render(request_id)

    def _wrap(self, pdu_bytes: bytes) -> bytes:
        return v2c_message(self._community, pdu_bytes)

    def __repr__(self) -> str:
        return "V2cSecurity(community=**********)"


class V3Security:
    """USM security for one user (shared by every agent polled with the same credentials)."""

    version = "v3"

    def __init__(self, user: UsmUser, context_name: bytes = b"") -> None:
        self.user = user
        self.context_name = context_name

    def __repr__(self) -> str:
        return f"V3Security({self.user!r})"


@dataclass(slots=True, repr=False)
class EngineState:
    """What we know of one authoritative engine: its ID, clock and our keys localised to it."""

    engine_id: bytes
    boots: int
    time: int
    synced_at: float                 # loop time when `time` was read
    keys: LocalizedKeys
    templates: dict[Request, Template] = field(default_factory=dict)

    def clock(self, now: float) -> int:
        return min(_ENGINE_TIME_MAX, self.time + int(now - self.synced_at))

    def sync(self, boots: int, engine_time: int, now: float) -> None:
        self.boots, self.time, self.synced_at = boots, engine_time, now

    def __repr__(self) -> str:
        return f"EngineState({self.engine_id.hex()}, boots={self.boots})"


# ---- sockets -----------------------------------------------------------------------------------

class _Exchange:
    """Everything answering one logical request (its attempts, probes) lands in one queue."""

    __slots__ = ("addr", "endpoint", "ids", "loop", "queue", "waiter")

    def __init__(self, endpoint: _Endpoint, addr: tuple[str, int]) -> None:
        self.endpoint = endpoint
        self.addr = addr
        self.ids: list[int] = []
        self.queue: deque[tuple[int, bytes]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.loop = endpoint.loop

    def send(self, packet: bytes, msg_id: int) -> None:
        self.endpoint.pending[msg_id] = self
        self.ids.append(msg_id)
        self.endpoint.send(packet, self.addr)

    def deliver(self, msg_id: int, data: bytes) -> None:
        self.queue.append((msg_id, data))
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, deadline: float) -> tuple[int, bytes] | None:
        """The next answer, or None once `deadline` (loop time) passed."""
        if not self.queue:
            waiter = self.waiter = self.loop.create_future()
            timer = self.loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
        return self.queue.popleft() if self.queue else None

    def close(self) -> None:
        pending = self.endpoint.pending
        for msg_id in self.ids:
            if pending.get(msg_id) is self:
                del pending[msg_id]
        self.ids.clear()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Endpoint(asyncio.DatagramProtocol):
    """One UDP socket shared by every agent reached from one namespace with one address family."""

    def __init__(self, loop: asyncio.AbstractEventLoop, netns: str | None, ns_id: NamespaceId | None) -> None:
        self.loop = loop
        self.netns = netns
        self.ns_id = ns_id
        self.pending: dict[int, _Exchange] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.send_error: OSError | None = None
        self.stray = 0          # datagrams nobody waited for (late, duplicated, spoofed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (Python 3.11's selector datagram transport does not subclass DatagramTransport.)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg_id = peek_message_id(data)
        exchange = self.pending.get(msg_id) if msg_id is not None else None
        if exchange is None or addr[0] != exchange.addr[0] or addr[1] != exchange.addr[1]:
            self.stray += 1
            return
        exchange.deliver(msg_id, data)  # type: ignore[arg-type]

    def error_received(self, exc: Exception) -> None:
        # On an unconnected socket this only comes from our own sendto (no route, ...), synchronously.
        if isinstance(exc, OSError):
            self.send_error = exc

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def send(self, packet: bytes, addr: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise CollectorError("socket closed", reason="closed")
        self.send_error = None
        transport.sendto(packet, addr)
        if self.send_error is not None:
            err, self.send_error = self.send_error, None
            raise CollectorError(f"cannot send: {err.strerror or err}", reason="unreachable")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SnmpClient:
    """Owns the sockets: one per (network namespace, address family), opened on first use and
    re-opened when the namespace's name now points to another namespace. `rcvbuf` sizes their
    receive queues (bursts of answers when many agents are polled at once)."""

    def __init__(self, *, rcvbuf: int = 4 << 20) -> None:
        self.rcvbuf = rcvbuf
        self._endpoints: dict[tuple[str | None, int], _Endpoint] = {}
        self._locks: dict[tuple[str | None, int], asyncio.Lock] = {}
        self._next_id = random.randint(REQUEST_ID_MIN, REQUEST_ID_MAX)

    def next_id(self) -> int:
        value = self._next_id
        self._next_id = value + 1 if value < REQUEST_ID_MAX else REQUEST_ID_MIN
        return value

    async def endpoint(self, netns: str | None, family: int) -> _Endpoint:
        key = (netns, family)
        ep = self._endpoints.get(key)
        if ep is not None and ep.transport is not None and (netns is None or namespace_id(netns) == ep.ns_id):
            return ep
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            ep = self._endpoints.get(key)
            if ep is not None:
                if ep.transport is not None and (netns is None or namespace_id(netns) == ep.ns_id):
                    return ep
                # The namespace was deleted or replaced: our socket lives in the old one.
                del self._endpoints[key]
                ep.close()
            try:
                sock, ns_id = await open_udp_socket(netns, family, rcvbuf=self.rcvbuf)
            except NetnsError as exc:
                raise CollectorError(str(exc), reason="netns") from exc
            except OSError as exc:
                raise CollectorError(f"cannot open a UDP socket: {exc}", reason="socket") from exc
            loop = asyncio.get_running_loop()
            ep = _Endpoint(loop, netns, ns_id)
            try:
                await loop.create_datagram_endpoint(lambda: ep, sock=sock)
            except BaseException:
                sock.close()
                raise
            self._endpoints[key] = ep
            return ep

    def close_netns(self, netns: str | None) -> None:
        """Close the sockets of one namespace (no target uses it any more)."""
        for key in [k for k in self._endpoints if k[0] == netns]:
            self._endpoints.pop(key).close()

    def stray_datagrams(self) -> int:
        return sum(ep.stray for ep in self._endpoints.values())

    async def close(self) -> None:
        for ep in self._endpoints.values():
            ep.close()
        self._endpoints.clear()
        # Let the transports' close callbacks run so the sockets are really closed on return.
        await asyncio.sleep(0)


# ---- agents ------------------------------------------------------------------------------------

Security = V2cSecurity | V3Security


def address_family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


class Agent:
    """One SNMP agent: where it is, how to talk to it, and (v3) its engine state.

    `request(req)` returns the answer PDU (whose error-status the caller checks), or raises:
    `CollectorTimeout` (no answer after `retries` + 1 attempts of `timeout_s` each),
    `CollectorAuthError` with reason "auth" (wrong auth key, unknown user, security level not
    allowed) or "priv" (the agent authenticates us but never answers encrypted requests: wrong
    priv key or priv protocol), `CollectorParseError`, or `CollectorError`.
    """

    def __init__(self, client: SnmpClient, *, host: str, port: int, netns: str | None, security: Security,
                 timeout_s: float, retries: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.addr = (host, port)
        self.family = address_family(host)
        self.netns = netns
        self.security = security
        self.timeout_s = timeout_s
        self.retries = retries
        self.engine: EngineState | None = None
        self.discarded = 0       # answers that failed authentication or parsing
        self._monotonic = monotonic

    def __repr__(self) -> str:
        where = f" netns={self.netns}" if self.netns else ""
        return f"Agent({self.host}:{self.port}{where}, {self.security.version})"

    async def request(self, req: Request) -> Pdu:
        endpoint = await self.client.endpoint(self.netns, self.family)
        exchange = _Exchange(endpoint, self.addr)
        try:
            if isinstance(self.security, V2cSecurity):
                return await self._v2c(exchange, self.security, req)
            return await self._v3(exchange, self.security, req)
        finally:
            exchange.close()

    # -- v2c --------------------------------------------------------------------------------------

    async def _v2c(self, exchange: _Exchange, security: V2cSecurity, req: Request) -> Pdu:
        loop = exchange.loop
        attempts = self.retries + 1
        for _ in range(attempts):
            msg_id = self.client.next_id()
            exchange.send(security.encode(req, msg_id), msg_id)
            deadline = loop.time() + self.timeout_s
            while (answer := await exchange.next(deadline)) is not None:
                # Any of this exchange's ids will do: a late answer to an earlier attempt is as good.
                try:
                    version, _, answer_pdu = parse_v2c(answer[1])
                except BerError as exc:
                    raise CollectorParseError(f"undecodable answer: {exc}") from exc
                if version != 1 or answer_pdu.tag != RESPONSE or answer_pdu.request_id != answer[0]:
                    self.discarded += 1
                    continue
                return answer_pdu
        raise CollectorTimeout(
            f"no answer within {self.timeout_s:g}s x {attempts} (wrong community or agent down)")

    # -- v3 ---------------------------------------------------------------------------------------

    def _encode_v3(self, security: V3Security, engine: EngineState, req: Request, msg_id: int, *,
                   flags: int | None = None) -> bytes:
        user = security.user
        flags = user.flags if flags is None else flags
        template = engine.templates.get(req)
        if template is None:
            template = scoped_template(engine.engine_id, security.context_name, req.pdu(REQUEST_ID_MIN))
            if req.reusable:
                engine.templates[req] = template
        plaintext = template.render(msg_id)
        keys = engine.keys
        engine_time = engine.clock(self._now())
        if flags & FLAG_PRIV:
            ciphertext, priv_params = keys.encrypt(engine.boots, engine_time, plaintext)
            data = tlv(OCTET_STRING, ciphertext)
        else:
            priv_params, data = b"", plaintext
        message, offset = encode_v3(msg_id=msg_id, flags=flags, engine_id=engine.engine_id, boots=engine.boots,
                                    time=engine_time, user=user.name, mac_length=keys.mac_length,
                                    priv_params=priv_params, msg_data=data)
        mac_end = offset + keys.mac_length
        return message[:offset] + keys.mac(message) + message[mac_end:]

    def _now(self) -> float:
        return self._monotonic()

    def _discovery(self, exchange: _Exchange) -> int:
        msg_id = self.client.next_id()
        exchange.send(discovery_message(msg_id, pdu(GET, msg_id, [])), msg_id)
        return msg_id

    def _engine_from(self, security: V3Security, message: V3Message) -> EngineState:
        if not message.engine_id:
            raise CollectorParseError("agent announced an empty engine ID")
        return EngineState(message.engine_id, message.boots, message.time, self._now(),
                           security.user.localize(message.engine_id))

    async def _discover(self, exchange: _Exchange, security: V3Security) -> EngineState:
        loop = exchange.loop
        attempts = self.retries + 1
        for _ in range(attempts):
            self._discovery(exchange)
            deadline = loop.time() + self.timeout_s
            while (answer := await exchange.next(deadline)) is not None:
                try:
                    message = parse_v3(answer[1])
                except BerError:
                    self.discarded += 1
                    continue
                return self._engine_from(security, message)
        raise CollectorTimeout(f"no answer to engine discovery within {self.timeout_s:g}s x {attempts} "
                               "(agent down or unreachable)")

    def _open(self, security: V3Security, engine: EngineState, data: bytes) -> tuple[V3Message, Pdu, bool] | None:
        """Authenticate and decrypt an answer: (message, pdu, authenticated), or None to discard it."""
        try:
            message = parse_v3(data)
        except BerError:
            return None
        authenticated = False
        if message.flags & FLAG_AUTH:
            if message.engine_id != engine.engine_id or message.user != security.user.name:
                return None
            if not verify(message, engine.keys):
                return None
            authenticated = True
        try:
            if message.flags & FLAG_PRIV:
                if not authenticated:
                    return None
                scoped = decrypt(message, engine.keys)
            else:
                scoped = message.data
            _, _, answer = parse_scoped_pdu(scoped)
        except BerError as exc:
            if authenticated and message.flags & FLAG_PRIV:
                raise CollectorAuthError(f"cannot decrypt the agent's authenticated answer ({exc}): "
                                         "wrong priv key or priv protocol", reason="priv") from exc
            return None
        return message, answer, authenticated

    async def _v3(self, exchange: _Exchange, security: V3Security, req: Request) -> Pdu:
        loop = exchange.loop
        engine = self.engine
        alive = False                  # the agent answered something during this exchange
        if engine is None:
            engine = self.engine = await self._discover(exchange, security)
            alive = True
        user = security.user
        attempts = self.retries + 1
        attempt = 0
        recoveries = 0
        requests: set[int] = set()
        probes: set[int] = set()
        while attempt < attempts:
            msg_id = self.client.next_id()
            exchange.send(self._encode_v3(security, engine, req, msg_id), msg_id)
            requests.add(msg_id)
            if attempt > 0 and not alive:
                # A retransmission also asks the engine ID: a replaced agent may drop what it cannot
                # decode instead of reporting it, and this tells "down" from "changed".
                probes.add(self._discovery(exchange))
            deadline = loop.time() + self.timeout_s
            resync: EngineState | None = None
            while resync is None and (answer := await exchange.next(deadline)) is not None:
                answer_id, data = answer
                if answer_id in probes:
                    try:
                        message = parse_v3(data)
                    except BerError:
                        continue
                    alive = True
                    if message.engine_id and message.engine_id != engine.engine_id:
                        resync = self._engine_from(security, message)
                    continue
                if answer_id not in requests:
                    continue
                opened = self._open(security, engine, data)
                if opened is None:
                    self.discarded += 1
                    continue
                message, answer_pdu, authenticated = opened
                alive = True
                if answer_pdu.tag == RESPONSE:
                    if (not authenticated or (user.priv is not None and not message.flags & FLAG_PRIV)
                            or answer_pdu.request_id != answer_id):
                        self.discarded += 1      # below the level we asked for, or not our PDU
                        continue
                    engine.sync(message.boots, message.time, self._now())
                    return answer_pdu
                if answer_pdu.tag != REPORT:
                    self.discarded += 1
                    continue
                report = _report_name(answer_pdu)
                if report == "unknownEngineID":
                    resync = self._engine_from(security, message)
                elif report == "notInTimeWindow":
                    resync = engine
                    engine.sync(message.boots, message.time, self._now())
                else:
                    raise _report_error(report, user)
            if resync is None:
                attempt += 1
                continue
            recoveries += 1
            if recoveries > _MAX_RECOVERIES:
                raise CollectorError("agent keeps changing its engine ID or clock", reason="engine")
            if resync.engine_id != engine.engine_id:
                log.info("snmp agent %s:%s: engine ID changed from %s to %s; re-synchronised", self.host,
                         self.port, engine.engine_id.hex(), resync.engine_id.hex())
            engine = self.engine = resync
        # Nothing answered our requests. Whatever we knew of the engine may be stale: rediscover next time.
        self.engine = None
        if alive and user.priv is not None:
            verdict = await self._probe_without_priv(exchange, security, engine)
            if verdict is not None:
                raise verdict
        attempts_text = f"{self.timeout_s:g}s x {attempts}"
        if alive:
            raise CollectorTimeout(f"agent answers engine discovery but not our requests within {attempts_text}")
        raise CollectorTimeout(f"no answer within {attempts_text} (agent down or unreachable)")

    async def _probe_without_priv(self, exchange: _Exchange, security: V3Security,
                                  engine: EngineState) -> CollectorError | None:
        """The agent is up but silent to encrypted requests. If it answers the same user authenticated
        without privacy, the auth key is right and the priv key (or protocol) is what it cannot use."""
        msg_id = self.client.next_id()
        exchange.send(self._encode_v3(security, engine, _PROBE, msg_id, flags=FLAG_AUTH | FLAG_REPORTABLE), msg_id)
        deadline = exchange.loop.time() + self.timeout_s
        while (answer := await exchange.next(deadline)) is not None:
            if answer[0] != msg_id:
                continue
            opened = self._open(security, engine, answer[1])
            if opened is None:
                continue
            _, answer_pdu, authenticated = opened
            if answer_pdu.tag == REPORT:
                report = _report_name(answer_pdu)
                if report in ("wrongDigest", "unknownUserName"):
                    return _report_error(report, security.user)
                return None
            if authenticated:
                return CollectorAuthError(
                    "agent accepts our auth key but never answers encrypted requests: wrong priv key or "
                    f"priv protocol (configured {security.user.priv.name if security.user.priv else 'none'})",
                    reason="priv")
        return None


def _report_name(report: Pdu) -> str:
    if not report.varbinds:
        return "emptyReport"
    return USM_STATS.get(report.varbinds[0][0], "unknownReport")


def _report_error(report: str, user: UsmUser) -> CollectorError:
    name = user.name.decode(errors="replace")
    if report == "wrongDigest":
        return CollectorAuthError(f"agent reports wrongDigest: wrong auth key or auth protocol for user {name!r} "
                                  f"(configured {user.auth.name})", reason="auth")
    if report == "unknownUserName":
        return CollectorAuthError(f"agent reports unknownUserName: no user {name!r} on the agent", reason="auth")
    if report == "unsupportedSecLevel":
        level = "authPriv" if user.priv is not None else "authNoPriv"
        return CollectorAuthError(f"agent reports unsupportedSecLevel: user {name!r} is not allowed {level}",
                                  reason="auth")
    if report == "decryptionError":
        return CollectorAuthError("agent reports decryptionError: wrong priv key or priv protocol", reason="priv")
    return CollectorError(f"agent reports {report}", reason="report")
