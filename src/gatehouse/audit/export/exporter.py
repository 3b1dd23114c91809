"""The exporter: copies the event log to each configured sink, in order, without losing anything.

Per sink, a loop on the server's event loop:

    cursor = the sink's persisted cursor (export_cursors)
    read events with seq > cursor, in sequence order, a batch at a time, from the store
    send them; on success move the cursor to the last one (and persist it)
    on failure wait (exponential backoff with jitter, Retry-After honoured) and send the same batch again
    with nothing new, sleep until the audit writer reports a commit (an observer), or `poll_interval_s`
    passes (events written by other processes or replicas)

Reading from the store rather than from memory is what makes a sink that is down for an hour, or a server
restart, lose nothing: the log is the queue. Delivery is at least once (a batch is resent if its
acknowledgement was lost); every event carries its `id` and `seq` for de-duplication and gap checks.
With several replicas, a lease on the cursor row makes one of them deliver to each sink (cursor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from gatehouse.audit.events import Event, now_us
from gatehouse.audit.export.base import Sink, SinkError
from gatehouse.audit.export.cursor import CursorStore
from gatehouse.audit.export.settings import (
    ExportSettings,
    JsonlSinkSettings,
    OtlpSinkSettings,
    SinkSettings,
    SyslogSinkSettings,
    WebhookSinkSettings,
)
from gatehouse.audit.export.source import events_after, events_by_id
from gatehouse.store.db import Database

log = logging.getLogger(__name__)


@dataclass
class SinkStatus:
    """What the exporter knows of one sink, for logs, metrics and status pages."""

    name: str
    destination: str
    cursor: int | None = None  # last delivered seq (None until the cursor is read)
    head: int = 0  # newest seq known in the log
    leader: bool = False  # this process holds the sink's lease and delivers to it
    up: bool | None = None  # None until a delivery was tried
    delivered: int = 0  # events delivered by this process
    batches: int = 0
    failures: int = 0  # consecutive failed attempts
    failures_total: int = 0
    skipped: int = 0  # events gone from the log (retention compaction) before they could be delivered
    last_error: str | None = None
    last_delivery_at: int | None = None  # µs

    @property
    def lag(self) -> int | None:
        return None if self.cursor is None else max(0, self.head - self.cursor)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lag": self.lag}


def build_sink(
    name: str,
    settings: SinkSettings,
    *,
    db: Database | None = None,
    provider_types: Mapping[str, str] | None = None,
) -> Sink:
    if isinstance(settings, JsonlSinkSettings):
        from gatehouse.audit.export.jsonl import JsonlSink

        return JsonlSink(name, settings)
    if isinstance(settings, SyslogSinkSettings):
        from gatehouse.audit.export.syslog import SyslogSink

        return SyslogSink(name, settings)
    if isinstance(settings, WebhookSinkSettings):
        from gatehouse.audit.export.webhook import WebhookSink

        return WebhookSink(name, settings)
    if isinstance(settings, OtlpSinkSettings):
        from gatehouse.audit.export.otlp import OtlpSink

        lookup = (lambda ids: events_by_id(db, ids)) if db is not None else None
        return OtlpSink(name, settings, lookup=lookup, provider_types=provider_types)
    raise TypeError(f"unknown sink settings {type(settings).__name__}")


class Exporter:
    def __init__(
        self,
        db: Database,
        settings: ExportSettings,
        *,
        provider_types: Mapping[str, str] | None = None,
        sinks: Sequence[Sink] | None = None,
        owner: str | None = None,
    ) -> None:
        """`provider_types` maps Bridge provider names to their type (anthropic, openai) for OTLP's
        gen_ai.provider.name; `sinks` replaces the sinks built from `settings` (tests, embedding)."""
        self.db = db
        self.settings = settings
        self.cursors = CursorStore(db)
        self._start_at_end: dict[str, bool] = {}
        if sinks is None:
            built = []
            for name, sink_settings in settings.sinks.items():
                if sink_settings.enabled:
                    built.append(build_sink(name, sink_settings, db=db, provider_types=provider_types))
                    self._start_at_end[name] = sink_settings.start == "end"
            sinks = built
        self.sinks = list(sinks)
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"two sinks share a name: {names}")
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Long enough to outlast a backoff pause, short enough for another replica to take over soon.
        self.lease_s = 3 * max(settings.retry_max_s, settings.poll_interval_s) + 30
        self.status: dict[str, SinkStatus] = {s.name: SinkStatus(s.name, s.destination) for s in self.sinks}
        self._head = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakes: dict[str, asyncio.Event] = {}
        self._stop_event: asyncio.Event | None = None
        self._stopping = False
        self._wake_pending = False

    # -- wiring --------------------------------------------------------------------------------------

    def observer(self, events: Sequence[Event], seconds: float) -> None:
        """An AuditWriter observer: wakes the sinks when events are committed. Runs on the writer
        thread, so it only notes the head and schedules a wake-up on the exporter's loop."""
        if events:
            self._head = max(self._head, events[-1].seq)
        loop = self._loop
        if loop is None or self._wake_pending:
            return
        self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self._wake_all)
        except RuntimeError:  # the loop has closed
            self._wake_pending = False

    def _wake_all(self) -> None:
        self._wake_pending = False
        for wake in self._wakes.values():
            wake.set()

    def lag(self) -> dict[str, int]:
        """Events not yet delivered, per sink (for sinks whose cursor is known)."""
        out = {}
        for status in self.status.values():
            status.head = max(status.head, self._head)
            if status.lag is not None:
                out[status.name] = status.lag
        return out

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until `stop()`. Meant to be a background task of the server."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._wakes = {s.name: asyncio.Event() for s in self.sinks}
        if self._stopping or not self.sinks:
            self._stop_event.set()
        tasks = [
            asyncio.create_task(self._run_sink(s), name=f"gatehouse-export-{s.name}") for s in self.sinks
        ]
        try:
            with contextlib.suppress(Exception):
                self._head = max(self._head, await asyncio.to_thread(self.cursors.head))
            await self._stop_event.wait()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout_s)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._shutdown()
            self._loop = None

    def stop(self) -> None:
        """Ask `run()` to finish (the batch in flight gets `shutdown_timeout_s`). Safe from any thread."""
        self._stopping = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._signal_stop)

    def _signal_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()
        for wake in self._wakes.values():
            wake.set()

    async def _shutdown(self) -> None:
        for sink in self.sinks:
            status = self.status[sink.name]
            if status.leader:
                try:
                    await asyncio.to_thread(self.cursors.release, sink.name, self.owner)
                except Exception as exc:  # the lease then lapses on its own
                    log.warning("export sink %s: cannot release its lease: %s", sink.name, exc)
                status.leader = False
            try:
                await sink.close()
            except Exception:
                log.exception("export sink %s: error while closing", sink.name)

    # -- one sink ------------------------------------------------------------------------------------

    async def _run_sink(self, sink: Sink) -> None:
        status = self.status[sink.name]
        wake = self._wakes[sink.name]
        renew_at = 0.0
        while not self._stopping:
            try:
                if not status.leader or time.monotonic() >= renew_at:
                    seq = await asyncio.to_thread(
                        self.cursors.claim,
                        sink.name,
                        self.owner,
                        self.lease_s,
                        start_at_end=self._start_at_end.get(sink.name, False),
                    )
                    if seq is None:
                        if status.leader:
                            log.warning("export sink %s: another process took over its delivery", sink.name)
                        status.leader, status.cursor, status.up = False, None, None  # not ours to report
                        # Not woken by commits: the holder delivers them; try for the lease now and then.
                        await self._sleep(self.settings.poll_interval_s)
                        continue
                    if not status.leader:
                        status.cursor = seq
                        status.leader = True
                    renew_at = time.monotonic() + self.lease_s / 3
                assert status.cursor is not None
                wake.clear()
                events = await asyncio.to_thread(
                    events_after, self.db, status.cursor, self.settings.batch_size
                )
                if not events:
                    status.head = max(status.head, self._head, status.cursor)
                    if not await self._wait(wake, self.settings.poll_interval_s):
                        # Nothing from this process's writer: look for events other processes wrote.
                        self._head = max(self._head, await asyncio.to_thread(self.cursors.head))
                    continue
                self._head = max(self._head, events[-1].seq)
                status.head = max(status.head, self._head)
                gone = events[0].seq - status.cursor - 1  # deleted by retention before delivery
                selected = [e for e in events if sink.accepts(e.kind)]
                if selected:
                    await sink.send(selected)
                last = events[-1].seq
                if not await asyncio.to_thread(
                    self.cursors.advance, sink.name, self.owner, last, self.lease_s
                ):
                    log.warning("export sink %s: lease lost; another process delivers from here", sink.name)
                    status.leader, status.cursor, status.up = False, None, None
                    continue
                renew_at = time.monotonic() + self.lease_s / 3
                if gone > 0:
                    log.warning(
                        "export sink %s: events %d..%d left the log (retention) before they were delivered",
                        sink.name,
                        status.cursor + 1,
                        status.cursor + gone,
                    )
                    status.skipped += gone
                status.cursor = last
                status.delivered += len(selected)
                status.batches += 1
                status.last_delivery_at = now_us()
                if status.failures:
                    log.info(
                        "export sink %s (%s) is back after %d failed attempts",
                        sink.name,
                        sink.destination,
                        status.failures,
                    )
                status.failures = 0
                status.up = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status.failures += 1
                status.failures_total += 1
                status.up = False
                status.last_error = str(exc)[:500]
                delay = self._backoff(
                    status.failures, exc.retry_after if isinstance(exc, SinkError) else None
                )
                if status.failures == 1 or status.failures % 10 == 0:
                    log.warning(
                        "export sink %s (%s) failed (attempt %d, next in %.1fs): %s",
                        sink.name,
                        sink.destination,
                        status.failures,
                        delay,
                        exc,
                        exc_info=not isinstance(exc, SinkError),
                    )
                await self._sleep(delay)

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        s = self.settings
        delay = min(s.retry_max_s, s.retry_initial_s * 2 ** min(failures - 1, 30))
        delay *= random.uniform(0.8, 1.2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.retry_max_s))
        return float(delay)

    async def _wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Until `event` is set (True) or `seconds` pass (False)."""
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once for `stop()`."""
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)


EXPORT_TASK = web.AppKey("export_task", asyncio.Task)


def add_export_task(app: web.Application, exporter: Exporter) -> None:
    """Run `exporter` as a background task of `app`: started with the app, stopped at cleanup before the
    callbacks already registered (so before the audit writer and the store close)."""

    async def start(app: web.Application) -> None:
        app[EXPORT_TASK] = asyncio.create_task(exporter.run(), name="gatehouse-exporter")

    async def stop(app: web.Application) -> None:
        exporter.stop()
        task = app.get(EXPORT_TASK)
        if task is not None:
            await task

    app.on_startup.append(start)
    app.on_cleanup.insert(0, stop)
