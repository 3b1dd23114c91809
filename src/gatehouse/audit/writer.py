"""The audit writer: every event is appended to the chain in a group commit.

Group commit: everything appended while the previous transaction ran is written in one transaction (chain
head read under the write lock, hashes computed, rows inserted, commit). Derived tables are not written
here but after the fact, in bulk, by the projector (`gatehouse.audit.projector`); `projections` given to
the writer still run in its transaction (the server gives none; tests build derived rows this way).
Callers that must not act before their event is durable `await append(...)`; it returns once the batch
holding the event has committed, so the cost of one commit is shared by every request that arrived
meanwhile.

Four paths lead there. With `journal=True` (`audit.journal`, the server's default on SQLite), what the
serving event loop appends within one of its turns is a cohort (`_Cohort`), written to the event journal
as one record (`gatehouse.audit.journal`) first thing in the next turn, before any of its appenders
resumes: durable once that `write(2)` returns, chained into the log later by the projector. Otherwise
the loop's appends are collected for a few turns; with `process=True` (`audit.writer_process`) they are
sent to the writer process (`gatehouse.audit.worker`), which commits them on another core and
acknowledges them; else a SQLite batch is committed on the loop itself (an embedded commit costs about
a hundred microseconds of CPU, less than a round trip through another thread, which would also fight
the loop for the GIL). Appends from other threads go to the journal directly, a record each, where
there is one. Everything else goes through the writer thread: appends from other threads or loops
without a journal, PostgreSQL batches without the process (the commit waits on the network), and every
batch the fast paths could not commit (the store fails, the process died, or the write lock stayed
taken elsewhere for longer than `_BUSY_PATIENCE_S`: a briefly taken lock is retried on the loop): the
thread waits, retries and applies the failure policy. A journal that cannot be written (its disk is
full) takes nothing more: that cohort is committed as a batch, and so is every later append. A batch
the writer process never acknowledged before it died may have committed all the same (the death fell
between commit and acknowledgement), and so may a fail-open retry's (a connection lost during COMMIT):
the thread first looks such events up by id and gives those found their place in the chain back
instead of appending them twice.

If the store fails, `append` raises `AuditUnavailable` (fail closed) unless the writer runs fail-open, in
which case events are kept in a bounded buffer and retried, and an `audit.gap` event records what passed
while the store was down once it is back.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from gatehouse.audit import journal as journal_
from gatehouse.audit import worker
from gatehouse.audit.chain import append_to_chain
from gatehouse.audit.events import Event, now_us
from gatehouse.audit.export.source import events_by_id
from gatehouse.audit.projector import Projection
from gatehouse.store.db import Database, StoreBusy, Tx

log = logging.getLogger(__name__)

# An observer learns of events once they are committed (metrics, export wake-ups). It runs on the writer
# thread, so it must be quick and must not raise.
Observer = Callable[[Sequence[Event], float], None]

# Loop turns an inline SQLite commit waits for more appends. Measured at 16 clients (docs/benchmarks.md,
# session 3): 2 turns 6.8 events per commit, 3 turns 8.0 and 6 % less CPU per call; no change at 1 client.
_FLUSH_TURNS = 3
# An inline commit that finds the write lock taken (a WAL checkpoint, another writer) retries on the
# loop every millisecond, its batch growing meanwhile, for up to this long (or the store's busy timeout,
# if shorter) before the writer thread takes it over. Handing it over at once cost 18 ms per batch at the
# median: SQLite's busy handler sleeps 1, 2, 5, 10 ms in turn, and the thread waits for the GIL each time
# it needs it.
_BUSY_RETRY_S = 0.001
_BUSY_PATIENCE_S = 0.25


# An event for the writer thread: the events, what their caller awaits (None: nobody), and whether a writer
# process may have committed them before it died.
_Item = tuple[Sequence[Event], Future[None] | None, bool]


class _Cohort:
    """What the loop appends to the journal within one of its turns: one record, written by a callback
    queued with the first of them, so it runs in the next turn before any appender resumes. Each appender
    waits one turn (`asyncio.sleep(0)`) instead of a future resolved by a flush a few turns later: with
    two durable appends per Bridge call, the turns a request spent waiting cost more throughput at 16
    clients than the journal writes themselves (docs/benchmarks.md, session 24). The appenders of a
    cohort still resume together, in one turn, and send upstream together."""

    __slots__ = ("awaited", "events", "fallback", "written")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.awaited = False  # has an appender waiting for it (not only `append_nowait`)
        self.written = False
        # Refused by the journal: what its appenders await instead, the commit of its events.
        self.fallback: asyncio.Future[None] | None = None


class AuditUnavailable(Exception):
    """The trail could not be written, so the action it describes must not happen (fail closed)."""


def append_events(tx: Tx, events: Sequence[Event], projections: Sequence[Projection] = ()) -> None:
    """Chain and insert `events` inside an open transaction, after whatever the journal holds (so the log
    keeps the order in which events were acknowledged). Used by the writer for batches and directly by
    admin commands, whose change and its event must commit together."""
    if not events:
        return
    drained = journal_.drain_into(tx)
    append_to_chain(tx, events)
    for project in projections:
        project(tx, [*drained, *events])


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
        process: bool = False,
        process_tasks: Sequence[Callable[[Database], bool]] = (),
        journal: bool = False,
    ) -> None:
        self.db = db
        self.projections = tuple(projections)
        self.max_batch = max_batch
        self.fail_open = fail_open
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._retry: collections.deque[Event] = collections.deque(maxlen=retry_buffer)
        self._gap: _Gap | None = None
        self._thread: threading.Thread | None = None
        self.observers = list(observers)
        self.healthy = True
        self.committed_events = 0
        # The event-loop paths (the writer process, or an inline SQLite commit): what this loop iteration
        # appended, and the loop it belongs to.
        self._process = process
        self._process_tasks = tuple(process_tasks)  # see worker.WorkerConfig.tasks
        self._link: worker.WorkerLink | None = None
        self._inline = process or db.dialect == "sqlite"
        self._inline_conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Sequence[Event], asyncio.Future[None] | None]] = []
        self._flush_scheduled = False
        self._cohort: _Cohort | None = None
        self._busy_since: float | None = None
        # SQLite without the writer process: appends go to the journal (see `gatehouse.audit.journal`).
        self._use_journal = journal and not process
        self._journal: journal_.Journal | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            if self._process:
                self._link = self._spawn()
            elif self._use_journal:
                self._journal = self._open_journal()
            if self._link is None:
                self.db.checkpoint_in_background()
            else:
                self.db.leave_checkpoints_to_others()
            self._thread = threading.Thread(target=self._run, name="gatehouse-audit-writer", daemon=True)
            self._thread.start()

    def _open_journal(self) -> journal_.Journal | None:
        try:
            taken = journal_.Journal.open(self.db)
        except OSError as exc:
            log.error("audit journal unavailable (%s): events are committed one batch at a time", exc)
            return None
        if taken is None and self.db.dialect == "sqlite":
            log.info("audit journal held by another process: events are committed one batch at a time")
        return taken

    def _spawn(self) -> worker.WorkerLink | None:
        started = worker.spawn(
            worker.WorkerConfig(
                url=self.db.url,
                synchronous=self.db.synchronous,
                busy_timeout_ms=self.db.busy_timeout_ms,
                projections=self.projections,
                max_batch=self.max_batch,
                tasks=self._process_tasks,
            )
        )
        if started is None:
            return None
        process, sock = started
        return worker.WorkerLink(
            process, sock, committed=self._batch_committed, refused=self._batch_refused, lost=self._link_lost
        )

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the thread (and the writer process); chain what is journaled."""
        if self._cohort is not None:
            self._write_cohort(self._cohort)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
            try:
                while journal_.drain(self.db, max_events=self.max_batch * 10):
                    pass
            except Exception as exc:  # it stays in the journal: the next drain chains it
                log.warning("audit journal: not drained at close: %s", exc)
        if self._pending:
            self._flush_inline()
        if self._link is not None:
            for batch in self._link.close(timeout):  # the process died holding them: the thread writes them
                self._batch_refused(batch, "the writer process exited", maybe_written=True)
            self._link = None
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        if self._inline_conn is not None:
            self._inline_conn.close()
            self._inline_conn = None

    @property
    def queue_depth(self) -> int:
        inflight = self._link.inflight_events if self._link is not None else 0
        cohort = len(self._cohort.events) if self._cohort is not None else 0
        return self._queue.qsize() + len(self._pending) + cohort + inflight

    # -- appending ---------------------------------------------------------------------------------

    async def append(self, *events: Event) -> None:
        """Return once `events` are durable. Raises AuditUnavailable if they cannot be (fail closed);
        fail-open writers never raise: the events wait in the retry buffer."""
        loop = asyncio.get_running_loop()
        if self._inline_here(loop):
            if self._journal_usable:
                cohort = self._join_cohort(loop, events, awaited=True)
                await asyncio.sleep(0)  # the cohort is written first thing in the next turn
                if cohort.written:
                    return
                if cohort.fallback is None:  # never: the loop runs callbacks in the order they were queued
                    raise AuditUnavailable("the audit journal record was not written")
                await asyncio.shield(cohort.fallback)  # shared with the cohort's other appenders
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._pending.append((events, waiter))
            self._schedule_flush(loop)
            await waiter
            return
        if self._journaled(events):
            return
        future: Future[None] = Future()
        self._queue.put((events, future, False))
        await asyncio.wrap_future(future)

    def append_nowait(self, *events: Event) -> None:
        """Queue events whose durability nobody waits for (bookkeeping that follows an action)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and self._inline_here(loop):
            if self._journal_usable:
                self._join_cohort(loop, events, awaited=False)
                return
            self._pending.append((events, None))
            self._schedule_flush(loop)
        elif not self._journaled(events):
            self._queue.put((events, None, False))

    def append_sync(self, *events: Event, timeout: float = 30.0) -> None:
        """For callers outside any event loop (threads, scripts): return once `events` are durable."""
        if self._journaled(events):
            return
        future: Future[None] = Future()
        self._queue.put((events, future, False))
        future.result(timeout)

    def _journaled(self, events: Sequence[Event]) -> bool:
        """Make `events` durable in the journal (a record of their own), if there is one; False if they
        must be committed."""
        started = time.perf_counter()
        if not self._write_journal(events):
            return False
        self._committed(events, time.perf_counter() - started)
        return True

    def _write_journal(self, events: Sequence[Event]) -> bool:
        taken = self._journal
        if taken is None or not taken.usable:
            return False
        try:
            taken.write(events)
        except journal_.JournalError as exc:
            log.warning("audit journal refused %d event(s): %s", len(events), exc)
            return False
        return True

    # -- the event-loop path (SQLite) ----------------------------------------------------------------

    @property
    def _journal_usable(self) -> bool:
        return self._journal is not None and self._journal.usable

    def _join_cohort(
        self, loop: asyncio.AbstractEventLoop, events: Sequence[Event], *, awaited: bool
    ) -> _Cohort:
        cohort = self._cohort
        if cohort is None:
            cohort = self._cohort = _Cohort()
            loop.call_soon(self._write_cohort, cohort)
        cohort.events.extend(events)
        cohort.awaited = cohort.awaited or awaited
        return cohort

    def _write_cohort(self, cohort: _Cohort) -> None:
        if cohort is not self._cohort:  # written already, at close
            return
        self._cohort = None
        if self._journaled(cohort.events):
            cohort.written = True
            return
        # The journal refused the record: the events are committed as any other batch, and the cohort's
        # appenders wait for that commit (or its failure, under the failure policy).
        loop = self._loop
        if loop is not None and not loop.is_closed() and cohort.awaited:
            cohort.fallback = loop.create_future()
        self._pending.append((cohort.events, cohort.fallback))
        if loop is not None and loop.is_running():  # at close, `close` commits what is pending
            self._schedule_flush(loop)

    def _inline_here(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Commit on this loop? Only for SQLite, while the store is healthy (recovery is the thread's
        job), and on one loop: the first one that appends owns the path."""
        if not self._inline or not self.healthy or self._thread is None:
            return False
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        if self._loop is not loop:
            return False
        if self._link is not None:
            self._link.attach(loop)
        elif self._process and self.db.dialect != "sqlite":
            return False  # the process is gone: PostgreSQL commits belong on the thread
        return True

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._link is not None:
                # The writer process groups whatever frames arrive while it commits: send at once.
                loop.call_soon(self._flush_inline)
            else:
                # A few turns of the loop: requests whose data arrived in the same turn append in the next
                # ones, so waiting lets them share the commit (free when the loop is idle).
                loop.call_soon(self._flush_after, loop, _FLUSH_TURNS - 1)

    def _flush_after(self, loop: asyncio.AbstractEventLoop, turns: int) -> None:
        if turns:
            loop.call_soon(self._flush_after, loop, turns - 1)
        else:
            self._flush_inline()

    def _flush_inline(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if self._link is not None:
            self._link.send(batch)
            return
        events = [e for evs, _ in batch for e in evs]
        if not events:
            return
        started = time.perf_counter()
        if self._write_journal(events):
            self._batch_committed(batch, time.perf_counter() - started)
            return
        try:
            if self._inline_conn is None:
                # The log's lock alone, unless in-commit projections write derived tables too.
                self._inline_conn = self.db.connect(attach=bool(self.projections))
                # Never wait on the loop: a lock held elsewhere is retried soon (`_retry_when_free`).
                self._inline_conn.execute("PRAGMA busy_timeout=0")
            with self.db.transaction(self._inline_conn) as tx:
                append_events(tx, events, self.projections)
        except StoreBusy:
            if self._retry_when_free(batch):
                return
            self._batch_refused(batch, "")
            return
        except Exception:
            self._batch_refused(batch, "")
            return
        self._busy_since = None
        self._batch_committed(batch, time.perf_counter() - started)

    def _retry_when_free(self, batch: worker.Batch) -> bool:
        """Keep `batch` for another inline try shortly, unless the lock has been busy too long."""
        now, loop = time.monotonic(), self._loop
        if self._busy_since is None:
            self._busy_since = now
        patience = min(_BUSY_PATIENCE_S, self.db.busy_timeout_ms / 1000)
        if loop is None or now - self._busy_since > patience:
            self._busy_since = None
            return False
        self._pending[:0] = batch
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_later(_BUSY_RETRY_S, self._flush_inline)
        return True

    def _batch_committed(self, batch: worker.Batch, elapsed: float) -> None:
        self._committed([e for evs, _ in batch for e in evs], elapsed)
        for _, waiter in batch:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _batch_refused(self, batch: worker.Batch, _reason: str, *, maybe_written: bool = False) -> None:
        """The fast path could not commit `batch`: the thread retries it under the failure policy.
        `maybe_written`: the writer process died before acknowledging it, perhaps after its commit."""
        for events, waiter in batch:
            if waiter is None or waiter.done() or waiter.get_loop().is_closed():
                self._queue.put((events, None, maybe_written))
                continue
            future: Future[None] = Future()
            self._queue.put((events, future, maybe_written))
            asyncio.wrap_future(future, loop=waiter.get_loop()).add_done_callback(
                functools.partial(_settle, waiter)
            )

    def _link_lost(self, batches: list[worker.Batch]) -> None:
        self._link = None
        if self.db.dialect == "sqlite":
            self.db.checkpoint_in_background()  # the process did it
        for batch in batches:
            self._batch_refused(batch, "the writer process exited", maybe_written=True)

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
            batch: list[_Item] = []
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

    def _write(self, batch: list[_Item]) -> None:
        events = [e for evs, _, _ in batch for e in evs]
        pending = list(self._retry) if self._retry else []
        # Retried events too: a commit that raised may have committed (a connection lost during COMMIT).
        unsure = pending + [e for evs, _, maybe_written in batch if maybe_written for e in evs]
        gap_event = self._gap_event() if self._gap is not None else None
        to_write = ([gap_event] if gap_event else []) + pending + events
        recovered: list[Event] = []
        started = time.perf_counter()
        try:
            with self.db.transaction() as tx:
                if unsure and (written := _already_written(tx, unsure)):
                    recovered = [e for e in unsure if e.id in written]
                    to_write = [e for e in to_write if e.id not in written]
                append_events(tx, to_write, self.projections)
        except Exception as exc:  # the store failed: nothing of this batch is durable
            self._failed(batch, events, exc)
            return
        self.healthy = True
        self._retry.clear()
        self._gap = None
        self._committed(recovered + to_write, time.perf_counter() - started)
        for _, future, _ in batch:
            if future is not None:
                future.set_result(None)

    def _committed(self, events: Sequence[Event], elapsed: float) -> None:
        self.committed_events += len(events)
        for observe in self.observers:
            try:
                observe(events, elapsed)
            except Exception:  # an observer's bug must not stop the trail
                log.exception("audit observer failed")

    def _failed(self, batch: list[_Item], events: list[Event], exc: Exception) -> None:
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
            for _, future, _ in batch:
                if future is not None:
                    future.set_result(None)
            time.sleep(0.05)  # the store is down: do not spin on it
        else:
            gap.refused += len(events)
            error = AuditUnavailable(f"audit trail unavailable: {exc}")
            for _, future, _ in batch:
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


def _already_written(tx: Tx, events: Sequence[Event]) -> set[str]:
    """Which of `events` are in the log already (a writer process committed them, then died before it
    said so)? Those get back their place in the chain instead of a second copy. Read on the thread's
    connection, so inside `tx`."""
    stored = events_by_id(tx.db, [e.id for e in events])
    for event in events:
        if (found := stored.get(event.id)) is not None:
            event.seq, event.prev_hash, event.hash = found.seq, found.prev_hash, found.hash
    return set(stored)


def _settle(waiter: asyncio.Future[None], done: asyncio.Future[None]) -> None:
    """Pass the writer thread's outcome on to the caller waiting on the loop."""
    if waiter.done():
        return
    if done.cancelled():
        waiter.cancel()
    elif (error := done.exception()) is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(None)
