"""Shared wire-level pieces: SSE framing, the rendered-generation interface and request errors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import orjson

Provider = Literal["anthropic", "openai"]

# One SSE frame and whether it carries a generated delta (chunk_delay_ms is paid before those only).
Event = tuple[bytes, bool]


class InvalidRequest(Exception):
    """The request body is not something the real API would accept (-> 400 in the provider's format)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def sse_event(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def sse_data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# Placeholders: control characters never occur in real ids or payload keys.
SLOT = "\x00gatehouse-slot\x00"  # the delta text
SEQ = "\x00gatehouse-seq\x00"  # an integer sequence number, after the slot

_SLOT_JSON = orjson.dumps(SLOT)
_SEQ_JSON = orjson.dumps(SEQ)


class FrameTemplate:
    """A delta frame serialized once around placeholders, so each delta costs one `dumps` of its text and a
    byte concatenation (about 4x cheaper than building and serializing the event dict per delta)."""

    __slots__ = ("_head", "_middle", "_tail")

    def __init__(self, name: str | None, payload: dict[str, Any]) -> None:
        frame = sse_event(name, payload) if name is not None else sse_data(payload)
        self._head, found, rest = frame.partition(_SLOT_JSON)
        if not found:
            raise ValueError("the payload has no SLOT")
        # Without a SEQ placeholder partition() leaves the whole rest in _middle and _tail empty.
        self._middle, _, self._tail = rest.partition(_SEQ_JSON)

    def fill(self, text: str) -> bytes:
        return self._head + orjson.dumps(text) + self._middle

    def fill_seq(self, text: str, seq: int) -> bytes:
        return self._head + orjson.dumps(text) + self._middle + b"%d" % seq + self._tail


class Generation(ABC):
    """One planned model answer, renderable as a JSON body or as SSE frames.

    Both renderings read the same plan and usage, which is what keeps streamed and non-streamed usage equal.
    """

    __slots__ = ()

    @abstractmethod
    def body(self) -> bytes:
        """The non-streaming JSON response body."""

    @abstractmethod
    def events(self) -> list[Event]:
        """The complete SSE stream, terminator included."""

    @abstractmethod
    def error_events(self, index: int) -> list[bytes]:
        """The in-band error frames sent instead of the rest of the stream after `index` frames."""
