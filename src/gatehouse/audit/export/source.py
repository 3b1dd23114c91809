"""Reading the log back as events, in sequence order, for the exporter and the one-off export."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from gatehouse.audit import timemap
from gatehouse.audit.events import ROW_COLUMNS as _COLUMNS
from gatehouse.audit.events import Event, event_from_row
from gatehouse.store.db import Database


def events_after(db: Database, seq: int, limit: int) -> list[Event]:
    """Up to `limit` events with a sequence number above `seq`, in order."""
    rows = db.query(f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
    return [event_from_row(r) for r in rows]


def events_by_id(db: Database, ids: Sequence[str]) -> dict[str, Event]:
    found: dict[str, Event] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for row in db.query(f"SELECT {_COLUMNS} FROM events WHERE id IN ({marks})", chunk):
            event = event_from_row(row)
            found[event.id] = event
    return found


def events_between(
    db: Database, since_us: int | None, until_us: int | None, *, batch: int = 1000
) -> Iterator[list[Event]]:
    """Events with since <= ts < until, in sequence order, in batches."""
    bounds = timemap.bounds(db, since_us, until_us)
    if bounds is None:
        return
    first, last = bounds
    lo_ts = since_us if since_us is not None else -(2**62)
    hi_ts = until_us if until_us is not None else 2**62
    cursor = first - 1
    while cursor < last:
        rows = db.query(
            f"SELECT {_COLUMNS} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (cursor, last, batch),
        )
        if not rows:
            return
        cursor = int(rows[-1]["seq"])
        events = [event_from_row(r) for r in rows if lo_ts <= int(r["ts"]) < hi_ts]
        if events:
            yield events
