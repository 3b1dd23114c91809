"""What every sink is: something that takes a batch of events, in sequence order, and returns once the
destination has them (or raises, and gets the same batch again later)."""

from __future__ import annotations

import abc
import fnmatch
from collections.abc import Sequence
from typing import Any

import orjson

from gatehouse.audit.events import Event


class SinkError(Exception):
    """A delivery failed; the batch will be retried after a backoff (at least `retry_after` seconds if the
    destination said how long to wait)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Sink(abc.ABC):
    """A destination. `send` must be all or nothing from the exporter's point of view: if it raises, the
    whole batch is sent again (the destination may then see some events twice; they carry their id)."""

    def __init__(self, name: str, kinds: Sequence[str] = ("*",)) -> None:
        self.name = name
        self._kinds = tuple(kinds)
        self._match_all = "*" in self._kinds

    def accepts(self, kind: str) -> bool:
        return self._match_all or any(fnmatch.fnmatchcase(kind, p) for p in self._kinds)

    @property
    @abc.abstractmethod
    def destination(self) -> str:
        """Where the events go, for logs and status (never with credentials)."""

    @abc.abstractmethod
    async def send(self, events: Sequence[Event]) -> None: ...

    async def close(self) -> None:  # noqa: B027 - most sinks hold nothing to release
        """Release connections and files."""


def event_record(event: Event) -> dict[str, Any]:
    """The exported form of an event: its envelope with `details` as an object (docs/audit-events.md)."""
    return event.to_dict()


def event_json(event: Event) -> bytes:
    return orjson.dumps(event_record(event))
