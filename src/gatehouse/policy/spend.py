"""Spend: what each LLM call cost, derived from the event log, and reports over it.

`SpendProjection` keeps the `spend` table in step with the log, like the Bridge's own projections (the
projector, `gatehouse.audit.projector`, applies it): for each allowed call's `llm.response`, one row with who
made the call (user, agent, token, team, template: from its `llm.request`), provider, model, the usage,
and the cost at the price in effect when the call was made. The table can be rebuilt from the log
(`rebuild_spend`); a stored cost is never re-priced otherwise.
"""

from __future__ import annotations

import csv
import io
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from gatehouse.audit.events import Event
from gatehouse.policy.prices import PriceBook
from gatehouse.store.db import Database, Row, Tx

REQUEST = "llm.request"
RESPONSE = "llm.response"
ANTHROPIC_ROUTES = frozenset({"messages"})


class SpendProjection:
    """One `spend` row per completed call, from its `llm.response` (the request's facts wait in memory
    meanwhile, or are read back from its event after a restart)."""

    def __init__(self, timezone: str = "UTC", pending_limit: int = 100_000) -> None:
        self.zone = ZoneInfo(timezone)
        self._book: PriceBook | None = None
        self._version = -1
        self._pending: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._pending_limit = pending_limit
        self._day: tuple[int, int, str] = (0, 0, "")  # [start, end) in us of the last day looked up

    def _prices(self, tx: Tx) -> PriceBook:
        row = tx.one("SELECT version FROM policy_state WHERE id = 1")
        version = int(row["version"]) if row else 0
        if self._book is None or version != self._version:
            self._book = PriceBook.load(tx)
            self._version = version
        return self._book

    def day(self, ts_us: int) -> str:
        """The local date of `ts_us` in the configured zone. Consecutive calls mostly fall on one day: its
        bounds are kept, so most lookups are two comparisons."""
        start, end, day = self._day
        if start <= ts_us < end:
            return day
        moment = datetime.fromtimestamp(ts_us / 1_000_000, self.zone)
        midnight = datetime.combine(moment.date(), time(), self.zone)
        following = datetime.combine(moment.date() + timedelta(days=1), time(), self.zone)
        start, end = _us(midnight), _us(following)
        day = moment.date().isoformat()
        if start <= ts_us < end:  # not so around a clock change that repeats an hour: no shortcut then
            self._day = (start, end, day)
        return day

    def __call__(self, tx: Tx, events: Sequence[Event]) -> None:
        book: PriceBook | None = None
        rows: list[tuple[Any, ...]] = []
        for event in events:
            if event.kind == REQUEST and event.decision == "allow":
                self._pending[event.id] = _request_facts(event)
                if len(self._pending) > self._pending_limit:
                    self._pending.popitem(last=False)
            elif event.kind == RESPONSE and event.parent:
                if book is None:
                    book = self._prices(tx)
                row = self._response(tx, event, book)
                if row is not None:
                    rows.append(row)
        tx.executemany(
            "INSERT INTO spend (interception_id, ts, day, user_id, agent_id, token_id, team_id, template,"
            " provider, model, route, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
            " cost_usd, price_model, settled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
            " ON CONFLICT DO NOTHING",
            rows,
        )

    def _response(self, tx: Tx, event: Event, book: PriceBook) -> tuple[Any, ...] | None:
        facts = self._pending.pop(event.parent or "", None) or _request_from_log(tx, event.parent or "")
        if facts is None:
            return None
        ts, user, agent, token, team, template, provider, model, route = facts
        usage = event.details.get("usage") or {}
        counts = [
            int(usage.get(k) or 0)
            for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        ]
        price = book.lookup(model or "", ts)
        cost = price.cost_nano(*counts, openai=route not in ANTHROPIC_ROUTES) / 1e9 if price else 0.0
        return (
            event.parent,
            ts,
            self.day(ts),
            user,
            agent,
            token,
            team,
            template,
            provider,
            model,
            route,
            *counts,
            cost,
            price.model if price else None,
        )


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _request_facts(event: Event) -> tuple[Any, ...]:
    d = event.details
    policy = d.get("policy") or {}
    return (
        event.ts,
        event.actor_user,
        event.actor_agent,
        event.actor_token,
        policy.get("team"),
        policy.get("template"),
        d.get("provider"),
        d.get("model"),
        d.get("route"),
    )


def _request_from_log(tx: Tx, interception: str) -> tuple[Any, ...] | None:
    """A call whose request was recorded before this process started."""
    row = tx.one(
        "SELECT id, ts, kind, decision, actor_user, actor_agent, actor_token, details FROM events"
        " WHERE id = ? AND kind = ?",
        (interception, REQUEST),
    )
    if row is None or row["decision"] != "allow":
        return None
    return _request_facts(
        Event(
            kind=REQUEST,
            details=orjson.loads(row["details"]),
            actor_user=row["actor_user"],
            actor_agent=row["actor_agent"],
            actor_token=row["actor_token"],
            id=row["id"],
            ts=int(row["ts"]),
        )
    )


def rebuild_spend(db: Database, timezone: str = "UTC", chunk: int = 5000) -> int:
    """Recompute the spend table from the event log; returns the number of calls."""
    projection = SpendProjection(timezone)
    with db.transaction() as tx:
        tx.execute("DELETE FROM spend")
        last = 0
        while True:
            rows = tx.all(
                "SELECT seq, id, ts, kind, actor_user, actor_agent, actor_token, session, parent, decision,"
                " details FROM events WHERE seq > ? AND kind IN (?, ?) ORDER BY seq LIMIT ?",
                (last, REQUEST, RESPONSE, chunk),
            )
            if not rows:
                break
            last = int(rows[-1]["seq"])
            projection(
                tx,
                [
                    Event(
                        kind=r["kind"],
                        decision=r["decision"],
                        details=orjson.loads(r["details"]),
                        actor_user=r["actor_user"],
                        actor_agent=r["actor_agent"],
                        actor_token=r["actor_token"],
                        session=r["session"],
                        parent=r["parent"],
                        id=r["id"],
                        ts=int(r["ts"]),
                    )
                    for r in rows
                ],
            )
        found = tx.one("SELECT COUNT(*) AS n FROM spend")
    return int(found["n"]) if found else 0


# -- reports -----------------------------------------------------------------------------------------

_GROUPS: dict[str, tuple[str, str]] = {
    "user": ("u.name", "LEFT JOIN users u ON u.id = s.user_id"),
    "team": ("tm.name", "LEFT JOIN teams tm ON tm.id = s.team_id"),
    "agent": ("a.name", "LEFT JOIN agents a ON a.id = s.agent_id"),
    "model": ("s.model", ""),
    "provider": ("s.provider", ""),
    "template": ("s.template", ""),
    "day": ("s.day", ""),
}
GROUPINGS = tuple(_GROUPS)
COLUMNS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced",
)


@dataclass(frozen=True, slots=True)
class SpendFilter:
    since_us: int | None = None
    until_us: int | None = None
    user_id: str | None = None  # members see their own spend only


def spend_report(db: Database, by: str, f: SpendFilter) -> dict[str, Any]:
    """Spend grouped by user, team, agent, model, provider, template or day; most expensive first
    (`day`: in date order)."""
    if by not in _GROUPS:
        raise ValueError(f"cannot group by {by!r}: use one of {', '.join(GROUPINGS)}")
    label, join = _GROUPS[by]
    clauses: list[str] = []
    params: list[Any] = []
    if f.since_us is not None:
        clauses.append("s.ts >= ?")
        params.append(f.since_us)
    if f.until_us is not None:
        clauses.append("s.ts < ?")
        params.append(f.until_us)
    if f.user_id is not None:
        clauses.append("s.user_id = ?")
        params.append(f.user_id)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    order = f"{label}" if by == "day" else "cost_usd DESC, key"
    rows = db.query(
        f"SELECT {label} AS key, COUNT(*) AS calls, SUM(s.input_tokens) AS input_tokens,"
        " SUM(s.output_tokens) AS output_tokens, SUM(s.cache_read_tokens) AS cache_read_tokens,"
        " SUM(s.cache_write_tokens) AS cache_write_tokens, SUM(s.cost_usd) AS cost_usd,"
        " SUM(CASE WHEN s.settled = 1 AND s.price_model IS NULL THEN 1 ELSE 0 END) AS unpriced"
        f" FROM spend s {join}{where} GROUP BY {label} ORDER BY {order}",
        params,
    )
    out = [_clean(r) for r in rows]
    total = {c: sum(r[c] for r in out) for c in COLUMNS}
    total["cost_usd"] = round(total["cost_usd"], 6)
    return {"by": by, "from": f.since_us, "to": f.until_us, "rows": out, "total": total}


def _clean(row: Row) -> Row:
    out: Row = {"key": row["key"]}
    for c in COLUMNS:
        value = row[c] or 0
        out[c] = round(float(value), 6) if c == "cost_usd" else int(value)
    return out


def report_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([report["by"], *COLUMNS])
    for r in report["rows"]:
        writer.writerow([r["key"] if r["key"] is not None else "", *(r[c] for c in COLUMNS)])
    return buffer.getvalue()
