"""Where a time window lies in the log: for each 10-minute bucket of `ts`, the lowest and the highest seq
of the events created in it (`time_map`).

A timeline orders by seq and selects by ts (gatehouse.audit.queries). Its indexes are (actor, seq), so
without help a window is found by walking the actor's events in seq order from the beginning and reading
each row's ts: on a busy agent with months of history, the events before the window are read for
nothing. The map turns the window into the seq range that holds every event created in it, exactly, so
the walk starts and stops at the right place. ts and seq disagree by the writer's queue delay, clock skew
between replicas, or an outage's retried events; that only widens the range of the buckets concerned,
never loses an event, because the bounds are the actual lowest and highest seq of each bucket.

Kept up to date in bulk, off the request path: by the audit writer process between commits and by the
server's background indexer (`catch_up` rides along with the search index's), and by a timeline that
finds the map far behind. `time_map_state.seq` is the last event mapped: a timeline reads the events
after it, which no bucket covers yet, separately. Seq only grows and an event becomes visible only after
every event before it (the chain's write lock orders commits), so nothing appears behind the mark later.
It costs the writer nothing: one row per 10 minutes of log, a few hundred per week, no index on `events`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatehouse.store.db import Database

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


def catch_up(db: Database, *, batch: int = _CATCH_UP_BATCH, max_events: int | None = None) -> int:
    """Map the events appended since the last pass; return how many were read.

    The events are read outside any transaction (a read does not hold up the writer); the short write
    that follows re-checks the mark, so two passes at once never map the same events twice."""
    done = 0
    while max_events is None or done < max_events:
        state = db.query_one("SELECT seq FROM time_map_state WHERE id = 1")
        if state is None:
            return done
        mark = int(state["seq"])
        step = batch if max_events is None else min(batch, max_events - done)
        rows = db.query("SELECT seq, ts FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (mark, step))
        if not rows:
            return done
        bounds: dict[int, list[int]] = {}
        for r in rows:
            seq, b = int(r["seq"]), bucket(int(r["ts"]))
            seen = bounds.get(b)
            if seen is None:
                bounds[b] = [seq, seq]
            else:
                seen[1] = seq  # rows come in seq order
        with db.transaction(derived=True) as tx:
            lock = " FOR UPDATE" if db.dialect == "postgresql" else ""
            now = tx.one(f"SELECT seq FROM time_map_state WHERE id = 1{lock}")
            if now is None or int(now["seq"]) != mark:
                continue  # another pass got there first: read again from its mark
            tx.executemany(_UPSERT, [(b, lo, hi) for b, (lo, hi) in bounds.items()])
            tx.execute("UPDATE time_map_state SET seq = ? WHERE id = 1", (int(rows[-1]["seq"]),))
        done += len(rows)
        if len(rows) < step:
            return done
    return done


def step(db: Database, events: int = 2000) -> bool:
    """A writer-process task (see `AuditWriter(process_tasks=...)`): map up to `events` new events; True
    while more remain."""
    return catch_up(db, max_events=events) >= events
