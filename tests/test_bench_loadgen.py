"""`bench.loadgen.closed_loop` against a real local server: what it counts and how it splits latencies."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from bench.loadgen import LoadSpec, Request, closed_loop


@pytest.fixture
def server() -> Iterator[str]:
    """Two routes on one server: /fast answers at once, /slow after 20 ms."""

    async def fast(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/fast", fast)
    app.router.add_post("/slow", slow)
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_closed_loop_cycling_through_targets_reports_each_ones_median_latency(server: str) -> None:
    fast, slow = (Request(f"{server}/{path}", {}, b"{}") for path in ("fast", "slow"))
    result = closed_loop(LoadSpec([fast, slow], concurrency=4, duration_s=0.6, warmup_s=0.1))
    assert result.errors == 0 and result.completed > 0
    assert set(result.p50_ms_by_url) == {fast.url, slow.url}
    assert result.p50_ms_by_url[slow.url] >= 20.0
    assert result.p50_ms_by_url[fast.url] < result.p50_ms_by_url[slow.url]
    assert min(result.p50_ms_by_url.values()) <= result.p50_ms <= max(result.p50_ms_by_url.values())
