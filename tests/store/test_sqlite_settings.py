"""The SQLite a store runs on (APSW's own build, not the system's): the settings the store was designed
with, rows in the shapes the code expects, and the driver's errors as the store's."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from gatehouse.store.db import Database, StoreBusy, StoreError
from gatehouse.store.migrations import migrate


def test_both_files_of_a_new_store_have_the_settings_the_store_was_designed_with(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'g.db'}", synchronous="normal")
    migrate(db)
    try:
        for schema in ("main", "derived"):
            # Auto-vacuum would add pointer-map pages to every insert.
            assert db.query_one(f"PRAGMA {schema}.auto_vacuum") == {"auto_vacuum": 0}
            assert db.query_one(f"PRAGMA {schema}.journal_mode") == {"journal_mode": "wal"}
            assert db.query_one(f"PRAGMA {schema}.synchronous") == {"synchronous": 1}
        assert db.query_one("PRAGMA recursive_triggers") == {"recursive_triggers": 0}
        assert db.query_one("PRAGMA foreign_keys") == {"foreign_keys": 1}
    finally:
        db.close()


def test_rows_come_back_as_dicts_and_tuples_and_errors_as_the_stores(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'g.db'}", busy_timeout_ms=0)
    migrate(db)
    try:
        with db.transaction() as tx:
            assert tx.execute("UPDATE chain_head SET seq = seq") == 1  # rowcount
            assert tx.one("SELECT seq FROM chain_head WHERE id = 1") == {"seq": 0}
            assert tx.one("SELECT seq FROM chain_head WHERE id = 2") is None
            assert tx.all("SELECT seq FROM chain_head WHERE id = 2") == []
        assert db.query_tuples("SELECT 1, 'a', NULL") == [(1, "a", None)]
        with pytest.raises(StoreError, match="no such table"):
            db.query("SELECT * FROM nowhere")
        blocker = apsw.Connection(str(tmp_path / "g.db"))
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreBusy), db.transaction():
                pass
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    finally:
        db.close()


def test_a_bulk_insert_runs_as_multirow_statements_with_the_same_outcome_as_one_row_at_a_time(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        db.query("CREATE TABLE t (k INTEGER PRIMARY KEY, n INTEGER NOT NULL, tag INTEGER)")
        upsert = (
            "INSERT INTO t (k, n, tag) VALUES (?, ?, 7) ON CONFLICT (k) DO UPDATE SET n = t.n + excluded.n"
            + " " * 512  # long enough to be worth it
        )
        # 70 rows: two statements of 32 rows, then six one at a time; keys repeat within and across them.
        rows = [(i % 20, i) for i in range(70)]
        statements: list[str] = []
        db._conn().exec_trace = lambda _cursor, sql, _bindings: statements.append(sql) or True
        with db.transaction() as tx:
            tx.executemany(upsert, rows)
        db._conn().exec_trace = None
        expected: dict[int, int] = {}
        for k, n in rows:
            expected[k] = expected.get(k, 0) + n
        assert {r["k"]: r["n"] for r in db.query("SELECT k, n FROM t WHERE tag = 7")} == expected
        inserts = [s for s in statements if s.startswith("INSERT")]
        assert [s.count("(?, ?, 7)") for s in inserts] == [32, 32, 1, 1, 1, 1, 1, 1]
        with db.transaction() as tx:  # anything but an INSERT of one row of values runs as it is
            tx.executemany("UPDATE t SET n = ? WHERE k = ?", [(0, k) for k in range(20)])
        assert db.query_one("SELECT sum(n) AS n FROM t") == {"n": 0}
    finally:
        db.close()
