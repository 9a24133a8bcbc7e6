"""The alarm desk: open alarms live, acknowledgement, commands; a page and a small JSON API.

The page (``static/desk.html``, no build step) follows ``/api/stream`` (server-sent events fed
by PostgreSQL's LISTEN/NOTIFY) and reloads the part that changed. Acknowledging publishes the
contract's ``down/ack`` and records the operator once the broker has it.

Operators log in (``static/login.html``, ``POST /login``) against the operators file
(``operators.py``) and get a session cookie; every ``/api`` route and the stream answer 401
without a session, and what an operator does is recorded under the name they logged in with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from platformkit.ingest import gaps, store
from platformkit.ingest.contract import GATEWAY_ID
from platformkit.ingest.migrations import migrate
from platformkit.ingest.mqtt import BrokerAddress, MqttLink, PublishError, TlsFiles
from platformkit.ingest.operators import Operators, OperatorsError
from platformkit.ingest.worker import ack_payload

log = structlog.get_logger("platformkit.desk")

STATIC_DIR = Path(__file__).parent / "static"
COMMANDS = ("ping", "status", "test_alarm")
COMMAND_TTL_S = 120
RECENT_ACKED_S = 600
RECENT_COMMANDS = 30
MAX_OPERATOR_CHARS = 128
SSE_KEEPALIVE_S = 15.0
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
DEFAULT_PORTS = {"http": 80, "https": 443}
SESSION_COOKIE = "carebed_desk_session"
NO_LOGIN_OPERATOR = "desk"  # the `by` of everything done on a desk run with --no-login
MAX_LOGGED_NAME_CHARS = 64
OPERATOR_KEY = web.RequestKey("operator", str)


@dataclass(frozen=True, slots=True)
class DeskSettings:
    dsn: str
    broker: BrokerAddress
    host: str = "127.0.0.1"
    port: int = 8080
    # Unique per desk: two desks under one client id would keep disconnecting each other. Over
    # TLS it is also the CN of the desk's certificate (the broker forces client id = CN).
    client_id: str = field(default_factory=lambda: f"carebed-desk-{os.getpid()}")
    # Origins (scheme://host[:port]) accepted besides the desk's own Host: a proxy's address.
    allowed_origins: tuple[str, ...] = ()
    tls: TlsFiles | None = None  # None: plain TCP
    connect_timeout_s: float = 30.0
    # The operators file (``operators.py``); None: no login, everything done as "desk".
    operators: Path | None = None
    # The session cookie only over HTTPS; also when the desk itself is reached over plain HTTP
    # behind a proxy that serves it over HTTPS (the desk cannot see that).
    secure_cookie: bool = False
    mqtt_protocol: str = "5"  # "3.1.1": NATS 2.9, RabbitMQ before 3.13


class Desk:
    """The desk's HTTP server; ``run`` until cancelled."""

    def __init__(self, settings: DeskSettings) -> None:
        self.settings = settings
        self.port: int | None = None  # the port it listens on, once started
        self.started = asyncio.Event()
        self._listeners: set[asyncio.Queue[str]] = set()
        self._conn: store.Conn | None = None
        self._link: MqttLink | None = None
        # One connection for the requests: one request's transaction at a time on it.
        self._db_lock = asyncio.Lock()
        self._operators = None if settings.operators is None else Operators(settings.operators)

    async def run(self) -> None:
        settings = self.settings
        if self._operators is not None:
            self._operators.load()  # OperatorsError before anything starts
        self._conn = await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True)
        await migrate(self._conn)  # the desk may start before any worker
        listen = await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True)
        self._link = MqttLink(
            settings.broker,
            client_id=settings.client_id,
            tls=settings.tls,
            protocol=settings.mqtt_protocol,
        )
        self._link.start()
        try:
            await self._link.wait_connected(settings.connect_timeout_s)
        except BaseException:
            self._link.close()
            await listen.close()
            await self._conn.close()
            raise
        app = web.Application(
            middlewares=[same_origin_json(settings.allowed_origins), self._require_session]
        )
        app.add_routes(
            [
                web.get("/", self._page),
                web.get("/login", self._login_page),
                web.post("/login", self._login),
                web.post("/logout", self._logout),
                web.get("/api/me", self._me),
                web.get("/api/alarms", self._alarms),
                web.post("/api/alarms/{gw}/{id}/ack", self._ack),
                web.get("/api/gateways", self._gateways),
                web.get("/api/commands", self._commands),
                web.post("/api/gateways/{gw}/commands", self._command),
                web.get("/api/stream", self._stream),
            ]
        )
        # Open event streams never end by themselves: do not wait for them at shutdown.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1] if sockets else settings.port
            log.info("desk_started", url=f"http://{settings.host}:{self.port}/")
            self.started.set()
            await self._follow(listen)
        finally:
            await runner.cleanup()
            self._link.close()
            await listen.close()
            await self._conn.close()

    async def _follow(self, listen: store.Conn) -> None:
        """PostgreSQL's notifications, to every page that follows the stream."""
        await listen.execute(f"LISTEN {store.DESK_CHANNEL}")
        async for notify in listen.notifies():
            for queue in list(self._listeners):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(notify.payload)

    # -- operators ------------------------------------------------------------------------------

    @web.middleware
    async def _require_session(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The operator of the request's session in ``request[OPERATOR_KEY]``; none: 401 for the
        API, the login page for the desk's page."""
        operators = self._operators
        if operators is None:
            request[OPERATOR_KEY] = NO_LOGIN_OPERATOR
            return await handler(request)
        if request.path in ("/login", "/logout"):
            return await handler(request)
        with contextlib.suppress(OperatorsError):  # said at the next login
            operators.load()  # an operator removed from the file: their sessions end
        operator = operators.session(request.cookies.get(SESSION_COOKIE))
        if operator is None:
            if request.path.startswith("/api/"):
                raise web.HTTPUnauthorized(text="log in first")
            raise web.HTTPSeeOther("/login")
        request[OPERATOR_KEY] = operator
        return await handler(request)

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "login.html")

    async def _login(self, request: web.Request) -> web.Response:
        operators = self._operators
        if operators is None:
            raise web.HTTPNotFound(text="this desk has no login")
        body = await _body(request)
        name, password = body.get("name"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            raise web.HTTPBadRequest(text="name and password are needed")
        logged_name = name[:MAX_LOGGED_NAME_CHARS]
        if operators.locked(name):
            log.warning("desk_login_refused", operator=logged_name, reason="too_many_failures")
            raise web.HTTPTooManyRequests(text="too many failed logins: try again later")
        try:
            operators.load()
        except OperatorsError as exc:
            log.warning("desk_operators_unreadable", error=str(exc))
            raise web.HTTPServiceUnavailable(text="the operators file cannot be read") from None
        # Counted before the (slow) check, so that guesses sent in parallel count too; a login
        # that succeeds clears the count.
        failures = operators.failed(name)
        if not await asyncio.to_thread(operators.check, name, password):
            log.warning("desk_login_failed", operator=logged_name, failures=failures)
            raise web.HTTPUnauthorized(text="wrong name or password")
        token = operators.open_session(name)
        log.info("desk_login", operator=name)
        response = _json({"operator": name})
        response.set_cookie(
            SESSION_COOKIE,
            token,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.settings.secure_cookie or request.secure,
        )
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        if self._operators is not None:
            token = request.cookies.get(SESSION_COOKIE)
            operator = self._operators.session(token)
            self._operators.close_session(token)
            if operator is not None:
                log.info("desk_logout", operator=operator)
        response = _json({"logged_out": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _me(self, request: web.Request) -> web.Response:
        return _json({"operator": request[OPERATOR_KEY], "login": self._operators is not None})

    # -- the page and what it reads -----------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "desk.html")

    async def _alarms(self, request: web.Request) -> web.Response:
        async with self._db() as db:
            cur = await db.execute(
                "SELECT a.gw, a.id, a.seq, a.kind, a.device, a.ts, a.data, a.attempt,"
                " a.received_at, a.last_received_at, a.cancelled_at, a.acked_by, a.acked_at,"
                " a.confirmed_at, p.state"
                " FROM alarm a LEFT JOIN presence p USING (gw)"
                " WHERE a.acked_at IS NULL OR a.acked_at > now() - %s::interval"
                " ORDER BY a.acked_at IS NOT NULL, a.received_at DESC LIMIT 500",
                (timedelta(seconds=RECENT_ACKED_S),),
            )
            rows = await cur.fetchall()
        names = [
            "gw",
            "id",
            "seq",
            "kind",
            "device",
            "ts",
            "data",
            "attempt",
            "received_at",
            "last_received_at",
            "cancelled_at",
            "acked_by",
            "acked_at",
            "confirmed_at",
            "presence",
        ]
        return _json([dict(zip(names, row, strict=True)) for row in rows])

    async def _gateways(self, request: web.Request) -> web.Response:
        async with self._db() as db:
            cur = await db.execute(
                "SELECT coalesce(g.gw, p.gw), p.state, p.reason, p.since, p.version, p.changed_at,"
                " g.events, g.duplicates, g.resends, g.rejected, g.max_seq, g.last_event_at"
                " FROM gateway g FULL JOIN presence p USING (gw) ORDER BY 1"
            )
            fetched = await cur.fetchall()
            reported = await gaps.open_gaps(db)
        names = [
            "gw",
            "presence",
            "reason",
            "since",
            "version",
            "presence_changed_at",
            "events",
            "duplicates",
            "resends",
            "rejected",
            "max_seq",
            "last_event_at",
        ]
        rows = [dict(zip(names, row, strict=True)) for row in fetched]
        open_gaps: dict[str, list[list[int]]] = {}
        for gap in reported:
            open_gaps.setdefault(gap.gw, []).append([gap.first_seq, gap.last_seq])
        for row in rows:
            row["gaps"] = open_gaps.get(row["gw"], [])
        return _json(rows)

    async def _commands(self, request: web.Request) -> web.Response:
        async with self._db() as db:
            cur = await db.execute(
                "SELECT id, gw, name, sent_by, sent_at, result_at, ok, result, error FROM command"
                " ORDER BY sent_at DESC LIMIT %s",
                (RECENT_COMMANDS,),
            )
            rows = await cur.fetchall()
        names = ["id", "gw", "name", "sent_by", "sent_at", "result_at", "ok", "result", "error"]
        return _json([dict(zip(names, row, strict=True)) for row in rows])

    # -- what the operator does ---------------------------------------------------------------

    async def _ack(self, request: web.Request) -> web.Response:
        gw, alarm_id = request.match_info["gw"], request.match_info["id"]
        await _body(request)
        by = request[OPERATOR_KEY][:MAX_OPERATOR_CHARS]
        async with self._db() as db:
            cur = await db.execute(
                "SELECT acked_by FROM alarm WHERE gw = %s AND id = %s", (gw, alarm_id)
            )
            known = await cur.fetchone() is not None
        if not known:
            raise web.HTTPNotFound(text="no such alarm")
        await self._publish(f"carebed/v1/{gw}/down/ack", ack_payload([alarm_id], by))
        async with self._db() as db:
            first = await store.record_ack(db, gw, alarm_id, by)
        log.info("alarm_acknowledged", gw=gw, alarm_id=alarm_id, by=by, first=first)
        return _json({"acknowledged": True, "first": first})

    async def _command(self, request: web.Request) -> web.Response:
        gw = request.match_info["gw"]
        body = await _body(request)
        name = body.get("name")
        if GATEWAY_ID.match(gw) is None or name not in COMMANDS:
            raise web.HTTPBadRequest(text=f"commands from the desk: {', '.join(COMMANDS)}")
        by = request[OPERATOR_KEY][:MAX_OPERATOR_CHARS]
        command_id = f"desk-{uuid.uuid4()}"
        expires_at = datetime.now(UTC) + timedelta(seconds=COMMAND_TTL_S)
        async with self._db() as db:
            await store.record_command(
                db,
                command_id=command_id,
                gw=gw,
                name=str(name),
                args={},
                by=by,
                expires_at=expires_at,
            )
        await self._publish(
            f"carebed/v1/{gw}/down/cmd",
            {
                "v": 1,
                "id": command_id,
                "name": name,
                "args": {},
                "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            },
        )
        log.info("command_sent", gw=gw, name=name, command_id=command_id, by=by)
        return _json({"id": command_id})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=100)
        self._listeners.add(queue)
        try:
            await response.write(b"event: hello\ndata: {}\n\n")
            async for what in _with_keepalive(queue):
                await response.write(f"event: {what}\ndata: {{}}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._listeners.discard(queue)
        return response

    @contextlib.asynccontextmanager
    async def _db(self) -> AsyncIterator[store.Conn]:
        assert self._conn is not None
        async with self._db_lock:
            yield self._conn

    async def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Publish for the operator; 503 with the broker's reason when it did not take it (the
        acknowledgement is then not recorded: the operator presses again)."""
        try:
            await self._mqtt.publish(topic, payload)
        except PublishError as exc:
            log.warning("desk_publish_failed", topic=topic, error=str(exc))
            raise web.HTTPServiceUnavailable(text=f"the broker did not take it: {exc}") from exc

    @property
    def _mqtt(self) -> MqttLink:
        assert self._link is not None
        return self._link


def same_origin_json(allowed_origins: tuple[str, ...] = ()) -> Middleware:
    """Refuse a state-changing request that another site's page could make in the operator's
    browser: one whose ``Origin`` (sent by browsers with every POST) is neither the desk's own
    host nor an allowed origin (403), and one whose body is not ``application/json`` (415: a
    form or a text/plain body needs no CORS preflight, and the desk answers none)."""
    allowed = {_origin_key(origin) for origin in allowed_origins}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None:
                key = _origin_key(origin)
                if key is None or (
                    key[1] != _host_key(request.host, key[0]) and key not in allowed
                ):
                    log.warning("desk_cross_origin_refused", origin=origin, host=request.host)
                    raise web.HTTPForbidden(text="cross-origin request refused")
            if request.content_type != "application/json":
                raise web.HTTPUnsupportedMediaType(text="the body must be application/json")
        return await handler(request)

    return middleware


def _origin_key(origin: str) -> tuple[str, str] | None:
    """(scheme, host[:port] without the scheme's default port) of an Origin, None for "null"
    and anything else that is not an http(s) origin."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc or parts.path not in ("", "/"):
        return None
    return parts.scheme, _host_key(parts.netloc, parts.scheme)


def _host_key(host: str, scheme: str) -> str:
    host = host.lower()
    return host.removesuffix(f":{DEFAULT_PORTS[scheme]}")


async def _with_keepalive(queue: asyncio.Queue[str]) -> AsyncIterator[str]:
    while True:
        try:
            async with asyncio.timeout(SSE_KEEPALIVE_S):
                yield await queue.get()
        except TimeoutError:
            yield "keepalive"


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text="the body is not JSON") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body is not a JSON object")
    return body


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _json(body: object) -> web.Response:
    return web.Response(text=json.dumps(body, default=_default), content_type="application/json")
