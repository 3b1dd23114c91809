"""Timelines and search answer the same way on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from gatehouse.audit.events import Event, now_us
from gatehouse.audit.queries import EventFilter, QueryError, get_event, search, tail, timeline
from gatehouse.audit.retention import prune
from gatehouse.audit.search import catch_up, normalize, parse_query, project_search_index
from gatehouse.audit.settings import RetentionSettings
from gatehouse.audit.writer import append_events
from gatehouse.identity.service import Actor, IdentityService
from gatehouse.store.db import Database

MINUTE = 60_000_000


class Log:
    def __init__(self, db: Database) -> None:
        identity = IdentityService(db)
        operator = Actor(name="test")
        self.alice = identity.create_user("alice", actor=operator)["id"]
        self.bob = identity.create_user("bob", actor=operator)["id"]
        self.bot = identity.create_agent("ci-bot", owner="alice", actor=operator)["id"]
        self.t0 = now_us() - 60 * MINUTE
        t = self.t0

        def ev(minutes: int, kind: str, **kw: object) -> Event:
            return Event(kind=kind, ts=t + minutes * MINUTE, **kw)  # type: ignore[arg-type]

        self.request = ev(
            1,
            "llm.request",
            actor_user=self.alice,
            actor_agent=self.bot,
            session="s1",
            workspace="ws-1",
            resource="llm:anthropic/m",
            details={"last_prompt": "Please clean up the staging database", "model": "m"},
        )
        self.response = ev(
            2,
            "llm.response",
            actor_user=self.alice,
            actor_agent=self.bot,
            session="s1",
            workspace="ws-1",
            parent=self.request.id,
            details={
                "tool_calls": [
                    {
                        "id": "t1",
                        "name": "run_shell_command",
                        "arguments": '{"cmd": "psql -c \'DROP TABLE users\'"}',
                    }
                ]
            },
        )
        self.result = ev(
            3,
            "llm.request",
            actor_user=self.alice,
            actor_agent=self.bot,
            session="s1",
            workspace="ws-1",
            details={"tool_results": [{"id": "t1", "content": "cat: /etc/passwd: Permission denied"}]},
        )
        self.bob_call = ev(
            4,
            "llm.request",
            actor_user=self.bob,
            session="s2",
            details={"last_prompt": "Café résumé naïve table of contents"},
        )
        self.delegated = ev(5, "mcp.tool_call", actor_agent=self.bot, on_behalf_of=self.bob, session="s3")
        self.denied = ev(6, "auth.failure", decision="deny", details={"reason": "unknown token"})
        self.events = [self.request, self.response, self.result, self.bob_call, self.delegated, self.denied]
        with db.transaction() as tx:
            append_events(tx, self.events, [project_search_index])


@pytest.fixture
def log(db: Database) -> Log:
    return Log(db)


def ids(page_events: list[dict[str, object]]) -> list[object]:
    return [e["id"] for e in page_events]


def test_timeline_by_agent_user_session_workspace(db: Database, log: Log) -> None:
    by_agent = timeline(db, EventFilter(agent="ci-bot"))
    assert ids(by_agent.events) == [e.id for e in (log.request, log.response, log.result, log.delegated)]
    assert by_agent.events[0]["actor"]["agent_name"] == "ci-bot"
    assert by_agent.events[0]["actor"]["user_name"] == "alice"
    assert timeline(db, EventFilter(agent=log.bot)).events == by_agent.events
    # A user's timeline includes what agents did on their behalf.
    assert ids(timeline(db, EventFilter(user="bob")).events) == [log.bob_call.id, log.delegated.id]
    assert ids(timeline(db, EventFilter(session="s1")).events) == [
        log.request.id,
        log.response.id,
        log.result.id,
    ]
    assert len(timeline(db, EventFilter(workspace="ws-1")).events) == 3
    assert timeline(db, EventFilter(user="nobody")).events == []


def test_timeline_window_kinds_and_cursor(db: Database, log: Log) -> None:
    window = EventFilter(since_us=log.t0 + 2 * MINUTE, until_us=log.t0 + 4 * MINUTE)
    assert ids(timeline(db, window).events) == [log.response.id, log.result.id]
    kinds = EventFilter(kinds=("llm.*", "auth.failure"), since_us=log.t0)
    assert [e["kind"] for e in timeline(db, kinds).events] == ["llm.request", "llm.response", "llm.request",
                                                                "llm.request", "auth.failure"]  # fmt: skip

    pages, cursor = [], None
    while True:
        page = timeline(
            db, EventFilter(since_us=log.t0, until_us=log.t0 + 10 * MINUTE, limit=2, cursor=cursor)
        )
        pages.append(ids(page.events))
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [[e.id for e in log.events[i : i + 2]] for i in (0, 2, 4)]
    with pytest.raises(QueryError, match="cursor"):
        timeline(db, EventFilter(cursor="abc"))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("DROP TABLE", ["response"]),
        ('"drop table"', ["response"]),
        ('"table drop"', []),
        ("table", ["bob_call", "response"]),
        ("run_shell_command", ["response"]),
        ("/etc/passwd", ["result"]),
        ("cafe resume", ["bob_call"]),
        ("staging DATABASE", ["request"]),
        ("unknown token", ["denied"]),
        ("auth.failure", ["denied"]),
    ],
)
def test_search_finds_the_same_on_both_stores(
    db: Database, log: Log, query: str, expected: list[str]
) -> None:
    found = search(db, query, EventFilter(since_us=log.t0))
    assert ids(found.events) == [getattr(log, name).id for name in expected]
    for event in found.events:
        assert event["match"]


def test_search_filters_and_pages_newest_first(db: Database, log: Log) -> None:
    assert ids(search(db, "table", EventFilter(user="alice")).events) == [log.response.id]
    first = search(db, "table", EventFilter(limit=1))
    assert ids(first.events) == [log.bob_call.id] and first.next_cursor
    second = search(db, "table", EventFilter(limit=1, cursor=first.next_cursor))
    assert ids(second.events) == [log.response.id] and second.next_cursor is None
    with pytest.raises(QueryError):
        search(db, " !!! ")


def test_a_plain_response_has_no_document_but_one_with_an_error_has(db: Database) -> None:
    """Its words would only repeat its request's kind and model: searching a model finds the requests.
    Alike whether the projection indexed the events or a catch-up did."""

    def call(prompt: str) -> list[Event]:
        resource, model = "llm:anthropic/claude-opus-x", {"model": "claude-opus-x"}
        request = Event(kind="llm.request", resource=resource, details={**model, "last_prompt": prompt})
        plain = Event(kind="llm.response", resource=resource, parent=request.id, details=model)
        failed = Event(
            kind="llm.response",
            resource=resource,
            parent=request.id,
            details={**model, "error": "overloaded"},
        )
        return [request, plain, failed]

    projected, caught_up = call("first"), call("second")
    with db.transaction() as tx:
        append_events(tx, projected, [project_search_index])
    with db.transaction() as tx:
        append_events(tx, caught_up)
    found = search(db, "claude-opus-x", EventFilter(kinds=("llm.*",)))
    assert ids(found.events) == [e.id for e in (caught_up[2], caught_up[0], projected[2], projected[0])]
    assert ids(search(db, "overloaded").events) == [caught_up[2].id, projected[2].id]


def test_catch_up_indexes_events_written_without_the_projection(db: Database, log: Log) -> None:
    # Admin changes are appended by the services directly, without projections.
    IdentityService(db).create_user("zebediah", actor=Actor(name="test"))
    assert ids(search(db, "zebediah", catch_up_index=False).events) == []
    assert catch_up(db) >= 1
    found = search(db, "zebediah", catch_up_index=False)
    assert [e["kind"] for e in found.events] == ["admin.user.create"]
    assert catch_up(db) == 0


def test_pruned_events_leave_the_index(db: Database, log: Log) -> None:
    prune(db, RetentionSettings(default_days=0, kinds={"llm.*": 1}), log.t0 + 2 * 86_400_000_000)
    assert search(db, "DROP TABLE").events == []
    assert ids(search(db, "passwd").events) == []
    pruned = get_event(db, log.request.id)
    assert pruned is not None and pruned["pruned"] and pruned["details"] == {}


def test_get_event_and_tail(db: Database, log: Log) -> None:
    event = get_event(db, log.response.id)
    assert event is not None
    assert (
        event["parent"] == log.request.id and event["details"]["tool_calls"][0]["name"] == "run_shell_command"
    )
    assert get_event(db, str(event["seq"])) == event
    assert get_event(db, "missing") is None
    last_two = tail(db, limit=2)
    assert ids(last_two) == [log.delegated.id, log.denied.id]
    assert tail(db, after_seq=int(last_two[-1]["seq"])) == []
    assert ids(tail(db, after_seq=int(last_two[0]["seq"]))) == [log.denied.id]


def test_query_language() -> None:
    assert normalize("Ünïcödé_and-PUNCT/uation") == "unicode and punct uation"
    # ASCII text takes a shortcut; its words are the general path's, every other character a space.
    ascii_text = "".join(map(chr, range(128)))
    assert normalize(ascii_text) == "".join(c.lower() if c.isalnum() else " " for c in ascii_text)
    assert normalize(ascii_text + "é").split() == [*normalize(ascii_text).split(), "e"]
    assert parse_query('rm -rf "DROP  table" /etc/passwd') == [
        ["rm"],
        ["rf"],
        ["drop", "table"],
        ["etc", "passwd"],
    ]


async def test_the_background_indexer_indexes_new_events_off_the_request_path(db: Database) -> None:
    import asyncio

    from aiohttp import web

    from gatehouse.audit import search, timemap
    from gatehouse.audit.projector import catch_up_ctx

    with db.transaction() as tx:
        append_events(tx, [Event(kind="llm.request", details={"last_prompt": "rotate the backup keys"})])
    marks = "SELECT s.seq AS indexed, h.seq AS head FROM audit_search_state s, chain_head h"
    before = db.query_one(marks)
    assert before is not None and before["indexed"] < before["head"]

    running = catch_up_ctx(db, [search.catch_up, timemap.catch_up], interval_s=0.05)(web.Application())
    await running.__anext__()
    try:
        for _ in range(100):
            now = db.query_one(marks)
            if now is not None and now["indexed"] >= now["head"]:
                break
            await asyncio.sleep(0.05)
    finally:
        with pytest.raises(StopAsyncIteration):
            await running.__anext__()
    after = db.query_one(marks)
    assert after is not None and after["indexed"] == after["head"]
