"""The alarm desk's API over real HTTP: nothing without logging in, failed logins counted and
then refused, what an operator does recorded under their name; what another site's page could
send from the operator's browser (a text/plain or form body, another Origin) changes nothing."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from hil.sim.broker import Mosquitto
from hil.sim.postgres import Postgres
from platformkit.ingest.desk import Desk, DeskSettings
from platformkit.ingest.mqtt import BrokerAddress
from platformkit.ingest.operators import MAX_LOGIN_FAILURES, add_operator
from platformkit.rig import query

TIMEOUT_S = 45.0  # deadlines only
PASSWORDS = {"anna": "anna's long password", "ben": "ben's long password"}
_databases = itertools.count(1)


@pytest.fixture
def dsn(postgres: Postgres) -> str:
    return postgres.create_database(f"desk_http_{next(_databases)}")


@pytest.fixture(scope="module")
def operators(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("desk") / "operators"
    for name, password in PASSWORDS.items():
        add_operator(path, name, password)
    return path


def http_session() -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's default jar refuses IP hosts)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(http: aiohttp.ClientSession, base: str, name: str, password: str) -> int:
    async with http.post(f"{base}/login", json={"name": name, "password": password}) as response:
        return response.status


@asynccontextmanager
async def running_desk(dsn: str, broker: Mosquitto, **settings: Any) -> AsyncIterator[str]:
    desk = Desk(
        DeskSettings(dsn=dsn, broker=BrokerAddress(broker.host, broker.port), port=0, **settings)
    )
    task = asyncio.create_task(desk.run(), name="desk")
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await desk.started.wait()
        yield f"http://127.0.0.1:{desk.port}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def open_alarm(dsn: str) -> None:
    await query(
        dsn,
        "INSERT INTO alarm (gw, id, seq, kind, device, ts, data, attempt)"
        " VALUES ('gw-a', 'alarm-1', 1, 'alarm.button', 'btn-00A1B2C3', now(), '{}', 1)",
    )


async def post(
    http: aiohttp.ClientSession, url: str, body: str, headers: dict[str, str]
) -> tuple[int, str]:
    async with http.post(url, data=body.encode(), headers=headers) as response:
        return response.status, await response.text()


async def test_cross_site_requests_change_nothing_and_the_desk_own_do(
    dsn: str, mosquitto: Mosquitto, operators: Path
) -> None:
    async with running_desk(dsn, mosquitto, operators=operators) as base, http_session() as http:
        assert await login(http, base, "anna", PASSWORDS["anna"]) == 200
        await open_alarm(dsn)
        ack = f"{base}/api/alarms/gw-a/alarm-1/ack"
        command = f"{base}/api/gateways/gw-a/commands"
        body = '{"by": "mallory", "name": "test_alarm"}'
        evil = "http://evil.example"
        refused = [
            # What a page of another site can send without a CORS preflight.
            (ack, {"Content-Type": "text/plain"}, 415),
            (command, {"Content-Type": "text/plain;charset=UTF-8", "Origin": evil}, 403),
            (command, {"Content-Type": "application/x-www-form-urlencoded"}, 415),
            (ack, {}, 415),
            # JSON from another origin (a preflight a careless proxy might answer), or from a
            # sandboxed frame or a redirect (Origin: null), or from another port of this host.
            (ack, {"Content-Type": "application/json", "Origin": evil}, 403),
            (command, {"Content-Type": "application/json", "Origin": "null"}, 403),
            (ack, {"Content-Type": "application/json", "Origin": "http://127.0.0.1:1"}, 403),
        ]
        for url, headers, status in refused:
            got = await post(http, url, body, headers)
            assert got[0] == status, (url, headers, got)
        assert await query(dsn, "SELECT acked_by FROM alarm") == [(None,)]
        assert await query(dsn, "SELECT count(*) FROM command") == [(0,)]

        # The desk's own page (its Origin is the desk's host), and a script without a browser.
        own = {"Content-Type": "application/json; charset=utf-8", "Origin": base}
        status, text = await post(http, command, '{"by": "anna", "name": "ping"}', own)
        assert status == 200, text
        status, text = await post(http, ack, '{"by": "anna"}', {"Content-Type": "application/json"})
        assert status == 200, text
        # With a session, reading is not restricted by Origin (another origin's page would not
        # send the SameSite=Strict cookie, nor could it read the answer).
        async with http.get(f"{base}/api/alarms", headers={"Origin": evil}) as response:
            assert response.status == 200
    assert await query(dsn, "SELECT acked_by FROM alarm") == [("anna",)]
    assert await query(dsn, "SELECT name, sent_by FROM command") == [("ping", "anna")]


async def test_an_origin_allowed_for_a_proxy_in_front_of_the_desk_is_accepted(
    dsn: str, mosquitto: Mosquitto, operators: Path
) -> None:
    proxy = "https://desk.city.example"
    async with (
        running_desk(dsn, mosquitto, allowed_origins=(proxy,), operators=operators) as base,
        http_session() as http,
    ):
        assert await login(http, base, "anna", PASSWORDS["anna"]) == 200
        await open_alarm(dsn)
        ack = f"{base}/api/alarms/gw-a/alarm-1/ack"
        headers = {"Content-Type": "application/json", "Origin": "https://desk.city.example:443"}
        assert (await post(http, ack, '{"by": "anna"}', headers))[0] == 200
        headers["Origin"] = "http://desk.city.example"  # not over TLS: another origin
        assert (await post(http, ack, '{"by": "anna"}', headers))[0] == 403


async def test_nothing_without_logging_in(dsn: str, mosquitto: Mosquitto, operators: Path) -> None:
    async with running_desk(dsn, mosquitto, operators=operators) as base, http_session() as http:
        await open_alarm(dsn)
        json_body = {"Content-Type": "application/json"}
        for method, path in [
            ("GET", "/api/alarms"),
            ("GET", "/api/gateways"),
            ("GET", "/api/commands"),
            ("GET", "/api/me"),
            ("GET", "/api/stream"),
            ("POST", "/api/alarms/gw-a/alarm-1/ack"),
            ("POST", "/api/gateways/gw-a/commands"),
        ]:
            async with http.request(
                method, f"{base}{path}", data=b'{"name": "ping"}', headers=json_body
            ) as response:
                assert response.status == 401, (method, path)
        # A made-up or stale cookie is no session either.
        http.cookie_jar.update_cookies({"carebed_desk_session": "forged"})
        async with http.get(f"{base}/api/alarms") as response:
            assert response.status == 401
        async with http.get(f"{base}/", allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/login")
        async with http.get(f"{base}/login") as response:
            assert response.status == 200
            assert 'type="password"' in await response.text()
    assert await query(dsn, "SELECT acked_by FROM alarm") == [(None,)]
    assert await query(dsn, "SELECT count(*) FROM command") == [(0,)]


async def test_what_an_operator_does_is_recorded_under_their_login(
    dsn: str, mosquitto: Mosquitto, operators: Path
) -> None:
    async with running_desk(dsn, mosquitto, operators=operators) as base, http_session() as http:
        await open_alarm(dsn)
        async with http.post(
            f"{base}/login", json={"name": "anna", "password": PASSWORDS["anna"]}
        ) as response:
            assert response.status == 200
            cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
        async with http.get(f"{base}/api/me") as response:
            assert await response.json() == {"operator": "anna", "login": True}
        # A `by` in the body (the old free field) is not who acts.
        ack = f"{base}/api/alarms/gw-a/alarm-1/ack"
        async with http.post(ack, json={"by": "mallory"}) as response:
            assert response.status == 200, await response.text()
        command = f"{base}/api/gateways/gw-a/commands"
        async with http.post(command, json={"name": "ping", "by": "mallory"}) as response:
            assert response.status == 200, await response.text()

        async with http.post(f"{base}/logout", json={}) as response:
            assert response.status == 200
        async with http.get(f"{base}/api/alarms") as response:
            assert response.status == 401
    assert await query(dsn, "SELECT acked_by FROM alarm") == [("anna",)]
    assert await query(dsn, "SELECT name, sent_by FROM command") == [("ping", "anna")]


async def test_failed_logins_are_counted_then_refused_even_with_the_right_password(
    dsn: str, mosquitto: Mosquitto, operators: Path
) -> None:
    async with (
        running_desk(dsn, mosquitto, operators=operators) as base,
        http_session() as http,
    ):
        with capture_logs() as logs:
            for _ in range(MAX_LOGIN_FAILURES):
                assert await login(http, base, "anna", "not anna's password") == 401
            assert await login(http, base, "anna", PASSWORDS["anna"]) == 429
            assert await login(http, base, "nobody", PASSWORDS["anna"]) == 401
            # Guesses sent in parallel are counted before they are checked.
            guesses = [login(http, base, "ghost", f"guess number {n}") for n in range(12)]
            statuses = await asyncio.gather(*guesses)
            assert sorted(statuses) == [401] * MAX_LOGIN_FAILURES + [429] * (
                12 - MAX_LOGIN_FAILURES
            )
            # Another operator is not held back by anna's failures.
            assert await login(http, base, "ben", PASSWORDS["ben"]) == 200
        failed = [e for e in logs if e["event"] == "desk_login_failed"]
        assert [e["failures"] for e in failed if e["operator"] == "anna"] == [1, 2, 3, 4, 5]
        assert any(e["event"] == "desk_login_refused" for e in logs)
        assert PASSWORDS["anna"] not in repr(logs)
        assert "not anna's password" not in repr(logs)
        async with http.get(f"{base}/api/me") as response:
            assert await response.json() == {"operator": "ben", "login": True}


async def test_the_cookie_is_secure_behind_an_https_proxy_and_no_login_acts_as_desk(
    dsn: str, mosquitto: Mosquitto, operators: Path
) -> None:
    async with (
        running_desk(dsn, mosquitto, operators=operators, secure_cookie=True) as base,
        http_session() as http,
    ):
        response = await http.post(
            f"{base}/login", json={"name": "ben", "password": PASSWORDS["ben"]}
        )
        response.release()
        assert response.status == 200
        assert "Secure" in response.headers["Set-Cookie"]
    async with running_desk(dsn, mosquitto) as base, http_session() as http:
        await open_alarm(dsn)
        async with http.post(f"{base}/api/alarms/gw-a/alarm-1/ack", json={"by": "x"}) as response:
            assert response.status == 200
    assert await query(dsn, "SELECT acked_by FROM alarm") == [("desk",)]
