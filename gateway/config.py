"""The gateway's configuration: one TOML file validated into frozen pydantic models."""

from __future__ import annotations

import ast
import difflib
import errno
import grp
import json
import os
import pwd
import re
import ssl
import stat
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError

GATEWAY_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{2,63}$"
DEFAULT_STATE_DIR = Path("/var/lib/carebed")
RUNTIME_DIR = Path("/run/carebed")
MIN_SESSION_EXPIRY_S = 24 * 3600


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _resolve(value: Any, info: ValidationInfo) -> Any:
    """Resolve a relative path against the directory of the configuration file."""
    base = (info.context or {}).get("base_dir")
    if isinstance(value, str) and base is not None and not Path(value).is_absolute():
        return str(Path(base) / value)
    return value


def _existing_file(path: Path, info: ValidationInfo) -> Path:
    if not path.is_file():
        raise ValueError(
            f"file not found: {path} (fix: give the path of an existing, readable file)"
        )
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(
            f"cannot read {path}: {exc.strerror} (fix: make it readable by the carebed user)"
        ) from exc
    return path


class GatewaySection(_Section):
    id: Annotated[str, Field(pattern=GATEWAY_ID_PATTERN)]
    state_dir: Path = DEFAULT_STATE_DIR
    heartbeat_s: Annotated[float, Field(ge=1, le=3600)] = 60.0
    control_socket: Path | None = None  # default: state_dir/control.sock

    _resolve_state_dir = field_validator("state_dir", "control_socket", mode="before")(_resolve)


class TlsSection(_Section):
    ca_file: Path
    cert_file: Path
    key_file: Path

    _resolve_paths = field_validator("ca_file", "cert_file", "key_file", mode="before")(_resolve)
    _check_paths = field_validator("ca_file", "cert_file", "key_file", mode="after")(_existing_file)


class MqttSection(_Section):
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: Annotated[int, Field(ge=5, le=600)] = 30
    session_expiry_s: Annotated[int, Field(ge=MIN_SESSION_EXPIRY_S)] = MIN_SESSION_EXPIRY_S
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSection | None = None
    plaintext: bool = False
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 4
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    backoff_min_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    backoff_cap_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    puback_timeout_s: Annotated[float, Field(gt=0, le=600)] | None = None

    @model_validator(mode="after")
    def _transport_is_explicit(self) -> MqttSection:
        if self.tls is None and not self.plaintext:
            raise ValueError(
                "mqtt.tls: missing; production brokers need TLS with a client certificate "
                "(fix: add a [mqtt.tls] table with ca_file, cert_file and key_file, or set "
                "mqtt.plaintext = true for a lab or demo broker)"
            )
        if self.tls is not None and self.plaintext:
            raise ValueError(
                "mqtt.plaintext = true contradicts the [mqtt.tls] table (fix: remove one of them)"
            )
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 1883 if self.plaintext else 8883

    @property
    def effective_puback_timeout_s(self) -> float:
        """How long a PUBACK may be outstanding before the link counts as half-open."""
        if self.puback_timeout_s is not None:
            return self.puback_timeout_s
        return float(2 * self.keepalive_s)


class OutboxSection(_Section):
    path: Path | None = None
    max_bytes: Annotated[int, Field(ge=4096)] = 256 * 1024 * 1024
    group_commit_s: Annotated[float, Field(ge=0, le=1)] = 0.2

    _resolve_path = field_validator("path", mode="before")(_resolve)


class AlarmsSection(_Section):
    ack_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    resend_interval_s: Annotated[float, Field(gt=0, le=60)] = 60.0
    give_up_after_s: Annotated[float, Field(gt=0)] = 24 * 3600.0


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class CommandsSection(_Section):
    # Ignored: accepted so that existing files load. Command ids are remembered by count (the
    # newest 10 000), never by age, so that a clock step cannot make a command run twice.
    max_age_s: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0


class ButtonSection(_Section):
    """The emergency-button receiver on a serial line."""

    enabled: bool = False
    port: Annotated[str, Field(min_length=1)] = "/dev/carebed-button"  # a path, symlink or glob
    baudrate: Annotated[int, Field(ge=300, le=921600)] = 9600
    supervision_window_s: Annotated[float, Field(gt=0)] = 3 * 3600.0
    supervision_check_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    low_battery_percent: Annotated[int, Field(ge=0, le=100)] = 20
    reopen_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    receiver_answer_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    receiver_silence_s: Annotated[float, Field(gt=0)] = 180.0  # it reports status every 60 s
    pairing_file: Path | None = None

    _resolve_pairing = field_validator("pairing_file", mode="before")(_resolve)


class CameraSection(_Section):
    """The voice-call camera, triggered over its HTTP API (docs/CAMERA.md)."""

    enabled: bool = False
    trigger: Literal["http", "relay"] = "http"
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] = "home"
    url: Annotated[str, Field(pattern=r"^https?://")] = "http://camera.local"
    user: str = "admin"
    password: SecretStr = SecretStr("")
    fingerprint_sha256: str | None = None  # required for https://: the pinned self-signed cert
    call_on: tuple[str, ...] = ("alarm.button", "alarm.watch_sos", "alarm.fall")
    remote_access: bool = False  # the platform's camera.call command; off unless enabled here
    request_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    total_budget_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    relay_chip: str = "/dev/gpiochip0"  # dry contact: the GPIO character device
    relay_line: Annotated[int, Field(ge=0)] = 0
    relay_pulse_s: Annotated[float, Field(gt=0, le=10)] = 0.5
    relay_active_low: bool = False

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str) -> str:
        if "@" in url.split("/")[2]:
            raise ValueError(
                "camera.url: credentials in the URL would end up in logs (fix: put them in "
                "camera.user and camera.password)"
            )
        return url

    @field_validator("fingerprint_sha256")
    @classmethod
    def _well_formed_pin(cls, pin: str | None) -> str | None:
        if pin is None:
            return None
        digits = pin.replace(":", "").lower()
        if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
            raise ValueError(
                "camera.fingerprint_sha256: not a SHA-256 fingerprint (fix: 64 hex digits, "
                "colons allowed, as openssl x509 -noout -fingerprint -sha256 prints it)"
            )
        return pin

    @model_validator(mode="after")
    def _pin_matches_scheme(self) -> CameraSection:
        if self.url.startswith("https://") and not self.fingerprint_sha256:
            raise ValueError(
                "camera.fingerprint_sha256: missing; an https:// camera is trusted by its "
                "certificate's SHA-256 fingerprint (fix: add it, as shown by the camera or by "
                "openssl x509 -noout -fingerprint -sha256)"
            )
        if self.url.startswith("http://") and self.fingerprint_sha256:
            raise ValueError(
                "camera.fingerprint_sha256 is set for an http:// camera (fix: use https:// or "
                "remove the fingerprint)"
            )
        return self


# Vital-sign reporting and edge rules: the settings the platform may change (``config.set``).
MAX_INTERVAL_S = 24 * 3600.0
Interval = Annotated[float, Field(ge=0, le=MAX_INTERVAL_S)]


class VitalsIntervals(_Section):
    """Seconds between two ``telemetry.vitals`` reports of a metric (0: every reading)."""

    heart_rate: Interval = 60.0
    rr_ms: Interval = 60.0
    spo2: Interval = 60.0
    pulse_rate: Interval = 60.0
    systolic: Interval = 0.0
    diastolic: Interval = 0.0
    map: Interval = 0.0
    temperature_c: Interval = 0.0
    steps: Interval = 900.0


class VitalsRule(_Section):
    """One edge rule: the metric beyond ``threshold`` for ``min_duration_s`` gives alarm.vitals."""

    enabled: bool = True
    threshold: float
    min_duration_s: Annotated[float, Field(ge=0, le=MAX_RULE_DURATION_S)]
    hysteresis: Annotated[float, Field(ge=0)]


MAX_RULE_DURATION_S = 3600.0
MAX_HYSTERESIS_SHARE = 0.2  # of the threshold: more would keep a tripped rule latched for good
# Thresholds outside these ranges are not physiological: a typo, or a rule switched off in disguise.
RULE_RANGES: dict[str, tuple[float, float]] = {
    "heart_rate_high": (60, 250),
    "heart_rate_low": (20, 100),
    "spo2_low": (70, 99),
    "temperature_high": (36, 43),
    "systolic_high": (100, 260),
    "diastolic_high": (60, 160),
}
DEFAULT_RULES: dict[str, dict[str, float]] = {
    "heart_rate_high": {"threshold": 120, "min_duration_s": 60, "hysteresis": 5},
    "heart_rate_low": {"threshold": 40, "min_duration_s": 60, "hysteresis": 5},
    "spo2_low": {"threshold": 90, "min_duration_s": 60, "hysteresis": 2},
    "temperature_high": {"threshold": 38.5, "min_duration_s": 0, "hysteresis": 0.3},
    "systolic_high": {"threshold": 180, "min_duration_s": 0, "hysteresis": 10},
    "diastolic_high": {"threshold": 110, "min_duration_s": 0, "hysteresis": 5},
}


class VitalsRules(_Section):
    """The edge rules by name; a table given in the file overrides only the keys it names."""

    heart_rate_high: VitalsRule
    heart_rate_low: VitalsRule
    spo2_low: VitalsRule
    temperature_high: VitalsRule
    systolic_high: VitalsRule
    diastolic_high: VitalsRule

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged: dict[str, Any] = {}
        for name, default in DEFAULT_RULES.items():
            given = data.get(name, {})
            if isinstance(given, VitalsRule):
                given = given.model_dump()
            merged[name] = {**default, **given} if isinstance(given, dict) else given
        merged.update({k: v for k, v in data.items() if k not in DEFAULT_RULES})
        return merged

    @model_validator(mode="after")
    def _plausible(self) -> VitalsRules:
        for name, (low, high) in RULE_RANGES.items():
            rule: VitalsRule = getattr(self, name)
            if not low <= rule.threshold <= high:
                raise ValueError(
                    f"vitals.rules.{name}.threshold: {rule.threshold} is outside {low}..{high} "
                    "(fix: a value in that range; disable the rule with enabled = false)"
                )
            if rule.hysteresis > MAX_HYSTERESIS_SHARE * rule.threshold:
                raise ValueError(
                    f"vitals.rules.{name}.hysteresis: {rule.hysteresis} is more than "
                    f"{MAX_HYSTERESIS_SHARE:.0%} of the threshold (fix: a smaller hysteresis)"
                )
        return self


class VitalsSection(_Section):
    intervals: VitalsIntervals = VitalsIntervals()
    rules: VitalsRules = Field(default_factory=lambda: VitalsRules.model_validate({}))


BLE_ADDRESS_PATTERN = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


def ble_address(text: str) -> str:
    """``text`` as a BLE address in upper case; ValueError saying the expected form."""
    if not re.fullmatch(BLE_ADDRESS_PATTERN, text):
        raise ValueError(f"{text!r} is not a BLE address (e.g. C0:FF:EE:00:00:01)")
    return text.upper()


class WatchSection(_Section):
    """The senior's health watches over Bluetooth LE (docs/WATCH.md)."""

    enabled: bool = False
    adapter: Annotated[str, Field(pattern=r"^hci[0-9]{1,2}$")] = "hci0"
    addresses: tuple[Annotated[str, Field(pattern=BLE_ADDRESS_PATTERN)], ...] = ()
    watches_file: Path | None = None  # default: state_dir/watches.json (carebed watch pair)
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0  # one connection attempt
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    reconnect_cap_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    offline_after_s: Annotated[float, Field(gt=0)] = 300.0
    silent_after_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    disconnect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    low_battery_percent: Annotated[int, Field(ge=0, le=100)] = 20

    _resolve_watches = field_validator("watches_file", mode="before")(_resolve)

    @field_validator("addresses")
    @classmethod
    def _upper(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(address.upper() for address in addresses))


class SimSection(_Section):
    """The simulated event source used by the demo and the tests."""

    enabled: bool = False
    telemetry_interval_s: Annotated[float, Field(gt=0)] = 5.0
    alarm_interval_s: Annotated[float, Field(gt=0)] | None = None
    burst: Annotated[int, Field(ge=1, le=10000)] = 1
    seed: int | None = None


class GatewayConfig(_Section):
    gateway: GatewaySection
    mqtt: MqttSection
    outbox: OutboxSection = OutboxSection()
    alarms: AlarmsSection = AlarmsSection()
    logging: LoggingSection = LoggingSection()
    commands: CommandsSection = CommandsSection()
    button: ButtonSection = ButtonSection()
    camera: CameraSection = CameraSection()
    watch: WatchSection = WatchSection()
    vitals: VitalsSection = VitalsSection()
    sim: SimSection = SimSection()

    @model_validator(mode="after")
    def _no_fake_alarms_to_a_camera(self) -> GatewayConfig:
        if self.sim.enabled and self.sim.alarm_interval_s is not None and self.camera.enabled:
            raise ValueError(
                "sim.alarm_interval_s with camera.enabled: simulated alarms would open calls "
                "into the home (fix: disable one of them)"
            )
        return self

    @property
    def gateway_id(self) -> str:
        return self.gateway.id

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.gateway.state_dir / "outbox.sqlite3"

    @property
    def control_socket(self) -> Path:
        """systemd's RuntimeDirectory (/run/carebed) when there is one, else the state dir."""
        if self.gateway.control_socket is not None:
            return self.gateway.control_socket
        runtime = os.environ.get("RUNTIME_DIRECTORY") or (
            str(RUNTIME_DIR) if RUNTIME_DIR.is_dir() else ""
        )
        base = Path(runtime.split(":")[0]) if runtime else self.gateway.state_dir
        return base / "control.sock"

    @property
    def pairing_path(self) -> Path:
        return self.button.pairing_file or self.gateway.state_dir / "buttons.json"

    @property
    def watches_path(self) -> Path:
        return self.watch.watches_file or self.gateway.state_dir / "watches.json"

    @property
    def remote_settings_path(self) -> Path:
        """Where the settings changed by the platform's ``config.set`` are kept."""
        return self.gateway.state_dir / "remote-settings.json"

    @property
    def mqtt_username(self) -> str:
        return self.mqtt.username or self.gateway.id


# --------------------------------------------------------------------------- error messages
# An error names the key, says what is wrong and how to fix it, and never repeats a value that
# could be a secret: nothing under a key that looks like one, nothing under an unknown key or
# section, no tables or arrays, no string with an '@' (credentials in a URL).

EXAMPLE_FILE = "config/carebed.example.toml"
MAX_FILE_BYTES = 1024 * 1024
_SHOWN_CHARS = 80
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|cred|auth|private", re.IGNORECASE)
_TOML_POSITION = re.compile(r"(?s)(.*) \(at (line \d+, column \d+|end of document)\)\Z")
_TOML_STATIC = re.compile(
    r"Invalid statement|Cannot overwrite a value|Unclosed array|Unclosed inline table"
    r"|Invalid initial character for a key part|Invalid hex value|Unterminated string"
    r"|Escaped character is not a Unicode scalar value|Invalid date or datetime|Invalid value"
    r"|Unescaped '\\' in a string|Expected '[^']{1,3}'( after a key in a key/value pair"
    r"| at the end of a (table|array) declaration)?|Expected newline or end of document"
    r" after a statement|Unrecognized escape sequence"
)
_TOML_KEYED = (  # (pattern, message naming the key, message when the key is not ours)
    (
        re.compile(r"Cannot declare (\(.*\)) twice"),
        "{} is declared twice",
        "a table is declared twice",
    ),
    (
        re.compile(r"Cannot mutate immutable namespace (\(.*\))"),
        "{} is an inline table: it cannot be extended",
        "an inline table cannot be extended",
    ),
    (re.compile(r"Cannot redefine namespace (\(.*\))"), "{} is redefined", "a table is redefined"),
    (
        re.compile(r"Duplicate inline table key ('.*')"),
        "{} appears twice in an inline table",
        "a key appears twice in an inline table",
    ),
)
_TOML_FIX = (
    "fix: correct that line: strings in double quotes, one key = value per line, each [section] "
    f"once; compare with {EXAMPLE_FILE}"
)

_FIXES = {
    "extra_forbidden": f"remove it or check its spelling against {EXAMPLE_FILE}",
    "missing": "add it",
    "string_pattern_mismatch": f"see {EXAMPLE_FILE} for the expected form",
    "literal_error": "use one of the values listed",
}

_PATTERN_FIXES = {
    "gateway": "use 3 to 64 characters: a-z, 0-9 and '-', starting with a letter or digit",
    "watch": "a watch address is six hex pairs with colons, e.g. C0:FF:EE:00:00:01; "
    "the adapter is hci0, hci1, ...",
    "camera": "use 1 to 32 characters: letters, digits, '_' and '-'; the url starts with "
    "http:// or https://",
}


def _printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (keys are typed by hand)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        tables = bool(value) and all(isinstance(item, dict) for item in value)
        return "an array of tables" if tables else "an array"
    return "a date or time"


def _shown(value: Any) -> str:
    """A wrong value as an error may show it: a scalar, short, never with credentials."""
    if isinstance(value, bool | float):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else "a very large integer"
    if isinstance(value, str):
        if "@" in value:
            return "a string with '@' (not shown: it may hold credentials)"
        if len(value) > _SHOWN_CHARS:
            return json.dumps(value[: _SHOWN_CHARS - 3] + "...")
        return json.dumps(value)
    if isinstance(value, dict | list | tuple):
        return _kind(value)
    return json.dumps(str(value))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The section model behind a field's annotation (``X | None`` included), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        model = _model_of(arg)
        if model is not None:
            return model
    return None


def known_keys(parent: tuple[int | str, ...]) -> list[str]:
    """The keys the section at ``parent`` accepts: ``("mqtt", "tls")`` gives ca_file, …

    Empty when ``parent`` is not a section.
    """
    model: type[BaseModel] = GatewayConfig
    for part in parent:
        field = model.model_fields.get(str(part))
        sub = None if field is None else _model_of(field.annotation)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def _all_names() -> frozenset[str]:
    names: set[str] = set()
    todo: list[type[BaseModel]] = [GatewayConfig]
    while todo:
        model = todo.pop()
        for name, field in model.model_fields.items():
            names.add(name)
            sub = _model_of(field.annotation)
            if sub is not None:
                todo.append(sub)
    return frozenset(names)


def _suggestion(name: str, known: list[str]) -> str | None:
    lowered = {key.lower(): key for key in known}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown(loc: tuple[int | str, ...], value: Any) -> str:
    """An unknown key or section: named, with a guess at what was meant; its value never shown."""
    key = _key(loc)
    what = "key"
    if isinstance(value, dict):
        what = "section" if len(loc) == 1 else "table"
    elif _kind(value) == "an array of tables":
        what = "array of tables"
    guess = _suggestion(str(loc[-1]), known_keys(loc[:-1]))
    hint = ""
    if guess is not None:
        full = ".".join([*(str(part) for part in loc[:-1]), guess])
        hint = f" (did you mean [{full}]?)" if what != "key" else f" (did you mean {full}?)"
    return f"{key}: unknown {what}{hint} (fix: {_FIXES['extra_forbidden']})"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(loc: tuple[int | str, ...]) -> str:
    """A location as TOML writes a dotted key: ``mqtt.tls.ca_file``, ``camera."user name"``."""
    parts = [str(part) for part in loc if part not in ("function-after[]",)]
    quoted = [part if _BARE_KEY.fullmatch(part) else json.dumps(part) for part in parts]
    return ".".join(quoted) or "(file)"


def _problem(error: Any) -> str:
    loc = tuple(error["loc"])
    key = _key(loc)
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return _unknown(loc, value)
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith(("mqtt.", "camera.", "sim.", "vitals.")):
        return message
    if error["type"] == "model_type":
        table_fix = f"write it as a table: [{key}] followed by its keys"
        if _kind(value) == "an array of tables":
            table_fix = f"write [{key}] with single brackets: [[{key}]] makes an array of tables"
        return f"{key}: should be a table (got {_kind(value)}) (fix: {table_fix})"
    fix: str | None = _FIXES.get(error["type"], f"see {EXAMPLE_FILE} for the expected form")
    if error["type"] == "string_pattern_mismatch":
        fix = _PATTERN_FIXES.get(str(loc[0]), fix)
    if error["type"] == "value_error":
        fix = None
    if error["type"] in ("missing", "value_error", "assertion_error"):
        shown = ""  # the input is the enclosing table, passwords included
    elif any(_SECRET_NAME.search(str(part)) for part in loc):
        shown = f" (got {_kind(value)})"
    else:
        shown = f" (got {_shown(value)})"
    text = f"{key}: {message}{shown}"
    return f"{text} (fix: {fix})" if fix else text


def _nul_problems(data: Any, loc: tuple[str, ...] = ()) -> list[str]:
    """Strings with a NUL character, which no path or name may hold (``"\\u0000"`` in TOML)."""
    if isinstance(data, dict):
        return [p for key, item in data.items() for p in _nul_problems(item, (*loc, str(key)))]
    if isinstance(data, list):
        return [p for i, item in enumerate(data) for p in _nul_problems(item, (*loc, str(i)))]
    if isinstance(data, str) and "\x00" in data:
        return [f"{_key(loc)}: contains a NUL character (fix: remove the \\u0000 escape)"]
    return []


def _failure(source: str, problems: list[str]) -> ConfigError:
    return ConfigError(source, [_printable(problem) for problem in problems])


def parse(
    data: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> GatewayConfig:
    """Validate a parsed TOML document."""
    nul = _nul_problems(data)
    if nul:
        raise _failure(source, nul)
    try:
        return GatewayConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors(include_url=False)]
        raise _failure(source, problems) from None
    except RecursionError:
        raise _failure(source, ["tables nested too deeply (fix: flatten them)"]) from None


def _toml_problem(exc: ValueError) -> str:
    """A TOML syntax error as a problem: where it is and what, without quoting the file."""
    text = str(exc)
    match = _TOML_POSITION.match(text)
    where, what = (f" at {match[2]}", match[1]) if match else ("", text)
    if "integer string conversion" in what:
        what = "a number with thousands of digits"
    elif what.startswith(("Illegal character", "Found invalid character")):
        what = "a character not allowed there (a control character, or a line break in a string)"
    elif not _TOML_STATIC.fullmatch(what):
        for pattern, named, unnamed in _TOML_KEYED:
            keyed = pattern.fullmatch(what)
            if keyed:
                key = _toml_key(keyed[1])
                what = named.format(key) if key else unnamed
                break
        else:
            what = "a syntax error"
    elif what == "Invalid value":
        what = "invalid value (strings need double quotes)"
    elif what == "Cannot overwrite a value":
        what = "a key that is set twice"
    else:
        what = what[0].lower() + what[1:]
    return f"not valid TOML{where}: {what} ({_TOML_FIX})"


def _toml_key(text: str) -> str | None:
    """A key from a TOML error, shown only when it is one of the configuration's own names."""
    try:
        parts = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    parts = (parts,) if isinstance(parts, str) else parts
    if isinstance(parts, tuple) and parts and all(p in _NAMES for p in parts):
        return "[" + ".".join(parts) + "]"
    return None


def _decode(raw: bytes, source: str) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _failure(
            source,
            ["the file is saved as UTF-16 (fix: save it as UTF-8, e.g. with iconv -t UTF-8)"],
        )
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark from a Windows editor is harmless
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = f"not UTF-8 text at line {line} (fix: save the file as UTF-8)"
        raise _failure(source, [problem]) from None


def load(path: Path) -> GatewayConfig:
    """Read and validate the configuration file at ``path``."""
    source = str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            source, [f"cannot read the file: {exc.strerror} (fix: check the path)"]
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise _failure(
            source, [f"the file is larger than {MAX_FILE_BYTES} bytes (fix: check the path)"]
        )
    try:
        data = tomllib.loads(_decode(raw, source))
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, and a 5000-digit number
        problem = (
            "not valid TOML: tables or arrays nested too deeply (fix: flatten them)"
            if isinstance(exc, RecursionError)
            else _toml_problem(exc)
        )
        raise _failure(source, [problem]) from None
    return parse(data, source=source, base_dir=path.parent.resolve())


# --------------------------------------------------------------------------- pre-flight checks
# What a person must repair and can be checked before start: the TLS files together, paths that
# must be files or writable directories. ``carebed check-config`` and ``carebed run`` both do it,
# so a bad file stops with status 78 instead of failing (and restarting) forever.

_PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOENT,
        errno.EEXIST,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENAMETOOLONG,
        errno.ELOOP,
    }
)
_SYSTEMD_FIXES = frozenset({errno.EACCES, errno.EPERM})
_ANY_DIRECTORY = f"a directory the service can write (e.g. {DEFAULT_STATE_DIR})"


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something to repair that does not stop the gateway."""

    event: str  # the log event, a snake_case fact
    path: Path
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem} (fix: {self.fix})"


def preflight(cfg: GatewayConfig, source: Path, *, create: bool) -> list[ConfigWarning]:
    """Check the files and directories ``cfg`` names; raise ``ConfigError``, return warnings.

    With ``create`` (``carebed run``) the directories are made; without it (``check-config``)
    the checks leave nothing behind.
    """
    problems: list[str] = []
    if cfg.mqtt.tls is not None:
        problems.extend(_tls_problems(cfg.mqtt.tls))
    problems.extend(_path_problems(cfg, create=create))
    if problems:
        raise _failure(str(source), problems)
    return _secret_warnings(cfg, source)


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason).replace("_", " ").lower() if exc.reason else "not in PEM form"
    return str(getattr(exc, "strerror", None) or exc)


def _tls_problems(tls: TlsSection) -> list[str]:
    """Load the CA, then the certificate and its key together, as the uplink will."""
    try:
        ssl.create_default_context(cafile=str(tls.ca_file))
    except (ssl.SSLError, OSError) as exc:
        return [
            f"mqtt.tls.ca_file: {tls.ca_file} holds no usable certificate ({_ssl_reason(exc)}) "
            "(fix: give the platform's CA certificate in PEM form, the text between "
            "-----BEGIN CERTIFICATE----- and -----END CERTIFICATE-----)"
        ]
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=str(tls.cert_file))
    except (ssl.SSLError, OSError) as exc:
        return [
            f"mqtt.tls.cert_file: {tls.cert_file} holds no usable certificate "
            f"({_ssl_reason(exc)}) (fix: give this gateway's client certificate in PEM form)"
        ]
    asked: list[bool] = []

    def no_passphrase() -> bytes:
        asked.append(True)
        return b""

    try:
        probe.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=no_passphrase)
    except (ssl.SSLError, OSError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            return [
                f"mqtt.tls.key_file: {tls.key_file} is not the key of the certificate "
                f"{tls.cert_file} (fix: give the key made with that certificate; "
                "`openssl x509 -noout -pubkey -in CERT` and `openssl pkey -pubout -in KEY` "
                "print the same public key for a matching pair)"
            ]
        if asked:
            return [
                f"mqtt.tls.key_file: {tls.key_file} is protected by a passphrase, which the "
                "service cannot enter (fix: store it without one: openssl pkey -in KEY -out "
                "NEW_KEY, mode 0640 root:carebed)"
            ]
        return [
            f"mqtt.tls.key_file: {tls.key_file} holds no usable private key "
            f"({_ssl_reason(exc)}) (fix: give the private key of mqtt.tls.cert_file in PEM form)"
        ]
    return []


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _group() -> str:
    """The group that should read the secrets: the service's, ``carebed`` when run as root."""
    if os.geteuid() == 0:
        return "carebed"
    try:
        return grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        return str(os.getegid())


def _probe(directory: Path, *, create: bool) -> None:
    """Raise OSError unless a file can be made in ``directory`` (or the directory itself)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if create:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = directory
    if existing == directory:
        handle, name = tempfile.mkstemp(prefix=".carebed-check-", dir=directory)
        os.close(handle)
        os.unlink(name)
    else:  # check-config: show the directory could be made, and leave nothing behind
        os.rmdir(tempfile.mkdtemp(prefix=".carebed-check-", dir=existing))


def _directory_problem(
    key: str, directory: Path, target: Path, fix: str, *, create: bool
) -> str | None:
    """Why ``target`` cannot be made in ``directory`` (None when it can, or may later)."""
    try:
        _probe(directory, create=create)
    except OSError as exc:
        if exc.errno not in _PERMANENT_ERRNOS:
            return None  # a full disk or an I/O error: the daemon reports those itself
        if not create and directory == DEFAULT_STATE_DIR and exc.errno in _SYSTEMD_FIXES:
            return None  # StateDirectory=carebed: systemd makes it, and chowns it, at start
        where = exc.filename or directory
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            return f"{key}: {where} is a file, so {target} cannot be made (fix: {fix})"
        if exc.errno in (errno.EACCES, errno.EPERM):
            user = _user()
            return (
                f"{key}: user {user} cannot write in {where} ({exc.strerror}) "
                f"(fix: chown {user} {directory}, or {fix})"
            )
        if exc.errno == errno.EROFS:
            return (
                f"{key}: {directory} is on a read-only file system (fix: {fix}; under systemd "
                f"only {DEFAULT_STATE_DIR} is writable)"
            )
        return f"{key}: {target} cannot be made there ({exc.strerror}) (fix: {fix})"
    return None


def _file_problem(key: str, path: Path, what: str, example: Path, *, writable: bool) -> str | None:
    """A path that must be a file (or not exist yet): not a directory, and usable."""
    try:
        if not path.exists():
            return None
        if path.is_dir():
            return (
                f"{key}: {path} is a directory, not {what} (fix: remove that directory, or set "
                f"{key} to a file, e.g. {example})"
            )
        if not path.is_file():
            return f"{key}: {path} is not a regular file (fix: set {key} to a file, e.g. {example})"
        with path.open("r+b" if writable else "rb"):
            pass
    except OSError as exc:
        if exc.errno not in _PERMANENT_ERRNOS:
            return None
        user = _user()
        return (
            f"{key}: user {user} cannot {'write' if writable else 'read'} {path} "
            f"({exc.strerror}) (fix: chown {user} {path})"
        )
    return None


def _path_problems(cfg: GatewayConfig, *, create: bool) -> list[str]:
    state = cfg.gateway.state_dir
    fix = f"set gateway.state_dir to {_ANY_DIRECTORY}"
    problem = _directory_problem("gateway.state_dir", state, state, fix, create=create)
    if problem is not None:
        return [problem]  # the other files live in it, as a rule
    files = [("outbox.path", cfg.outbox_path, "the outbox database", "outbox.sqlite3", True)]
    if cfg.button.enabled:
        files.append(("button.pairing_file", cfg.pairing_path, "a file", "buttons.json", False))
    if cfg.watch.enabled:
        files.append(("watch.watches_file", cfg.watches_path, "a file", "watches.json", False))
    problems: list[str] = []
    for key, path, what, name, writable in files:
        problem = None
        if path.parent != state:
            fix = f"set {key} to a file the service can write, e.g. {DEFAULT_STATE_DIR / name}"
            problem = _directory_problem(key, path.parent, path, fix, create=create)
        if problem is None:
            problem = _file_problem(key, path, what, path / name, writable=writable)
        if problem is not None:
            problems.append(problem)
    return problems


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _secret_warnings(cfg: GatewayConfig, source: Path) -> list[ConfigWarning]:
    """Secrets that every user of the machine can read."""
    warnings: list[ConfigWarning] = []
    group = _group()
    held = [
        key
        for key, secret in (
            ("mqtt.password", cfg.mqtt.password),
            ("camera.password", cfg.camera.password),
        )
        if secret is not None and secret.get_secret_value()
    ]
    if held and _readable_by_others(source):
        warnings.append(
            ConfigWarning(
                "config_file_readable_by_others",
                source,
                f"{source} holds {' and '.join(held)} and every user of this machine can read it",
                f"chmod 640 {source} && chgrp {group} {source}",
            )
        )
    if cfg.mqtt.tls is not None and _readable_by_others(cfg.mqtt.tls.key_file):
        key_file = cfg.mqtt.tls.key_file
        warnings.append(
            ConfigWarning(
                "tls_key_readable_by_others",
                key_file,
                f"mqtt.tls.key_file: every user of this machine can read {key_file}",
                f"chmod 640 {key_file} && chgrp {group} {key_file}",
            )
        )
    return warnings


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file."""
    return GatewayConfig.model_json_schema()


_NAMES = _all_names()
