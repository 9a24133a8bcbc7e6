"""``carebed button pair|list|confirm|unpair``, through the running daemon or on the file."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from drivers.button.codec import PairMode
from drivers.button.pairing import PairingStore
from hil.sim.broker import Mosquitto
from hil.sim.receiver import SimReceiver
from tests.support.daemon import GatewayProcess, gateway_config

BUTTON = 0x00A1B2C3


async def carebed(config: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args[:1],
        "--config",
        str(config),
        *args[1:],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_pair_list_and_unpair_through_the_daemon(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    link = tmp_path / "carebed-button"
    async with SimReceiver(link_path=link, retransmit_interval_s=0.2) as sim:
        config = gateway_config(tmp_path, mosquitto, button={"enabled": True, "port": str(link)})
        daemon = GatewayProcess(config, tmp_path / "gateway.log")
        daemon.start()
        try:
            await sim.wait_for(lambda s: s.received != [], 20, "the daemon to open the port")
            pairing = asyncio.create_task(carebed(config, "button", "pair", "--seconds", "3"))
            await sim.wait_for(
                lambda s: any(isinstance(m, PairMode) for m in s.received), 20, "PAIR_MODE"
            )
            await sim.pair_button(BUTTON)
            status, out = await pairing
            assert status == 0, out
            assert "Pairing is open for 3 s" in out
            assert "paired btn-00A1B2C3" in out
            assert "1 button(s) paired" in out
            status, out = await carebed(config, "button", "list")
            assert status == 0, out
            assert "connected" in out and "btn-00A1B2C3" in out
            status, out = await carebed(config, "button", "unpair", "00a1b2c3")
            assert (status, out.strip()) == (0, "btn-00A1B2C3 unpaired")
            status, out = await carebed(config, "button", "list")
            assert "no button is paired" in out
        finally:
            daemon.terminate()


async def test_without_the_daemon_list_reads_the_file_and_pair_says_why_not(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = gateway_config(tmp_path, mosquitto, button={"enabled": True})
    status, out = await carebed(config, "button", "pair")
    assert status == 1
    assert "daemon is not running" in out
    status, out = await carebed(config, "button", "list")
    assert status == 0
    assert "the daemon is not running" in out


async def test_without_the_daemon_confirm_ends_the_damage_in_the_file(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = gateway_config(tmp_path, mosquitto, button={"enabled": True})
    path = tmp_path / "state" / "buttons.json"
    path.parent.mkdir()
    path.write_text('{"buttons": {"00A1B2C3": 1.0}, "unchecked": "buttons.json: not JSON"}')
    assert PairingStore(path).damage == "buttons.json: not JSON"
    status, out = await carebed(config, "button", "list")
    assert status == 0, out
    assert "PAIRING LIST DAMAGED (buttons.json: not JSON)" in out and "btn-00A1B2C3" in out
    status, out = await carebed(config, "button", "confirm")
    assert status == 0, out
    assert "pairing list confirmed: 1 button(s)" in out and "btn-00A1B2C3" in out
    assert (PairingStore(path).damage, PairingStore(path).buttons()) == (None, [BUTTON])
    status, out = await carebed(config, "button", "confirm")
    assert (status, "nothing to confirm" in out) == (0, True)
    status, out = await carebed(config, "button", "list")
    assert (status, "DAMAGED" in out) == (0, False)
