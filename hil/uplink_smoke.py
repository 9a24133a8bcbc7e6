"""Uplink smoke scenario: status, gateway.started, ping and a test alarm, end to end.

On the simulated rig it starts a local Mosquitto and the daemon with the simulated event source
(``hil.sim.daemon``); against an installed gateway it only plays the platform (``--broker``).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hil import rig
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient


@contextlib.contextmanager
def simulated_gateway(workdir: Path, port: int, gw: str) -> Iterator[None]:
    config = workdir / "carebed.toml"
    config.write_text(
        f'[gateway]\nid = "{gw}"\nstate_dir = "{workdir / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nplaintext = true\n'
    )
    sim = workdir / "sim.toml"
    sim.write_text("[sim]\ntelemetry_interval_s = 1.0\nalarm_interval_s = 2.0\n")
    log = (workdir / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.sim.daemon", "--sim", str(sim), "run", "--config", str(config)],
        stdout=log,
        stderr=log,
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def scenario(platform: PlatformClient, gw: str) -> None:
    def online() -> bool:
        return any(
            m.topic.endswith("/status") and (m.payload or {}).get("state") == "online"
            for m in platform.messages
        )

    rig.wait(platform, "status online", online)
    platform.command(gw, "ping")
    rig.wait(
        platform,
        "ping answered",
        lambda: any(
            e["kind"] == "cmd.result" and e["data"]["result"] == {"pong": True}
            for e in rig.events(platform)
        ),
    )
    rig.wait(
        platform,
        "an alarm arrives",
        lambda: any(e["kind"].startswith("alarm.") for e in rig.events(platform)),
    )


def main(argv: list[str] | None = None) -> int:
    args = rig.parse_args("python -m hil.uplink_smoke", __doc__, argv)
    if args.broker:
        with rig.platform_for(args) as platform:
            scenario(platform, args.gateway_id)
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="carebed-hil-") as tmp,
        Mosquitto(Path(tmp) / "mosquitto", persistence=False) as broker,
        rig.platform(broker, args.gateway_id) as platform,
        simulated_gateway(Path(tmp), broker.port, args.gateway_id),
    ):
        scenario(platform, args.gateway_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
