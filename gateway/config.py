"""The gateway's configuration: one TOML file validated into frozen pydantic models."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

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


_FIXES = {
    "extra_forbidden": "remove it or check its spelling against config/carebed.example.toml",
    "missing": "add it",
    "string_pattern_mismatch": "see config/carebed.example.toml for the expected form",
    "literal_error": "use one of the values listed",
}


_PATTERN_FIXES = {
    "gateway": "use 3 to 64 characters: a-z, 0-9 and '-', starting with a letter or digit",
    "watch": "a watch address is six hex pairs with colons, e.g. C0:FF:EE:00:00:01; "
    "the adapter is hci0, hci1, ...",
    "camera": "use 1 to 32 characters: letters, digits, '_' and '-'; the url starts with "
    "http:// or https://",
}


def _key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if part not in ("function-after[]",)) or "(file)"


def _problem(error: Any) -> str:
    loc = tuple(error["loc"])
    key = _key(loc)
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith(("mqtt.", "camera.", "sim.", "vitals.")):
        return message
    fix: str | None = _FIXES.get(
        error["type"], "see config/carebed.example.toml for the expected form"
    )
    if error["type"] == "string_pattern_mismatch":
        fix = _PATTERN_FIXES.get(str(loc[0]), fix)
    if error["type"] == "value_error":
        fix = None
    secret = any("password" in str(part) for part in loc)
    hidden = secret or error["type"] in ("missing", "value_error")
    shown = "" if hidden else f" (got {json.dumps(error['input'], default=str)})"
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    text = f"{key}: {message}{shown}"
    return f"{text} (fix: {fix})" if fix else text


def parse(
    data: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> GatewayConfig:
    """Validate a parsed TOML document."""
    try:
        return GatewayConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors(include_url=False)]
        raise ConfigError(source, problems) from None


def load(path: Path) -> GatewayConfig:
    """Read and validate the configuration file at ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            str(path), [f"cannot read the file: {exc.strerror} (fix: check the path)"]
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse(data, source=str(path), base_dir=path.parent.resolve())


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file."""
    return GatewayConfig.model_json_schema()
