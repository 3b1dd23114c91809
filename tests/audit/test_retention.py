"""Retention prunes exactly what the policy says, spares what is held, and leaves a verifiable chain."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatehouse.audit.events import Event, now_us
from gatehouse.audit.retention import (
    DAY_US,
    HoldConflict,
    HoldNotFound,
    PruneReport,
    RetentionError,
    add_hold,
    list_holds,
    prune,
    release_hold,
    retention_cleanup_ctx,
    run_retention,
)
from gatehouse.audit.search import project_search_index
from gatehouse.audit.settings import RetentionSettings
from gatehouse.audit.verify import verify_database
from gatehouse.audit.writer import AuditWriter, append_events
from gatehouse.bridge.projection import project_bridge_events
from gatehouse.bridge.sessions import show_session
from gatehouse.identity.service import Actor, IdentityService
from gatehouse.store.db import Database

OPERATOR = Actor(name="test")
POLICY = RetentionSettings(default_days=60, kinds={"llm.*": 30, "admin.*": 0, "auth.failure": 7})
PROJECTIONS = [project_bridge_events, project_search_index]


def call(session: str, ts: int, *, user: str | None, agent: str | None, prompt: str) -> list[Event]:
    """An LLM call as the Bridge records it: request, then response with a tool call."""
    request = Event(
        kind="llm.request",
        ts=ts,
        session=session,
        actor_user=user,
        actor_agent=agent,
        details={"route": "messages", "provider": "anthropic", "model": "m", "last_prompt": prompt},
    )
    response = Event(
        kind="llm.response",
        ts=ts + 1000,
        session=session,
        actor_user=user,
        actor_agent=agent,
        parent=request.id,
        details={
            "status": 200,
            "usage": {"input_tokens": 10, "output_tokens": 5},
            "tool_calls": [{"id": f"tc-{request.id}", "name": "bash", "arguments": f"echo {prompt}"}],
        },
    )
    return [request, response]


class World:
    """Users, an agent, and events of various kinds and ages around `now`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.now = now_us()
        identity = IdentityService(db)
        self.alice = identity.create_user("alice", actor=OPERATOR)["id"]
        self.carol = identity.create_user("carol", actor=OPERATOR)["id"]
        self.bot = identity.create_agent("bot", owner="alice", actor=OPERATOR)["id"]
        old, recent = self.now - 90 * DAY_US, self.now - DAY_US
        self.old_a = call("sess-a", old, user=self.alice, agent=self.bot, prompt="refactor billing")
        self.old_b = call("sess-b", old + 10, user=self.alice, agent=None, prompt="drop the staging table")
        self.old_carol = call("sess-c", old + 20, user=self.carol, agent=None, prompt="carol asks")
        self.new_a = call("sess-a", recent, user=self.alice, agent=self.bot, prompt="recent work")
        self.other = [
            Event(kind="auth.failure", decision="deny", ts=self.now - 10 * DAY_US, details={"reason": "x"}),
            Event(kind="auth.failure", decision="deny", ts=self.now - 5 * DAY_US, details={"reason": "y"}),
            Event(kind="test.other", ts=self.now - 45 * DAY_US),
            Event(kind="test.other", ts=self.now - 70 * DAY_US),
            Event(kind="admin.thing", ts=self.now - 400 * DAY_US, details={"name": "kept forever"}),
        ]
        with db.transaction() as tx:
            append_events(tx, self.old_a + self.old_b + self.old_carol + self.new_a + self.other, PROJECTIONS)

    def ids(self, *groups: list[Event]) -> set[str]:
        return {e.id for g in groups for e in g}

    def pruned_ids(self) -> set[str]:
        return {r["id"] for r in self.db.query("SELECT id FROM events WHERE pruned_by IS NOT NULL")}


def test_prune_follows_the_policy_and_cleans_derived_rows(db: Database) -> None:
    w = World(db)
    dry = prune(db, POLICY, w.now, dry_run=True)
    assert dry.dry_run and dry.pruned == 8 and not w.pruned_ids()

    report = prune(db, POLICY, w.now)
    expected = w.ids(w.old_a, w.old_b, w.old_carol) | {w.other[0].id, w.other[3].id}
    assert w.pruned_ids() == expected
    assert report.pruned == len(expected) == dry.pruned
    assert report.by_kind == {"auth.failure": 1, "llm.request": 3, "llm.response": 3, "test.other": 1}
    assert report.held == 0

    tombstone = db.query_one("SELECT * FROM events WHERE id = ?", (w.old_b[0].id,))
    assert tombstone is not None
    assert tombstone["details"] == "{}" and tombstone["session"] is None and tombstone["actor_user"] is None
    assert tombstone["kind"] == "llm.request" and tombstone["hash"]

    # Derived rows: the pruned calls are gone, the session with nothing left is gone, the other rebuilt.
    assert db.query("SELECT interception_id FROM tool_calls") == [{"interception_id": w.new_a[0].id}]
    assert show_session(db, "sess-b") is None
    shown = show_session(db, "sess-a")
    assert shown is not None
    assert shown["session"]["interceptions"] == 1 and shown["session"]["tool_calls"] == 1
    # Summed again from what the log still holds of the session: the recent call alone.
    assert (shown["session"]["input_tokens"], shown["session"]["output_tokens"]) == (10, 5)
    assert shown["session"]["started_at"] == w.new_a[0].ts and shown["session"]["last_at"] == w.new_a[1].ts
    assert [i["id"] for i in shown["interceptions"]] == [w.new_a[0].id]
    assert not db.query(f"SELECT 1 FROM audit_search WHERE {_search_key(db)} = ?", (w.old_b[0].seq,))

    check = verify_database(db)
    assert check.ok, check.breaks
    assert check.pruned == len(expected) and check.prune_records == report.batches == 1

    # A second pass finds nothing more to do.
    again = prune(db, POLICY, w.now)
    assert again.pruned == 0 and again.batches == 0


def test_legal_holds_suspend_pruning_until_released(db: Database) -> None:
    w = World(db)
    session_hold = add_hold(db, scope="session", target="sess-b", reason="litigation 42", actor=OPERATOR)
    user_hold = add_hold(db, scope="user", target="carol", reason="HR inquiry", actor=OPERATOR)
    assert user_hold.target == w.carol and user_hold.target_name == "carol"
    assert [h.id for h in list_holds(db)] == [session_hold.id, user_hold.id]
    events = db.query(
        "SELECT kind, resource FROM events WHERE kind IN ('admin.hold.add', 'admin.hold.release')"
        " ORDER BY seq"
    )
    assert events == [
        {"kind": "admin.hold.add", "resource": f"hold:{session_hold.id}"},
        {"kind": "admin.hold.add", "resource": f"hold:{user_hold.id}"},
    ]

    report = prune(db, POLICY, w.now)
    assert report.held == 4
    assert w.pruned_ids() == w.ids(w.old_a) | {w.other[0].id, w.other[3].id}
    assert show_session(db, "sess-b") is not None and show_session(db, "sess-c") is not None

    released = release_hold(db, session_hold.id, actor=OPERATOR)
    assert released.released_at is not None and released.released_by == "test"
    with pytest.raises(HoldConflict):
        release_hold(db, session_hold.id, actor=OPERATOR)
    assert [h.id for h in list_holds(db)] == [user_hold.id]
    assert len(list_holds(db, include_released=True)) == 2

    prune(db, POLICY, w.now)
    assert w.ids(w.old_b) <= w.pruned_ids()
    assert not w.ids(w.old_carol) & w.pruned_ids()
    assert verify_database(db).ok


def test_agent_hold_and_bad_holds(db: Database) -> None:
    w = World(db)
    add_hold(db, scope="agent", target="bot", reason="incident 7", actor=OPERATOR)
    prune(db, POLICY, w.now)
    assert not w.ids(w.old_a) & w.pruned_ids()
    with pytest.raises(HoldNotFound):
        add_hold(db, scope="user", target="nobody", reason="x", actor=OPERATOR)
    with pytest.raises(HoldNotFound):
        add_hold(db, scope="session", target="no-such-session", reason="x", actor=OPERATOR)
    with pytest.raises(RetentionError, match="reason"):
        add_hold(db, scope="session", target="sess-a", reason=" ", actor=OPERATOR)
    with pytest.raises(HoldNotFound):
        release_hold(db, "nope", actor=OPERATOR)


def test_small_batches_write_one_prune_record_each(db: Database) -> None:
    w = World(db)
    small = RetentionSettings(**{**POLICY.model_dump(), "batch_size": 3})
    report = prune(db, small, w.now)
    assert report.batches == 3 and report.pruned == 8
    check = verify_database(db)
    assert check.ok and check.prune_records == 3


def test_compaction_deletes_the_leading_run_under_a_signed_anchor(db: Database) -> None:
    key = Ed25519PrivateKey.generate()
    now = now_us()
    old = [Event(kind="test.noise", ts=now - 100 * DAY_US, details={"i": i}) for i in range(30)]
    held = call("sess-h", now - 100 * DAY_US, user=None, agent=None, prompt="held")
    later = [Event(kind="test.noise", ts=now - 100 * DAY_US, details={"i": i}) for i in range(30, 40)]
    with db.transaction() as tx:
        append_events(tx, old + held + later, PROJECTIONS)
    hold = add_hold(db, scope="session", target="sess-h", reason="keep", actor=OPERATOR)
    policy = RetentionSettings(default_days=60, batch_size=7)

    # The leading run of tombstones goes, up to the held call; prune records stay (they are recent).
    first = prune(db, policy, now, signing_key=key)
    assert first.pruned == 40 and first.batches == 6
    assert first.compacted == 30 and first.first_kept_seq == 31
    remaining = db.query("SELECT seq, kind FROM events ORDER BY seq LIMIT 1")
    assert remaining == [{"seq": 31, "kind": "llm.request"}]
    anchor = db.query_one("SELECT seq, kind, signature FROM checkpoints WHERE kind = 'anchor'")
    assert anchor is not None and anchor["seq"] == 30 and anchor["signature"]
    report = verify_database(db, public_key=key.public_key())
    assert report.ok, report.breaks
    assert (report.first_seq, report.anchored_at, report.prune_records) == (31, 30, 6)
    assert report.pruned == 10 and report.checkpoints_verified == 1

    # Two months on, with the hold released: the held call, the old prune and compact records go too.
    release_hold(db, hold.id, actor=OPERATOR)
    second = prune(db, policy, now + 61 * DAY_US, signing_key=key)
    assert second.compacted > 0 and second.first_kept_seq is not None
    assert len(db.query("SELECT id FROM checkpoints WHERE kind = 'anchor'")) == 1
    report = verify_database(db, public_key=key.public_key())
    assert report.ok, report.breaks
    assert report.first_seq == second.first_kept_seq and report.anchored_at == report.first_seq - 1

    # Deleting the first kept event is still caught, at its place.
    start = report.first_seq
    with db.transaction() as tx:
        tx.execute("DELETE FROM events WHERE seq = ?", (start,))
    first_break = verify_database(db).first
    assert first_break is not None
    assert (first_break.kind, first_break.seq) == ("deleted", start)


def test_compacted_tombstones_still_account_for_forgeries(db: Database) -> None:
    now = now_us()
    with db.transaction() as tx:
        append_events(tx, [Event(kind="test.noise", ts=now - 100 * DAY_US) for _ in range(10)])
        append_events(tx, [Event(kind="admin.keep", ts=now - 100 * DAY_US)])
        append_events(tx, [Event(kind="test.noise", ts=now - 100 * DAY_US) for _ in range(10)])
    report = prune(db, RetentionSettings(kinds={"admin.*": 0}, batch_size=100), now)
    assert report.compacted == 10 and report.first_kept_seq == 11
    record = db.query_one("SELECT seq FROM events WHERE kind = 'audit.prune'")
    assert record is not None
    assert verify_database(db).ok
    # Blank the kept event as if the same record had pruned it: one tombstone too many.
    with db.transaction() as tx:
        tx.execute("UPDATE events SET details = '{}', pruned_by = ? WHERE seq = 11", (record["seq"],))
    first_break = verify_database(db).first
    assert first_break is not None
    assert (first_break.kind, first_break.seq) == ("pruned", 11)


def test_pruning_alongside_a_busy_writer_keeps_one_chain(db: Database) -> None:
    now = now_us()
    with db.transaction() as tx:
        append_events(
            tx, [Event(kind="test.old", ts=now - 90 * DAY_US, details={"i": i}) for i in range(300)]
        )
    writer = AuditWriter(db, projections=PROJECTIONS)
    writer.start()
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            writer.append_sync(Event(kind="test.new", details={"i": i}))
            i += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        report = prune(db, RetentionSettings(batch_size=20), now)
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert report.pruned == 300 and report.batches == 15
    assert verify_database(db).ok


async def test_background_task_prunes_and_signs_checkpoints(db: Database) -> None:
    key = Ed25519PrivateKey.generate()
    with db.transaction() as tx:
        append_events(tx, [Event(kind="test.old", ts=now_us() - 90 * DAY_US) for _ in range(5)])
    reports: list[PruneReport] = []
    stop = threading.Event()

    def seen(report: PruneReport) -> None:
        reports.append(report)
        stop.set()

    await asyncio.wait_for(
        run_retention(db, RetentionSettings(), signing_key=key, stop=stop, first_delay_s=0, on_report=seen),
        timeout=20,
    )
    assert reports and reports[0].pruned == 5 and reports[0].compacted == 5
    checkpoints = db.query("SELECT kind, signature FROM checkpoints ORDER BY seq")
    assert [c["kind"] for c in checkpoints] == ["anchor", "auto"]
    assert all(c["signature"] for c in checkpoints)
    report = verify_database(db, public_key=key.public_key())
    assert report.ok and report.checkpoints_verified == 2


async def test_cleanup_ctx_runs_retention_with_the_app(db: Database) -> None:
    with db.transaction() as tx:
        append_events(tx, [Event(kind="test.old", ts=now_us() - 90 * DAY_US)])
    app = web.Application()
    app.cleanup_ctx.append(retention_cleanup_ctx(db, RetentionSettings(interval_s=0.05), first_delay_s=0))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        for _ in range(100):
            if db.query("SELECT 1 AS x FROM events WHERE kind = 'audit.prune'"):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("retention did not run")
    finally:
        started = time.monotonic()
        await runner.cleanup()
    assert time.monotonic() - started < 2
    assert verify_database(db).ok


def test_retention_settings_resolve_kinds() -> None:
    policy = RetentionSettings(default_days=60, kinds={"llm.*": 30, "llm.request": 90, "admin.*": 0})
    assert policy.days_for("llm.request") == 90
    assert policy.days_for("llm.response") == 30
    assert policy.days_for("admin.user.create") == 0
    assert policy.days_for("auth.failure") == 60
    with pytest.raises(ValueError, match="not an event kind"):
        RetentionSettings(kinds={"llm*": 3})


def _search_key(db: Database) -> str:
    return "rowid" if db.dialect == "sqlite" else "seq"
