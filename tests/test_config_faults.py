"""Broken configurations: offline checks that exit 78, secrets never printed, loader fuzzing."""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import config, preflight
from gateway.core.errors import ConfigError
from hil.sim.pki import Pki
from tests.support.daemon import toml_value
from tests.support.reliability import record, scaled

EXIT_CONFIG = 78
# A problem names a key (dotted, quoted as TOML quotes it) or what is wrong with the whole file.
_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")'
KEY_PROBLEM = re.compile(rf"^{_PART}(?:\.{_PART})*: \S")
FILE_PROBLEMS = (
    "not valid TOML",
    "not UTF-8 text",
    "the file is",
    "cannot read the file",
    "tables",
)


def carebed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- offline checks


def _plain(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        "gateway": {"id": "gw-a", "state_dir": tmp_path / "state"},
        "mqtt": {"host": "127.0.0.1", "port": 1, "plaintext": True},
    }


def _tls(tmp_path: Path, pki: Pki, **files: Path) -> dict[str, dict[str, Any]]:
    client = pki.client("gw-a")
    sections = _plain(tmp_path)
    del sections["mqtt"]["plaintext"]
    sections["mqtt.tls"] = {
        "ca_file": pki.ca_cert,
        "cert_file": client.cert,
        "key_file": client.key,
        **files,
    }
    return sections


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _half_a_certificate(pem: bytes) -> bytes:
    lines = pem.splitlines()
    body = lines[1:-1]
    return b"\n".join([lines[0], *body[: len(body) // 2], lines[-1]]) + b"\n"


def _encrypted_key(pki: Pki, tmp_path: Path) -> Path:
    key = serialization.load_pem_private_key(pki.client("gw-a").key.read_bytes(), password=None)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    return _file(tmp_path, "encrypted.key", pem)


Case = Callable[[Path, Pki], dict[str, dict[str, Any]]]

OFFLINE_CASES: dict[str, tuple[Case, str, str]] = {
    "tls-key-of-another-certificate": (
        lambda tmp, pki: _tls(tmp, pki, key_file=pki.client("gw-b").key),
        "mqtt.tls.key_file",
        "is not the key of the certificate",
    ),
    "tls-key-with-a-passphrase": (
        lambda tmp, pki: _tls(tmp, pki, key_file=_encrypted_key(pki, tmp)),
        "mqtt.tls.key_file",
        "passphrase",
    ),
    "tls-key-garbage": (
        lambda tmp, pki: _tls(tmp, pki, key_file=_file(tmp, "k.pem", b"\x00garbage\n")),
        "mqtt.tls.key_file",
        "no usable private key",
    ),
    "tls-ca-garbage": (
        lambda tmp, pki: _tls(tmp, pki, ca_file=_file(tmp, "ca.pem", b"not a certificate\n")),
        "mqtt.tls.ca_file",
        "no usable certificate",
    ),
    "tls-ca-is-a-private-key": (
        lambda tmp, pki: _tls(tmp, pki, ca_file=pki.ca_key),
        "mqtt.tls.ca_file",
        "no usable certificate",
    ),
    "tls-ca-cut-in-half": (
        lambda tmp, pki: _tls(
            tmp, pki, ca_file=_file(tmp, "ca.pem", _half_a_certificate(pki.ca_cert.read_bytes()))
        ),
        "mqtt.tls.ca_file",
        "no usable certificate",
    ),
    "tls-certificate-garbage": (
        lambda tmp, pki: _tls(tmp, pki, cert_file=_file(tmp, "c.pem", b"-----BEGIN x\n")),
        "mqtt.tls.cert_file",
        "no usable certificate",
    ),
    "state-dir-under-a-file": (
        lambda tmp, pki: {
            **_plain(tmp),
            "gateway": {"id": "gw-a", "state_dir": _file(tmp, "f", b"") / "state"},
        },
        "gateway.state_dir",
        "is a file",
    ),
    "state-dir-under-proc": (
        lambda tmp, pki: {**_plain(tmp), "gateway": {"id": "gw-a", "state_dir": "/proc/carebed"}},
        "gateway.state_dir",
        "cannot be made",
    ),
    "outbox-path-is-a-directory": (
        lambda tmp, pki: {**_plain(tmp), "outbox": {"path": tmp}},
        "outbox.path",
        "is a directory",
    ),
    "pairing-file-is-a-directory": (
        lambda tmp, pki: {
            **_plain(tmp),
            "button": {"enabled": True, "port": str(tmp / "tty"), "pairing_file": tmp},
        },
        "button.pairing_file",
        "is a directory",
    ),
    "pairing-file-under-a-file": (
        lambda tmp, pki: {
            **_plain(tmp),
            "button": {"enabled": True, "pairing_file": _file(tmp, "f", b"") / "buttons.json"},
        },
        "button.pairing_file",
        "is a file",
    ),
    "watches-file-is-a-directory": (
        lambda tmp, pki: {**_plain(tmp), "watch": {"enabled": True, "watches_file": tmp}},
        "watch.watches_file",
        "is a directory",
    ),
}


@pytest.mark.reliability
@pytest.mark.parametrize("case", sorted(OFFLINE_CASES))
def test_bad_files_fail_check_config_and_run_with_78_naming_the_key(
    tmp_path: Path, pki: Pki, case: str
) -> None:
    make, key, words = OFFLINE_CASES[case]
    path = write_config(tmp_path / "carebed.toml", make(tmp_path, pki))
    for args in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = carebed(*args)
        assert result.returncode == EXIT_CONFIG, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
        assert len(problems) == 1, result.stderr
        assert problems[0].startswith(f"  - {key}: "), result.stderr
        assert words in problems[0]
        assert "(fix: " in problems[0]
    record(
        "config",
        f"bad file or directory: {case}",
        count=1,
        lost=0,
        outcome=f"check-config and run exit 78 naming {key} and the fix",
    )


def test_check_config_leaves_nothing_behind(tmp_path: Path) -> None:
    sections = _plain(tmp_path)
    sections["gateway"]["state_dir"] = tmp_path / "new" / "state"
    sections["button"] = {"enabled": True, "pairing_file": tmp_path / "pairing" / "b.json"}
    path = write_config(tmp_path / "carebed.toml", sections)
    before = sorted(tmp_path.iterdir())
    result = carebed("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert sorted(tmp_path.iterdir()) == before


def test_run_makes_the_state_directory_for_the_service_only(tmp_path: Path) -> None:
    path = write_config(tmp_path / "carebed.toml", _plain(tmp_path))
    cfg = config.load(path)
    state = tmp_path / "var" / "state"
    fresh = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"state_dir": state})})
    assert preflight.preflight(fresh, path, create=True) == []
    assert state.stat().st_mode & 0o777 == 0o700
    assert list(state.iterdir()) == []


# --------------------------------------------------------------------------- secrets


SECRET_KEYS = (
    *("password", "pasword", "pass", "passwd", "Password", "PASSWORD", "pwd", "secret"),
    *("token", "api_key", "private_key", "credentials", "auth"),
)
secrets = st.text(string.ascii_letters + string.digits, min_size=12, max_size=24).map(
    lambda s: "Zq" + s
)


def _valid(tmp: Path) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-a", "state_dir": str(tmp / "state")},
        "mqtt": {"host": "127.0.0.1", "plaintext": True},
    }


@st.composite
def planted(draw: st.DrawFn, secret: str) -> dict[str, Any]:
    """A valid document with ``secret`` planted where a mistyped or misplaced password goes."""
    doc = _valid(Path("fuzz"))
    wrapped = draw(
        st.sampled_from(
            [secret, [secret], {"value": secret}, [{"password": secret}], {"a": {"b": secret}}]
        )
    )
    section = draw(st.sampled_from(["gateway", "mqtt", "camera", "button", "watch", "outbox"]))
    where = draw(
        st.sampled_from(
            ["unknown key", "secret key", "unknown section", "array of tables", "wrong type"]
        )
    )
    if where == "unknown key":
        name = draw(
            (st.sampled_from(SECRET_KEYS) | st.from_regex(r"[a-z_]{1,12}", fullmatch=True)).filter(
                lambda name: name not in config.known_keys((section,))
            )
        )
        doc.setdefault(section, {})[name] = wrapped
    elif where == "secret key":
        target = draw(st.sampled_from(["mqtt", "camera"]))
        if wrapped == secret:  # a valid password: break the file elsewhere
            doc["gateway"]["id"] = "GW_1"
        doc.setdefault(target, {})["password"] = wrapped
    elif where == "unknown section":
        name = draw(st.sampled_from(["MQTT", "Camera", "mqtt2", "credentials", "secrets", "cam"]))
        doc[name] = {draw(st.sampled_from(SECRET_KEYS)): wrapped}
    elif where == "array of tables":
        body = {**doc.get(section, {}), "password": secret}
        doc[section] = [body, body] if draw(st.booleans()) else [body]
    else:  # a table or array where a setting belongs, holding the secret
        key = draw(st.sampled_from(["host", "heartbeat_s", "user", "url", "id", "state_dir"]))
        doc.setdefault(section, {})[key] = wrapped if not isinstance(wrapped, str) else [secret]
    return doc


def _toml(doc: dict[str, Any]) -> str:
    """A document as TOML: top-level tables as [sections], arrays of tables as [[sections]]."""
    head = [f"{_quote(k)} = {_value(v)}" for k, v in doc.items() if not _is_table(v)]
    body: list[str] = []
    for name, value in doc.items():
        tables = [value] if isinstance(value, dict) else value if _is_table(value) else []
        for table in tables:
            body.append(f"[[{_quote(name)}]]" if isinstance(value, list) else f"[{_quote(name)}]")
            body.extend(f"{_quote(k)} = {_value(v)}" for k, v in table.items())
    return "\n".join(head + body) + "\n"


def _quote(text: str) -> str:
    """A TOML basic string (JSON's escapes, but raw non-ASCII: TOML refuses lone surrogates)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
    )


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quote(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return str(value.isoformat())  # dates and times


def _outputs(error: ConfigError) -> str:
    """Everything a person or the journal sees of the error (the CLI prints path and problems)."""
    return "\n".join([error.path, *error.problems, str(error), repr(error)])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config-fuzz")


def _load_bytes(directory: Path, data: bytes) -> tuple[config.GatewayConfig | None, str]:
    """Load ``data`` as a configuration file: the config, or everything its error prints.

    Any exception other than ConfigError fails the test.
    """
    path = directory / "carebed.toml"
    path.write_bytes(data)
    try:
        return config.load(path), ""
    except ConfigError as error:
        caught = error
    assert caught.path == str(path)
    assert caught.problems
    for problem in caught.problems:
        assert KEY_PROBLEM.match(problem) or problem.startswith(FILE_PROBLEMS), problem
        assert problem.isprintable(), problem
    return None, _outputs(caught)


FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.mark.reliability
def test_planted_secrets_never_appear_in_an_error(fuzz_dir: Path) -> None:
    examples = scaled(300, 1500)
    tried: list[int] = [0]

    @settings(FUZZ, max_examples=examples)
    @given(data=st.data(), secret=secrets)
    def check(data: st.DataObject, secret: str) -> None:
        doc = data.draw(planted(secret))
        cfg, shown = _load_bytes(fuzz_dir, _toml(doc).encode())
        assert cfg is None, "a planted secret must make the file invalid"
        assert secret not in shown
        tried[0] += 1

    check()
    record(
        "config",
        "password mistyped or misplaced (unknown key or section, [[table]], wrong type)",
        count=tried[0],
        lost=0,
        outcome="ConfigError naming the key; the secret never printed",
    )


# --------------------------------------------------------------------------- loader fuzzing


def _valid_text(secret: str) -> str:
    return (
        '[gateway]\nid = "gw-a"\nstate_dir = "state"\nheartbeat_s = 60\n'
        '[mqtt]\nhost = "127.0.0.1"\nport = 1883\nplaintext = true\n'
        f'keepalive_s = 30\npassword = "{secret}"\n'
        "[outbox]\nmax_bytes = 268435456\ngroup_commit_s = 0.2\n"
        '[camera]\nenabled = false\nurl = "http://10.0.0.9"\nuser = "admin"\n'
        f'password = "{secret}"\n'
        '[button]\nenabled = false\nport = "/dev/ttyUSB0"\n'
        "[vitals.rules.spo2_low]\nthreshold = 90\n"
    )


TOML_CHARS = "[]{}=\"'\n,.# \t\\0123456789abcxyz-_:+"


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` after a few edits a hurried installer or a damaged card could make."""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "line", "truncate"]))
        starts = [0, *(i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text))]
        at = min(draw(st.sampled_from(starts)) + draw(st.integers(0, 40)), len(text))
        if kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        elif kind == "insert":
            text = text[:at] + draw(st.text(TOML_CHARS, min_size=1, max_size=6)) + text[at:]
        elif kind == "replace":
            text = text[:at] + draw(st.sampled_from(TOML_CHARS)) + text[at + 1 :]
        elif kind == "line":
            lines = text.splitlines()
            line = draw(st.sampled_from(lines)) if lines else ""
            lines.insert(draw(st.integers(0, len(lines))), line)
            text = "\n".join(lines) + "\n"
        else:
            text = text[:at]
    return text


def _exposed(doc: Any, secret: str, loc: tuple[str, ...] = ()) -> bool:
    """Whether an edit put ``secret`` where an error may quote it: in a key's name, or in the
    string value of a known setting that is not a secret (as a typo in ``host`` would)."""
    if isinstance(doc, dict):
        return any(
            secret in str(key) or _exposed(value, secret, (*loc, str(key)))
            for key, value in doc.items()
        )
    if not isinstance(doc, str) or secret not in doc or not loc:
        return False
    setting = loc[-1] in config.known_keys(loc[:-1])
    return setting and not re.search("pass|pwd|secret|token|key|cred|auth|private", loc[-1])


def _parsed(text: str) -> Any:
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError):
        return {}


@pytest.mark.reliability
def test_mutated_valid_configs_give_only_config_errors_without_secrets(fuzz_dir: Path) -> None:
    examples = scaled(300, 1500)
    tried: list[int] = [0]

    @settings(FUZZ, max_examples=examples)
    @given(data=st.data(), secret=secrets)
    def check(data: st.DataObject, secret: str) -> None:
        text = data.draw(mutated(_valid_text(secret)))
        cfg, shown = _load_bytes(fuzz_dir, text.encode())
        if cfg is None and not _exposed(_parsed(text), secret):
            assert secret not in shown
        tried[0] += 1

    check()
    record(
        "config",
        "valid file with random edits (deleted, inserted, replaced, repeated lines, truncated)",
        count=tried[0],
        lost=0,
        outcome="loads or ConfigError naming the key or the line; no other exception, no secret",
    )


KNOWN = ["gateway", "mqtt", "tls", "outbox", "camera", "button", "watch", "vitals", "rules"]
KNOWN += ["id", "state_dir", "host", "port", "password", "enabled", "path", "max_bytes", "url"]
keys = st.sampled_from(KNOWN) | st.text(max_size=8)
scalars = (
    st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.dates() | st.times()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


@pytest.mark.reliability
def test_random_documents_and_wrong_types_give_only_config_errors(fuzz_dir: Path) -> None:
    examples = scaled(300, 1500)
    tried: list[int] = [0]

    @settings(FUZZ, max_examples=examples)
    @given(
        sections=st.dictionaries(
            st.sampled_from(KNOWN[:8]) | keys, st.dictionaries(keys, values, max_size=5), max_size=4
        ),
        keep_valid=st.booleans(),
        secret=secrets,
    )
    def check(sections: dict[str, Any], keep_valid: bool, secret: str) -> None:
        doc: dict[str, Any] = _valid(fuzz_dir) if keep_valid else {}
        for name, table in sections.items():
            existing = doc.get(name)
            merged: dict[str, Any] = existing if isinstance(existing, dict) else {}
            doc[name] = {**merged, **table, "pasword": secret}
        _, shown = _load_bytes(fuzz_dir, _toml(doc).encode())
        assert secret not in shown
        tried[0] += 1

    check()
    record(
        "config",
        "random TOML documents: unknown keys and sections, wrong types, nested tables",
        count=tried[0],
        lost=0,
        outcome="ConfigError naming the key; no other exception, no secret",
    )


@pytest.mark.reliability
def test_bad_bytes_and_byte_order_marks_give_only_config_errors(fuzz_dir: Path) -> None:
    examples = scaled(200, 1000)
    tried: list[int] = [0]
    valid = _valid_text("Zq0123456789ab").encode()

    @settings(FUZZ, max_examples=examples)
    @given(
        kind=st.sampled_from(["random", "inserted", "bom", "utf-16", "nested"]),
        noise=st.binary(min_size=1, max_size=64),
        at=st.integers(0, len(valid)),
        depth=st.integers(1, 3000),
    )
    def check(kind: str, noise: bytes, at: int, depth: int) -> None:
        data = {
            "random": noise,
            "inserted": valid[:at] + noise + valid[at:],
            "bom": b"\xef\xbb\xbf" + valid,
            "utf-16": valid.decode().encode("utf-16"),
            "nested": valid + b"x = " + b"[" * depth + b"]" * depth + b"\n",
        }[kind]
        cfg, shown = _load_bytes(fuzz_dir, data)
        if kind == "bom":
            assert cfg is not None, shown  # a byte-order mark from a Windows editor is harmless
        assert "Zq0123456789ab" not in shown
        tried[0] += 1

    check()
    record(
        "config",
        "bad bytes: random, invalid UTF-8, UTF-8 and UTF-16 byte-order marks, deep nesting",
        count=tried[0],
        lost=0,
        outcome="ConfigError naming the file and line (a UTF-8 BOM is accepted)",
    )
