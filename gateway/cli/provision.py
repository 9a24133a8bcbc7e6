"""`carebed provision`: install the first-boot bundle from the boot partition (run as root)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.app import provision
from gateway.core.i18n import _

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INVALID = 78  # EX_CONFIG: the bundle is invalid; its error file says why
SERVICE = "carebed.service"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "provision",
        help=_("install the bundle in /boot/firmware/carebed into /etc/carebed (first boot)"),
        description=_(
            "Checks the provisioning bundle, installs it into the configuration directory "
            "(owners and modes set), removes its secrets from the boot partition and starts "
            "carebed.service. An invalid bundle is left as it is, with provision-error.txt "
            "beside it, and nothing is installed."
        ),
    )
    parser.add_argument(
        "--boot-dir",
        type=Path,
        default=provision.DEFAULT_BOOT_DIR,
        help=_("the boot partition, holding carebed/ (default: {default})").format(
            default=provision.DEFAULT_BOOT_DIR
        ),
    )
    parser.add_argument(
        "--etc-dir",
        type=Path,
        default=provision.DEFAULT_ETC_DIR,
        help=_("where to install it (default: {default})").format(
            default=provision.DEFAULT_ETC_DIR
        ),
    )
    parser.add_argument(
        "--owner",
        default=provision.DEFAULT_OWNER,
        help=_("USER:GROUP of the installed files (default: {default})").format(
            default=provision.DEFAULT_OWNER
        ),
    )
    parser.add_argument(
        "--key-owner",
        default=provision.DEFAULT_KEY_OWNER,
        help=_("the user that owns the private key, mode 0600 (default: {default})").format(
            default=provision.DEFAULT_KEY_OWNER
        ),
    )
    parser.add_argument(
        "--no-start", action="store_true", help=_("do not start carebed.service afterwards")
    )


def _start_service() -> str:
    """Ask systemd to (re)start the daemon without waiting for it (it is ordered after us)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return _("systemd is not running here: start {service} yourself").format(service=SERVICE)
    result = subprocess.run(
        [systemctl, "--no-block", "restart", SERVICE],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        return _("could not start {service}: {error}").format(
            service=SERVICE, error=result.stderr.strip()
        )
    return _("{service} is starting").format(service=SERVICE)


def _fail(text: str) -> None:
    print(f"carebed provision: {text}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    try:
        owner = provision.parse_owner(args.owner, args.key_owner)
    except ValueError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    try:
        outcome = provision.provision(args.boot_dir, args.etc_dir, owner)
    except provision.NoBundleError as exc:
        _fail(str(exc))
        return EXIT_FAILURE
    except OSError as exc:
        _fail(
            _(
                "{path}: {reason} (fix: run it as root, with the boot partition mounted read-write)"
            ).format(path=exc.filename or args.etc_dir, reason=exc.strerror)
        )
        return EXIT_FAILURE
    if not outcome.ok:
        _fail(_("{path} was not installed:").format(path=outcome.bundle))
        for problem in outcome.problems:
            print(f"  - {problem}", file=sys.stderr)
        print(_("(also written to {path})").format(path=outcome.error_file), file=sys.stderr)
        return EXIT_INVALID
    print(
        _("provisioned gateway {gateway_id} (broker {broker}) into {path}").format(
            gateway_id=outcome.gateway_id, broker=outcome.broker, path=args.etc_dir
        )
    )
    if outcome.removed_secrets:
        print(
            _("removed from {bundle}: {names}; the rest is in {done}/").format(
                bundle=outcome.bundle, names=", ".join(outcome.removed_secrets), done=provision.DONE
            )
        )
    if not args.no_start:
        print(_start_service())
    return EXIT_OK
