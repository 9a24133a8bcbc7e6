"""The bench's summary: every figure with a target is checked, and a miss is named."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.common import percentile
from bench.run import Bench, _pooled_alarm_figures, parse_args, print_summary, summarise


def _latency(p50: float, p99: float) -> dict[str, float]:
    return {"p50": p50, "p99": p99, "max": p99}


def _runs(*, flash_up_ratio: float = 0.5, drain_large_per_s: float = 100_000.0) -> dict[str, Any]:
    alarm = {
        "alarms": {
            "latency_ms": _latency(1.0, 2.0),
            "stored_ms": _latency(0.5, 1.0),
            "delivered_ms": _latency(0.8, 1.5),
            "counted": 200,
        },
        "vmhwm_kb": 45_000,
    }
    button = {
        "latency_ms": _latency(2.0, 3.0),
        "ack_ms": _latency(1.0, 2.0),
        "counted": 500,
        "gateway_runs": [{"presses": {"samples_ms": [2.0, 3.0]}}],
    }
    watch_stats = {"p50": 1.0, "p95": 1.5, "p99": 2.0, "max": 3.0}
    watch = {
        "confirm_ms": watch_stats,
        "confirm_samples_ms": [1.0, 2.0],
        "platform_ms": watch_stats,
        "confirm_ms_few_remembered": watch_stats,
        "confirm_ms_full_list": watch_stats,
    }
    runs: dict[str, Any] = {
        "baseline_inflight_20": [{"events_per_s": 5_000.0}],
        "baseline_inflight_100": [{"events_per_s": 6_000.0}],
        "drain": [
            {
                "events_per_s": 60_000.0,
                "events_per_s_from_connected": 61_000.0,
                "cpu_s": 1.0,
                "write_bytes_per_event": 400.0,
                "vmhwm_kb": 47_000,
            }
        ],
        "alarms_idle": [alarm],
        "alarms_draining": [alarm],
        "button_idle": [button],
        "button_draining": [button],
        "watch_gateway": [watch],
        "watch_baseline": [{**watch, "confirm_ms": {**watch_stats, "p50": 0.5}}],
        "queued_empty": [{"put_us_per_event": 10.0, "claim_us_per_event": 5.0}],
        "queued_large": [{"put_us_per_event": 11.0, "claim_us_per_event": 5.5}],
        "drain_large": [{"events_per_s": drain_large_per_s}],
    }
    for rate in ("0.2", "2", "500"):
        for uplink, ratio in (("up", flash_up_ratio), ("down", 1.5)):
            idle = {
                "online_s": 305.0,
                "running_s": 305.0,
                "write_bytes": 90_112,
                "cancelled_write_bytes": 32_768,
                "net_write_bytes": 57_344,
                "online_net_write_bytes": 20_480,
                "events_net_write_bytes": 0,
                "bytes_per_hour": 0.0,
            }
            runs[f"flash_{uplink}_rate{rate}"] = [
                {
                    "events": 60,
                    "online_s": 305.0,
                    "window_s": 60.0,
                    "window_shipped": True,
                    "bytes_per_event": ratio * 250,
                    "event_json_bytes": 250,
                    "ratio": ratio,
                    "page_per_event": 4096 / 60,
                    "raw_bytes_per_event": 57_344 / 60 + ratio * 250,
                    "write_bytes": 90_112 + ratio * 250 * 60,
                    "cancelled_write_bytes": 32_768,
                    "net_write_bytes": 57_344 + ratio * 250 * 60,
                    "online_net_write_bytes": 20_480 + ratio * 250 * 60,
                    "events_net_write_bytes": ratio * 250 * 60,
                    **{f"idle_{key}": value for key, value in idle.items()},
                }
            ]
    return runs


def test_every_figure_with_a_target_is_checked() -> None:
    summary = summarise(parse_args([]), _runs())
    assert sorted(t["name"] for t in summary["targets"]) == sorted(
        [
            "drain",
            "alarm p99 draining/idle",
            "button idle p99",
            "button p99 draining/idle",
            "watch SOS → 0x01 p50 gateway/bleak",
            *(
                f"flash writes, uplink {u}, {r}/s"
                for u in ("up", "down")
                for r in ("0.2", "2", "500")
            ),
            "put cost, 1000000 queued/empty",
            "claim cost, 1000000 queued/empty",
            "drain of 1000000 queued",
        ]
    )
    assert all(t["ok"] for t in summary["targets"])
    row = summary["flash"]["up 0.2/s"]
    assert row["bytes_per_event"] == 125.0  # per event beyond the idle gateway, kept
    assert row["idle_net_write_bytes"] == 57_344  # and the idle gateway's own bytes beside it
    assert row["raw_bytes_per_event"] == 57_344 / 60 + 125.0


def test_home_flash_runs_last_as_long_as_the_longest() -> None:
    """--flash-events and --flash-min-seconds are floors; home rates share the longest run."""
    bench = Bench(parse_args(["--quick"]), Path("/nonexistent"))
    assert bench.flash_seconds(0.2) == 60.0  # 12 events
    assert bench.flash_seconds(2) == 6.0
    assert bench.flash_seconds(500) == 3.0  # at least --flash-min-seconds
    assert bench.flash_home_seconds() == 60.0
    full = Bench(parse_args([]), Path("/nonexistent"))
    assert full.flash_home_seconds() == 300.0


def test_a_missed_target_is_named_in_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    summary = summarise(parse_args([]), _runs(flash_up_ratio=1.2, drain_large_per_s=math.nan))
    missed = {t["name"] for t in summary["targets"] if not t["ok"]}
    # A figure that could not be computed (NaN) misses its target too.
    assert missed == {
        "flash writes, uplink up, 0.2/s",
        "flash writes, uplink up, 2/s",
        "flash writes, uplink up, 500/s",
        "drain of 1000000 queued",
    }
    print_summary({"date": "today", "nproc": 2, "cpu_model": "test"}, summary)
    out = capsys.readouterr().out
    assert "target <= 1x: MISSED" in out
    # the flash figure says what it counts, and the idle gateway's cost is shown, not hidden
    assert "window 60 s (shipped); net bytes beyond an idle gateway's" in out
    assert "an idle gateway: 57.3 kB per boot (start-up to close), 0 kB/h while running" in out
    assert "targets: 10 of 14 met; MISSED: flash writes, uplink up, 0.2/s" in out


def test_latency_figures_count_enough_samples_for_a_p99() -> None:
    """A p99 is the nearest rank: of 40 samples it is the largest, of 200 the 3rd largest. The
    alarm and button figures count 200 by default, quick or not, from as many draining
    gateways as it takes."""
    assert percentile(list(range(1, 41)), 99) == 40
    assert percentile(list(range(1, 201)), 99) == 198
    for argv in ([], ["--quick"]):
        args = parse_args(argv)
        assert args.alarms >= 200 and args.presses >= 200
        assert args.alarm_drain_runs >= 5 and args.button_drain_runs >= 5
    assert parse_args(["--quick", "--alarms", "300", "--alarm-drain-runs", "2"]).alarms == 300


def test_alarm_figures_of_several_gateways_are_pooled() -> None:
    first = {
        "raised": 200,
        "counted": 2,
        "samples_ms": [1.0, 9.0],
        "stored_samples_ms": [0.5, 0.7],
        "delivered_samples_ms": [2.0],
    }
    second = {
        "raised": 200,
        "counted": 1,
        "samples_ms": [5.0],
        "stored_samples_ms": [0.6],
        "delivered_samples_ms": [3.0],
    }
    pooled = _pooled_alarm_figures([first, second])
    assert pooled["raised"] == 400
    assert pooled["counted"] == 3
    assert pooled["latency_ms"] == {"p50": 5.0, "p99": 9.0, "max": 9.0}
    assert pooled["stored_ms"]["p50"] == 0.6
    assert pooled["delivered_ms"]["max"] == 3.0


def test_the_summary_says_how_many_samples_each_p99_is_over(
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = _runs()
    runs["alarms_draining"] = [{**runs["alarms_draining"][0], "gateway_runs": [{}, {}, {}, {}, {}]}]
    runs["alarms_draining"][0]["alarms"] = {**runs["alarms_draining"][0]["alarms"], "counted": 40}
    summary = summarise(parse_args([]), runs)
    print_summary({"date": "today", "nproc": 2, "cpu_model": "test"}, summary)
    out = capsys.readouterr().out
    assert (
        "samples per repeat: idle 200 on 1 gateway(s) (p99: the 3rd largest), "
        "draining 40 on 5 gateway(s) (p99: the largest)"
    ) in out
    assert (
        "samples per repeat: idle 500 on 1 gateway(s) (p99: the 6th largest), "
        "draining 500 on 1 gateway(s) (p99: the 6th largest)"
    ) in out
