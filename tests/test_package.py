"""The Debian package (`make deb`): built from this tree, checked, then installed, upgraded,
removed and purged on this machine (Debian bookworm) without network.

The packages are built once per session. The installation test needs root and a machine
without carebed on it; it purges the package and deletes the user and groups it created in a
finalizer, whatever happens. The daemon it starts talks to 127.0.0.1:9 (nothing listens there),
never to a broker of the machine.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hil.sim.pki import Pki

# The machine's carebed user: created and removed by the package's install test, read by
# the doctor's service.access check. One xdist group, so that they never run side by side.
pytestmark = pytest.mark.xdist_group("carebed-user")

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "packaging" / "build_deb.py"
VERSION = "0.1.0"
UPGRADE = "0.1.0+1"  # sorts after VERSION for dpkg
BUILD_TIMEOUT_S = 600  # the first build downloads the wheels
TOOL_TIMEOUT_S = 120
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
TOOL_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
# What the installed programs see: none of this test run's Python settings (PYTHONPATH would
# import the checkout instead of the installed package).
CLEAN_ENV = {
    key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "PIP_"))
}
LIB = Path("/usr/lib/carebed")
ETC = Path("/etc/carebed")
STATE = Path("/var/lib/carebed")
UNITS = ("carebed.service", "carebed-provision.service")
# As the service runs: user carebed with its groups (setpriv execs, so signals reach the daemon).
AS_CAREBED = ("setpriv", "--reuid=carebed", "--regid=carebed", "--init-groups", "--")
# Every path the package ships besides its wheels (dpkg-deb -c, without the leading ".").
SHIPPED = {
    "/lib/systemd/system/carebed.service",
    "/lib/systemd/system/carebed-provision.service",
    "/lib/udev/rules.d/60-carebed.rules",
    "/usr/bin/carebed",
    "/usr/lib/carebed/requirements.txt",
    "/usr/lib/sysusers.d/carebed.conf",
    "/usr/lib/tmpfiles.d/carebed.conf",
    "/usr/share/carebed/carebed.example.toml",
    "/usr/share/carebed/hil-rig.example.toml",
    "/usr/share/doc/carebed/INSTALL.md",
    "/usr/share/doc/carebed/INSTALL-systemd.md",
    "/usr/share/doc/carebed/HIL.md",
    "/usr/share/doc/carebed/zh-CN/HIL.md",
    "/usr/share/doc/carebed/DOCTOR.md",
    "/usr/share/doc/carebed/zh-CN/INSTALL.md",
    "/usr/share/doc/carebed/zh-CN/DOCTOR.md",
    "/usr/share/doc/carebed/copyright",
    "/usr/share/doc/carebed/changelog.Debian.gz",
}


@dataclass(frozen=True)
class Debs:
    directory: Path
    host_arch: str

    def path(self, arch: str, version: str = VERSION) -> Path:
        return self.directory / f"carebed_{version}_{arch}.deb"


def _build(out: Path, version: str, *archs: str) -> None:
    argv = [sys.executable, str(BUILD), "--out", str(out), "--version", version]
    for arch in archs:
        argv += ["--arch", arch]
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr


def _host_arch() -> str:
    result = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (Debian package dpkg)")
    out = tmp_path_factory.mktemp("debs")
    host = _host_arch()
    _build(out, VERSION, *MACHINES)
    if host in MACHINES:
        _build(out, UPGRADE, host)
    return Debs(out, host)


def _listing(deb: Path) -> list[tuple[str, str, str, str]]:
    """(mode string, owner/group, path, link target) of each member."""
    result = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    members = []
    for line in result.stdout.splitlines():
        parts = line.split(maxsplit=5)
        name, _, target = parts[5].partition(" -> ")
        members.append((parts[0], parts[1], name.removeprefix("."), target))
    return members


def _lock_pins() -> set[str]:
    pins = set()
    for raw in (REPO / "requirements.lock").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins.add(f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}")
    return pins


# --- The package as built ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(MACHINES))
def test_contents_owners_and_modes(debs: Debs, arch: str) -> None:
    members = _listing(debs.path(arch))
    assert all(owner == "root/root" for _, owner, _, _ in members)
    paths = {path.rstrip("/") for _, _, path, _ in members}
    files = {path for mode, _, path, _ in members if mode.startswith("-")}
    wheels = {path for path in files if path.startswith("/usr/lib/carebed/wheels/")}
    assert files - wheels == SHIPPED - {"/usr/bin/carebed"}
    # Nothing under /etc: the configuration is the installer's, never a file dpkg replaces.
    assert not any(path.startswith("/etc") for path in paths)
    for mode, _, path, target in members:
        if mode.startswith("d"):
            assert mode == "drwxr-xr-x", path
        elif mode.startswith("l"):
            assert (path, target) == ("/usr/bin/carebed", "/usr/lib/carebed/venv/bin/carebed")
        else:
            assert mode == "-rw-r--r--", path
    # One wheel per pin of requirements.lock, plus carebed's own; compiled ones for this arch.
    names = sorted(Path(path).name for path in wheels)
    pinned = {"{}=={}".format(*name.split("-")[:2]).lower().replace("_", "-") for name in names}
    assert pinned == _lock_pins() | {f"carebed=={VERSION}"}
    for name in names:
        platform = name.removesuffix(".whl").split("-")[-1]
        assert platform == "any" or MACHINES[arch] in platform, name


@pytest.mark.parametrize("arch", sorted(MACHINES))
def test_control_fields(debs: Debs, arch: str) -> None:
    result = subprocess.run(
        ["dpkg-deb", "-f", str(debs.path(arch))], capture_output=True, text=True, check=True
    )
    fields = dict(
        line.split(": ", 1) for line in result.stdout.splitlines() if not line.startswith(" ")
    )
    assert fields["Package"] == "carebed"
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == arch
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "python3 (>= 3.11)" in depends
    assert "python3-venv" in depends
    assert int(fields["Installed-Size"]) > 1000


def test_every_wheel_is_pinned_by_its_hash(debs: Debs, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(debs.path("arm64")), str(tmp_path)], check=True)
    lib = tmp_path / "usr/lib/carebed"
    lines = [
        line for line in (lib / "requirements.txt").read_text().splitlines() if line[:1] != "#"
    ]
    wheels = {path.name: path for path in (lib / "wheels").iterdir()}
    assert len(lines) == len(wheels)
    hashes = {hashlib.sha256(path.read_bytes()).hexdigest() for path in wheels.values()}
    for line in lines:
        found = re.fullmatch(r"(\S+)==(\S+) --hash=sha256:([0-9a-f]{64})", line)
        assert found, line
        assert found[3] in hashes, line


def test_carebeds_wheel_holds_every_file_of_its_packages(debs: Debs, tmp_path: Path) -> None:
    """Code and data (SQL schemas, catalogs, …): a file pyproject.toml's package data leaves out
    would be missing on every installed gateway."""
    subprocess.run(["dpkg-deb", "-x", str(debs.path("amd64")), str(tmp_path)], check=True)
    (wheel,) = (tmp_path / "usr/lib/carebed/wheels").glob("carebed-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if ".dist-info/" not in name}
    tree = {
        str(path.relative_to(REPO))
        for package in ("gateway", "drivers", "hil")
        for path in (REPO / package).rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.suffix not in {".pyc", ".po", ".pot"}  # translation sources: .mo ship
        # the simulated rig and its rig file stay in the source tree
        and not str(path.relative_to(REPO)).startswith(("hil/sim/", "hil/rigs/sim.toml"))
        and path.name != "README.md"
    }
    assert tree - shipped == set()


def test_maintainer_scripts_are_posix_shell(debs: Debs, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-e", str(debs.path("amd64")), str(tmp_path)], check=True)
    scripts = sorted(p.name for p in tmp_path.iterdir() if p.name != "control")
    assert scripts == ["postinst", "postrm", "prerm"]
    for name in scripts:
        script = tmp_path / name
        assert stat.S_IMODE(script.stat().st_mode) == 0o755
        assert script.read_text().startswith("#!/bin/sh\n")
        for shell in ("sh", "dash", "bash"):
            if shutil.which(shell):
                result = subprocess.run(
                    [shell, "-n", str(script)], check=False, capture_output=True
                )
                assert (result.returncode, result.stderr) == (0, b""), (shell, name)
    assert "@VERSION@" not in (tmp_path / "postinst").read_text()


def test_the_build_is_reproducible(debs: Debs, tmp_path: Path) -> None:
    _build(tmp_path, VERSION, "arm64")
    again = tmp_path / "carebed_0.1.0_arm64.deb"
    assert again.read_bytes() == debs.path("arm64").read_bytes()
    with tarfile.open(fileobj=_data_tar(again)) as data:
        assert {member.mtime for member in data.getmembers()} == {_commit_time()}


def _commit_time() -> int:
    result = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
        check=False,
        capture_output=True,
        text=True,
    )
    return int(result.stdout.strip() or 0)


def _data_tar(deb: Path) -> io.BytesIO:
    result = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], check=False, capture_output=True
    )
    assert result.returncode == 0
    return io.BytesIO(result.stdout)


# --- Installed on this machine ------------------------------------------------------------------


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        check=False,
        env=env if env is not None else CLEAN_ENV,
        timeout=TOOL_TIMEOUT_S,
        cwd="/",  # not this checkout: `python -c` would import it
    )


def _getent(database: str, name: str) -> list[str] | None:
    result = _run("getent", database, name)
    return result.stdout.strip().split(":") if result.returncode == 0 else None


@dataclass
class Machine:
    """This machine, checked free of carebed; everything the test adds is undone at the end."""

    daemons: list[subprocess.Popen[str]] = field(default_factory=list)

    def dpkg(self, *args: str) -> subprocess.CompletedProcess[str]:
        # In a network namespace of its own: pip in the postinst cannot reach any index.
        return _run("unshare", "--net", "--", "dpkg", *args)

    def dpkg_as_if_booted(self, stubs: Path, *args: str) -> list[str]:
        """dpkg where the maintainer scripts see a running systemd: /run/systemd/system (on a
        private /run, in a mount namespace of its own) and a systemctl and udevadm that only
        write down what they were asked. Those calls, in order."""
        log = stubs / "calls"
        log.write_text("")
        for tool in ("systemctl", "udevadm"):
            stub = stubs / tool
            stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
            stub.chmod(0o755)
        script = (
            "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/systemd/system && "
            f'PATH={stubs}:$PATH exec dpkg "$@"'
        )
        result = _run("unshare", "--net", "--mount", "--", "sh", "-c", script, "sh", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        return log.read_text().splitlines()


@pytest.fixture
def machine() -> Iterator[Machine]:
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    for tool in ("dpkg", "unshare", "setpriv", "getent", "userdel", "groupdel"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is needed to install and clean up")
    status = _run("dpkg-query", "-W", "-f=${Status}", "carebed")
    if status.returncode == 0 and "not-installed" not in status.stdout:
        pytest.skip(f"carebed is on this machine ({status.stdout}): not touching it")
    present = [p for p in (ETC, STATE, LIB, Path("/usr/bin/carebed")) if os.path.lexists(p)]
    if present or _getent("passwd", "carebed") is not None:
        pytest.skip(f"carebed's files or user are on this machine ({present}): not touching them")
    groups_before = {g for g in ("carebed", "gpio", "bluetooth") if _getent("group", g)}
    machine = Machine()
    try:
        yield machine
    finally:
        for daemon in machine.daemons:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(timeout=30)
            if daemon.stderr is not None:
                daemon.stderr.close()
        _run("dpkg", "--purge", "carebed")
        for path in (ETC, STATE, LIB):
            shutil.rmtree(path, ignore_errors=True)
        for link in Path("/etc/systemd/system").glob("*.wants/carebed*.service"):
            link.unlink()
        if _getent("passwd", "carebed") is not None:
            _run("userdel", "carebed")
        for group in ("carebed", "gpio", "bluetooth"):
            if group not in groups_before and _getent("group", group) is not None:
                _run("groupdel", group)


def _mode_owner(path: Path) -> tuple[int, str, str]:
    info = path.lstat()
    user = _run("id", "-nu", str(info.st_uid)).stdout.strip() or str(info.st_uid)
    group = (_getent("group", str(info.st_gid)) or [str(info.st_gid)])[0]
    return stat.S_IMODE(info.st_mode), user, group


TEST_CONFIG = """\
[gateway]
id = "gw-pkgtest"

[mqtt]
host = "127.0.0.1"
port = 9
plaintext = true

[outbox]
group_commit_s = 0
"""


def _run_daemon(machine: Machine) -> None:
    """The installed daemon as the service runs it (user carebed), until it has started."""
    daemon = subprocess.Popen(
        [
            *AS_CAREBED,
            "/usr/bin/carebed",
            "run",
            "--config",
            str(ETC / "carebed.toml"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
        cwd="/",
    )
    machine.daemons.append(daemon)
    lines: queue.Queue[str] = queue.Queue()
    assert daemon.stderr is not None
    stderr = daemon.stderr
    reader = threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    seen = []
    while not any('"gateway_started"' in line for line in seen):
        assert daemon.poll() is None, "".join(seen)
        try:
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            pytest.fail("the installed daemon did not start:\n" + "".join(seen))
    daemon.send_signal(signal.SIGTERM)
    status = daemon.wait(timeout=30)
    reader.join(timeout=30)
    stderr.close()
    assert status == 0, "".join(seen)


def _outbox() -> tuple[int, list[tuple[int, str]]]:
    database = sqlite3.connect(f"file:{STATE / 'outbox.sqlite3'}?mode=ro", uri=True)
    try:
        (last,) = database.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        events = database.execute("SELECT seq, id FROM events ORDER BY seq").fetchall()
    finally:
        database.close()
    return last, events


def _tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Mode, owner, group and content hash of every file under root."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path)] = (info.st_mode, info.st_uid, info.st_gid, digest)
    return found


# Two offline venv builds with pip (install, upgrade): past the default 120 s on a loaded machine.
@pytest.mark.timeout(360)
def test_install_provision_upgrade_remove_and_purge_offline(
    debs: Debs, machine: Machine, pki: Pki, tmp_path: Path
) -> None:
    if debs.host_arch not in MACHINES:
        pytest.skip(f"no package for this machine's architecture {debs.host_arch}")
    # --- install, without network
    result = machine.dpkg("-i", str(debs.path(debs.host_arch)))
    assert result.returncode == 0, result.stdout + result.stderr
    passwd = _getent("passwd", "carebed")
    assert passwd is not None
    assert passwd[6] == "/usr/sbin/nologin"
    for group in ("dialout", "gpio", "bluetooth"):
        entry = _getent("group", group)
        assert entry is not None
        assert "carebed" in entry[3].split(","), group
    assert _mode_owner(ETC) == (0o750, "root", "carebed")
    assert _mode_owner(ETC / "carebed.toml") == (0o640, "root", "carebed")
    assert (ETC / "carebed.toml").read_bytes() == (
        REPO / "config/carebed.example.toml"
    ).read_bytes()
    assert _mode_owner(STATE) == (0o700, "carebed", "carebed")
    venv = LIB / (LIB / "venv").readlink()
    assert venv.parent == LIB
    assert _mode_owner(venv) == (0o755, "root", "root")
    assert Path("/usr/bin/carebed").resolve() == venv / "bin" / "carebed"
    for unit in UNITS:
        assert (Path("/etc/systemd/system/multi-user.target.wants") / unit).is_symlink(), unit

    # The command on PATH runs from the venv, as the service user; the venv holds exactly the
    # pinned set.
    help_text = _run(*AS_CAREBED, "/usr/bin/carebed", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "provision" in help_text.stdout
    # The technicians' suite came with it, runtime dependencies only; a rig with simulated
    # parts is refused with a sentence (hil.sim is not shipped).
    hil_help = _run("/usr/bin/carebed", "hil", "run", "--help")
    assert hil_help.returncode == 0, hil_help.stderr
    assert "--rig" in hil_help.stdout
    sim_rig = tmp_path / "sim.toml"
    shutil.copyfile(REPO / "hil" / "rigs" / "sim.toml", sim_rig)
    refused = _run("/usr/bin/carebed", "hil", "run", "--rig", str(sim_rig))
    assert refused.returncode == 78, refused.stdout + refused.stderr
    assert "hil.sim" in refused.stderr
    listed = _run("/usr/bin/carebed", "hil", "list")
    assert "button_press" in listed.stdout, listed.stderr
    where = _run(str(venv / "bin/python"), "-c", "import gateway; print(gateway.__file__)")
    assert where.stdout.startswith(f"{venv}/lib/python3"), where
    freeze = _run(
        str(venv / "bin/python"),
        "-m",
        "pip",
        "freeze",
        "--all",
        "--exclude",
        "pip",
        "--exclude",
        "setuptools",
    )
    frozen = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() + "==" + line.split("==")[1]
        for line in freeze.stdout.split()
    }
    assert frozen == _lock_pins() | {f"carebed=={VERSION}"}

    # A wheel that is not the one built into the package is refused by its hash, and the
    # failed build leaves the installed venv as it was.
    wheel = next((LIB / "wheels").glob("paho_mqtt-*.whl"))
    original = wheel.read_bytes()
    try:
        wheel.write_bytes(original + b"\0")
        rebuilt = _run(
            "unshare", "--net", "--", "/var/lib/dpkg/info/carebed.postinst", "configure", VERSION
        )
        assert rebuilt.returncode != 0
        assert "hash" in rebuilt.stderr.lower(), rebuilt.stderr
    finally:
        wheel.write_bytes(original)
    assert LIB / (LIB / "venv").readlink() == venv
    assert sorted(LIB.glob("venv-*")) == [venv]

    # The installed units, with the installed binary.
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        units = [f"/lib/systemd/system/{unit}" for unit in UNITS]
        verify = _run(analyze, "verify", *units, env=TOOL_ENV)
        assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")

    # --- first boot: the installed `carebed provision` with its defaults (/etc/carebed,
    # root:carebed), from a bundle in a stand-in for /boot/firmware; the daemon's user can
    # then read everything it needs (check-config as that user).
    bundle = tmp_path / "boot" / "carebed"
    bundle.mkdir(parents=True)
    (bundle / "carebed.toml").write_text('[gateway]\nid = "gw-a"\n[mqtt]\nhost = "127.0.0.1"\n')
    shutil.copyfile(pki.ca_cert, bundle / "ca.crt")
    shutil.copyfile(pki.client("gw-a").cert, bundle / "gateway.crt")
    shutil.copyfile(pki.client("gw-a").key, bundle / "gateway.key")
    provisioned = _run(
        "/usr/bin/carebed", "provision", "--boot-dir", str(bundle.parent), "--no-start"
    )
    assert provisioned.returncode == 0, provisioned.stderr
    assert not (bundle.parent / "carebed.done" / "gateway.key").exists()
    for path in (ETC / "carebed.toml", ETC / "tls" / "ca.crt"):
        assert _mode_owner(path) == (0o640, "root", "carebed"), path
    assert _mode_owner(ETC / "tls" / "gateway.key") == (0o600, "carebed", "carebed")
    # The tmpfiles rule, applied at every boot, keeps them so.
    tmpfiles = _run("systemd-tmpfiles", "--create", "carebed.conf")
    assert tmpfiles.returncode == 0, tmpfiles.stderr
    assert _mode_owner(ETC / "tls" / "gateway.key") == (0o600, "carebed", "carebed")
    assert _mode_owner(ETC / "tls" / "ca.crt") == (0o640, "root", "carebed")
    assert _mode_owner(ETC / "tls") == (0o750, "root", "carebed")
    checked = _run(*AS_CAREBED, "/usr/bin/carebed", "check-config", str(ETC / "carebed.toml"))
    assert checked.returncode == 0, checked.stderr

    # --- the installer's configuration and an outbox with events not yet delivered
    (ETC / "carebed.toml").write_text(TEST_CONFIG)
    _run_daemon(machine)
    last_seq, events = _outbox()
    assert last_seq >= 2
    assert events
    config_before = _tree(ETC)
    state_before = _tree(STATE)

    # --- upgrade, without network: configuration and outbox as they were, seq goes on
    # (where systemd runs: the daemon restarted if it ran, the services' enablement left alone)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = machine.dpkg_as_if_booted(stubs, "-i", str(debs.path(debs.host_arch, UPGRADE)))
    assert calls == [
        "systemctl daemon-reload",
        "udevadm control --reload-rules",
        "systemctl try-restart carebed.service",
    ]
    assert _tree(ETC) == config_before
    assert _tree(STATE) == state_before
    new_venv = LIB / (LIB / "venv").readlink()
    assert new_venv != venv
    assert sorted(LIB.glob("venv-*")) == [new_venv], "the old venv is left behind"
    _run_daemon(machine)
    last_after, events_after = _outbox()
    assert events_after[: len(events)] == events
    assert last_after > last_seq
    assert all(seq > last_seq for seq, _ in events_after[len(events) :])

    # --- remove: the code goes, the configuration and the event store stay
    calls = machine.dpkg_as_if_booted(stubs, "--remove", "carebed")
    assert calls == ["systemctl stop carebed.service", "systemctl daemon-reload"]
    assert not LIB.exists()
    assert not os.path.lexists("/usr/bin/carebed")
    assert not Path("/lib/systemd/system/carebed.service").exists()
    assert _tree(ETC) == config_before
    assert (STATE / "outbox.sqlite3").is_file()
    assert _outbox()[0] == last_after

    # --- purge: they go too
    result = _run("dpkg", "--purge", "carebed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not ETC.exists()
    assert not STATE.exists()
    assert not list(Path("/etc/systemd/system").glob("*.wants/carebed*"))
    status = _run("dpkg-query", "-W", "-f=${Status}", "carebed")
    assert status.returncode != 0 or "not-installed" in status.stdout
