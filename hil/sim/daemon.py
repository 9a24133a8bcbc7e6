"""The real daemon with the simulated event source: the rig's ``carebed run``.

``python -m hil.sim.daemon --sim SIM.toml run --config CAREBED.toml`` runs ``carebed run`` with
one more event source, ``sim.source``, set by the ``[sim]`` table of SIM.toml (see
``hil.sim.source.SimSettings``). The product knows nothing of simulators: everything else is the
installed command, exit codes included.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.app import config
from gateway.cli import main as carebed
from gateway.core.errors import ConfigError
from hil.sim.source import SimSettings, load_settings

SOURCE_NAME = "sim.source"


def check(settings: SimSettings, sim_path: Path, config_path: Path) -> None:
    """Simulated alarms must never open calls into a home: refuse them with a camera enabled."""
    if settings.alarm_interval_s is None:
        return
    try:
        camera = config.load(config_path).camera.enabled
    except ConfigError:  # a broken gateway config is carebed's to report
        return
    if camera:
        raise ConfigError(
            str(sim_path),
            [
                "sim.alarm_interval_s with camera.enabled: simulated alarms would open calls "
                "into the home (fix: disable one of them)"
            ],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.sim.daemon", description=__doc__)
    parser.add_argument("--sim", type=Path, required=True, help="the [sim] settings file")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the gateway daemon with the simulated source")
    run.add_argument("--config", type=Path, default=carebed.DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.sim)
        check(settings, args.sim, args.config)
    except ConfigError as error:
        print(f"carebed: configuration error in {error.path}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return carebed.EXIT_CONFIG
    return carebed.main(
        ["run", "--config", str(args.config)], sources={SOURCE_NAME: settings.source}
    )


if __name__ == "__main__":
    raise SystemExit(main())
