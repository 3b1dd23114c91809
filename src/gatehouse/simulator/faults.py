"""Fault injection: which failure the next model requests suffer.

Faults come from the `x-sim-fault` request header (one request, no shared state) or from a queue filled
through `POST /_sim/faults` (the next N model requests, optionally only those to one path), so a test can
break the upstream behind a gateway without touching the gateway's requests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

FaultKind = Literal["429", "500", "529", "timeout", "disconnect", "stream_error"]
FAULT_KINDS: tuple[FaultKind, ...] = ("429", "500", "529", "timeout", "disconnect", "stream_error")

HEADER = "x-sim-fault"
HEADER_AFTER_EVENTS = "x-sim-fault-after-events"
HEADER_RETRY_AFTER = "x-sim-retry-after"

DEFAULT_AFTER_EVENTS = 4
DEFAULT_RETRY_AFTER = 1


class FaultError(ValueError):
    """A fault specification the simulator does not understand."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    after_events: int = DEFAULT_AFTER_EVENTS  # disconnect / stream_error: SSE events sent before breaking
    retry_after: int = DEFAULT_RETRY_AFTER  # 429: seconds in the `retry-after` header
    path: str | None = None  # queued faults only: apply only to requests to this path

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.kind,
            "after_events": self.after_events,
            "retry_after": self.retry_after,
            "path": self.path,
        }


def parse_kind(value: object) -> FaultKind:
    text = str(value).strip().lower()
    if text not in FAULT_KINDS:
        raise FaultError(f"unknown fault {value!r}; expected one of {', '.join(FAULT_KINDS)}")
    return text  # membership in FAULT_KINDS narrows the str to FaultKind


def _non_negative_int(value: object, name: str) -> int:
    try:
        number = int(cast(Any, value))
    except (TypeError, ValueError):
        raise FaultError(f"{name} must be an integer") from None
    if number < 0:
        raise FaultError(f"{name} must be >= 0")
    return number


def from_headers(headers: Mapping[str, str]) -> Fault | None:
    value = headers.get(HEADER)
    if value is None:
        return None
    return Fault(
        kind=parse_kind(value),
        after_events=_non_negative_int(
            headers.get(HEADER_AFTER_EVENTS, DEFAULT_AFTER_EVENTS), "after_events"
        ),
        retry_after=_non_negative_int(headers.get(HEADER_RETRY_AFTER, DEFAULT_RETRY_AFTER), "retry_after"),
    )


def from_admin_body(body: object) -> tuple[Fault, int]:
    """`{"fault": ..., "count": N, "after_events": K, "retry_after": S, "path": P}` -> (fault, N)."""
    if not isinstance(body, dict):
        raise FaultError("body must be a JSON object")
    path = body.get("path")
    if path is not None and not isinstance(path, str):
        raise FaultError("path must be a string")
    fault = Fault(
        kind=parse_kind(body.get("fault")),
        after_events=_non_negative_int(body.get("after_events", DEFAULT_AFTER_EVENTS), "after_events"),
        retry_after=_non_negative_int(body.get("retry_after", DEFAULT_RETRY_AFTER), "retry_after"),
        path=path,
    )
    return fault, _non_negative_int(body.get("count", 1), "count")


class FaultQueue:
    """Queued faults, consumed in order by the model requests they match."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, fault: Fault, count: int) -> None:
        self._queue.extend([fault] * count)

    def clear(self) -> None:
        self._queue.clear()

    def take(self, path: str) -> Fault | None:
        queue = self._queue
        if not queue:  # the common case: one truthiness check per request
            return None
        for i, fault in enumerate(queue):
            if fault.path is None or fault.path == path:
                del queue[i]
                return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        return [fault.as_dict() for fault in self._queue]
