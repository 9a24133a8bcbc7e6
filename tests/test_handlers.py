"""Command arguments: one model per command, read the same way from the platform and the socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.app import config, control
from gateway.app.handlers import (
    ButtonPairArgs,
    ButtonUnpairArgs,
    CameraCallArgs,
    CameraTestArgs,
    NoArgs,
    WatchAddressArgs,
    WatchScanArgs,
    command_args,
    control_args,
)
from gateway.core.errors import CommandError, ControlError
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until

MODELS = [
    NoArgs,
    ButtonPairArgs,
    ButtonUnpairArgs,
    CameraCallArgs,
    CameraTestArgs,
    WatchScanArgs,
    WatchAddressArgs,
]

REFUSED = [
    (NoArgs, {"x": 1}, "takes no arguments, got ['x']"),
    (ButtonPairArgs, {"duration_s": 0}, "duration_s must be an integer from 1 to 255"),
    (ButtonPairArgs, {"duration_s": 256}, "duration_s must be an integer from 1 to 255"),
    (ButtonPairArgs, {"duration_s": "30"}, "duration_s must be an integer from 1 to 255"),
    (ButtonPairArgs, {"duration_s": True}, "duration_s must be an integer from 1 to 255"),
    (ButtonPairArgs, {"seconds": 30}, "does not take 'seconds' (takes duration_s)"),
    (ButtonUnpairArgs, {}, "device must be a button device id (e.g. btn-00A1B2C3)"),
    (
        ButtonUnpairArgs,
        {"device": "btn-0A1B2C3Z"},
        "device: 'btn-0A1B2C3Z' is not a button device id (e.g. btn-00A1B2C3)",
    ),
    (ButtonUnpairArgs, {"device": 5}, "device: 5 is not a button device id (e.g. btn-00A1B2C3)"),
    (CameraCallArgs, {"alarm_id": None}, "reason must be text"),
    (CameraCallArgs, {"reason": "x", "alarm_id": 7}, "alarm_id must be an alarm id or null"),
    (CameraTestArgs, {"call": "yes"}, "call must be true or false"),
    (WatchScanArgs, {"seconds": 121}, "seconds must be an integer from 1 to 120"),
    (WatchAddressArgs, {}, "address must be a BLE address (e.g. C0:FF:EE:00:00:01)"),
    (
        WatchAddressArgs,
        {"address": "C0:FF:EE"},
        "address: 'C0:FF:EE' is not a BLE address (e.g. C0:FF:EE:00:00:01)",
    ),
]


@pytest.mark.parametrize(("model", "args", "message"), REFUSED)
def test_both_paths_refuse_with_the_same_words(
    model: type[NoArgs], args: dict[str, Any], message: str
) -> None:
    with pytest.raises(CommandError) as platform:
        command_args(model, args)
    assert (platform.value.code, platform.value.message) == ("invalid_args", message)
    with pytest.raises(ControlError) as socket:
        control_args(model, args)
    assert str(socket.value) == message


def test_arguments_are_read_into_their_values() -> None:
    assert command_args(ButtonPairArgs, {}).duration_s == 60
    assert control_args(ButtonUnpairArgs, {"device": "btn-00a1b2c3"}).device == 0x00A1B2C3
    assert command_args(WatchAddressArgs, {"address": "c0:ff:ee:00:00:01"}).address == (
        "C0:FF:EE:00:00:01"
    )
    call = command_args(CameraCallArgs, {"reason": "check"})
    assert (call.reason, call.alarm_id) == ("check", None)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_names = st.sampled_from(
    ["duration_s", "seconds", "device", "address", "reason", "alarm_id", "call", "x"]
)


@given(st.sampled_from(MODELS), st.dictionaries(_names | st.text(max_size=8), _json, max_size=4))
def test_any_arguments_are_read_or_refused_in_words(
    model: type[NoArgs], args: dict[str, Any]
) -> None:
    refusal: CommandError | None = None
    try:
        command_args(model, args)
    except CommandError as exc:
        refusal = exc
    unknown = [name for name in args if name not in model.model_fields]
    if refusal is None:
        assert not unknown
        return
    assert refusal.code == "invalid_args"
    assert refusal.message
    assert all(repr(name) in refusal.message for name in unknown)


async def test_a_daemon_answers_bad_arguments_and_a_missing_receiver_on_both_paths(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    """The receiver's port does not exist: pairing is ``busy`` for the platform and refused
    with the reason on the socket; arguments are checked before anything is tried."""
    button = {"enabled": True, "port": str(tmp_path / "no-such-tty"), "reopen_interval_s": 0.05}
    commands = [
        ("b-1", "button.pair", {"duration_s": 30}),
        ("b-2", "button.pair", {"duration_s": 0}),
        ("b-3", "button.unpair", {"device": "00A1B2C3"}),
        ("b-4", "ping", {"verbose": True}),
    ]
    async with running_gateway(tmp_path, mosquitto, button=button) as rig:
        await wait_until(rig.gateway.uplink.subscribed.is_set, 10, "the downlink's SUBSCRIBE")
        for cmd_id, name, args in commands:
            platform.publish(
                "carebed/v1/gw-a/down/cmd", {"v": 1, "id": cmd_id, "name": name, "args": args}
            )
        await wait_platform(
            platform, lambda p: len(kinds(p, "cmd.result")) == len(commands), "the results"
        )
        socket = config.load(tmp_path / "carebed.toml").control_socket
        await wait_until(socket.exists, 10, "the control socket")
        refusals = {}
        for cmd, args in [
            ("button.pair", {"duration_s": 30}),
            ("button.pair", {"duration_s": 300}),
            ("button.unpair", {"device": "btn-"}),
            ("watch.scan", {"seconds": 0}),
            ("watch.scan", {}),
        ]:
            with pytest.raises(ControlError) as refused:
                await control.ask(socket, cmd, args)
            refusals[cmd, str(args)] = str(refused.value)
    errors = {r["data"]["cmd_id"]: r["data"]["error"] for r in kinds(platform, "cmd.result")}
    assert errors == {
        "b-1": {"code": "busy", "message": "the button receiver is not connected"},
        "b-2": {"code": "invalid_args", "message": "duration_s must be an integer from 1 to 255"},
        "b-3": {
            "code": "invalid_args",
            "message": "device: '00A1B2C3' is not a button device id (e.g. btn-00A1B2C3)",
        },
        "b-4": {"code": "invalid_args", "message": "takes no arguments, got ['verbose']"},
    }
    assert list(refusals.values()) == [
        "the button receiver is not connected",
        "duration_s must be an integer from 1 to 255",
        "device: 'btn-' is not a button device id (e.g. btn-00A1B2C3)",
        "seconds must be an integer from 1 to 120",
        "watches are not enabled ([watch] enabled = false)",
    ]
