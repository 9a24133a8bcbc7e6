"""A power cut for the tests: a FUSE file system that keeps, across a cut, only what was synced.

``PowerCutDisk`` mounts it over a directory (the daemon's state directory). Processes see an
ordinary file system: every write is visible at once, as it is in the page cache. Beside that live
view the server keeps the durable view, which changes only as POSIX promises:

- ``fsync``/``fdatasync`` of a file makes its data and size durable (the pages written since its
  last sync are copied into the durable view);
- ``fsync`` of a directory makes its entries durable: the names created, removed or renamed in it
  (a new file's name, or a rename, survives only after its directory is synced);
- nothing else is durable: a write without a sync, or a name never synced into its directory, is
  lost at a cut.

A cut is an unmount with no sync before it: the server writes its durable view (what the disk
would hold when the power comes back) into the image directory and exits, and the next mount
serves that image. A process killed by SIGKILL without a cut keeps the live view, as a crash of a
process does.

``keep_unsynced`` explores the outcomes between "nothing unsynced survives" and "everything
does": at a cut each unsynced 4 KiB page, and each directory's unsynced entries as a whole, are
kept with that probability (a seeded draw), so a cut can also leave torn, reordered writes.

Limits: metadata other than size (mode, times, owner) is durable at once; no hard links,
symbolic links, device nodes, sockets or extended attributes; one directory's entries survive
all together or not at all (as a journalled file system's would); ``rename`` flags
(``RENAME_NOREPLACE``, ``RENAME_EXCHANGE``) are not seen by the high-level libfuse API that
mfusepy wraps, so they act as a plain rename; everything is held in the server's memory.

Run as ``python -m tests.support.powercut IMAGE MOUNTPOINT`` (by ``PowerCutDisk``); it needs
``/dev/fuse``, libfuse 3 (``fuse3``, installed by scripts/install-system-deps) and mfusepy.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

PAGE_BYTES = 4096
MOUNT_TIMEOUT_S = 15.0
UNMOUNT_TIMEOUT_S = 30.0
FALLOC_FL_KEEP_SIZE = 0x01


def fuse_unavailable() -> str | None:
    """Why this machine cannot mount the layer, or None when it can."""
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (apt-get install fuse3: scripts/install-system-deps)"
    try:
        import mfusepy  # type: ignore[import-untyped]  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: mfusepy found no libfuse
        return f"mfusepy cannot load libfuse: {exc}"
    return None


# ------------------------------------------------------------------------ the two views, in memory


@dataclass(eq=False, slots=True)
class _File:
    ino: int
    mode: int
    data: bytearray = field(default_factory=bytearray)  # what processes see
    durable: bytearray = field(default_factory=bytearray)  # what a cut leaves
    dirty: set[int] = field(default_factory=set)  # pages written since the last sync
    mtime_ns: int = field(default_factory=time.time_ns)

    def touch(self, first: int, end: int) -> None:
        """Bytes ``first..end`` changed: their pages are no longer durable."""
        if end > first:
            self.dirty.update(range(first // PAGE_BYTES, (end - 1) // PAGE_BYTES + 1))
        self.mtime_ns = time.time_ns()

    def resize(self, size: int) -> None:
        old = len(self.data)
        if size < old:
            del self.data[size:]
            self.touch(size, size + 1)  # the page cut in two
        else:
            self.data.extend(bytes(size - old))
            self.touch(old, size)

    def sync(self) -> None:
        """fsync: the live size and the pages written since the last sync become durable."""
        size = len(self.data)
        del self.durable[size:]
        self.durable.extend(bytes(size - len(self.durable)))
        for page in self.dirty:
            start = page * PAGE_BYTES
            self.durable[start : start + PAGE_BYTES] = self.data[start : start + PAGE_BYTES]
        self.dirty.clear()

    def survivor(self, keep: float, rng: random.Random) -> bytearray:
        """The durable data after a cut that kept each unsynced page with probability ``keep``."""
        kept = [page for page in sorted(self.dirty) if rng.random() < keep]
        grown = kept and rng.random() < keep  # the new size made it to disk too
        size = len(self.data) if grown else len(self.durable)
        out = bytearray(self.durable[:size])
        out.extend(bytes(size - len(out)))
        for page in kept:
            start = page * PAGE_BYTES
            if start < size:
                end = min(start + PAGE_BYTES, size, len(self.data))
                out[start:end] = self.data[start:end]
        return out


@dataclass(eq=False, slots=True)
class _Dir:
    ino: int
    mode: int
    entries: dict[str, _Node] = field(default_factory=dict)
    durable: dict[str, _Node] = field(default_factory=dict)
    mtime_ns: int = field(default_factory=time.time_ns)


_Node = _File | _Dir


@dataclass(frozen=True, slots=True)
class CutReport:
    """What one cut discarded: the proof that the layer dropped something."""

    fsyncs: int  # file syncs served while mounted
    dir_syncs: int
    unsynced_bytes: int  # bytes written but never synced, in files the cut reached
    unsynced_names: int  # names whose creation, removal or rename had not been synced


class PowerCutFs:
    """The file system's operations, as mfusepy calls them (paths, handles, ``OSError``)."""

    # Times in nanoseconds (mfusepy's modern convention). Paths are always asked for (no
    # ``flag_nullpath_ok``): mfusepy passes no handle to ``truncate``, so ftruncate needs the path.
    use_ns = True

    def __init__(self, image: Path, *, keep_unsynced: float = 0.0, seed: int = 0) -> None:
        self.image = image
        self.keep_unsynced = keep_unsynced
        self.rng = random.Random(seed)
        self._next_ino = 1
        self.root = self._load_dir(image)
        self.handles: dict[int, _Node] = {}
        self._next_fh = 1
        self.fsyncs = 0
        self.dir_syncs = 0

    # -- loading and writing the image

    def _ino(self) -> int:
        self._next_ino += 1
        return self._next_ino

    def _load_dir(self, path: Path) -> _Dir:
        node = _Dir(self._ino(), stat.S_IFDIR | stat.S_IMODE(path.stat().st_mode))
        for child in sorted(path.iterdir()):
            mode = child.lstat().st_mode
            loaded: _Node
            if stat.S_ISDIR(mode):
                loaded = self._load_dir(child)
            else:
                data = bytearray(child.read_bytes())
                loaded = _File(self._ino(), stat.S_IFREG | stat.S_IMODE(mode), data, data[:])
            node.entries[child.name] = loaded
        node.durable = dict(node.entries)
        return node

    def cut(self) -> CutReport:
        """Write the durable view into the image (what a disk keeps when the power goes)."""
        unsynced = self._unsynced(self.root)
        fresh = self.image.with_name(self.image.name + ".cut")
        old = self.image.with_name(self.image.name + ".old")
        for leftover in (fresh, old):
            shutil.rmtree(leftover, ignore_errors=True)
        self._write_dir(self.root, fresh)
        self.image.rename(old)
        fresh.rename(self.image)
        shutil.rmtree(old)
        return CutReport(self.fsyncs, self.dir_syncs, *unsynced)

    def _unsynced(self, node: _Dir) -> tuple[int, int]:
        size = names = 0
        names += len(set(node.entries.items()) ^ set(node.durable.items()))
        for child in {*node.entries.values(), *node.durable.values()}:
            if isinstance(child, _Dir):
                more_size, more_names = self._unsynced(child)
                size, names = size + more_size, names + more_names
            else:
                size += sum(
                    max(0, min(PAGE_BYTES, len(child.data) - page * PAGE_BYTES))
                    for page in child.dirty
                )
        return size, names

    def _write_dir(self, node: _Dir, path: Path) -> None:
        path.mkdir(mode=stat.S_IMODE(node.mode))
        os.chmod(path, stat.S_IMODE(node.mode))
        keep = self.keep_unsynced
        entries = node.entries if keep and self.rng.random() < keep else node.durable
        for name, child in sorted(entries.items()):
            if isinstance(child, _Dir):
                self._write_dir(child, path / name)
            else:
                target = path / name
                target.write_bytes(child.survivor(keep, self.rng) if keep else child.durable)
                os.chmod(target, stat.S_IMODE(child.mode))

    # -- names

    def _lookup(self, path: str) -> _Node:
        node: _Node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not isinstance(node, _Dir):
                raise OSError(errno.ENOTDIR, path)
            try:
                node = node.entries[part]
            except KeyError:
                raise OSError(errno.ENOENT, path) from None
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if not isinstance(parent, _Dir):
            raise OSError(errno.ENOTDIR, path)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> _Node:
        if fh:
            return self.handles[fh]
        if path is None:
            raise OSError(errno.EBADF, "no path and no handle")
        return self._lookup(path)

    def _file(self, path: str | None, fh: int | None) -> _File:
        node = self._node(path, fh)
        if not isinstance(node, _File):
            raise OSError(errno.EISDIR, path)
        return node

    def _handle(self, node: _Node) -> int:
        self._next_fh += 1
        self.handles[self._next_fh] = node
        return self._next_fh

    # -- mfusepy's operations

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        node = self._node(path, fh)
        size = len(node.data) if isinstance(node, _File) else 4096
        links = 1 if isinstance(node, _File) else 2
        return {
            "st_mode": node.mode,
            "st_ino": node.ino,
            "st_nlink": links,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": PAGE_BYTES,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_atime": node.mtime_ns,
            "st_mtime": node.mtime_ns,
            "st_ctime": node.mtime_ns,
        }

    def access(self, path: str, amode: int) -> int:
        self._lookup(path)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        vfs = os.statvfs(self.image)
        return {
            "f_bsize": PAGE_BYTES,
            "f_frsize": PAGE_BYTES,
            "f_blocks": vfs.f_blocks * vfs.f_frsize // PAGE_BYTES,
            "f_bfree": vfs.f_bfree * vfs.f_frsize // PAGE_BYTES,
            "f_bavail": vfs.f_bavail * vfs.f_frsize // PAGE_BYTES,
            "f_files": vfs.f_files,
            "f_ffree": vfs.f_ffree,
            "f_favail": vfs.f_favail,
            "f_namemax": 255,
        }

    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """With ``use_ino`` every entry needs its inode: readdir(3) skips those with 0."""
        node = self._node(path, fh)
        if not isinstance(node, _Dir):
            raise OSError(errno.ENOTDIR, path)
        listed = [(".", node), ("..", node), *node.entries.items()]
        return [(name, {"st_mode": child.mode, "st_ino": child.ino}, 0) for name, child in listed]

    def opendir(self, path: str) -> int:
        node = self._lookup(path)
        if not isinstance(node, _Dir):
            raise OSError(errno.ENOTDIR, path)
        return self._handle(node)

    def releasedir(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise OSError(errno.EEXIST, path)
        parent.entries[name] = _Dir(self._ino(), stat.S_IFDIR | stat.S_IMODE(mode))
        parent.mtime_ns = time.time_ns()
        return 0

    def rmdir(self, path: str) -> int:
        parent, name = self._parent(path)
        node = self._lookup(path)
        if not isinstance(node, _Dir):
            raise OSError(errno.ENOTDIR, path)
        if node.entries:
            raise OSError(errno.ENOTEMPTY, path)
        del parent.entries[name]
        return 0

    def create(self, path: str, mode: int) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            node = parent.entries[name] = _File(self._ino(), stat.S_IFREG | stat.S_IMODE(mode))
            parent.mtime_ns = time.time_ns()
        return self._handle(node)

    def open(self, path: str, flags: int) -> int:
        return self._handle(self._lookup(path))

    def release(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close() promises nothing about durability

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return bytes(self._file(path, fh).data[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        node = self._file(path, fh)
        if offset > len(node.data):
            node.resize(offset)
        node.data[offset : offset + len(data)] = data
        node.touch(offset, offset + len(data))
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._file(path, fh).resize(length)
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        node = self._file(path, fh)
        if mode & ~FALLOC_FL_KEEP_SIZE:
            raise OSError(errno.EOPNOTSUPP, "only plain allocation")
        if not mode & FALLOC_FL_KEEP_SIZE and offset + size > len(node.data):
            node.resize(offset + size)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self._file(path, fh).sync()
        self.fsyncs += 1
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        if not isinstance(node, _Dir):
            raise OSError(errno.ENOTDIR, path)
        node.durable = dict(node.entries)
        self.dir_syncs += 1
        return 0

    def unlink(self, path: str) -> int:
        parent, name = self._parent(path)
        node = self._lookup(path)
        if isinstance(node, _Dir):
            raise OSError(errno.EISDIR, path)
        del parent.entries[name]
        parent.mtime_ns = time.time_ns()
        return 0

    def rename(self, old: str, new: str) -> int:
        source, old_name = self._parent(old)
        target, new_name = self._parent(new)
        node = self._lookup(old)
        replaced = target.entries.get(new_name)
        if isinstance(replaced, _Dir):
            if not isinstance(node, _Dir):
                raise OSError(errno.EISDIR, new)
            if replaced.entries:
                raise OSError(errno.ENOTEMPTY, new)
        elif replaced is not None and isinstance(node, _Dir):
            raise OSError(errno.ENOTDIR, new)
        del source.entries[old_name]
        target.entries[new_name] = node
        source.mtime_ns = target.mtime_ns = time.time_ns()
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        node = self._lookup(path or "/")
        node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        return 0  # one owner: the test's

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        node = self._lookup(path or "/")
        node.mtime_ns = times[1] if times else time.time_ns()
        return 0

    def destroy(self, path: str) -> None:
        """Unmounted: the power goes. Only the durable view is written to the image."""
        report = self.cut()
        sys.stdout.write(json.dumps(asdict(report)) + "\n")
        sys.stdout.flush()


def serve(image: Path, mountpoint: Path, *, keep_unsynced: float, seed: int) -> None:
    """Mount the image on ``mountpoint`` and serve it until unmounted (single-threaded)."""
    import mfusepy  # only the server needs libfuse

    logging.basicConfig(level=logging.WARNING)  # mfusepy logs a failing operation's traceback
    fs = PowerCutFs(image, keep_unsynced=keep_unsynced, seed=seed)
    mfusepy.FUSE(
        fs,
        str(mountpoint),
        foreground=True,
        nothreads=True,
        fsname="powercut",
        use_ino=True,
        hard_remove=True,  # an unlinked open file is gone from the names, not renamed aside
    )


# ------------------------------------------------------------------------- the test's side


class PowerCutDisk:
    """The layer mounted over ``mountpoint``, its durable image kept in ``image``."""

    def __init__(
        self,
        mountpoint: Path,
        image: Path,
        log_path: Path,
        *,
        keep_unsynced: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.mountpoint = mountpoint
        self.image = image
        self.log_path = log_path
        self.keep_unsynced = keep_unsynced
        self.seed = seed
        self.cuts = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> None:
        self.image.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.powercut",
                    str(self.image),
                    str(self.mountpoint),
                    f"--keep-unsynced={self.keep_unsynced}",
                    f"--seed={self.seed + self.cuts}",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the power-cut layer did not mount: {self.log_tail()}")
            time.sleep(0.02)

    def cut(self) -> CutReport:
        """The power goes and comes back: only what was synced is left, mounted again.

        Whatever still uses the mount must be dead first (the daemon, SIGKILLed).
        """
        report = self.unmount()
        self.mount()
        return report

    def unmount(self) -> CutReport:
        assert self.proc is not None, "not mounted"
        deadline = time.monotonic() + UNMOUNT_TIMEOUT_S
        while True:
            done = subprocess.run(
                ["fusermount3", "-u", str(self.mountpoint)], capture_output=True, check=False
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:  # something still holds a file open
                raise RuntimeError(f"cannot unmount {self.mountpoint}: {done.stderr!r}")
            time.sleep(0.05)
        out, _ = self.proc.communicate(timeout=UNMOUNT_TIMEOUT_S)
        self.proc = None
        self.cuts += 1
        lines = out.decode().splitlines()
        if not lines:
            raise RuntimeError(f"the power-cut layer wrote no image: {self.log_tail()}")
        return CutReport(**json.loads(lines[-1]))

    def close(self) -> None:
        """Unmount whatever happens (lazily if still busy) and leave no server behind."""
        if self.proc is None:
            return
        if os.path.ismount(self.mountpoint):
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, check=False
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.communicate(timeout=UNMOUNT_TIMEOUT_S)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-2000:]

    def __enter__(self) -> Self:
        self.mount()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.powercut", description=__doc__)
    parser.add_argument("image", type=Path, help="the durable image, read at mount, written at cut")
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--keep-unsynced", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    serve(args.image, args.mountpoint, keep_unsynced=args.keep_unsynced, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
