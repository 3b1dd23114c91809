"""The log's indexes (time map and key index) give timelines exactly the events plain SQL selects, on SQLite
and PostgreSQL: with events whose ts is out of seq order (an outage's retried events), with the indexes
behind the log, part way and after catch-up, and when the migrations built them from events that were
there before them."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from gatehouse.audit import queries, retention, timemap
from gatehouse.audit.events import Event
from gatehouse.audit.projector import Projector
from gatehouse.audit.queries import EventFilter, timeline
from gatehouse.audit.settings import RetentionSettings
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
    if f.session:
        where.append("session = ?")
        params.append(f.session)
    if f.workspace:
        where.append("workspace = ?")
        params.append(f.workspace)
    if f.user:
        where.append("(actor_user = ? OR on_behalf_of = ?)")
        params += [f.user, f.user]
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


def busy_log(db: Database, rng: random.Random, n: int = 400) -> None:
    """Events of sessions, agents, users (some acting on another's behalf) and workspaces, some pruned."""
    write(
        db,
        [
            Event(
                kind=rng.choice(["llm.request", "mcp.call", "admin.user.create"]),
                ts=T0 + i * MINUTE,
                actor_agent=rng.choice([None, "a-1", "a-2"]),
                actor_user=rng.choice([None, "u-1", "u-2"]),
                on_behalf_of=rng.choice([None, None, "u-1", "u-3"]),
                workspace=rng.choice([None, "w-1", "w-2"]),
                session=rng.choice([None, "s-1", "s-2", "s-3"]),
            )
            for i in range(n)
        ],
    )


def entity_filters(rng: random.Random, n: int) -> list[EventFilter]:
    out = []
    for _ in range(n):
        entity = rng.choice(
            [
                {"session": rng.choice(["s-1", "s-2", "s-3", "s-none"])},
                {"agent": rng.choice(["a-1", "a-2"])},
                {"user": rng.choice(["u-1", "u-2", "u-3"])},
                {"workspace": rng.choice(["w-1", "w-2"])},
                {"agent": "a-1", "user": "u-1"},
                {"session": "s-2", "workspace": "w-1"},
            ]
        )
        since = rng.choice([None, T0 + rng.randrange(400) * MINUTE])
        until = rng.choice([None, T0 + rng.randrange(400) * MINUTE])
        out.append(EventFilter(**entity, since_us=since, until_us=until, limit=rng.choice([5, 40])))
    return out


def test_entity_timelines_match_plain_sql_as_the_key_index_catches_up(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(5)
    busy_log(db, rng)
    monkeypatch.setattr(queries, "_MAP_LAG", 10_000)  # the queries read what is not indexed yet
    filters = entity_filters(rng, 60)
    for indexed in (0, 150, 400):  # none, part, all of the log
        timemap.catch_up(db, max_events=indexed - timemap.marks(db)[0])
        assert timemap.marks(db) == (indexed, 400)
        for f in filters:
            assert paged(db, f) == plain(db, f), (indexed, f)
    assert_runs_hold_each_keyed_event(db)


def _keyed(db: Database) -> dict[str, list[int]]:
    """Each key's events, in seq order, from the log."""
    keyed: dict[str, list[int]] = {}
    for r in db.query("SELECT * FROM events WHERE pruned_by IS NULL ORDER BY seq"):
        for k in timemap.keys_of(
            r["session"], r["actor_agent"], r["actor_user"], r["on_behalf_of"], r["workspace"]
        ):
            keyed.setdefault(k, []).append(int(r["seq"]))
    return keyed


def assert_runs_hold_each_keyed_event(db: Database, *, fresh: bool = True) -> None:
    """The key index's runs hold every indexed event under each of its keys, each in one run; every run
    starts and ends with an event of its key; fresh from indexing (not narrowed by pruning since), no run
    skips more than RANGE_GAP seqs between two events of its key or spans more than RANGE_SPAN."""
    mark = timemap.marks(db)[0]
    runs: dict[str, list[tuple[int, int]]] = {}
    for r in db.query("SELECT key, first_seq, last_seq FROM key_ranges ORDER BY key, first_seq"):
        runs.setdefault(r["key"], []).append((int(r["first_seq"]), int(r["last_seq"])))
    keyed = {k: [seq for seq in seqs if seq <= mark] for k, seqs in _keyed(db).items()}
    assert set(runs) == {k for k, seqs in keyed.items() if seqs}
    for k, spans in runs.items():
        seqs = keyed[k]
        held = [[seq for seq in seqs if first <= seq <= last] for first, last in spans]
        assert sum(len(h) for h in held) == len(seqs), k  # every event in exactly one run (runs are disjoint)
        for (first, last), h in zip(spans, held, strict=True):
            assert h and h[0] == first and h[-1] == last, (k, first, last)
            if fresh:
                assert last - first < timemap.RANGE_SPAN
                assert all(b - a <= timemap.RANGE_GAP for a, b in itertools.pairwise(h))


def _expected_time_map(db: Database) -> list[tuple[int, int, int]]:
    buckets: dict[int, tuple[int, int]] = {}
    for r in db.query("SELECT * FROM events ORDER BY seq"):
        lo, hi = buckets.get(timemap.bucket(r["ts"]), (r["seq"], r["seq"]))
        buckets[timemap.bucket(r["ts"])] = (min(lo, r["seq"]), max(hi, r["seq"]))
    return sorted((b, lo, hi) for b, (lo, hi) in buckets.items())


def _time_map(db: Database) -> list[tuple[int, int, int]]:
    buckets = db.query("SELECT bucket, first_seq, last_seq FROM time_map ORDER BY bucket")
    return [(r["bucket"], r["first_seq"], r["last_seq"]) for r in buckets]


def test_the_projectors_pass_builds_the_indexes_catch_up_would(db: Database) -> None:
    """The projector indexes the events it reads for the derived tables, in its own batches; from a mark
    a timeline's catch-up moved ahead of it, it indexes only what follows, once."""
    rng = random.Random(8)
    busy_log(db, rng)
    timemap.catch_up(db, max_events=150)  # a timeline got there first
    projector = Projector([timemap.project], batch=37)
    assert projector.catch_up(db) == 400
    assert timemap.marks(db) == (400, 400)
    assert _time_map(db) == _expected_time_map(db)
    assert_runs_hold_each_keyed_event(db)
    busy_log(db, rng, 50)
    projector.catch_up(db)
    assert timemap.marks(db) == (450, 450)
    assert _time_map(db) == _expected_time_map(db)
    assert_runs_hold_each_keyed_event(db)


def test_the_projectors_pass_leaves_gaps_to_catch_up(db: Database) -> None:
    """Events the projector does not read (pruned ones) would leave a hole in the time map: the pass
    stops short of them, and `catch_up` covers the rest exactly."""
    rng = random.Random(9)
    busy_log(db, rng, 100)
    with db.transaction() as tx:  # as retention leaves them: blank, marked pruned
        tx.execute(
            "UPDATE events SET pruned_by = 1, session = NULL, actor_agent = NULL, actor_user = NULL,"
            " on_behalf_of = NULL, workspace = NULL WHERE seq IN (40, 41)"
        )
    Projector([timemap.project], batch=30).catch_up(db)
    assert timemap.marks(db) == (30, 100)  # the batch holding the gap, and all after it, left alone
    timemap.catch_up(db)
    assert timemap.marks(db) == (100, 100)
    assert _time_map(db) == _expected_time_map(db)
    assert_runs_hold_each_keyed_event(db)


def test_pruned_events_leave_the_key_index(db: Database) -> None:
    rng = random.Random(6)
    busy_log(db, rng, 100)
    timemap.catch_up(db)
    before = db.query_one("SELECT count(*) AS n FROM key_ranges")
    assert before is not None and before["n"] > 10
    now = T0 + 100 * MINUTE + 30 * 86_400_000_000
    report = retention.prune(db, RetentionSettings(default_days=30, compact=False), now)
    assert report.pruned > 0
    # Runs narrowed to the events left under their key, or gone: none starts or ends at a pruned event.
    assert_runs_hold_each_keyed_event(db, fresh=False)
    after = db.query_one("SELECT count(*) AS n FROM key_ranges")
    assert after is not None and after["n"] < before["n"]


def test_migration_fills_the_key_index_and_drops_the_indexes_on_events(db: Database) -> None:
    rng = random.Random(7)
    busy_log(db, rng)
    timemap.catch_up(db)
    with db.transaction() as tx:  # the store as m0009 left it
        tx.execute("DROP TABLE key_ranges")
        for name, columns in [
            ("events_ts", "ts"),
            ("events_session", "session, seq"),
            ("events_agent_seq", "actor_agent, seq"),
            ("events_user_seq", "actor_user, seq"),
            ("events_on_behalf", "on_behalf_of, seq"),
            ("events_workspace", "workspace, seq"),
        ]:
            tx.execute(f"CREATE INDEX {name} ON events ({columns})")
        tx.execute("DELETE FROM schema_migrations WHERE version IN (10, 11)")
    assert migrate(db) == [10, 11]
    # m0010 indexed each event under each key, m0011 made each of those rows a run of one event.
    assert_runs_hold_each_keyed_event(db)
    runs = db.query_one("SELECT count(*) AS n FROM key_ranges WHERE first_seq = last_seq")
    assert runs is not None and runs["n"] == sum(len(seqs) for seqs in _keyed(db).values())
    assert _indexes_on_events(db) == 1  # only the one that keeps ids unique


def _indexes_on_events(db: Database) -> int:
    """Secondary indexes on `events`: each is written in every commit on the request path."""
    if db.dialect == "sqlite":
        return len(db.query("SELECT name FROM pragma_index_list('events')"))
    rows = db.query("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")
    return len([r for r in rows if r["indexname"] != "events_pkey"])
