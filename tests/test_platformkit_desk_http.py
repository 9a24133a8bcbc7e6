"""The alarm desk's API over real HTTP: what another site's page could send from the operator's
browser (a text/plain or form body, another Origin) changes nothing."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from hil.sim.broker import Mosquitto
from hil.sim.postgres import Postgres
from platformkit.ingest.desk import Desk, DeskSettings
from platformkit.ingest.mqtt import BrokerAddress
from platformkit.rig import query

TIMEOUT_S = 45.0  # deadlines only
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with Postgres(durable=False) as server:
        yield server


@pytest.fixture
def dsn(postgres: Postgres) -> str:
    return postgres.create_database(f"desk_http_{next(_databases)}")


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
    dsn: str, mosquitto: Mosquitto
) -> None:
    async with running_desk(dsn, mosquitto) as base, aiohttp.ClientSession() as http:
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
        # Reading is not restricted (another origin's page cannot read the answer anyway).
        async with http.get(f"{base}/api/alarms", headers={"Origin": evil}) as response:
            assert response.status == 200
    assert await query(dsn, "SELECT acked_by FROM alarm") == [("anna",)]
    assert await query(dsn, "SELECT name, sent_by FROM command") == [("ping", "anna")]


async def test_an_origin_allowed_for_a_proxy_in_front_of_the_desk_is_accepted(
    dsn: str, mosquitto: Mosquitto
) -> None:
    proxy = "https://desk.city.example"
    async with (
        running_desk(dsn, mosquitto, allowed_origins=(proxy,)) as base,
        aiohttp.ClientSession() as http,
    ):
        await open_alarm(dsn)
        ack = f"{base}/api/alarms/gw-a/alarm-1/ack"
        headers = {"Content-Type": "application/json", "Origin": "https://desk.city.example:443"}
        assert (await post(http, ack, '{"by": "anna"}', headers))[0] == 200
        headers["Origin"] = "http://desk.city.example"  # not over TLS: another origin
        assert (await post(http, ack, '{"by": "anna"}', headers))[0] == 403
