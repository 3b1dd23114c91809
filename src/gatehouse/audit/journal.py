"""The event journal: how the serving loop makes an event durable on SQLite without a commit.

A commit is the costly part of appending to the log: a B-tree insert per event plus its id index, the
chain head, a WAL frame for every page touched, and the waiting (a request's event waits a few loop turns
for others to share the commit). On the serving loop, one core under the GIL, that was most of what
auditing cost a proxied call. Here the loop appends what its requests appended within a few of its turns
to a file instead, as one `write(2)` of a length- and CRC-framed record (`AuditWriter` batches them as it
would for a commit), and the events are durable once that returns: they survive a `kill -9` of
the server, which is what SQLite promises with `synchronous=NORMAL` in WAL mode (neither is fsynced, so
neither survives a power cut unscathed; `store.sqlite_synchronous = "full"` commits every event instead,
as before). Chaining the journaled events into the log, inserting and projecting them happen later, in
bulk, off the serving core: `drain`, run by the projector process about once a second and by every reader
before it reads (`catch_up`), so what was acknowledged is in what anyone reads.

Layout, beside the store: `<store>.journal/`, holding `lock` (the writer's `flock`: one process writes
the journal; others commit as before) and numbered segments `000000000001.seg` … A record is a 4-byte
length, a 4-byte CRC-32 of the payload, then the payload: a JSON array of events, each an array of
`_FIELDS`. The writer appends to the highest segment and starts the next one past `SEGMENT_BYTES`, and at
every start (so that nothing is ever appended after a torn record).

`journal_state` (one row in the store: segment, byte offset) says how much has been chained. A drain reads
on from there and moves it in the same transaction as the events it appends, under the log's write lock,
so each record is chained exactly once whoever drains, however many at once. Every other append
(`writer.append_events`: admin changes, the writer thread) drains first in its own transaction, so the
log's order is the order in which events were acknowledged.

Reading while the writer appends: the file grows only by whole `write(2)` calls, so a reader sees a
prefix; an incomplete last record is one being written. A segment is final once a later one exists (the
writer moves on only between records), and a drain lists the segments before it reads one, so in a final
segment an incomplete or damaged tail was never acknowledged (the writer died mid-write) and is skipped.
A damaged record anywhere else is skipped too, and an `audit.gap` event records it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from gatehouse.audit.chain import CHAINED_COLUMNS, append_to_chain
from gatehouse.audit.events import Decision, Event
from gatehouse.store.db import Database, Tx

log = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024
_READ_BYTES = 256 * 1024  # what a drain reads of a segment at a time
_DRAIN_BATCH = 20_000  # events per transaction of `drain_all`: the log's write lock is held that long
_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
_SUFFIX = ".seg"
# What a record keeps of each event, in this order: the chained columns but those the drain gives it.
_FIELDS = CHAINED_COLUMNS[1:-1]


class JournalError(Exception):
    """The journal could not take an event; the writer falls back to committing it."""


def journal_dir(db: Database) -> Path | None:
    """Where `db`'s journal lives; None for PostgreSQL, which has none."""
    return db.path.with_name(db.path.name + ".journal") if db.dialect == "sqlite" else None


def segments(directory: Path) -> list[int]:
    """The segment numbers in `directory`, in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(n[: -len(_SUFFIX)]) for n in names if n.endswith(_SUFFIX) and n[:-4].isdigit())


def _segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:012d}{_SUFFIX}"


# -- writing ------------------------------------------------------------------------------------------


class Journal:
    """The writing end: one per store, held by the process that has the lock."""

    def __init__(self, directory: Path, lock_fd: int) -> None:
        self.directory = directory
        self._lock_fd = lock_fd
        self._fd = -1
        self._size = 0
        self.segment = 0
        self._mutex = threading.Lock()  # appends come from the loop and from other threads

    @classmethod
    def open(cls, db: Database) -> Journal | None:
        """Take the journal of `db`, starting a new segment; None if another process holds it (or the
        store is PostgreSQL)."""
        directory = journal_dir(db)
        if directory is None:
            return None
        directory.mkdir(mode=0o700, exist_ok=True)
        lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            return None
        journal = cls(directory, lock_fd)
        try:
            journal._start(max(segments(directory), default=0) + 1)
        except OSError:
            journal.close()
            raise
        return journal

    def _start(self, number: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(_segment_path(self.directory, number), flags, 0o600)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size, self.segment = fd, 0, number

    def write(self, events: Sequence[Event]) -> None:
        """Append `events` as one record; they are durable when this returns. Raises JournalError (and
        the journal takes nothing more) if the file cannot be written."""
        try:
            payload = orjson.dumps([_fields(e) for e in events])
        except TypeError as exc:
            raise JournalError(f"an event cannot be encoded: {exc}") from exc
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._mutex:
            if self._fd < 0:
                raise JournalError("the journal is closed")
            try:
                view = memoryview(record)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                self._give_up(exc)
                raise JournalError(f"cannot write the audit journal: {exc}") from exc
            self._size += len(record)
            if self._size >= SEGMENT_BYTES:
                try:
                    self._start(self.segment + 1)
                except OSError as exc:  # the full segment takes more; the next record tries again
                    log.warning("audit journal: cannot start a new segment: %s", exc)

    def _give_up(self, exc: OSError) -> None:
        """A failed write may have left part of a record: cut it off, then take nothing more, so the
        segment ends on a whole record (or, if it cannot be cut, a drain skips its torn tail once a later
        writer starts a segment)."""
        log.error("audit journal write failed (%s); events are committed to the store instead", exc)
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._size)
        os.close(self._fd)
        self._fd = -1

    @property
    def usable(self) -> bool:
        return self._fd >= 0

    def close(self) -> None:
        with self._mutex:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = -1


# -- draining -----------------------------------------------------------------------------------------


def pending(db: Database) -> bool:
    """Has the journal records not chained yet?"""
    return backlog_bytes(db) > 0


def backlog_bytes(db: Database) -> int:
    """How much of the journal is not chained into the log yet, in bytes; 0 without a journal. Reads the
    state and the files' sizes, without a lock."""
    directory = journal_dir(db)
    if directory is None:
        return 0
    numbers = segments(directory)
    if not numbers:
        return 0
    state = db.query_one("SELECT segment, byte_offset FROM journal_state WHERE id = 1")
    segment, offset = (int(state["segment"]), int(state["byte_offset"])) if state else (0, 0)
    backlog = 0
    for number in numbers:
        if number < segment:  # chained, and about to be deleted
            continue
        try:
            size = os.path.getsize(_segment_path(directory, number))
        except FileNotFoundError:
            continue
        backlog += max(size - offset, 0) if number == segment else size
    return backlog


def drain_all(db: Database) -> int:
    """Chain everything the journal holds: what a reader that must see every acknowledged event runs
    first. Returns how many events it chained."""
    total = 0
    while events := drain(db, max_events=_DRAIN_BATCH):
        total += len(events)
    return total


def drain(db: Database, *, max_events: int | None = None) -> list[Event]:
    """Chain what the journal holds into the log, in a transaction of its own; return those events (with
    their seq and hashes), at most about `max_events`."""
    directory = journal_dir(db)
    if directory is None or not pending(db):
        return []
    with db.transaction() as tx:
        events = drain_into(tx, max_events=max_events)
        state = tx.one("SELECT segment FROM journal_state WHERE id = 1")
    for number in segments(directory):
        if state is not None and number < int(state["segment"]):  # chained, and committed
            with contextlib.suppress(OSError):
                os.unlink(_segment_path(directory, number))
    return events


def drain_into(tx: Tx, *, max_events: int | None = None) -> list[Event]:
    """Chain what the journal holds beyond `journal_state` into the log, inside `tx`, which holds the
    log's write lock."""
    directory = journal_dir(tx.db)
    if directory is None:
        return []
    numbers = segments(directory)  # listed before any is read: see the module's docstring
    if not numbers:
        return []
    state = tx.one("SELECT segment, byte_offset FROM journal_state WHERE id = 1")
    if state is None:
        raise JournalError("the store has no journal state: run `gatehouse migrate`")
    segment, offset = int(state["segment"]), int(state["byte_offset"])
    events: list[Event] = []
    for number in (n for n in numbers if n >= segment):
        if number > segment:
            segment, offset = number, 0
        final = number != numbers[-1]
        offset, finished = _drain_segment(directory, number, offset, final, events, max_events)
        if not finished:
            break  # max_events reached, or the segment the writer is on
    if events:
        append_to_chain(tx, events)
    if (segment, offset) != (int(state["segment"]), int(state["byte_offset"])):
        tx.execute("UPDATE journal_state SET segment = ?, byte_offset = ? WHERE id = 1", (segment, offset))
    return events


def _drain_segment(
    directory: Path, number: int, offset: int, final: bool, into: list[Event], max_events: int | None
) -> tuple[int, bool]:
    """Decode the records of segment `number` from `offset` into `into`, until `max_events` are
    there; return the offset reached and whether the segment is finished (final, and read to its end).
    Read a part at a time, as much as the events wanted take: reading the rest of a segment for each
    batch made a drain read (and copy) several times what it decoded."""
    try:
        with open(_segment_path(directory, number), "rb") as f:
            while max_events is None or len(into) < max_events:
                f.seek(offset)
                data, cut = _whole_records(f)
                pos = 0
                while True:
                    pos, bad, torn = _records(data, pos, into, max_events)
                    if not bad or (not final and pos + bad == len(data)):
                        break  # read to the end, or to the record being written (damaged tails wait too)
                    what = "cut short (its write never returned)" if torn else "damaged"
                    reason = f"audit journal segment {number}: {bad} bytes at offset {offset + pos} {what}"
                    log.error("%s: skipped", reason)
                    into.append(Event(kind="audit.gap", decision="error", details={"reason": reason}))
                    pos += bad
                offset += pos
                if pos < len(data) or not cut:
                    return offset, final and pos == len(data)  # max_events reached, or the end of the file
    except FileNotFoundError:
        return offset, final
    return offset, False


def _whole_records(f: BinaryIO) -> tuple[bytes, bool]:
    """Up to `_READ_BYTES` from where `f` stands, cut after the last whole record in them (or one record,
    however long); and whether more of the file follows."""
    data = f.read(_READ_BYTES)
    if len(data) < _READ_BYTES:
        return data, False
    pos = 0
    while len(data) - pos >= _HEADER.size:
        end = pos + _HEADER.size + _HEADER.unpack_from(data, pos)[0]
        if end > len(data):
            break
        pos = end
    if pos:
        return data[:pos], True
    data += f.read(_HEADER.size + _HEADER.unpack_from(data)[0] - len(data))
    return data, bool(f.read(1))


def _records(data: bytes, pos: int, into: list[Event], max_events: int | None) -> tuple[int, int, bool]:
    """Decode whole records of `data` from `pos` into `into`. Returns where they end, the size of the bad
    record found there (0 if none: `data` ended, or `max_events` were read) and whether it is cut short
    (the rest of `data` is shorter than its header says) rather than damaged."""
    while len(data) - pos >= _HEADER.size:
        if max_events is not None and len(into) >= max_events:
            return pos, 0, False
        size, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + size
        if end > len(data):
            return pos, len(data) - pos, True
        payload = data[pos + _HEADER.size : end]
        if zlib.crc32(payload) != crc:
            return pos, end - pos, False
        try:
            decoded = [_event(*fields) for fields in orjson.loads(payload)]
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return pos, end - pos, False
        into.extend(decoded)
        pos = end
    return pos, len(data) - pos, True


def _fields(e: Event) -> list[Any]:
    """`_FIELDS` of `e`, spelled out: twice as fast as getattr by name, and it runs on the serving loop."""
    return [
        e.id,
        e.ts,
        e.kind,
        e.actor_user,
        e.actor_agent,
        e.actor_token,
        e.on_behalf_of,
        e.workspace,
        e.session,
        e.parent,
        e.decision,
        e.resource,
        e.details,
    ]


def _event(
    id_: str,
    ts: int,
    kind: str,
    user: str | None,
    agent: str | None,
    token: str | None,
    on_behalf_of: str | None,
    workspace: str | None,
    session: str | None,
    parent: str | None,
    decision: Decision,
    resource: str | None,
    details: dict[str, Any],
) -> Event:
    """An event as the loop wrote it (`_FIELDS`), not yet chained. Positional, in field order: a drain
    builds thousands of these."""
    if not isinstance(details, dict) or not isinstance(ts, int):
        raise ValueError("not a journaled event")
    return Event(
        kind,
        decision,
        details,
        user,
        agent,
        token,
        on_behalf_of,
        workspace,
        session,
        parent,
        resource,
        id_,
        ts,
    )
