"""The log's two read indexes, kept in bulk off the request path: where a time window lies in the log, and
which events belong to a session, an agent, a user or a workspace.

The time map (`time_map`): for each 10-minute bucket of `ts`, the lowest and the highest seq of the events
created in it. A timeline orders by seq and selects by ts (gatehouse.audit.queries); the map turns a
window into the seq range that holds every event created in it, exactly, so a read starts and stops at the
right place. ts and seq disagree by the writer's queue delay, clock skew between replicas, or an outage's
retried events; that only widens the range of the buckets concerned, never loses an event, because the
bounds are the actual lowest and highest seq of each bucket.

The key index (`key_ranges`): for each key, runs of seq in which its events lie, as (key, first_seq,
last_seq) rows, where the keys are `s:<session>`, `a:<agent>`, `u:<user>` (as actor or on-behalf-of) and
`w:<workspace>` (`key()`). A run's first and last events have the key, and so does at least one event in
every RANGE_GAP in between; a run spans at most RANGE_SPAN seqs. A reader scans the runs' events and keeps
those that match, so it reads at most RANGE_GAP events per match, and exactly the matches for an entity
whose events are far apart. Like a BRIN index, it is small where one row per event would be large: a
busy agent or user, present in most events, has one row per batch instead of one per event (one row per
event and key cost the projector 6.4 us per event, the runs 1.5: docs/benchmarks.md, session 8). It
replaced six secondary indexes on `events` (m0010, m0011), which every commit on the request path had to
maintain: here a batch of thousands of events is indexed at once, in the projector process.

Both share one mark, `time_map_state.seq`, the last event indexed: a reader covers the events after it,
which neither index holds yet, by reading them directly (`Span.mapped`). Seq only grows and an event
becomes visible only after every event before it (the chain's write lock orders commits), so nothing
appears behind the mark later. Kept up to date by the projector's pass over new events (`project`, so
they are read once for every derived table), by `catch_up` for whatever that pass does not cover (run
beside it every second), and by a timeline that finds them far behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gatehouse.audit.events import CONTENT_COLUMNS, Event, event_from_tuple
from gatehouse.store.db import Database, Row, Tx

BUCKET_US = 600_000_000  # 10 minutes
_CATCH_UP_BATCH = 20_000
_UPSERT = (
    "INSERT INTO time_map (bucket, first_seq, last_seq) VALUES (?, ?, ?) ON CONFLICT (bucket) DO UPDATE"
    " SET first_seq = CASE WHEN excluded.first_seq < time_map.first_seq THEN excluded.first_seq"
    " ELSE time_map.first_seq END,"
    " last_seq = CASE WHEN excluded.last_seq > time_map.last_seq THEN excluded.last_seq"
    " ELSE time_map.last_seq END"
)


def bucket(ts_us: int) -> int:
    """ts divided by the bucket width, rounded toward zero: what SQL integer division gives (m0007)."""
    q = abs(ts_us) // BUCKET_US
    return q if ts_us >= 0 else -q


@dataclass(frozen=True, slots=True)
class Span:
    """Where the events of a window are: seq in [first, last] among the mapped ones (None: no mapped event
    was created in the window), and anywhere after `mapped`, which the map does not cover yet."""

    first: int | None
    last: int | None
    mapped: int
    head: int


def marks(db: Database) -> tuple[int, int]:
    """(the last event indexed, the last event in the log)."""
    row = db.query_one(
        "SELECT m.seq AS mapped, h.seq AS head FROM time_map_state m JOIN chain_head h ON h.id = 1"
        " WHERE m.id = 1"
    )
    return (0, 0) if row is None else (int(row["mapped"]), int(row["head"]))


def span(db: Database, since_us: int | None, until_us: int | None) -> Span:
    """The seq range of the events with since <= ts < until (either end open when None)."""
    where, params = [], []
    if since_us is not None:
        where.append("w.bucket >= ?")
        params.append(bucket(since_us))
    if until_us is not None:
        where.append("w.bucket <= ?")
        params.append(bucket(until_us - 1))
    on = " AND ".join(where) or "1 = 1"
    # One statement, so the mark and the buckets come from the same snapshot: a bucket read after a
    # catch-up moved the mark past it would leave events neither in the range nor after the mark.
    row = db.query_one(
        "SELECT m.seq AS mapped, h.seq AS head, min(w.first_seq) AS first, max(w.last_seq) AS last"
        f" FROM time_map_state m JOIN chain_head h ON h.id = 1 LEFT JOIN time_map w ON {on}"
        " WHERE m.id = 1 GROUP BY m.seq, h.seq",
        params,
    )
    if row is None:  # no state row: nothing is mapped
        return Span(None, None, 0, 0)
    first, last = row["first"], row["last"]
    return Span(
        None if first is None else int(first),
        None if last is None else int(last),
        int(row["mapped"]),
        int(row["head"]),
    )


KEY_PREFIXES = {"session": "s:", "agent": "a:", "user": "u:", "workspace": "w:"}
# A run of a key's events ends where its next event is more than RANGE_GAP seqs further on, or would make
# it span more than RANGE_SPAN seqs (which bounds how far before a window's start a reader looks for runs).
RANGE_GAP = 16
RANGE_SPAN = 4096
_RANGES_INSERT = "INSERT INTO key_ranges (key, first_seq, last_seq) VALUES (?, ?, ?)"


def key(scope: str, value: str) -> str:
    """The key-index key of a session, agent, user or workspace id."""
    return KEY_PREFIXES[scope] + value


def keys_of(
    session: str | None,
    agent: str | None,
    user: str | None,
    behalf: str | None,
    workspace: str | None,
) -> list[str]:
    """The keys an event is indexed under. A pruned event's columns are blank: it has none."""
    keys = []
    if session is not None:
        keys.append("s:" + session)
    if agent is not None:
        keys.append("a:" + agent)
    if user is not None:
        keys.append("u:" + user)
    if behalf is not None and behalf != user:  # one key when a user acts on their own behalf
        keys.append("u:" + behalf)
    if workspace is not None:
        keys.append("w:" + workspace)
    return keys


_KEY_COLUMNS = {
    KEY_PREFIXES["session"]: "session = ?",
    KEY_PREFIXES["agent"]: "actor_agent = ?",
    KEY_PREFIXES["workspace"]: "workspace = ?",
}
_USER_COLUMNS = "(actor_user = ? OR on_behalf_of = ?)"


def unindex(tx: Tx, pruned: Iterable[tuple[str, int]]) -> None:
    """After retention blanked events, given as (key, seq): narrow each run that held one of them to the
    events still indexed under its key, or drop it if none is left."""
    runs: set[tuple[str, int, int]] = set()
    for k, seq in pruned:
        run = tx.one(
            "SELECT first_seq, last_seq FROM key_ranges WHERE key = ? AND first_seq <= ?"
            " ORDER BY first_seq DESC LIMIT 1",
            (k, seq),
        )
        if run is not None and int(run["last_seq"]) >= seq:
            runs.add((k, int(run["first_seq"]), int(run["last_seq"])))
    for k, first, last in sorted(runs):
        value = k[2:]
        column = _KEY_COLUMNS.get(k[:2], _USER_COLUMNS)
        left = tx.one(
            f"SELECT min(seq) AS lo, max(seq) AS hi FROM events WHERE seq >= ? AND seq <= ? AND {column}",
            (first, last, *([value] * column.count("?"))),
        )
        if left is None or left["lo"] is None:
            tx.execute("DELETE FROM key_ranges WHERE key = ? AND first_seq = ?", (k, first))
        elif (int(left["lo"]), int(left["hi"])) != (first, last):
            tx.execute(
                "UPDATE key_ranges SET first_seq = ?, last_seq = ? WHERE key = ? AND first_seq = ?",
                (int(left["lo"]), int(left["hi"]), k, first),
            )


def bounds(db: Database, since_us: int | None, until_us: int | None) -> tuple[int, int] | None:
    """The smallest seq range that holds every event with since <= ts < until: the window's range among
    the mapped events, widened to the events after the mark (any of them may be in the window). None if
    no event can be."""
    s = span(db, since_us, until_us)
    first = s.first if s.first is not None else s.mapped + 1
    last = s.head if s.head > s.mapped else s.last
    return None if last is None or first > last else (first, last)


def session_events(tx: Tx, session: str, kinds: Sequence[str]) -> list[Event]:
    """The session's events of `kinds`, in log order, as the transaction sees them: the key index's runs,
    then the events after its mark. Pruned events are not among them (their session is blank)."""
    marks = ", ".join("?" for _ in kinds)
    select = f"SELECT {CONTENT_COLUMNS} FROM events WHERE session = ? AND kind IN ({marks}) AND "
    rows: list[Row] = []
    for run in tx.all(
        "SELECT first_seq, last_seq FROM key_ranges WHERE key = ? ORDER BY first_seq",
        (key("session", session),),
    ):
        rows += tx.all(
            select + "seq >= ? AND seq <= ? ORDER BY seq",
            (session, *kinds, run["first_seq"], run["last_seq"]),
        )
    rows += tx.all(
        select + "seq > (SELECT seq FROM time_map_state WHERE id = 1) ORDER BY seq", (session, *kinds)
    )
    return [event_from_tuple(list(r.values())) for r in rows]


def has_session(tx: Tx, session: str) -> bool:
    """Has the log any event of this session? The key index, then the events after its mark, as the
    transaction sees them."""
    if tx.one("SELECT 1 AS found FROM key_ranges WHERE key = ? LIMIT 1", (key("session", session),)):
        return True
    found = tx.one(
        "SELECT 1 AS found FROM events WHERE seq > (SELECT seq FROM time_map_state WHERE id = 1)"
        " AND session = ? LIMIT 1",
        (session,),
    )
    return found is not None


def catch_up(db: Database, *, batch: int = _CATCH_UP_BATCH, max_events: int | None = None) -> int:
    """Index the events appended since the last pass (time map and key index); return how many were read.

    The events are read outside any transaction (a read does not hold up the writer); the short write
    that follows re-checks the mark, so two passes at once never map the same events twice."""
    done = 0
    while max_events is None or done < max_events:
        state = db.query_one("SELECT seq FROM time_map_state WHERE id = 1")
        if state is None:
            return done
        mark = int(state["seq"])
        step = batch if max_events is None else min(batch, max_events - done)
        rows = db.query_tuples(
            "SELECT seq, ts, session, actor_agent, actor_user, on_behalf_of, workspace FROM events"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (mark, step),
        )
        if not rows:
            return done
        with db.transaction(derived=True) as tx:
            if _mark(tx) != mark:
                continue  # another pass got there first: read again from its mark
            _index(tx, rows)
        done += len(rows)
        if len(rows) < step:
            return done
    return done


def project(tx: Tx, events: Sequence[Event]) -> None:
    """A projection for the projector's pass, which has read the events already (`catch_up` would read
    them again): index them if they continue the indexes exactly from the mark, with no event missing
    (pruned ones are not read by the projector). Anything else, such as a map behind after an upgrade or
    ahead after a timeline's catch-up, is `catch_up`'s to do (or already done)."""
    mark = _mark(tx)
    if mark is None:
        return
    fresh = [e for e in events if e.seq > mark]
    if fresh and fresh[0].seq == mark + 1 and fresh[-1].seq - fresh[0].seq + 1 == len(fresh):
        _index(
            tx,
            [
                (e.seq, e.ts, e.session, e.actor_agent, e.actor_user, e.on_behalf_of, e.workspace)
                for e in fresh
            ],
        )


def _mark(tx: Tx) -> int | None:
    """The indexes' mark, locked for the rest of the transaction (PostgreSQL; SQLite's derived-file lock is
    already held)."""
    lock = " FOR UPDATE" if tx.db.dialect == "postgresql" else ""
    state = tx.one(f"SELECT seq FROM time_map_state WHERE id = 1{lock}")
    return None if state is None else int(state["seq"])


def _index(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
    """Add events, given as (seq, ts, session, agent, user, on-behalf-of, workspace) in seq order right
    after the mark, to both indexes and move the mark past them. A batch's runs end with it: the next one
    starts its own."""
    bounds: dict[int, list[int]] = {}
    runs: dict[str, list[int]] = {}  # key -> [first, last] of its open run
    closed: list[tuple[str, int, int]] = []
    for seq, ts, session, agent, user, behalf, workspace in rows:
        b = bucket(ts)
        seen = bounds.get(b)
        if seen is None:
            bounds[b] = [seq, seq]
        else:
            seen[1] = seq  # rows come in seq order
        for k in keys_of(session, agent, user, behalf, workspace):
            run = runs.get(k)
            if run is None:
                runs[k] = [seq, seq]
            elif seq - run[1] <= RANGE_GAP and seq - run[0] < RANGE_SPAN:
                run[1] = seq
            else:
                closed.append((k, run[0], run[1]))
                run[0] = run[1] = seq
    closed += [(k, first, last) for k, (first, last) in runs.items()]
    closed.sort()  # in index order: each page of the index is visited once
    tx.executemany(_UPSERT, [(b, lo, hi) for b, (lo, hi) in bounds.items()])
    tx.executemany(_RANGES_INSERT, closed)
    tx.execute("UPDATE time_map_state SET seq = ? WHERE id = 1", (int(rows[-1][0]),))


def step(db: Database, events: int = 2000) -> bool:
    """A writer-process task (see `AuditWriter(process_tasks=...)`): map up to `events` new events; True
    while more remain."""
    return catch_up(db, max_events=events) >= events
