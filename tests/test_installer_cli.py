# ruff: noqa: RUF001 - the full-width characters are what these tests are about
"""What the installer sees: Chinese under zh_CN, keyboard mistakes named, --version, --config
after the action word, no traceback on any error path, the systemd status line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import config
from gateway.cli import main as cli_main
from gateway.core.errors import ConfigError
from hil.sim.broker import Mosquitto
from hil.sim.pki import Pki
from tests.support.daemon import GatewayProcess, gateway_config

EXIT_CONFIG = 78
GOOD = """[gateway]
id = "gw-test"
state_dir = "state"
[mqtt]
host = "127.0.0.1"
port = 1883
plaintext = true
"""
ZH = {"LANG": "zh_CN.UTF-8", "LANGUAGE": "zh_CN"}
EN = {"LANG": "C.UTF-8", "LANGUAGE": ""}


def carebed(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    environ.update(env or EN)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ,
    )


def write(tmp_path: Path, text: str, name: str = "carebed.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_check_config_errors_are_chinese_under_zh_cn(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("gw-test", "GW_1").replace("1883", "70000"))
    result = carebed("check-config", str(path), env=ZH)
    assert result.returncode == EXIT_CONFIG
    assert "配置文件" in result.stderr and "有错误" in result.stderr
    assert "gateway.id：" in result.stderr and "解决" in result.stderr
    assert "mqtt.port：应小于或等于 65535" in result.stderr
    assert "Traceback" not in result.stderr
    english = carebed("check-config", str(path))
    assert "configuration error" in english.stderr and "配置" not in english.stderr


def test_chinese_without_the_libc_locale_installed(tmp_path: Path) -> None:
    """Only LANG is set (no LANGUAGE), to a locale this machine may not have generated."""
    result = carebed("check-config", str(write(tmp_path, GOOD)), env={"LANG": "zh_CN.UTF-8"})
    assert result.returncode == 0, result.stderr
    assert "正确" in result.stdout


@pytest.mark.parametrize(
    ("text", "line", "char", "fix"),
    [
        (GOOD.replace('"gw-test"', "“gw-test”"), 2, "“", 'with "'),
        (GOOD.replace("[mqtt]", "［mqtt］"), 4, "［", "with ["),
        (GOOD.replace("port = 1883", "port = １８８３"), 6, "１８８３", "with 1883"),
        (GOOD.replace("port = 1883", "port\u3000= 1883"), 6, "space", "ordinary space"),
        (GOOD.replace("port = 1883", "port ＝ 1883"), 6, "＝", "with ="),
        (GOOD.replace("port = 1883", "port： 1883"), 6, "：", "with ="),
        (GOOD.replace('"127.0.0.1"', "'127.0.0.1’"), 5, "’", "with '"),
    ],
    ids=["quotes", "brackets", "digits", "ideographic-space", "equals", "colon", "single-quote"],
)
def test_a_chinese_keyboard_mistake_is_named_with_its_line_and_fix(
    tmp_path: Path, text: str, line: int, char: str, fix: str
) -> None:
    result = carebed("check-config", str(write(tmp_path, text)))
    assert result.returncode == EXIT_CONFIG, result.stderr
    problems = [p for p in result.stderr.splitlines() if p.startswith("  - ")]
    assert problems and problems[0].startswith(f"  - not valid TOML at line {line}, column ")
    assert char in problems[0] and fix in problems[0] and f"on line {line}" in problems[0]
    chinese = carebed("check-config", str(write(tmp_path, text)), env=ZH)
    assert f"第 {line} 行" in chinese.stderr and "中文输入法" in chinese.stderr


def test_full_width_quotes_get_the_named_hint_in_chinese(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"127.0.0.1"', "“127.0.0.1”"))
    result = carebed("check-config", str(path), env=ZH)
    assert result.returncode == EXIT_CONFIG
    assert "第 5 行第 8 列：全角引号 “" in result.stderr
    assert '把全角引号 “换成 "' in result.stderr


def test_a_leading_bom_is_read_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "carebed.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    result = carebed("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "byte-order mark" in result.stderr and "warning" in result.stderr


def test_a_string_value_with_full_width_characters_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port = 1883", 'port = "１８８３"'))
    result = carebed("check-config", str(path))
    assert result.returncode == EXIT_CONFIG
    assert (
        "mqtt.port" in result.stderr and "replace the full-width digit １ with 1" in result.stderr
    )


# Where a Chinese input method puts a full-width twin in place of what TOML needs.
TWINS = {'"': "“”＂", "[": "［【", "]": "］】", "=": "＝：", "1": "１", "8": "８", " ": "\u3000"}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_injected_keyboard_mistake_gives_a_named_error(
    tmp_path: Path, data: st.DataObject
) -> None:
    text = GOOD + '[alarms]\nack_timeout_s = 18\n[watch]\naddresses = ["C0:FF:EE:00:00:01"]\n'
    structural = [
        i for i, c in enumerate(text) if c in TWINS and (c in '"[]=' or _outside_string(text, i))
    ]
    count = data.draw(st.integers(1, 3))
    chosen = sorted(
        data.draw(
            st.lists(st.sampled_from(structural), min_size=count, max_size=count, unique=True)
        )
    )
    chars = list(text)
    for i in chosen:
        chars[i] = data.draw(st.sampled_from(TWINS[text[i]]))
    mistaken = "".join(chars)
    path = write(tmp_path, mistaken)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    first = chosen[0]
    line = text[:first].count("\n") + 1
    assert any(
        p.startswith(f"not valid TOML at line {line}, column ") and "Chinese input mode" in p
        for p in caught.value.problems
    ), caught.value.problems


def _outside_string(text: str, index: int) -> bool:
    line_start = text.rfind("\n", 0, index) + 1
    return text[line_start:index].count('"') % 2 == 0


def test_version() -> None:
    result = carebed("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("carebed ")


def test_config_after_the_action_word(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    for args in (
        ["button", "list", "--config", str(path)],
        ["button", "--config", str(path), "list"],
        ["watch", "list", "--config", str(path)],
        ["check-config", "--config", str(path)],
    ):
        result = carebed(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert str(tmp_path / "state") in result.stdout or "OK" in result.stdout, result.stdout
    result = carebed("button", "list", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == EXIT_CONFIG and "missing.toml" in result.stderr


def test_the_installer_commands_take_config_before_or_after_the_action_word(
    tmp_path: Path,
) -> None:
    path = tmp_path / "elsewhere.toml"
    parse = cli_main._parser().parse_args
    for args in (
        ["doctor", "--config", str(path)],
        ["doctor", "--json", "--config", str(path)],
        ["status", "--config", str(path)],
        ["test-alarm", "--config", str(path), "--timeout", "5"],
        ["support-bundle", "--config", str(path)],
        ["tls", "--config", str(path), "request"],
        ["tls", "request", "--config", str(path)],
        ["tls", "request", "--force", "--config", str(path)],
    ):
        assert parse(args).config == path, args
    assert parse(["tls", "request"]).config == cli_main.DEFAULT_CONFIG
    assert parse(["tls", "--config", str(path), "request"]).action == "request"
    # Where it matters: the key lands where the configuration given after the word says.
    config = write(
        tmp_path,
        '[gateway]\nid = "gw-0042"\n[mqtt]\nhost = "broker"\n[mqtt.tls]\n'
        'ca_file = "ca.pem"\ncert_file = "gw.pem"\nkey_file = "gw.key"\n',
    )
    result = carebed("tls", "request", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gw.key").is_file()
    chinese = carebed("tls", "request", "--help", env=ZH)
    assert "配置文件" in chinese.stdout and "私钥" in chinese.stdout, chinese.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["button", "unpair", "foo"], "is not a button id"),
        (["watch", "unpair", "foo"], "not a BLE address"),
        (["button", "pair", "--seconds", "0"], "--seconds must be from 1 to 255"),
        (["button", "pair"], "start it first"),
        (["camera", "test"], "no camera is configured"),
    ],
)
def test_error_paths_give_a_sentence_and_no_traceback(
    tmp_path: Path, args: list[str], words: str
) -> None:
    path = write(tmp_path, GOOD)
    result = carebed(*args, "--config", str(path))
    assert result.returncode == 1, result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


NOBODY = 65534
# root may use any socket: without CAP_DAC_OVERRIDE it may not use one another user owns
WITHOUT_OVERRIDE = ("setpriv", "--bounding-set=-dac_override", "--inh-caps=-dac_override")


def test_a_control_socket_without_permission_is_explained(tmp_path: Path) -> None:
    sock_path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen()
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root may use any socket, and setpriv (util-linux) is missing")
        os.chown(sock_path, NOBODY, NOBODY)
        sock_path.chmod(0o600)
        prefix = WITHOUT_OVERRIDE
    else:
        sock_path.chmod(0)
    try:
        path = write(
            tmp_path,
            GOOD.replace(
                'state_dir = "state"', f'state_dir = "state"\ncontrol_socket = "{sock_path}"'
            ),
        )
        result = carebed("button", "list", "--config", str(path), prefix=prefix)
        assert result.returncode == 1, result.stderr
        assert "not allowed to use" in result.stderr and "carebed group" in result.stderr
        assert "Traceback" not in result.stderr
        chinese = carebed("button", "list", "--config", str(path), env=ZH, prefix=prefix)
        assert "没有权限使用网关服务的控制接口" in chinese.stderr
    finally:
        server.close()


def test_a_control_socket_nobody_answers_on_is_the_daemon_not_running(tmp_path: Path) -> None:
    sock_path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.close()  # the file stays, nobody listens: a daemon that died
    path = write(
        tmp_path,
        GOOD.replace('state_dir = "state"', f'state_dir = "state"\ncontrol_socket = "{sock_path}"'),
    )
    result = carebed("button", "list", "--config", str(path))
    assert result.returncode == 0 and "the daemon is not running" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.fixture
def tls_files(tmp_path: Path, pki: Pki) -> dict[str, Path]:
    client = pki.client("gw-a")
    other = pki.client("gw-b")
    files = {
        "ca": pki.ca_cert,
        "cert": client.cert,
        "key": client.key,
        "other_key": other.key,
    }
    return {name: Path(source) for name, source in files.items()}


def _tls(tmp_path: Path, ca: Path, cert: Path, key: Path) -> Path:
    text = GOOD.replace("plaintext = true\n", "") + (
        f'[mqtt.tls]\nca_file = "{ca}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    )
    return write(tmp_path, text)


@pytest.mark.parametrize(
    ("swap", "first", "named"),
    [
        ("both", "mqtt.tls.cert_file and mqtt.tls.key_file are swapped", "mqtt.tls.key_file"),
        ("key-as-cert", "mqtt.tls.cert_file:", "mqtt.tls.key_file"),
        ("cert-as-key", "mqtt.tls.key_file:", "mqtt.tls.cert_file"),
        ("other-key", "mqtt.tls.key_file:", "mqtt.tls.cert_file"),
    ],
)
def test_a_swapped_certificate_and_key_is_a_configuration_error(
    tmp_path: Path, tls_files: dict[str, Path], swap: str, first: str, named: str
) -> None:
    ca, cert, key = tls_files["ca"], tls_files["cert"], tls_files["key"]
    cert, key = {
        "both": (key, cert),
        "key-as-cert": (key, key),
        "cert-as-key": (cert, cert),
        "other-key": (cert, tls_files["other_key"]),
    }[swap]
    path = _tls(tmp_path, ca, cert, key)
    for args in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = carebed(*args)
        assert result.returncode == EXIT_CONFIG, result.stderr
        (problem,) = [p for p in result.stderr.splitlines() if p.startswith("  - ")]
        assert problem.startswith(f"  - {first}") and named in problem, problem
        assert "Traceback" not in result.stderr
    chinese = carebed("check-config", str(path), env=ZH)
    assert chinese.returncode == EXIT_CONFIG and "解决" in chinese.stderr


def test_a_missing_receiver_port_is_named_at_once(tmp_path: Path) -> None:
    text = GOOD + '[button]\nenabled = true\nport = "/dev/carebed-no-such-port"\n'
    result = carebed("check-config", str(write(tmp_path, text)))
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
    assert "button.port: /dev/carebed-no-such-port does not exist" in warning


def test_run_logs_a_missing_receiver_port_at_start(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config_path = gateway_config(
        tmp_path, mosquitto, button={"enabled": True, "port": str(tmp_path / "no-tty")}
    )
    daemon = GatewayProcess(config_path, tmp_path / "gateway.log")
    daemon.start()
    try:
        daemon.wait_started()
        log = daemon.log_text()
        assert log.index("button_port_missing") < log.index("gateway_started")
    finally:
        daemon.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(15)
    yield sock
    sock.close()


def _status_until(sock: socket.socket, wanted: str) -> list[str]:
    seen: list[str] = []
    while True:  # each recv raises on timeout
        for line in sock.recv(4096).decode().splitlines():
            if line.startswith("STATUS="):
                seen.append(line.removeprefix("STATUS="))
        if seen and wanted in seen[-1]:
            return seen


@pytest.mark.parametrize(("env", "wanted"), [(EN, "uplink up"), (ZH, "平台已连接")])
def test_the_systemd_status_line_shows_the_real_state(
    tmp_path: Path,
    mosquitto: Mosquitto,
    notify_socket: socket.socket,
    env: dict[str, str],
    wanted: str,
) -> None:
    config_path = gateway_config(
        tmp_path, mosquitto, button={"enabled": True, "port": str(tmp_path / "no-tty")}
    )
    daemon = GatewayProcess(config_path, tmp_path / "gateway.log")
    daemon.start({"NOTIFY_SOCKET": notify_socket.getsockname(), **env})
    try:
        seen = _status_until(notify_socket, wanted)
        if env is EN:
            assert seen[-1] == "uplink up, 0 buttons, 0 alarms pending", seen
        else:
            assert seen[-1] == "平台已连接，0 个按钮，0 条报警待确认", seen
    finally:
        daemon.close()


def test_the_running_daemon_answers_in_the_installers_language(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # The daemon runs in English (as under systemd); each command through its control socket
    # is answered in the language of whoever asked.
    config_path = gateway_config(
        tmp_path, mosquitto, button={"enabled": True, "port": str(tmp_path / "no-tty")}
    )
    daemon = GatewayProcess(config_path, tmp_path / "gateway.log")
    daemon.start(EN)
    try:
        daemon.wait_started()
        asked = {
            ("button", "pair"): ("按钮接收器", "the button receiver is not connected"),
            ("watch", "scan"): ("没有启用手表", "watches are not enabled"),
            ("camera", "test"): ("没有配置摄像头", "no camera is configured"),
        }
        for args, (chinese, english) in asked.items():
            for env, words in ((ZH, chinese), (EN, english)):
                result = carebed(*args, "--config", str(config_path), env=env)
                assert result.returncode == 1, (args, result.stdout, result.stderr)
                assert words in result.stderr, (args, env, result.stderr)
                assert "Traceback" not in result.stderr + result.stdout
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.close()
