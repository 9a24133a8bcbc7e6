"""What every hil/ scenario shares: its command line, the platform's side and the step report."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hil.sim.platform import Broker, PlatformClient, RemoteBroker

STEP_TIMEOUT_S = 30.0


def parse_args(prog: str, doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The options every scenario takes: simulated rig by default, a real broker with --broker."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--broker", help="HOST:PORT of the broker an installed gateway uses")
    parser.add_argument("--gateway-id", default="gw-hil")
    parser.add_argument("--ca", type=Path, help="the platform CA certificate")
    parser.add_argument("--cert", type=Path, help="a platform-side client certificate")
    parser.add_argument("--key", type=Path, help="its key")
    return parser.parse_args(argv)


def platform(broker: Broker, gw: str, tls: ssl.SSLContext | None = None) -> PlatformClient:
    """The platform's side for gateway ``gw``: its up/# and status, no session left behind."""
    return PlatformClient(
        broker,
        client_id=f"hil-platform-{gw}",
        tls=tls,
        subscriptions=(f"carebed/v1/{gw}/up/#", f"carebed/v1/{gw}/status"),
        session_expiry_s=0,
    )


def platform_for(args: argparse.Namespace) -> PlatformClient:
    """The platform's side on the broker that ``--broker`` names."""
    host, _, port = args.broker.rpartition(":")
    tls = None
    if args.ca:
        tls = ssl.create_default_context(cafile=str(args.ca))
        if args.cert:
            tls.load_cert_chain(str(args.cert), str(args.key) if args.key else None)
    return platform(RemoteBroker(host, int(port)), args.gateway_id, tls)


def events(client: PlatformClient) -> list[dict[str, Any]]:
    """Every event the platform received, in arrival order."""
    return [event for _, event in client.events()]


def wait(
    client: PlatformClient, what: str, check: Callable[[], bool], timeout_s: float = STEP_TIMEOUT_S
) -> float:
    """One step: wait until ``check()`` holds and print it with its time, or fail the scenario."""
    began = time.monotonic()
    try:
        client.wait_for(lambda _: check(), timeout_s, what)
    except TimeoutError:
        raise SystemExit(f"FAIL {what}: nothing within {timeout_s:.0f} s") from None
    took = time.monotonic() - began
    print(f"ok   {what} ({took * 1000:.0f} ms)", flush=True)
    return took


def run_device_scenario(
    prog: str,
    doc: str | None,
    argv: list[str] | None,
    simulated: Callable[[str], Coroutine[Any, Any, None]],
    hardware: Callable[[argparse.Namespace], None],
) -> int:
    """A device scenario's command line: on the simulated rig, or with a person at a real
    gateway when ``--broker`` is given."""
    args = parse_args(prog, doc, argv)
    if args.broker:
        hardware(args)
    else:
        asyncio.run(simulated(args.gateway_id))
    return 0
