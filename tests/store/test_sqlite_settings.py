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
