"""HTTP webhook: each batch is POSTed as JSON, signed with HMAC-SHA256.

    POST <url>
    Content-Type: application/json
    X-Gatehouse-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    X-Gatehouse-Delivery: <uuid of this attempt>
    X-Gatehouse-Sink: <sink name>

    {"sink": "...", "first_seq": 41, "last_seq": 57, "events": [<event>, ...]}

Any 2xx answer acknowledges the batch. Anything else (5xx, 429, 4xx, a timeout, a refused connection) is
a failed delivery: the same events are sent again after a backoff (Retry-After is honoured), so a receiver
may see an event twice and should de-duplicate by its `id`. docs/export.md shows how to verify a signature.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Sequence

import aiohttp
import orjson

from gatehouse import __version__
from gatehouse.audit.events import Event
from gatehouse.audit.export.base import Sink, SinkError, event_record
from gatehouse.audit.export.settings import WebhookSinkSettings

SIGNATURE_HEADER = "X-Gatehouse-Signature"


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: bytes, header: str, body: bytes, *, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """Check a signature header as a receiver should: the HMAC matches and the timestamp is recent."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class WebhookSink(Sink):
    def __init__(self, name: str, settings: WebhookSinkSettings) -> None:
        super().__init__(name, settings.kinds)
        self.settings = settings
        self._secret = settings.secret.get_secret_value().encode()
        self._session: aiohttp.ClientSession | None = None

    @property
    def destination(self) -> str:
        url = self.settings.url
        return url.split("?", 1)[0]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                headers={"User-Agent": f"gatehouse/{__version__}"},
            )
        return self._session

    async def send(self, events: Sequence[Event]) -> None:
        body = orjson.dumps(
            {
                "sink": self.name,
                "first_seq": events[0].seq,
                "last_seq": events[-1].seq,
                "events": [event_record(e) for e in events],
            }
        )
        headers = {k: v.get_secret_value() for k, v in self.settings.headers.items()}
        headers.update(
            {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
                "X-Gatehouse-Delivery": str(uuid.uuid4()),
                "X-Gatehouse-Sink": self.name,
            }
        )
        try:
            async with self._client().post(self.settings.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    await response.read()
                    return
                text = (await response.text(errors="replace"))[:200]
                raise SinkError(
                    f"{self.destination} answered {response.status}: {text}",
                    retry_after=_retry_after(response.headers.get("Retry-After")),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkError(f"{self.destination}: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
