"""The event journal (gatehouse.audit.journal): what the serving loop makes durable with one write(2) is
chained into the log exactly once, in the order it was acknowledged, whoever drains it; torn and damaged
records are skipped and recorded, never chained."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import apsw
import orjson
import pytest

from gatehouse.audit import journal
from gatehouse.audit.events import Event
from gatehouse.audit.journal import Journal, JournalError, drain, drain_all, journal_dir, pending, segments
from gatehouse.audit.projector import Projector
from gatehouse.audit.verify import verify_database
from gatehouse.audit.writer import AuditUnavailable, AuditWriter, append_events
from gatehouse.store.db import Database, Tx
from gatehouse.store.migrations import migrate


def owned(db: Database) -> Journal:
    taken = Journal.open(db)
    assert taken is not None
    return taken


def ticks(*numbers: int, kind: str = "test.tick") -> list[Event]:
    return [Event(kind=kind, details={"n": n}, session="s1") for n in numbers]


def logged(db: Database) -> list[tuple[str, int | None]]:
    rows = db.query("SELECT kind, details FROM events ORDER BY seq")
    return [(r["kind"], orjson.loads(r["details"]).get("n")) for r in rows]


def segment_file(db: Database, number: int) -> Path:
    directory = journal_dir(db)
    assert directory is not None
    return directory / f"{number:012d}.seg"


def test_journaled_events_are_chained_once_in_order(store: Database) -> None:
    j = owned(store)
    j.write(ticks(1, 2))
    j.write(ticks(3))
    assert store.query("SELECT * FROM events") == []  # durable in the journal, not yet in the log
    assert pending(store)
    chained = drain(store)
    assert [e.seq for e in chained] == [1, 2, 3] and all(e.hash for e in chained)
    assert logged(store) == [("test.tick", 1), ("test.tick", 2), ("test.tick", 3)]
    assert not pending(store) and drain(store) == []
    j.write(ticks(4))
    assert drain_all(store) == 1
    assert logged(store)[-1] == ("test.tick", 4)
    assert verify_database(store).ok
    j.close()


def test_the_log_keeps_the_order_of_acknowledgement(store: Database) -> None:
    """An event committed directly (an admin change) after a journaled one is chained after it."""
    j = owned(store)
    j.write(ticks(1))
    with store.transaction() as tx:
        append_events(tx, ticks(2, kind="admin.test"))
    j.write(ticks(3))
    drain_all(store)
    assert logged(store) == [("test.tick", 1), ("admin.test", 2), ("test.tick", 3)]
    assert verify_database(store).ok
    j.close()


def test_a_record_being_written_waits_and_a_torn_one_is_skipped(store: Database) -> None:
    j = owned(store)
    j.write(ticks(1))
    path = segment_file(store, j.segment)
    whole = path.read_bytes()
    j.write(ticks(2))
    second = path.read_bytes()[len(whole) :]
    j.close()
    # As a reader sees a write in progress: the second record's first half.
    path.write_bytes(whole + second[: len(second) // 2])
    assert [e.details["n"] for e in drain(store)] == [1]
    assert drain(store) == []  # the writer may still finish it: wait
    # The writer died there: the next one starts a new segment, and the torn tail is skipped and said so.
    j = owned(store)
    j.write(ticks(3))
    drain_all(store)
    assert logged(store) == [("test.tick", 1), ("audit.gap", None), ("test.tick", 3)]
    gap = store.query_one("SELECT details FROM events WHERE kind = 'audit.gap'")
    assert gap is not None and "cut short" in orjson.loads(gap["details"])["reason"]
    assert verify_database(store).ok
    j.close()


def test_a_damaged_record_is_skipped_and_recorded(store: Database) -> None:
    j = owned(store)
    j.write(ticks(1))
    j.write(ticks(2))
    j.write(ticks(3))
    path = segment_file(store, j.segment)
    j.close()
    data = bytearray(path.read_bytes())
    middle = data.index(b'{"n":2}')
    data[middle + 5] = ord("7")  # the CRC no longer matches
    path.write_bytes(bytes(data))
    owned(store).close()  # a later writer: the segment is final
    drain_all(store)
    assert logged(store) == [("test.tick", 1), ("audit.gap", None), ("test.tick", 3)]
    gap = store.query_one("SELECT details FROM events WHERE kind = 'audit.gap'")
    assert gap is not None and "damaged" in orjson.loads(gap["details"])["reason"]


def test_segments_roll_over_and_drained_ones_are_deleted(
    store: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "SEGMENT_BYTES", 300)
    j = owned(store)
    for n in range(20):
        j.write(ticks(n))
    directory = journal_dir(store)
    assert directory is not None
    assert len(segments(directory)) > 3
    assert [n for _, n in logged(store)] == []
    drain_all(store)
    assert [n for _, n in logged(store)] == list(range(20))
    assert segments(directory) == [j.segment]  # the finished ones are gone
    j.close()


def test_a_backlog_is_drained_a_part_of_a_segment_at_a_time(
    store: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "_READ_BYTES", 200)
    j = owned(store)
    j.write([Event(kind="test.big", details={"text": "x" * 500})])  # one record longer than a read
    for n in range(30):
        j.write(ticks(n))
    first = drain(store, max_events=4)
    # Reads go on, a part at a time, until the batch is full: a record longer than a read, then short ones.
    assert [e.kind for e in first] == ["test.big", *["test.tick"] * 3]
    assert len(drain(store, max_events=4)) == 4
    drain_all(store)
    assert [n for _, n in logged(store)] == [None, *range(30)]
    j.close()


def test_one_process_writes_the_journal(store: Database) -> None:
    first = owned(store)
    assert Journal.open(store) is None
    first.close()
    second = owned(store)
    assert second.segment == first.segment + 1  # never appends after a record a writer may have torn
    second.close()


def test_concurrent_drains_chain_each_record_once(store: Database) -> None:
    j = owned(store)
    stop = threading.Event()
    errors: list[BaseException] = []

    def drainer() -> None:
        other = Database(store.url)
        try:
            while not stop.is_set():
                drain(other, max_events=7)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            other.close()

    threads = [threading.Thread(target=drainer) for _ in range(3)]
    for t in threads:
        t.start()
    for n in range(0, 600, 3):
        j.write(ticks(n, n + 1, n + 2))
    stop.set()
    for t in threads:
        t.join()
    drain_all(store)
    assert not errors
    assert [n for _, n in logged(store)] == list(range(600))
    assert verify_database(store).ok
    j.close()


def test_the_projector_projects_what_it_drains(store: Database) -> None:
    seen: list[int] = []

    def project(_tx: Tx, events: list[Event]) -> None:
        seen.extend(e.seq for e in events)

    projector = Projector([project])
    j = owned(store)
    j.write(ticks(1, 2))
    with store.transaction() as tx:
        append_events(tx, ticks(3, kind="admin.test"))
    j.write(ticks(4))
    assert projector.behind(store)
    assert projector.catch_up(store) == 4
    assert seen == [1, 2, 3, 4] and not projector.behind(store)
    j.close()


def fill_disk(writer: AuditWriter) -> Journal:
    """The writer's journal, its file now on a full disk (every write fails with ENOSPC)."""
    taken = writer._journal
    assert taken is not None
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, taken._fd)
    os.close(full)
    return taken


async def test_the_writer_journals_and_falls_back_to_committing(store: Database) -> None:
    writer = AuditWriter(store, journal=True)
    writer.start()
    try:
        first = Event(kind="test.journaled")
        await writer.append(first)
        assert first.seq == 0 and pending(store)  # acknowledged from the journal
        # The disk fills up: the journal gives up and the event is committed instead, after the first.
        taken = fill_disk(writer)
        second = Event(kind="test.committed")
        await asyncio.wait_for(writer.append(second), 10)
        assert not taken.usable and second.seq == 2
        with pytest.raises(JournalError):
            taken.write(ticks(0))
        assert [k for k, _ in logged(store)] == ["test.journaled", "test.committed"]
    finally:
        writer.close()
    assert verify_database(store).ok


async def test_closing_the_writer_chains_the_journal(store: Database) -> None:
    writer = AuditWriter(store, journal=True)
    writer.start()
    await asyncio.gather(*(writer.append(e) for e in ticks(*range(50))))
    writer.close()
    assert sorted(n for _, n in logged(store) if n is not None) == list(range(50))
    assert not pending(store)


def records_in(path: Path) -> int:
    data, pos, count = path.read_bytes(), 0, 0
    while pos < len(data):
        pos += journal._HEADER.size + journal._HEADER.unpack_from(data, pos)[0]
        count += 1
    return count


async def test_appends_on_the_loop_share_a_record(store: Database) -> None:
    """What requests append in the same turns of the event loop is written with one write(2), and each
    caller is answered once it is written; observers see the batch once."""
    flushes: list[int] = []
    writer = AuditWriter(store, journal=True, observers=[lambda events, _s: flushes.append(len(events))])
    writer.start()
    try:
        await asyncio.gather(*(writer.append(e) for e in ticks(*range(20))))
        writer.append_nowait(*ticks(20))
        await writer.append(*ticks(21))
        taken = writer._journal
        assert taken is not None
        assert records_in(segment_file(store, taken.segment)) == 2
        assert flushes == [20, 2]
    finally:
        writer.close()
    assert [n for _, n in logged(store)] == list(range(22))


async def test_an_append_on_the_loop_resumes_one_turn_later_with_its_event_written(store: Database) -> None:
    """Every Bridge call waits for two journal writes: each append waits one turn of the loop (the appends
    of that turn share its record), not a flush a few turns later, and returns with its event durable."""
    writer = AuditWriter(store, journal=True)
    writer.start()
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    try:
        await asyncio.sleep(0)
        start = turns
        await writer.append(*ticks(0))
        assert turns - start == 1
        taken = writer._journal
        assert taken is not None and records_in(segment_file(store, taken.segment)) == 1
    finally:
        counter.cancel()
        writer.close()
    assert [n for _, n in logged(store)] == [0]


async def test_a_turn_whose_record_the_journal_refuses_is_committed_for_all_its_appenders(
    store: Database,
) -> None:
    """The disk fills up under a turn's appends: every one of them (awaited or not) is committed instead,
    in the order they were made, and each awaiting caller returns once that commit is done."""
    writer = AuditWriter(store, journal=True)
    writer.start()
    try:
        taken = fill_disk(writer)

        async def appender(n: int) -> int | None:
            if n == 1:
                writer.append_nowait(*ticks(n))
                return None
            await writer.append(*ticks(n))
            return len(logged(store))  # committed by the time the caller goes on

        seen = await asyncio.wait_for(asyncio.gather(*(appender(n) for n in range(4))), 10)
        assert not taken.usable and seen == [4, None, 4, 4]
        assert [n for _, n in logged(store)] == [0, 1, 2, 3]
    finally:
        writer.close()
    assert verify_database(store).ok


async def test_a_refused_record_that_cannot_be_committed_fails_every_appender_of_its_turn(
    sqlite_url: str,
) -> None:
    """Fail closed: the journal refuses the turn's record and the store cannot take it either, so no
    caller of that turn is told its event is recorded."""
    db = Database(sqlite_url, busy_timeout_ms=50)
    migrate(db)
    writer = AuditWriter(db, journal=True)
    writer.start()
    blocker = apsw.Connection(str(db.path))
    try:
        fill_disk(writer)
        blocker.execute("BEGIN EXCLUSIVE")
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(writer.append(e) for e in ticks(1, 2, 3)), return_exceptions=True), 10
        )
        assert [type(o) for o in outcomes] == [AuditUnavailable] * 3
    finally:
        blocker.close()
        writer.close()
        db.close()


def test_a_record_keeps_every_chained_field() -> None:
    """The spelled-out field lists of the writer and the reader follow the chained columns."""
    event = Event(
        kind="k",
        decision="deny",
        details={"a": [1, {"b": None}]},
        actor_user="u",
        actor_agent="a",
        actor_token="t",
        on_behalf_of="o",
        workspace="w",
        session="s",
        parent="p",
        resource="r",
    )
    fields = journal._fields(event)
    assert fields == [getattr(event, f) for f in journal._FIELDS]
    again = journal._event(*orjson.loads(orjson.dumps(fields)))
    assert [getattr(again, f) for f in journal._FIELDS] == fields
