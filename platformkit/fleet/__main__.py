"""``python -m platformkit.fleet``: run a fleet of simulated gateways and print its figures."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from platformkit.fleet.brokers import KINDS
from platformkit.fleet.report import render
from platformkit.fleet.run import MAX_HOMES_PER_PROCESS, FleetOptions, run_fleet


def parse_args(argv: Sequence[str] | None) -> tuple[FleetOptions, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m platformkit.fleet",
        description="Simulated homes, each a real gateway, against a broker (docs/FLEET.md).",
    )
    d = FleetOptions()
    parser.add_argument("--gateways", type=int, default=d.gateways)
    parser.add_argument(
        "--duration",
        type=float,
        default=d.duration_s,
        help="seconds of steady running after the last home started",
    )
    parser.add_argument(
        "--procs",
        type=int,
        default=None,
        help="worker processes the homes are spread over (default: one per "
        f"{MAX_HOMES_PER_PROCESS} gateways)",
    )
    parser.add_argument(
        "--stagger",
        type=float,
        default=None,
        help="seconds over which the homes start (default 20 ms per gateway)",
    )
    parser.add_argument(
        "--broker", default=None, help="HOST:PORT of a running broker (default: start one)"
    )
    parser.add_argument(
        "--broker-kind",
        default=d.broker_kind,
        choices=sorted(KINDS),
        help="the broker to start when no --broker is given",
    )
    parser.add_argument(
        "--protocol", default=d.protocol, choices=("5", "3.1.1"), help="MQTT version with --broker"
    )
    parser.add_argument(
        "--share", default=None, help="the desk subscribes as a member of $share/SHARE/… (MQTT 5)"
    )
    parser.add_argument(
        "--outages",
        type=float,
        default=d.outages,
        help="share of the homes whose link is cut once (0..1)",
    )
    parser.add_argument("--outage-seconds", type=float, default=d.outage_s)
    parser.add_argument(
        "--alarm-interval",
        type=float,
        default=d.alarm_interval_s,
        help="mean seconds between two alarms of one home",
    )
    parser.add_argument("--heartbeat", type=float, default=d.heartbeat_s)
    parser.add_argument(
        "--vitals-interval",
        type=float,
        default=None,
        help="one interval for the watch's metrics (default: the shipped ones)",
    )
    parser.add_argument(
        "--reading-interval",
        type=float,
        default=d.reading_s,
        help="seconds between two readings of a home's watch",
    )
    parser.add_argument("--button-supervision", type=float, default=d.button_supervision_s)
    parser.add_argument(
        "--backoff-cap",
        type=float,
        default=d.backoff_cap_s,
        help="the gateways' reconnect back-off cap (shipped: 60 s)",
    )
    parser.add_argument(
        "--fault-at",
        type=float,
        default=None,
        help="seconds into the steady part: the broker's fault (Mosquitto "
        "stopped and started; a NATS node killed and started)",
    )
    parser.add_argument(
        "--fault-seconds",
        type=float,
        default=d.fault_s,
        help="how long the broker (or the node) stays down",
    )
    parser.add_argument(
        "--ingest",
        type=int,
        default=d.ingest,
        help="start PostgreSQL and this many reference ingest workers; "
        "completeness is also read from PostgreSQL",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--log-level", default=d.log_level)
    parser.add_argument("--json", type=Path, default=None, help="write the whole report here")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep state, logs and specs here (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.gateways < 1 or args.duration <= 0 or not 0 <= args.outages <= 1:
        parser.error("--gateways ≥ 1, --duration > 0 and --outages in 0..1")
    options = FleetOptions(
        gateways=args.gateways,
        duration_s=args.duration,
        procs=args.procs,
        stagger_s=args.stagger,
        broker=args.broker,
        broker_kind=args.broker_kind,
        protocol=args.protocol,
        share=args.share,
        outages=args.outages,
        outage_s=args.outage_seconds,
        seed=args.seed,
        heartbeat_s=args.heartbeat,
        vitals_interval_s=args.vitals_interval,
        reading_s=args.reading_interval,
        button_supervision_s=args.button_supervision,
        alarm_interval_s=args.alarm_interval,
        backoff_cap_s=args.backoff_cap,
        ingest=args.ingest,
        fault_at_s=args.fault_at,
        fault_s=args.fault_seconds,
        log_level=args.log_level,
    )
    return options, args


def main(argv: Sequence[str] | None = None) -> int:
    options, args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="carebed-fleet-"))
    try:
        report = run_fleet(options, workdir)
    except BaseException:
        print(f"fleet failed; its logs are in {workdir}", file=sys.stderr)
        raise
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(render(report))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
