"""kill -9 under load: every call that was answered 200 is in the trail, and the chain still verifies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gatehouse.audit.verify import verify_database
from gatehouse.identity.service import Actor, IdentityService
from gatehouse.serving import serve_in_thread
from gatehouse.simulator.app import create_app as create_simulator
from gatehouse.simulator.config import SimulatorConfig
from gatehouse.store.db import Database
from gatehouse.store.migrations import migrate

UPSTREAM_KEY = "sk-upstream-crash-test"
WORKERS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    # A little latency per call, so many calls are in flight when the server dies.
    config = SimulatorConfig(api_key=UPSTREAM_KEY, latency_ms=5)
    with serve_in_thread(lambda: create_simulator(config)) as url:
        yield url


class Server:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {**os.environ, "GATEHOUSE_CONFIG": str(self.config)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gatehouse", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the server did not start:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown, no flush
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.mark.parametrize("journal", [False, True], ids=["commit", "journal"])
def test_kill_9_mid_load_loses_no_acknowledged_call(tmp_path: Path, upstream: str, journal: bool) -> None:
    db_path = tmp_path / "gatehouse.db"
    db = Database(f"sqlite:///{db_path}")
    migrate(db)
    identity = IdentityService(db)
    identity.create_user("alice", actor=Actor(name="test"))
    identity.create_agent("ci-bot", owner="alice", actor=Actor(name="test"))
    _, token = identity.create_token(user="alice", agent="ci-bot", actor=Actor(name="test"))
    port = free_port()
    config = tmp_path / "gatehouse.toml"
    config.write_text(
        f"""
[server]
port = {port}

[store]
url = "sqlite:///{db_path}"

[audit]
journal = {"true" if journal else "false"}

[providers.anthropic]
type = "anthropic"
base_url = "{upstream}"
api_key = "{UPSTREAM_KEY}"
"""
    )
    server = Server(config, port, tmp_path / "server.log")
    server.start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def drive(worker: int) -> None:
        with httpx.Client(timeout=5) as client:
            n = 0
            while not stop.is_set():
                n += 1
                stream = n % 3 == 0
                try:
                    response = client.post(
                        f"{server.url}/bridge/anthropic/v1/messages",
                        headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
                        json={
                            "model": "claude-haiku-4-5",
                            "max_tokens": 32,
                            "stream": stream,
                            "messages": [{"role": "user", "content": f"worker {worker} call {n}"}],
                        },
                    )
                except httpx.HTTPError:
                    continue  # the server died under this call: nothing was acknowledged
                complete = response.status_code == 200 and (
                    not stream or b"event: message_stop" in response.content
                )
                if complete:
                    with lock:
                        acknowledged.append(response.headers["x-gatehouse-interception"])

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()
        time.sleep(0.2)  # let the clients notice
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        server.stop()
    assert len(acknowledged) >= 50, "too little load to mean anything"

    # The same store, a new process: it starts, and the trail holds every acknowledged call.
    server.start()
    try:
        after = httpx.post(
            f"{server.url}/bridge/anthropic/v1/messages",
            headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            json={
                "model": "claude-haiku-4-5",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert after.status_code == 200
    finally:
        server.stop()

    requests = {r["id"] for r in db.query("SELECT id FROM events WHERE kind = 'llm.request'")}
    responses = {r["parent"] for r in db.query("SELECT parent FROM events WHERE kind = 'llm.response'")}
    missing = [i for i in acknowledged if i not in requests or i not in responses]
    assert not missing, f"{len(missing)} acknowledged calls are not in the trail"
    report = verify_database(db)
    assert report.ok, report.breaks
    assert report.events >= 2 * len(acknowledged)
    db.close()
