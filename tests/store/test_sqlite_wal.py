"""The SQLite WAL stays bounded under sustained writes: the background checkpointer lets it start over."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gatehouse.store import db as store
from gatehouse.store.db import Database


def test_the_wal_starts_over_while_writes_never_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "WAL_RESTART_FRAMES", 300)
    monkeypatch.setattr(store, "WAL_SIZE_LIMIT", 2 * 1024 * 1024)
    db = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    conn = db.connect()
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    db.checkpoint_in_background(interval_s=0.005)
    writer = db.connect()  # opened after: leaves checkpoints to the thread, like the audit writer's
    assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    wal = tmp_path / "wal.db-wal"
    written = biggest = 0
    deadline = time.monotonic() + 60
    try:
        # Commits back to back, as under load: never a quiet moment for the WAL to start over by itself.
        while written < 48 * 1024 * 1024 and time.monotonic() < deadline:
            with db.transaction(writer) as tx:
                tx.executemany("INSERT INTO blobs (body) VALUES (?)", [(os.urandom(3000),) for _ in range(4)])
            written += 4 * 4096
            time.sleep(0.0002)  # a serving loop does other work between commits: other threads run
            biggest = max(biggest, wal.stat().st_size)
    finally:
        db.close()
        writer.close()
        conn.close()
    assert written >= 48 * 1024 * 1024  # without restarts, the WAL would hold all of it
    assert biggest < 12 * 1024 * 1024, f"the WAL grew to {biggest / 1e6:.1f} MB"
