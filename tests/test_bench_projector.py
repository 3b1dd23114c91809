"""bench.projector: the journal it fills is what one projector pass chains and projects, every event of it."""

from __future__ import annotations

from pathlib import Path

from bench.procs import ROOT
from bench.projector import _child, fill
from gatehouse.store.db import Database


def test_a_pass_chains_and_projects_every_journaled_event(tmp_path: Path) -> None:
    fill(tmp_path, 300)
    events, cpu = _child(ROOT, tmp_path, True, False)
    assert events == 300
    assert cpu > 0
    # The pass ran on a copy: the store itself still holds an unchained journal.
    db = Database(f"sqlite:///{tmp_path / 'audit.db'}")
    try:
        assert db.query_one("SELECT COUNT(*) AS n FROM events") == {"n": 0}
    finally:
        db.close()
    assert _child(ROOT, tmp_path, False, False)[0] == 0
