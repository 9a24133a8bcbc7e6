"""The gateway's configuration: one TOML file validated into frozen pydantic models."""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import tomllib
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

from gateway.core.errors import ConfigError
from gateway.core.events import GATEWAY_ID_PATTERN
from gateway.core.i18n import N_, _

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


PASTED_MARK = "-----BEGIN"
_PATH_SHOWN_CHARS = 200


def pasted(text: str) -> bool:
    """``text`` is a pasted key, certificate or other secret block, not a value to show."""
    return PASTED_MARK in text or "\n" in text or "\r" in text


def shown_path(path: Path | str) -> str:
    """A path as a message may show it: never the text of a key pasted where a path goes."""
    text = str(path)
    if pasted(text):
        return _("(not a path: {chars} characters of pasted text)").format(chars=len(text))
    if len(text) > _PATH_SHOWN_CHARS:
        return _printable(text[: _PATH_SHOWN_CHARS - 3]) + "..."
    return _printable(text)


def _existing_file(path: Path, info: ValidationInfo) -> Path:
    if pasted(str(path)):
        raise ValueError(
            _(
                "the value is not a path (it looks like a pasted key or certificate) (fix: save "
                "it in a file, e.g. under /etc/carebed/, and give that file's path here)"
            )
        )
    try:
        found = path.is_file()
    except OSError:  # a name too long for the file system
        found = False
    if not found:
        raise ValueError(
            _("file not found: {path} (fix: give the path of an existing, readable file)").format(
                path=shown_path(path)
            )
        )
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(
            _("cannot read {path}: {reason} (fix: make it readable by the carebed user)").format(
                path=shown_path(path), reason=exc.strerror
            )
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
                _(
                    "mqtt.tls: missing; production brokers need TLS with a client certificate "
                    "(fix: add a [mqtt.tls] table with ca_file, cert_file and key_file, or set "
                    "mqtt.plaintext = true for a lab or demo broker)"
                )
            )
        if self.tls is not None and self.plaintext:
            raise ValueError(
                _(
                    "mqtt.plaintext = true contradicts the [mqtt.tls] table "
                    "(fix: remove one of them)"
                )
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


OUTBOX_MIN_BYTES = 1024 * 1024  # gateway.store.disk.DiskBudget refuses a smaller quota


class OutboxSection(_Section):
    path: Path | None = None
    max_bytes: int = 256 * 1024 * 1024
    group_commit_s: Annotated[float, Field(ge=0, le=600)] = 60.0

    _resolve_path = field_validator("path", mode="before")(_resolve)

    @field_validator("max_bytes")
    @classmethod
    def _quota_holds_the_outbox(cls, value: int) -> int:
        if value < OUTBOX_MIN_BYTES:  # below it the WAL and the reserve leave the rows no room
            raise ValueError(
                _(
                    "{value} is below the minimum of {minimum} (1 MiB: the outbox's WAL, "
                    "alarm reserve and index alone take a quarter of a MiB) "
                    "(fix: set outbox.max_bytes to at least 1048576, or leave it out for 256 MiB)"
                ).format(value=value, minimum=OUTBOX_MIN_BYTES)
            )
        return value


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
                _(
                    "camera.url: credentials in the URL would end up in logs (fix: put them in "
                    "camera.user and camera.password)"
                )
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
                _(
                    "camera.fingerprint_sha256: not a SHA-256 fingerprint (fix: 64 hex digits, "
                    "colons allowed, as openssl x509 -noout -fingerprint -sha256 prints it)"
                )
            )
        return pin

    @model_validator(mode="after")
    def _pin_matches_scheme(self) -> CameraSection:
        if self.url.startswith("https://") and not self.fingerprint_sha256:
            raise ValueError(
                _(
                    "camera.fingerprint_sha256: missing; an https:// camera is trusted by its "
                    "certificate's SHA-256 fingerprint (fix: add it, as shown by the camera or by "
                    "openssl x509 -noout -fingerprint -sha256)"
                )
            )
        if self.url.startswith("http://") and self.fingerprint_sha256:
            raise ValueError(
                _(
                    "camera.fingerprint_sha256 is set for an http:// camera (fix: use https:// or "
                    "remove the fingerprint)"
                )
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
                    _(
                        "vitals.rules.{name}.threshold: {value} is outside {low}..{high} "
                        "(fix: a value in that range; disable the rule with enabled = false)"
                    ).format(name=name, value=rule.threshold, low=low, high=high)
                )
            if rule.hysteresis > MAX_HYSTERESIS_SHARE * rule.threshold:
                raise ValueError(
                    _(
                        "vitals.rules.{name}.hysteresis: {value} is more than {share} of the "
                        "threshold (fix: a smaller hysteresis)"
                    ).format(name=name, value=rule.hysteresis, share=f"{MAX_HYSTERESIS_SHARE:.0%}")
                )
        return self


class VitalsSection(_Section):
    intervals: VitalsIntervals = VitalsIntervals()
    rules: VitalsRules = Field(default_factory=lambda: VitalsRules.model_validate({}))


BLE_ADDRESS_PATTERN = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


def ble_address(text: str) -> str:
    """``text`` as a BLE address in upper case; ValueError saying the expected form."""
    if not re.fullmatch(BLE_ADDRESS_PATTERN, text):
        raise ValueError(
            _("{text} is not a BLE address (e.g. C0:FF:EE:00:00:01)").format(text=repr(text))
        )
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


class RetiredSimSection(_Section):
    """``[sim]`` of carebed 0.1, whose example configuration every installed gateway copied.

    The simulated event source is no longer part of the gateway (it runs from the simulated rig,
    ``python -m hil.sim.daemon``). A disabled section is accepted, so that an upgrade does not stop
    the gateway, and reported as a warning; an enabled one is an error.
    """

    enabled: bool = Field(
        False, description="retired: the simulated source runs with python -m hil.sim.daemon"
    )
    telemetry_interval_s: float | None = None
    alarm_interval_s: float | None = None
    burst: int | None = None
    seed: int | None = None

    @field_validator("enabled")
    @classmethod
    def _not_enabled(cls, enabled: bool) -> bool:
        if enabled:
            raise ValueError(
                _(
                    "the simulated event source is no longer part of the gateway (fix: remove the "
                    "[sim] section; the simulated rig runs it: python -m hil.sim.daemon)"
                )
            )
        return enabled


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
    sim: RetiredSimSection | None = None  # retired; see RetiredSimSection

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
# section, no tables or arrays, no string with an '@' (credentials in a URL). Every sentence goes
# through the catalog (gateway.core.i18n); keys, values and file names stay as written.

EXAMPLE_FILE = "config/carebed.example.toml"
MAX_FILE_BYTES = 1024 * 1024
MAX_KEYBOARD_PROBLEMS = 5
_SHOWN_CHARS = 80
_URL_QUERY = re.compile(r"://[^?#\s]*[?#].*=")
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|cred|auth|private", re.IGNORECASE)
_TOML_POSITION = re.compile(r"(?s)(.*) \(at (line \d+, column \d+|end of document)\)\Z")
_TOML_LINE = re.compile(r"line (\d+), column (\d+)")
# tomllib's messages that hold no text of the file, with what the installer reads instead.
_TOML_STATIC = {
    "Invalid statement": N_("invalid statement"),
    "Unclosed array": N_("unclosed array"),
    "Unclosed inline table": N_("unclosed inline table"),
    "Invalid initial character for a key part": N_("invalid initial character for a key part"),
    "Invalid hex value": N_("invalid hex value"),
    "Unterminated string": N_("unterminated string"),
    "Escaped character is not a Unicode scalar value": N_(
        "escaped character is not a Unicode scalar value"
    ),
    "Invalid date or datetime": N_("invalid date or datetime"),
    "Invalid value": N_("invalid value (strings need double quotes)"),
    "Cannot overwrite a value": N_("a key that is set twice"),
    "Unescaped '\\' in a string": N_("unescaped '\\' in a string"),
    "Expected newline or end of document after a statement": N_(
        "expected newline or end of document after a statement"
    ),
    "Unrecognized escape sequence": N_("unrecognized escape sequence"),
    "Expected '=' after a key in a key/value pair": N_(
        "expected '=' after a key in a key/value pair"
    ),
    "Expected ']' at the end of a table declaration": N_(
        "expected ']' at the end of a table declaration"
    ),
    "Expected ']]' at the end of an array declaration": N_(
        "expected ']]' at the end of an array declaration"
    ),
}
_TOML_EXPECTED = re.compile(r"Expected '([^']{1,3})'")
_TOML_KEYED = (  # (pattern, message naming the key, message when the key is not ours)
    (
        re.compile(r"Cannot declare (\(.*\)) twice"),
        N_("{key} is declared twice"),
        N_("a table is declared twice"),
    ),
    (
        re.compile(r"Cannot mutate immutable namespace (\(.*\))"),
        N_("{key} is an inline table: it cannot be extended"),
        N_("an inline table cannot be extended"),
    ),
    (
        re.compile(r"Cannot redefine namespace (\(.*\))"),
        N_("{key} is redefined"),
        N_("a table is redefined"),
    ),
    (
        re.compile(r"Duplicate inline table key ('.*')"),
        N_("{key} appears twice in an inline table"),
        N_("a key appears twice in an inline table"),
    ),
)

_FIXES = {
    "extra_forbidden": N_("remove it or check its spelling against {example}"),
    "missing": N_("add it"),
    "string_pattern_mismatch": N_("see {example} for the expected form"),
    "literal_error": N_("use one of the values listed"),
}

_PATTERN_FIXES = {
    "gateway": N_("use 3 to 64 characters: a-z, 0-9 and '-', starting with a letter or digit"),
    "watch": N_(
        "a watch address is six hex pairs with colons, e.g. C0:FF:EE:00:00:01; "
        "the adapter is hci0, hci1, ..."
    ),
    "camera": N_(
        "use 1 to 32 characters: letters, digits, '_' and '-'; the url starts with "
        "http:// or https://"
    ),
}

# pydantic's messages by error type, worded as pydantic words them, so that they can be translated.
_PYDANTIC = {
    "missing": N_("Field required"),
    "greater_than": N_("Input should be greater than {gt}"),
    "greater_than_equal": N_("Input should be greater than or equal to {ge}"),
    "less_than": N_("Input should be less than {lt}"),
    "less_than_equal": N_("Input should be less than or equal to {le}"),
    "string_pattern_mismatch": N_("String should match pattern '{pattern}'"),
    "string_too_short": N_("String should have at least {min_length} character"),
    "literal_error": N_("Input should be {expected}"),
    "int_type": N_("Input should be a valid integer"),
    "int_parsing": N_("Input should be a valid integer, unable to parse string as an integer"),
    "int_from_float": N_("Input should be a valid integer, got a number with a fractional part"),
    "float_type": N_("Input should be a valid number"),
    "float_parsing": N_("Input should be a valid number, unable to parse string as a number"),
    "finite_number": N_("Input should be a finite number"),
    "bool_type": N_("Input should be a valid boolean"),
    "bool_parsing": N_("Input should be a valid boolean, unable to interpret input"),
    "string_type": N_("Input should be a valid string"),
    "tuple_type": N_("Input should be a valid tuple"),
    "list_type": N_("Input should be a valid list"),
    "path_type": N_("Input is not a valid path"),
}

_KINDS = {
    "bool": N_("a boolean"),
    "int": N_("an integer"),
    "float": N_("a number"),
    "str": N_("a string"),
    "table": N_("a table"),
    "tables": N_("an array of tables"),
    "array": N_("an array"),
    "date": N_("a date or time"),
}

# --------------------------------------------------------------------------- keyboard mistakes
# Characters a Chinese input method or editor puts where TOML needs their ASCII twins: each is
# named with its line and column, and what to type instead.

_FULL_WIDTH_QUOTE = N_("the full-width quote {char}")
_KEYBOARD: dict[str, tuple[str, str]] = {
    "\u201c": (_FULL_WIDTH_QUOTE, '"'),
    "\u201d": (_FULL_WIDTH_QUOTE, '"'),
    "\uff02": (_FULL_WIDTH_QUOTE, '"'),
    "\u2018": (_FULL_WIDTH_QUOTE, "'"),
    "\u2019": (_FULL_WIDTH_QUOTE, "'"),
    "\uff07": (_FULL_WIDTH_QUOTE, "'"),
    "\uff3b": (N_("the full-width bracket {char}"), "["),
    "\uff3d": (N_("the full-width bracket {char}"), "]"),
    "\u3010": (N_("the full-width bracket {char}"), "["),
    "\u3011": (N_("the full-width bracket {char}"), "]"),
    "\uff5b": (N_("the full-width brace {char}"), "{"),
    "\uff5d": (N_("the full-width brace {char}"), "}"),
    "\uff1a": (N_("the full-width colon {char}"), "="),
    "\uff0c": (N_("the full-width comma {char}"), ","),
    "\u3001": (N_("the ideographic comma {char}"), ","),
    "\uff1d": (N_("the full-width equals sign {char}"), "="),
    "\u3002": (N_("the ideographic full stop {char}"), "."),
    "\uff0e": (N_("the full-width full stop {char}"), "."),
    "\uff03": (N_("the full-width number sign {char}"), "#"),
    "\uff0d": (N_("the full-width minus sign {char}"), "-"),
    "\uff3f": (N_("the full-width underscore {char}"), "_"),
    "\u3000": (N_("an ideographic (full-width) space"), " "),
    "\u00a0": (N_("a non-breaking space"), " "),
    "\ufeff": (N_("a byte-order mark (U+FEFF) inside the file"), ""),
    **{chr(0xFF10 + d): (N_("the full-width digit {char}"), str(d)) for d in range(10)},
}


def keyboard_character(char: str) -> str | None:
    """What ``char`` is, when it is one a Chinese keyboard types for an ASCII one."""
    found = _KEYBOARD.get(char)
    return None if found is None else _(found[0]).format(char=char)


def _replacement(char: str) -> str:
    twin = _KEYBOARD[char][1]
    if not twin:
        return _("delete it")
    if twin == " ":
        return _("replace it with an ordinary space")
    return _("replace {what} with {twin}").format(
        what=_(_KEYBOARD[char][0]).format(char=char), twin=twin
    )


_CLOSING = {'"': "\u201c\u201d\uff02", "'": "\u2018\u2019\uff07"}


def _outside_strings(text: str) -> list[tuple[int, int, str]]:
    """(line, column, character) of each keyboard mistake outside strings and comments."""
    found: list[tuple[int, int, str]] = []
    line, column, i, state, opened = 1, 0, 0, "", 0
    while i < len(text):
        char = text[i]
        step = 1
        if char == "\n":
            if state in ('"', "'"):  # unterminated: closed by a full-width quote, perhaps
                found.extend(
                    (line, column - (i - j) + 1, text[j])
                    for j in range(opened, i)
                    if text[j] in _CLOSING[state]
                )
            if state in ("comment", '"', "'"):
                state = ""  # the end of a comment, or of an unterminated one-line string
            line, column, i = line + 1, 0, i + 1
            continue
        if state == "comment":
            pass
        elif state in ('"', '"""') and char == "\\":
            step = 2
        elif state in ('"', "'", '"""', "'''"):
            if text.startswith(state, i):
                step, state = len(state), ""
        elif char == "#":
            state = "comment"
        elif char in "\"'":
            state = char * 3 if text.startswith(char * 3, i) else char
            step, opened = len(state), i + len(state)
        elif char in _KEYBOARD:
            found.append((line, column + 1, char))
        i += step
        column += step
    return found


def _runs(found: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Adjacent characters on a line joined into one run (four full-width digits), named once."""
    runs: list[tuple[int, int, str]] = []
    for line, column, char in found:
        if runs and runs[-1][0] == line and runs[-1][1] + len(runs[-1][2]) == column:
            runs[-1] = (line, runs[-1][1], runs[-1][2] + char)
        else:
            runs.append((line, column, char))
    return runs


def _run_fix(run: str) -> str:
    if len(run) == 1:
        return _replacement(run)
    return _("replace {chars} with {twins}").format(
        chars=run, twins="".join(_KEYBOARD[c][1] for c in run)
    )


def _keyboard_problems(text: str) -> list[str]:
    found = _runs(_outside_strings(text))
    problems = [
        _(
            "not valid TOML at line {line}, column {column}: {what}, typed in Chinese input mode "
            "(fix: {replace} on line {line}; type the configuration with the input method in "
            "English (half-width) mode)"
        ).format(
            line=line,
            column=column,
            what=_(_KEYBOARD[run[0]][0]).format(char=run),
            replace=_run_fix(run),
        )
        for line, column, run in found[:MAX_KEYBOARD_PROBLEMS]
    ]
    if len(found) > MAX_KEYBOARD_PROBLEMS:
        problems.append(
            _(
                "{count} more characters typed in Chinese input mode after line {line} "
                "(fix: the same for each of them)"
            ).format(
                count=len(found) - MAX_KEYBOARD_PROBLEMS, line=found[MAX_KEYBOARD_PROBLEMS - 1][0]
            )
        )
    return problems


def _keyboard_hint(value: Any) -> str:
    """For a wrong string value: the keyboard mistakes in it, and what to type instead."""
    if not isinstance(value, str):
        return ""
    chars = list(dict.fromkeys(c for c in value if c in _KEYBOARD))
    if not chars:
        return ""
    named = "; ".join(_replacement(c) for c in chars)
    return _(" (it holds characters typed in Chinese input mode: {replace})").format(replace=named)


def _printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (keys are typed by hand)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _kind_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list | tuple):
        tables = bool(value) and all(isinstance(item, dict) for item in value)
        return "tables" if tables else "array"
    return "date"


def _kind(value: Any) -> str:
    return _(_KINDS[_kind_name(value)])


def _shown(value: Any) -> str:
    """A wrong value as an error may show it: a scalar, short, never with credentials."""
    if isinstance(value, bool | float):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else _("a very large integer")
    if isinstance(value, str):
        if pasted(value):
            return _("pasted text of {chars} characters (not shown: it may be a key)").format(
                chars=len(value)
            )
        if _URL_QUERY.search(value):
            return _("a URL with a query (not shown: it may hold a token)")
        if "@" in value:
            return _("a string with '@' (not shown: it may hold credentials)")
        if len(value) > _SHOWN_CHARS:
            return json.dumps(value[: _SHOWN_CHARS - 3] + "...", ensure_ascii=False)
        return json.dumps(value, ensure_ascii=False)
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
    if isinstance(value, dict):
        what = _("unknown section") if len(loc) == 1 else _("unknown table")
    elif _kind_name(value) == "tables":
        what = _("unknown array of tables")
    else:
        what = _("unknown key")
    guess = _suggestion(str(loc[-1]), known_keys(loc[:-1]))
    hint = ""
    if guess is not None:
        full = ".".join([*(str(part) for part in loc[:-1]), guess])
        shown = f"[{full}]" if isinstance(value, dict) or _kind_name(value) == "tables" else full
        hint = " " + _("(did you mean {key}?)").format(key=shown)
    template = _FIXES["extra_forbidden"]
    fix = _(template).format(example=EXAMPLE_FILE)
    return _("{key}: {what}{hint} (fix: {fix})").format(key=key, what=what, hint=hint, fix=fix)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(loc: tuple[int | str, ...]) -> str:
    """A location as TOML writes a dotted key: ``mqtt.tls.ca_file``, ``camera."user name"``."""
    parts = [str(part) for part in loc if part not in ("function-after[]",)]
    quoted = [part if _BARE_KEY.fullmatch(part) else json.dumps(part) for part in parts]
    return ".".join(quoted) or "(file)"


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _pydantic_message(error: Any) -> str:
    """pydantic's message for ``error``, in the reader's language where the catalog has it."""
    template = _PYDANTIC.get(error["type"])
    ctx = {name: _number(value) for name, value in (error.get("ctx") or {}).items()}
    if template is not None:
        try:
            return _(template).format(**ctx)
        except (KeyError, IndexError, ValueError):
            pass
    return str(error["msg"]).removeprefix("Value error, ")


def _problem(error: Any) -> str:
    loc = tuple(error["loc"])
    key = _key(loc)
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return _unknown(loc, value)
    message = _pydantic_message(error)
    if message.startswith(("mqtt.", "camera.", "vitals.")):
        return message
    if error["type"] == "model_type":
        table_fix = _("write it as a table: [{key}] followed by its keys").format(key=key)
        if _kind_name(value) == "tables":
            table_fix = _(
                "write [{key}] with single brackets: [[{key}]] makes an array of tables"
            ).format(key=key)
        return _("{key}: should be a table (got {kind}) (fix: {fix})").format(
            key=key, kind=_kind(value), fix=table_fix
        )
    template = _FIXES.get(error["type"], _FIXES["string_pattern_mismatch"])
    fix: str | None = _(template).format(example=EXAMPLE_FILE)
    if error["type"] == "string_pattern_mismatch" and str(loc[0]) in _PATTERN_FIXES:
        fix = _(_PATTERN_FIXES[str(loc[0])])
    if error["type"] == "value_error":
        fix = None
    secret = any(_SECRET_NAME.search(str(part)) for part in loc)
    if error["type"] in ("missing", "value_error", "assertion_error"):
        shown = ""  # the input is the enclosing table, passwords included
    elif secret:
        shown = _(" (got {value})").format(value=_kind(value))
    else:
        shown = _(" (got {value})").format(value=_shown(value)) + _keyboard_hint(value)
    text = _("{key}: {message}{shown}").format(key=key, message=message, shown=shown)
    return _("{problem} (fix: {fix})").format(problem=text, fix=fix) if fix else text


def _nul_problems(data: Any, loc: tuple[str, ...] = ()) -> list[str]:
    """Strings with a NUL character, which no path or name may hold (``"\\u0000"`` in TOML)."""
    if isinstance(data, dict):
        return [p for key, item in data.items() for p in _nul_problems(item, (*loc, str(key)))]
    if isinstance(data, list):
        return [p for i, item in enumerate(data) for p in _nul_problems(item, (*loc, str(i)))]
    if isinstance(data, str) and "\x00" in data:
        return [
            _("{key}: contains a NUL character (fix: remove the \\u0000 escape)").format(
                key=_key(loc)
            )
        ]
    return []


def config_error(source: str, problems: list[str]) -> ConfigError:
    return ConfigError(source, [_printable(problem) for problem in problems])


def parse(
    data: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> GatewayConfig:
    """Validate a parsed TOML document."""
    nul = _nul_problems(data)
    if nul:
        raise config_error(source, nul)
    try:
        return GatewayConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors(include_url=False)]
        raise config_error(source, problems) from None
    except RecursionError:
        raise config_error(source, [_("tables nested too deeply (fix: flatten them)")]) from None


def _toml_problem(exc: ValueError) -> str:
    """A TOML syntax error as a problem: where it is and what, without quoting the file."""
    text = str(exc)
    match = _TOML_POSITION.match(text)
    what = match[1] if match else text
    where = ""
    if match:
        position = _TOML_LINE.fullmatch(match[2])
        where = (
            _(" at line {line}, column {column}").format(line=position[1], column=position[2])
            if position
            else _(" at the end of the file")
        )
    if "integer string conversion" in what:
        what = _("a number with thousands of digits")
    elif what.startswith(("Illegal character", "Found invalid character")):
        what = _("a character not allowed there (a control character, or a line break in a string)")
    elif what in _TOML_STATIC:
        what = _(_TOML_STATIC[what])
    elif _TOML_EXPECTED.fullmatch(what):
        what = _("expected '{token}'").format(token=_TOML_EXPECTED.fullmatch(what)[1])  # type: ignore[index]
    else:
        for pattern, named, unnamed in _TOML_KEYED:
            keyed = pattern.fullmatch(what)
            if keyed:
                key = _toml_key(keyed[1])
                what = _(named).format(key=key) if key else _(unnamed)
                break
        else:
            what = _("a syntax error")
    fix = _(
        "fix: correct that line: strings in double quotes, one key = value per line, each "
        "[section] once; compare with {example}"
    ).format(example=EXAMPLE_FILE)
    return _("not valid TOML{where}: {what} ({fix})").format(where=where, what=what, fix=fix)


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


BOM = b"\xef\xbb\xbf"


def _decode(raw: bytes, source: str) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise config_error(
            source,
            [_("the file is saved as UTF-16 (fix: save it as UTF-8, e.g. with iconv -t UTF-8)")],
        )
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark: preflight warns about it
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = _(
            "not UTF-8 text at line {line} (fix: save the file as UTF-8; in Notepad: "
            "Save as, Encoding UTF-8)"
        ).format(line=line)
        raise config_error(source, [problem]) from None


def load(path: Path) -> GatewayConfig:
    """Read and validate the configuration file at ``path``."""
    source = str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            source,
            [_("cannot read the file: {reason} (fix: check the path)").format(reason=exc.strerror)],
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise config_error(
            source,
            [
                _("the file is larger than {limit} bytes (fix: check the path)").format(
                    limit=MAX_FILE_BYTES
                )
            ],
        )
    text = _decode(raw, source)
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, and a 5000-digit number
        if isinstance(exc, RecursionError):
            problems = [_("not valid TOML: tables or arrays nested too deeply (fix: flatten them)")]
        else:
            problems = _keyboard_problems(text) or [_toml_problem(exc)]
        raise config_error(source, problems) from None
    return parse(data, source=source, base_dir=path.parent.resolve())


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file."""
    return GatewayConfig.model_json_schema()


_NAMES = _all_names()
