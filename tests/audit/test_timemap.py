"""The time map gives timeline windows exactly the events plain SQL selects, on SQLite and PostgreSQL:
with events whose ts is out of seq order (an outage's retried events), with the map behind the log, after
catch-up, and when it was built by the migration from events that were there before it."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from gatehouse.audit import queries, timemap
from gatehouse.audit.events import Event
from gatehouse.audit.queries import EventFilter, timeline
from gatehouse.audit.writer import append_events
from gatehouse.store.db import Database
from gatehouse.store.migrations import migrate

MINUTE = 60_000_000
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, a bucket boundary


def write(db: Database, events: list[Event]) -> None:
    with db.transaction() as tx:
        append_events(tx, events)


def log_with_outage(db: Database, rng: random.Random) -> None:
    """Six hours of two agents' events, one a minute; the events of a 40-minute outage are written an hour
    late, between the live ones."""
    retried: list[Event] = []
    batch: list[Event] = []
    for minute in range(360):
        event = Event(
            kind="llm.request",
            ts=T0 + minute * MINUTE + rng.randrange(MINUTE),
            actor_agent=rng.choice(["a-busy", "a-busy", "a-busy", "a-quiet"]),
            actor_user="u-1",
            session=f"s-{minute // 30}",
        )
        if 100 <= minute < 140:
            retried.append(event)
            continue
        batch.append(event)
        if minute >= 200 and retried:
            batch.append(retried.pop(0))
        if len(batch) >= 7:
            write(db, batch)
            batch = []
    write(db, batch + retried)


def plain(db: Database, f: EventFilter) -> list[int]:
    """The seqs the filter selects, straight from SQL."""
    where: list[str] = ["1 = 1"]
    params: list[object] = []
    if f.agent:
        where.append("actor_agent = ?")
        params.append(f.agent)
    if f.since_us is not None:
        where.append("ts >= ?")
        params.append(f.since_us)
    if f.until_us is not None:
        where.append("ts < ?")
        params.append(f.until_us)
    return [
        int(r["seq"])
        for r in db.query(f"SELECT seq FROM events WHERE {' AND '.join(where)} ORDER BY seq", params)
    ]


def paged(db: Database, f: EventFilter) -> list[int]:
    """Every page of the timeline, cursor after cursor."""
    seqs: list[int] = []
    while True:
        page = timeline(db, f)
        seqs += [int(e["seq"]) for e in page.events]
        if page.next_cursor is None:
            return seqs
        f = replace(f, cursor=page.next_cursor)


def windows(rng: random.Random, n: int) -> list[EventFilter]:
    out = []
    for _ in range(n):
        since = T0 + rng.randrange(-30, 380) * MINUTE + rng.randrange(MINUTE)
        length = rng.choice([1, 10, 25, 60, 240]) * MINUTE + rng.randrange(MINUTE)
        agent = rng.choice([None, "a-busy", "a-quiet"])
        out.append(
            EventFilter(agent=agent, since_us=since, until_us=since + length, limit=rng.choice([3, 10]))
        )
        out.append(EventFilter(agent=agent, since_us=since, limit=7))  # from, no to
        out.append(EventFilter(agent=agent, until_us=since, limit=7))  # to, no from
    return out


def test_windows_match_plain_sql_with_ts_out_of_seq_order(db: Database) -> None:
    rng = random.Random(1)
    log_with_outage(db, rng)
    late = db.query_one(
        "SELECT count(*) AS n FROM events e JOIN events p ON p.seq = e.seq - 1 WHERE e.ts < p.ts"
    )
    assert late is not None and late["n"] > 10  # the outage really put ts out of seq order
    assert timemap.catch_up(db) == 360
    assert timemap.span(db, None, None).mapped == 360
    for f in windows(rng, 40):
        assert paged(db, f) == plain(db, f), f


def test_events_after_the_mark_are_found_before_catch_up(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(2)
    write(db, [Event(kind="k", ts=T0 + i * MINUTE, actor_agent="a-busy") for i in range(30)])
    timemap.catch_up(db)
    # Late events of the mapped period, and new ones, that the map does not cover yet.
    write(db, [Event(kind="k", ts=T0 + i * MINUTE + 1, actor_agent="a-busy") for i in (3, 40, 12)])
    monkeypatch.setattr(queries, "_MAP_LAG", 1_000)  # not far enough behind to catch up in the query
    for f in windows(rng, 20):
        assert paged(db, f) == plain(db, f), f
    assert timemap.span(db, None, None).mapped == 30  # the timeline did not write
    monkeypatch.setattr(queries, "_MAP_LAG", 2)  # far behind: the query catches the map up first
    f = EventFilter(agent="a-busy", since_us=T0 + 10 * MINUTE, until_us=T0 + 20 * MINUTE)
    assert paged(db, f) == plain(db, f)
    assert timemap.span(db, None, None).mapped == 33


def test_catch_up_maps_every_event_once_in_bounded_steps(db: Database) -> None:
    rng = random.Random(3)
    log_with_outage(db, rng)
    assert timemap.catch_up(db, batch=50, max_events=120) == 120
    assert timemap.span(db, None, None).mapped == 120
    assert timemap.catch_up(db, batch=50) == 240
    assert timemap.catch_up(db) == 0
    got = {
        int(r["bucket"]): (int(r["first_seq"]), int(r["last_seq"]))
        for r in db.query("SELECT * FROM time_map")
    }
    want: dict[int, tuple[int, int]] = {}
    for r in db.query("SELECT seq, ts FROM events ORDER BY seq"):
        b, seq = timemap.bucket(int(r["ts"])), int(r["seq"])
        first, _ = want.get(b, (seq, seq))
        want[b] = (first, seq)
    assert got == want


def test_migration_maps_events_written_before_it(db: Database) -> None:
    rng = random.Random(4)
    log_with_outage(db, rng)
    timemap.catch_up(db)
    built = db.query("SELECT * FROM time_map ORDER BY bucket")
    with db.transaction() as tx:
        tx.execute("DROP TABLE time_map")
        tx.execute("DROP TABLE time_map_state")
        tx.execute("DELETE FROM schema_migrations WHERE version = 7")
    assert migrate(db) == [7]
    assert db.query("SELECT * FROM time_map ORDER BY bucket") == built
    assert timemap.span(db, None, None).mapped == 360
    for f in windows(rng, 10):
        assert paged(db, f) == plain(db, f), f


@pytest.mark.parametrize("ts", [0, 1, 599_999_999, 600_000_000, T0 - 1, T0, -1, -600_000_000, -600_000_001])
def test_bucket_is_sql_integer_division(db: Database, ts: int) -> None:
    row = db.query_one("SELECT CAST(? AS BIGINT) / 600000000 AS b", (ts,))
    assert row is not None and int(row["b"]) == timemap.bucket(ts)
