"""The alarm desk in a real headless Chromium (DevTools protocol), against the real daemon with
the simulated button receiver on a pty: the operator logs in, a press appears on the page
without a reload, and the operator's click on "Acknowledge" reaches the senior as INDICATE 0x02
(help is on the way), recorded under the operator's login.

Screenshots are kept in ``.artifacts/platformkit-desk/`` (git-ignored); their paths are printed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drivers.button.codec import Pattern
from drivers.button.pairing import PairingStore
from hil.sim.broker import REPO_ROOT, Mosquitto
from hil.sim.postgres import Postgres
from hil.sim.receiver import SimReceiver
from platformkit.ingest.contract import ContractValidator
from platformkit.ingest.desk import Desk, DeskSettings
from platformkit.ingest.mqtt import BrokerAddress
from platformkit.ingest.operators import add_operator
from platformkit.ingest.worker import IngestWorker, WorkerSettings
from platformkit.rig import eventually, query
from tests.support.daemon import GatewayProcess, gateway_config

BUTTON = 0x00A1B2C3
DEVICE = "btn-00A1B2C3"
OPERATOR = "operator-anna"
PASSWORD = "anna's long password"
TIMEOUT_S = 45.0  # deadlines only: every wait ends on its condition
ARTIFACTS = REPO_ROOT / ".artifacts" / "platformkit-desk"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
_databases = itertools.count(1)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed (scripts/install-system-deps)"
)


@pytest.fixture
def dsn(postgres: Postgres) -> str:
    return postgres.create_database(f"desk_{next(_databases)}")


# ------------------------------------------------------------------ Chromium over DevTools


class Browser:
    """One page of a headless Chromium, driven over the DevTools protocol's WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read(), name="cdp.read")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[n] = future
        await self.ws.send_str(json.dumps({"id": n, "method": method, "params": params}))
        async with asyncio.timeout(TIMEOUT_S):
            return await future

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> Any:
        async def probe() -> Any:
            return await self.evaluate(expression)

        return await eventually(probe, bool, TIMEOUT_S, what)

    async def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element (pressed, released)."""
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def screenshot(self, name: str) -> Path:
        reply = await self.send("Page.captureScreenshot", format="png")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(reply["data"]))
        print(f"screenshot: {path}")
        return path

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            body = json.loads(message.data)
            future = self._pending.pop(body.get("id", -1), None)
            if future is not None and not future.done():
                if "error" in body:
                    future.set_exception(AssertionError(f"DevTools: {body['error']}"))
                else:
                    future.set_result(body.get("result", {}))

    async def close(self) -> None:
        self._reader.cancel()
        with suppress(asyncio.CancelledError):
            await self._reader


@asynccontextmanager
async def chromium(url: str) -> AsyncIterator[Browser]:
    profile = Path(tempfile.mkdtemp(prefix="carebed-chromium-"))
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",  # we may be root; the page is our own
        "--disable-gpu",
        "--no-first-run",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"

        async def port_file() -> str:
            return active.read_text() if active.exists() else ""

        text = await eventually(
            port_file, lambda t: t.count("\n") >= 1, TIMEOUT_S, "Chromium's DevTools port"
        )
        port = int(text.split("\n")[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                browser = Browser(ws)
                try:
                    await browser.send("Page.enable")
                    await browser.send("Page.navigate", url=url)
                    yield browser
                finally:
                    await browser.close()
    finally:
        proc.kill()
        await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


# ------------------------------------------------------------------ the platform and a home


@asynccontextmanager
async def platform_side(dsn: str, broker: Mosquitto, operators: Path) -> AsyncIterator[Desk]:
    address = BrokerAddress(broker.host, broker.port)
    worker = IngestWorker(
        WorkerSettings(dsn=dsn, broker=address, gap_check_s=0.2, presence_poll_s=0.05),
        ContractValidator.exported(),
    )
    desk = Desk(DeskSettings(dsn=dsn, broker=address, port=0, operators=operators))
    tasks = [
        asyncio.create_task(worker.run(), name="ingest-worker"),
        asyncio.create_task(desk.run(), name="desk"),
    ]
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await desk.started.wait()
        yield desk
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@asynccontextmanager
async def home(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[SimReceiver]:
    """The real daemon (a child process) with a paired button on the simulated receiver."""
    PairingStore(tmp_path / "state" / "buttons.json").add(BUTTON)
    link = tmp_path / "carebed-button"
    config = gateway_config(
        tmp_path,
        broker,
        button={"enabled": True, "port": str(link), "reopen_interval_s": 0.05},
    )
    async with SimReceiver(link_path=link, retransmit_interval_s=0.2) as sim:
        daemon = GatewayProcess(config, tmp_path / "gateway.log")
        daemon.start()
        try:
            await asyncio.to_thread(daemon.wait_started, 30.0)
            await sim.wait_for(lambda s: bool(s.received), TIMEOUT_S, "the receiver opened")
            yield sim
        finally:
            daemon.close()


async def test_the_desk_shows_a_press_live_and_its_acknowledgement_reaches_the_senior(
    dsn: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    operators = tmp_path / "operators"
    add_operator(operators, OPERATOR, PASSWORD)
    async with (
        platform_side(dsn, mosquitto, operators) as desk,
        home(tmp_path, mosquitto) as sim,
        chromium(f"http://127.0.0.1:{desk.port}/") as page,
    ):
        # Not logged in: the desk's page sends the browser to the login form.
        await page.wait_for(
            "location.pathname === '/login' && !!document.querySelector('#name')", "the login form"
        )
        await page.evaluate(
            f"document.querySelector('#name').value = {json.dumps(OPERATOR)};"
            "document.querySelector('#password').value = 'wrong password'"
        )
        await page.click("#submit")
        await page.wait_for(
            "document.querySelector('#error').textContent.includes('wrong name or password')",
            "a wrong password refused on the form",
        )
        await page.evaluate(f"document.querySelector('#password').value = {json.dumps(PASSWORD)}")
        await page.click("#submit")
        await page.wait_for("document.querySelector('#status')?.textContent === 'live'", "live")
        assert await page.evaluate("document.querySelector('#operator').textContent") == OPERATOR
        await page.wait_for(
            "document.querySelector('#gateways tr[data-gw=\"gw-a\"] .tag.online') !== null",
            "gw-a shown online",
        )
        await page.evaluate("window.loadedOnce = true")  # a reload would lose it

        await sim.press(BUTTON)
        row = "#alarms tr.open[data-gw='gw-a']"
        await page.wait_for(f"document.querySelector({json.dumps(row)}) !== null", "the alarm")
        assert await page.evaluate("window.loadedOnce === true"), "the page was reloaded"
        cells = await page.evaluate(
            f"[...document.querySelector({json.dumps(row)}).cells].map(c => c.textContent)"
        )
        assert cells[0] == "gw-a"
        assert cells[1] == DEVICE
        assert cells[2] == "alarm.button"
        assert cells[4] == "1"  # attempt
        await page.screenshot("1-alarm-open")

        await page.click(f"{row} button.ack")
        await sim.wait_for(
            lambda s: Pattern.ACKNOWLEDGED in s.indications(BUTTON),
            TIMEOUT_S,
            "INDICATE 0x02 (help is on the way) at the receiver",
        )
        await page.wait_for(
            "document.querySelector(\"#alarms tr.acked[data-gw='gw-a']\") !== null",
            "the alarm shown acknowledged",
        )
        await page.wait_for(
            "document.querySelector(\"#alarms tr.acked[data-gw='gw-a'] .tag.confirmed\") !== null",
            "the gateway's confirmation (audit.alarm_acknowledged) on the page",
        )
        await page.screenshot("2-alarm-acknowledged")
        # RECEIVED first (again for a retransmitted press, on a loaded machine), then ACKNOWLEDGED.
        shown = sim.indications(BUTTON)
        first_ack = shown.index(Pattern.ACKNOWLEDGED)
        assert first_ack > 0
        assert set(shown[:first_ack]) == {Pattern.RECEIVED}
        rows = await query(dsn, "SELECT kind, device, acked_by FROM alarm")
        assert rows == [("alarm.button", DEVICE, OPERATOR)]

        await page.click("#gateways tr[data-gw='gw-a'] button[data-command='ping']")
        result = await page.wait_for(
            "(() => { const r = document.querySelector(\"#commands tr[data-name='ping'] .result\");"
            " return r && r.textContent.includes('pong') ? r.textContent : null; })()",
            "the ping's result on the page",
        )
        assert json.loads(result) == {"pong": True}

        await page.click("#gateways tr[data-gw='gw-a'] button[data-command='test_alarm']")
        await page.wait_for(
            "document.querySelector(\"#alarms tr.open[data-gw='gw-a'] .tag.test\") !== null",
            "the test alarm on the page",
        )
        await page.wait_for(
            "(() => { const r = document.querySelector(\"#commands tr[data-name='test_alarm']"
            " .result\"); return r && r.textContent.includes('alarm_id'); })()",
            "the test alarm's command result",
        )
        await page.screenshot("3-commands-answered")

        await page.click("#logout")
        await page.wait_for("location.pathname === '/login'", "the login form after logging out")
    commands = await query(dsn, "SELECT name, sent_by, ok FROM command ORDER BY sent_at")
    assert commands == [("ping", OPERATOR, True), ("test_alarm", OPERATOR, True)]
