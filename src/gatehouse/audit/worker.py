"""The audit writer process: commits the serving process's events so that its event loop does not.

Gatehouse serves from one event loop, held to one core by the GIL. Chaining, inserting and projecting an
event costs tens of microseconds of CPU, and a commit's WAL writes more: done on the loop, that is a
third of what a proxied call costs. The writer process does it on another core. The serving process
sends each loop iteration's events as one frame over a socket pair and resumes each waiting request when
the frame's acknowledgement comes back, which is sent only after the transaction holding the events has
committed: the durability promise is unchanged, only the CPU moved.

The link is a pair of sans-IO pieces, `frame` and `FrameReader` (a 4-byte length, then the payload),
used by both ends:

* first frame, parent to child: the pickled `WorkerConfig` (store URL, projections, tasks). Pickled
  because projections and tasks are Python objects; the socket pair is private to the two processes.
* then, parent to child: `[batch_no, [event, ...]]` in JSON, one per flush.
* child to parent, per batch, in order: `[batch_no, seconds, [[seq, prev_hash, hash], ...]]` once
  committed, or `[batch_no, seconds, "error"]` if the store refused it (the parent then retries the
  batch through its own writer thread, which applies the fail-open/fail-closed policy).

The child exits when the parent closes its end (or dies: the kernel closes it). It ignores SIGINT and
SIGTERM so that a signal sent to the whole process group leaves it to drain what it was sent.

The same process, sent no events, is the server's projector process (`projector.catch_up_process_ctx`):
it runs only the tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gatehouse.audit.events import Event
from gatehouse.gctuning import tune_gc
from gatehouse.store.db import Database

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
_READ_SIZE = 1 << 20


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into frames; holds a partial frame until the rest arrives."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        pos = 0
        while len(buffer) - pos >= 4:
            (size,) = _LENGTH.unpack_from(buffer, pos)
            if len(buffer) - pos - 4 < size:
                break
            frames.append(bytes(buffer[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        del buffer[:pos]
        return frames


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    url: str
    synchronous: str
    busy_timeout_ms: int
    projections: tuple[Any, ...]
    max_batch: int
    # Housekeeping run between commits (the projector, the time map): `task(db)` does a bounded step
    # and returns True while more remains; a task runs once those before it are done (`_run_tasks`).
    # Here rather than in the serving process, off its core.
    tasks: tuple[Callable[[Database], bool], ...] = ()
    # WAL checkpoints of the store; False where the serving process runs them (a tasks-only process).
    checkpoints: bool = True
    # Added to the process's nice value: a tasks-only process yields the CPU to the serving one.
    nice: int = 0


def spawn(config: WorkerConfig) -> tuple[subprocess.Popen[bytes], socket.socket] | None:
    """Start a writer process; None if the projections cannot be sent to one (closures, in tests)."""
    try:
        first = frame(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        log.warning("audit writer process not used: its projections cannot be pickled (%s)", exc)
        return None
    ours, theirs = socket.socketpair()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.audit.worker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
    finally:
        theirs.close()
    ours.sendall(first)
    ours.setblocking(False)
    return process, ours


# -- the parent's end --------------------------------------------------------------------------------

# What one flush of the writer sent: each caller's events and what it awaits (None: nobody waits).
Batch = list[tuple[Sequence[Event], "asyncio.Future[None] | None"]]


class WorkerLink:
    """Sends batches from the serving loop without blocking it and matches acknowledgements to them.
    `committed(batch, seconds)` runs once a batch is durable (its events now carry seq and hashes),
    `refused(batch, reason)` if the child's transaction failed, `lost(batches)` with whatever was never
    acknowledged if the child goes away. All three run on the loop."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        sock: socket.socket,
        *,
        committed: Callable[[Batch, float], None],
        refused: Callable[[Batch, str], None],
        lost: Callable[[list[Batch]], None],
    ) -> None:
        self.process = process
        self._sock = sock
        self._fd = sock.fileno()
        self._committed, self._refused, self._lost = committed, refused, lost
        self._reader = FrameReader()
        self._inflight: dict[int, Batch] = {}
        self._next = 0
        self._out = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.alive = True
        self.inflight_events = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read acknowledgements on `loop` (the loop that appends)."""
        if self._loop is loop:
            return
        self._detach()
        self._loop = loop
        loop.add_reader(self._fd, self._readable)
        if self._out:
            loop.add_writer(self._fd, self._writable)

    def _detach(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._loop = None

    def send(self, batch: Batch) -> None:
        number = self._next
        self._next += 1
        self._inflight[number] = batch
        events = [e for evs, _ in batch for e in evs]
        self.inflight_events += len(events)
        data = frame(orjson.dumps([number, events]))
        if self._out:  # earlier frames still wait for room in the socket: keep the order
            self._out += data
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lose()
            return
        if sent < len(data):
            self._out += data[sent:]
            if self._loop is not None:
                self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            return
        except OSError:
            self._lose()
            return
        del self._out[:sent]
        if not self._out and self._loop is not None:
            self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            data = self._sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lose()
            return
        self._acknowledged(data)

    def _acknowledged(self, data: bytes) -> None:
        for raw in self._reader.feed(data):
            number, elapsed, result = orjson.loads(raw)
            batch = self._inflight.pop(number)
            events = [e for evs, _ in batch for e in evs]
            self.inflight_events -= len(events)
            if isinstance(result, str):
                self._refused(batch, result)
                continue
            for event, (seq, prev_hash, digest) in zip(events, result, strict=True):
                event.seq, event.prev_hash, event.hash = seq, prev_hash, digest
            self._committed(batch, elapsed)

    def _lose(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._detach()
        self._sock.close()
        batches = list(self._inflight.values())
        self._inflight.clear()
        self.inflight_events = 0
        log.error("audit writer process exited (status %s): writing in-process", self.process.poll())
        self._lost(batches)

    def close(self, timeout: float = 10.0) -> list[Batch]:
        """Let the child commit everything sent, then stop it. Returns the batches it never
        acknowledged (it died), for the caller to write another way."""
        if self.alive:
            self.alive = False
            self._detach()
            try:
                self._sock.setblocking(True)
                self._sock.settimeout(timeout)
                if self._out:
                    self._sock.sendall(self._out)
                self._sock.shutdown(socket.SHUT_WR)
                while self._inflight and (data := self._sock.recv(_READ_SIZE)):
                    self._acknowledged(data)
            except OSError as exc:
                log.error("audit writer process: closing the link failed: %s", exc)
            self._sock.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        batches = list(self._inflight.values())
        self._inflight.clear()
        self.inflight_events = 0
        return batches


# -- the child ---------------------------------------------------------------------------------------


_TASK_INTERVAL_S = 1.0


def serve(sock: socket.socket) -> None:
    """Commit what arrives until the parent closes the link; housekeeping in between."""
    reader = FrameReader()
    config: WorkerConfig | None = None
    db: Database | None = None
    open_ = True
    next_tasks = time.monotonic() + _TASK_INTERVAL_S
    try:
        while open_:
            frames, open_ = _receive(sock, reader, max(0.0, next_tasks - time.monotonic()))
            if config is not None and db is not None and time.monotonic() >= next_tasks:
                behind = _run_tasks(db, config.tasks)
                # Behind: another step after the next commit, so indexing keeps pace with a busy log.
                next_tasks = time.monotonic() + (0.0 if behind else _TASK_INTERVAL_S)
            if config is None and frames:
                config = pickle.loads(frames.pop(0))  # noqa: S301 - from our own parent, over a private socket pair
                if config.nice:
                    os.nice(config.nice)
                db = Database(
                    config.url, synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms
                )
                if config.checkpoints:
                    db.checkpoint_in_background()
                else:
                    db.leave_checkpoints_to_others()
                tune_gc()
            if frames and config is not None and db is not None:
                sock.sendall(b"".join(_commit(db, config, frames)))
    finally:
        if db is not None:
            db.close()


def _run_tasks(db: Database, tasks: Sequence[Callable[[Database], bool]]) -> bool:
    """Run the tasks in order until one reports more to do; the rest wait for a pass that finds it done.
    The projector comes first and keeps the time map as it goes: run while it is behind, the map's own
    catch-up raced ahead of it and read every event a second time."""
    for task in tasks:
        try:
            if task(db):
                return True
        except Exception as exc:  # the store may be down for a while; the next pass retries
            log.warning("audit writer process: %s failed: %s", getattr(task, "__name__", task), exc)
    return False


def _receive(sock: socket.socket, reader: FrameReader, timeout: float) -> tuple[list[bytes], bool]:
    """Wait up to `timeout` for frames, then take whatever else is already there: one commit for all.
    Returns the frames (possibly none) and whether the link is still open."""
    frames: list[bytes] = []
    while not frames:
        if not select.select([sock], [], [], timeout)[0]:
            return frames, True
        data = sock.recv(_READ_SIZE)
        if not data:
            return frames, False
        frames += reader.feed(data)
    while select.select([sock], [], [], 0)[0]:
        data = sock.recv(_READ_SIZE)
        if not data:
            return frames, False
        frames += reader.feed(data)
    return frames, True


def _commit(db: Database, config: WorkerConfig, frames: Sequence[bytes]) -> list[bytes]:
    acks: list[bytes] = []
    group: list[tuple[int, list[Event]]] = []
    size = 0
    for raw in frames:
        batch_no, items = orjson.loads(raw)
        events = [Event(**item) for item in items]
        group.append((batch_no, events))
        size += len(events)
        if size >= config.max_batch:
            acks += _transaction(db, config, group)
            group, size = [], 0
    if group:
        acks += _transaction(db, config, group)
    return acks


def _transaction(db: Database, config: WorkerConfig, group: list[tuple[int, list[Event]]]) -> list[bytes]:
    from gatehouse.audit.writer import append_events  # the parent's module imports this one

    events = [e for _, batch in group for e in batch]
    started = time.perf_counter()
    try:
        with db.transaction() as tx:
            append_events(tx, events, config.projections)
    except Exception as exc:
        elapsed = time.perf_counter() - started
        log.warning("audit writer process: commit failed: %s", exc)
        return [frame(orjson.dumps([no, elapsed, str(exc)[:500]])) for no, _ in group]
    elapsed = time.perf_counter() - started
    return [
        frame(orjson.dumps([no, elapsed, [[e.seq, e.prev_hash, e.hash] for e in batch]]))
        for no, batch in group
    ]


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="gatehouse audit writer process: %(message)s")
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    try:
        serve(sock)
    except (ConnectionError, OSError) as exc:  # the parent went away mid-answer
        log.debug("link closed: %s", exc)
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
