"""`gatehouse simulate`: run the fake Anthropic/OpenAI upstream in the foreground."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

import click

from gatehouse.simulator.app import RunningSimulator, serve
from gatehouse.simulator.config import SimulatorConfig


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve_until_signalled(config: SimulatorConfig, host: str, port: int) -> None:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM (docker stop, kill) shuts down as cleanly as Ctrl-C does.
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)

    def ready(sim: RunningSimulator) -> None:
        auth = "required" if config.api_key else "not required"
        click.echo(f"gatehouse simulator listening on {sim.base_url} (api key {auth})")

    await serve(config, host, port, on_ready=ready)


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=8081, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port."
)
@click.option(
    "--api-key",
    envvar="GATEHOUSE_SIM_API_KEY",
    show_envvar=True,
    default=None,
    help="Require this key (x-api-key, api-key or Authorization: Bearer).",
)
@click.option(
    "--latency-ms", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Time to first byte."
)
@click.option(
    "--chunk-delay-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Pause between deltas.",
)
@click.option("--words-per-chunk", default=3, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--output-words", default=24, show_default=True, type=click.IntRange(min=0), help="Answer length."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated text.")
def simulate(
    host: str,
    port: int,
    api_key: str | None,
    latency_ms: float,
    chunk_delay_ms: float,
    words_per_chunk: int,
    output_words: int,
    seed: int,
) -> None:
    """Serve a fake Anthropic/OpenAI upstream (see docs/simulator.md)."""
    config = SimulatorConfig(
        api_key=api_key or None,
        latency_ms=latency_ms,
        chunk_delay_ms=chunk_delay_ms,
        words_per_chunk=words_per_chunk,
        output_words=output_words,
        seed=seed,
    )
    with (
        contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError),
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        runner.run(_serve_until_signalled(config, host, port))
