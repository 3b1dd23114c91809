"""Reading the log back: what did this actor, agent, session or workspace do, and where does this text
appear. Shared by the CLI and the REST API, so both answer the same question the same way.

Order. `seq` is the order in which events entered the chain, under the chain's write lock, and an event is
appended only after what caused it (a response after its request, a tool result after the call): so seq
order is causal order, across kinds and layers. `ts` is when the event was created and can disagree with
seq by the writer's queue delay or clock skew between replicas; it selects the window, seq orders it. The
time map (gatehouse.audit.timemap) turns a window into the seq range that holds it, so the window of a
long history is read without walking up to it.

Paging. A page ends with `next_cursor` when there may be more: pass it back as `cursor`. It is opaque to
callers (today the last seq returned); a timeline pages forward in seq order, a search backwards (newest
first).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from gatehouse.audit import journal, timemap
from gatehouse.audit.search import catch_up, document, match_clause, snippet
from gatehouse.store.db import Database, Row
from gatehouse.timeutil import iso

MAX_LIMIT = 1000
# A windowed timeline brings the time map up to date first when more events than this are not mapped yet;
# fewer are cheaper to read past than a write transaction (the background keeps the map close to the head).
_MAP_LAG = 5_000
_EVENT_SELECT = (
    "e.seq, e.id, e.ts, e.kind, e.actor_user, e.actor_agent, e.actor_token, e.on_behalf_of, e.workspace,"
    " e.session, e.parent, e.decision, e.resource, e.details, e.prev_hash, e.hash, e.pruned_by,"
    " u.name AS user_name, a.name AS agent_name"
)
_NAMES = " LEFT JOIN users u ON u.id = e.actor_user LEFT JOIN agents a ON a.id = e.actor_agent"


class QueryError(ValueError):
    """The question cannot be asked as put (bad cursor, empty search, ...); the message says why."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    user: str | None = None  # name or id; matches the actor and on-behalf-of
    agent: str | None = None  # name or id
    session: str | None = None
    workspace: str | None = None
    since_us: int | None = None  # window: since <= ts < until
    until_us: int | None = None
    kinds: tuple[str, ...] = ()  # exact kinds or prefixes (`llm.*`)
    limit: int = 100
    cursor: str | None = None


@dataclass(slots=True)
class Page:
    events: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "next_cursor": self.next_cursor}


def timeline(db: Database, f: EventFilter) -> Page:
    """Events matching the filter, in causal (seq) order, a page at a time."""
    journal.drain_all(db)
    after = _cursor(f.cursor)
    limit = _limit(f.limit)
    f = _resolved(db, f)
    where, params = _conditions(f)
    key = _index_key(f)
    rows: list[Row] = []
    for first, last, indexed in _seq_ranges(db, f):  # disjoint and in seq order: stop once the page is full
        # Up to the indexes' mark, the key index gives the runs of seq that hold the entity's events; after
        # it, the few events not indexed yet are read directly. The filter's conditions pick the entity's
        # events out of a run (and hold either way: a run can outlive what it indexed, pruned events).
        if after is not None:
            first = after + 1 if first is None else max(first, after + 1)
        if key is not None and indexed:
            sql, values = _runs_query(db, key, first, last, where)
        else:
            bounds = [f"e.seq {op} ?" for op, v in ((">=", first), ("<=", last)) if v is not None]
            values = [v for v in (first, last) if v is not None]
            condition = _where(bounds + where)
            sql = f"SELECT {_EVENT_SELECT} FROM events e{_NAMES}{condition} ORDER BY e.seq LIMIT ?"
        rows += db.query(sql, [*values, *params, limit + 1 - len(rows)])
        if len(rows) > limit:
            break
    return _page(rows, limit)


def _runs_query(
    db: Database, key: str, low: int | None, high: int | None, where: list[str]
) -> tuple[str, list[Any]]:
    """A page's events from the key index's runs of `key` (gatehouse.audit.timemap) between seq `low` and
    `high` (None: open), in order: the SQL and its values up to the filter's own (`where`). A run starts
    at most RANGE_SPAN seqs before the events it holds, so the index is read from there on."""
    greatest, least = ("max", "min") if db.dialect == "sqlite" else ("GREATEST", "LEAST")
    # Each bound of e.seq as one expression: the planner reads a run's events as one rowid range.
    start, end = "k.first_seq", "k.last_seq"
    join_values: list[Any] = []
    runs = ["k.key = ?"]
    run_values: list[Any] = [key]
    if low is not None:
        start = f"{greatest}(k.first_seq, ?)"
        join_values.append(low)
        runs += ["k.first_seq > ?", "k.last_seq >= ?"]
        run_values += [low - timemap.RANGE_SPAN, low]
    if high is not None:
        end = f"{least}(k.last_seq, ?)"
        join_values.append(high)
        runs.append("k.first_seq <= ?")
        run_values.append(high)
    sql = (
        f"SELECT {_EVENT_SELECT} FROM key_ranges k JOIN events e ON e.seq >= {start} AND e.seq <= {end}"
        f"{_NAMES}{_where(runs + where)} ORDER BY k.first_seq, e.seq LIMIT ?"
    )
    return sql, [*join_values, *run_values]


def search(db: Database, query: str, f: EventFilter | None = None, *, catch_up_index: bool = True) -> Page:
    """Events whose indexed text matches `query` (see gatehouse.audit.search), newest first."""
    journal.drain_all(db)
    f = f or EventFilter()
    if catch_up_index:
        catch_up(db)
    try:
        join, condition, expression, seq = match_clause(db, query)
    except ValueError as exc:
        raise QueryError(str(exc)) from None
    where, params = _conditions(_resolved(db, f))
    where.insert(0, condition)
    params.insert(0, expression)
    before = _cursor(f.cursor)
    if before is not None:
        where.append(f"{seq} < ?")
        params.append(before)
    limit = _limit(f.limit)
    rows = db.query(
        f"SELECT {_EVENT_SELECT} FROM {join}{_NAMES}{_where(where)} ORDER BY {seq} DESC LIMIT ?",
        [*params, limit + 1],
    )
    page = _page(rows, limit)
    for event in page.events:
        details = event["details"] if isinstance(event["details"], dict) else {}
        text = document(event["kind"], event["resource"], details)
        event["match"] = snippet(text, query)
    return page


def get_event(db: Database, event_id: str) -> dict[str, Any] | None:
    """One event by id (or by seq, given as digits)."""
    journal.drain_all(db)
    column = "e.seq" if event_id.isdigit() else "e.id"
    key: Any = int(event_id) if event_id.isdigit() else event_id
    row = db.query_one(f"SELECT {_EVENT_SELECT} FROM events e{_NAMES} WHERE {column} = ?", (key,))
    return None if row is None else event_dict(row)


def tail(db: Database, *, after_seq: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The last `limit` events (after_seq None), or up to `limit` events after `after_seq`, in seq order."""
    journal.drain_all(db)
    limit = _limit(limit)
    if after_seq is None:
        rows = db.query(f"SELECT {_EVENT_SELECT} FROM events e{_NAMES} ORDER BY e.seq DESC LIMIT ?", (limit,))
        rows.reverse()
    else:
        rows = db.query(
            f"SELECT {_EVENT_SELECT} FROM events e{_NAMES} WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
            (after_seq, limit),
        )
    return [event_dict(r) for r in rows]


def event_dict(row: Row) -> dict[str, Any]:
    try:
        details = orjson.loads(row["details"])
    except orjson.JSONDecodeError:
        details = row["details"]
    return {
        "seq": row["seq"],
        "id": row["id"],
        "ts": row["ts"],
        "time": iso(row["ts"]),
        "kind": row["kind"],
        "actor": {
            "user": row["actor_user"],
            "user_name": row.get("user_name"),
            "agent": row["actor_agent"],
            "agent_name": row.get("agent_name"),
            "token": row["actor_token"],
            "on_behalf_of": row["on_behalf_of"],
        },
        "workspace": row["workspace"],
        "session": row["session"],
        "parent": row["parent"],
        "decision": row["decision"],
        "resource": row["resource"],
        "details": details,
        "pruned": row["pruned_by"] is not None,
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
    }


# -- building the question ------------------------------------------------------------------------------


def _resolved(db: Database, f: EventFilter) -> EventFilter:
    """The filter with its user and agent as ids (names are accepted too)."""
    return replace(
        f,
        user=_resolve(db, "users", f.user) if f.user else None,
        agent=_resolve(db, "agents", f.agent) if f.agent else None,
    )


def _conditions(f: EventFilter) -> tuple[list[str], list[Any]]:
    """The filter as SQL conditions on `events e`; its user and agent are ids (`_resolved`)."""
    where: list[str] = []
    params: list[Any] = []
    if f.user:
        where.append("(e.actor_user = ? OR e.on_behalf_of = ?)")
        params += [f.user, f.user]
    if f.agent:
        where.append("e.actor_agent = ?")
        params.append(f.agent)
    if f.session:
        where.append("e.session = ?")
        params.append(f.session)
    if f.workspace:
        where.append("e.workspace = ?")
        params.append(f.workspace)
    if f.since_us is not None:
        where.append("e.ts >= ?")
        params.append(f.since_us)
    if f.until_us is not None:
        where.append("e.ts < ?")
        params.append(f.until_us)
    if f.kinds:
        alternatives = []
        for kind in f.kinds:
            if kind.endswith("*"):
                prefix = kind[:-1]
                alternatives.append("substr(e.kind, 1, ?) = ?")
                params += [len(prefix), prefix]
            else:
                alternatives.append("e.kind = ?")
                params.append(kind)
        where.append("(" + " OR ".join(alternatives) + ")")
    return where, params


def _index_key(f: EventFilter) -> str | None:
    """The key-index key that narrows the (resolved) filter most: a session's events are fewer than a
    workspace's, an agent's or a user's."""
    for scope, value in (
        ("session", f.session),
        ("workspace", f.workspace),
        ("agent", f.agent),
        ("user", f.user),
    ):
        if value:
            return timemap.key(scope, value)
    return None


def _seq_ranges(db: Database, f: EventFilter) -> list[tuple[int | None, int | None, bool]]:
    """Where in the log the filter's events are, as seq ranges (None: open) in order, each with whether
    the log's indexes cover it (gatehouse.audit.timemap): the window's range among the indexed events
    (the whole indexed part without a window), then the events after the indexes' mark."""
    windowed = f.since_us is not None or f.until_us is not None
    for attempt in range(2):
        if windowed:
            span = timemap.span(db, f.since_us, f.until_us)
            mapped, head = span.mapped, span.head
        else:
            mapped, head = timemap.marks(db)
        if head - mapped <= _MAP_LAG or attempt:
            break
        timemap.catch_up(db)
    ranges: list[tuple[int | None, int | None, bool]] = []
    if not windowed:
        ranges.append((None, mapped, True))
    elif span.first is not None:
        ranges.append((span.first, span.last, True))
    return [*ranges, (mapped + 1, None, False)]


def _resolve(db: Database, table: str, key: str) -> str:
    """A user or agent name to its id (an unknown key is taken as an id: it simply matches nothing)."""
    row = db.query_one(f"SELECT id FROM {table} WHERE name = ? OR id = ?", (key, key))
    return str(row["id"]) if row else key


def _where(where: list[str]) -> str:
    return (" WHERE " + " AND ".join(where)) if where else ""


def _limit(limit: int) -> int:
    if limit < 1:
        raise QueryError("limit must be at least 1")
    return min(limit, MAX_LIMIT)


def _cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    if not cursor.isdigit():
        raise QueryError(f"invalid cursor {cursor!r}: pass back the next_cursor of the previous page")
    return int(cursor)


def _page(rows: list[Row], limit: int) -> Page:
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        events=[event_dict(r) for r in rows],
        next_cursor=str(rows[-1]["seq"]) if more and rows else None,
    )
