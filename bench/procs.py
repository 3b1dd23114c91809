"""Process plumbing: start a server process and wait for its ready line; run a function in a fresh process."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.common import cpu_seconds, rss_kib

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
_READY_TIMEOUT_S = 30.0


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def token(self) -> str:
        return str(self.info["token"])

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(kind: str, *args: str, env: Mapping[str, str] | None = None) -> Server:
    """`python -m bench.serve <kind> <args>`; returns once it printed its ready line. `env` replaces the
    environment (`bench.variants` points PYTHONPATH at another source tree)."""
    if env is None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.serve", kind, *args],
        stdout=subprocess.PIPE,
        bufsize=0,  # unbuffered: the selector below must see every byte that has not been read yet
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sel.select(remaining):
            proc.kill()
            raise RuntimeError(f"bench server {kind} did not start in {_READY_TIMEOUT_S:.0f}s")
        byte = proc.stdout.read(1)
        if not byte:
            raise RuntimeError(f"bench server {kind} exited with {proc.wait()} before it was ready")
        line += byte
    sel.close()
    return Server(kind, proc, json.loads(line))


@contextlib.contextmanager
def servers() -> Iterator[Callable[..., Server]]:
    """Start servers with the yielded function; all are stopped (in reverse order) on exit."""
    started: list[Server] = []

    def start(kind: str, *args: str, env: Mapping[str, str] | None = None) -> Server:
        server = start_server(kind, *args, env=env)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


def _context() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def in_process(fn: Callable[..., T], *args: Any) -> T:
    """Call `fn(*args)` in a fresh interpreter (its own GIL) and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
        return pool.submit(fn, *args).result()


@contextlib.contextmanager
def background(fn: Callable[..., T], *args: Any) -> Iterator[Future[T]]:
    """Start `fn(*args)` in a fresh interpreter; the future resolves with its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
        yield pool.submit(fn, *args)
