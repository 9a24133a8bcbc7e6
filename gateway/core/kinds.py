"""The event kinds of the platform's contract, as closed types (no pydantic: drivers import this).

The data each kind carries is in ``gateway.core.events``; a test checks that both name the same
kinds.
"""

from __future__ import annotations

from typing import Literal

AlarmKind = Literal[
    "alarm.button",
    "alarm.cancelled",
    "alarm.watch_sos",
    "alarm.fall",
    "alarm.vitals",
]
"""The alarm kinds of the contract: what a driver may raise."""

EventKind = (
    AlarmKind
    | Literal[
        "telemetry.vitals",
        "device.online",
        "device.offline",
        "device.battery",
        "device.tamper",
        "device.worn",
        "device.not_worn",
        "device.paired",
        "device.unpaired",
        "gateway.started",
        "gateway.stopping",
        "gateway.heartbeat",
        "gateway.power",
        "gateway.dropped",
        "gateway.clock",
        "camera.call",
        "audit.alarm_acknowledged",
        "audit.command",
        "audit.config_changed",
        "audit.camera_activated",
        "cmd.result",
    ]
)
"""Every kind of the contract: a closed type, so that a misspelt kind fails the type check."""


def event_class(kind: str) -> str:
    """The topic class of a kind: the part before the first dot; ``cmd.result`` goes to cmdres."""
    return "cmdres" if kind == "cmd.result" else kind.split(".", 1)[0]
