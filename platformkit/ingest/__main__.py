"""``python -m platformkit.ingest``: run workers, the desk, or both; migrate; list gaps.

run     N workers (each its own process, restarted under the same name when it dies) and
        the desk, until SIGINT / SIGTERM
worker  one worker (a member of the shared subscription)
desk    the alarm desk's web server
migrate bring the database's schema to this version
gaps    the seq gaps open now
operator add NAME   add a desk operator (or change their password), read from stdin or the tty

Every link to the broker uses TLS with a client certificate of its own (--ca-file, --cert-file,
--key-file; the certificate's CN is the link's name), or plain TCP with --plaintext only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
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
from platformkit.ingest.mqtt import (
    NAME_PLACEHOLDER,
    BrokerAddress,
    MqttError,
    TlsConfigError,
    TlsFiles,
)
from platformkit.ingest.operators import OperatorsError, add_operator, read_operators
from platformkit.ingest.source import SOURCES
from platformkit.ingest.worker import CONNECT_TIMEOUT_S, IngestWorker, WorkerSettings

if TYPE_CHECKING:
    from platformkit.ingest.desk import Desk

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 10.0
PROG = "python -m platformkit.ingest"
AMQP_URL_ENV = "CAREBED_INGEST_AMQP_URL"  # the RabbitMQ URL, password included
TLS_OPTIONS = (("--ca-file", "ca_file"), ("--cert-file", "cert_file"), ("--key-file", "key_file"))


class UsageError(Exception):
    """The command line cannot work: said on stderr, exit status 2."""


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


def _link_names(args: argparse.Namespace) -> list[str]:
    """The name (client id, certificate CN) of every broker link the command opens."""
    if args.command == "worker":
        return [args.name, args.presence_name]
    if args.command == "desk":
        return [args.desk_name]
    workers = [f"{args.name_prefix}-{n}" for n in range(1, args.workers + 1)]
    return [*workers, args.presence_name, args.desk_name]


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files, each link's certificate checked now; None with ``--plaintext``."""
    given = [option for option, attr in TLS_OPTIONS if getattr(args, attr) is not None]
    if args.plaintext:
        if given:
            raise UsageError(f"--plaintext contradicts {', '.join(given)} (fix: remove one)")
        return None
    missing = [option for option, attr in TLS_OPTIONS if getattr(args, attr) is None]
    if missing:
        raise UsageError(
            f"missing {', '.join(missing)}: the broker links use TLS with a client certificate"
            " (fix: give --ca-file, --cert-file and --key-file, or --plaintext for a broker on"
            " plain TCP: a lab, the tests)"
        )
    tls = TlsFiles(Path(args.ca_file), args.cert_file, args.key_file)
    names = _link_names(args)
    if len(set(names)) != len(names):
        raise UsageError(f"two links with one name (one certificate, one connection): {names}")
    if len(names) > 1 and not tls.per_name:
        raise UsageError(
            f"--cert-file and --key-file must hold {NAME_PLACEHOLDER}: this command opens"
            f" {len(names)} links ({', '.join(names)}), each with the certificate of its own name"
            f" (e.g. --cert-file /etc/carebed-ingest/{NAME_PLACEHOLDER}.crt)"
        )
    for name in names:
        tls.context(name)  # TlsConfigError naming the option
    return tls


def _transport_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--connect-timeout-s", str(args.connect_timeout_s)]
    if args.plaintext:
        return [*argv, "--plaintext"]
    for option, attr in TLS_OPTIONS:
        argv += [option, str(getattr(args, attr))]
    return argv


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
        tls=args.tls,
        presence_name=args.presence_name,
        connect_timeout_s=args.connect_timeout_s,
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
        *_transport_argv(args),
        "worker",
        "--name",
        name,
        "--presence-name",
        args.presence_name,
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
            client_id=args.desk_name,
            tls=args.tls,
            connect_timeout_s=args.connect_timeout_s,
            operators=args.operators,
            secure_cookie=args.secure_cookie,
            mqtt_protocol=args.mqtt_protocol,
        )
    )


def _check_login(args: argparse.Namespace) -> None:
    """A desk needs its operators file, or --no-login said out loud."""
    if args.operators is not None and args.no_login:
        raise UsageError("--no-login contradicts --operators (fix: remove one)")
    if args.operators is None and not args.no_login:
        raise UsageError(
            "missing --operators FILE: the desk's operators log in (fix: create it with"
            f" `{PROG} operator add NAME --operators FILE`, or give --no-login for a desk"
            " behind an access control of its own)"
        )
    if args.operators is not None:
        try:
            if not read_operators(args.operators):
                raise UsageError(f"--operators: {args.operators} holds no operator")
        except OperatorsError as exc:
            raise UsageError(f"--operators: {exc}") from None


def _operator_add(args: argparse.Namespace) -> int:
    """Read the password (twice on a terminal, one line from a pipe) and store its hash."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            return _failed(UsageError("the two passwords differ"), 2)
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        new = add_operator(args.operators, args.name, password)
    except (OperatorsError, OSError) as exc:
        return _failed(exc, 2)
    print(f"operator {args.name}: {'added' if new else 'password changed'} in {args.operators}")
    return 0


async def _run_all(args: argparse.Namespace) -> None:
    """The workers as child processes (restarted when they die) and the desk in this one."""
    names = [f"{args.name_prefix}-{n}" for n in range(1, args.workers + 1)]
    if args.amqp:
        # Its password stays out of the workers' command lines (ps): they read it from there.
        os.environ[AMQP_URL_ENV] = args.amqp
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


def _run(coro: Coroutine[Any, Any, None]) -> int:
    """Run the command; a broker link that cannot connect ends it with its reason (status 1)."""
    try:
        asyncio.run(_main_task(coro))
    except MqttError as exc:
        return _failed(exc, 1)
    except ExceptionGroup as group:  # raised in a task of a TaskGroup
        found = group.subgroup(MqttError)
        if found is None:
            raise
        first: BaseException = found
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        return _failed(first, 1)
    return 0


def _failed(exc: BaseException, status: int) -> int:
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dsn", help="PostgreSQL connection string (libpq); all but operator")
    parser.add_argument(
        "--broker", help="HOST:PORT of the broker (127.0.0.1:8883; 1883 with --plaintext)"
    )
    parser.add_argument("--log-level", default="info")
    tls = parser.add_argument_group(
        "broker links", "TLS 1.2+, the broker verified against --ca-file and its host name"
    )
    tls.add_argument("--ca-file", metavar="PATH", help="the CA that signs the broker's certificate")
    tls.add_argument(
        "--cert-file",
        metavar="PATH",
        help=f"client certificate; {NAME_PLACEHOLDER} is replaced by each link's name, which"
        " must be the certificate's CN (a worker's --name, --presence-name, --desk-name)",
    )
    tls.add_argument("--key-file", metavar="PATH", help=f"its key, also with {NAME_PLACEHOLDER}")
    tls.add_argument(
        "--plaintext",
        action="store_true",
        help="plain TCP, no certificate (a lab broker, the tests): never in production",
    )
    tls.add_argument(
        "--connect-timeout-s",
        type=float,
        default=CONNECT_TIMEOUT_S,
        help="a link not connected by then ends the command with the reason (status 1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def worker_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--group", default="carebed-ingest", help="shared subscription group")
        sub.add_argument("--no-share", action="store_true", help="plain subscription (1 worker)")
        sub.add_argument("--schema", type=Path, help="`carebed schema uplink` output to use")
        sub.add_argument("--gap-grace-s", type=float, default=30.0)
        sub.add_argument("--gap-check-s", type=float, default=5.0)
        sub.add_argument("--presence-poll-s", type=float, default=2.0)
        sub.add_argument(
            "--presence-name",
            default="platform-presence",
            help="the presence link's client id and CN (the same for every worker)",
        )
        sub.add_argument(
            "--session-expiry-s",
            type=int,
            default=24 * 3600,
            help="how long the broker keeps a stopped worker's session and messages",
        )
        sub.add_argument(
            "--source",
            choices=SOURCES,
            default="mqtt",
            help="the workers' competing consumer: MQTT shared subscriptions, a JetStream"
            " durable consumer, a RabbitMQ queue (docs/PLATFORM.md)",
        )
        sub.add_argument(
            "--nats", action="append", default=[], metavar="URL", help="nats://HOST:PORT"
        )
        sub.add_argument(
            "--nats-replicas",
            type=int,
            default=3,
            help="the consumers' replicas (at most those of $MQTT_msgs)",
        )
        sub.add_argument(
            "--ack-wait-s",
            type=float,
            default=10.0,
            help="NATS: when a message fetched and not acknowledged is delivered again"
            " (keep it below --gap-grace-s)",
        )
        sub.add_argument(
            "--amqp",
            default=os.environ.get(AMQP_URL_ENV, ""),
            metavar="URL",
            help=f"amqp://USER:PASS@HOST:PORT/ (default: ${AMQP_URL_ENV}, which keeps the"
            " password out of the process list)",
        )
        sub.add_argument("--amqp-queue-type", choices=("quorum", "classic"), default="quorum")

    def mqtt_protocol(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--mqtt-protocol",
            choices=("5", "3.1.1"),
            default="5",
            help="3.1.1 for a broker without MQTT 5 (NATS 2.9, RabbitMQ before 3.13)",
        )

    worker = commands.add_parser("worker", help="one worker")
    worker.add_argument(
        "--name", default="platform-ingest-1", help="MQTT client id, session and CN"
    )
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
        sub.add_argument(
            "--desk-name",
            default="platform-desk",
            help="the desk's client id and CN: one per desk process",
        )
        sub.add_argument(
            "--operators",
            type=Path,
            metavar="FILE",
            help=f"who may log in (`{PROG} operator add NAME --operators FILE`)",
        )
        sub.add_argument(
            "--no-login",
            action="store_true",
            help="no login: anyone who reaches the desk acts as 'desk' (behind an access control"
            " of your own only)",
        )
        sub.add_argument(
            "--secure-cookie",
            action="store_true",
            help="mark the session cookie Secure although the desk serves plain HTTP (an HTTPS"
            " proxy in front of it); over HTTPS it always is",
        )
        if name == "run":
            sub.add_argument("--workers", type=int, default=2)
            sub.add_argument("--name-prefix", default="platform-ingest")
            worker_options(sub)
    operator = commands.add_parser("operator", help="the desk's operators")
    operator_commands = operator.add_subparsers(dest="operator_command", required=True)
    add = operator_commands.add_parser(
        "add", help="add an operator or change their password (read from stdin or the tty)"
    )
    add.add_argument("name")
    add.add_argument("--operators", type=Path, metavar="FILE", required=True)
    commands.add_parser("migrate", help="apply the schema migrations")
    commands.add_parser("gaps", help="list the open seq gaps")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if args.command == "operator":
        return _operator_add(args)
    if args.dsn is None:
        parser.error("the following arguments are required: --dsn")

    if args.command == "migrate":
        print(f"schema version {asyncio.run(_migrate(args.dsn))}")
        return 0
    if args.command == "gaps":
        for gap in asyncio.run(_gaps(args.dsn)):
            print(f"{gap.gw} {gap.first_seq}..{gap.last_seq} since {gap.detected_at.isoformat()}")
        return 0
    if args.broker is None:
        args.broker = f"127.0.0.1:{1883 if args.plaintext else 8883}"
    try:
        args.tls = _tls(args)
        if args.command in ("desk", "run"):
            _check_login(args)
    except (UsageError, TlsConfigError) as exc:
        return _failed(exc, 2)
    if args.command == "worker":
        return _run(IngestWorker(_worker_settings(args, args.name), _validator(args)).run())
    if args.command == "desk":
        return _run(_desk(args).run())
    return _run(_run_all(args))


if __name__ == "__main__":
    raise SystemExit(main())
