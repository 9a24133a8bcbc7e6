"""Telemetry kept on disk as an append-only log: what a window could not deliver, one record.

SQLite writes a transaction as whole pages twice (the WAL, then the database at the checkpoint),
with its indexes and the page of the watermark: a window of a home's telemetry (a dozen events)
costs tens of kilobytes there. Here the same window is one record, compressed, appended to a
segment file and made durable with one ``fdatasync``: usually a single page of the filesystem.

A record::

    magic "CBS3" | body length u32 | first seq u64 | last seq u64 | watermark u64 | db top u64
    | count u32 | body crc32 u32 | header crc32 u32 | body: zlib(META, a newline, EVENTS)

EVENTS: the events as they go on the wire (``StoredEvent.wire_json``, attempt 1), in seq order,
joined by commas, so that a claim hands a stretch of them to a message as it is (``WireRun``),
without an object per event. META, JSON: ``[seqs, lengths, indexes, mono_ns, boot_ids]``: each
event's seq and the length of its JSON; for the events stamped before the clock was
synchronised, their indexes, CLOCK_BOOTTIME stamps and boot ids (the clock correction rewrites
their ``ts`` when they are read). Records of
the earlier formats are still read: "CBS2" (the same without the db top) and "CBS1" (neither,
and a body of zlib(JSON list of rows)).

``watermark``: what the batch records (``HotBatch.watermark``): every seq up to it is on disk,
delivered or reported. ``db top``: the database's ``meta.db_top`` when the record was appended,
the highest seq committed to it; the store compares it with the database's at open, which tells
it that the database lost commits (its -wal file deleted) that the watermark counted on.

Records go into segment files (``NNNNNNNNNNNNNNNNNNNN.seg`` in ``outbox.sqlite3.spool/``) of
about ``SEGMENT_BYTES``; a segment whose events were all acknowledged is deleted.
Acknowledgements are kept in memory only: after a restart the acknowledged events of a segment
that was not finished are published again (duplicates by id, which the platform drops).

At open every segment is read and checked. A record cut short at the end of the last segment
(a crash or a power cut in the middle of an append, before its ``fdatasync`` returned) is cut
off: its events were never acknowledged as written, and the seqs the next start reports cover
them. A record damaged anywhere else (its checksum, or what follows it in its segment) is
reported, with the range of seqs it may have held.

One thread uses it (the store's): nothing here is thread-safe.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import itertools
import json
import operator
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gateway.core.clock import ts_from_unix
from gateway.core.events import NewEvent, StoredEvent, WireRun
from gateway.store.files import fsync_dir

log = structlog.get_logger("gateway.store.spool")

MAGIC = b"CBS3"  # what is written: events as their wire JSON, the database's top
MAGIC_WIRE = b"CBS2"  # the second format, without the database's top: read, never written
MAGIC_ROWS = b"CBS1"  # the first format, events as rows: read, never written
_MAGIC_PREFIX = b"CBS"
SPOOLED_CLASS = "telemetry"  # the only class the spool holds
# magic, body length, first, last, watermark, db top, count, body crc
_HEADER = struct.Struct("<4sIQQQQII")
_HEADER_OLD = struct.Struct("<4sIQQQII")  # CBS1 and CBS2: no db top
_HEADER_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _HEADER_CRC.size  # of what is written
SEGMENT_BYTES = 64 * 1024  # a new segment once the active one is this large
# Events per record: a claim parses a whole record on the store's thread, where an alarm may be
# waiting (256 vitals events: ≈0.5 ms), while small records compress less well.
RECORD_EVENTS = 256
SUFFIX = ".seg"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a longer length is damage, not a record


class SpoolDamage(Exception):
    """A record that cannot be read: its checksum or its length is wrong."""


# The state of each event of a record read into memory (``_Record.state``, one byte each).
_READY = 0  # to be claimed
_FLYING = 1  # claimed: in flight
_ACKED = 2
_BACK = 3  # released: claimed again from its retry time (``_Record.back``)
_READY_RUNS = re.compile(b"\x00+")  # stretches of events to be claimed
_FLYING_BYTE = bytes([_FLYING])
_ACKED_BYTE = bytes([_ACKED])
_LINK_LOST = bytes.maketrans(b"\x01\x03", b"\x00\x00")  # all but the acknowledged: ready


@dataclass(slots=True, eq=False)
class Body:
    """A record's events: their seqs (increasing) and their wire JSON joined by commas, event
    ``n`` being ``text[starts[n] : starts[n + 1] - 1]``."""

    seqs: list[int]
    text: str
    starts: list[int]
    unsynced: Unsynced

    def wire(self, n: int) -> str:
        return self.text[self.starts[n] : self.starts[n + 1] - 1]

    @classmethod
    def of(cls, seqs: list[int], wires: list[str], unsynced: Unsynced) -> Body:
        starts = list(itertools.accumulate(map((1).__add__, map(len, wires)), initial=0))
        return cls(seqs, ",".join(wires), starts, unsynced)


@dataclass(slots=True, eq=False)
class Unsynced:
    """A record's events stamped before the clock was synchronised, as written: their indexes
    (increasing), CLOCK_BOOTTIME stamps and boot ids."""

    indexes: list[int] = field(default_factory=list)
    mono_ns: list[int] = field(default_factory=list)
    boots: list[str] = field(default_factory=list)

    def add(self, n: int, mono_ns: int, boot_id: str) -> None:
        self.indexes.append(n)
        self.mono_ns.append(mono_ns)
        self.boots.append(boot_id)

    def of_boot(self, boot_id: str) -> list[int]:
        return [n for n, boot in zip(self.indexes, self.boots, strict=True) if boot == boot_id]


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
    body: Body | None = None  # read into memory
    state: bytearray = field(default_factory=bytearray)  # of each event of ``body``
    index: dict[int, int] = field(default_factory=dict)  # seq -> its event's index in ``body``
    back: dict[int, float] = field(default_factory=dict)  # released: index -> retry time
    fixed: set[int] = field(default_factory=set)  # stamped unsynchronised, corrected since
    shared: bool = False  # a seq of it is another record's too (``_owner`` names that one)
    unreadable: bool = False  # found damaged when claimed: skipped until its loss is reported


@dataclass(slots=True, eq=False)
class _Segment:
    path: Path
    number: int
    size: int = 0
    records: list[_Record] = field(default_factory=list)
    doomed: bool = False  # evicted in a transaction not yet committed
    damaged: bool = False  # holds damage, reported at open: kept until its records are done

    def done(self) -> bool:
        return all(record.remaining == 0 for record in self.records)

    def watermark(self) -> int:
        return max((record.watermark for record in self.records), default=0)


@dataclass(slots=True)
class SpoolOpen:
    """What ``Spool.open`` found."""

    max_seq: int = 0
    watermark: int = 0
    db_top: int = 0  # the highest db top a record names
    # Damage: a record whose header is intact names its seqs (first, last); otherwise the
    # seqs between the good records around it (in file order), resolved by ``resolve_damage``.
    damaged: list[tuple[int, int]] = field(default_factory=list)
    unbounded: list[_Record | None] = field(default_factory=list)  # the good record before
    cut_bytes: int = 0  # a torn record cut off the end
    # What the cut record named (its header's seqs), or the record before it: a torn append is
    # above every watermark on disk, so what it names below one is damage (``SqliteStore``).
    cut: list[tuple[tuple[int, int] | None, _Record | None]] = field(default_factory=list)


def body_of(rows: Sequence[tuple[int, NewEvent]]) -> Body:
    """``rows`` as a record holds them (seq order is not required; a seq twice is refused)."""
    ordered = sorted(rows, key=operator.itemgetter(0))
    seqs = [seq for seq, _ in ordered]
    if any(map(operator.ge, seqs, seqs[1:])):
        raise ValueError("a seq twice in one record")
    devices: dict[str | None, str] = {}  # device -> its JSON: a record has few devices
    wires = []
    unsynced = Unsynced()
    for n, (seq, event) in enumerate(ordered):
        device = devices.get(event.device)
        if device is None:
            device = devices[event.device] = json.dumps(event.device)
        wires.append(event.stored(seq).wire_json(device))
        if not event.ts_synced:
            unsynced.add(n, event.mono_ns, event.boot_id)
    return Body.of(seqs, wires, unsynced)


def encode_record(rows: Sequence[tuple[int, NewEvent]], watermark: int, db_top: int = 0) -> bytes:
    """One record of ``rows`` (seq order is not required)."""
    return _encode(body_of(rows), watermark, db_top)


def _encode(body: Body, watermark: int, db_top: int) -> bytes:
    lengths = [end - start - 1 for start, end in itertools.pairwise(body.starts)]
    unsynced = body.unsynced
    meta = json.dumps(
        [body.seqs, lengths, unsynced.indexes, unsynced.mono_ns, unsynced.boots],
        separators=(",", ":"),
    )
    data = zlib.compress(b"%s\n%s" % (meta.encode(), body.text.encode()))
    seqs = body.seqs
    header = _HEADER.pack(
        MAGIC, len(data), seqs[0], seqs[-1], watermark, db_top, len(seqs), zlib.crc32(data)
    )
    return header + _HEADER_CRC.pack(zlib.crc32(header)) + data


def encode_records(
    rows: Sequence[tuple[int, NewEvent]], watermark: int, db_top: int = 0
) -> list[tuple[bytes, Sequence[tuple[int, NewEvent]]]]:
    """``rows`` (in seq order) as records of at most ``RECORD_EVENTS`` events, each with its
    events. A record's watermark stays below the seqs of the records after it: written in one
    go, a power cut may keep the first and lose a later one."""
    chunks = [rows[n : n + RECORD_EVENTS] for n in range(0, len(rows), RECORD_EVENTS)]
    bounds = []
    bound = watermark
    for chunk in reversed(chunks):  # each below every seq of the chunks after it
        bounds.append(bound)
        bound = min([bound, *(seq - 1 for seq, _ in chunk)])
    bounds.reverse()
    return [
        (encode_record(chunk, b, db_top), chunk) for chunk, b in zip(chunks, bounds, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class RecordHeader:
    magic: bytes
    length: int
    first: int
    last: int
    watermark: int
    count: int
    body_crc: int
    db_top: int = 0  # CBS3 only
    size: int = HEADER_BYTES  # the header's bytes, its checksum included

    @property
    def end(self) -> int:
        """The record's bytes, header and body."""
        return self.size + self.length


def decode_header(data: bytes | memoryview) -> RecordHeader:
    """The header at the start of ``data`` (``SpoolDamage`` if it is not one, or short)."""
    layout = _HEADER if bytes(data[:4]) == MAGIC else _HEADER_OLD
    size = layout.size + _HEADER_CRC.size
    if len(data) < size:
        raise SpoolDamage("short header")
    header = bytes(data[: layout.size])
    (crc,) = _HEADER_CRC.unpack(bytes(data[layout.size : size]))
    if layout is _HEADER:
        magic, length, first, last, watermark, db_top, count, body_crc = layout.unpack(header)
    else:
        magic, length, first, last, watermark, count, body_crc = layout.unpack(header)
        db_top = 0
    if magic not in (MAGIC, MAGIC_WIRE, MAGIC_ROWS) or crc != zlib.crc32(header):
        raise SpoolDamage("bad header")
    if length > MAX_BODY_BYTES or count == 0 or first > last:
        raise SpoolDamage("impossible header")
    return RecordHeader(magic, length, first, last, watermark, count, body_crc, db_top, size)


def check_body(header: RecordHeader, body: bytes | memoryview) -> None:
    """``SpoolDamage`` unless ``body`` is the one its header names (length and checksum)."""
    if len(body) != header.length:
        raise SpoolDamage("record cut short")
    if zlib.crc32(body) != header.body_crc:
        raise SpoolDamage("bad body checksum")


def decode_body(header: RecordHeader, body: bytes) -> Body:
    """The events of a record's body (``SpoolDamage`` if it does not match its header)."""
    check_body(header, body)
    try:
        data = zlib.decompress(body)
        if header.magic == MAGIC_ROWS:
            return _body_of_rows(header, json.loads(data))
        meta, _, text = data.partition(b"\n")
        seqs, lengths, indexes, stamps, boots = json.loads(meta)
        decoded = Body(seqs, text.decode(), [], Unsynced(indexes, stamps, boots))
    except (zlib.error, ValueError, TypeError) as exc:
        raise SpoolDamage(f"unreadable body: {exc}") from exc
    count = header.count
    if not (
        type(seqs) is list
        and type(lengths) is list
        and type(indexes) is list
        and type(stamps) is list
        and type(boots) is list
        and len(seqs) == len(lengths) == count
        and set(map(type, seqs)) == {int}
        and set(map(type, lengths)) == {int}
        and seqs[0] == header.first
        and seqs[-1] == header.last
        and min(lengths) >= 2  # the shortest JSON object: {}
        and not any(map(operator.ge, seqs, seqs[1:]))
        and sum(lengths) + count - 1 == len(decoded.text)
    ):
        raise SpoolDamage("body does not match its header")
    decoded.starts = list(itertools.accumulate(map((1).__add__, lengths), initial=0))
    if indexes and not (
        len(indexes) == len(stamps) == len(boots)
        and set(map(type, indexes)) == {int}
        and set(map(type, stamps)) == {int}
        and set(map(type, boots)) == {str}
        and indexes[0] >= 0
        and indexes[-1] < count
        and not any(map(operator.ge, indexes, indexes[1:]))
    ):
        raise SpoolDamage("malformed unsynchronised events")
    return decoded


def _body_of_rows(header: RecordHeader, rows: object) -> Body:
    """A record of the first format (rows: seq, id, kind, device, data, ts, ts_synced, mono_ns,
    boot_id), as the events of the current one."""
    if not isinstance(rows, list) or len(rows) != header.count:
        raise SpoolDamage("body does not match its header")
    first, last = header.first, header.last
    for row in rows:
        if type(row) is not list or len(row) != 9 or type(row[0]) is not int:
            raise SpoolDamage("malformed event")
        if not first <= row[0] <= last:
            raise SpoolDamage("seq outside the record's range")
    seqs: list[int] = []
    wires: list[str] = []
    unsynced = Unsynced()
    for seq, event_id, kind, device, data, ts, synced, mono_ns, boot_id in sorted(
        rows, key=operator.itemgetter(0)
    ):
        if seqs and seq == seqs[-1]:
            continue  # one seq twice: delivered once
        event = StoredEvent(seq, event_id, kind, device, data, ts, synced, 1)
        if not synced:
            unsynced.add(len(seqs), mono_ns, boot_id)
        seqs.append(seq)
        wires.append(event.wire_json())
    return Body.of(seqs, wires, unsynced)


# The clock now, if it is synchronised: (this boot's id, wall time, CLOCK_BOOTTIME ns).
SyncedClock = Callable[[], "tuple[str, float, int] | None"]


class Spool:
    """The telemetry log (store thread).

    Deleting a segment loses the watermarks its records carried: the caller moves them to the
    database first (``finished``, then ``delete``; an eviction raises it in its transaction).
    """

    def __init__(self, directory: Path, *, clock: SyncedClock | None = None) -> None:
        self.directory = directory
        self._clock = clock  # corrects this boot's timestamps, once it is synchronised
        self._segments: dict[int, _Segment] = {}  # by number, oldest first
        self._active: _Segment | None = None  # appended to
        self._fd: int | None = None  # of the active segment
        self._live: dict[int, _Record] = {}  # records with events to deliver, in written order
        self._owner: dict[int, _Record] = {}  # the record read into memory of each seq
        self._finished: dict[int, _Segment] = {}  # every event acknowledged: to be deleted
        self._doomed: list[_Segment] = []  # evicted by the transaction being attempted
        self._unreadable: list[_Record] = []  # found damaged by a claim, loss not yet reported
        self._corrections: dict[str, tuple[float, int]] = {}  # boot id -> (wall, mono ns)
        self._next_number = 1

    # ----------------------------------------------------------------------------- opening

    def open(self) -> SpoolOpen:
        """Read and check every segment (checksums only: events are parsed when claimed); cut
        a torn append off the end of the last one."""
        found = SpoolOpen()
        if not self.directory.exists():
            # Made once, at the first start: not at the first window an outage writes (a new
            # directory costs the card more than the record).
            self.directory.mkdir(mode=0o700)
            fsync_dir(self.directory.parent)
            return found
        numbered = []
        for path in self.directory.iterdir():
            if not path.name.endswith(SUFFIX):
                continue
            try:
                numbered.append((int(path.name[: -len(SUFFIX)]), path))
            except ValueError:
                log.warning("spool_file_ignored", path=str(path))
        numbered.sort()
        previous: list[_Record | None] = [None]  # the last good record read, in file order
        for index, (number, path) in enumerate(numbered):
            segment = _Segment(path, number)
            self._next_number = max(self._next_number, number + 1)
            self._read_segment(segment, found, previous, last=index == len(numbered) - 1)
            if segment.records or segment.damaged:
                self._segments[number] = segment
                for record in segment.records:
                    self._live[id(record)] = record
            else:
                self._unlink(segment)
        for record in self._all_records():
            found.max_seq = max(found.max_seq, record.last)
            found.watermark = max(found.watermark, record.watermark)
        if self._segments:
            last_segment = next(reversed(self._segments.values()))
            if last_segment.size < SEGMENT_BYTES and not last_segment.damaged:
                self._active = last_segment
        return found

    def _all_records(self) -> Iterator[_Record]:
        for segment in self._segments.values():
            yield from segment.records

    def _read_segment(
        self,
        segment: _Segment,
        found: SpoolOpen,
        previous: list[_Record | None],
        *,
        last: bool,
    ) -> None:
        data = segment.path.read_bytes()
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            header, why = _check_at(view, offset)
            if header is not None:
                record = _Record(
                    segment,
                    offset,
                    header.end,
                    header.first,
                    header.last,
                    header.watermark,
                    header.count,
                    header.count,
                )
                segment.records.append(record)
                previous[0] = record
                found.db_top = max(found.db_top, header.db_top)
                offset += record.size
                continue
            resume = _next_record(view, offset + 1)
            if resume is None and last:
                # An append that never completed (its fsync had not returned): cut off. Its
                # seqs are above every watermark on disk: the crash's report covers them.
                found.cut_bytes += len(data) - offset
                named = _header_at(view, offset)
                found.cut.append(
                    ((named.first, named.last) if named is not None else None, previous[0])
                )
                log.warning("spool_torn_record_cut", path=str(segment.path), offset=offset, why=why)
                _truncate(segment.path, offset)
                break
            segment.damaged = True
            named = _header_at(view, offset)
            log.error("spool_damaged", path=str(segment.path), offset=offset, why=why)
            if named is not None:
                found.damaged.append((named.first, named.last))
            else:
                found.unbounded.append(previous[0])
            if resume is None:
                offset = len(data)
                break
            offset = resume
        segment.size = offset

    def resolve_damage(self, found: SpoolOpen, top: int) -> list[tuple[int, int]]:
        """The seq ranges damage may have taken: those named by intact headers; for the rest,
        the seqs between the good records around the damage (in file order), or up to
        ``top``."""
        ranges = list(found.damaged)
        order = list(self._all_records())
        position = {id(record): n for n, record in enumerate(order)}
        for before in found.unbounded:
            start = position[id(before)] + 1 if before is not None else 0
            low = before.last + 1 if before is not None else 1
            high = order[start].first - 1 if start < len(order) else top
            if high >= low:
                ranges.append((low, high))
        return sorted({(first, last) for first, last in ranges if last >= first >= 1})

    def damage_reported(self) -> None:
        """The damage found at open is reported: segments that hold nothing else go."""
        for segment in list(self._segments.values()):
            if segment.damaged and segment.done():
                self._finished[segment.number] = segment

    def seqs_above(self, seq: int) -> list[int]:
        """The seqs of the records' events above ``seq`` (reads those records)."""
        found: list[int] = []
        for record in self._live.values():
            if record.last <= seq:
                continue
            body = self._load(record)
            if body is None:
                found += range(max(record.first, seq + 1), record.last + 1)
            else:
                found += [s for s in _unacknowledged(record, body) if s > seq]
        return sorted(found)

    @property
    def watermark(self) -> int:
        """The highest watermark of the records still here."""
        return max((record.watermark for record in self._all_records()), default=0)

    def move_aside(self, target: Path) -> None:
        """The database it belongs to was moved aside: keep the spool beside it."""
        self.close()
        if self.directory.exists():
            self.directory.replace(target)
        self._segments, self._live, self._owner, self._finished = {}, {}, {}, {}
        self._doomed, self._unreadable = [], []

    # ----------------------------------------------------------------------------- writing

    @property
    def disk_bytes(self) -> int:
        """What the segments take on disk (those being evicted left out)."""
        return sum(segment.size for segment in self._segments.values() if not segment.doomed)

    def append(
        self,
        rows: Sequence[tuple[int, NewEvent]],
        watermark: int,
        *,
        inflight: Iterable[int] = (),
        retry_at: dict[int, float] | None = None,
        records: list[tuple[bytes, Sequence[tuple[int, NewEvent]]]] | None = None,
    ) -> None:
        """Append ``rows`` as records (``encode_records``) in one write, made durable by one
        ``fdatasync`` (``OSError`` if they could not be: nothing of them then stays).
        ``inflight``/``retry_at``: the events' state in the uplink; those in neither state are
        left on disk only, to be read when claimed."""
        encoded = records if records is not None else encode_records(rows, watermark)
        segment = self._segment_for_append()
        assert self._fd is not None
        offset = os.fstat(self._fd).st_size  # where O_APPEND puts it, whatever came before
        try:
            _write_all(self._fd, b"".join(data for data, _ in encoded))
            os.fdatasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, offset)
            except OSError:  # what it left stays: the next record goes to a new segment
                self._close_active()
            raise
        flying = set(inflight)
        retry = retry_at or {}
        for data, chunk in encoded:
            self._added(segment, offset, data, chunk, flying=flying, retry=retry)
            offset += len(data)
        segment.size = offset
        if segment.size >= SEGMENT_BYTES:
            self._close_active()

    def _added(
        self,
        segment: _Segment,
        offset: int,
        data: bytes,
        rows: Sequence[tuple[int, NewEvent]],
        *,
        flying: set[int],
        retry: dict[int, float],
    ) -> None:
        header = decode_header(data)
        new = _Record(
            segment,
            offset,
            len(data),
            header.first,
            header.last,
            header.watermark,
            header.count,
            header.count,
        )
        segment.records.append(new)
        self._live[id(new)] = new
        self._finished.pop(segment.number, None)
        if not (flying or retry):
            return
        body = body_of(rows)
        state = bytearray(len(body.seqs))
        for n, seq in enumerate(body.seqs):
            if seq in flying:
                state[n] = _FLYING
            elif seq in retry:
                state[n] = _BACK
                new.back[n] = retry[seq]
        new.body, new.state = body, state
        new.shared = not self._owner.keys().isdisjoint(body.seqs)
        self._owner.update(dict.fromkeys(body.seqs, new))
        self._fix(new, None)

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
            self._segments[number] = self._active
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

    def _load(self, record: _Record, *, finish: bool = True) -> Body | None:
        """The record's events, read from disk if they are not in memory; None if the record
        cannot be read any more. ``finish``: a record with nothing left to deliver is done."""
        if record.body is not None:
            return record.body
        body = _read_body(record)
        if body is None:
            return None
        seqs = body.seqs
        state = bytearray(len(seqs))
        owner = self._owner
        if owner.keys().isdisjoint(seqs):
            owner.update(dict.fromkeys(seqs, record))
        else:  # one seq twice on disk: delivered once
            record.shared = True
            for n, seq in enumerate(seqs):
                if seq in owner:
                    log.warning("spool_seq_twice", seq=seq, path=str(record.segment.path))
                    state[n] = _ACKED
                else:
                    owner[seq] = record
        record.body, record.state = body, state
        record.remaining = len(state) - state.count(_ACKED)
        if body.unsynced.indexes:
            clock = None
            if self._clock is not None:
                clock = self._clock()  # once per record
            self._fix(record, clock)
        body = record.body
        if record.remaining == 0 and finish:
            self._done(record)
        return body

    def _fix(self, record: _Record, clock: tuple[str, float, int] | None) -> None:
        """Correct the timestamps of the record's events stamped before the clock was
        synchronised, for the boots whose correction is known (or ``clock``'s, this boot's)."""
        body = record.body
        assert body is not None
        unsynced = body.unsynced
        known = {
            boot: self._corrections[boot] for boot in set(unsynced.boots) & self._corrections.keys()
        }
        if clock is not None and clock[0] not in known and clock[0] in unsynced.boots:
            known[clock[0]] = (clock[1], clock[2])
        if not known:
            return
        changes: dict[int, str] = {}
        for n, mono_ns, boot_id in zip(
            unsynced.indexes, unsynced.mono_ns, unsynced.boots, strict=True
        ):
            if n in record.fixed or boot_id not in known:
                continue
            wall_now, mono_now_ns = known[boot_id]
            try:
                event = StoredEvent.from_wire(body.wire(n))
            except ValueError as exc:  # (only a record of the first format could hold one)
                log.error("spool_event_uncorrected", seq=body.seqs[n], error=str(exc))  # noqa: TRY400
                continue
            ts = ts_from_unix(wall_now - (mono_now_ns - mono_ns) / 1e9)
            changes[n] = dataclasses.replace(event, ts=ts, ts_synced=True).wire_json()
            record.fixed.add(n)
        if changes:
            wires = [changes.get(n) or body.wire(n) for n in range(len(body.seqs))]
            record.body = Body.of(body.seqs, wires, body.unsynced)

    def claim(self, room: int, now: float) -> tuple[list[StoredEvent], list[tuple[int, int]]]:
        """``claim_runs``, as one object per event."""
        runs, damaged = self.claim_runs(room, now)
        return [event for run in runs for event in run.events()], damaged

    def claim_runs(self, room: int, now: float) -> tuple[list[WireRun], list[tuple[int, int]]]:
        """Up to ``room`` events in written order, from the oldest record, as stretches of their
        records' wire JSON; and the seq ranges of records found unreadable (skipped from now
        on; ``forget_unreadable`` once reported)."""
        runs: list[WireRun] = []
        damaged: list[tuple[int, int]] = []
        done: list[_Record] = []
        for record in self._live.values():
            if room <= 0:
                break
            if record.unreadable or record.segment.doomed:
                continue
            body = self._load(record, finish=False)
            if body is None:
                record.unreadable = True
                self._unreadable.append(record)
                damaged.append((record.first, record.last))
                continue
            if record.remaining == 0:
                done.append(record)
                continue
            if not record.back and _READY not in record.state:  # all in flight
                continue
            for lo, hi in _take(record, room, now):
                runs.append(WireRun(SPOOLED_CLASS, body.seqs, body.text, body.starts, lo, hi))
                room -= hi - lo
        for record in done:
            self._done(record)
        return runs, damaged

    def forget_unreadable(self) -> None:
        """The loss of the unreadable records found by claims is reported: forget them."""
        for record in self._unreadable:
            record.remaining = 0
            self._done(record)
        self._unreadable = []

    def ack(self, seqs: Sequence[int]) -> list[int]:
        """Forget the acknowledged events that are here; return the other seqs."""
        others: list[int] = []
        owner = self._owner
        seqs = list(seqs)
        total = len(seqs)
        i = 0
        while i < total:
            seq = seqs[i]
            record = owner.get(seq)
            if record is None or record.body is None:
                others.append(seq)
                i += 1
                continue
            ordered = record.body.seqs
            n = bisect.bisect_left(ordered, seq)
            # A message's seqs are mostly a stretch of one record's: acknowledged at once.
            m = min(total - i, len(ordered) - n)
            if m > 1 and seqs[i : i + m] != ordered[n : n + m]:
                m = 1
            state = record.state
            newly = m - state.count(_ACKED, n, n + m)
            if newly:
                if record.back:
                    for k in range(n, n + m):
                        record.back.pop(k, None)
                state[n : n + m] = _ACKED_BYTE * m
                record.remaining -= newly
                if record.remaining <= 0:
                    self._done(record)
            i += m
        return others

    def _done(self, record: _Record) -> None:
        self._live.pop(id(record), None)
        self._unload(record)
        segment = record.segment
        if not segment.doomed and segment.done():
            if segment is self._active:  # nothing more goes into a segment about to go
                self._close_active()
            self._finished[segment.number] = segment

    def _unload(self, record: _Record) -> None:
        """Forget the events of a record read into memory (nothing of it is left to deliver, or
        its segment goes)."""
        body = record.body
        if body is None:
            return
        record.body, record.state, record.back, record.fixed = None, bytearray(), {}, set()
        owner = self._owner
        if record.shared:
            for seq in body.seqs:
                if owner.get(seq) is record:
                    del owner[seq]
        else:
            collections.deque(map(owner.pop, body.seqs, itertools.repeat(None)), maxlen=0)

    def finished(self) -> tuple[list[_Segment], int]:
        """The segments whose events were all acknowledged, and the highest watermark their
        records carry (to be kept in the database before ``delete``)."""
        segments = [
            s
            for s in self._finished.values()
            if s.number in self._segments and not s.doomed and s.done()
        ]
        return segments, max((s.watermark() for s in segments), default=0)

    def delete(self, segments: Iterable[_Segment]) -> None:
        for segment in segments:
            self._finished.pop(segment.number, None)
            self._forget(segment)

    def _forget(self, segment: _Segment) -> None:
        if segment is self._active:
            self._close_active()
        self._segments.pop(segment.number, None)
        for record in segment.records:
            self._live.pop(id(record), None)
            self._unload(record)
        self._unlink(segment)

    @staticmethod
    def _unlink(segment: _Segment) -> None:
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # left on disk: its events come again after a restart
            log.warning("spool_segment_not_deleted", path=str(segment.path), error=str(exc))

    def release(self, seqs: Iterable[int], retry_at: float) -> list[int]:
        """Put back events claimed; return the seqs that are not here."""
        others = []
        for seq in seqs:
            record = self._owner.get(seq)
            if record is None or record.body is None:
                others.append(seq)
                continue
            n = bisect.bisect_left(record.body.seqs, seq)
            if record.state[n] != _ACKED:
                record.state[n] = _BACK
                record.back[n] = retry_at
        return others

    def release_all(self) -> None:
        for record in self._live.values():
            if record.body is not None:
                record.state = record.state.translate(_LINK_LOST)
                record.back = {}

    # ----------------------------------------------------------------------------- eviction

    def evictable(self) -> _Segment | None:
        """The oldest segment with events to deliver, none of them in flight (the active one is
        closed first, so that it can go)."""
        for segment in self._segments.values():
            if segment.doomed or segment.done():
                continue
            if any(_FLYING in record.state for record in segment.records):
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
            body = self._load(record)
            if body is None:
                seqs += range(record.first, record.last + 1)
            else:
                seqs += _unacknowledged(record, body)
        segment.doomed = True
        self._doomed.append(segment)
        return sorted(seqs)

    def has_doomed(self) -> bool:
        return bool(self._doomed)

    def cap_watermarks(self, bound: int) -> None:
        """Hold the records' watermarks (in memory) at ``bound`` at most: the database they
        counted on lost commits, and what they say may not pass into it."""
        for record in self._all_records():
            record.watermark = min(record.watermark, bound)

    def drop_doomed(self) -> None:
        doomed, self._doomed = self._doomed, []
        for segment in doomed:
            self._finished.pop(segment.number, None)
            self._forget(segment)

    def spare_doomed(self) -> None:
        doomed, self._doomed = self._doomed, []
        for segment in doomed:
            segment.doomed = False

    # ----------------------------------------------------------------------------- figures

    def queued(self) -> int:
        """Events not yet acknowledged."""
        return sum(record.remaining for record in self._live.values())

    def oldest_ts(self) -> str | None:
        for record in self._live.values():
            body = None if record.unreadable else self._load(record)
            if body is not None and record.remaining:
                return min(
                    StoredEvent.from_wire(body.wire(n)).ts
                    for n, state in enumerate(record.state)
                    if state != _ACKED
                )
        return None

    # ----------------------------------------------------------------------------- clock

    def correct_timestamps(self, boot_id: str, wall_now: float, mono_now_ns: int) -> int:
        """The clock is synchronised: this boot's events stamped before are corrected, those in
        memory now, the others as they are read. Returns how many events waiting here were
        stamped before (those read already were corrected as they were read, if the clock was
        synchronised by then; the others are counted from disk, without keeping them)."""
        self._corrections[boot_id] = (wall_now, mono_now_ns)
        count = 0
        for record in self._live.values():
            if record.unreadable:
                continue
            body = record.body
            if body is None:
                count += self._count_unsynced(record, boot_id)
                continue
            count += sum(1 for n in body.unsynced.of_boot(boot_id) if record.state[n] != _ACKED)
            self._fix(record, None)
        return count

    @staticmethod
    def _count_unsynced(record: _Record, boot_id: str) -> int:
        body = _read_body(record)  # (one unreadable is reported when claimed)
        if body is None:
            return 0
        return len(body.unsynced.of_boot(boot_id))


def _unacknowledged(record: _Record, body: Body) -> list[int]:
    if record.remaining == 0:
        return []
    return [seq for seq, state in zip(body.seqs, record.state, strict=True) if state != _ACKED]


def _take(record: _Record, room: int, now: float) -> list[tuple[int, int]]:
    """Claim up to ``room`` of the record's events, in seq order: the stretches (first event,
    last + 1) taken."""
    state = record.state
    spans: list[tuple[int, int]] = []
    due = sorted(n for n, at in record.back.items() if at <= now) if record.back else []
    if not due:  # (a link that delivers: only fresh stretches)
        for match in _READY_RUNS.finditer(state):
            lo, hi = match.span()
            hi = min(hi, lo + room)
            spans.append((lo, hi))
            room -= hi - lo
            if room <= 0:
                break
    else:
        ready = [n for n, value in enumerate(state) if value == _READY]
        for n in sorted([*ready, *due])[:room]:
            if spans and spans[-1][1] == n:
                spans[-1] = (spans[-1][0], n + 1)
            else:
                spans.append((n, n + 1))
            record.back.pop(n, None)
    for lo, hi in spans:
        state[lo:hi] = _FLYING_BYTE * (hi - lo)
    return spans


def _read_body(record: _Record) -> Body | None:
    """A record's events, read from its segment; None (logged) if it cannot be read."""
    try:
        with open(record.segment.path, "rb") as handle:
            handle.seek(record.offset)
            data = handle.read(record.size)
        header = decode_header(data)
        return decode_body(header, data[header.size :])
    except (OSError, SpoolDamage) as exc:
        log.error("spool_record_unreadable", path=str(record.segment.path), error=str(exc))  # noqa: TRY400
        return None


def _check_at(view: memoryview, offset: int) -> tuple[RecordHeader | None, str]:
    """The header of the whole, intact record at ``offset``, or None and why not."""
    try:
        header = decode_header(view[offset:])
        check_body(header, view[offset + header.size : offset + header.end])
    except SpoolDamage as exc:
        return None, str(exc)
    return header, ""


def _header_at(view: memoryview, offset: int) -> RecordHeader | None:
    try:
        return decode_header(view[offset:])
    except SpoolDamage:
        return None


def _next_record(view: memoryview, start: int) -> int | None:
    """The offset of the next whole, intact record at or after ``start``."""
    data = view.obj if isinstance(view.obj, bytes) else bytes(view)
    position = data.find(_MAGIC_PREFIX, start)
    while position != -1:
        if _check_at(view, position)[0] is not None:
            return position
        position = data.find(_MAGIC_PREFIX, position + 1)
    return None


def _truncate(path: Path, size: int) -> None:
    try:
        with open(path, "r+b") as handle:
            handle.truncate(size)
            os.fsync(handle.fileno())
    except OSError as exc:
        log.warning("spool_not_cut", path=str(path), error=str(exc))


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
                end = offset + header.end
                body = decode_body(header, data[offset + header.size : end])
                stored = [StoredEvent.from_wire(body.wire(n)) for n in range(len(body.seqs))]
            except (SpoolDamage, ValueError):
                break
            events += [
                (e.seq, e.id, e.kind, e.device, e.data_json, e.ts, e.ts_synced) for e in stored
            ]
            offset = end
    return sorted(events)
