"""``make demo`` and the hil/ simulated rig run and show the alarm chain end to end."""

from __future__ import annotations

import subprocess
import sys


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


def test_hil_uplink_smoke_passes_on_the_simulated_rig() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hil.uplink_smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.count("ok   ") == 3


def test_hil_button_smoke_passes_on_the_simulated_rig() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hil.button_smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.count("ok   ") == 6
