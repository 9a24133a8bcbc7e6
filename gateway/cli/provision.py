"""`carebed provision`: install the first-boot bundle from the boot partition (run as root)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.app import provision

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INVALID = 78  # EX_CONFIG: the bundle is invalid; its error file says why
SERVICE = "carebed.service"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "provision",
        help="install the bundle in /boot/firmware/carebed into /etc/carebed (first boot)",
        description=(
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
        help="the boot partition, holding carebed/ (default: %(default)s)",
    )
    parser.add_argument(
        "--etc-dir",
        type=Path,
        default=provision.DEFAULT_ETC_DIR,
        help="where to install it (default: %(default)s)",
    )
    parser.add_argument(
        "--owner",
        default=provision.DEFAULT_OWNER,
        help="USER:GROUP of the installed files (default: %(default)s)",
    )
    parser.add_argument(
        "--no-start", action="store_true", help="do not start carebed.service afterwards"
    )


def _start_service() -> str:
    """Ask systemd to (re)start the daemon without waiting for it (it is ordered after us)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return f"systemd is not running here: start {SERVICE} yourself"
    result = subprocess.run(
        [systemctl, "--no-block", "restart", SERVICE],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        return f"could not start {SERVICE}: {result.stderr.strip()}"
    return f"{SERVICE} is starting"


def main(args: argparse.Namespace) -> int:
    try:
        owner = provision.parse_owner(args.owner)
    except ValueError as exc:
        print(f"carebed provision: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        outcome = provision.provision(args.boot_dir, args.etc_dir, owner)
    except provision.NoBundleError as exc:
        print(f"carebed provision: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(
            f"carebed provision: {exc.filename or args.etc_dir}: {exc.strerror} "
            "(fix: run it as root, with the boot partition mounted read-write)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if not outcome.ok:
        print(f"carebed provision: {outcome.bundle} was not installed:", file=sys.stderr)
        for problem in outcome.problems:
            print(f"  - {problem}", file=sys.stderr)
        print(f"(also written to {outcome.error_file})", file=sys.stderr)
        return EXIT_INVALID
    print(f"provisioned gateway {outcome.gateway_id} (broker {outcome.broker}) into {args.etc_dir}")
    if outcome.removed_secrets:
        removed = ", ".join(outcome.removed_secrets)
        print(f"removed from {outcome.bundle}: {removed}; the rest is in {provision.DONE}/")
    if not args.no_start:
        print(_start_service())
    return EXIT_OK
