"""bench/timeline.py at a tiny scale: the generated store is a valid trail that looks like the one the
bench describes, and every query shape it measures answers what plain SQL answers, page after page."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import run as bench_run
from bench import timeline as bench
from gatehouse.audit.verify import verify_database
from gatehouse.store.db import Database

EVENTS = 5_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> bench.Store:
    path = Path(tmp_path_factory.mktemp("timeline")) / "audit.db"
    return bench.generate(path, EVENTS, progress=lambda _: None)


def test_the_store_is_a_valid_trail(store: bench.Store) -> None:
    db = Database(store.url)
    try:
        report = verify_database(db)
        count = db.query_one("SELECT count(*) AS n, min(ts) AS first, max(ts) AS last FROM events")
        mapped = db.query_one("SELECT seq FROM time_map_state")
        late = db.query_one(
            "SELECT count(*) AS n FROM events e JOIN events p ON p.seq = e.seq - 1 WHERE e.ts < p.ts"
        )
    finally:
        db.close()
    assert report.ok, report.first
    assert report.events == EVENTS
    assert bench.verify_tail(store.url)
    assert count is not None and count["n"] == EVENTS
    assert (count["last"] - count["first"]) / bench.DAY_US > bench.SPAN_DAYS - 1
    assert mapped is not None and mapped["seq"] == EVENTS  # the time map was caught up
    assert late is not None and late["n"] > 0  # outages put some ts out of seq order
    assert store.retried > 0


def test_the_store_is_skewed_like_a_deployment(store: bench.Store) -> None:
    agents = sorted(store.per_agent.values(), reverse=True)
    assert len(agents) > 30
    assert agents[0] > 20 * agents[len(agents) // 2]  # a few busy agents, many quiet ones
    assert len(store.per_session) > 50
    assert sum(store.per_session.values()) < EVENTS  # some events belong to no session


def test_every_shape_pages_through_what_plain_sql_selects(store: bench.Store) -> None:
    assert bench.check(store, 6, pages=None, limit=7) == []


def test_the_reference_itself_tells_a_wrong_page(store: bench.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` fails when the timeline drops an event: the comparison is not vacuous."""
    from gatehouse.audit import queries

    real = queries._page

    def drop_one(rows: list[dict[str, object]], limit: int) -> queries.Page:
        return real(rows[1:] if len(rows) > 2 else rows, limit)

    monkeypatch.setattr(queries, "_page", drop_one)
    assert bench.check(store, 2, pages=None, limit=7)


def test_measure_reports_every_shape(store: bench.Store) -> None:
    results = bench.measure(store, 5)
    assert [r.shape for r in results] == list(bench.SHAPES)
    for r in results:
        assert len(r.ms) == 5 and len(r.fresh_ms) == 2  # queries 0 and 4 on a fresh connection
        assert r.wrong == 0
        assert all(ms > 0 for ms in r.ms)
        assert not math.isnan(r.row()[4])  # p95
    assert any(r.events for r in results)


def test_registered_as_a_default_bench() -> None:
    assert bench_run.BENCHES["timeline"] is bench.run
