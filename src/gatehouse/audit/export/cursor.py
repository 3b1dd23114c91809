"""Delivery cursors: for each sink, the sequence number of the last event it has received.

A cursor only moves after the sink has acknowledged the events up to it, so a crash or an outage resends
from the last acknowledged event (at-least-once; receivers de-duplicate by event id).

Several processes may run exporters against one store (replicas). Each sink's row carries a lease: the
process that holds it (`owner`, until `lease_until`) is the only one delivering to that sink; the others
wait, and take over when the lease lapses. Moving the cursor renews the lease and fails if it was lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatehouse.audit.events import now_us
from gatehouse.store.db import Database


@dataclass(frozen=True, slots=True)
class Cursor:
    sink: str
    seq: int
    updated_at: int
    owner: str | None
    lease_until: int | None


class CursorStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, sink: str) -> Cursor | None:
        row = self.db.query_one(
            "SELECT sink, seq, updated_at, owner, lease_until FROM export_cursors WHERE sink = ?", (sink,)
        )
        return None if row is None else Cursor(**row)

    def all(self) -> list[Cursor]:
        rows = self.db.query(
            "SELECT sink, seq, updated_at, owner, lease_until FROM export_cursors ORDER BY sink"
        )
        return [Cursor(**row) for row in rows]

    def head(self) -> int:
        """The sequence number of the newest event in the log."""
        row = self.db.query_one("SELECT seq FROM chain_head WHERE id = 1")
        return 0 if row is None else int(row["seq"])

    def claim(self, sink: str, owner: str, lease_s: float, *, start_at_end: bool = False) -> int | None:
        """Take (or renew) the sink's lease. Returns its cursor if this owner holds the lease now, None if
        another live owner does. A sink seen for the first time starts at 0, or at the current end of the
        log with `start_at_end`."""
        now = now_us()
        until = now + int(lease_s * 1_000_000)
        with self.db.transaction() as tx:
            if start_at_end:
                head = tx.one("SELECT seq FROM chain_head WHERE id = 1")
                first = 0 if head is None else int(head["seq"])
            else:
                first = 0
            tx.execute(
                "INSERT INTO export_cursors (sink, seq, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (sink) DO NOTHING",
                (sink, first, now),
            )
            taken = tx.execute(
                "UPDATE export_cursors SET owner = ?, lease_until = ?"
                " WHERE sink = ? AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until < ?)",
                (owner, until, sink, owner, now),
            )
            if taken != 1:
                return None
            row = tx.one("SELECT seq FROM export_cursors WHERE sink = ?", (sink,))
        assert row is not None
        return int(row["seq"])

    def advance(self, sink: str, owner: str, seq: int, lease_s: float) -> bool:
        """Record that the sink has everything up to `seq`, renewing the lease. False if the lease was
        lost to another owner (who then resends from its own reading of the cursor)."""
        now = now_us()
        with self.db.transaction() as tx:
            moved = tx.execute(
                "UPDATE export_cursors SET seq = ?, updated_at = ?, lease_until = ?"
                " WHERE sink = ? AND owner = ?",
                (seq, now, now + int(lease_s * 1_000_000), sink, owner),
            )
        return moved == 1

    def release(self, sink: str, owner: str) -> None:
        """Give the lease up (clean shutdown), so another process can take over at once."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE export_cursors SET owner = NULL, lease_until = NULL WHERE sink = ? AND owner = ?",
                (sink, owner),
            )

    def reset(self, sink: str, seq: int = 0) -> None:
        """Set a sink's cursor (0: resend the whole log at its next delivery)."""
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO export_cursors (sink, seq, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
                (sink, seq, now_us()),
            )
