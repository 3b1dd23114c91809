"""Cursors and leases on SQLite and PostgreSQL: persisted, exclusive between processes, handed over."""

from __future__ import annotations

from pathlib import Path

import orjson

from gatehouse.audit.export.cursor import CursorStore
from gatehouse.audit.export.exporter import Exporter
from gatehouse.audit.export.settings import ExportSettings, JsonlSinkSettings
from gatehouse.store.db import Database
from tests.export.conftest import running, ticks, wait_until, write


def test_claim_advance_release(db: Database) -> None:
    cursors = CursorStore(db)
    write(db, ticks(4))
    assert cursors.claim("s", "a", lease_s=60) == 0
    assert cursors.claim("s", "b", lease_s=60) is None  # a holds the lease
    assert cursors.advance("s", "a", 3, lease_s=60)
    assert not cursors.advance("s", "b", 4, lease_s=60)
    cursor = cursors.get("s")
    assert cursor is not None and (cursor.seq, cursor.owner) == (3, "a")
    cursors.release("s", "a")
    assert cursors.claim("s", "b", lease_s=60) == 3  # handed over with its position
    assert cursors.claim("late", "b", lease_s=60, start_at_end=True) == 4
    assert cursors.head() == 4
    assert [c.sink for c in cursors.all()] == ["late", "s"]


def test_an_expired_lease_can_be_taken(db: Database) -> None:
    cursors = CursorStore(db)
    assert cursors.claim("s", "a", lease_s=-1) == 0  # already lapsed: a died
    assert cursors.claim("s", "b", lease_s=60) == 0
    assert not cursors.advance("s", "a", 1, lease_s=60)  # a is back, but no longer owns it
    cursors.reset("s", 0)
    assert cursors.get("s") is not None


async def test_two_exporters_deliver_each_event_once(db: Database, tmp_path: Path) -> None:
    """Two replicas configured with the same sink: one delivers, the other waits, then takes over."""

    def settings(path: Path) -> ExportSettings:
        sink = JsonlSinkSettings(type="jsonl", path=path, fsync=False)
        return ExportSettings(sinks={"shared": sink}, poll_interval_s=0.05, batch_size=7)

    first = Exporter(db, settings(tmp_path / "a.jsonl"), owner="replica-a")
    second = Exporter(db, settings(tmp_path / "b.jsonl"), owner="replica-b")
    write(db, ticks(20))
    async with running(first):
        await wait_until(lambda: first.status["shared"].cursor == 20, what="first replica")
        async with running(second):
            write(db, ticks(10, start=20))
            await wait_until(lambda: first.status["shared"].cursor == 30, what="first replica again")
            assert second.status["shared"].leader is False
    # first stopped and released its lease: a replica that starts now takes over at once.
    third = Exporter(db, settings(tmp_path / "b.jsonl"), owner="replica-b")
    async with running(third):
        write(db, ticks(5, start=30))
        await wait_until(lambda: third.status["shared"].cursor == 35, within=3, what="second replica")
    a = [orjson.loads(line)["seq"] for line in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    b = [orjson.loads(line)["seq"] for line in (tmp_path / "b.jsonl").read_bytes().splitlines()]
    assert a == list(range(1, 31))
    assert b == list(range(31, 36))
