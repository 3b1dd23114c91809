"""The projector brings derived tables up to date after the fact: exactly once, whatever the batches, however
many run at once, and skipping what retention pruned."""

from __future__ import annotations

import random
import threading
from typing import Any

from gatehouse.audit import timemap, worker
from gatehouse.audit.events import Event
from gatehouse.audit.projector import Projector
from gatehouse.audit.writer import append_events
from gatehouse.bridge.projection import calls_of, project_bridge_events
from gatehouse.policy.spend import SpendProjection
from gatehouse.server import derived_tables
from gatehouse.store.db import Database

DERIVED = ("sessions", "tool_calls", "spend")


def calls(n: int, seed: int = 7) -> list[Event]:
    """`n` LLM calls across a few sessions, interleaved as concurrent calls are: some refused, some
    failed, some asking for tools, each response after its request."""
    rng = random.Random(seed)
    started: list[Event] = []
    out: list[Event] = []
    ts = 1_700_000_000_000_000
    for i in range(n):
        ts += rng.randint(1, 5000)
        session = f"s-{rng.randint(1, 6)}"
        refused = rng.random() < 0.1
        request = Event(
            kind="llm.request",
            decision="deny" if refused else "allow",
            ts=ts,
            session=session,
            actor_user="u-1",
            actor_agent=f"a-{rng.randint(1, 3)}",
            resource="llm:anthropic/claude-sonnet-5",
            details={
                "route": "messages",
                "provider": "anthropic",
                "client": "claude-code",
                "model": rng.choice(["claude-sonnet-5", "claude-haiku-5"]),
                "stream": bool(i % 2),
                "last_prompt": f"prompt {i}",
                **({"status": 403, "error": "not allowed"} if refused else {}),
            },
        )
        out.append(request)
        if not refused:
            started.append(request)
        # Answer a random earlier call now and then, so responses land in later batches than requests.
        while started and (rng.random() < 0.6 or i == n - 1):
            req = started.pop(rng.randrange(len(started)))
            ts += rng.randint(1, 5000)
            tools = [{"id": f"toolu-{req.id}-{k}", "name": "bash", "arguments": "{}"} for k in range(i % 3)]
            status = 500 if rng.random() < 0.1 else 200
            out.append(
                Event(
                    kind="llm.response",
                    decision="error" if status >= 400 else "allow",
                    ts=ts,
                    session=req.session,
                    parent=req.id,
                    actor_user=req.actor_user,
                    actor_agent=req.actor_agent,
                    resource=req.resource,
                    details={
                        "status": status,
                        "error": "upstream error: overloaded" if status >= 400 else None,
                        "latency_ms": 12.5,
                        "usage": {"input_tokens": 100 + i, "output_tokens": 10 + i, "cache_read_tokens": i},
                        "tool_calls": tools,
                    },
                )
            )
    return out


def snapshot(db: Database) -> dict[str, list[dict[str, Any]]]:
    order = {
        "sessions": "id",
        "tool_calls": "tool_call_id",
        "spend": "interception_id",
    }
    return {table: db.query(f"SELECT * FROM {table} ORDER BY {order[table]}") for table in DERIVED}


def calls_in_sessions(db: Database) -> int:
    row = db.query_one("SELECT sum(interceptions) AS n FROM sessions")
    return int(row["n"] or 0) if row else 0


def projector(batch: int = 1000) -> Projector:
    return Projector([project_bridge_events, SpendProjection()], batch=batch)


def test_batches_of_any_size_give_what_one_event_at_a_time_gives(db: Database) -> None:
    events = calls(120)
    with db.transaction() as tx:
        append_events(tx, events)
    one_by_one = projector(batch=1)
    assert one_by_one.catch_up(db) == len(events)
    expected = snapshot(db)
    assert calls_in_sessions(db) == 120 and expected["tool_calls"] and expected["spend"]

    for batch in (7, 1000):
        with db.transaction() as tx:
            for table in DERIVED:
                tx.execute(f"DELETE FROM {table}")
            tx.execute("UPDATE projection_state SET seq = 0 WHERE name = 'derived'")
        assert projector(batch).catch_up(db) == len(events)
        assert snapshot(db) == expected, f"batch {batch}"

    sessions = {s["id"]: s for s in expected["sessions"]}
    rows = calls_of(events)
    for sid, s in sessions.items():
        mine = [r for r in rows if r["session_id"] == sid]
        assert s["interceptions"] == len(mine)
        assert s["input_tokens"] == sum(r["input_tokens"] for r in mine)
        assert s["errors"] == sum(1 for r in mine if r["error"] is not None or (r["status"] or 0) >= 400)
    assert all(r["ended_at"] is not None for r in rows)  # every call answered or refused


def test_catching_up_from_many_threads_projects_each_event_once(db: Database) -> None:
    events = calls(300, seed=11)
    with db.transaction() as tx:
        append_events(tx, events[:100])
    reference = projector()
    errors: list[BaseException] = []

    def run(p: Projector) -> None:
        try:
            for _ in range(20):
                p.catch_up(db)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(projector(batch=13),)) for _ in range(4)]
    for w in workers:
        w.start()
    for start in range(100, len(events), 25):  # the log grows while they run
        with db.transaction() as tx:
            append_events(tx, events[start : start + 25])
    for w in workers:
        w.join()
    assert not errors
    projector().catch_up(db)
    got = snapshot(db)
    assert sum(s["interceptions"] for s in got["sessions"]) == 300
    assert len(got["spend"]) == sum(c["decision"] == "allow" for c in calls_of(events))

    with db.transaction() as tx:
        for table in DERIVED:
            tx.execute(f"DELETE FROM {table}")
        tx.execute("UPDATE projection_state SET seq = 0 WHERE name = 'derived'")
    reference.catch_up(db)
    assert snapshot(db) == got


def test_the_mark_follows_the_log_and_pruned_events_are_skipped(db: Database) -> None:
    p = projector(batch=10)
    assert not p.behind(db) and p.catch_up(db) == 0
    events = calls(30, seed=3)
    with db.transaction() as tx:
        append_events(tx, events)
    assert p.behind(db)
    first = next(e for e in events if e.kind == "llm.request")
    with db.transaction() as tx:  # what retention leaves of a pruned event
        tx.execute("UPDATE events SET pruned_by = 1, details = '{}' WHERE id = ?", (first.id,))
    p.catch_up(db)
    assert not p.behind(db)
    assert calls_in_sessions(db) == 29  # the pruned request's call is not counted
    head = db.query_one("SELECT seq FROM chain_head WHERE id = 1")
    state = db.query_one("SELECT seq FROM projection_state WHERE name = 'derived'")
    assert head is not None and state is not None and state["seq"] == head["seq"]


async def test_acatch_up_reads_back_what_was_just_written(db: Database) -> None:
    p = projector()
    with db.transaction() as tx:
        append_events(tx, calls(5, seed=5))
    assert await p.acatch_up(db) > 0
    assert not p.behind(db)
    assert await p.acatch_up(db) == 0
    assert calls_in_sessions(db) == 5


def test_between_commits_the_time_map_waits_for_the_projector_that_keeps_it(db: Database) -> None:
    """The writer or projector process's housekeeping (`worker._run_tasks`): while the projector is
    behind, the time map's own catch-up does not run ahead of it (it would read every event twice); the
    projector's pass keeps the map, and once it is done the map's task has nothing left."""
    derived = derived_tables("UTC")
    derived.batch = 10
    with db.transaction() as tx:
        append_events(tx, calls(12, seed=11))  # 24 events: three batches
    marks = []
    while True:
        behind = worker._run_tasks(db, [derived.step, timemap.step])
        mapped, head = timemap.marks(db)
        state = db.query_one("SELECT seq FROM projection_state WHERE name = 'derived'")
        assert state is not None
        marks.append((int(state["seq"]), mapped))
        if not behind:
            break
    assert marks == [(10, 10), (20, 20), (head, head)]


def test_a_failing_task_does_not_stop_the_next(db: Database) -> None:
    ran: list[str] = []

    def broken(_db: Database) -> bool:
        ran.append("broken")
        raise RuntimeError("store down")

    def after(_db: Database) -> bool:
        ran.append("after")
        return False

    assert worker._run_tasks(db, [broken, after]) is False
    assert ran == ["broken", "after"]


def test_calls_of_gives_one_record_per_request_with_its_response() -> None:
    events = calls(40, seed=13)
    records = calls_of(events)
    requests = [e for e in events if e.kind == "llm.request"]
    responses = {e.parent: e for e in events if e.kind == "llm.response"}
    assert [r["id"] for r in records] == [e.id for e in requests]
    for record, request in zip(records, requests, strict=True):
        response = responses.get(request.id)
        if request.decision != "allow":  # refused: ends where it starts, never answered
            assert response is None and record["ended_at"] == record["started_at"] == request.ts
            assert record["status"] == 403 and record["input_tokens"] == 0
            continue
        assert response is not None
        usage = response.details["usage"]
        assert record["ended_at"] == response.ts and record["status"] == response.details["status"]
        assert (record["input_tokens"], record["output_tokens"], record["cache_read_tokens"]) == (
            usage["input_tokens"],
            usage["output_tokens"],
            usage["cache_read_tokens"],
        )
        assert (
            record["session_id"] == request.session
            and record["last_prompt"] == request.details["last_prompt"]
        )
    # A response without its request (pruned, or in another part of the log) is no call.
    assert calls_of(e for e in events if e.kind == "llm.response") == []
