"""``python -m platformkit.ingest``: run workers, the desk, or both; migrate; list gaps.

run     N workers (each its own process, restarted under the same name when it dies) and
        the desk, until SIGINT / SIGTERM
worker  one worker (a member of the shared subscription)
desk    the alarm desk's web server
migrate bring the database's schema to this version
gaps    the seq gaps open now
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from platformkit.ingest import gaps
from platformkit.ingest.contract import ContractValidator
from platformkit.ingest.migrations import migrate
from platformkit.ingest.mqtt import BrokerAddress
from platformkit.ingest.worker import IngestWorker, WorkerSettings

if TYPE_CHECKING:
    from platformkit.ingest.desk import Desk

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 10.0


def configure_logging(level: str = "info") -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _validator(args: argparse.Namespace) -> ContractValidator:
    if args.schema is not None:
        return ContractValidator.from_file(args.schema)
    return ContractValidator.exported()


def _worker_settings(args: argparse.Namespace, name: str) -> WorkerSettings:
    return WorkerSettings(
        dsn=args.dsn,
        broker=BrokerAddress.parse(args.broker),
        name=name,
        group=args.group,
        shared=not args.no_share,
        gap_grace_s=args.gap_grace_s,
        gap_check_s=args.gap_check_s,
        presence_poll_s=args.presence_poll_s,
        session_expiry_s=args.session_expiry_s,
        mqtt_protocol=args.mqtt_protocol,
        **_source_settings(args),
    )


def _source_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The broker's competing consumer the workers share (``--source``)."""
    return {
        "source": args.source,
        "nats_servers": tuple(args.nats),
        "nats_replicas": args.nats_replicas,
        "ack_wait_s": args.ack_wait_s,
        "amqp_url": args.amqp,
        "amqp_queue_type": args.amqp_queue_type,
    }


def _source_argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "--mqtt-protocol",
        args.mqtt_protocol,
        "--source",
        args.source,
        "--nats-replicas",
        str(args.nats_replicas),
    ]
    argv += ["--ack-wait-s", str(args.ack_wait_s), "--amqp-queue-type", args.amqp_queue_type]
    for url in args.nats:
        argv += ["--nats", url]
    if args.amqp:
        argv += ["--amqp", args.amqp]
    return argv


def _worker_argv(args: argparse.Namespace, name: str) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "platformkit.ingest",
        "--dsn",
        args.dsn,
        "--broker",
        args.broker,
        "worker",
        "--name",
        name,
        "--group",
        args.group,
        "--gap-grace-s",
        str(args.gap_grace_s),
        "--gap-check-s",
        str(args.gap_check_s),
        "--presence-poll-s",
        str(args.presence_poll_s),
        "--session-expiry-s",
        str(args.session_expiry_s),
    ]
    if args.schema is not None:
        argv += ["--schema", str(args.schema)]
    if args.no_share:
        argv.append("--no-share")
    return argv + _source_argv(args)


def _desk(args: argparse.Namespace) -> Desk:
    from platformkit.ingest.desk import Desk, DeskSettings  # noqa: PLC0415 - workers skip aiohttp

    return Desk(
        DeskSettings(
            dsn=args.dsn,
            broker=BrokerAddress.parse(args.broker),
            host=args.http_host,
            port=args.http_port,
            allowed_origins=tuple(args.allow_origin),
            mqtt_protocol=args.mqtt_protocol,
        )
    )


async def _run_all(args: argparse.Namespace) -> None:
    """The workers as child processes (restarted when they die) and the desk in this one."""
    names = [f"{args.name_prefix}-{n}" for n in range(1, args.workers + 1)]
    children: dict[str, asyncio.subprocess.Process] = {}

    async def supervise() -> None:
        while True:
            for name in names:
                child = children.get(name)
                if child is None or child.returncode is not None:
                    if child is not None:
                        structlog.get_logger().warning(
                            "worker_restarted", worker=name, status=child.returncode
                        )
                    children[name] = await asyncio.create_subprocess_exec(*_worker_argv(args, name))
            await asyncio.sleep(RESTART_DELAY_S)

    desk = _desk(args)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(supervise(), name="ingest.supervise")
            tasks.create_task(desk.run(), name="desk")
    finally:
        for child in children.values():
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in children.values():
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()


async def _migrate(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await migrate(conn)


async def _gaps(dsn: str) -> list[gaps.Gap]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await gaps.open_gaps(conn, reported_only=False)


async def _main_task(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` until it ends or SIGINT / SIGTERM cancels it."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m platformkit.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dsn", required=True, help="PostgreSQL connection string (libpq)")
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the broker")
    parser.add_argument("--log-level", default="info")
    commands = parser.add_subparsers(dest="command", required=True)

    def worker_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--group", default="carebed-ingest", help="shared subscription group")
        sub.add_argument("--no-share", action="store_true", help="plain subscription (1 worker)")
        sub.add_argument("--schema", type=Path, help="`carebed schema uplink` output to use")
        sub.add_argument("--gap-grace-s", type=float, default=30.0)
        sub.add_argument("--gap-check-s", type=float, default=5.0)
        sub.add_argument("--presence-poll-s", type=float, default=2.0)
        sub.add_argument(
            "--session-expiry-s",
            type=int,
            default=24 * 3600,
            help="how long the broker keeps a stopped worker's session and messages",
        )
        sub.add_argument(
            "--source",
            choices=("mqtt", "nats", "amqp"),
            default="mqtt",
            help="the workers' competing consumer: MQTT shared subscriptions, a JetStream"
            " durable consumer, a RabbitMQ queue (docs/PLATFORM.md)",
        )
        sub.add_argument(
            "--nats", action="append", default=[], metavar="URL", help="nats://HOST:PORT"
        )
        sub.add_argument("--nats-replicas", type=int, default=3, help="the stream's replicas")
        sub.add_argument(
            "--ack-wait-s",
            type=float,
            default=10.0,
            help="NATS: when a message fetched and not acknowledged is delivered again"
            " (keep it below --gap-grace-s)",
        )
        sub.add_argument("--amqp", default="", metavar="URL", help="amqp://USER:PASS@HOST:PORT/")
        sub.add_argument("--amqp-queue-type", choices=("quorum", "classic"), default="quorum")

    def mqtt_protocol(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--mqtt-protocol",
            choices=("5", "3.1.1"),
            default="5",
            help="3.1.1 for a broker without MQTT 5 (NATS 2.9, RabbitMQ before 3.13)",
        )

    worker = commands.add_parser("worker", help="one worker")
    worker.add_argument("--name", default="ingest-1", help="MQTT client id and session")
    worker_options(worker)
    mqtt_protocol(worker)
    for name, helptext in (("desk", "the desk's web server"), ("run", "workers and the desk")):
        sub = commands.add_parser(name, help=helptext)
        mqtt_protocol(sub)
        sub.add_argument("--http-host", default="127.0.0.1")
        sub.add_argument("--http-port", type=int, default=8080)
        sub.add_argument(
            "--allow-origin",
            action="append",
            default=[],
            metavar="URL",
            help="the desk's address as the browser sees it, when a proxy in front of the desk"
            " changes the Host header (e.g. https://desk.example.org); repeatable",
        )
        if name == "run":
            sub.add_argument("--workers", type=int, default=2)
            sub.add_argument("--name-prefix", default="ingest")
            worker_options(sub)
    commands.add_parser("migrate", help="apply the schema migrations")
    commands.add_parser("gaps", help="list the open seq gaps")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)

    if args.command == "migrate":
        print(f"schema version {asyncio.run(_migrate(args.dsn))}")
        return 0
    if args.command == "gaps":
        for gap in asyncio.run(_gaps(args.dsn)):
            print(f"{gap.gw} {gap.first_seq}..{gap.last_seq} since {gap.detected_at.isoformat()}")
        return 0
    if args.command == "worker":
        worker_task = IngestWorker(_worker_settings(args, args.name), _validator(args)).run()
        asyncio.run(_main_task(worker_task))
    elif args.command == "desk":
        asyncio.run(_main_task(_desk(args).run()))
    else:
        asyncio.run(_main_task(_run_all(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
