"""``python -m hil run --rig RIG.toml``: ``carebed hil`` from a source tree."""

from hil.cli import standalone

raise SystemExit(standalone())
