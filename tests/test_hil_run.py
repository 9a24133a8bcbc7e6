"""`carebed hil run` on the simulated rig: every scenario unattended with both reports; broken
parts fail the right scenario; the guided mode driven through its prompts in both languages;
the suite without the simulated rig; the entry point that makes it `carebed hil`."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil import rigfile
from hil.sim.platform import PlatformClient
from hil.sim.receiver import SimReceiver
from hil.sim.rigparts import SimParts

ROOT = Path(__file__).resolve().parent.parent
SIM_RIG = ROOT / "hil" / "rigs" / "sim.toml"
RUN_TIMEOUT_S = 150
CJK = re.compile(r"[\u4e00-\u9fff]")


def _hil(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        cwd=ROOT,
        env=env,
    )


def _cases(junit: Path) -> dict[str, ET.Element]:
    suite = ET.parse(junit).getroot()  # noqa: S314 - the suite's own file
    return {case.get("name", ""): case for case in suite.iter("testcase")}


def test_the_simulated_rig_passes_every_scenario_and_writes_both_reports(tmp_path: Path) -> None:
    junit, report = tmp_path / "junit.xml", tmp_path / "report.html"
    result = _hil("run", "--rig", str(SIM_RIG), "--junit", str(junit), "--report", str(report))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    cases = _cases(junit)
    assert set(cases) >= {
        "uplink", "button_press", "button_long_press", "button_cancel", "button_unpaired",
        "receiver_replug", "button_supervision", "watch_sos", "watch_fall", "watch_worn",
        "watch_heart_rate", "camera_call", "camera_privacy", "uplink_cut", "restart_flood",
    }  # fmt: skip
    for name, case in cases.items():
        assert case.find("failure") is None, name
        assert case.find("skipped") is None, name
    suite = ET.parse(junit).getroot()  # noqa: S314 - the suite's own file
    assert suite.get("failures") == "0"
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["receiver_firmware"] == "1.4"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", properties["gateway_version"] or ""), properties
    assert "press_to_platform" in (cases["button_press"].findtext("system-out") or "")
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "PASSED" in page
    assert "FAILED" not in page
    assert "press_to_platform" in page
    assert "1.4" in page
    assert "simulated" in page


def test_the_weekly_button_test_records_each_button(tmp_path: Path) -> None:
    junit, report = tmp_path / "junit.xml", tmp_path / "report.html"
    result = _hil("weekly", "--rig", str(SIM_RIG), "--junit", str(junit), "--report", str(report))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    cases = _cases(junit)
    assert list(cases) == ["weekly_button_test"]
    out = cases["weekly_button_test"].findtext("system-out") or ""
    for button in ("btn-00A1B2C3", "btn-00A1B2C4"):
        assert f"passed  {button}: {button}: alarm at the platform" in out, out
        assert f"latency {button} = " in out, out
        assert button in report.read_text()


def _broken(tmp_path: Path, part: str, fault: str) -> Path:
    text = SIM_RIG.read_text()
    text = text.replace(
        f"[{part}]\nsimulated = true\n", f'[{part}]\nsimulated = true\nfault = "{fault}"\n'
    )
    text = text.replace("step_s = 15\n", "step_s = 8\n")  # the broken step waits this long
    rig = tmp_path / "broken.toml"
    rig.write_text(text)
    loaded = rigfile.load(rig)
    assert loaded.model_dump()[part]["fault"] == fault
    assert loaded.timeouts.step_s == 8
    return rig


@pytest.mark.parametrize(
    ("part", "fault", "broken", "healthy", "message"),
    [
        ("receiver", "no_indicate", "button_press", "watch_sos", "INDICATE 0x01"),
        ("watch", "no_confirm", "watch_sos", "button_press", "Alert Confirm 0x01"),
    ],
)
def test_a_broken_part_fails_its_scenario_with_a_clear_message(  # noqa: PLR0917
    tmp_path: Path, part: str, fault: str, broken: str, healthy: str, message: str
) -> None:
    junit = tmp_path / "junit.xml"
    rig = _broken(tmp_path, part, fault)
    result = _hil("run", "--rig", str(rig), "--only", f"{broken},{healthy}", "--junit", str(junit))
    assert result.returncode == 1, result.stdout[-3000:]
    cases = _cases(junit)
    failure = cases[broken].find("failure")
    assert failure is not None
    assert message in (failure.get("message") or ""), failure.get("message")
    assert cases[healthy].find("failure") is None, result.stdout[-3000:]
    assert f"FAIL [{broken}/received]" in result.stdout


@pytest.mark.parametrize("language", ["en_US.UTF-8", "zh_CN.UTF-8"])
async def test_the_guided_mode_runs_through_its_prompts(tmp_path: Path, language: str) -> None:
    """The rig as a technician sees it (real parts: a gateway, its broker, a receiver on a
    port); the test plays the technician and the hardware: it acts on each instruction and
    answers each question from what the simulated receiver really got."""
    sim_rig = rigfile.Rig.model_validate(
        {
            "gateway": {"simulated": True, "id": "gw-guided"},
            "broker": {"simulated": True},
            "receiver": {"simulated": True, "buttons": ["00A1B2C3"]},
        }
    )
    async with SimParts(sim_rig, tmp_path / "sim") as parts:
        receiver = parts.receiver
        assert receiver is not None
        rig = tmp_path / "guided.toml"
        rig.write_text(
            '[rig]\nname = "guided"\ntechnician = "test"\n'
            f'[gateway]\nid = "gw-guided"\nconfig = "{parts.config_path}"\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {parts.broker.port}\n'
            f'[receiver]\nport = "{receiver.port}"\nbuttons = ["00A1B2C3"]\n'
            "[timeouts]\nstep_s = 20\n"
        )
        junit, report = tmp_path / "junit.xml", tmp_path / "report.html"
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")
            },
            "LANG": language,
            "PYTHONPATH": str(ROOT),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hil", "run", "--rig", str(rig),
            "--only", "button_press,button_cancel", "--junit", str(junit), "--report", str(report),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=ROOT, env=env,
        )  # fmt: skip
        assert proc.stdin is not None
        assert proc.stdout is not None
        button = 0x00A1B2C3
        output: list[str] = []
        async with asyncio.timeout(RUN_TIMEOUT_S):
            while line := (await proc.stdout.readline()).decode():
                output.append(line)
                if ">>>  [button_press/press]" in line:
                    await receiver.press(button)
                elif "???  [button_press/received]" in line:
                    proc.stdin.write(await _looked(receiver, button, 1))
                elif "???  [button_press/helped]" in line:
                    proc.stdin.write(await _looked(receiver, button, 2))
                elif ">>>  [button_cancel/press]" in line:
                    proc.stdin.write(b"s\nthis button has no cancel key\n")
                elif ">>>  [notes]" in line:
                    proc.stdin.write("receiver: 接收器 batch 7\n".encode())
            status = await proc.wait()
    text = "".join(output)
    assert status == 0, text
    cases = _cases(junit)
    assert cases["button_press"].find("failure") is None, text
    skipped = cases["button_cancel"].find("skipped")
    assert skipped is not None, text
    assert skipped.get("message") == "this button has no cancel key"
    assert "receiver: 接收器 batch 7" in report.read_text()
    # On the gateway: the receiver's firmware, asked of the daemon.
    properties = {p.get("name"): p.get("value") for p in ET.parse(junit).iter("property")}  # noqa: S314
    assert properties["receiver_firmware"] == "1.4"
    instruction = next(line for line in output if ">>>  [button_press/press]" in line)
    if language.startswith("zh"):
        assert CJK.search(instruction), instruction
    else:
        assert "Press the emergency button btn-00A1B2C3 now" in instruction


async def _looked(receiver: SimReceiver, button: int, pattern: int) -> bytes:
    """The technician looks at the receiver for a few seconds, then answers."""
    try:
        await receiver.wait_for(lambda r: pattern in r.indications(button), 10.0, "INDICATE")
    except TimeoutError:
        return b"n\n"
    return b"y\n"


def test_without_the_simulated_rig_a_simulated_part_is_refused_clearly(tmp_path: Path) -> None:
    """As on an installed gateway: hil without hil/sim."""
    shutil.copytree(
        ROOT / "hil", tmp_path / "hil", ignore=shutil.ignore_patterns("sim", "__pycache__")
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "LANG": "C.UTF-8"}
    # An editable install of the tree maps every module under hil/ (hil.sim too) whatever the
    # path says: without its finder, as a gateway's venv has none.
    without_editable_finder = (
        "import runpy, sys; "
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f)]; "
        "sys.argv[0] = 'hil'; runpy.run_module('hil', run_name='__main__', alter_sys=True)"
    )
    result = subprocess.run(
        [sys.executable, "-c", without_editable_finder, "run", "--rig", str(SIM_RIG)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 78, result.stdout + result.stderr
    assert "hil.sim" in result.stderr
    assert "simulated parts (gateway, broker, receiver, watch, camera)" in result.stderr


def test_an_installed_add_on_command_is_a_carebed_command(tmp_path: Path) -> None:
    """The gateway finds `carebed hil` through the carebed.commands entry points, never by name."""
    (tmp_path / "addon_cmd.py").write_text(
        "def register(commands):\n    commands.add_parser('addon', help='an add-on')\n"
        "def main(args):\n    print('add-on ran')\n    return 7\n"
    )
    info = tmp_path / "addon-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: addon\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[carebed.commands]\naddon = addon_cmd\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "addon"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (7, "add-on ran\n"), result.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert "addon" in listed.stdout


async def test_with_a_real_platform_the_suite_waits_for_its_desk(tmp_path: Path) -> None:
    """[platform] role = "observe": the suite acknowledges nothing; it tells the technician to
    ask the platform's desk, and goes on when that acknowledgement passes on the broker."""
    sim_rig = rigfile.Rig.model_validate(
        {"gateway": {"simulated": True, "id": "gw-observed"}, "broker": {"simulated": True}}
    )
    async with SimParts(sim_rig, tmp_path / "sim") as parts:
        rig = tmp_path / "observe.toml"
        rig.write_text(
            '[gateway]\nid = "gw-observed"\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {parts.broker.port}\n'
            '[platform]\nrole = "observe"\n[timeouts]\nstep_s = 20\n'
        )
        junit = tmp_path / "junit.xml"
        with PlatformClient(parts.broker, client_id="city-desk") as desk:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hil", "run", "--rig", str(rig), "--only", "uplink",
                "--junit", str(junit), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            assert proc.stdin is not None
            assert proc.stdout is not None
            output: list[str] = []
            async with asyncio.timeout(RUN_TIMEOUT_S):
                while line := (await proc.stdout.readline()).decode():
                    output.append(line)
                    asked = re.search(r"acknowledge alarm (\S+)\.", line)
                    if asked:
                        await asyncio.to_thread(desk.ack, "gw-observed", [asked[1]], "operator 7")
                    elif ">>>  [notes]" in line:
                        proc.stdin.write(b"\n")
                status = await proc.wait()
            text = "".join(output)
            assert status == 0, text
    assert _cases(junit)["uplink"].find("failure") is None
    step = next(line for line in output if "[uplink/ack]" in line and "ok" in line)
    assert "the platform's desk acknowledges the alarm" in step
    assert "operator 7" in text.split("[uplink/ack]", 2)[-1]


def test_the_daemon_loads_no_add_on(tmp_path: Path) -> None:
    """`carebed run` (and every other command) leaves the add-ons unloaded."""
    (tmp_path / "addon_cmd.py").write_text("raise RuntimeError('loaded')\n")
    info = tmp_path / "addon-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: addon\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[carebed.commands]\naddon = addon_cmd\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "schema", "config"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "loaded" not in result.stderr
    broken = subprocess.run(
        [sys.executable, "-m", "gateway", "addon"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert "command addon cannot load" in broken.stderr


async def test_a_guided_step_fails_at_its_deadline_with_what_was_observed(tmp_path: Path) -> None:
    """Nobody presses: the step fails after [timeouts] step_s, saying so and showing what the
    gateway did send."""
    sim_rig = rigfile.Rig.model_validate(
        {
            "gateway": {"simulated": True, "id": "gw-idle"},
            "broker": {"simulated": True},
            "receiver": {"simulated": True, "buttons": ["00A1B2C3"]},
        }
    )
    async with SimParts(sim_rig, tmp_path / "sim") as parts:
        assert parts.receiver is not None
        rig = tmp_path / "idle.toml"
        rig.write_text(
            '[gateway]\nid = "gw-idle"\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {parts.broker.port}\n'
            f'[receiver]\nport = "{parts.receiver.port}"\nbuttons = ["00A1B2C3"]\n'
            "[timeouts]\nstep_s = 2\n"
        )
        junit = tmp_path / "junit.xml"
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "hil", "run", "--rig", str(rig), "--only", "button_press",
             "--junit", str(junit)],
            input="\n", capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
            cwd=ROOT, env={**os.environ, "LANG": "C.UTF-8"},
        )  # fmt: skip
    assert result.returncode == 1, result.stdout
    failure = _cases(junit)["button_press"].find("failure")
    assert failure is not None
    assert failure.get("message") == "alarm.button at the platform: nothing within 2 s"
    assert "observed: " in result.stdout
    assert "gateway.started" in result.stdout or "status" in result.stdout
