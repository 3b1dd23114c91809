"""The Bridge's upstream HTTP client against real sockets: keep-alive and when a connection is not reused,
the three ways a body ends, a stale idle connection, timeouts, back-pressure, decoding, TLS, bad input."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gatehouse.bridge.upstream import Upstream, UpstreamError, UpstreamTimeout
from tests.export.test_syslog import self_signed

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Origin:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body), or None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def answer(body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


async def serve(
    per_request: Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]],
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Origin]:
    """An origin that calls `per_request(request, writer)` for each request; False ends the connection."""
    origin = Origin("")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        origin.connections += 1
        try:
            while (request := await read_request(reader)) is not None:
                origin.requests.append(request)
                if not await per_request(request, writer):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    origin.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    async with server:
        yield origin


def client(**kwargs: object) -> Upstream:
    options: dict[str, object] = {"connect_timeout": 5.0, "read_timeout": 5.0, **kwargs}
    return Upstream(**options)  # type: ignore[arg-type]


async def test_keep_alive_reuses_one_connection_and_sends_what_it_was_given() -> None:
    async def echo(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(request.split(b"\r\n\r\n", 1)[1], "Content-Type: application/json"))
        return True

    async for origin in serve(echo):
        http = client()
        for i in range(3):
            response = await http.request(
                "POST", origin.url + "/v1/messages?beta=true", {"x-api-key": "k"}, b'{"n": %d}' % i
            )
            assert (response.status, response.content_type) == (200, "application/json")
            assert await response.read() == b'{"n": %d}' % i
            response.release()
        await http.close()
        assert origin.connections == 1
        first = origin.requests[0]
        assert first.startswith(b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"\r\nx-api-key: k\r\n" in first and b"\r\nContent-Length: 8\r\n" in first


async def test_chunked_and_close_delimited_bodies_stream_as_they_come() -> None:
    async def chunked(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"/close" in request:  # no length, not chunked: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nevent: a\n\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"event: b\n\n")
            return False
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
        )
        for part in (b"event: a\n\n", b"event: b\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        return True

    async for origin in serve(chunked):
        http = client()
        for path in ("/chunked", "/close"):
            response = await http.request("GET", origin.url + path, {})
            assert response.content_type == "text/event-stream"
            parts = [chunk async for chunk in response.chunks()]
            assert parts == [b"event: a\n\n", b"event: b\n\n"], path  # each as it came, not at the end
            response.release()
        await http.close()


async def test_a_connection_the_upstream_closed_while_idle_is_replaced_and_the_request_sent_again() -> None:
    served: set[int] = set()

    async def first_only(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if id(writer) in served:  # as if its idle timeout struck as the request came in
            return False
        served.add(id(writer))
        writer.write(answer(b"ok"))
        return True

    async for origin in serve(first_only):
        http = client()
        for body in (b"first", b"second"):
            response = await http.request("POST", origin.url, {}, body)
            assert await response.read() == b"ok"
            response.release()
        assert origin.connections == 2
        assert [r.rsplit(b"\r\n", 1)[1] for r in origin.requests] == [b"first", b"second", b"second"]
        await http.close()


async def test_a_fresh_connection_that_fails_is_not_retried() -> None:
    async def hang_up(request: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async for origin in serve(hang_up):
        http = client()
        with pytest.raises(UpstreamError, match="closed the connection"):
            await http.request("POST", origin.url, {}, b"x")
        assert len(origin.requests) == 1
        await http.close()


async def test_connection_close_is_honoured_and_an_unread_answer_is_not_reused() -> None:
    async def closing(request: bytes, writer: asyncio.StreamWriter) -> bool:
        extra = ("Connection: close",) if b"/close" in request else ()
        writer.write(answer(b"x" * 100_000, *extra))
        return True

    async for origin in serve(closing):
        http = client()
        response = await http.request("GET", origin.url + "/close", {})
        assert len(await response.read()) == 100_000
        response.release()
        response = await http.request("GET", origin.url + "/unread", {})
        response.release()  # body not read: the connection cannot carry another request
        response = await http.request("GET", origin.url + "/last", {})
        assert len(await response.read()) == 100_000
        response.release()
        assert origin.connections == 3
        await http.close()


async def test_timeouts_and_unreachable_upstreams() -> None:
    async def slow(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"/mid" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
            await writer.drain()
        await asyncio.sleep(1)
        return False

    async for origin in serve(slow):
        http = client(read_timeout=0.2)
        with pytest.raises(UpstreamTimeout, match=r"sent nothing for 0\.2 s"):
            await http.request("POST", origin.url, {}, b"x")
        response = await http.request("GET", origin.url + "/mid", {})
        with pytest.raises(UpstreamTimeout):
            await response.read()
        response.release()
        await http.close()
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    http = client()
    with pytest.raises(UpstreamError, match=f"cannot connect to 127.0.0.1:{port}"):
        await http.request("GET", f"http://127.0.0.1:{port}/", {})


async def test_a_slow_reader_holds_back_the_upstream_instead_of_buffering_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = 8 * 1024 * 1024

    async def flood(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        block = b"data: " + b"x" * 65_000 + b"\n\n"
        for _ in range(sent // len(block)):
            writer.write(b"%x\r\n%s\r\n" % (len(block), block))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async for origin in serve(flood):
        http = client()
        response = await http.request("GET", origin.url, {})
        held = 0
        got = 0
        async for chunk in response.chunks():
            got += len(chunk)
            held = max(held, response._held)
            await asyncio.sleep(0.002)  # a slow client
        assert got > sent * 0.99
        assert held < 2 * 1024 * 1024, held  # without back-pressure, most of the 8 MiB piles up here
        response.release()
        await http.close()


async def test_gzip_answers_are_decoded_and_unknown_encodings_refused() -> None:
    async def encoded(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"/br" in request:
            writer.write(answer(b"\x00\x01", "Content-Encoding: br"))
        else:
            writer.write(answer(gzip.compress(b'{"ok": true}'), "Content-Encoding: gzip"))
        return True

    async for origin in serve(encoded):
        http = client()
        response = await http.request("GET", origin.url + "/gzip", {})
        assert await response.read() == b'{"ok": true}'
        response.release()
        with pytest.raises(UpstreamError, match="unsupported encoding 'br'"):
            await http.request("GET", origin.url + "/br", {})
        await http.close()


async def test_tls_upstreams_are_verified(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def hello(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"over tls"))
        return True

    async for origin in serve(hello, server_tls):
        trusting = client(ssl_context=ssl.create_default_context(cafile=str(cert)))
        response = await trusting.request("GET", origin.url + "/", {})
        assert await response.read() == b"over tls"
        response.release()
        await trusting.close()
        default = client()  # the system's CAs do not know this certificate
        with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED"):
            await default.request("GET", origin.url + "/", {})
        await default.close()


async def test_bad_input_is_refused_before_anything_is_sent() -> None:
    async def never(request: bytes, writer: asyncio.StreamWriter) -> bool:
        raise AssertionError("nothing should reach the upstream")

    async for origin in serve(never):
        http = client()
        with pytest.raises(ValueError, match="line break"):
            await http.request("POST", origin.url, {"x-api-key": "k\r\nInjected: 1"}, b"")
        with pytest.raises(ValueError, match="not an http"):
            await http.request("GET", "ftp://127.0.0.1/", {})
        assert origin.requests == []
        await http.close()


async def test_an_answer_that_is_not_http_is_an_upstream_error() -> None:
    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        return True

    async for origin in serve(garbage):
        http = client()
        with pytest.raises(UpstreamError, match="invalid HTTP answer"):
            await http.request("GET", origin.url, {})
        await http.close()
