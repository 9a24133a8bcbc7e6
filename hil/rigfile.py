"""The rig description (TOML): for each part of the rig, real or simulated, and where it is.

A technician writes one per rig (``hil/rigs/gateway.toml`` is the template; ``hil/rigs/sim.toml``
is the all-simulated rig of CI). Parts left out are not on the rig: their scenarios are skipped
with that reason.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.core.i18n import _

GATEWAY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,63}$")
BUTTON_ID = re.compile(r"^(btn-)?[0-9A-Fa-f]{8}$")
WATCH_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
DEFAULT_STEP_S = 60.0


class RigError(Exception):
    """The rig description cannot be used; ``problems`` name each key and the fix."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    simulated: bool = False


class RigInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "rig"
    technician: str = ""
    notes: str = ""


class GatewayPart(_Part):
    """The gateway under test: started by the suite (simulated), or a real one by its id; on the
    gateway itself, ``config`` lets the suite ask the daemon (receiver firmware)."""

    id: str = "gw-hil"
    config: Path | None = None
    # Simulated: how long a paired button may stay silent before it is reported offline.
    supervision_window_s: Annotated[float, Field(gt=0)] = 3.0

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not GATEWAY_ID.match(value):
            raise ValueError("3-64 of a-z 0-9 '-', as the gateway's [gateway] id")
        return value


class BrokerPart(_Part):
    """The platform's broker the gateway uses; TLS with the technician's certificate."""

    host: str = "127.0.0.1"
    port: int | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class PlatformPart(BaseModel):
    """Who plays the platform: the suite (it acknowledges alarms itself), or a real platform
    whose desk acknowledges while the suite only observes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["suite", "observe"] = "suite"


class ReceiverPart(_Part):
    port: str = "/dev/carebed-button"
    buttons: list[str] = Field(min_length=1)
    unpaired_button: str | None = None
    # Simulated only: a broken part, to see the suite fail the right scenario.
    fault: Literal["no_indicate"] | None = None

    @field_validator("buttons")
    @classmethod
    def _buttons(cls, value: list[str]) -> list[str]:
        for button in value:
            if not BUTTON_ID.match(button):
                raise ValueError(f"{button!r}: a button id is 8 hex digits, as printed on it")
        return value

    @field_validator("unpaired_button")
    @classmethod
    def _unpaired(cls, value: str | None) -> str | None:
        if value is not None and not BUTTON_ID.match(value):
            raise ValueError(f"{value!r}: a button id is 8 hex digits, as printed on it")
        return value

    def button_ids(self) -> list[int]:
        return [int(b.removeprefix("btn-"), 16) for b in self.buttons]

    def unpaired_id(self) -> int | None:
        if self.unpaired_button is None:
            return None
        return int(self.unpaired_button.removeprefix("btn-"), 16)


class WatchPart(_Part):
    address: str

    fault: Literal["no_confirm"] | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not WATCH_ADDRESS.match(value):
            raise ValueError(f"{value!r}: a BLE address such as C0:FF:EE:00:00:01")
        return value.upper()

    @property
    def device(self) -> str:
        return "watch-" + self.address.replace(":", "")


class CameraPart(_Part):
    url: str = ""
    user: str = ""
    password: str = ""
    name: str = "hil"


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    step_s: Annotated[float, Field(gt=0)] = DEFAULT_STEP_S
    # How long the suite listens to be sure that nothing comes (an unpaired button).
    quiet_s: Annotated[float, Field(gt=0)] = 10.0


class Rig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rig: RigInfo = RigInfo()
    gateway: GatewayPart = GatewayPart()
    broker: BrokerPart = BrokerPart()
    platform: PlatformPart = PlatformPart()
    receiver: ReceiverPart | None = None
    watch: WatchPart | None = None
    camera: CameraPart | None = None
    timeouts: Timeouts = Timeouts()

    def simulated_parts(self) -> list[str]:
        parts: list[tuple[str, _Part | None]] = [
            ("gateway", self.gateway),
            ("broker", self.broker),
            ("receiver", self.receiver),
            ("watch", self.watch),
            ("camera", self.camera),
        ]
        return [name for name, part in parts if part is not None and part.simulated]

    def problems(self) -> list[str]:
        """What a valid TOML can still get wrong: a mix the suite cannot run."""
        found = []
        simulated = self.simulated_parts()
        if self.gateway.simulated:
            real = [
                name
                for name, part in (
                    ("broker", self.broker),
                    ("receiver", self.receiver),
                    ("watch", self.watch),
                    ("camera", self.camera),
                )
                if part is not None and not part.simulated
            ]
            if real:
                found.append(
                    _(
                        "gateway.simulated: a simulated gateway reaches simulated parts only "
                        "(fix: make {parts} simulated too, or test a real gateway)"
                    ).format(parts=", ".join(real))
                )
        elif simulated:
            found.append(
                _(
                    "{parts}: simulated parts need a simulated gateway (fix: set "
                    "gateway.simulated = true, or describe the real parts)"
                ).format(parts=", ".join(simulated))
            )
        if not self.broker.simulated and self.broker.port is None:
            found.append(_("broker.port: the port of the platform's broker (fix: 8883 with TLS)"))
        for name, part in (("receiver", self.receiver), ("watch", self.watch)):
            if part is not None and not part.simulated and getattr(part, "fault", None):
                found.append(
                    _("{part}.fault: only a simulated part can be broken on purpose").format(
                        part=name
                    )
                )
        return found


def load(path: Path) -> Rig:
    """The rig of ``path``, or RigError naming every problem."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RigError(path, [_("cannot read it: {error}").format(error=exc)]) from None
    except tomllib.TOMLDecodeError as exc:
        raise RigError(path, [_("not TOML: {error}").format(error=exc)]) from None
    try:
        rig = Rig.model_validate(document)
    except ValidationError as exc:
        problems = [
            ".".join(str(p) for p in error["loc"]) + ": " + error["msg"] for error in exc.errors()
        ]
        raise RigError(path, problems) from None
    problems = rig.problems()
    if problems:
        raise RigError(path, problems)
    return rig
