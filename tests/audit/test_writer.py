from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gatehouse.audit.chain import GENESIS_HASH, row_hash
from gatehouse.audit.events import Event, new_id
from gatehouse.audit.writer import AuditUnavailable, AuditWriter
from gatehouse.store.db import Database


def chain_rows(db: Database) -> list[dict[str, object]]:
    return db.query("SELECT * FROM events ORDER BY seq")


async def test_concurrent_appends_form_one_verifiable_chain(db: Database) -> None:
    writer = AuditWriter(db)
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


async def test_append_returns_only_after_commit(db: Database) -> None:
    writer = AuditWriter(db)
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


async def test_fail_closed_refuses_then_records_the_gap(sqlite_url: str) -> None:
    db = Database(sqlite_url, busy_timeout_ms=50)
    from gatehouse.store.migrations import migrate

    migrate(db)
    writer = AuditWriter(db)
    writer.start()
    blocker = sqlite3.connect(db.path, isolation_level=None)
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


async def test_fail_open_keeps_events_and_writes_them_when_the_store_is_back(sqlite_url: str) -> None:
    db = Database(sqlite_url, busy_timeout_ms=50)
    from gatehouse.store.migrations import migrate

    migrate(db)
    writer = AuditWriter(db, fail_open=True)
    writer.start()
    blocker = sqlite3.connect(db.path, isolation_level=None)
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


async def test_sqlite_batches_commit_on_the_event_loop(sqlite_url: str) -> None:
    import threading

    from gatehouse.store.migrations import migrate

    db = Database(sqlite_url)
    migrate(db)
    committed_on: list[tuple[int, int]] = []
    writer = AuditWriter(
        db, observers=[lambda evs, _s: committed_on.append((threading.get_ident(), len(evs)))]
    )
    writer.start()
    try:
        await asyncio.gather(*(writer.append(Event(kind="test.tick")) for _ in range(50)))
    finally:
        writer.close()
        db.close()
    assert {thread for thread, _ in committed_on} == {threading.get_ident()}
    assert sum(n for _, n in committed_on) == 50
    assert len(committed_on) < 50  # grouped: one commit served several appends


async def test_a_lock_held_elsewhere_makes_appends_wait_not_fail(sqlite_url: str) -> None:
    from gatehouse.store.migrations import migrate

    db = Database(sqlite_url, busy_timeout_ms=5000)
    migrate(db)
    writer = AuditWriter(db)
    writer.start()
    blocker = sqlite3.connect(db.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(writer.append(Event(kind="test.waits")))
        await asyncio.sleep(0.2)
        assert not pending.done()  # the loop is free meanwhile; the writer thread waits for the lock
        blocker.execute("COMMIT")
        await asyncio.wait_for(pending, 5)
        assert [r["kind"] for r in chain_rows(db)] == ["test.waits"]
        assert writer.healthy
    finally:
        blocker.close()
        writer.close()
        db.close()
