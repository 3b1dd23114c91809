"""Run an aiohttp application on its own event loop in a background thread.

For the demo, the benchmarks and the tests, which drive the server with synchronous clients (the official
SDKs, agent CLIs) from the main thread. The simulator's `SimulatorThread` is a `ServerThread` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Self

from aiohttp import web


async def start_app(
    app: web.Application, host: str, port: int, *, handler_cancellation: bool, shutdown_timeout: float
) -> tuple[web.AppRunner, int]:
    """Serve `app` on the running loop (port 0: a free port); return its runner, to `cleanup()`, and the
    port it bound."""
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,  # no per-request logging: the servers run as benchmark baselines too
        handler_cancellation=handler_cancellation,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        return runner, int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise


def http_url(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


class ServerThread:
    """An aiohttp app on its own event loop in a daemon thread, for sync clients.

    `start()` returns once the port is bound, or raises in the caller's thread what kept the server from
    starting; `stop()` shuts the server down and joins the thread. A failure after start-up is left to
    `threading.excepthook` (and so to pytest).
    """

    def __init__(
        self,
        make_app: Callable[[], web.Application],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handler_cancellation: bool = False,
        shutdown_timeout: float = 5.0,
        use_uvloop: bool = False,
        start_timeout: float = 10.0,
        what: str = "server",  # for messages and the thread's name
    ) -> None:
        self._make_app = make_app
        self._host = host
        self._port = port
        self._handler_cancellation = handler_cancellation
        self._shutdown_timeout = shutdown_timeout
        self._use_uvloop = use_uvloop
        self._start_timeout = start_timeout
        self._what = what
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._bound: tuple[web.Application, int] | None = None  # the app and its port, once serving

    @property
    def app(self) -> web.Application:
        return self._started()[0]

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._started()[1]

    @property
    def base_url(self) -> str:
        return http_url(self._host, self.port)

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{self._what} already started")
        self._thread = threading.Thread(target=self._run, name=f"gatehouse-{self._what}", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise RuntimeError(f"{self._what} did not start in time")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(self._start_timeout)

    def __enter__(self) -> Self:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _started(self) -> tuple[web.Application, int]:
        if self._bound is None:
            raise RuntimeError(f"{self._what} not started")
        return self._bound

    def _run(self) -> None:
        # asyncio.Runner, like asyncio.run: at the end it cancels what the server left behind, then waits
        # for async generators and the default executor (to_thread work), so the thread ends with its work.
        try:
            with asyncio.Runner(loop_factory=_loop_factory(self._use_uvloop)) as runner:
                runner.run(self._main())
        except BaseException as exc:
            if self._ready.is_set():
                raise  # a failure after start-up: let threading.excepthook (and pytest) report it
            self._error = exc  # a failure to start: start() re-raises it in the caller's thread
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = self._make_app()
        runner, port = await start_app(
            app,
            self._host,
            self._port,
            handler_cancellation=self._handler_cancellation,
            shutdown_timeout=self._shutdown_timeout,
        )
        self._bound = (app, port)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


@contextlib.contextmanager
def serve_in_thread(
    make_app: Callable[[], web.Application], host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Yield the base URL (http://host:port) while the app serves; shut it down cleanly on exit."""
    server = ServerThread(make_app, host, port, start_timeout=30)
    try:
        server.start()
    except Exception as exc:
        raise RuntimeError("the server did not start") from exc
    try:
        yield server.base_url
    finally:
        server.stop()


def _loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return None
