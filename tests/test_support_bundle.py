"""``carebed support-bundle``: everything support needs, no secret."""

from __future__ import annotations

import asyncio
import json
import stat
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli.bundle import REDACTED, SECRET_KEY, collect, filtered_journal, redact
from hil.sim.broker import Mosquitto
from hil.sim.camera import SimCamera
from hil.sim.pki import Pki
from tests.gateway_rig import running_gateway, wait_until
from tests.test_doctor import carebed


async def test_support_bundle_holds_no_secret(
    tmp_path: Path, mosquitto_tls: Mosquitto, pki: Pki
) -> None:
    secrets = ("mqtt-S3cret-pass", "cam-S3cret-pass")
    async with (
        SimCamera(password=secrets[1]) as camera,
        running_gateway(
            tmp_path,
            mosquitto_tls,
            mqtt={"password": secrets[0]},
            camera={"enabled": True, "url": camera.base_url, "password": secrets[1]},
        ) as running,
    ):
        await wait_until(running.gateway.uplink.connected.is_set, 20, "the uplink")
        status, out = await carebed(
            tmp_path / "carebed.toml", "support-bundle", "--output", str(tmp_path)
        )
    assert status == 0, out
    path = Path(out.strip().splitlines()[-1])
    assert path.parent == tmp_path and path.name.startswith("carebed-support-gw-a-")
    assert stat.S_IMODE((await asyncio.to_thread(path.stat)).st_mode) == 0o600
    key_text = pki.client("gw-a").key.read_text()
    key_body = "".join(key_text.splitlines()[1:-1])
    with tarfile.open(path) as tar:
        members = {
            m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }
    assert set(members) >= {
        "config.json",
        "certificates.txt",
        "journal.txt",
        "status.json",
        "outbox.json",
        "versions.txt",
    }
    everything = "\n".join(members.values())
    for secret in (*secrets, key_body[:40], "PRIVATE KEY"):
        assert secret not in everything, secret
    config = json.loads(members["config.json"])
    assert config["mqtt"]["password"] == "<redacted>"
    assert config["camera"]["password"] == "<redacted>"
    assert config["mqtt"]["tls"]["key_file"] == str(pki.client("gw-a").key)  # a path stays
    assert "subject CN=gw-a" in members["certificates.txt"]
    assert json.loads(members["status.json"])["uplink"]["connected"] is True
    assert "queued" in json.loads(members["outbox.json"])["daemon"]
    assert "carebed " in members["versions.txt"] and "python 3." in members["versions.txt"]
    assert members["journal.txt"].strip()  # the journal, or why there is none

    # The daemon stopped: said so, and still no secret.
    status, out = await carebed(
        tmp_path / "carebed.toml", "support-bundle", "--output", str(tmp_path)
    )
    assert status == 0, out
    with tarfile.open(out.strip().splitlines()[-1]) as tar:
        members = {
            m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }
    assert json.loads(members["status.json"]) == {"daemon": "not running"}
    assert "outbox.sqlite3" in json.loads(members["outbox.json"])["files"]
    for secret in (*secrets, "PRIVATE KEY"):
        assert secret not in "\n".join(members.values()), secret


def test_bundle_redaction_keeps_paths_and_hides_secrets() -> None:
    data = {
        "mqtt": {"password": "x", "tls": {"key_file": "/k"}, "host": "h"},
        "camera": {"url": "http://u:p@cam", "token": "t", "user": "admin"},
    }
    assert redact(data) == {
        "mqtt": {"password": "<redacted>", "tls": {"key_file": "/k"}, "host": "h"},
        "camera": {"url": "<redacted>", "token": "<redacted>", "user": "admin"},
    }


SECRET_NAMES = st.sampled_from(["password", "api_token", "secret", "private_key", "Auth", "pwd"])
PLAIN_NAMES = st.sampled_from(["host", "port", "user", "name", "key_file", "url", "id"])
VALUES = st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.floats(allow_nan=False))


def _tables(depth: int) -> st.SearchStrategy[dict[str, object]]:
    leaf = st.one_of(VALUES, st.lists(VALUES, max_size=3))
    inner = leaf if depth == 0 else st.one_of(leaf, _tables(depth - 1))
    return st.dictionaries(st.one_of(SECRET_NAMES, PLAIN_NAMES), inner, max_size=5)


def _leaves(data: object, keys: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Each value with the keys that lead to it."""
    if isinstance(data, dict):
        return [leaf for name, value in data.items() for leaf in _leaves(value, (*keys, name))]
    if isinstance(data, list):
        return [leaf for item in data for leaf in _leaves(item, keys)]
    return [(keys, data)]


@given(_tables(3))
def test_redaction_hides_every_value_under_a_secret_name(data: dict[str, object]) -> None:
    redacted = redact(data)
    assert set(redacted) == set(data)  # the shape stays: support sees which keys were set
    for keys, value in _leaves(redacted):
        if any(SECRET_KEY.search(key) and not key.endswith("_file") for key in keys):
            assert value == REDACTED, keys
        if isinstance(value, str) and "@" in value and "://" in value:
            raise AssertionError(f"credentials in a URL kept under {keys}")
    json.dumps(redacted)  # and it can be written


# ------------------------------------------------------------------ secrets where they do not go


def _pasted_key(pki: Pki) -> str:
    return pki.client("gw-a").key.read_text()


def _leaky_config(tmp_path: Path, key_file: str) -> Path:
    """What installers really do: the key pasted where its path goes, a token in the camera's
    URL, and a table the gateway does not know holding enrolment codes."""
    (tmp_path / "state").mkdir(exist_ok=True)
    config = tmp_path / "carebed.toml"
    config.write_text(
        f'[gateway]\nid = "gw-a"\nstate_dir = "{tmp_path / "state"}"\n'
        f'control_socket = "{tmp_path / "control.sock"}"\n'
        '[mqtt]\nhost = "127.0.0.1"\nport = 1\n'
        f'[mqtt.tls]\nca_file = "{tmp_path / "ca.crt"}"\ncert_file = "{tmp_path / "gw.crt"}"\n'
        f'key_file = """{key_file}"""\n'
        '[camera]\nenabled = true\nurl = "http://192.168.1.5/api?token=CAMTOKEN123"\n'
        '[provisioning]\nenrolment = "ENROL-SECRET-9876"\notp = "OTP-424242"\n'
        'psk = "WIFI-PSK-SECRET"\n'
    )
    return config


LEAKS = ("CAMTOKEN123", "ENROL-SECRET-9876", "OTP-424242", "WIFI-PSK-SECRET", "PRIVATE KEY")


async def test_a_pasted_key_and_tokens_stay_out_of_the_bundle_and_the_doctor(
    tmp_path: Path, pki: Pki
) -> None:
    key = _pasted_key(pki)
    body = "".join(key.splitlines()[1:-1])[:30]
    config = _leaky_config(tmp_path, key)
    status, out = await carebed(config, "support-bundle", "--output", f"{tmp_path}/")
    assert status == 0, out
    with tarfile.open(out.strip().splitlines()[-1]) as tar:
        members = {
            m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }
    for name, text in members.items():
        for secret in (*LEAKS, body):
            assert secret not in text, (name, secret)
    assert "mqtt.tls.key_file" in members["config-problems.txt"]
    assert "not a path" in members["config-problems.txt"]
    assert "provisioning" not in json.loads(members["config.json"])  # unknown: left out

    # The doctor, check-config and the daemon's own refusal (the journal's exit-78 line).
    for command in (("doctor", "--boot-dir", str(tmp_path)), ("check-config",), ("run",)):
        status, out = await carebed(config, *command)
        assert status in (1, 78), out
        assert "key_file" in out and "pasted key" in out, out
        for secret in (*LEAKS, body):
            assert secret not in out, (command, secret)


async def test_the_bundle_reads_a_valid_configuration_with_the_url_token_masked(
    tmp_path: Path, pki: Pki
) -> None:
    config = _leaky_config(tmp_path, str(pki.client("gw-a").key))
    text = config.read_text().split("[provisioning]")[0]
    config.write_text(
        text.replace(f'"{tmp_path / "ca.crt"}"', f'"{pki.ca_cert}"').replace(
            f'"{tmp_path / "gw.crt"}"', f'"{pki.client("gw-a").cert}"'
        )
    )
    status, out = await carebed(config, "support-bundle", "--output", str(tmp_path / "b.tgz"))
    assert status == 0, out
    with tarfile.open(tmp_path / "b.tgz") as tar:
        member = tar.extractfile("carebed-support/config.json")
        assert member is not None
        dumped = json.loads(member.read())
    assert dumped["camera"]["url"] == f"http://192.168.1.5/api?token={REDACTED}"
    assert dumped["mqtt"]["tls"]["key_file"] == str(pki.client("gw-a").key)
    assert dumped["mqtt"]["port"] == 1 and dumped["mqtt"]["password"] == REDACTED


def test_the_journal_is_filtered() -> None:
    key = (
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
        "-----END PRIVATE KEY-----"
    )
    journal = (
        "Dec 07 carebed[1]: started\n"
        f"Dec 07 carebed[1]: bad value {key}\n"
        "Dec 07 carebed[1]: GET http://cam/api?token=T0KEN&x=1 password=hunter2 psk: 'W1F1'\n"
        "Dec 07 carebed[1]: MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZZZZ\n"
    )
    filtered = filtered_journal(journal)
    for secret in ("MIGHAgEA", "T0KEN", "hunter2", "W1F1", "BEGIN PRIVATE"):
        assert secret not in filtered, secret
    assert "started" in filtered and "x=1" in filtered


SECRET = st.from_regex(r"[A-Za-z0-9]{12,20}", fullmatch=True).map(lambda s: f"Zq{s}")
KNOWN_STRINGS = st.sampled_from(
    [
        ("mqtt", "host"),
        ("mqtt", "port"),  # the wrong type: its value is shown in the problem
        ("mqtt", "tls", "key_file"),
        ("mqtt", "tls", "ca_file"),
        ("gateway", "state_dir"),
        ("camera", "url"),
        ("camera", "user"),
        ("button", "port"),
    ]
)
UNKNOWN_NAME = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True).filter(
    lambda name: name not in {"gateway", "mqtt", "camera", "button", "watch", "tls"}
)


def _placements(secret: str) -> st.SearchStrategy[tuple[tuple[str, ...], str]]:
    pem = f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"
    return st.one_of(
        KNOWN_STRINGS.map(lambda where: (where, pem)),  # a key pasted anywhere
        st.just((("camera", "url"), f"http://192.168.1.5/api?token={secret}")),
        st.sampled_from([("mqtt", "password"), ("camera", "password")]).map(
            lambda where: (where, secret)
        ),
        st.tuples(
            st.sampled_from([(), ("gateway",), ("mqtt",), ("camera",), ("mqtt", "tls")]),
            UNKNOWN_NAME,
            UNKNOWN_NAME,
        ).map(lambda t: ((*t[0], t[1], t[2]) if not t[0] else (*t[0], t[1]), secret)),
    )


def _toml(data: dict[str, object], prefix: str = "") -> str:
    scalars = [f"{name} = {json.dumps(v)}" for name, v in data.items() if not isinstance(v, dict)]
    text = (f"[{prefix}]\n" if prefix else "") + "".join(line + "\n" for line in scalars)
    for name, value in data.items():
        if isinstance(value, dict):
            text += _toml(value, f"{prefix}.{name}" if prefix else name)  # type: ignore[arg-type]
    return text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_secret_anywhere_in_the_configuration_never_reaches_the_bundle(
    data: st.DataObject,
) -> None:
    secret = data.draw(SECRET)
    where, value = data.draw(_placements(secret))
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        (base / "state").mkdir()
        config: dict[str, object] = {
            "gateway": {"id": "gw-a", "state_dir": str(base / "state")},
            "mqtt": {"host": "127.0.0.1", "plaintext": True},
            "camera": {"enabled": False},
        }
        table = config
        for part in where[:-1]:
            table = table.setdefault(part, {})  # type: ignore[assignment]
        table[where[-1]] = value
        if "tls" in where:
            mqtt = config["mqtt"]
            assert isinstance(mqtt, dict)
            mqtt.pop("plaintext")
        path = base / "carebed.toml"
        path.write_text(_toml(config))
        # The secret as a log line could carry it: in name=value, a URL's query, a PEM block.
        journal = f"carebed[1]: password={secret} GET /api?token={secret}\n"
        if value != secret:
            journal += f"carebed[1]: {value}\n"
        _, members = collect(path, lambda cfg: {"daemon": "not running"}, lambda: journal)
    for name, text in members.items():
        assert secret not in text, (name, where, text)


async def test_output_with_a_trailing_slash_is_a_directory(tmp_path: Path) -> None:
    config = tmp_path / "carebed.toml"
    config.write_text('[gateway]\nid = "gw-a"\n[mqtt]\nhost = "b"\nplaintext = true\n')
    status, out = await carebed(config, "support-bundle", "--output", f"{tmp_path}/new/")
    assert status == 1 and "new" in out, out  # no such directory: said, no file named "new"
    assert not (tmp_path / "new").exists()
    (tmp_path / "new").mkdir()
    status, out = await carebed(config, "support-bundle", "--output", f"{tmp_path}/new/")
    assert status == 0, out
    assert Path(out.strip().splitlines()[-1]).parent == tmp_path / "new"
