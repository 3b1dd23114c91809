"""Verify the hash chain: from the database, or from an exported trail file without any database.

The walk streams the events in seq order (batches of 10,000 rows inside one read snapshot, so memory stays
bounded however long the log is) and checks, for each event:

- seq continuity (seq n follows n-1);
- the link: its `prev_hash` is the previous event's `hash` (the genesis hash for seq 1);
- its content: `hash` recomputed from the stored columns (`chain.row_hash`). A tombstone (an event pruned
  by retention: `pruned_by` set, content blanked) cannot be recomputed; its stored hash is trusted for the
  link, and it must be accounted for by the `audit.prune` event it names (count and seq range);
- checkpoints: the event at a checkpoint's seq has the checkpoint's hash; signatures verify with the
  public key; a checkpoint beyond the last event means the tail was cut off;
- the start: seq 1 from the genesis hash, or, after compaction, an anchor checkpoint whose hash is the
  first kept event's `prev_hash`, and the latest `audit.compact` event names that same first seq;
- the end: the last event is `chain_head` (seq and hash), so deleting the tail is seen.

The first anomaly is classified from what is left in the rows (each event's hash covers its own seq and
its predecessor's hash, so an intact event tells where it was written):

- `edited`: content does not match its hash; or an intact event points at a hash no event has any more
  (its predecessor was altered and re-hashed);
- `deleted`: a seq gap, or an intact event that hashes correctly only under a later seq (events removed
  and the rest renumbered) whose predecessor is nowhere;
- `inserted`: an intact event that hashes correctly only under an earlier seq (rows pushed in before it);
- `reordered`: an intact event whose original predecessor is elsewhere in the log;
- `truncated`: the log ends before `chain_head` or before a checkpoint;
- `rewritten`: hashes were recomputed wholesale (everything links) but a checkpoint disagrees;
- `checkpoint`: a checkpoint's signature does not verify with the public key;
- `pruned`: a tombstone that no prune record accounts for (content blanked outside retention).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatehouse.audit import journal
from gatehouse.audit.chain import CHAINED_COLUMNS, GENESIS_HASH
from gatehouse.audit.checkpoints import Checkpoint, key_id, signature_valid
from gatehouse.audit.events import now_us
from gatehouse.store.db import Database
from gatehouse.timeutil import iso

# The stored columns in chain order, then the hash and the tombstone marker: one row of a walk.
EVENT_COLUMNS = (*CHAINED_COLUMNS, "hash", "pruned_by")
_SELECT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
_SEQ, _ID, _KIND, _DETAILS, _PREV, _HASH, _PRUNED = 0, 1, 3, 13, 14, 15, 16
_N_CHAINED = len(CHAINED_COLUMNS)

PRUNE_KIND = "audit.prune"
COMPACT_KIND = "audit.compact"
BOOKKEEPING_KINDS = frozenset({PRUNE_KIND, COMPACT_KIND})
TRAIL_FORMAT = 1

BreakKind = Literal[
    "edited", "deleted", "inserted", "reordered", "truncated", "rewritten", "checkpoint", "pruned"
]
Progress = Callable[[int, int], None]  # (events checked, events expected)
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Break:
    """One place where the chain does not hold: `seq` is the position, `event_id` the event there (None when
    the event is missing), `detail` what is wrong, for people."""

    kind: BreakKind
    seq: int
    event_id: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "event_id": self.event_id, "detail": self.detail}


@dataclass(slots=True)
class VerifyReport:
    source: str = "database"
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_seq: int | None = None
    head_hash: str | None = None
    pruned: int = 0  # tombstones: linked, not content-verifiable
    prune_records: int = 0
    checkpoints: int = 0
    checkpoints_verified: int = 0  # signature valid under the public key
    checkpoints_unverified: int = 0  # unsigned, signed by another key, or no public key given
    signed_through: int | None = None  # highest seq vouched for by a valid signature
    anchored_at: int | None = None  # the anchor checkpoint's seq when the chain starts after seq 1
    breaks: list[Break] = field(default_factory=list)
    complete: bool = True  # False when the walk stopped at the first break
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def first(self) -> Break | None:
        return min(self.breaks, key=lambda b: b.seq) if self.breaks else None

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        first = self.first
        return {
            "ok": self.ok,
            "source": self.source,
            "events": self.events,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "pruned": self.pruned,
            "prune_records": self.prune_records,
            "checkpoints": {
                "total": self.checkpoints,
                "verified": self.checkpoints_verified,
                "unverified": self.checkpoints_unverified,
                "signed_through": self.signed_through,
            },
            "anchored_at": self.anchored_at,
            "first_break": first.as_dict() if first else None,
            "breaks": [b.as_dict() for b in sorted(self.breaks, key=lambda b: b.seq)],
            "complete": self.complete,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s),
        }


class ChainVerifier:
    """Feed rows (EVENT_COLUMNS tuples) in seq order, then `finish()`. Memory: the last few rows, the
    checkpoints, and one counter per prune record whose tombstones were seen before the record itself."""

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        *,
        public_key: Ed25519PublicKey | None = None,
        find_hash: Callable[[str], int | None] | None = None,
        max_breaks: int = 1,
        progress: Progress | None = None,
        progress_every: int = 250_000,
        expected: int = 0,
        source: str = "database",
    ) -> None:
        self.report = VerifyReport(source=source, checkpoints=len(checkpoints))
        self._find_hash = find_hash or (lambda _h: None)
        self._max_breaks = max(1, max_breaks)
        self._progress = progress
        self._progress_every = progress_every
        self._expected = expected
        self._started = time.perf_counter()
        self._checkpoints: dict[int, list[Checkpoint]] = {}
        self._all_checkpoints = list(checkpoints)
        self._last_good_checkpoint = 0
        self._expect: int | None = None
        self._prev = GENESIS_HASH
        self._recent: deque[Row] = deque(maxlen=256)
        self._pending: dict[int, list[int]] = {}  # prune record seq -> [tombstones seen, min seq, max seq]
        # The latest audit.compact: (its seq, first kept seq, tombstones compacted per prune record).
        self._compact: tuple[int, int, dict[str, int]] | None = None
        # Prune records some of whose tombstones lie before the chain's start: settled by the compaction.
        self._deferred: dict[int, tuple[int, int, int, int, Any, Any]] = {}
        self.stopped = False
        kid = key_id(public_key) if public_key is not None else None
        for cp in checkpoints:
            self._checkpoints.setdefault(cp.seq, []).append(cp)
            if public_key is not None and cp.signature is not None and cp.key_id in (kid, None):
                if signature_valid(cp, public_key):
                    self.report.checkpoints_verified += 1
                    continue
                self._break(
                    "checkpoint",
                    cp.seq,
                    None,
                    f"checkpoint {cp.id} ({cp.kind}, {iso(cp.ts)}) for seq {cp.seq} has a signature that"
                    " does not verify with the public key: it was forged or altered",
                )
            else:
                self.report.checkpoints_unverified += 1
        self._public_key = public_key
        self._key_id = kid

    # -- the walk ----------------------------------------------------------------------------------

    def feed(self, rows: Iterable[Row]) -> bool:
        """Check rows in seq order; False once the walk has stopped (enough breaks found)."""
        if self.stopped:
            return False
        sha256, dumps = hashlib.sha256, orjson.dumps
        checkpoints, recent, n = self._checkpoints, self._recent, _N_CHAINED
        expect, prev = self._expect, self._prev
        count = 0
        for row in rows:
            seq = row[_SEQ]
            if expect is None:
                expect, prev = self._start(row)
                if self.stopped:
                    self._expect, self._prev = expect, prev
                    return False
            pruned_by = row[_PRUNED]
            if pruned_by is None:
                good = (
                    seq == expect and row[_PREV] == prev and sha256(dumps(row[:n])).hexdigest() == row[_HASH]
                )
            else:
                good = seq == expect and row[_PREV] == prev
            if not good:
                self._expect, self._prev = expect, prev
                self._anomaly(row, expect, prev)
                if self.stopped:
                    self.report.events += count
                    return False
            if pruned_by is not None:
                self._tombstone(row)
            elif row[_KIND] in BOOKKEEPING_KINDS:
                self._bookkeeping(row)
            if seq in checkpoints:
                self._at_checkpoint(row)
            recent.append(row)
            prev, expect = row[_HASH], seq + 1
            count += 1
        before = self.report.events
        self.report.events += count
        if self._progress is not None and before // self._progress_every != (
            self.report.events // self._progress_every
        ):
            self._progress(self.report.events, self._expected)
        self._expect, self._prev = expect, prev
        if recent:
            self.report.last_seq = recent[-1][_SEQ]
        return not self.stopped

    def finish(self, head: tuple[int, str] | None) -> VerifyReport:
        """Check the end of the log against the head (the store's `chain_head`, or the trail's header)."""
        r = self.report
        r.last_seq = self._recent[-1][_SEQ] if self._recent else None
        if head is not None:
            r.head_seq, r.head_hash = head
        if not self.stopped:
            self._check_end(head)
        r.complete = not self.stopped
        r.elapsed_s = time.perf_counter() - self._started
        return r

    def _check_end(self, head: tuple[int, str] | None) -> None:
        r = self.report
        last = self._recent[-1] if self._recent else None
        last_seq = last[_SEQ] if last else 0
        if head is not None:
            head_seq, head_hash = head
            if head_seq > last_seq:
                self._break(
                    "truncated",
                    last_seq + 1,
                    None,
                    f"the log ends at seq {last_seq} but chain_head is at seq {head_seq}: events"
                    f" {last_seq + 1}..{head_seq} were deleted from the end",
                )
            elif last is not None and head_seq == last_seq and head_hash != last[_HASH]:
                self._break(
                    "edited",
                    last_seq,
                    last[_ID],
                    f"the last event's hash {last[_HASH][:16]}... is not chain_head's {head_hash[:16]}...:"
                    " the last event was altered and re-hashed",
                )
            elif head_seq < last_seq:
                self._break(
                    "inserted",
                    head_seq + 1,
                    self._recent_id(head_seq + 1),
                    f"events {head_seq + 1}..{last_seq} lie beyond chain_head (seq {head_seq}): they were"
                    " added without the writer",
                )
        beyond = [cp for cp in self._all_checkpoints if cp.seq > last_seq]
        if beyond:
            cp = max(beyond, key=lambda c: c.seq)
            self._break(
                "truncated",
                last_seq + 1,
                None,
                f"checkpoint {cp.id} ({cp.kind}, {iso(cp.ts)}) vouches for seq {cp.seq} but the log ends at"
                f" seq {last_seq}: events {last_seq + 1}..{cp.seq} were deleted from the end",
            )
        for record, (seen, low, _high) in sorted(self._pending.items()):
            self._break(
                "pruned",
                low,
                self._recent_id(low),
                f"{seen} event(s) from seq {low} on are blanked as pruned by seq {record}, which is not a"
                " prune record: their content was removed outside retention",
            )
        carried = self._compact[2] if self._compact is not None else {}
        for record, (seen, low, high, count, first, last) in sorted(self._deferred.items()):
            gone = int(carried.get(str(record), 0))
            if seen + gone != count:
                self._prune_break(record, seen, low, high, count, first, last, gone)
        if self._compact is not None and r.first_seq is not None and self._compact[1] != r.first_seq:
            compact_seq, first_kept, _carried = self._compact
            self._break(
                "deleted",
                min(first_kept, r.first_seq),
                None,
                f"the chain starts at seq {r.first_seq} but the latest compaction (seq {compact_seq}) kept"
                f" every event from seq {first_kept}",
            )
        elif self._compact is None and r.anchored_at is not None:
            self._break(
                "deleted",
                1,
                None,
                f"the chain starts at seq {r.first_seq} under an anchor checkpoint, but no audit.compact"
                " event records that the events before it were compacted",
            )

    # -- the start, tombstones, bookkeeping, checkpoints -----------------------------------------------

    def _start(self, row: Row) -> tuple[int, str]:
        seq = row[_SEQ]
        self.report.first_seq = seq
        if seq == 1:
            if row[_PREV] != GENESIS_HASH:
                self._break(
                    "edited", 1, row[_ID], "the first event does not start from the genesis hash (64 zeros)"
                )
                return 1, row[_PREV]
            return 1, GENESIS_HASH
        anchors = [cp for cp in self._checkpoints.get(seq - 1, []) if cp.hash == row[_PREV]]
        if anchors:
            self.report.anchored_at = seq - 1
        else:
            # Where the retained chain was meant to start: after the latest anchor below this event.
            below = [cp.seq for cp in self._all_checkpoints if cp.kind == "anchor" and cp.seq < seq - 1]
            missing_from = max(below) + 1 if below else 1
            self._break(
                "deleted",
                missing_from,
                None,
                f"the chain starts at seq {seq}: events {missing_from}..{seq - 1} are missing and no anchor"
                f" checkpoint vouches for the hash event {seq} follows",
            )
        return seq, row[_PREV]

    def _tombstone(self, row: Row) -> None:
        self.report.pruned += 1
        seq, record = row[_SEQ], row[_PRUNED]
        if record <= seq:
            self._break(
                "pruned",
                seq,
                row[_ID],
                f"event {seq} is blanked as pruned by seq {record}, which is not a later prune record",
            )
            return
        entry = self._pending.get(record)
        if entry is None:
            self._pending[record] = [1, seq, seq]
        else:
            entry[0] += 1
            entry[2] = seq

    def _bookkeeping(self, row: Row) -> None:
        try:
            details = orjson.loads(row[_DETAILS])
        except orjson.JSONDecodeError:
            return  # its hash verified: it was written like this; nothing to account
        seq = row[_SEQ]
        if row[_KIND] == COMPACT_KIND:
            carried = details.get("carried") or {}
            self._compact = (seq, int(details.get("first_kept_seq") or 0), carried)
            return
        self.report.prune_records += 1
        seen, low, high = self._pending.pop(seq, [0, seq, seq])
        count, first, last = int(details.get("count") or 0), details.get("first_seq"), details.get("last_seq")
        if seen and (low < first or high > last):
            self._prune_break(seq, seen, low, high, count, first, last)
        elif first is not None and self.report.first_seq is not None and first < self.report.first_seq:
            # Some of its tombstones may have been compacted away: the latest audit.compact says how many.
            self._deferred[seq] = (seen, low, high, count, first, last)
        elif seen != count:
            self._prune_break(seq, seen, low, high, count, first, last)

    def _prune_break(
        self, seq: int, seen: int, low: int, high: int, count: int, first: Any, last: Any, carried: int = 0
    ) -> None:
        where = low if seen else seq
        gone = f" (and {carried} compacted)" if carried else ""
        self._break(
            "pruned",
            where,
            self._recent_id(where),
            f"prune record at seq {seq} pruned {count} event(s) in seq {first}..{last}, but {seen} blanked"
            f" event(s){gone} in seq {low}..{high} point at it: content was removed outside retention",
        )

    def _at_checkpoint(self, row: Row) -> None:
        seq = row[_SEQ]
        for cp in self._checkpoints[seq]:
            if cp.hash == row[_HASH]:
                self._last_good_checkpoint = seq
                if (
                    self._public_key is not None
                    and cp.key_id == self._key_id
                    and (self.report.signed_through or 0) < seq
                    and signature_valid(cp, self._public_key)
                ):
                    self.report.signed_through = seq
                continue
            since = self._last_good_checkpoint
            self._break(
                "rewritten",
                since + 1,
                None,
                f"event {seq} has hash {row[_HASH][:16]}... but checkpoint {cp.id} ({cp.kind},"
                f" {'signed' if cp.signature else 'unsigned'}, {iso(cp.ts)}) recorded {cp.hash[:16]}...:"
                f" the chain was rewritten somewhere in seq {since + 1}..{seq}",
            )

    # -- classifying a broken link ---------------------------------------------------------------------

    def _anomaly(self, row: Row, expect: int, prev: str) -> None:
        seq, eid = row[_SEQ], row[_ID]
        if seq > expect:
            self._break(
                "deleted",
                expect,
                None,
                f"events {expect}..{seq - 1} are missing ({seq - expect} event(s)): seq {seq} (id {eid})"
                f" follows seq {expect - 1}",
            )
            return
        if seq < expect:
            self._break(
                "reordered",
                seq,
                eid,
                f"seq {seq} appears after seq {expect - 1}: events are out of order or duplicated",
            )
            return
        intact = row[_PRUNED] is not None or _rehash(row) == row[_HASH]
        if intact:
            # The event is as written, but what it follows is not what it followed when written.
            where = self._find_hash(row[_PREV])
            if where is not None and where != seq - 1:
                self._break(
                    "reordered",
                    seq - 1,
                    self._recent_id(seq - 1),
                    f"event {seq} was written after the event now at seq {where}, not after the one at seq"
                    f" {seq - 1}: events were moved",
                )
            else:
                self._break(
                    "edited",
                    seq - 1,
                    self._recent_id(seq - 1),
                    f"event {seq - 1} was altered and its hash recomputed: event {seq} still follows the"
                    f" original hash {row[_PREV][:16]}...",
                )
            return
        offset = _original_offset(row)
        if offset is None:
            detail = "its content does not match its hash: a field was changed"
            if row[_PREV] != prev:
                detail += ", and it does not follow the previous event's hash"
            self._break("edited", seq, eid, f"event {seq} (id {eid}): {detail}")
            return
        written = seq + offset
        if offset < 0:
            self._break(
                "inserted",
                written,
                self._recent_id(written),
                f"{-offset} event(s) at seq {written}..{seq - 1} were inserted: event {eid}, now at seq"
                f" {seq}, was written as seq {written}",
            )
            return
        where = self._find_hash(row[_PREV])
        if where is not None:
            self._break(
                "reordered",
                seq,
                eid,
                f"event {eid}, now at seq {seq}, was written as seq {written}; the event it followed is now"
                f" at seq {where}: events were reordered",
            )
        else:
            self._break(
                "deleted",
                seq,
                eid,
                f"{offset} event(s) were deleted before event {eid} and the later events renumbered: it was"
                f" written as seq {written}",
            )

    def _recent_id(self, seq: int) -> str | None:
        for row in reversed(self._recent):
            if row[_SEQ] == seq:
                return str(row[_ID])
        return None

    def _break(self, kind: BreakKind, seq: int, event_id: str | None, detail: str) -> None:
        self.report.breaks.append(Break(kind, seq, event_id, detail))
        if len(self.report.breaks) >= self._max_breaks:
            self.stopped = True


def _rehash(row: Row, seq: int | None = None) -> str:
    values = row[:_N_CHAINED] if seq is None else (seq, *row[1:_N_CHAINED])
    return hashlib.sha256(orjson.dumps(values)).hexdigest()


def _original_offset(row: Row, window: int = 64) -> int | None:
    """The offset d (seq + d) under which an event's content hashes to its stored hash, if any nearby."""
    seq = row[_SEQ]
    for distance in range(1, window + 1):
        for d in (distance, -distance):
            if seq + d >= 1 and _rehash(row, seq + d) == row[_HASH]:
                return d
    return None


# -- the database ---------------------------------------------------------------------------------------


class _Snapshot:
    """One read transaction on a connection of its own: a consistent view of events, head and checkpoints
    however long the walk takes, with rows as plain tuples (cheaper than dicts)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: Any = db.connect()

    def begin(self) -> None:
        if self.db.dialect == "sqlite":
            self.conn.execute("BEGIN")
        else:
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        if self.db.dialect == "sqlite":
            return list(self.conn.execute(query, params).fetchall())
        from psycopg.rows import tuple_row

        with self.conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(self.db.sql(query), params)
            return list(cur.fetchall())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.rollback() if self.db.dialect == "postgresql" else self.conn.execute("ROLLBACK")
        with contextlib.suppress(Exception):
            self.conn.close()

    def head(self) -> tuple[int, str]:
        rows = self.rows("SELECT seq, hash FROM chain_head WHERE id = 1")
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)

    def checkpoints(self) -> list[Checkpoint]:
        rows = self.rows(
            "SELECT id, seq, hash, ts, kind, key_id, signature, created_by, event_seq FROM checkpoints"
            " ORDER BY seq, ts"
        )
        return [Checkpoint(*r) for r in rows]

    def count(self) -> int:
        rows = self.rows("SELECT count(*) FROM events")
        return int(rows[0][0])

    def events(self, batch_size: int) -> Iterator[list[Row]]:
        last = 0
        query = f"{_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?"
        while True:
            rows = self.rows(query, (last, batch_size))
            if not rows:
                return
            yield rows
            last = rows[-1][_SEQ]


@contextlib.contextmanager
def _snapshot(db: Database) -> Iterator[_Snapshot]:
    snap = _Snapshot(db)
    try:
        snap.begin()
        yield snap
    finally:
        snap.close()


def verify_database(
    db: Database,
    *,
    public_key: Ed25519PublicKey | None = None,
    max_breaks: int = 1,
    batch_size: int = 10_000,
    progress: Progress | None = None,
    progress_every: int = 250_000,
) -> VerifyReport:
    """Walk the whole retained chain in one read snapshot. Stops at the first break unless `max_breaks`
    allows more (each later break is reported after resynchronising on the broken event)."""
    journal.drain_all(db)  # what was acknowledged but not yet chained is verified too
    with _snapshot(db) as snap:
        head = snap.head()
        checkpoints = snap.checkpoints()

        def find_hash(h: str) -> int | None:
            rows = snap.rows("SELECT seq FROM events WHERE hash = ? LIMIT 1", (h,))
            return int(rows[0][0]) if rows else None

        verifier = ChainVerifier(
            checkpoints,
            public_key=public_key,
            find_hash=find_hash,
            max_breaks=max_breaks,
            progress=progress,
            progress_every=progress_every,
            expected=head[0],
        )
        for rows in snap.events(batch_size):
            if not verifier.feed(rows):
                break
        return verifier.finish(head)


# -- the exported trail ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportSummary:
    path: str
    events: int
    checkpoints: int
    first_seq: int | None
    last_seq: int | None
    head_seq: int
    head_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
        }


def export_trail(
    db: Database,
    out: IO[bytes],
    *,
    path: str = "-",
    batch_size: int = 10_000,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write the raw chain as JSONL: a header line, one line per checkpoint, then one line per event with
    the stored columns exactly as hashed (`details` as its stored text) plus `hash` and `pruned_by`."""
    with _snapshot(db) as snap:
        head = snap.head()
        checkpoints = snap.checkpoints()
        out.write(
            orjson.dumps(
                {
                    "gatehouse_trail": TRAIL_FORMAT,
                    "exported_at": now_us(),
                    "head": {"seq": head[0], "hash": head[1]},
                    "columns": list(EVENT_COLUMNS),
                }
            )
            + b"\n"
        )
        for cp in checkpoints:
            out.write(orjson.dumps({"checkpoint": cp.as_dict()}) + b"\n")
        count, first, last = 0, None, None
        for rows in snap.events(batch_size):
            out.write(b"".join(orjson.dumps(dict(zip(EVENT_COLUMNS, r, strict=True))) + b"\n" for r in rows))
            first = rows[0][_SEQ] if first is None else first
            last = rows[-1][_SEQ]
            count += len(rows)
            if progress is not None:
                progress(count, head[0])
    return ExportSummary(path, count, len(checkpoints), first, last, head[0], head[1])


class TrailError(ValueError):
    """The file is not a readable trail (as opposed to a readable trail whose chain is broken)."""


def verify_file(
    path: Path,
    *,
    public_key: Ed25519PublicKey | None = None,
    max_breaks: int = 1,
    batch_size: int = 10_000,
    progress: Progress | None = None,
    progress_every: int = 250_000,
) -> VerifyReport:
    """Verify an exported trail with no database: the same checks as `verify_database`, with the header's
    head standing for `chain_head` (a file is only as trustworthy as its signed checkpoints)."""
    head: tuple[int, str] | None = None
    checkpoints: list[Checkpoint] = []
    with path.open("rb") as f:
        lines = enumerate(f, 1)
        pending_line: tuple[int, dict[str, Any]] | None = None
        for number, line in lines:
            if not line.strip():
                continue
            obj = _parse_line(line, number)
            if "gatehouse_trail" in obj:
                if obj["gatehouse_trail"] != TRAIL_FORMAT:
                    raise TrailError(f"line {number}: unsupported trail format {obj['gatehouse_trail']!r}")
                h = obj.get("head") or {}
                head = (int(h["seq"]), str(h["hash"])) if h.get("hash") else None
            elif "checkpoint" in obj:
                try:
                    checkpoints.append(Checkpoint(**obj["checkpoint"]))
                except TypeError as exc:
                    raise TrailError(f"line {number}: not a checkpoint: {exc}") from None
            else:
                pending_line = (number, obj)
                break

        def find_hash(h: str) -> int | None:
            with path.open("rb") as again:
                for n, raw in enumerate(again, 1):
                    if h.encode() in raw:
                        candidate = _parse_line(raw, n)
                        if candidate.get("hash") == h and "seq" in candidate:
                            return int(candidate["seq"])
            return None

        verifier = ChainVerifier(
            checkpoints,
            public_key=public_key,
            find_hash=find_hash,
            max_breaks=max_breaks,
            progress=progress,
            progress_every=progress_every,
            expected=head[0] if head else 0,
            source=str(path),
        )
        batch: list[Row] = []
        if pending_line is not None:
            batch.append(_event_row(*pending_line))
        for number, line in lines:
            if not line.strip():
                continue
            batch.append(_event_row(number, _parse_line(line, number)))
            if len(batch) >= batch_size:
                if not verifier.feed(batch):
                    batch = []
                    break
                batch = []
        if batch:
            verifier.feed(batch)
    return verifier.finish(head)


def _parse_line(line: bytes, number: int) -> dict[str, Any]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise TrailError(f"line {number}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TrailError(f"line {number}: not a JSON object")
    return obj


def _event_row(number: int, obj: dict[str, Any]) -> Row:
    try:
        return (*(obj[c] for c in CHAINED_COLUMNS), obj["hash"], obj.get("pruned_by"))
    except KeyError as exc:
        raise TrailError(f"line {number}: an event line lacks {exc}") from None
