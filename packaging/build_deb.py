"""Build carebed_<version>_<arch>.deb from this tree: `make deb`, or
`python packaging/build_deb.py --arch amd64 --out dist`.

The package installs without network: the pinned runtime dependencies (requirements.lock) travel
inside it as wheels for its architecture, with carebed's own wheel, and the postinst makes the
virtual environment from them with `pip --require-hashes --no-index`. Fetching the wheels needs
PyPI (the first build only: they are kept in the cache directory, and a later build finds them
there without network). The archive is reproducible: fixed owners (root:root), modification
times clamped to SOURCE_DATE_EPOCH (default: the last commit's time), sorted members, no
build-host paths.

One package per architecture (arm64 for the Raspberry Pi, amd64 for test machines): each carries
only the wheels it can install, and dpkg refuses it on the wrong machine.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
SYSTEMD = REPO / "systemd"
PYTHON_VERSION = "3.11"
# pip's --platform tags for each Debian architecture. manylinux2014 (glibc 2.17) and newer
# manylinux_2_x up to bookworm's glibc 2.36 are all accepted.
PLATFORMS = {
    "amd64": ("x86_64", ["manylinux2014_x86_64", "manylinux_2_28_x86_64"]),
    "arm64": ("aarch64", ["manylinux2014_aarch64", "manylinux_2_28_aarch64"]),
}
LIB = "usr/lib/carebed"
# Files of the tree that go into the package, and their modes (all owned by root:root).
STATIC_FILES: tuple[tuple[Path, str, int], ...] = (
    (SYSTEMD / "carebed.service", "lib/systemd/system/carebed.service", 0o644),
    (SYSTEMD / "carebed-provision.service", "lib/systemd/system/carebed-provision.service", 0o644),
    (SYSTEMD / "carebed.sysusers.conf", "usr/lib/sysusers.d/carebed.conf", 0o644),
    (SYSTEMD / "carebed.tmpfiles.conf", "usr/lib/tmpfiles.d/carebed.conf", 0o644),
    (PACKAGING / "60-carebed.rules", "lib/udev/rules.d/60-carebed.rules", 0o644),
    (REPO / "config" / "carebed.example.toml", "usr/share/carebed/carebed.example.toml", 0o644),
    (REPO / "docs" / "INSTALL.md", "usr/share/doc/carebed/INSTALL.md", 0o644),
    (REPO / "docs" / "INSTALL-systemd.md", "usr/share/doc/carebed/INSTALL-systemd.md", 0o644),
    (REPO / "hil" / "rigs" / "gateway.toml", "usr/share/carebed/hil-rig.example.toml", 0o644),
    (REPO / "docs" / "HIL.md", "usr/share/doc/carebed/HIL.md", 0o644),
    (REPO / "docs" / "zh-CN" / "HIL.md", "usr/share/doc/carebed/zh-CN/HIL.md", 0o644),
    (REPO / "docs" / "DOCTOR.md", "usr/share/doc/carebed/DOCTOR.md", 0o644),
    (REPO / "docs" / "zh-CN" / "INSTALL.md", "usr/share/doc/carebed/zh-CN/INSTALL.md", 0o644),
    (REPO / "docs" / "zh-CN" / "DOCTOR.md", "usr/share/doc/carebed/zh-CN/DOCTOR.md", 0o644),
    (PACKAGING / "copyright", "usr/share/doc/carebed/copyright", 0o644),
)
CHANGELOG = "usr/share/doc/carebed/changelog.Debian.gz"  # made by the build, for its version
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
# What a carebed wheel is built from (pyproject's packages and their data).
SOURCE_ITEMS = ("pyproject.toml", "README.md", "gateway", "drivers", "hil")


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Pin:
    name: str  # normalised (PEP 503)
    version: str


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> list[Pin]:
    pins = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match is None:
            raise BuildError(f"{path}: not an exact pin: {line!r}")
        pins.append(Pin(normalise(match[1]), match[2]))
    return pins


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as handle:
        version = tomllib.load(handle)["project"]["version"]
    assert isinstance(version, str)
    return version


def source_date_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    result = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else 0


def _wheel_fits(filename: str, pin: Pin, machine: str) -> bool:
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        return False
    name, version, platforms = normalise(parts[0]), parts[1], parts[-1].split(".")
    abis, pythons = parts[-2].split("."), parts[-3].split(".")
    if (name, version) != (pin.name, pin.version):
        return False
    if "abi3" in abis:
        if not any(re.fullmatch(r"cp3([0-9]+)", p) and int(p[3:]) <= 11 for p in pythons):
            return False
    elif not ({"py3", "cp311"} & set(pythons) and {"none", "cp311"} & set(abis)):
        return False
    return "any" in platforms or any(
        p.startswith("manylinux") and p.endswith(machine) for p in platforms
    )


def _pick(cache: Path, pins: list[Pin], machine: str) -> dict[Pin, Path] | None:
    chosen: dict[Pin, Path] = {}
    for pin in pins:
        fits = sorted(p for p in cache.glob("*.whl") if _wheel_fits(p.name, pin, machine))
        if not fits:
            return None
        chosen[pin] = fits[0]
    return chosen


def fetch_wheels(pins: list[Pin], arch: str, lock: Path, cache: Path) -> dict[Pin, Path]:
    """The wheel of every pin for ``arch``, from the cache, else downloaded from PyPI into it."""
    machine, platforms = PLATFORMS[arch]
    cache.mkdir(parents=True, exist_ok=True)
    chosen = _pick(cache, pins, machine)
    if chosen is not None:
        return chosen
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    argv += ["--only-binary=:all:", "--python-version", PYTHON_VERSION]
    argv += ["--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for platform in platforms:
        argv += ["--platform", platform]
    argv += ["-r", str(lock), "-d", str(cache)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    chosen = _pick(cache, pins, machine)
    if result.returncode != 0 or chosen is None:
        raise BuildError(
            f"could not fetch the {arch} wheels of {lock} (pip download needs PyPI once; "
            f"they are then kept in {cache}):\n{result.stderr[-3000:]}"
        )
    return chosen


def build_own_wheel(out: Path, epoch: int) -> Path:
    """carebed's wheel, built from a scratch copy so the tree gets no build/ or egg-info."""
    with tempfile.TemporaryDirectory(prefix="carebed-wheel-") as name:
        source = Path(name) / "src"
        source.mkdir()
        for item in SOURCE_ITEMS:
            origin = REPO / item
            if origin.is_dir():
                shutil.copytree(
                    origin, source / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy2(origin, source / item)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0"}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--no-cache-dir",
                "-w",
                str(out),
                str(source),
            ],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            cwd=name,
        )
        if result.returncode != 0:
            raise BuildError(f"building carebed's wheel failed:\n{result.stderr[-3000:]}")
    (wheel,) = out.glob("carebed-*.whl")
    return wheel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _installed_size_kib(root: Path) -> int:
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return (total + 1023) // 1024


def _control(version: str, arch: str, size_kib: int) -> str:
    template = (PACKAGING / "control.in").read_text()
    return template.format(version=version, arch=arch, installed_size=size_kib)


def build(arch: str, version: str, out: Path, cache: Path) -> Path:
    if arch not in PLATFORMS:
        raise BuildError(f"unknown architecture {arch!r} (choose from {', '.join(PLATFORMS)})")
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~-]*", version):
        raise BuildError(f"not a Debian version without epoch: {version!r}")
    epoch = source_date_epoch()
    lock = REPO / "requirements.lock"
    pins = read_lock(lock)
    wheels = fetch_wheels(pins, arch, lock, cache / arch)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="carebed-deb-") as name:
        stage = Path(name) / "root"
        wheel_dir = stage / LIB / "wheels"
        wheel_dir.mkdir(parents=True)
        own = build_own_wheel(Path(name) / "own", epoch)
        lines = []
        for pin, wheel in [*wheels.items(), (Pin("carebed", project_version()), own)]:
            shutil.copyfile(wheel, wheel_dir / wheel.name)
            lines.append(f"{pin.name}=={pin.version} --hash=sha256:{sha256(wheel)}")
        requirements = stage / LIB / "requirements.txt"
        requirements.write_text(
            "# The wheels in ./wheels, checked by hash when the postinst installs them.\n"
            + "\n".join(sorted(lines))
            + "\n"
        )
        for origin, target, _mode in STATIC_FILES:
            destination = stage / target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, destination)
        (stage / CHANGELOG).write_bytes(_changelog(version, epoch))
        (stage / "usr/bin").mkdir(parents=True)
        (stage / "usr/bin/carebed").symlink_to(f"/{LIB}/venv/bin/carebed")
        size = _installed_size_kib(stage)
        control_dir = stage / "DEBIAN"
        control_dir.mkdir()
        (control_dir / "control").write_text(_control(version, arch, size))
        for script in MAINTAINER_SCRIPTS:
            text = (PACKAGING / script).read_text().replace("@VERSION@", version)
            (control_dir / script).write_text(text)
        _normalise(stage, epoch)
        target = out / f"carebed_{version}_{arch}.deb"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        result = subprocess.run(
            [
                "dpkg-deb",
                "--root-owner-group",
                # gzip, not xz: the wheels are zip files already, and xz took 12x as long to
                # save 0.1 % (5.9 s against 0.5 s for the same 5.4 MB package).
                "-Zgzip",
                "-z9",
                "--build",
                str(stage),
                str(target),
            ],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        if result.returncode != 0:
            raise BuildError(f"dpkg-deb failed:\n{result.stderr}")
    return target


def _changelog(version: str, epoch: int) -> bytes:
    """The Debian changelog entry of this build, gzipped without a name or time of its own."""
    maintainer = re.search(r"^Maintainer: (.+)$", (PACKAGING / "control.in").read_text(), re.M)
    assert maintainer is not None
    when = email.utils.formatdate(epoch, usegmt=False)
    text = (
        f"carebed ({version}) bookworm; urgency=medium\n\n"
        f"  * Built from the carebed source tree at version {version}.\n\n"
        f" -- {maintainer.group(1)}  {when}\n"
    )
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def _normalise(stage: Path, epoch: int) -> None:
    """Modes as dpkg expects them, and every time stamp at SOURCE_DATE_EPOCH."""
    modes = {target: mode for _origin, target, mode in STATIC_FILES}
    for path in sorted(stage.rglob("*"), reverse=True):
        relative = path.relative_to(stage).as_posix()
        if path.is_symlink():
            os.utime(path, (epoch, epoch), follow_symlinks=False)
            continue
        if path.is_dir():
            mode = 0o755
        elif relative.startswith("DEBIAN/"):
            mode = 0o755 if path.name in MAINTAINER_SCRIPTS else 0o644
        else:
            mode = modes.get(relative, 0o644)
        path.chmod(mode)
        os.utime(path, (epoch, epoch))
    stage.chmod(0o755)
    os.utime(stage, (epoch, epoch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--arch", action="append", choices=sorted(PLATFORMS), help="default: all of them"
    )
    parser.add_argument("--version", default=None, help="Debian version (default: pyproject's)")
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    parser.add_argument("--cache", type=Path, default=cache_home / "carebed" / "deb-wheels")
    args = parser.parse_args(argv)
    version = args.version or project_version()
    try:
        for arch in args.arch or sorted(PLATFORMS):
            print(build(arch, version, args.out, args.cache))
    except BuildError as exc:
        print(f"build_deb: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
