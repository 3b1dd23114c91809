"""The Bridge's HTTP/1.1 client for its upstream calls: keep-alive connections on asyncio transports, and
responses parsed by httptools (llhttp, the parser of Node.js and uvicorn).

Why not aiohttp's client, which the rest of Gatehouse uses: on the Bridge's path it cost the serving loop
about 65 µs per call (request and response objects, header multidicts, connector and timer bookkeeping),
a quarter of all Gatehouse spent per call. This client does what the Bridge needs and no more, for about
a third of that (docs/benchmarks.md): one request at a time per connection, a body given as bytes, the
answer read whole or streamed chunk by chunk with back-pressure, TLS, connect and read timeouts, gzip and
deflate answers decoded (the Bridge asks for none), and a pool of idle connections per origin that drops
those the upstream closed or that sat idle too long.

A request that fails on a reused connection before any byte of the answer came back (the upstream closed
it while it sat idle, a race no pool can avoid) is sent again once on a new connection: the upstream
closed without reading it. Every other failure is the caller's to handle: `UpstreamError`, or
`UpstreamTimeout` when nothing arrives for `read_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

# A streamed answer the client reads slower than the upstream sends: stop reading the upstream above this
# many bytes held, go on below the low mark.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached, or the connection broke or carried something that is not HTTP."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """No connection within the connect timeout, or nothing received within the read timeout."""


class Upstream:
    """A pool of keep-alive HTTP/1.1 connections to any number of origins."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive_s: float = 60.0,
        max_idle_per_origin: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_s = keepalive_s
        self.max_idle_per_origin = max_idle_per_origin
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._closed = False

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> UpstreamResponse:
        """Send the request; return once the answer's status and headers are in. Read its body with
        `read()` or `chunks()`, then `release()` it (or `close()` it to abandon the answer)."""
        if self._closed:
            raise UpstreamError("the upstream client is closed")
        if method == "HEAD":
            raise ValueError("HEAD is not supported: its answer has headers that describe no body")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin = (parts.scheme, parts.hostname, port)
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        head = _head(method, target, parts.netloc.rpartition("@")[2], headers, body)
        for attempt in (1, 2):
            conn, reused = await self._acquire(origin)
            response = conn.send(head, body, self.read_timeout)
            try:
                await response.wait_head()
            except UpstreamError:
                conn.close()
                if reused and attempt == 1 and not response.received:
                    continue
                raise
            except BaseException:  # cancelled: the connection is in an unknown state
                conn.close()
                raise
            return response
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    async def _acquire(self, origin: tuple[str, str, int]) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        loop = asyncio.get_running_loop()
        while idle:
            conn = idle.pop()
            if conn.usable and loop.time() - conn.idle_since < self.keepalive_s:
                return conn, True
            conn.close()
        scheme, host, port = origin
        context = None
        if scheme == "https":
            if self._ssl is None:  # the system's CAs, loaded once
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin), host, port, ssl=context
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"no connection to {host}:{port} within {self.connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"cannot connect to {host}:{port}: {exc}") from None
        return conn, False

    def _release(self, conn: _Connection) -> None:
        if self._closed or not conn.usable:
            conn.close()
            return
        idle = self._idle.setdefault(conn.origin, collections.deque())
        conn.idle_since = asyncio.get_running_loop().time()
        idle.append(conn)
        if len(idle) > self.max_idle_per_origin:
            idle.popleft().close()


def _head(method: str, target: str, host: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} cannot be sent: it holds a line break or a colon")
        lines.append(f"{name}: {value}\r\n")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class _Connection(asyncio.Protocol):
    """One connection: the transport, its response parser, and the answer in progress."""

    def __init__(self, pool: Upstream, origin: tuple[str, str, int]) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.lost = False
        self.idle_since = 0.0

    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def send(self, head: bytes, body: bytes | None, read_timeout: float) -> UpstreamResponse:
        assert self.transport is not None
        self.response = UpstreamResponse(self, read_timeout)
        self.transport.writelines((head, body) if body else (head,))
        return self.response

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self.response is None or self.response.complete:
            self.close()  # bytes nobody asked for: not a peer to trust with the next request
            return
        self.response.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.response.fail(UpstreamError(f"the upstream sent an invalid HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        response = self.response
        if response is not None and not response.complete:
            if response.status and response.until_close:
                response.finish()  # the body ran to the end of the connection, as its headers said
            else:
                response.fail(UpstreamError("the upstream closed the connection before the answer ended"))

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response.head_done(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if response.status < 200:  # an interim answer (100 Continue): the real one follows
            response.restart()
            return
        response.keep_alive = self.parser.should_keep_alive()
        response.finish()


class UpstreamResponse:
    """An answer: status and headers once `Upstream.request` returns, the body as it arrives."""

    def __init__(self, conn: _Connection, read_timeout: float) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self._loop = asyncio.get_running_loop()
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.received = False  # any byte of the answer came
        self.complete = False
        self.keep_alive = False
        self.until_close = False  # no length and not chunked: the body ends when the connection does
        self._chunks: collections.deque[bytes] = collections.deque()
        self._held = 0
        self._paused = False
        self._streaming = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._decoder: zlib._Decompress | None = None

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name.lower() == "content-type":
                return value.partition(";")[0].strip().lower()
        return ""

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            await self._wait()
        self._raise_if_failed()
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as it arrives. Reading slower than the upstream sends stops reading
        from it (back-pressure) rather than holding an unbounded amount in memory."""
        self._streaming = True
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._held -= len(chunk)
                if self._paused and self._held < _LOW_WATER and self._conn.transport is not None:
                    self._paused = False
                    self._conn.transport.resume_reading()
                yield chunk
            if self.complete:
                self._raise_if_failed()
                return
            await self._wait()

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if the answer was read to its end
        and the upstream keeps the connection open, and is closed otherwise."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.response = None
        if self.complete and self.keep_alive and self._error is None and not self._chunks:
            conn.pool._release(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Abandon the answer: the connection is closed, which stops the upstream's work on it."""
        self._released = True
        self._conn.response = None
        self._conn.close()

    async def wait_head(self) -> None:
        while not self.status:
            self._raise_if_failed()
            await self._wait()

    # -- fed by the connection --

    def head_done(self, status: int) -> None:
        self.status = status
        length, encoding, chunked = None, "", False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == "content-length":
                length = value
            elif lowered == "content-encoding":
                encoding = value.strip().lower()
            elif lowered == "transfer-encoding":
                chunked = "chunked" in value.lower()
        self.until_close = length is None and not chunked and status >= 200 and status not in (204, 304)
        if encoding in ("gzip", "x-gzip", "deflate"):
            # wbits 47: a gzip or zlib header, detected; deflate without one is retried raw in `feed`.
            self._decoder = zlib.decompressobj(47)
        elif encoding not in ("", "identity"):
            self.fail(UpstreamError(f"the upstream answered with an unsupported encoding {encoding!r}"))
        self._wake()

    def restart(self) -> None:
        self.status = 0
        self.headers.clear()

    def feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error:
                if self._held or self._decoder.unused_data:
                    self.fail(UpstreamError("the upstream's compressed answer is corrupt"))
                    return
                self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some servers send
                data = self._decoder.decompress(data)
        if not data:
            return
        self._chunks.append(data)
        self._held += len(data)
        if self._streaming and self._held > _HIGH_WATER and not self._paused and self._conn.transport:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self.complete = True
        self._wake()

    def fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self.complete = True
        self._wake()

    # -- waiting --

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until something arrives (head, body, end, failure), for at most the read timeout."""
        self._raise_if_failed()
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(self._read_timeout, _expire, waiter, self._read_timeout)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        self._raise_if_failed()


def _expire(waiter: asyncio.Future[None], after: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(f"the upstream sent nothing for {after:g} s"))
