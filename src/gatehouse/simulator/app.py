"""The simulator's aiohttp application and the ways to run it (in-loop, in a thread, forever)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from gatehouse.simulator.config import SimulatorConfig
from gatehouse.simulator.handlers import Handlers
from gatehouse.simulator.state import SimulatorState

STATE_KEY = web.AppKey("gatehouse_simulator_state", SimulatorState)
MAX_BODY_BYTES = 64 * 1024 * 1024  # coding agents send whole conversations; aiohttp's default is 1 MiB
_SHUTDOWN_TIMEOUT = 1.0  # handlers watch `closing`, so a short grace period is enough
_START_TIMEOUT = 10.0

_PREFIXES = ("", "/anthropic", "/openai")


def create_app(config: SimulatorConfig | None = None) -> web.Application:
    """The simulator app. Serve it with `handler_cancellation=True` (as `aiohttp.test_utils.TestServer` and
    the helpers below do) so a client disconnect cancels the handler and is counted immediately."""
    state = SimulatorState(config or SimulatorConfig())
    handlers = Handlers(state)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    router = app.router
    # The bare paths serve both providers; /anthropic/... and /openai/... pin the provider for shared paths
    # (/v1/models) so one simulator can stand in for two upstreams with distinct base URLs.
    for prefix in _PREFIXES:
        if prefix != "/openai":
            router.add_post(f"{prefix}/v1/messages", handlers.messages)
            router.add_post(f"{prefix}/v1/messages/count_tokens", handlers.count_tokens)
        if prefix != "/anthropic":
            router.add_post(f"{prefix}/v1/chat/completions", handlers.chat_completions)
            router.add_post(f"{prefix}/v1/responses", handlers.responses)
        router.add_get(f"{prefix}/v1/models", handlers.models)
        router.add_get(f"{prefix}/v1/models/{{model_id}}", handlers.model)
    router.add_post("/_sim/faults", handlers.add_fault)
    router.add_get("/_sim/faults", handlers.list_faults)
    router.add_delete("/_sim/faults", handlers.clear_faults)
    router.add_get("/_sim/requests", handlers.list_requests)
    router.add_delete("/_sim/requests", handlers.clear_requests)
    router.add_get("/_sim/stats", handlers.stats)
    router.add_delete("/_sim/stats", handlers.reset_stats)
    router.add_post("/_sim/reset", handlers.reset)
    router.add_route("*", "/{tail:.*}", handlers.not_found)  # registered last: only unmatched requests

    async def on_shutdown(app: web.Application) -> None:
        state.closing = True

    app.on_shutdown.append(on_shutdown)
    return app


def app_state(app: web.Application) -> SimulatorState:
    return app[STATE_KEY]


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    """A started simulator. `state` lives on the server's loop: read it there, or use /_sim/* elsewhere."""

    host: str
    port: int
    app: web.Application

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> SimulatorState:
        return self.app[STATE_KEY]


async def _start(
    config: SimulatorConfig | None, host: str, port: int
) -> tuple[web.AppRunner, RunningSimulator]:
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,  # no per-request logging: the simulator is a benchmark baseline
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    return runner, RunningSimulator(host, bound_port, app)


@contextlib.asynccontextmanager
async def running(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Serve on the current event loop (port 0: a free port) for the duration of the block."""
    runner, sim = await _start(config, host, port)
    try:
        yield sim
    finally:
        await runner.cleanup()


async def serve(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8081,
    on_ready: Callable[[RunningSimulator], None] | None = None,
) -> None:
    """Serve until cancelled."""
    async with running(config, host, port) as sim:
        if on_ready is not None:
            on_ready(sim)
        await asyncio.Event().wait()


class SimulatorThread:
    """The simulator on its own event loop in a daemon thread, for sync SDK clients and benchmarks.

    `start()` returns once the port is bound; `stop()` shuts the server down and joins the thread.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        use_uvloop: bool = False,
    ) -> None:
        self._config = config
        self._host = host
        self._port = port
        self._use_uvloop = use_uvloop
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._sim: RunningSimulator | None = None

    @property
    def simulator(self) -> RunningSimulator:
        if self._sim is None:
            raise RuntimeError("simulator not started")
        return self._sim

    @property
    def base_url(self) -> str:
        return self.simulator.base_url

    @property
    def port(self) -> int:
        return self.simulator.port

    @property
    def state(self) -> SimulatorState:
        return self.simulator.state

    def start(self) -> SimulatorThread:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._thread = threading.Thread(target=self._run, name="gatehouse-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("simulator did not start in time")
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
            thread.join(_START_TIMEOUT)

    def __enter__(self) -> SimulatorThread:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = _new_loop(self._use_uvloop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            if self._ready.is_set():
                raise  # a failure after start-up: let threading.excepthook (and pytest) report it
            self._error = exc  # a failure to start: start() re-raises it in the caller's thread
            self._ready.set()
        finally:
            _cancel_leftovers(loop)
            loop.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner, self._sim = await _start(self._config, self._host, self._port)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


@contextlib.contextmanager
def run_in_thread(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    use_uvloop: bool = False,
) -> Iterator[SimulatorThread]:
    """`with run_in_thread(cfg) as sim: client = Anthropic(base_url=sim.base_url, ...)`."""
    sim = SimulatorThread(config, host, port, use_uvloop=use_uvloop).start()
    try:
        yield sim
    finally:
        sim.stop()


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel whatever the server left behind so closing the loop warns about nothing."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
