"""Derived tables, kept in step with the log after the fact, in batches.

A projection turns events into rows of a derived table: the Bridge's sessions and tool calls, the spend
ledger, the full-text index. Applied inside each request's own commit, they made every commit write those
tables' pages too (about half of its pages) and cost the serving loop ~11 µs per event. Applied here, a
batch of hundreds or thousands of events at a time, each page is written once per batch and each
statement runs as one `executemany`.

`Projector.catch_up` reads the events after its mark (`projection_state`) without any lock, then applies
them and moves the mark in one short transaction that first re-checks the mark: exactly once, whoever
runs it and however many run at once (the server's background task, the writer process, a reader, other
replicas). Readers of derived tables catch up first (`catch_up` / `acatch_up`), so what is in the log is
in what they read: `gatehouse sessions list` right after a call shows it.

Where it runs: in the writer process between commits when there is one; otherwise in a process of its
own (`catch_up_process_ctx`), so that its CPU is not taken from the serving loop (one GIL) and, on
SQLite, its writes take only the derived file's lock (`gatehouse.store.db`); in a thread of the server
(`catch_up_ctx`) where a process cannot be started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web

from gatehouse.audit import journal, worker
from gatehouse.audit.events import CONTENT_COLUMNS, Event, event_from_tuple
from gatehouse.store.db import Database, Tx

# `(tx, events)`: add what `events` (in seq order, a contiguous part of the log) mean to derived tables.
# Picklable, to run in the writer process.
Projection = Callable[[Tx, Sequence[Event]], None]

log = logging.getLogger(__name__)

_BATCH = 1000
# The projector process runs at a lower priority: its batches come in bursts (a second's events at once),
# and at equal priority each burst took CPU from the serving loop when the machine was busy.
_NICE = 10


class Projector:
    def __init__(
        self, projections: Sequence[Projection], *, name: str = "derived", batch: int = _BATCH
    ) -> None:
        self.projections = tuple(projections)
        self.name = name
        self.batch = batch

    def behind(self, db: Database) -> bool:
        """Are there events the derived tables do not reflect yet? One indexed read, and the journal's
        sizes."""
        mark, head = self._marks(db)
        return mark < head or journal.pending(db)

    def _marks(self, db: Database) -> tuple[int, int]:
        """(last projected seq, last seq in the log)."""
        row = db.query_one(
            "SELECT p.seq AS done, h.seq AS head FROM chain_head h"
            " LEFT JOIN projection_state p ON p.name = ? WHERE h.id = 1",
            (self.name,),
        )
        return (0, 0) if row is None else (int(row["done"] or 0), int(row["head"]))

    def catch_up(self, db: Database, *, max_events: int | None = None) -> int:
        """Project the events appended since the last pass, and those the journal holds (chained into the
        log first); return how many were projected."""
        done = 0
        while max_events is None or done < max_events:
            step = self.batch if max_events is None else min(self.batch, max_events - done)
            mark, head = self._marks(db)
            if head <= mark:
                # Up to date with the log: chain the journal's next events and project them as they are,
                # without reading them back, if they follow the mark (another writer may have appended in
                # between: then they are read back with those).
                fresh = journal.drain(db, max_events=step)
                if not fresh:
                    return done
                if fresh[0].seq == mark + 1 and self._apply(db, mark, fresh, fresh[-1].seq):
                    done += len(fresh)
                continue
            # Up to the head read first: every event up to it is committed, so none is skipped.
            rows = db.query_tuples(
                f"SELECT {CONTENT_COLUMNS} FROM events WHERE seq > ? AND seq <= ? AND pruned_by IS NULL"
                " ORDER BY seq LIMIT ?",
                (mark, head, step),
            )
            # A short batch reaches the head: pruned events in between have nothing left to project.
            last = int(rows[-1][0]) if len(rows) == step else head
            if self._apply(db, mark, [event_from_tuple(r) for r in rows], last):
                done += len(rows)
        return done

    def _apply(self, db: Database, mark: int, events: Sequence[Event], last: int) -> bool:
        """Project `events` (the log after `mark`, up to `last`) and move the mark to `last`, unless
        another pass moved it first (False: read again from its mark)."""
        with db.transaction(derived=True) as tx:
            lock = " FOR UPDATE" if db.dialect == "postgresql" else ""
            now = tx.one(f"SELECT seq FROM projection_state WHERE name = ?{lock}", (self.name,))
            if now is None:
                tx.execute("INSERT INTO projection_state (name, seq) VALUES (?, 0)", (self.name,))
            elif int(now["seq"]) != mark:
                return False
            for project in self.projections:
                project(tx, events)
            tx.execute("UPDATE projection_state SET seq = ? WHERE name = ?", (last, self.name))
        return True

    def step(self, db: Database) -> bool:
        """A writer-process task (`AuditWriter(process_tasks=...)`): one batch; True while more remain."""
        return self.catch_up(db, max_events=self.batch) >= self.batch

    async def acatch_up(self, db: Database) -> int:
        """`catch_up` from async code: in a worker thread, so the event loop never waits on the write lock
        (nor on PostgreSQL at all); on SQLite, when there is nothing to do, without leaving the loop."""
        if db.dialect == "sqlite" and not self.behind(db):
            return 0
        return await asyncio.to_thread(self.catch_up, db)


def catch_up_ctx(
    db: Database,
    tasks: Sequence[Callable[..., object]],
    *,
    interval_s: float = 1.0,
    max_events: int = 20_000,
    name: str = "gatehouse-catch-up",
) -> Callable[[web.Application], AsyncIterator[None]]:
    """For `app.cleanup_ctx`: every `interval_s`, run each catch-up task (`task(db, max_events=...)`: the
    projector, the time map) in one background thread of its own, which holds its own
    store connection and page cache. What the writer process does between commits, for a server without
    one."""

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

        def run_all() -> None:
            for task in tasks:
                try:
                    task(db, max_events=max_events)
                except Exception:  # the store may be down for a while; the next pass retries
                    log.warning("catch-up task %s failed", getattr(task, "__qualname__", task), exc_info=True)

        async def run() -> None:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(interval_s)
                await loop.run_in_executor(worker, run_all)

        task = asyncio.create_task(run(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        worker.shutdown(wait=True)

    return ctx


def catch_up_process_ctx(
    db: Database,
    tasks: Sequence[Callable[[Database], bool]],
    *,
    fallback: Sequence[Callable[..., object]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """For `app.cleanup_ctx`: run the catch-up `tasks` (`task(db)`: a bounded step, True while more remains)
    in a process of its own: the writer process's code, sent no events (`gatehouse.audit.worker`). If it
    cannot be started, `catch_up_ctx(db, fallback)` runs them in a thread instead. The process stops at
    cleanup, after the pass it is in."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        started = worker.spawn(
            worker.WorkerConfig(
                url=db.url,
                synchronous=db.synchronous,
                busy_timeout_ms=db.busy_timeout_ms,
                projections=(),
                max_batch=1,
                tasks=tuple(tasks),
                checkpoints=False,  # the serving process's checkpointer keeps both files' WALs short
                nice=_NICE,
            )
        )
        if started is None:
            async for _ in catch_up_ctx(db, fallback)(app):
                yield
            return
        process, sock = started
        watch = asyncio.create_task(
            _watch(process, sock, catch_up_ctx(db, fallback)(app)), name="gatehouse-projector"
        )
        try:
            yield
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await asyncio.to_thread(_stop, process, sock)

    return ctx


async def _watch(
    process: subprocess.Popen[bytes], sock: socket.socket, fallback: AsyncIterator[None]
) -> None:
    """If the projector process exits before the server does, a thread takes over its work."""
    with contextlib.suppress(OSError):
        await asyncio.get_running_loop().sock_recv(sock, 1)  # it never sends: this returns when it exits
    log.error(
        "projector process exited (status %s): derived tables are now projected in-process", process.wait()
    )
    await anext(fallback)  # starts the thread
    try:
        await asyncio.Event().wait()  # until the server stops
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(fallback)  # stops it


def _stop(process: subprocess.Popen[bytes], sock: socket.socket, timeout: float = 10.0) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)  # end of input: the process finishes its pass and exits
    sock.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("projector process did not stop in %.0f s: killed", timeout)
        process.kill()
        process.wait()
