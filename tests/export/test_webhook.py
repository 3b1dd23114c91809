"""Webhooks: signed batches, retried on 503, and a receiver that is down for a while misses nothing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from gatehouse.audit.export.exporter import Exporter
from gatehouse.audit.export.settings import ExportSettings, WebhookSinkSettings
from gatehouse.audit.export.webhook import verify
from gatehouse.audit.writer import AuditWriter
from gatehouse.store.db import Database
from tests.export.conftest import free_port, running, ticks, wait_until, write

SECRET = "whsec-test-0123456789"


@dataclass
class Receiver:
    port: int
    fail_first: int = 0  # answer 503 to this many deliveries first
    attempts: int = 0
    bad_signatures: int = 0
    batches: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for b in self.batches for e in b["events"]]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        # Verify as the docs tell receivers to: HMAC-SHA256 over "<t>." + body, compared in constant time.
        header = request.headers["X-Gatehouse-Signature"]
        fields = dict(part.split("=", 1) for part in header.split(","))
        expected = hmac.new(SECRET.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields["v1"]) or abs(time.time() - int(fields["t"])) > 300:
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.attempts <= self.fail_first:
            return web.Response(status=503, headers={"Retry-After": "0"})
        self.batches.append(orjson.loads(body))
        self.headers.append(dict(request.headers))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(port=free_port())
    yield r
    await r.stop()


def webhook(port: int, **extra: Any) -> ExportSettings:
    sink = WebhookSinkSettings.model_validate(
        {
            "type": "webhook",
            "url": f"http://127.0.0.1:{port}/hook",
            "secret": "env:HOOK_SECRET",
            "headers": {"Authorization": "env:HOOK_AUTH"},
            "timeout_s": 2,
        },
        context={"environ": {"HOOK_SECRET": SECRET, "HOOK_AUTH": "Bearer abc"}},
    )
    return ExportSettings(
        sinks={"hook": sink},
        retry_initial_s=0.05,
        retry_max_s=0.3,
        **extra,
    )


async def test_signed_batches_retried_after_503(store: Database, receiver: Receiver) -> None:
    receiver.fail_first = 3
    await receiver.start()
    events = write(store, ticks(7))
    exporter = Exporter(store, webhook(receiver.port, batch_size=5))
    async with running(exporter):
        await wait_until(lambda: exporter.status["hook"].cursor == 7, what="delivery")
    assert receiver.bad_signatures == 0
    assert receiver.attempts == 3 + 2  # three 503s, then two batches of 5 and 2
    assert exporter.status["hook"].failures_total == 3
    assert [(b["first_seq"], b["last_seq"]) for b in receiver.batches] == [(1, 5), (6, 7)]
    assert receiver.seqs == [1, 2, 3, 4, 5, 6, 7]
    assert [e["id"] for b in receiver.batches for e in b["events"]] == [e.id for e in events]
    headers = receiver.headers[0]
    assert headers["Authorization"] == "Bearer abc"
    assert headers["X-Gatehouse-Sink"] == "hook"
    assert headers["Content-Type"] == "application/json"
    assert verify(SECRET.encode(), headers["X-Gatehouse-Signature"], orjson.dumps(receiver.batches[0]))


def test_verify_rejects_tampering_and_stale_signatures() -> None:
    from gatehouse.audit.export.webhook import sign

    body = b'{"events":[]}'
    now = int(time.time())
    header = sign(b"k", body, now)
    assert verify(b"k", header, body)
    assert not verify(b"k", header, body + b" ")
    assert not verify(b"other", header, body)
    assert not verify(b"k", sign(b"k", body, now - 3600), body)
    assert not verify(b"k", "v1=abc", body)


async def test_a_sink_down_for_a_while_gets_everything_in_order(store: Database, receiver: Receiver) -> None:
    """The receiver is unreachable while events keep coming; once it is back it has every event, in order,
    without a gap; a restarted exporter resumes from the persisted cursor."""
    settings = webhook(receiver.port, batch_size=20, poll_interval_s=5)
    exporter = Exporter(store, settings)
    writer = AuditWriter(store, observers=[exporter.observer])
    writer.start()
    try:
        async with running(exporter):
            for i in range(10):  # the receiver is not listening yet: connection refused
                await writer.append(*ticks(5, start=i * 5))
                await asyncio.sleep(0.02)
            await wait_until(lambda: exporter.status["hook"].failures >= 3, what="failed attempts")
            assert exporter.status["hook"].up is False
            assert exporter.status["hook"].cursor == 0
            assert exporter.lag() == {"hook": 50}
            await receiver.start()
            for i in range(10, 14):  # more while it catches up
                await writer.append(*ticks(5, start=i * 5))
            await wait_until(lambda: exporter.status["hook"].cursor == 70, what="catching up")
            assert exporter.lag() == {"hook": 0} and exporter.status["hook"].up is True
        seqs = receiver.seqs
        # At least once, in order, no gap: de-duplicated by first arrival, the seqs are 1..70.
        assert list(dict.fromkeys(seqs)) == list(range(1, 71))
        assert len(store.query("SELECT * FROM events")) == 70

        # Restart: the cursor persisted, so only new events go out.
        before = len(seqs)
        exporter = Exporter(store, settings)
        writer.observers = [exporter.observer]
        async with running(exporter):
            await wait_until(lambda: exporter.status["hook"].cursor == 70, what="cursor read back")
            await writer.append(*ticks(3, start=70))
            await wait_until(lambda: exporter.status["hook"].cursor == 73, what="new events")
        assert receiver.seqs[before:] == [71, 72, 73]
    finally:
        writer.close()
    [row] = store.query("SELECT sink, seq, owner, lease_until FROM export_cursors")
    assert (row["sink"], row["seq"], row["owner"], row["lease_until"]) == ("hook", 73, None, None)
