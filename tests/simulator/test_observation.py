"""What tests can observe: the request log, the counters (client disconnects above all), routing, timing,
clean shutdown and the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gatehouse.simulator import RunningSimulator, SimulatorConfig, SimulatorThread, create_app, running
from gatehouse.simulator.state import MAX_RECORDS

MESSAGES: Any = [{"role": "user", "content": "hello"}]
ANTHROPIC = {"model": "claude-sim", "max_tokens": 500, "messages": MESSAGES}
CHAT = {"model": "gpt-sim", "messages": MESSAGES}
SLOW = SimulatorConfig(chunk_delay_ms=40, words_per_chunk=1, output_words=200)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with running() as sim:
        yield sim


async def poll_stats(session: aiohttp.ClientSession, base_url: str, **expected: int) -> dict[str, int]:
    deadline = time.monotonic() + 3
    while True:
        async with session.get(f"{base_url}/_sim/stats") as response:
            stats: dict[str, int] = await response.json()
        if all(stats[k] == v for k, v in expected.items()) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


async def test_requests_are_recorded_cheaply_and_can_be_cleared(sim: RunningSimulator) -> None:
    async with aiohttp.ClientSession(base_url=sim.base_url) as session:
        async with session.post(
            "/v1/messages?beta=true", json=ANTHROPIC, headers={"X-Trace": "t1"}
        ) as response:
            assert response.status == 200
        async with session.get("/v1/models") as response:
            assert response.status == 200
        async with session.get("/_sim/requests") as response:
            records = (await response.json())["requests"]
        first, second = records
        assert first["method"] == "POST" and first["path"] == "/v1/messages" and first["query"] == "beta=true"
        assert first["model"] == "claude-sim" and first["stream"] is False and first["status"] == 200
        assert first["body_size"] > 0 and first["headers"]["x-trace"] == "t1"
        assert second["path"] == "/v1/models" and second["model"] is None
        async with session.get("/_sim/stats") as response:
            stats = await response.json()
        assert stats == {
            "requests": 2,
            "client_disconnects": 0,
            "in_flight": 0,
            "faults_served": 0,
            "faults_pending": 0,
        }
        async with session.delete("/_sim/requests") as response:
            assert await response.json() == {"cleared": 2}
        async with session.get("/_sim/requests") as response:
            assert (await response.json())["requests"] == []
        async with session.post("/_sim/reset") as response:
            assert (await response.json())["requests"] == 0


async def test_request_log_keeps_the_last_thousand(sim: RunningSimulator) -> None:
    async with aiohttp.ClientSession(base_url=sim.base_url) as session:
        for i in range(MAX_RECORDS + 5):
            async with session.get(f"/v1/models/m{i}") as response:
                await response.read()
        async with session.get("/_sim/requests") as response:
            records = (await response.json())["requests"]
    assert len(records) == MAX_RECORDS
    assert records[0]["path"] == "/v1/models/m5" and records[-1]["model"] == f"m{MAX_RECORDS + 4}"
    assert sim.state.requests == MAX_RECORDS + 5


@pytest.mark.parametrize("handler_cancellation", [True, False])
async def test_client_disconnect_mid_stream_is_counted(handler_cancellation: bool) -> None:
    """What the gateway tests rely on: the upstream notices when its client goes away mid-stream. With
    handler_cancellation (TestServer, run_in_thread, running) at once; without it at the next write."""
    runner = web.AppRunner(create_app(SLOW), handler_cancellation=handler_cancellation, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            body = {**ANTHROPIC, "stream": True}
            response = await session.post(f"{base_url}/v1/messages", json=body)
            await response.content.readuntil(b"content_block_delta")
            stats = await poll_stats(session, base_url)
            assert stats["in_flight"] == 1
            response.close()  # drops the connection like a client that gave up
            stats = await poll_stats(session, base_url, client_disconnects=1, in_flight=0)
            assert stats["client_disconnects"] == 1 and stats["in_flight"] == 0
            async with session.get(f"{base_url}/_sim/requests") as listing:
                [record] = (await listing.json())["requests"]
            assert record["client_disconnected"] is True and record["status"] is None
    finally:
        await runner.cleanup()


async def test_latency_and_chunk_delay() -> None:
    config = SimulatorConfig(latency_ms=80, chunk_delay_ms=30, words_per_chunk=2, output_words=8)
    async with running(config) as sim, aiohttp.ClientSession(base_url=sim.base_url) as session:
        started = time.monotonic()
        async with session.post("/v1/chat/completions", json=CHAT) as response:
            await response.read()
        assert 0.08 <= time.monotonic() - started < 1
        started = time.monotonic()
        arrivals: list[float] = []
        async with session.post("/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            async for line in response.content:
                if b'"content":"' in line and b'"content":""' not in line:
                    arrivals.append(time.monotonic() - started)
        assert len(arrivals) == 4  # 8 words, 2 per chunk
        assert arrivals[0] >= 0.08  # latency before the first byte
        assert arrivals[-1] - arrivals[0] >= 3 * 0.03 - 0.01  # a pause between consecutive deltas


async def test_routing_by_headers_and_prefixes(sim: RunningSimulator) -> None:
    async with aiohttp.ClientSession(base_url=sim.base_url) as session:
        async with session.get("/v1/models", headers={"anthropic-version": "2023-06-01"}) as response:
            assert "has_more" in await response.json()
        async with session.get("/v1/models", headers={"authorization": "Bearer x"}) as response:
            assert (await response.json())["object"] == "list"
        async with session.get("/anthropic/v1/models") as response:
            assert "has_more" in await response.json()
        async with session.get("/openai/v1/models", headers={"x-api-key": "x"}) as response:
            assert (await response.json())["object"] == "list"
        async with session.post("/anthropic/v1/messages", json=ANTHROPIC) as response:
            assert (await response.json())["type"] == "message"
        async with session.post("/openai/v1/chat/completions", json=CHAT) as response:
            assert (await response.json())["object"] == "chat.completion"

        async with session.post("/anthropic/v1/chat/completions", json=CHAT) as response:
            assert response.status == 404
            assert (await response.json())["error"]["type"] == "not_found_error"
        async with session.get("/v1/nothing") as response:
            assert response.status == 404
            assert (await response.json())["error"]["message"] == "Invalid URL (GET /v1/nothing)"
        async with session.get("/v1/messages", headers={"anthropic-version": "2023-06-01"}) as response:
            assert response.status == 404
            assert (await response.json())["type"] == "error"


async def test_api_key_is_required_when_configured() -> None:
    async with (
        running(SimulatorConfig(api_key="s3cret")) as sim,
        aiohttp.ClientSession(base_url=sim.base_url) as s,
    ):
        async with s.post("/v1/messages", json=ANTHROPIC, headers={"x-api-key": "nope"}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["type"] == "authentication_error"
        async with s.post("/v1/chat/completions", json=CHAT) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "invalid_api_key"
        async with s.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer s3cret"}
        ) as response:
            assert response.status == 200
        async with s.get("/_sim/stats") as response:  # the admin endpoints stay open
            assert response.status == 200


async def test_thread_stops_promptly_with_hanging_and_slow_requests_in_flight() -> None:
    sim = SimulatorThread(SLOW).start()
    async with aiohttp.ClientSession(base_url=sim.base_url) as session:
        hanging = asyncio.create_task(
            session.post("/v1/messages", json=ANTHROPIC, headers={"x-sim-fault": "timeout"})
        )
        streaming = await session.post("/v1/messages", json={**ANTHROPIC, "stream": True})
        await poll_stats(session, sim.base_url, in_flight=2)
        started = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, sim.stop)
        assert time.monotonic() - started < 1.5
        with pytest.raises(aiohttp.ClientError):
            await hanging
        with pytest.raises(aiohttp.ClientPayloadError):
            await streaming.read()


def test_cli_serves_until_sigterm() -> None:
    env = {**os.environ, "GATEHOUSE_SIM_API_KEY": "cli-key"}
    command = [sys.executable, "-c", "from gatehouse.cli.simulate import simulate; simulate()", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "api key required" in line
        base_url = line.split()[4]

        async def probe() -> tuple[int, int]:
            async with aiohttp.ClientSession(base_url=base_url) as session:
                async with session.get("/v1/models") as denied:
                    pass
                async with session.get("/v1/models", headers={"authorization": "Bearer cli-key"}) as allowed:
                    return denied.status, allowed.status

        assert asyncio.run(probe()) == (401, 200)
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
