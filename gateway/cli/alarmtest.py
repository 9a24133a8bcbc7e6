"""``carebed test-alarm``: the whole alarm chain from this gateway to the platform and back.

The running daemon raises what the platform's ``test_alarm`` command raises (``alarm.button``
with ``data.test: true`` from the receiver; the camera is not called), then this prints when it
was stored, published (the broker's PUBACK) and acknowledged by the platform's alarm desk.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

from gateway.app import control
from gateway.cli.checks import local_time
from gateway.cli.common import EXIT_CONFIG, load_config
from gateway.cli.status import not_running
from gateway.core.errors import ControlError
from gateway.core.i18n import _

EXIT_OK, EXIT_FAILED = 0, 1


class Steps:
    def __init__(self) -> None:
        self.stored: float | None = None
        self.timed_out = False
        self.acknowledged = False

    def show(self, reply: dict[str, Any]) -> None:
        event = reply.get("event")
        if event == "timeout":
            self.timed_out = True
            if reply["waiting_for"] == "published":
                text = _("TIMEOUT: the broker did not take alarm {alarm_id} within {seconds} s.")
            else:
                text = _(
                    "TIMEOUT: the platform did not acknowledge alarm {alarm_id} within {seconds} s."
                )
            print(text.format(alarm_id=reply["alarm_id"], seconds=reply["timeout_s"]), flush=True)
            if not reply.get("link_up"):
                print(_("The uplink is down: run carebed doctor to see why."), flush=True)
            elif reply["waiting_for"] == "acknowledged":
                print(
                    _(
                        "The platform has the alarm but nobody acknowledged it: ask the alarm "
                        "desk whether test alarms from {device} reach it."
                    ).format(device=self.device),
                    flush=True,
                )
            return
        at = float(reply["at"])
        when = local_time(datetime.fromtimestamp(at, UTC))
        if event == "stored":
            self.stored = at
            self.device = reply["device"]
            print(
                _("stored        {when}  alarm {alarm_id} from {device}").format(
                    when=when, alarm_id=reply["alarm_id"], device=reply["device"]
                ),
                flush=True,
            )
            return
        if event == "acknowledged":
            self.acknowledged = True
        after = at - (self.stored or at)
        label = _("published    ") if event == "published" else _("acknowledged ")
        print(
            _("{label} {when}  (+{after:.3f} s)").format(label=label, when=when, after=after),
            flush=True,
        )

    device = ""


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if cfg is None:
        return EXIT_CONFIG
    socket = cfg.control_socket
    steps = Steps()
    print(
        _("Test alarm from {gateway_id}: waiting up to {seconds} s for the platform.").format(
            gateway_id=cfg.gateway_id, seconds=args.timeout
        ),
        flush=True,
    )
    try:
        asyncio.run(
            control.ask(
                socket,
                "test_alarm",
                {"timeout_s": args.timeout},
                on_reply=steps.show,
                reply_timeout_s=args.timeout + control.CLIENT_TIMEOUT_S,
            )
        )
    except OSError as exc:
        if control.daemon_absent(exc):
            print(not_running(socket, "test-alarm"), file=sys.stderr)
        else:
            print(f"carebed: {control.unreachable(socket, exc)}", file=sys.stderr)
        return EXIT_FAILED
    except ControlError as exc:
        print(f"carebed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if steps.timed_out:
        return EXIT_FAILED
    if not steps.acknowledged:
        print(
            _(
                "carebed: the daemon stopped answering before the platform acknowledged the "
                "test alarm: see journalctl -u carebed -n 100 (did it restart?), then run "
                "carebed test-alarm again"
            ),
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(_("The whole chain works: the platform acknowledged the test alarm."))
    return EXIT_OK
