"""JSON lines files: every event once, in order, rotated by size; the OCSF format; kind filters."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson

from gatehouse.audit.chain import event_hash
from gatehouse.audit.events import Event
from gatehouse.audit.export.exporter import Exporter
from gatehouse.audit.export.settings import ExportSettings, JsonlSinkSettings
from gatehouse.audit.writer import AuditWriter
from gatehouse.store.db import Database
from tests.export.conftest import denied_request, interception, running, ticks, wait_until, write


def read_lines(*paths: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for p in paths for line in p.read_bytes().splitlines()]


def chained_values(line: dict[str, Any]) -> tuple[object, ...]:
    actor = line["actor"]
    assert isinstance(actor, dict)
    details = orjson.dumps(line["details"], option=orjson.OPT_SORT_KEYS).decode()
    return (
        line["seq"],
        line["id"],
        line["ts"],
        line["kind"],
        actor["user"],
        actor["agent"],
        actor["token"],
        actor["on_behalf_of"],
        line["workspace"],
        line["session"],
        line["parent"],
        line["decision"],
        line["resource"],
        details,
        line["prev_hash"],
    )


async def test_rotation_keeps_the_newest_files_and_every_line_in_order(
    store: Database, tmp_path: Path
) -> None:
    path = tmp_path / "out" / "audit.jsonl"
    sink = JsonlSinkSettings(type="jsonl", path=path, max_bytes=6000, keep=3, fsync=False)
    settings = ExportSettings(sinks={"file": sink}, batch_size=10, poll_interval_s=5)
    exporter = Exporter(store, settings)
    writer = AuditWriter(store, observers=[exporter.observer])
    writer.start()
    try:
        async with running(exporter):
            for i in range(12):
                await writer.append(*ticks(10, start=i * 10))
            # Woken by the writer's observer: far sooner than the 5 s poll.
            await wait_until(lambda: exporter.status["file"].cursor == 120, within=4, what="120 events")
    finally:
        writer.close()

    files = [path.with_name(f"audit.jsonl.{n}") for n in (3, 2, 1)] + [path]
    assert all(f.exists() for f in files)
    assert not path.with_name("audit.jsonl.4").exists()  # older rotations were deleted
    assert all(f.stat().st_size <= 6000 for f in files)
    lines = read_lines(*files)
    seqs = [line["seq"] for line in lines]
    assert seqs == list(range(int(seqs[0]), 121)), "contiguous, in order, ending at the newest event"
    assert int(seqs[0]) > 1  # the oldest lines went with the deleted files
    # An exported line is enough to check its hash and its link to the previous line.
    for previous, line in itertools.pairwise(lines):
        assert line["prev_hash"] == previous["hash"]
        assert event_hash(chained_values(line)) == line["hash"]
    assert [line["details"] for line in lines[-3:]] == [{"n": 117}, {"n": 118}, {"n": 119}]


async def test_ocsf_format_maps_the_envelope(store: Database, tmp_path: Path) -> None:
    request, response = interception()
    created = Event(
        kind="admin.token.revoke",
        resource="token:t-9",
        actor_user="u-root",
        details={"id": "t-9", "by": "root"},
    )
    write(store, [request, response, denied_request(), created])
    path = tmp_path / "ocsf.jsonl"
    settings = ExportSettings(sinks={"siem": JsonlSinkSettings(type="jsonl", path=path, format="ocsf")})
    exporter = Exporter(store, settings)
    async with running(exporter):
        await wait_until(lambda: exporter.status["siem"].cursor == 4, what="4 events")
    req, resp, denied, revoke = read_lines(path)

    for record, event in zip((req, resp, denied, revoke), (request, response, None, created), strict=True):
        assert record["class_uid"] == 6003
        assert record["category_uid"] == 6
        assert record["type_uid"] == 600300 + record["activity_id"]
        if event is not None:
            assert record["metadata"]["uid"] == event.id
            assert record["time"] == event.ts // 1000
    assert req["activity_id"] == 1 and req["api"]["operation"] == "llm.request"
    assert req["actor"] == {
        "user": {"uid": "u-alice", "type_id": 1, "type": "User", "credential_uid": "t-1"},
        "app_uid": "a-bot",
        "app_name": "agent",
        "session": {"uid": "sess-1"},
    }
    assert req["resources"] == [
        {"uid": "llm:anthropic/claude-sonnet-5", "type": "llm", "name": "anthropic/claude-sonnet-5"}
    ]
    assert req["src_endpoint"] == {"name": "claude-code"}
    assert (resp["status_id"], resp["status"], resp["status_code"]) == (1, "Success", "200")
    assert resp["api"]["request"]["uid"] == request.id  # the response points at its request
    assert resp["api"]["response"]["uid"] == "msg_01abc"
    assert resp["metadata"]["sequence"] == 2
    assert (denied["status_id"], denied["severity_id"], denied["status_code"]) == (2, 3, "403")
    assert "not allowed" in denied["status_detail"]
    assert revoke["activity_id"] == 4 and revoke["type_name"] == "API Activity: Delete"
    assert revoke["unmapped"]["details"] == {"id": "t-9", "by": "root"}
    assert revoke["unmapped"]["prev_hash"] == denied["unmapped"]["hash"]


async def test_a_kind_filter_skips_other_events_but_moves_past_them(store: Database, tmp_path: Path) -> None:
    request, response = interception()
    write(store, [*ticks(3), request, *ticks(2), response, *ticks(1)])
    path = tmp_path / "llm.jsonl"
    sink = JsonlSinkSettings(type="jsonl", path=path, kinds=["llm.*"])
    exporter = Exporter(store, ExportSettings(sinks={"llm": sink}, batch_size=2))
    async with running(exporter):
        await wait_until(lambda: exporter.status["llm"].cursor == 8, what="cursor past every event")
    assert [line["kind"] for line in read_lines(path)] == ["llm.request", "llm.response"]
    assert exporter.status["llm"].delivered == 2


async def test_start_at_end_skips_the_existing_log(store: Database, tmp_path: Path) -> None:
    write(store, ticks(5))
    path = tmp_path / "new.jsonl"
    sink = JsonlSinkSettings(type="jsonl", path=path, start="end")
    exporter = Exporter(store, ExportSettings(sinks={"new": sink}, poll_interval_s=0.05))
    async with running(exporter):
        await wait_until(lambda: exporter.status["new"].cursor == 5, what="cursor at the end")
        write(store, ticks(2, start=5))  # another process: found by the poll
        await wait_until(lambda: exporter.status["new"].cursor == 7, what="new events")
    assert [line["seq"] for line in read_lines(path)] == [6, 7]


async def test_events_deleted_before_delivery_are_counted_and_unreadable_details_pass(
    store: Database, tmp_path: Path
) -> None:
    write(store, ticks(6))
    with store.transaction() as tx:  # as retention's compaction would, before this sink ever ran
        tx.execute("DELETE FROM events WHERE seq <= 3")
        tx.execute("UPDATE events SET details = 'not json' WHERE seq = 5")
    path = tmp_path / "late.jsonl"
    exporter = Exporter(store, ExportSettings(sinks={"late": JsonlSinkSettings(type="jsonl", path=path)}))
    async with running(exporter):
        await wait_until(lambda: exporter.status["late"].cursor == 6, what="delivery")
    lines = read_lines(path)
    assert [line["seq"] for line in lines] == [4, 5, 6]
    assert lines[1]["details"] == {"unparsed_details": "not json"}
    assert exporter.status["late"].skipped == 3
