"""The audit writer: every event goes through one queue into one thread that appends them to the chain.

Group commit: the thread takes everything that queued up while the previous transaction ran and writes it
in one transaction (chain head read under the write lock, hashes computed, rows inserted, projections
updated, commit). Callers that must not act before their event is durable `await append(...)`; it returns
once the batch holding the event has committed, so the cost of one commit is shared by every request that
arrived meanwhile.

If the store fails, `append` raises `AuditUnavailable` (fail closed) unless the writer runs fail-open, in
which case events are kept in a bounded buffer and retried, and an `audit.gap` event records what passed
while the store was down once it is back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from gatehouse.audit.chain import event_hash
from gatehouse.audit.events import Event, now_us
from gatehouse.store.db import Database, StoreError, Tx

log = logging.getLogger(__name__)

# A projection keeps a derived table (sessions, spend, ...) in step with the log, in the same transaction.
Projection = Callable[[Tx, Sequence[Event]], None]
# An observer learns of events once they are committed (metrics, export wake-ups). It runs on the writer
# thread, so it must be quick and must not raise.
Observer = Callable[[Sequence[Event], float], None]

_INSERT = (
    "INSERT INTO events (seq, id, ts, kind, actor_user, actor_agent, actor_token, on_behalf_of, workspace,"
    " session, parent, decision, resource, details, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class AuditUnavailable(Exception):
    """The trail could not be written, so the action it describes must not happen (fail closed)."""


def append_events(tx: Tx, events: Sequence[Event], projections: Sequence[Projection] = ()) -> None:
    """Chain and insert `events` inside an open transaction. Used by the writer thread for batches and
    directly by admin commands, whose change and its event must commit together."""
    if not events:
        return
    lock = " FOR UPDATE" if tx.db.dialect == "postgresql" else ""
    head = tx.one(f"SELECT seq, hash FROM chain_head WHERE id = 1{lock}")
    if head is None:
        raise StoreError("the event log has no chain head: run `gatehouse migrate`")
    seq, prev = int(head["seq"]), str(head["hash"])
    rows = []
    for event in events:
        seq += 1
        details = event.details_json()
        values = (
            seq,
            event.id,
            event.ts,
            event.kind,
            event.actor_user,
            event.actor_agent,
            event.actor_token,
            event.on_behalf_of,
            event.workspace,
            event.session,
            event.parent,
            event.decision,
            event.resource,
            details,
            prev,
        )
        digest = event_hash(values)
        event.seq, event.prev_hash, event.hash = seq, prev, digest
        rows.append((*values, digest))
        prev = digest
    tx.executemany(_INSERT, rows)
    tx.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
    for project in projections:
        project(tx, events)


@dataclass(slots=True)
class _Gap:
    first_ts: int
    last_ts: int
    refused: int = 0  # events of actions refused because they could not be recorded (fail closed)
    dropped: int = 0  # events of actions that went ahead but overflowed the retry buffer (fail open)
    reason: str = ""


class AuditWriter:
    def __init__(
        self,
        db: Database,
        *,
        projections: Sequence[Projection] = (),
        max_batch: int = 2000,
        fail_open: bool = False,
        retry_buffer: int = 100_000,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.db = db
        self.projections = tuple(projections)
        self.max_batch = max_batch
        self.fail_open = fail_open
        self._queue: queue.SimpleQueue[tuple[Sequence[Event], Future[None] | None] | None] = (
            queue.SimpleQueue()
        )
        self._retry: collections.deque[Event] = collections.deque(maxlen=retry_buffer)
        self._gap: _Gap | None = None
        self._thread: threading.Thread | None = None
        self.observers = list(observers)
        self.healthy = True
        self.committed_events = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gatehouse-audit-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- appending ---------------------------------------------------------------------------------

    async def append(self, *events: Event) -> None:
        """Return once `events` are durable. Raises AuditUnavailable if they cannot be (fail closed);
        fail-open writers never raise: the events wait in the retry buffer."""
        future: Future[None] = Future()
        self._queue.put((events, future))
        await asyncio.wrap_future(future)

    def append_nowait(self, *events: Event) -> None:
        """Queue events whose durability nobody waits for (bookkeeping that follows an action)."""
        self._queue.put((events, None))

    def append_sync(self, *events: Event, timeout: float = 30.0) -> None:
        future: Future[None] = Future()
        self._queue.put((events, future))
        future.result(timeout)

    # -- the writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                # With a gap or retries pending, wake up now and then to try the store again.
                item = self._queue.get(timeout=0.5 if self._gap is not None else None)
            except queue.Empty:
                self._write([])
                continue
            batch: list[tuple[Sequence[Event], Future[None] | None]] = []
            size = 0
            while True:
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
                    size += len(item[0])
                if size >= self.max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch or self._gap is not None:
                self._write(batch)

    def _write(self, batch: list[tuple[Sequence[Event], Future[None] | None]]) -> None:
        events = [e for evs, _ in batch for e in evs]
        pending = list(self._retry) if self._retry else []
        gap_event = self._gap_event() if self._gap is not None else None
        to_write = ([gap_event] if gap_event else []) + pending + events
        started = time.perf_counter()
        try:
            with self.db.transaction() as tx:
                append_events(tx, to_write, self.projections)
        except Exception as exc:  # the store failed: nothing of this batch is durable
            self._failed(batch, events, exc)
            return
        self.healthy = True
        self._retry.clear()
        self._gap = None
        self.committed_events += len(to_write)
        elapsed = time.perf_counter() - started
        for observe in self.observers:
            try:
                observe(to_write, elapsed)
            except Exception:  # an observer's bug must not stop the trail
                log.exception("audit observer failed")
        for _, future in batch:
            if future is not None:
                future.set_result(None)

    def _failed(
        self, batch: list[tuple[Sequence[Event], Future[None] | None]], events: list[Event], exc: Exception
    ) -> None:
        if self.healthy:
            log.error("audit store write failed: %s", exc)
        self.healthy = False
        now = now_us()
        gap = self._gap or _Gap(first_ts=min((e.ts for e in events), default=now), last_ts=now)
        gap.last_ts = now
        gap.reason = str(exc)[:500]
        self._gap = gap
        if self.fail_open:
            overflow = max(0, len(self._retry) + len(events) - (self._retry.maxlen or 0))
            gap.dropped += overflow
            self._retry.extend(events)
            for _, future in batch:
                if future is not None:
                    future.set_result(None)
            time.sleep(0.05)  # the store is down: do not spin on it
        else:
            gap.refused += len(events)
            error = AuditUnavailable(f"audit trail unavailable: {exc}")
            for _, future in batch:
                if future is not None:
                    future.set_exception(error)

    def _gap_event(self) -> Event:
        gap = self._gap
        assert gap is not None
        return Event(
            kind="audit.gap",
            decision="error",
            details={
                "from_ts": gap.first_ts,
                "to_ts": gap.last_ts,
                "refused_events": gap.refused,
                "retried_events": len(self._retry),
                "dropped_events": gap.dropped,
                "fail_mode": "open" if self.fail_open else "closed",
                "reason": gap.reason,
            },
        )
