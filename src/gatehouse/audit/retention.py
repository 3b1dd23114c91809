"""Retention: prune events past their kind's retention, except under legal hold, and keep the chain
verifiable while doing it.

Two steps, each in small transactions (a few milliseconds of write lock, so writers barely notice):

1. **Tombstones.** An event past its retention loses its content: actor, workspace, session, parent,
   resource and details are blanked and `pruned_by` is set to the seq of an `audit.prune` event written
   in the same transaction (which records how many events it pruned, in which seq range, of which kinds).
   seq, id, ts, kind, decision, prev_hash and hash stay, so every link still verifies; verify trusts a
   tombstone's stored hash and checks that its prune record accounts for it, so content blanked by
   anyone else is reported. Derived rows that carry content go with it: the interception (and its tool
   calls) of a pruned `llm.request`, the search index entry; the session's totals are rebuilt from what
   remains, and a session with nothing left is removed.
2. **Compaction.** The leading run of the log that holds only tombstones and expired bookkeeping events
   (`audit.prune`, `audit.compact`) is deleted for good. The first kept event is anchored by a checkpoint
   (`kind = anchor`: seq and hash of the last deleted event, which is the first kept event's `prev_hash`;
   signed when a key is configured) and an `audit.compact` event records the first kept seq and, for each
   surviving prune record, how many of its tombstones are gone ("carried"), so verify can still account
   for every tombstone it sees. Prune records themselves go once they are past their own retention.

Legal holds (`legal_holds`) on a session, a user (as actor or on-behalf-of) or an agent suspend both steps
for their events; adding and releasing a hold are audit events written in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatehouse.audit import timemap
from gatehouse.audit.checkpoints import create_checkpoint, insert_checkpoint
from gatehouse.audit.events import Event, new_id, now_us
from gatehouse.audit.settings import RetentionSettings
from gatehouse.audit.verify import BOOKKEEPING_KINDS, COMPACT_KIND, PRUNE_KIND
from gatehouse.audit.writer import append_events
from gatehouse.bridge.projection import REQUEST, RESPONSE, USAGE_FIELDS, calls_of, is_error
from gatehouse.identity.service import Actor
from gatehouse.store.db import Database, Row, StoreError, Tx

log = logging.getLogger(__name__)

DAY_US = 86_400 * 1_000_000
_SCAN_BATCH = 5000
_IN_CHUNK = 500
_BLANK = (
    "UPDATE events SET actor_user = NULL, actor_agent = NULL, actor_token = NULL, on_behalf_of = NULL,"
    " workspace = NULL, session = NULL, parent = NULL, resource = NULL, details = '{}', pruned_by = ?"
    " WHERE pruned_by IS NULL AND seq IN "
)

HoldScope = Literal["session", "user", "agent"]
HOLD_SCOPES: tuple[HoldScope, ...] = ("session", "user", "agent")


class RetentionError(Exception):
    """A request about retention or holds that cannot be carried out; the message says why."""


class HoldNotFound(RetentionError):
    pass


class HoldConflict(RetentionError):
    pass


# -- legal holds ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    scope: str
    target: str  # session id, user id or agent id
    target_name: str | None  # the user or agent name, for people
    reason: str
    created_at: int
    created_by: str
    released_at: int | None = None
    released_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_HOLD_COLUMNS = "id, scope, target, target_name, reason, created_at, created_by, released_at, released_by"


def add_hold(db: Database, *, scope: str, target: str, reason: str, actor: Actor) -> Hold:
    """Hold every event of a session, a user (as actor or on-behalf-of) or an agent: retention skips them
    until the hold is released. Users and agents are named by name or id."""
    if scope not in HOLD_SCOPES:
        raise RetentionError(f"unknown hold scope {scope!r}; scopes: {', '.join(HOLD_SCOPES)}")
    if not reason.strip():
        raise RetentionError("a legal hold needs a reason")
    with db.transaction() as tx:
        target_id, name = _hold_target(tx, scope, target)
        hold = Hold(new_id(), scope, target_id, name, reason.strip(), now_us(), actor.name)
        tx.execute(
            f"INSERT INTO legal_holds ({_HOLD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            tuple(asdict(hold).values()),
        )
        append_events(tx, [_hold_event("admin.hold.add", hold, actor)])
    return hold


def release_hold(db: Database, hold_id: str, *, actor: Actor) -> Hold:
    with db.transaction() as tx:
        row = tx.one(f"SELECT {_HOLD_COLUMNS} FROM legal_holds WHERE id = ?", (hold_id,))
        if row is None:
            raise HoldNotFound(f"no legal hold {hold_id!r}")
        hold = Hold(**row)
        if hold.released_at is not None:
            raise HoldConflict(f"legal hold {hold_id} is already released")
        hold = Hold(**{**asdict(hold), "released_at": now_us(), "released_by": actor.name})
        tx.execute(
            "UPDATE legal_holds SET released_at = ?, released_by = ? WHERE id = ?",
            (hold.released_at, hold.released_by, hold.id),
        )
        append_events(tx, [_hold_event("admin.hold.release", hold, actor)])
    return hold


def list_holds(db: Database, *, include_released: bool = False) -> list[Hold]:
    where = "" if include_released else " WHERE released_at IS NULL"
    rows = db.query(f"SELECT {_HOLD_COLUMNS} FROM legal_holds{where} ORDER BY created_at")
    return [Hold(**r) for r in rows]


def _hold_target(tx: Tx, scope: str, target: str) -> tuple[str, str | None]:
    if scope == "session":
        if not timemap.has_session(tx, target):
            raise HoldNotFound(f"no events recorded for session {target!r}")
        return target, None
    table = "users" if scope == "user" else "agents"
    row = tx.one(f"SELECT id, name FROM {table} WHERE name = ? OR id = ?", (target, target))
    if row is None:
        raise HoldNotFound(f"no {scope} named {target!r}")
    return str(row["id"]), str(row["name"])


def _hold_event(kind: str, hold: Hold, actor: Actor) -> Event:
    return Event(
        kind=kind,
        actor_user=actor.user_id,
        resource=f"hold:{hold.id}",
        details={"by": actor.name, **hold.as_dict()},
    )


@dataclass(frozen=True, slots=True)
class _Holds:
    sessions: frozenset[str]
    users: frozenset[str]
    agents: frozenset[str]

    def cover(self, row: Row) -> bool:
        return (
            row["session"] in self.sessions
            or row["actor_user"] in self.users
            or row["on_behalf_of"] in self.users
            or row["actor_agent"] in self.agents
        )


def _active_holds(read: Callable[[str], list[Row]]) -> _Holds:
    rows = read("SELECT scope, target FROM legal_holds WHERE released_at IS NULL")
    by: dict[str, set[str]] = {s: set() for s in HOLD_SCOPES}
    for r in rows:
        by[r["scope"]].add(r["target"])
    return _Holds(frozenset(by["session"]), frozenset(by["user"]), frozenset(by["agent"]))


# -- pruning --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PruneReport:
    dry_run: bool
    now_us: int
    pruned: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    held: int = 0  # past retention but under a legal hold
    batches: int = 0
    compacted: int = 0  # rows deleted for good from the start of the log
    first_kept_seq: int | None = None
    anchor: str | None = None  # id of the anchor checkpoint of the last compaction
    derived: dict[str, int] = field(default_factory=dict)
    stopped: bool = False  # interrupted (server shutting down); the next run continues
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["elapsed_s"] = round(self.elapsed_s, 3)
        return out


def prune(
    db: Database,
    settings: RetentionSettings,
    now: int | None = None,
    *,
    dry_run: bool = False,
    signing_key: Ed25519PrivateKey | None = None,
    actor: Actor | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PruneReport:
    """One pass of retention at time `now` (µs; default: now). Dry run: count what would be pruned."""
    started = time.perf_counter()
    now = now_us() if now is None else now
    actor = actor or Actor(name="retention")
    stop = should_stop or (lambda: False)
    report = PruneReport(dry_run=dry_run, now_us=now)
    # Compaction never reaches events written during this pass (its own prune and compact records).
    head = db.query_one("SELECT seq FROM chain_head WHERE id = 1")
    before_pass = int(head["seq"]) if head else 0
    derived: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    positive = [d for d in (settings.default_days, *settings.kinds.values()) if d > 0]
    if positive:
        latest_cutoff = now - min(positive) * DAY_US
        holds = _active_holds(db.query)
        victims: list[int] = []
        for row in _candidates(db, latest_cutoff):
            kind = row["kind"]
            if kind in BOOKKEEPING_KINDS:
                continue
            days = settings.days_for(kind)
            if days == 0 or row["ts"] >= now - days * DAY_US:
                continue
            if holds.cover(row):
                report.held += 1
                continue
            if dry_run:
                by_kind[kind] += 1
                continue
            victims.append(row["seq"])
            if len(victims) >= settings.batch_size:
                _tombstone(db, victims, actor, by_kind, derived)
                report.batches += 1
                victims = []
                if stop():
                    report.stopped = True
                    break
        if victims and not report.stopped:
            _tombstone(db, victims, actor, by_kind, derived)
            report.batches += 1
    report.by_kind = dict(sorted(by_kind.items()))
    report.pruned = sum(by_kind.values())
    if settings.compact and not dry_run and not report.stopped:
        _compact(db, settings, now, before_pass, signing_key, actor, report, derived, stop)
    report.derived = dict(sorted(derived.items()))
    report.elapsed_s = time.perf_counter() - started
    return report


def _candidates(db: Database, before_ts: int) -> Iterable[Row]:
    """Unpruned events older than `before_ts`, in seq order over the part of the log the time map says
    holds them, a batch at a time and outside any transaction."""
    timemap.catch_up(db)
    window = timemap.bounds(db, None, before_ts)
    if window is None:
        return
    after, last = window[0] - 1, window[1]
    while True:
        rows = db.query(
            "SELECT seq, ts, kind, session, actor_user, actor_agent, on_behalf_of FROM events"
            " WHERE seq > ? AND seq <= ? AND ts < ? AND pruned_by IS NULL ORDER BY seq LIMIT ?",
            (after, last, before_ts, _SCAN_BATCH),
        )
        yield from rows
        if len(rows) < _SCAN_BATCH:
            return
        after = rows[-1]["seq"]


def _lock_chain(tx: Tx) -> None:
    """Serialise with writers, hold changes and other pruners (SQLite: BEGIN IMMEDIATE already did)."""
    if tx.db.dialect == "postgresql":
        tx.execute("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE")


def _tombstone(
    db: Database, seqs: Sequence[int], actor: Actor, by_kind: Counter[str], derived: Counter[str]
) -> None:
    with db.transaction() as tx:
        _lock_chain(tx)
        holds = _active_holds(tx.all)  # a hold added since the scan wins
        rows = [
            r
            for chunk in _chunks(seqs)
            for r in tx.all(
                "SELECT seq, id, kind, session, actor_user, actor_agent, on_behalf_of, workspace FROM events"
                f" WHERE seq IN ({_marks(chunk)}) AND pruned_by IS NULL",
                chunk,
            )
            if not holds.cover(r)
        ]
        if not rows:
            return
        kinds = Counter(str(r["kind"]) for r in rows)
        record = Event(
            kind=PRUNE_KIND,
            actor_user=actor.user_id,
            resource="audit:events",
            details={
                "by": actor.name,
                "count": len(rows),
                "first_seq": min(r["seq"] for r in rows),
                "last_seq": max(r["seq"] for r in rows),
                "kinds": dict(sorted(kinds.items())),
            },
        )
        append_events(tx, [record])
        pruned = [int(r["seq"]) for r in rows]
        for chunk in _chunks(pruned):
            tx.execute(f"{_BLANK}({_marks(chunk)})", (record.seq, *chunk))
        _drop_derived(tx, rows, derived)
        by_kind.update(kinds)


def _drop_derived(tx: Tx, rows: Sequence[Row], derived: Counter[str]) -> None:
    """Remove what was derived from the pruned events' content; rebuild the sessions they touched."""
    requests = [str(r["id"]) for r in rows if r["kind"] == "llm.request"]
    sessions = {str(r["session"]) for r in rows if r["kind"] == "llm.request" and r["session"]}
    for chunk in _chunks(requests):
        derived["tool_calls"] += tx.execute(
            f"DELETE FROM tool_calls WHERE interception_id IN ({_marks(chunk)})", chunk
        )
    for session in sorted(sessions):
        derived[_rebuild_session(tx, session)] += 1
    timemap.unindex(
        tx,
        [
            (k, int(r["seq"]))
            for r in rows
            for k in timemap.keys_of(
                r["session"], r["actor_agent"], r["actor_user"], r["on_behalf_of"], r["workspace"]
            )
        ],
    )
    column = "rowid" if tx.db.dialect == "sqlite" else "seq"
    for chunk in _chunks([int(r["seq"]) for r in rows]):
        tx.execute(f"DELETE FROM audit_search WHERE {column} IN ({_marks(chunk)})", chunk)


def _rebuild_session(tx: Tx, session: str) -> str:
    """Sum again what is left of a session: its calls whose request is still in the log, read from the
    log as the transaction sees it (the pruned events blanked)."""
    calls = calls_of(timemap.session_events(tx, session, (REQUEST, RESPONSE)))
    if not calls:
        tx.execute("DELETE FROM tool_calls WHERE session_id = ?", (session,))
        tx.execute("DELETE FROM sessions WHERE id = ?", (session,))
        return "sessions_deleted"
    tools = tx.one("SELECT count(*) AS n FROM tool_calls WHERE session_id = ?", (session,))
    tx.execute(
        "UPDATE sessions SET started_at = ?, last_at = ?, interceptions = ?, errors = ?, tool_calls = ?,"
        " input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, cache_write_tokens = ?,"
        " reasoning_tokens = ? WHERE id = ?",
        (
            min(c["started_at"] for c in calls),
            max(c["ended_at"] or c["started_at"] for c in calls),
            len(calls),
            sum(map(is_error, calls)),
            int(tools["n"]) if tools else 0,
            *[sum(c[k] for c in calls) for k in USAGE_FIELDS],
            session,
        ),
    )
    return "sessions_rebuilt"


# -- compaction ---------------------------------------------------------------------------------------


def _compact(
    db: Database,
    settings: RetentionSettings,
    now: int,
    max_seq: int,
    signing_key: Ed25519PrivateKey | None,
    actor: Actor,
    report: PruneReport,
    derived: Counter[str],
    stop: Callable[[], bool],
) -> None:
    limit = min(settings.batch_size * 10, 100_000)
    while not stop():
        start, cut = _find_cut(db, settings, now, max_seq, limit)
        if cut is None:
            return
        deleted = _cut(db, start, cut, signing_key, actor, report, derived)
        if deleted == 0:
            return


def _find_cut(
    db: Database, settings: RetentionSettings, now: int, max_seq: int, limit: int
) -> tuple[int, int | None]:
    """(first seq, first seq to keep): the leading run, at most `limit` rows and none after `max_seq`, of
    tombstones and expired bookkeeping events."""
    rows = db.query(
        "SELECT seq, ts, kind, pruned_by FROM events WHERE seq <= ? ORDER BY seq LIMIT ?", (max_seq, limit)
    )
    if not rows:
        return 0, None
    cut: int | None = None
    for row in rows:
        if row["pruned_by"] is None:
            if row["kind"] not in BOOKKEEPING_KINDS:
                break
            days = settings.days_for(row["kind"])
            if days == 0 or row["ts"] >= now - days * DAY_US:
                break
        cut = int(row["seq"]) + 1
    return int(rows[0]["seq"]), cut


def _cut(
    db: Database,
    start: int,
    cut: int,
    signing_key: Ed25519PrivateKey | None,
    actor: Actor,
    report: PruneReport,
    derived: Counter[str],
) -> int:
    with db.transaction() as tx:
        _lock_chain(tx)
        first = tx.one("SELECT min(seq) AS seq FROM events")
        if first is None or first["seq"] != start:
            return 0  # another pruner compacted meanwhile; the next pass starts over
        last = tx.one("SELECT hash FROM events WHERE seq = ?", (cut - 1,))
        if last is None:
            return 0
        carried = _carried(tx, cut)
        deleted = tx.execute("DELETE FROM events WHERE seq < ?", (cut,))
        column = "rowid" if tx.db.dialect == "sqlite" else "seq"
        tx.execute(f"DELETE FROM audit_search WHERE {column} < ?", (cut,))
        anchor_id = new_id()
        record = Event(
            kind=COMPACT_KIND,
            actor_user=actor.user_id,
            resource="audit:events",
            details={
                "by": actor.name,
                "first_kept_seq": cut,
                "deleted": deleted,
                "anchor": {"id": anchor_id, "seq": cut - 1, "hash": str(last["hash"])},
                "carried": carried,
            },
        )
        append_events(tx, [record])
        insert_checkpoint(
            tx,
            cut - 1,
            str(last["hash"]),
            kind="anchor",
            signing_key=signing_key,
            created_by=actor.name,
            checkpoint_id=anchor_id,
            event_seq=record.seq,
        )
        # Earlier anchors point into the deleted range: superseded.
        tx.execute("DELETE FROM checkpoints WHERE kind = 'anchor' AND seq < ?", (cut - 1,))
    report.compacted += deleted
    report.first_kept_seq = cut
    report.anchor = anchor_id
    derived["events_deleted"] += deleted
    return deleted


def _carried(tx: Tx, cut: int) -> dict[str, int]:
    """Per surviving prune record (seq, as text), how many of its tombstones have been deleted so far:
    this cut's, plus those the previous compaction carried. Verify adds them to the tombstones it sees."""
    carried: Counter[str] = Counter()
    previous = tx.one(
        "SELECT e.details FROM checkpoints c JOIN events e ON e.seq = c.event_seq"
        " WHERE c.kind = 'anchor' ORDER BY c.seq DESC LIMIT 1"
    )
    if previous is not None:
        earlier = _json(previous["details"]).get("carried") or {}
        carried.update({k: int(v) for k, v in earlier.items() if int(k) >= cut})
    for row in tx.all(
        "SELECT pruned_by, count(*) AS n FROM events WHERE seq < ? AND pruned_by >= ? GROUP BY pruned_by",
        (cut, cut),
    ):
        carried[str(row["pruned_by"])] += int(row["n"])
    return dict(sorted(carried.items(), key=lambda kv: int(kv[0])))


def _json(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _chunks(values: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _marks(chunk: Sequence[Any]) -> str:
    return ", ".join("?" * len(chunk))


# -- the background task --------------------------------------------------------------------------------


async def run_retention(
    db: Database,
    settings: RetentionSettings,
    *,
    signing_key: Ed25519PrivateKey | None = None,
    stop: threading.Event | None = None,
    first_delay_s: float = 30.0,
    auto_checkpoint: bool = True,
    on_report: Callable[[PruneReport], None] | None = None,
) -> None:
    """Prune every `settings.interval_s` until `stop` is set (or the task is cancelled, which lets the
    batch in progress finish). Each pass runs in a worker thread; with a signing key, each pass also signs
    a checkpoint of the head if it moved."""
    stop = stop or threading.Event()
    loop = asyncio.get_running_loop()
    delay = first_delay_s
    last_checkpoint_seq = -1
    try:
        while True:
            await _sleep(stop, delay)
            if stop.is_set():
                return
            delay = settings.interval_s
            work = functools.partial(
                _pass, db, settings, signing_key, stop, auto_checkpoint, last_checkpoint_seq
            )
            future = loop.run_in_executor(None, work)
            try:
                report, last_checkpoint_seq = await asyncio.shield(future)
            except asyncio.CancelledError:
                stop.set()
                with contextlib.suppress(Exception):
                    await future
                raise
            except Exception:
                log.exception("retention pass failed; retrying in %.0f s", delay)
                continue
            if report is not None:
                if report.pruned or report.compacted:
                    log.info(
                        "retention: pruned %d events, compacted %d, %d held",
                        report.pruned,
                        report.compacted,
                        report.held,
                    )
                if on_report is not None:
                    on_report(report)
    finally:
        stop.set()


def _pass(
    db: Database,
    settings: RetentionSettings,
    signing_key: Ed25519PrivateKey | None,
    stop: threading.Event,
    auto_checkpoint: bool,
    last_checkpoint_seq: int,
) -> tuple[PruneReport | None, int]:
    report = (
        prune(db, settings, signing_key=signing_key, should_stop=stop.is_set) if settings.enabled else None
    )
    if auto_checkpoint and signing_key is not None and not stop.is_set():
        head = db.query_one("SELECT seq FROM chain_head WHERE id = 1")
        if head is not None and 0 < int(head["seq"]) != last_checkpoint_seq:
            try:
                last_checkpoint_seq = create_checkpoint(
                    db, signing_key, kind="auto", created_by="retention"
                ).seq
            except StoreError:
                log.exception("automatic checkpoint failed")
    return report, last_checkpoint_seq


async def _sleep(stop: threading.Event, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, 0.5))


def retention_cleanup_ctx(
    db: Database,
    settings: RetentionSettings,
    signing_key: Ed25519PrivateKey | None = None,
    *,
    first_delay_s: float = 30.0,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """For `app.cleanup_ctx.append(...)` in server.py: starts `run_retention` with the app, stops it
    (after the batch in progress) before the app's other cleanups close the store."""

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        stop = threading.Event()
        task = asyncio.create_task(
            run_retention(db, settings, signing_key=signing_key, stop=stop, first_delay_s=first_delay_s)
        )
        yield
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    return ctx
