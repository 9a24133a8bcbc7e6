"""A private D-Bus "system" bus (its own dbus-daemon) for the simulated BlueZ, and its statistics.

``PrivateSystemBus`` starts ``dbus-daemon --nofork --print-address`` with a permissive
configuration written into a directory (the caller's, or a temporary one), exposes its
``address`` and stops the daemon on exit. It never touches ``os.environ``: the caller points
``DBUS_SYSTEM_BUS_ADDRESS`` at ``address`` (bleak and dbus-fast read it when they connect).

The configuration keeps dbus-daemon's built-in limits (the same as a real system bus: 512 match
rules and 128 pending replies per connection, ...), so a client that leaks match rules or pending
calls fails here as it would on a gateway. The ``org.freedesktop.DBus.Debug.Stats`` interface of
Debian's dbus-daemon is open to callers with the daemon's own uid, which every process of the
test run has: ``match_rules`` and ``match_rule_count`` read the rules every connection has
registered with ``GetAllMatchRules``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from hil.sim.service import SimService

DBUS_DAEMON = "dbus-daemon"
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
STATS_TIMEOUT_S = 5.0
CONFIG_NAME = "system-bus.conf"
SOCKET_NAME = "system_bus_socket"
LOG_NAME = "dbus-daemon.log"
# sun_path holds 108 bytes; longer directories get a short private one for the socket
_MAX_SOCKET_PATH_BYTES = 100

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class PrivateBusError(RuntimeError):
    """The private dbus-daemon did not start, or its statistics are not available."""


class PrivateSystemBus(SimService):
    """One dbus-daemon process with a permissive system-bus policy, for the life of a block.

    ``async with PrivateSystemBus(tmp_path) as bus:`` then ``bus.address``. On exit the daemon is
    terminated (killed after ``STOP_TIMEOUT_S``) and reaped, its pipe drained and closed, and any
    temporary directory removed. The daemon's stderr goes to ``log_path``.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._given_directory = directory
        self._own_dirs: list[Path] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._address: str | None = None
        self.config_path: Path | None = None
        self.socket_path: Path | None = None
        self.log_path: Path | None = None

    @property
    def address(self) -> str:
        """The bus address (``unix:path=…,guid=…``), as the daemon printed it."""
        if self._address is None:
            raise PrivateBusError("the private bus is not running")
        return self._address

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        if self._proc is None:
            raise PrivateBusError("the private bus is not running")
        return self._proc.pid

    async def start(self) -> None:
        """Write the configuration and start the daemon; return once it printed its address."""
        if self._proc is not None:
            raise PrivateBusError("the private bus is already running")
        directory = self._given_directory
        if directory is None:
            directory = self._make_dir()
        directory.mkdir(parents=True, exist_ok=True)
        socket_dir = directory
        if len(os.fsencode(directory / SOCKET_NAME)) > _MAX_SOCKET_PATH_BYTES:
            socket_dir = self._make_dir()
        self.socket_path = socket_dir / SOCKET_NAME
        self.config_path = directory / CONFIG_NAME
        self.log_path = directory / LOG_NAME
        self.config_path.write_text(_CONFIG.format(socket=self.socket_path), encoding="utf-8")
        try:
            with self.log_path.open("wb") as log:
                self._proc = await asyncio.create_subprocess_exec(
                    DBUS_DAEMON,
                    f"--config-file={self.config_path}",
                    "--print-address",
                    "--nofork",
                    "--nopidfile",
                    "--nosyslog",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                )
            self._address = await self._read_address(self._proc)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Terminate and reap the daemon, close its pipe, remove temporary files. Idempotent."""
        proc, self._proc = self._proc, None
        self._address = None
        try:
            if proc is not None:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
                    try:
                        async with asyncio.timeout(STOP_TIMEOUT_S):
                            await proc.wait()
                    except TimeoutError:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                        await proc.wait()
                if proc.stdout is not None:
                    # reading to EOF lets asyncio close the subprocess transport and its pipe
                    await proc.stdout.read()
        finally:
            for own in self._own_dirs:
                shutil.rmtree(own, ignore_errors=True)
            self._own_dirs.clear()

    async def _read_address(self, proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = await proc.stdout.readline()
        address = line.decode().strip()
        if not address:
            raise PrivateBusError(f"dbus-daemon exited at start: {self._log_tail()}")
        return address

    def _make_dir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="carebed-dbus-"))
        self._own_dirs.append(path)
        return path

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:].strip()


async def match_rules(address: str) -> dict[str, list[str]]:
    """Every match rule registered on the bus at ``address``, by connection unique name.

    The connection this function opens to ask is left out. Raises ``PrivateBusError`` when the
    daemon has no ``org.freedesktop.DBus.Debug.Stats`` interface (built without statistics) or
    refuses the call.
    """
    bus = MessageBus(bus_address=address)
    try:
        async with asyncio.timeout(STATS_TIMEOUT_S):
            await bus.connect()
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus.Debug.Stats",
                    member="GetAllMatchRules",
                )
            )
        if reply.message_type == MessageType.ERROR:
            raise PrivateBusError(f"GetAllMatchRules failed: {reply.error_name} {reply.body}")
        rules: dict[str, list[str]] = dict(reply.body[0])
        rules.pop(bus.unique_name or "", None)
        return rules
    finally:
        bus.disconnect()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STATS_TIMEOUT_S):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


async def match_rule_count(address: str) -> int:
    """How many match rules all connections on the bus at ``address`` hold together."""
    return sum(len(rules) for rules in (await match_rules(address)).values())


async def connection_count(address: str) -> int:
    """How many client connections the bus at ``address`` has (the asking one left out): a
    client that forgets to close its bus connections shows here, not in the match rules."""
    return len(await match_rules(address))
