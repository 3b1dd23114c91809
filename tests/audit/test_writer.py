from __future__ import annotations

import asyncio
import dataclasses
import threading

import apsw
import pytest

from gatehouse.audit.chain import GENESIS_HASH, row_hash
from gatehouse.audit.events import Event, new_id
from gatehouse.audit.writer import AuditUnavailable, AuditWriter
from gatehouse.store.db import Database


def chain_rows(db: Database) -> list[dict[str, object]]:
    return db.query("SELECT * FROM events ORDER BY seq")


# Both ways of committing what the event loop appends: in a writer process (the server's default) and
# in-process (on the loop for SQLite, on the writer thread for PostgreSQL).
PROCESS = pytest.mark.parametrize("process", [True, False], ids=["process", "in-process"])


@PROCESS
async def test_concurrent_appends_form_one_verifiable_chain(db: Database, process: bool) -> None:
    writer = AuditWriter(db, process=process)
    writer.start()
    try:
        await asyncio.gather(*(writer.append(Event(kind="test.tick", details={"n": i})) for i in range(500)))
    finally:
        writer.close()
    rows = chain_rows(db)
    assert [r["seq"] for r in rows] == list(range(1, 501))
    prev = GENESIS_HASH
    for row in rows:
        assert row["prev_hash"] == prev
        assert row_hash(row) == row["hash"]
        prev = row["hash"]
    assert sorted(r["details"] for r in rows) == sorted(f'{{"n":{i}}}' for i in range(500))
    head = db.query_one("SELECT seq, hash FROM chain_head")
    assert head == {"seq": 500, "hash": prev}


@PROCESS
async def test_append_returns_only_after_commit(db: Database, process: bool) -> None:
    writer = AuditWriter(db, process=process)
    writer.start()
    try:
        event = Event(kind="test.durable")
        await writer.append(event)
        # A separate connection sees it: it is committed, not merely queued.
        other = Database(db.url)
        try:
            assert other.query_one("SELECT kind FROM events WHERE id = ?", (event.id,)) == {
                "kind": "test.durable"
            }
        finally:
            other.close()
        assert event.seq == 1 and event.hash
    finally:
        writer.close()


def test_event_ids_are_time_ordered_uuid7() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i[14] == "7" and i[19] in "89ab" for i in ids)
    assert ids[0][:8] <= ids[-1][:8]


@PROCESS
async def test_fail_closed_refuses_then_records_the_gap(sqlite_url: str, process: bool) -> None:
    db = Database(sqlite_url, busy_timeout_ms=50)
    from gatehouse.store.migrations import migrate

    migrate(db)
    writer = AuditWriter(db, process=process)
    writer.start()
    blocker = apsw.Connection(str(db.path))
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: the store cannot write
        with pytest.raises(AuditUnavailable):
            await writer.append(Event(kind="test.refused"))
        assert not writer.healthy
        blocker.execute("ROLLBACK")
        await writer.append(Event(kind="test.after"))
        kinds = [r["kind"] for r in chain_rows(db)]
        assert kinds == ["audit.gap", "test.after"]
        gap = db.query_one("SELECT details FROM events WHERE kind = 'audit.gap'")
        assert gap is not None and '"refused_events":1' in str(gap["details"])
        assert writer.healthy
    finally:
        blocker.close()
        writer.close()
        db.close()


@PROCESS
async def test_fail_open_keeps_events_and_writes_them_when_the_store_is_back(
    sqlite_url: str, process: bool
) -> None:
    db = Database(sqlite_url, busy_timeout_ms=50)
    from gatehouse.store.migrations import migrate

    migrate(db)
    writer = AuditWriter(db, fail_open=True, process=process)
    writer.start()
    blocker = apsw.Connection(str(db.path))
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        await writer.append(Event(kind="test.unrecorded", details={"n": 1}))  # does not raise
        blocker.execute("ROLLBACK")
        for _ in range(100):
            if writer.healthy:
                break
            await asyncio.sleep(0.05)
        kinds = [r["kind"] for r in chain_rows(db)]
        assert kinds == ["audit.gap", "test.unrecorded"]
    finally:
        blocker.close()
        writer.close()
        db.close()


def _writer_recording_commits(sqlite_url: str) -> tuple[Database, AuditWriter, list[tuple[int, int]]]:
    """A started writer on a migrated store, and the (thread, events) of each commit it makes."""
    from gatehouse.store.migrations import migrate

    db = Database(sqlite_url)
    migrate(db)
    committed_on: list[tuple[int, int]] = []
    writer = AuditWriter(
        db, observers=[lambda evs, _s: committed_on.append((threading.get_ident(), len(evs)))]
    )
    writer.start()
    return db, writer, committed_on


async def test_sqlite_batches_commit_on_the_event_loop(sqlite_url: str) -> None:
    db, writer, committed_on = _writer_recording_commits(sqlite_url)
    try:
        await asyncio.gather(*(writer.append(Event(kind="test.tick")) for _ in range(50)))
    finally:
        writer.close()
        db.close()
    assert {thread for thread, _ in committed_on} == {threading.get_ident()}
    assert sum(n for _, n in committed_on) == 50
    assert len(committed_on) < 50  # grouped: one commit served several appends


async def test_a_short_lock_held_elsewhere_delays_the_inline_commit_not_hands_it_over(
    sqlite_url: str,
) -> None:
    """The inline commit retries on the loop while a checkpoint or another writer holds the lock briefly:
    the batch stays on the loop (no trip through the writer thread), and what is appended meanwhile
    joins it."""
    db, writer, committed_on = _writer_recording_commits(sqlite_url)
    blocker = apsw.Connection(str(db.path))
    try:
        blocker.execute("BEGIN IMMEDIATE")
        first = [asyncio.ensure_future(writer.append(Event(kind="test.waits"))) for _ in range(3)]
        await asyncio.sleep(0.03)
        later = asyncio.ensure_future(writer.append(Event(kind="test.joins")))
        await asyncio.sleep(0.03)
        assert not any(f.done() for f in [*first, later])
        blocker.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(*first, later), 5)
    finally:
        blocker.close()
        writer.close()
        db.close()
    assert committed_on == [(threading.get_ident(), 4)]


@PROCESS
async def test_a_lock_held_elsewhere_makes_appends_wait_not_fail(sqlite_url: str, process: bool) -> None:
    from gatehouse.store.migrations import migrate

    db = Database(sqlite_url, busy_timeout_ms=5000)
    migrate(db)
    writer = AuditWriter(db, process=process)
    writer.start()
    blocker = apsw.Connection(str(db.path))
    try:
        blocker.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(writer.append(Event(kind="test.waits")))
        await asyncio.sleep(0.2)
        assert not pending.done()  # the loop is free meanwhile; the writer thread or process waits
        blocker.execute("COMMIT")
        await asyncio.wait_for(pending, 5)
        assert [r["kind"] for r in chain_rows(db)] == ["test.waits"]
        assert writer.healthy
    finally:
        blocker.close()
        writer.close()
        db.close()


# -- the writer process ------------------------------------------------------------------------------


def _verify_chain(db: Database) -> list[dict[str, object]]:
    rows = chain_rows(db)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    prev = GENESIS_HASH
    for row in rows:
        assert row["prev_hash"] == prev and row_hash(row) == row["hash"]
        prev = str(row["hash"])
    return rows


async def test_the_writer_process_commits_and_projects_off_the_loop(db: Database) -> None:
    import os

    from gatehouse.audit.search import project_search_index

    observed: list[tuple[int, int]] = []
    writer = AuditWriter(
        db,
        process=True,
        projections=[project_search_index],
        observers=[lambda evs, _s: observed.append((threading.get_ident(), len(evs)))],
    )
    writer.start()
    try:
        assert writer._link is not None and writer._link.process.pid != os.getpid()
        events = [Event(kind="test.tick", details={"text": f"needle{i}"}) for i in range(200)]
        await asyncio.gather(*(writer.append(e) for e in events))
        # The acknowledgement carried each event's place in the chain back to this process.
        assert sorted(e.seq for e in events) == list(range(1, 201))
        rows = {r["id"]: r for r in _verify_chain(db)}
        assert all(rows[e.id]["hash"] == e.hash and rows[e.id]["seq"] == e.seq for e in events)
        # The projection ran in the process's transaction.
        search_column = "rowid" if db.dialect == "sqlite" else "seq"
        indexed = db.query(f"SELECT {search_column} AS s FROM audit_search")
        assert sorted(int(r["s"]) for r in indexed) == list(range(1, 201))
    finally:
        writer.close()
    # Observers run in this process, on the loop, once per acknowledged batch.
    assert {thread for thread, _ in observed} == {threading.get_ident()}
    assert sum(n for _, n in observed) == 200
    assert writer._link is None


async def test_a_killed_writer_process_loses_nothing(sqlite_url: str) -> None:
    import signal

    from gatehouse.store.migrations import migrate

    db = Database(sqlite_url)
    migrate(db)
    writer = AuditWriter(db, process=True)
    writer.start()
    try:
        await asyncio.gather(*(writer.append(Event(kind="test.before")) for _ in range(100)))
        assert writer._link is not None
        process = writer._link.process
        in_flight = [asyncio.ensure_future(writer.append(Event(kind="test.during"))) for _ in range(100)]
        process.send_signal(signal.SIGKILL)
        await asyncio.gather(*in_flight)  # each one committed by the process or, after it died, in-process
        process.wait(5)
        await asyncio.gather(*(writer.append(Event(kind="test.after")) for _ in range(100)))
        assert writer._link is None and writer.healthy
    finally:
        writer.close()
    kinds = [r["kind"] for r in _verify_chain(db)]
    assert sorted(kinds) == sorted(["test.before"] * 100 + ["test.during"] * 100 + ["test.after"] * 100)
    db.close()


async def test_a_batch_committed_by_a_process_that_died_before_answering_is_not_written_twice(
    db: Database,
) -> None:
    """The process commits, then dies before its acknowledgement is read: the batch is in the log, and
    its callers must hear so, not get a second copy of their events or a refusal."""
    import signal

    writer = AuditWriter(db, process=True)
    writer.start()
    try:
        await writer.append(Event(kind="test.before"))
        link = writer._link
        assert link is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(link._fd)  # acknowledgements pile up unread in the socket
        events = [Event(kind="test.committed", details={"n": i}) for i in range(20)]
        waiting = [asyncio.ensure_future(writer.append(e)) for e in events]
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(db.query("SELECT seq FROM events WHERE kind = 'test.committed'")) == 20:
                break
        link._sock.setblocking(True)
        link._sock.settimeout(5)
        assert link._sock.recv(1 << 20)  # the acknowledgements, lost with the process that sent them
        link._sock.setblocking(False)
        link.process.send_signal(signal.SIGKILL)
        link.process.wait(5)
        loop.add_reader(link._fd, link._readable)  # the server now learns that the process is gone
        await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert writer._link is None and writer.healthy
        await writer.append(Event(kind="test.after"))
    finally:
        writer.close()
    rows = _verify_chain(db)
    assert [r["kind"] for r in rows] == ["test.before", *["test.committed"] * 20, "test.after"]
    by_id = {r["id"]: r for r in rows}
    assert all(e.seq == by_id[e.id]["seq"] and e.hash == by_id[e.id]["hash"] for e in events)
    assert not db.query("SELECT seq FROM events WHERE kind = 'audit.gap'")


def test_a_retried_event_that_did_commit_is_not_written_again(db: Database) -> None:
    """Fail-open retries what a failed commit held; a commit can fail after committing (the connection
    lost during COMMIT), so the retry looks first. Otherwise the duplicate id would fail every later
    write."""
    from gatehouse.audit.writer import append_events

    writer = AuditWriter(db, fail_open=True)
    writer.start()
    try:
        committed = Event(kind="test.committed")
        with db.transaction() as tx:
            append_events(tx, [committed])
        writer._retry.append(dataclasses.replace(committed, seq=0, prev_hash="", hash=""))
        writer.append_sync(Event(kind="test.after"))
        assert writer.healthy and not writer._retry
    finally:
        writer.close()
    assert [r["kind"] for r in _verify_chain(db)] == ["test.committed", "test.after"]


async def test_close_drains_what_nobody_awaited(sqlite_url: str) -> None:
    from gatehouse.store.migrations import migrate

    db = Database(sqlite_url)
    migrate(db)
    writer = AuditWriter(db, process=True)
    writer.start()
    for i in range(1000):
        writer.append_nowait(Event(kind="test.nowait", details={"n": i}))
    await asyncio.sleep(0)
    writer.close()
    assert len(_verify_chain(db)) == 1000
    db.close()


async def test_projections_that_cannot_be_sent_keep_the_writer_in_process(sqlite_url: str) -> None:
    from gatehouse.store.migrations import migrate

    db = Database(sqlite_url)
    migrate(db)
    seen: list[str] = []
    writer = AuditWriter(db, process=True, projections=[lambda _tx, evs: seen.extend(e.kind for e in evs)])
    writer.start()
    try:
        assert writer._link is None
        await writer.append(Event(kind="test.local"))
    finally:
        writer.close()
        db.close()
    assert seen == ["test.local"]


def test_frames_survive_any_split() -> None:
    from gatehouse.audit.worker import FrameReader, frame

    payloads = [b"", b"x", b"hello" * 1000, bytes(range(256))]
    stream = b"".join(frame(p) for p in payloads)
    for step in (1, 3, 7, 4096, len(stream)):
        reader = FrameReader()
        got: list[bytes] = []
        for i in range(0, len(stream), step):
            got += reader.feed(stream[i : i + step])
        assert got == payloads


async def test_the_writer_process_indexes_for_search_between_commits(sqlite_url: str) -> None:
    from gatehouse.audit import timemap
    from gatehouse.audit.projector import Projector
    from gatehouse.audit.search import project_search_index
    from gatehouse.store.migrations import migrate

    db = Database(sqlite_url)
    migrate(db)
    writer = AuditWriter(
        db, process=True, process_tasks=[Projector([project_search_index]).step, timemap.step]
    )
    writer.start()
    try:
        await asyncio.gather(*(writer.append(Event(kind="test.tick", details={"n": i})) for i in range(50)))
        state = None
        for _ in range(100):  # the task runs about once a second
            state = db.query_one("SELECT seq FROM audit_search_state WHERE id = 1")
            if state is not None and state["seq"] == 50:
                break
            await asyncio.sleep(0.05)
        assert state == {"seq": 50}
        assert db.query_one("SELECT count(*) AS n FROM audit_search") == {"n": 50}
        mapped = None
        for _ in range(100):
            mapped = db.query_one("SELECT seq FROM time_map_state WHERE id = 1")
            if mapped == {"seq": 50}:
                break
            await asyncio.sleep(0.05)
        assert mapped == {"seq": 50}
    finally:
        writer.close()
        db.close()
