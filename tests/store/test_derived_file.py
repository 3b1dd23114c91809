"""SQLite: the derived tables live in a file of their own, with a write lock of its own."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from gatehouse.audit.events import Event
from gatehouse.audit.writer import append_events
from gatehouse.store.db import Database, StoreBusy
from gatehouse.store.migrations import MIGRATIONS, _statements, migrate


def _no_wait(conn: apsw.Connection) -> apsw.Connection:
    conn.execute("PRAGMA busy_timeout=0")
    return conn


def test_a_derived_transaction_does_not_hold_up_the_log(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    migrate(db)
    projector = db.connect()
    try:
        with db.transaction(projector, derived=True) as tx:
            tx.execute("UPDATE projection_state SET seq = seq")
            # The log's writer (its connection leaves the derived file out) commits meanwhile.
            with db.transaction(_no_wait(db.connect(attach=False))) as log:
                append_events(log, [Event(kind="test.during")])
            # Another derived writer, or a transaction over both files, has to wait.
            with pytest.raises(StoreBusy), db.transaction(_no_wait(db.connect()), derived=True):
                pass
            with pytest.raises(StoreBusy), db.transaction(_no_wait(db.connect())):
                pass
        assert [r["kind"] for r in db.query("SELECT kind FROM events")] == ["test.during"]
    finally:
        db.close()


def test_derived_tables_are_in_their_own_file_and_queried_as_one(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    migrate(db)
    db.close()
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    derived = path.with_name("gatehouse.derived.db")
    with apsw.Connection(str(path)) as main, apsw.Connection(str(derived)) as other:
        main_tables = {r[0] for r in main.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        derived_tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"events", "chain_head", "users", "tokens"} <= main_tables
    moved = {
        "sessions",
        "tool_calls",
        "spend",
        "audit_search",
        "time_map",
        "projection_state",
    }
    assert moved <= derived_tables
    assert not moved & main_tables
    assert "interceptions" not in main_tables | derived_tables  # dropped by m0013: read from the log


def test_upgrading_moves_existing_derived_rows(tmp_path: Path) -> None:
    """A store at m0008 (derived tables in the main file, with rows) upgrades without losing a row."""
    path = tmp_path / "old.db"
    conn = apsw.Connection(str(path))
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at BIGINT NOT NULL)"
    )
    for migration in MIGRATIONS:
        if migration.version <= 8:
            for statement in _statements(migration.script("sqlite").format(bigint="INTEGER")):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, 0)", (migration.version, migration.name)
            )
    conn.execute("INSERT INTO sessions (id, started_at, last_at, interceptions) VALUES ('s1', 1, 2, 3)")
    conn.execute("INSERT INTO audit_search (rowid, body) VALUES (7, 'drop table users')")
    conn.execute("UPDATE projection_state SET seq = 42")
    conn.close()

    db = Database(f"sqlite:///{path}")
    try:
        assert migrate(db) == [v for v in (m.version for m in MIGRATIONS) if v > 8]
        assert db.query("SELECT id, interceptions FROM sessions") == [{"id": "s1", "interceptions": 3}]
        assert db.query("SELECT rowid AS seq FROM audit_search WHERE audit_search MATCH 'drop'") == [
            {"seq": 7}
        ]
        assert db.query_one("SELECT seq FROM projection_state WHERE name = 'derived'") == {"seq": 42}
        assert db.query_one("SELECT count(*) AS n FROM main.sqlite_master WHERE name = 'sessions'") == {
            "n": 0
        }
    finally:
        db.close()


def test_a_lost_derived_file_comes_back_empty_and_is_rebuilt_from_the_log(sqlite_url: str) -> None:
    from gatehouse.server import derived_tables

    db = Database(sqlite_url)
    migrate(db)
    with db.transaction() as tx:
        append_events(tx, [Event(kind="admin.user.create", details={"name": "ada"})])
    derived_tables("UTC").catch_up(db)
    db.close()
    Path(sqlite_url.removeprefix("sqlite:///")).with_name("gatehouse.derived.db").unlink()

    db = Database(sqlite_url)
    try:
        assert migrate(db) == []
        assert db.query_one("SELECT seq FROM projection_state WHERE name = 'derived'") == {"seq": 0}
        # The file comes back as the migrations left it: without the table m0013 dropped.
        assert (
            db.query_one("SELECT 1 AS found FROM derived.sqlite_master WHERE name = 'interceptions'") is None
        )
        derived_tables("UTC").catch_up(db)
        assert db.query_one("SELECT seq FROM projection_state WHERE name = 'derived'") == {"seq": 1}
        assert db.query("SELECT rowid AS seq FROM audit_search WHERE audit_search MATCH 'ada'") == [
            {"seq": 1}
        ]
    finally:
        db.close()


def test_a_derived_file_lost_before_the_key_index_upgrade_comes_back_with_runs(sqlite_url: str) -> None:
    """Migration 11 copies the per-event key index into runs; with no derived file there is nothing to
    copy, and the file comes back empty with the runs table, which the projector then fills."""
    from gatehouse.server import derived_tables

    db = Database(sqlite_url)
    migrate(db)
    with db.transaction() as tx:
        append_events(tx, [Event(kind="test.one", session="s-1"), Event(kind="test.two", session="s-1")])
        tx.execute("DELETE FROM schema_migrations WHERE version = 11")  # the store before the upgrade
    db.close()
    Path(sqlite_url.removeprefix("sqlite:///")).with_name("gatehouse.derived.db").unlink()

    db = Database(sqlite_url)
    try:
        assert migrate(db) == [11]
        assert db.query(
            "SELECT name FROM derived.sqlite_master WHERE name IN ('event_keys', 'key_ranges')"
        ) == [{"name": "key_ranges"}]
        derived_tables("UTC").catch_up(db)
        assert db.query("SELECT key, first_seq, last_seq FROM key_ranges") == [
            {"key": "s:s-1", "first_seq": 1, "last_seq": 2}
        ]
    finally:
        db.close()
