"""The simulator's aiohttp application and the ways to run it (in-loop, in a thread, forever)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from gatehouse.serving import ServerThread, http_url, start_app
from gatehouse.simulator.config import SimulatorConfig
from gatehouse.simulator.handlers import Handlers
from gatehouse.simulator.state import SimulatorState

STATE_KEY = web.AppKey("gatehouse_simulator_state", SimulatorState)
MAX_BODY_BYTES = 64 * 1024 * 1024  # coding agents send whole conversations; aiohttp's default is 1 MiB
_SHUTDOWN_TIMEOUT = 1.0  # handlers watch `closing`, so a short grace period is enough

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
    # A classic Azure OpenAI resource: deployment-style Chat Completions and the resource's models.
    router.add_post("/openai/deployments/{deployment}/chat/completions", handlers.azure_chat_completions)
    router.add_get("/openai/models", handlers.models)
    router.add_get("/openai/models/{model_id}", handlers.model)
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
        return http_url(self.host, self.port)

    @property
    def state(self) -> SimulatorState:
        return self.app[STATE_KEY]


@contextlib.asynccontextmanager
async def running(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Serve on the current event loop (port 0: a free port) for the duration of the block."""
    app = create_app(config)
    runner, bound_port = await start_app(
        app, host, port, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT
    )
    try:
        yield RunningSimulator(host, bound_port, app)
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


class SimulatorThread(ServerThread):
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
        super().__init__(
            lambda: create_app(config),
            host,
            port,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            use_uvloop=use_uvloop,
            what="simulator",
        )

    @property
    def simulator(self) -> RunningSimulator:
        return RunningSimulator(self.host, self.port, self.app)

    @property
    def state(self) -> SimulatorState:
        return self.app[STATE_KEY]


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
