"""``carebed support-bundle``: everything support needs, no secret."""

from __future__ import annotations

import asyncio
import json
import stat
import tarfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.cli.bundle import REDACTED, SECRET_KEY, redact
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
