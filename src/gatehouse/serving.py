"""Run an aiohttp application on its own event loop in a background thread.

For the demo, the benchmarks and the tests, which drive the server with synchronous clients (the official
SDKs, agent CLIs) from the main thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

from aiohttp import web


@contextlib.contextmanager
def serve_in_thread(
    make_app: Callable[[], web.Application], host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Yield the base URL (http://host:port) while the app serves; shut it down cleanly on exit."""
    ready = threading.Event()
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    bound: list[str] = []
    failure: list[BaseException] = []

    async def main() -> None:
        nonlocal stop, loop
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        runner = web.AppRunner(make_app(), access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        sockets = runner.addresses
        bound.append(f"http://{host}:{sockets[0][1]}")
        ready.set()
        await stop.wait()
        await runner.cleanup()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="gatehouse-serve", daemon=True)
    thread.start()
    ready.wait(30)
    if failure:
        raise RuntimeError("the server did not start") from failure[0]
    try:
        yield bound[0]
    finally:
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(15)
