"""The rig's entry (``python -m hil.sim.daemon``): the real daemon with the simulated source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from hil.sim.source import SIM_BUTTON, SIM_WATCH
from tests.support.daemon import GatewayProcess, gateway_config, sim_settings_of

EXIT_CONFIG = 78
GOOD_PLAIN = """
[gateway]
id = "gw-test"
[mqtt]
host = "127.0.0.1"
plaintext = true
"""


def rig(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil.sim.daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_simulated_alarms_with_a_camera_are_refused_with_78(tmp_path: Path) -> None:
    config = tmp_path / "carebed.toml"
    config.write_text(GOOD_PLAIN + "[camera]\nenabled = true\n")
    sim = tmp_path / "sim.toml"
    sim.write_text("[sim]\nalarm_interval_s = 5\n")
    result = rig("--sim", str(sim), "run", "--config", str(config))
    assert result.returncode == EXIT_CONFIG, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, result.stderr
    assert problems[0].startswith("  - sim.alarm_interval_s")
    assert "calls into the home" in problems[0]
    assert "Traceback" not in result.stderr


def test_unknown_sim_setting_is_refused_with_78(tmp_path: Path) -> None:
    config = tmp_path / "carebed.toml"
    config.write_text(GOOD_PLAIN)
    sim = tmp_path / "sim.toml"
    sim.write_text("[sim]\nenabled = true\n")
    result = rig("--sim", str(sim), "run", "--config", str(config))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert f"configuration error in {sim}" in result.stderr
    assert "  - sim.enabled" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_product_refuses_an_enabled_sim_section(tmp_path: Path) -> None:
    config = tmp_path / "carebed.toml"
    config.write_text(GOOD_PLAIN + "[sim]\nenabled = true\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "  - sim.enabled: the simulated event source is no longer part" in result.stderr
    assert "python -m hil.sim.daemon" in result.stderr


def test_an_upgraded_gateway_with_the_old_example_sim_section_still_starts(
    tmp_path: Path,
) -> None:
    """carebed 0.1's example config, copied by every install, ended with a disabled [sim]."""
    config = tmp_path / "carebed.toml"
    config.write_text(
        GOOD_PLAIN + "[sim]\nenabled = false                   # simulated devices, for the demo\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "[sim] is no longer read" in result.stderr
    assert f"remove the [sim] section from {config}" in result.stderr


def test_the_daemon_runs_with_the_simulated_source(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    sim = {"telemetry_interval_s": 0.05, "alarm_interval_s": 0.5, "seed": 7}
    config = gateway_config(tmp_path, mosquitto, sim=sim)
    assert sim_settings_of(config) == tmp_path / "sim.toml"
    daemon = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        daemon.start()
        platform.wait_for(
            lambda p: (
                {(e["kind"], e["device"]) for _, e in p.events()}
                >= {("telemetry.vitals", SIM_WATCH), ("alarm.button", SIM_BUTTON)}
            ),
            30,
            "simulated vitals and a simulated alarm",
        )
        assert daemon.terminate() == 0, daemon.log_text()[-3000:]
    finally:
        daemon.close()
    assert "sim_alarm_raised" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()


def test_a_config_without_sim_runs_the_product_entry(tmp_path: Path, mosquitto: Mosquitto) -> None:
    gateway_config(tmp_path, mosquitto, sim={"telemetry_interval_s": 1.0})
    assert sim_settings_of(gateway_config(tmp_path, mosquitto)) is None
