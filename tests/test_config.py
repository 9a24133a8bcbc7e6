"""Configuration: validation, clear errors, and the CLI's exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import config
from gateway.core.errors import ConfigError
from hil.sim.pki import Pki

EXAMPLE = Path(__file__).parent.parent / "config" / "carebed.example.toml"
EXIT_CONFIG = 78

GOOD_PLAIN = """
[gateway]
id = "gw-test"
state_dir = "state"
[mqtt]
host = "127.0.0.1"
plaintext = true
"""


def carebed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "carebed.toml"
    path.write_text(text)
    return path


def tls_config(tmp_path: Path, *, keep: bool = False, **files: str) -> str:
    for name in () if keep else ("ca.pem", "gw.pem", "gw.key"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    paths = {"ca_file": "ca.pem", "cert_file": "gw.pem", "key_file": "gw.key", **files}
    lines = "\n".join(f'{key} = "{value}"' for key, value in paths.items())
    return f'[gateway]\nid = "gw-test"\n[mqtt]\nhost = "broker"\n[mqtt.tls]\n{lines}\n'


def test_good_config_loads_with_relative_paths_resolved(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, tls_config(tmp_path)))
    assert cfg.mqtt.tls is not None
    assert cfg.mqtt.tls.cert_file == tmp_path / "gw.pem"
    assert cfg.mqtt.effective_port == 8883
    assert cfg.mqtt_username == "gw-test"


def test_example_config_parses_apart_from_its_certificate_files() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(EXAMPLE)
    assert all("file not found" in problem for problem in caught.value.problems)


def test_config_models_are_frozen(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD_PLAIN))
    with pytest.raises(ValueError, match="frozen"):
        cfg.gateway.heartbeat_s = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (GOOD_PLAIN + "colour = 'red'\n", "mqtt.colour", "unknown key"),
        (GOOD_PLAIN.replace("gw-test", "GW_1"), "gateway.id", "a-z, 0-9"),
        (GOOD_PLAIN.replace("plaintext = true", ""), "mqtt.tls", "plaintext = true"),
        (GOOD_PLAIN + "protocol = '4'\n", "mqtt.protocol", "'5' or '3.1.1'"),
        (GOOD_PLAIN + "[outbox]\ngroup_commit_s = 601\n", "outbox.group_commit_s", "less than"),
        (
            GOOD_PLAIN + '[camera]\nenabled = true\nurl = "https://10.0.0.9"\n',
            "camera.fingerprint_sha256",
            "SHA-256 fingerprint",
        ),
        (
            GOOD_PLAIN + '[camera]\nurl = "https://10.0.0.9"\nfingerprint_sha256 = "AB:CD"\n',
            "camera.fingerprint_sha256",
            "64 hex digits",
        ),
        (
            GOOD_PLAIN + '[camera]\nurl = "http://admin:pw@10.0.0.9"\n',
            "camera.url",
            "credentials in the URL",
        ),
    ],
    ids=[
        "unknown-key",
        "bad-id",
        "plaintext-not-explicit",
        "bad-protocol",
        "commit-window",
        "camera-without-pin",
        "camera-bad-pin",
        "camera-url-credentials",
    ],
)
def test_bad_config_names_the_key_and_exits_78(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    for args in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = carebed(*args)
        assert result.returncode == EXIT_CONFIG, result.stderr
        problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
        assert len(problems) == 1, result.stderr
        assert problems[0].startswith(f"  - {key}")
        assert words in problems[0]
        assert "Traceback" not in result.stderr


def test_missing_certificate_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, tls_config(tmp_path, cert_file="missing.pem"))
    result = carebed("check-config", str(path))
    assert result.returncode == EXIT_CONFIG
    assert "mqtt.tls.cert_file: file not found" in result.stderr
    assert str(tmp_path / "missing.pem") in result.stderr


def test_secrets_are_never_printed(tmp_path: Path) -> None:
    text = GOOD_PLAIN + 'password = ["hunter2-secret"]\n'
    result = carebed("check-config", str(write(tmp_path, text)))
    assert result.returncode == EXIT_CONFIG
    assert "mqtt.password" in result.stderr
    assert "hunter2" not in result.stderr


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    result = carebed("check-config", str(tmp_path / "nope.toml"))
    assert result.returncode == EXIT_CONFIG
    assert "cannot read the file" in result.stderr
    result = carebed("check-config", str(write(tmp_path, "[gateway\n")))
    assert result.returncode == EXIT_CONFIG
    assert "not valid TOML" in result.stderr


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    result = carebed("check-config", str(write(tmp_path, GOOD_PLAIN)))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_schema_command_prints_config_and_uplink_schemas() -> None:
    result = carebed("schema")
    assert result.returncode == 0
    schemas = json.loads(result.stdout)
    assert set(schemas) == {"config", "uplink"}
    assert set(schemas["uplink"]) == {"events", "status"}
    assert schemas["config"]["additionalProperties"] is False


SECRET = "Zq-hunter2-0a9b8c7d"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (GOOD_PLAIN + f'pasword = "{SECRET}"\n', "mqtt.pasword: unknown key (did you mean"),
        (GOOD_PLAIN + f'[MQTT]\npassword = "{SECRET}"\n', "MQTT: unknown section"),
        (GOOD_PLAIN + f'[camera]\npass = "{SECRET}"\n', "camera.pass: unknown key"),
        (GOOD_PLAIN + f'[Camera]\nuser = "admin"\npassword = "{SECRET}"\n', "Camera: unknown"),
        (
            GOOD_PLAIN.replace("[mqtt]", "[[mqtt]]") + f'password = "{SECRET}"\n',
            "mqtt: should be a table (got an array of tables)",
        ),
        (GOOD_PLAIN + f'password = {{ value = "{SECRET}" }}\n', "mqtt.password:"),
        (GOOD_PLAIN + f'secrets = ["{SECRET}"]\n', "mqtt.secrets: unknown key"),
        (GOOD_PLAIN + f'password = "{SECRET}\n', "not valid TOML at line 8"),
        (GOOD_PLAIN + f"password = {SECRET}\n", "not valid TOML at line 8, column 12: invalid"),
        (
            GOOD_PLAIN + f'password = "{SECRET}"\npassword = "{SECRET}"\n',
            "not valid TOML at line 9, column 33: a key that is set twice",
        ),
        (GOOD_PLAIN + f'[camera]\nurl = "admin:{SECRET}@10.0.0.9"\n', "camera.url:"),
        (GOOD_PLAIN + f'[camera.x]\npassword = "{SECRET}"\n', "camera.x: unknown table"),
    ],
    ids=[
        "misspelt-key",
        "upper-case-section",
        "short-key",
        "capitalised-section",
        "array-of-tables",
        "password-as-a-table",
        "unknown-key-with-an-array",
        "unterminated-string",
        "unquoted-string",
        "repeated-key",
        "credentials-in-a-url",
        "unknown-subtable",
    ],
)
def test_a_mistyped_configuration_never_prints_the_password(
    tmp_path: Path, text: str, named: str
) -> None:
    path = write(tmp_path, text)
    for args in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = carebed(*args)
        assert result.returncode == EXIT_CONFIG, result.stderr
        assert SECRET not in result.stderr + result.stdout
        assert SECRET[:8] not in result.stderr + result.stdout
        problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
        assert any(line.startswith(f"  - {named}") for line in problems), result.stderr
        assert all("(fix: " in line for line in problems), result.stderr


@pytest.mark.parametrize("key", ["mqtt.password", "camera.password"])
def test_a_password_in_a_file_everyone_can_read_gets_a_warning(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    text = GOOD_PLAIN + (f'{name} = "{SECRET}"\n' if section == "mqtt" else "")
    text += f'[camera]\npassword = "{SECRET}"\n' if section == "camera" else ""
    path = write(tmp_path, text)
    path.chmod(0o644)
    result = carebed("check-config", str(path))
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
    assert key in warning
    assert "every user of this machine can read it" in warning
    assert f"(fix: chmod 640 {path} && chgrp " in warning
    assert SECRET not in result.stderr + result.stdout
    path.chmod(0o640)
    result = carebed("check-config", str(path))
    assert result.returncode == 0
    assert "warning" not in result.stderr


def test_a_file_everyone_can_read_without_a_password_gets_no_warning(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_PLAIN + 'password = ""\n')
    path.chmod(0o644)
    result = carebed("check-config", str(path))
    assert result.returncode == 0
    assert result.stderr == ""


def test_a_tls_key_everyone_can_read_gets_a_warning(tmp_path: Path, pki: Pki) -> None:
    client = pki.client("gw-a")
    files = {"ca.pem": pki.ca_cert, "gw.pem": client.cert, "gw.key": client.key}
    for name, source in files.items():
        (tmp_path / name).write_bytes(source.read_bytes())
    key = tmp_path / "gw.key"
    key.chmod(0o644)
    path = write(tmp_path, tls_config(tmp_path, keep=True))
    result = carebed("check-config", str(path))
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warning.startswith("carebed: warning: mqtt.tls.key_file: every user of this machine")
    assert f"(fix: chmod 640 {key} && chgrp " in warning
    assert "PRIVATE KEY" not in result.stderr
    key.chmod(0o640)
    assert carebed("check-config", str(path)).stderr == ""
