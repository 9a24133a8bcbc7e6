"""``make demo`` and the hil/ simulated rig run and show the alarm chain end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_demo_shows_an_alarm_acknowledged_and_a_clean_stop() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "drivers.sim.demo", "--seconds", "7", "--alarm-every", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for line in (
        "platform ← status online",
        "platform ← gateway.started",
        "platform ← telemetry.vitals",
        "senior presses the button",
        "senior hears: alarm received by the gateway",
        "platform ← alarm.button",
        "platform ← camera.call",
        "platform → ack",
        "senior hears: help is on the way",
        "platform ← audit.alarm_acknowledged",
        "platform ← gateway.stopping",
        "platform ← status offline",
    ):
        assert line in out, f"{line!r} missing from the demo's output:\n{out[-2000:]}"


@pytest.mark.parametrize(("scenario", "steps"), [("uplink_smoke", 3), ("button_smoke", 6)])
def test_hil_scenario_passes_on_the_simulated_rig(scenario: str, steps: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"hil.{scenario}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.count("ok   ") == steps
