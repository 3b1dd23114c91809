"""Per-app mutable state: the request log, counters, queued faults and the prompt-cache ledger.

Everything lives on the event loop's thread, so plain attributes suffice; tests read it through the
`/_sim/*` endpoints (or directly, from the loop's thread).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from gatehouse.simulator.config import SimulatorConfig
from gatehouse.simulator.faults import FaultQueue
from gatehouse.simulator.script import Lorem

MAX_RECORDS = 1000
_MAX_CACHE_ENTRIES = 100_000  # a benchmark with ever-new prompts must not grow the process forever


class RequestRecord:
    """One observed request; `headers` is the request's own read-only mapping, converted only on read."""

    __slots__ = (
        "body_size",
        "client_disconnected",
        "fault",
        "headers",
        "method",
        "model",
        "path",
        "query",
        "status",
        "stream",
        "time",
    )

    def __init__(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body_size: int
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body_size = body_size
        self.model: str | None = None
        self.stream = False
        self.fault: str | None = None
        self.status: int | None = None  # None: no HTTP response was completed (fault or client disconnect)
        self.client_disconnected = False
        self.time = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},  # lower() also turns istr into str
            "body_size": self.body_size,
            "model": self.model,
            "stream": self.stream,
            "fault": self.fault,
            "status": self.status,
            "client_disconnected": self.client_disconnected,
            "time": self.time,
        }


class SimulatorState:
    __slots__ = (
        "cache",
        "client_disconnects",
        "closing",
        "config",
        "faults",
        "faults_served",
        "in_flight",
        "lorem",
        "records",
        "requests",
    )

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.lorem = Lorem(config.seed)
        self.records: deque[RequestRecord] = deque(maxlen=MAX_RECORDS)
        self.faults = FaultQueue()
        self.cache: dict[int, bool] = {}  # hash of a cacheable Anthropic prompt prefix -> seen
        self.requests = 0
        self.client_disconnects = 0
        self.in_flight = 0
        self.faults_served = 0
        self.closing = False  # set on app shutdown so hanging / slow handlers give up promptly

    def record(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body_size: int
    ) -> RequestRecord:
        rec = RequestRecord(method, path, query, headers, body_size)
        self.records.append(rec)
        self.requests += 1
        return rec

    def seen_prefix(self, key: int) -> bool:
        """Whether this cacheable prefix was seen before; marks it seen."""
        cache = self.cache
        if key in cache:
            return True
        if len(cache) >= _MAX_CACHE_ENTRIES:
            cache.clear()
        cache[key] = True
        return False

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "client_disconnects": self.client_disconnects,
            "in_flight": self.in_flight,
            "faults_served": self.faults_served,
            "faults_pending": len(self.faults),
        }

    def reset_stats(self) -> None:
        # in_flight is a gauge of live handlers, not history: resetting it would make it go negative.
        self.requests = 0
        self.client_disconnects = 0
        self.faults_served = 0

    def reset(self) -> None:
        self.records.clear()
        self.faults.clear()
        self.cache.clear()
        self.reset_stats()
