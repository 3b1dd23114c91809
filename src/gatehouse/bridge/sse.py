"""Incremental Server-Sent Events parser (sans-IO).

The proxy hands us copies of the upstream body exactly as the socket delivered it, so a chunk may end
anywhere: mid-line, mid-field, between the CR and LF of a CRLF pair, or inside a multi-byte UTF-8
character. `SSEParser.feed` buffers the unfinished line and returns the events completed by the chunk.

Wire rules followed (WHATWG HTML "event stream interpretation"):

* Lines end with CRLF, LF or a lone CR. A CR at the very end of a chunk is taken as a line end at
  once, and a LF opening the next chunk is then dropped as the second half of that CRLF.
* A blank line dispatches the pending event. An event with no `data` line is not dispatched, and its
  `event` name is discarded with it; `data:` with an empty value does count (data is then b"").
* `name:value` with one optional space after the colon; a line without a colon is a field with an
  empty value; a line starting with `:` is a comment (Anthropic and proxies send them as keep-alives).
* Several `data` lines join with b"\\n". Fields other than `event` and `data` (`id`, `retry`, unknown)
  are ignored: nothing the Bridge records depends on them.
* A UTF-8 BOM at the start of the stream is dropped.

Deviation, on purpose: `flush()` dispatches an event that was cut off before its terminating blank
line (the spec drops it). An upstream that dies mid-stream still produced those bytes, and the audit
trail should reflect what the client actually received; the accumulators tolerate the truncated JSON.

Data stays `bytes` because its consumer is `orjson.loads`, which takes bytes directly.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser"]

_BOM = b"\xef\xbb\xbf"


# Not frozen: a frozen dataclass costs three times as much to build, and one is built per event.
@dataclass(slots=True)
class SSEEvent:
    """One dispatched event: its `event:` name (None when absent or empty) and its joined data.

    Treat it as immutable: the same event is handed to the accumulator and to the route's checks.
    """

    event: str | None
    data: bytes


class SSEParser:
    """Turns a byte stream, chunked arbitrarily, into `SSEEvent`s."""

    __slots__ = ("_data", "_event", "_partial", "_skip_lf", "_started")

    def __init__(self) -> None:
        # Pieces of the line not yet terminated; a list so that a long line arriving in many chunks
        # is joined once rather than re-copied on every chunk.
        self._partial: list[bytes] = []
        self._skip_lf = False
        self._started = False
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume one chunk; return the events it completed, in order."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\r" in chunk:
            # A trailing CR may be the first half of a CRLF split across chunks: end the line now and
            # remember to swallow a LF that opens the next chunk.
            self._skip_lf = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        rest = lines.pop()
        if not lines:
            self._partial.append(rest)
            return []
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
            self._partial = [rest] if rest else []
        elif rest:
            self._partial = [rest]
        return self._process(lines)

    def flush(self) -> list[SSEEvent]:
        """End of stream: dispatch whatever is pending, even without its closing blank line."""
        lines: list[bytes] = []
        if self._partial:
            lines.append(b"".join(self._partial))
            self._partial = []
        lines.append(b"")
        events = self._process(lines)
        self._skip_lf = False
        self._event = None
        self._data = []
        return events

    def _process(self, lines: list[bytes]) -> list[SSEEvent]:
        if not self._started and lines:
            self._started = True
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][3:]
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(SSEEvent(self._event, data[0] if len(data) == 1 else b"\n".join(data)))
                    data = self._data = []
                self._event = None
                continue
            # `data:` dominates streamed traffic, so test for it before the general field split.
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
                continue
            if line[0] == 0x3A:  # ':' comment / keep-alive
                continue
            colon = line.find(b":")
            if colon < 0:
                name, value = line, b""
            else:
                name, value = line[:colon], line[colon + 1 :]
                if value[:1] == b" ":
                    value = value[1:]
            if name == b"event":
                self._event = value.decode("utf-8", "replace") or None
            elif name == b"data":  # a bare `data` line with no colon: an empty data line
                data.append(value)
        return events
