"""Telemetry kept on disk as an append-only log: what a window could not deliver, one record.

SQLite writes a transaction as whole pages twice (the WAL, then the database at the checkpoint),
with its indexes and the page of the watermark: a window of a home's telemetry (a dozen events)
costs tens of kilobytes there. Here the same window is one record, compressed, appended to a
segment file and made durable with one ``fdatasync``: usually a single page of the filesystem.

A record::

    magic "CBS1" | body length u32 | first seq u64 | last seq u64 | watermark u64 | count u32
    | body crc32 u32 | header crc32 u32 | body: zlib(JSON list of the events)

``watermark``: what the batch records (``HotBatch.watermark``): every seq up to it is on disk,
delivered or reported. Records go into segment files (``NNNNNNNNNNNNNNNNNNNN.seg`` in
``outbox.sqlite3.spool/``) of about ``SEGMENT_BYTES``; a segment whose events were all
acknowledged is deleted. Acknowledgements are kept in memory only: after a restart the
acknowledged events of a segment that was not finished are published again (duplicates by id,
which the platform drops).

At open every segment is read and checked. A record cut short at the end of the last segment
(a crash or a power cut in the middle of an append, before its ``fdatasync`` returned) is cut
off: its events were never acknowledged as written, and the seqs the next start reports cover
them. A record damaged anywhere else (its checksum, or what follows it in its segment) is
reported, with the range of seqs it may have held.

One thread uses it (the store's): nothing here is thread-safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gateway.core.clock import ts_from_unix
from gateway.core.events import NewEvent, StoredEvent
from gateway.store.files import fsync_dir

log = structlog.get_logger("gateway.store.spool")

MAGIC = b"CBS1"
_HEADER = struct.Struct("<4sIQQQII")  # magic, body length, first, last, watermark, count, body crc
_HEADER_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _HEADER_CRC.size
SEGMENT_BYTES = 64 * 1024  # a new segment once the active one is this large
SUFFIX = ".seg"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a longer length is damage, not a record


class SpoolDamage(Exception):
    """A record that cannot be read: its checksum or its length is wrong."""


@dataclass(slots=True, eq=False)
class _Entry:
    """An event of a record read into memory, and its state in the uplink."""

    seq: int
    id: str
    kind: str
    device: str | None
    data: str
    ts: str
    synced: bool
    mono_ns: int
    boot_id: str
    record: _Record
    inflight: bool = False
    retry_at: float = 0.0

    def stored(self) -> StoredEvent:
        return StoredEvent(
            self.seq, self.id, self.kind, self.device, self.data, self.ts, self.synced, 1
        )


@dataclass(slots=True, eq=False)
class _Record:
    segment: _Segment
    offset: int
    size: int  # on disk, header included
    first: int
    last: int
    watermark: int
    count: int
    remaining: int  # events not yet acknowledged
    entries: dict[int, _Entry] | None = None  # read into memory (the unacknowledged ones)


@dataclass(slots=True, eq=False)
class _Segment:
    path: Path
    number: int
    size: int = 0
    records: list[_Record] = field(default_factory=list)
    doomed: bool = False  # evicted in a transaction not yet committed

    def done(self) -> bool:
        return all(record.remaining == 0 for record in self.records)


@dataclass(slots=True)
class SpoolOpen:
    """What ``Spool.open`` found."""

    max_seq: int = 0
    watermark: int = 0
    damaged: list[tuple[int, int]] = field(default_factory=list)  # seq ranges that may be lost
    cut_bytes: int = 0  # a torn record cut off the end


def encode_record(rows: Sequence[tuple[int, NewEvent]], watermark: int) -> bytes:
    """One record of ``rows`` (seq order is not required)."""
    body = zlib.compress(
        json.dumps(
            [
                [
                    seq,
                    event.id,
                    event.kind,
                    event.device,
                    event.data_json,
                    event.ts,
                    event.ts_synced,
                    event.mono_ns,
                    event.boot_id,
                ]
                for seq, event in rows
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
    )
    seqs = [seq for seq, _ in rows]
    header = _HEADER.pack(
        MAGIC, len(body), min(seqs), max(seqs), watermark, len(rows), zlib.crc32(body)
    )
    return header + _HEADER_CRC.pack(zlib.crc32(header)) + body


@dataclass(frozen=True, slots=True)
class RecordHeader:
    length: int
    first: int
    last: int
    watermark: int
    count: int
    body_crc: int


def decode_header(data: bytes | memoryview) -> RecordHeader:
    """The header at the start of ``data`` (``SpoolDamage`` if it is not one, or short)."""
    if len(data) < HEADER_BYTES:
        raise SpoolDamage("short header")
    header = bytes(data[: _HEADER.size])
    magic, length, first, last, watermark, count, body_crc = _HEADER.unpack(header)
    (crc,) = _HEADER_CRC.unpack(bytes(data[_HEADER.size : HEADER_BYTES]))
    if magic != MAGIC or crc != zlib.crc32(header):
        raise SpoolDamage("bad header")
    if length > MAX_BODY_BYTES or count == 0 or first > last:
        raise SpoolDamage("impossible header")
    return RecordHeader(length, first, last, watermark, count, body_crc)


def decode_body(header: RecordHeader, body: bytes) -> list[list[object]]:
    """The events of a record's body (``SpoolDamage`` if it does not match its header)."""
    if len(body) != header.length:
        raise SpoolDamage("record cut short")
    if zlib.crc32(body) != header.body_crc:
        raise SpoolDamage("bad body checksum")
    try:
        rows = json.loads(zlib.decompress(body))
    except (zlib.error, ValueError) as exc:
        raise SpoolDamage(f"unreadable body: {exc}") from exc
    if not isinstance(rows, list) or len(rows) != header.count:
        raise SpoolDamage("body does not match its header")
    for row in rows:
        if not (isinstance(row, list) and len(row) == 9 and type(row[0]) is int):
            raise SpoolDamage("malformed event")
        if not header.first <= row[0] <= header.last:
            raise SpoolDamage("seq outside the record's range")
    return rows


class Spool:
    """The telemetry log (store thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None  # appended to
        self._fd: int | None = None  # of the active segment
        self._records: list[_Record] = []  # every record, in order
        self._scan_from = 0  # claims start there: records before it are acknowledged
        self._owner: dict[int, _Entry] = {}  # loaded entries not acknowledged, by seq
        self._corrections: dict[str, tuple[float, int]] = {}  # boot id -> (wall, mono ns)
        self._next_number = 1

    # ----------------------------------------------------------------------------- opening

    def open(self) -> SpoolOpen:
        """Read and check every segment; cut a torn record off the end."""
        found = SpoolOpen()
        if not self.directory.exists():
            return found
        names = sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX))
        numbered = []
        for path in names:
            try:
                numbered.append((int(path.name[: -len(SUFFIX)]), path))
            except ValueError:
                log.warning("spool_file_ignored", path=str(path))
        numbered.sort()
        for index, (number, path) in enumerate(numbered):
            segment = _Segment(path, number)
            self._next_number = max(self._next_number, number + 1)
            last_segment = index == len(numbered) - 1
            self._read_segment(segment, found, last_segment=last_segment)
            if segment.records:
                self._segments.append(segment)
                self._records += segment.records
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        for record in self._records:
            found.max_seq = max(found.max_seq, record.last)
            found.watermark = max(found.watermark, record.watermark)
        if self._segments and self._segments[-1].size < SEGMENT_BYTES:
            self._active = self._segments[-1]
        return found

    def _read_segment(self, segment: _Segment, found: SpoolOpen, *, last_segment: bool) -> None:
        data = segment.path.read_bytes()
        offset = 0
        while offset < len(data):
            try:
                header = decode_header(memoryview(data)[offset:])
                end = offset + HEADER_BYTES + header.length
                decode_body(header, data[offset + HEADER_BYTES : end])
            except SpoolDamage as exc:
                self._damaged_tail(segment, found, data, offset, str(exc), last=last_segment)
                break
            segment.records.append(
                _Record(
                    segment,
                    offset,
                    end - offset,
                    header.first,
                    header.last,
                    header.watermark,
                    header.count,
                    header.count,
                )
            )
            offset = end
        segment.size = offset

    def _damaged_tail(
        self,
        segment: _Segment,
        found: SpoolOpen,
        data: bytes,
        offset: int,
        why: str,
        *,
        last: bool,
    ) -> None:
        """What follows ``offset`` in the segment cannot be read. At the end of the last segment
        it is an append that never completed: cut off. Elsewhere it is damage: what it held is
        reported, as the seqs between the records around it."""
        if last:
            found.cut_bytes += len(data) - offset
            log.warning("spool_torn_record_cut", path=str(segment.path), offset=offset, why=why)
        else:
            low = segment.records[-1].last + 1 if segment.records else None
            found.damaged.append((low if low is not None else 0, -1))  # upper bound: later
            log.error("spool_damaged", path=str(segment.path), offset=offset, why=why)
        try:
            with open(segment.path, "r+b") as handle:
                handle.truncate(offset)
                os.fsync(handle.fileno())
        except OSError as exc:
            log.warning("spool_not_cut", path=str(segment.path), error=str(exc))

    def resolve_damage(self, found: SpoolOpen, top: int) -> list[tuple[int, int]]:
        """The damaged ranges with their upper bounds: up to the next record read, or ``top``."""
        ranges = []
        for low, _ in found.damaged:
            later = [record.first for record in self._records if record.first > low]
            high = min(later) - 1 if later else top
            if high >= low:
                ranges.append((max(low, 1), high))
        return ranges

    def seqs_above(self, seq: int) -> list[int]:
        """The seqs of the records' events above ``seq`` (reads those records)."""
        found: list[int] = []
        for record in self._records:
            if record.last <= seq or record.remaining == 0:
                continue
            entries = self._load(record)
            if entries is None:
                found += range(max(record.first, seq + 1), record.last + 1)
            else:
                found += [s for s in entries if s > seq]
        return sorted(found)

    def move_aside(self, target: Path) -> None:
        """The database it belongs to was moved aside: keep the spool beside it."""
        self.close()
        if self.directory.exists():
            self.directory.replace(target)
        self._segments, self._records, self._owner = [], [], {}
        self._active, self._scan_from = None, 0

    # ----------------------------------------------------------------------------- writing

    @property
    def disk_bytes(self) -> int:
        """What the segments take on disk (those being evicted left out)."""
        return sum(segment.size for segment in self._segments if not segment.doomed)

    def append(
        self,
        rows: Sequence[tuple[int, NewEvent]],
        watermark: int,
        *,
        inflight: Iterable[int] = (),
        retry_at: dict[int, float] | None = None,
        record: bytes | None = None,
    ) -> None:
        """Append one record and make it durable (``OSError`` if it could not be: nothing of
        it then stays). ``inflight``/``retry_at``: the events' state in the uplink; those in
        neither state are left on disk only, to be read when claimed."""
        data = record if record is not None else encode_record(rows, watermark)
        header = decode_header(data)
        segment = self._segment_for_append()
        assert self._fd is not None
        offset = segment.size
        try:
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, offset)
            raise
        segment.size = offset + len(data)
        record_ = _Record(
            segment,
            offset,
            len(data),
            header.first,
            header.last,
            header.watermark,
            header.count,
            header.count,
        )
        segment.records.append(record_)
        self._records.append(record_)
        flying = set(inflight)
        retry = retry_at or {}
        if flying or retry:
            record_.entries = {}
            for seq, event in rows:
                entry = self._entry(
                    [
                        seq,
                        event.id,
                        event.kind,
                        event.device,
                        event.data_json,
                        event.ts,
                        event.ts_synced,
                        event.mono_ns,
                        event.boot_id,
                    ],
                    record_,
                )
                entry.inflight = seq in flying
                entry.retry_at = retry.get(seq, 0.0)
                record_.entries[seq] = entry
                self._owner[seq] = entry
        if segment.size >= SEGMENT_BYTES:
            self._close_active()

    def _segment_for_append(self) -> _Segment:
        if self._active is not None and self._fd is not None:
            return self._active
        if self._active is None:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            number = self._next_number
            self._next_number += 1
            path = self.directory / f"{number:020d}{SUFFIX}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            self._active = _Segment(path, number)
            self._segments.append(self._active)
            self._fd = fd
            fsync_dir(self.directory)
            fsync_dir(self.directory.parent)
        else:
            self._fd = os.open(self._active.path, os.O_WRONLY | os.O_APPEND)
        return self._active

    def _close_active(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._active = None

    def close(self) -> None:
        self._close_active()

    # ----------------------------------------------------------------------------- delivery

    def _entry(self, row: list[object], record: _Record) -> _Entry:
        seq, event_id, kind, device, data, ts, synced, mono_ns, boot_id = row
        entry = _Entry(
            int(seq),  # type: ignore[call-overload]
            str(event_id),
            str(kind),
            None if device is None else str(device),
            str(data),
            str(ts),
            bool(synced),
            int(mono_ns),  # type: ignore[call-overload]
            str(boot_id),
            record,
        )
        if not entry.synced and entry.boot_id in self._corrections:
            self._correct(entry, *self._corrections[entry.boot_id])
        return entry

    def _load(self, record: _Record) -> dict[int, _Entry] | None:
        """The record's unacknowledged events, read from disk if they are not in memory;
        None if the record cannot be read any more."""
        if record.entries is not None:
            return record.entries
        try:
            with open(record.segment.path, "rb") as handle:
                handle.seek(record.offset)
                data = handle.read(record.size)
            header = decode_header(data)
            rows = decode_body(header, data[HEADER_BYTES:])
        except (OSError, SpoolDamage) as exc:
            log.error("spool_record_unreadable", path=str(record.segment.path), error=str(exc))  # noqa: TRY400
            return None
        record.entries = {}
        for row in rows:
            entry = self._entry(row, record)
            record.entries[entry.seq] = entry
            self._owner[entry.seq] = entry
        record.remaining = len(record.entries)
        return record.entries

    def claim(self, room: int, now: float) -> tuple[list[StoredEvent], list[tuple[int, int]]]:
        """Up to ``room`` events in seq order, from the oldest record; and the seq ranges of
        records found unreadable (forgotten: the caller reports them)."""
        taken: list[StoredEvent] = []
        damaged: list[tuple[int, int]] = []
        index = self._scan_from
        advance = True
        while room > 0 and index < len(self._records):
            record = self._records[index]
            index += 1
            if record.remaining == 0:
                if advance:
                    self._scan_from = index
                continue
            advance = False
            entries = self._load(record)
            if entries is None:
                damaged.append((record.first, record.last))
                record.remaining = 0
                continue
            for entry in entries.values():  # in seq order, as written
                if room <= 0:
                    break
                if entry.inflight or entry.retry_at > now:
                    continue
                entry.inflight = True
                taken.append(entry.stored())
                room -= 1
        if damaged:
            self._reclaim()
        return taken, damaged

    def owns(self, seq: int) -> bool:
        return seq in self._owner

    def ack(self, seqs: Iterable[int]) -> tuple[list[int], int]:
        """Forget the acknowledged events that are here; return the other seqs, and the highest
        watermark of the segments this deleted (0: none), which must be kept elsewhere."""
        others: list[int] = []
        touched = False
        for seq in seqs:
            entry = self._owner.pop(seq, None)
            if entry is None:
                others.append(seq)
                continue
            record = entry.record
            if record.entries is not None:
                record.entries.pop(seq, None)
            record.remaining -= 1
            touched = touched or record.remaining == 0
        return others, self._reclaim() if touched else 0

    def _reclaim(self) -> int:
        """Delete the oldest segments whose events were all acknowledged; return the highest
        watermark their records carried (0: none deleted)."""
        deleted = 0
        while self._segments and self._segments[0].done() and not self._segments[0].doomed:
            segment = self._segments.pop(0)
            if segment is self._active:
                self._close_active()
            self._drop_records(segment)
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
            deleted = max([deleted, *(record.watermark for record in segment.records)])
        return deleted

    def _drop_records(self, segment: _Segment) -> None:
        for record in segment.records:
            for seq in record.entries or ():
                self._owner.pop(seq, None)
        count = len(segment.records)
        before = len(self._records)
        if (
            count
            and self._records[0] is segment.records[0]
            and self._records[count - 1] is (segment.records[-1])
        ):
            del self._records[:count]  # the oldest segment: its records lead
        else:
            gone = {id(record) for record in segment.records}
            self._records = [record for record in self._records if id(record) not in gone]
            self._scan_from = 0
            return
        self._scan_from = max(0, self._scan_from - (before - len(self._records)))

    @property
    def watermark(self) -> int:
        """The highest watermark of the records still here."""
        return max((record.watermark for record in self._records), default=0)

    def release(self, seqs: Iterable[int], retry_at: float) -> list[int]:
        """Put back events claimed; return the seqs that are not here."""
        others = []
        for seq in seqs:
            entry = self._owner.get(seq)
            if entry is None:
                others.append(seq)
                continue
            entry.inflight, entry.retry_at = False, retry_at
            self._scan_from = 0
        return others

    def release_all(self) -> None:
        for entry in self._owner.values():
            entry.inflight, entry.retry_at = False, 0.0
        self._scan_from = 0

    # ----------------------------------------------------------------------------- eviction

    def evictable(self) -> _Segment | None:
        """The oldest segment none of whose events is in flight (the active one is closed
        first, so that it can go)."""
        for segment in self._segments:
            if segment.doomed or segment.done():
                continue
            if any(entry.inflight for r in segment.records for entry in (r.entries or {}).values()):
                continue
            if segment is self._active:
                self._close_active()
            return segment
        return None

    def doom(self, segment: _Segment) -> list[int]:
        """Mark a segment as evicted (``drop_doomed`` deletes it once the report of its events is
        committed, ``spare_doomed`` keeps it if that failed); return its events' seqs."""
        seqs: list[int] = []
        for record in segment.records:
            if record.remaining == 0:
                continue
            entries = self._load(record)
            if entries is None:
                seqs += range(record.first, record.last + 1)
            else:
                seqs += entries
        segment.doomed = True
        return sorted(seqs)

    def drop_doomed(self) -> None:
        for segment in [s for s in self._segments if s.doomed]:
            self._segments.remove(segment)
            self._drop_records(segment)
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()

    def spare_doomed(self) -> None:
        for segment in self._segments:
            segment.doomed = False

    # ----------------------------------------------------------------------------- figures

    def queued(self) -> int:
        """Events not yet acknowledged."""
        return sum(record.remaining for record in self._records)

    def oldest_ts(self) -> str | None:
        for record in self._records[self._scan_from :]:
            if record.remaining == 0:
                continue
            entries = self._load(record)
            if entries:
                return min(entry.ts for entry in entries.values())
        return None

    # ----------------------------------------------------------------------------- clock

    def correct_timestamps(self, boot_id: str, wall_now: float, mono_now_ns: int) -> int:
        """The clock is synchronised: this boot's events stamped before are corrected, those in
        memory now, the others as they are read."""
        self._corrections[boot_id] = (wall_now, mono_now_ns)
        count = 0
        for entry in self._owner.values():
            if not entry.synced and entry.boot_id == boot_id:
                self._correct(entry, wall_now, mono_now_ns)
                count += 1
        return count

    @staticmethod
    def _correct(entry: _Entry, wall_now: float, mono_now_ns: int) -> None:
        entry.ts = ts_from_unix(wall_now - (mono_now_ns - entry.mono_ns) / 1e9)
        entry.synced = True


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a short write goes on where it stopped)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_spool(directory: Path) -> list[tuple[int, str, str, str | None, str, str, bool]]:
    """Every event of a spool's readable records, acknowledged or not (acknowledgements are in
    memory only), in seq order: (seq, id, kind, device, data, ts, ts_synced). For inspection
    (``carebed`` support, tests); read-only, beside a running gateway too."""
    events = []
    if not directory.exists():
        return []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # delivered and deleted meanwhile
            continue
        offset = 0
        while offset < len(data):
            try:
                header = decode_header(memoryview(data)[offset:])
                end = offset + HEADER_BYTES + header.length
                rows = decode_body(header, data[offset + HEADER_BYTES : end])
            except SpoolDamage:
                break
            events += [
                (
                    int(str(r[0])),
                    str(r[1]),
                    str(r[2]),
                    None if r[3] is None else str(r[3]),
                    str(r[4]),
                    str(r[5]),
                    bool(r[6]),
                )
                for r in rows
            ]
            offset = end
    return sorted(events)
