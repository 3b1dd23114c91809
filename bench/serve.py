"""One benchmark server per process: `python -m bench.serve {simulator,passthrough,gatehouse} [options]`.

Serves on uvloop, prints one JSON line once listening ({"url", "pid", ...}; Gatehouse adds the agent
token it created), and runs until SIGTERM or SIGINT. `--profile PATH` runs cProfile over the event loop
thread and writes the stats to PATH on exit (read them with `python -m pstats PATH`); `--trace-memory PATH`
writes where memory grew (tracemalloc) between SIGUSR1 and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.common import UPSTREAM_KEY, run_async
from gatehouse import gctuning
from gatehouse.audit.events import Event
from gatehouse.audit.writer import AuditWriter
from gatehouse.store.db import Database


class NullWriter(AuditWriter):
    """The "auditing off" variant: the writer's interface, with every event dropped on the floor.

    The Bridge still builds its events (that cost stays); nothing is chained, written or waited for."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.healthy = True

    def start(self) -> None:
        return None

    def close(self, timeout: float = 10.0) -> None:
        return None

    async def append(self, *events: Event) -> None:
        return None

    def append_nowait(self, *events: Event) -> None:
        return None

    def append_sync(self, *events: Event, timeout: float = 30.0) -> None:
        return None


def _simulator_app(args: argparse.Namespace) -> tuple[web.Application, dict[str, Any]]:
    from gatehouse.simulator.app import create_app
    from gatehouse.simulator.config import SimulatorConfig

    config = SimulatorConfig(
        api_key=UPSTREAM_KEY,
        chunk_delay_ms=args.chunk_delay_ms,
        latency_ms=args.latency_ms,
        output_words=args.output_words,
    )
    return create_app(config), {}


def _passthrough_app(args: argparse.Namespace) -> tuple[web.Application, dict[str, Any]]:
    from bench.passthrough import create_app

    return create_app(args.upstream), {}


# `--audit` paths as settings; "on" and "off" keep the defaults ("off" then swaps in the no-op writer).
_AUDIT_PATHS: dict[str, dict[str, bool]] = {
    "process": {"writer_process": True},
    "in-process": {"writer_process": False, "journal": False},
    "journal": {"writer_process": False, "journal": True},
}


def _gatehouse_app(args: argparse.Namespace, data_dir: Path) -> tuple[web.Application, dict[str, Any]]:
    from pydantic import SecretStr

    from gatehouse.config import (
        AuditSettings,
        BridgeSettings,
        CapturePolicy,
        ProviderSettings,
        ServerSettings,
        Settings,
        StoreSettings,
    )
    from gatehouse.identity.service import Actor
    from gatehouse.server import build, create_app

    settings = Settings(
        server=ServerSettings(host=args.host, port=0),
        store=StoreSettings(
            url=f"sqlite:///{data_dir / 'gatehouse.db'}", sqlite_synchronous=args.synchronous
        ),
        audit=AuditSettings.model_validate(_AUDIT_PATHS.get(args.audit, {})),
        bridge=BridgeSettings(capture=CapturePolicy(args.capture)),
        providers={
            "anthropic": ProviderSettings(
                type="anthropic", base_url=args.upstream, api_key=SecretStr(UPSTREAM_KEY)
            )
        },
    )
    gh = build(settings)
    operator = Actor()
    gh.identity.create_user("bench", role="member", actor=operator)
    gh.identity.create_agent("bench-agent", owner="bench", actor=operator)
    _, token = gh.identity.create_token(user="bench", agent="bench-agent", actor=operator)
    gh.identity.create_user("bench-admin", role="admin", actor=operator)
    _, admin_token = gh.identity.create_token(user="bench-admin", actor=operator)  # reads /metrics
    if args.audit == "off":
        null = NullWriter(gh.db)
        gh.writer = null
        gh.bridge.writer = null
    return create_app(gh), {
        "token": token,
        "admin_token": admin_token,
        "db": str(data_dir / "gatehouse.db"),
        "audit": args.audit,
    }


async def _serve(
    make: Callable[[], tuple[web.Application, dict[str, Any]]],
    host: str,
    port: int,
    *,
    handler_cancellation: bool,
    profile: str | None,
    trace_memory: str | None = None,
    tune_gc: bool = False,
) -> None:
    app, extra = make()
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=handler_cancellation,
        shutdown_timeout=2,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    bound = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    profiler = cProfile.Profile() if profile else None
    baseline: list[tracemalloc.Snapshot] = []
    if trace_memory:
        tracemalloc.start(8)

        def mark() -> None:
            baseline[:] = [tracemalloc.take_snapshot()]

        loop.add_signal_handler(signal.SIGUSR1, mark)
    if tune_gc:
        gctuning.tune_gc()  # as `gatehouse serve` does
    print(json.dumps({"url": f"http://{host}:{bound}", "pid": os.getpid(), **extra}), flush=True)
    if profiler is not None:
        profiler.enable()
    try:
        await stop.wait()
    finally:
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        if trace_memory:
            _dump_growth(trace_memory, baseline)
        await runner.cleanup()


def _dump_growth(path: str, baseline: list[tracemalloc.Snapshot]) -> None:
    """Where memory grew since SIGUSR1 (or since start), by allocating traceback, largest first."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    stats = snapshot.compare_to(baseline[0], "traceback") if baseline else snapshot.statistics("traceback")
    with open(path, "w") as f:
        for stat in stats[:25]:
            f.write(f"{stat}\n")
            for line in stat.traceback.format()[-8:]:
                f.write(f"    {line}\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    parser.add_argument("kind", choices=("simulator", "passthrough", "gatehouse"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", help="base URL of the upstream (passthrough, gatehouse)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="simulator: pause between deltas")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="simulator: pause before the first byte"
    )
    parser.add_argument("--output-words", type=int, default=24, help="simulator: words per answer")
    parser.add_argument(
        "--audit",
        choices=("on", "process", "in-process", "journal", "off"),
        default="on",
        help="gatehouse: on = as `gatehouse serve` decides, process = writer process, in-process = commits"
        " on the event loop, journal = the event journal, off = no-op writer",
    )
    parser.add_argument("--capture", default="last_prompt", help="gatehouse: metadata, last_prompt or full")
    parser.add_argument(
        "--synchronous", choices=("normal", "full"), default="normal", help="gatehouse: SQLite"
    )
    parser.add_argument("--data-dir", help="gatehouse: where the SQLite store goes (default: a temp dir)")
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval (GIL hand-off), seconds")
    parser.add_argument(
        "--trace-memory",
        metavar="PATH",
        help="tracemalloc: on exit, write where memory grew since SIGUSR1 (sent after a warm-up) to PATH",
    )
    parser.add_argument(
        "--profile", help="write cProfile stats of the event loop thread to this file on exit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    if args.kind != "simulator" and not args.upstream:
        parser.error(f"{args.kind} needs --upstream")
    owned: str | None = None
    make: Callable[[], tuple[web.Application, dict[str, Any]]]
    if args.kind == "simulator":
        make = lambda: _simulator_app(args)  # noqa: E731
    elif args.kind == "passthrough":
        make = lambda: _passthrough_app(args)  # noqa: E731
    else:
        data_dir = args.data_dir or (owned := tempfile.mkdtemp(prefix="gatehouse-bench-"))
        make = lambda: _gatehouse_app(args, Path(data_dir))  # noqa: E731
    try:
        run_async(
            _serve(
                make,
                args.host,
                args.port,
                handler_cancellation=args.kind == "simulator",
                profile=args.profile,
                trace_memory=args.trace_memory,
                tune_gc=args.kind == "gatehouse",
            )
        )
    finally:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)


if __name__ == "__main__":
    main()
