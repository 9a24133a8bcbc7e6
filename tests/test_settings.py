"""``config.set``: the platform changes thresholds and intervals; validated, persisted, audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivers.watch.rules import RULE_METRIC
from drivers.watch.vitals import METRICS
from gateway.app import config
from gateway.app.settings import RemoteSettings
from gateway.core.errors import CommandError
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until


def _local(**sections: Any) -> config.GatewayConfig:
    return config.parse(
        {"gateway": {"id": "gw-a"}, "mqtt": {"host": "broker", "plaintext": True}, **sections}
    )


async def _command(platform: PlatformClient, cmd_id: str, args: dict[str, Any]) -> dict[str, Any]:
    platform.publish(
        "carebed/v1/gw-a/down/cmd", {"v": 1, "id": cmd_id, "name": "config.set", "args": args}
    )
    await wait_platform(
        platform,
        lambda p: any(e["data"]["cmd_id"] == cmd_id for e in kinds(p, "cmd.result")),
        f"the result of {cmd_id}",
    )
    return next(e["data"] for e in kinds(platform, "cmd.result") if e["data"]["cmd_id"] == cmd_id)


async def test_config_set_applies_persists_and_audits(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    change = {
        "vitals": {
            "rules": {"heart_rate_high": {"threshold": 130, "min_duration_s": 30}},
            "intervals": {"heart_rate": 15},
        },
        "heartbeat_s": 120,
    }
    async with running_gateway(tmp_path, mosquitto) as rig:
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "connection")
        # The broker has the downlink SUBSCRIBE once it passed on an event the gateway published
        # after it on the same connection (``connected`` is set at the CONNACK).
        await wait_platform(platform, lambda p: kinds(p, "gateway.started"), "started")
        result = await _command(platform, "set-1", change)
        assert result["ok"], result
        assert sorted(result["result"]["changed"]) == [
            "heartbeat_s",
            "vitals.intervals.heart_rate",
            "vitals.rules.heart_rate_high.min_duration_s",
            "vitals.rules.heart_rate_high.threshold",
        ]
        cfg = rig.gateway.cfg
        assert cfg.vitals.rules.heart_rate_high.threshold == 130
        assert cfg.vitals.rules.heart_rate_high.hysteresis == 5  # untouched keys keep their value
        assert cfg.vitals.intervals.heart_rate == 15
        assert rig.gateway.heartbeat.interval_s == 120
        await wait_platform(
            platform, lambda p: len(kinds(p, "audit.config_changed")) == 1, "the audit event"
        )
        (audit,) = kinds(platform, "audit.config_changed")
        assert audit["data"]["who"] == "platform"
        assert {
            "key": "vitals.rules.heart_rate_high.threshold",
            "old": 120.0,
            "new": 130.0,
        } in audit["data"]["changes"]

        # The same values again change nothing and are not audited again.
        again = await _command(platform, "set-2", change)
        assert again["ok"] and again["result"] == {"changed": []}

    # A restart keeps the platform's settings.
    async with running_gateway(tmp_path, mosquitto) as rig:
        assert rig.gateway.cfg.vitals.rules.heart_rate_high.threshold == 130
        assert rig.gateway.cfg.gateway.heartbeat_s == 120
    assert len(kinds(platform, "audit.config_changed")) == 1


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"mqtt": {"host": "evil"}}, "mqtt"),
        ({"camera": {"remote_access": True}}, "camera"),
        ({"vitals": {"rules": {"heart_rate_high": {"min_duration_s": -1}}}}, "min_duration_s"),
        ({"vitals": {"rules": {"pulse_high": {"threshold": 1}}}}, "pulse_high"),
        ({"vitals": {"intervals": {"heart_rate": "often"}}}, "heart_rate"),
        ({"heartbeat_s": 0}, "heartbeat_s"),
        ({"vitals": {"rules": {"heart_rate_high": {"threshold": float("nan")}}}}, "finite"),
        ({"vitals": {"rules": {"spo2_low": {"threshold": 20}}}}, "outside 70..99"),
        ({"vitals": {"rules": {"heart_rate_low": {"hysteresis": 1e9}}}}, "hysteresis"),
        ({"vitals": {"intervals": {"steps": float("inf")}}}, "finite"),
        ({"vitals": []}, "vitals"),
        ({}, "nothing"),
    ],
)
def test_config_set_refuses_what_is_not_safe_or_not_valid(
    tmp_path: Path, args: dict[str, Any], named: str
) -> None:
    settings = RemoteSettings(tmp_path / "remote-settings.json")
    local = _local()
    with pytest.raises(CommandError) as caught:
        settings.apply(local, args)
    assert caught.value.code == "invalid_args"
    assert named in caught.value.message
    assert not settings.path.exists()


def test_remote_settings_lie_over_the_file_and_a_damaged_one_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "remote-settings.json"
    local = _local(vitals={"rules": {"spo2_low": {"threshold": 88}}})
    updated, _ = RemoteSettings(path).apply(local, {"vitals": {"intervals": {"steps": 60}}})
    assert updated.vitals.intervals.steps == 60
    reloaded = RemoteSettings(path).load(local)
    assert reloaded.vitals.intervals.steps == 60
    assert reloaded.vitals.rules.spo2_low.threshold == 88  # the file's own value stays

    path.write_text(json.dumps({"vitals": {"intervals": {"steps": -5}}}))
    assert RemoteSettings(path).load(local) == local
    assert not path.exists()
    assert list(tmp_path.glob("remote-settings.json.damaged-*"))


def test_the_configuration_names_every_metric_and_rule_the_watch_knows() -> None:
    assert tuple(config.VitalsIntervals.model_fields) == METRICS
    assert set(config.VitalsRules.model_fields) == set(config.DEFAULT_RULES) == set(RULE_METRIC)
