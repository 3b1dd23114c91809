"""Fault injection, by request header and by the /_sim/faults queue, seen by raw HTTP and by the SDKs."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest

from gatehouse.simulator import SimulatorConfig, SimulatorThread, run_in_thread

MESSAGES: Any = [{"role": "user", "content": "hello"}]
BODIES: dict[str, dict[str, Any]] = {
    "/v1/messages": {"model": "claude-sim", "max_tokens": 64, "messages": MESSAGES},
    "/v1/chat/completions": {"model": "gpt-sim", "messages": MESSAGES},
    "/v1/responses": {"model": "gpt-sim", "input": "hello"},
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with run_in_thread(SimulatorConfig()) as sim:
        yield sim


@pytest.fixture
async def session(sim: SimulatorThread) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=sim.base_url) as session:
        yield session
        await session.delete("/_sim/faults")


def admin(sim: SimulatorThread, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(sim.base_url + path, data=data, method=method)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


async def wait_for_stats(sim: SimulatorThread, **expected: int) -> dict[str, int]:
    deadline = time.monotonic() + 3
    while True:
        stats: dict[str, int] = admin(sim, "GET", "/_sim/stats")
        if all(stats[k] == v for k, v in expected.items()) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


# -- status-code faults ------------------------------------------------------------------------------

STATUS_CASES = [
    ("429", "/v1/messages", 429, "rate_limit_error"),
    ("429", "/v1/chat/completions", 429, "rate_limit_exceeded"),
    ("429", "/v1/responses", 429, "rate_limit_exceeded"),
    ("500", "/v1/messages", 500, "api_error"),
    ("500", "/v1/chat/completions", 500, "server_error"),
    ("529", "/v1/messages", 529, "overloaded_error"),
    ("529", "/v1/responses", 503, "server_is_overloaded"),
]


@pytest.mark.parametrize(("fault", "path", "status", "error"), STATUS_CASES)
async def test_status_faults_use_the_providers_error_shapes(
    session: aiohttp.ClientSession, fault: str, path: str, status: int, error: str
) -> None:
    for stream in (False, True):
        body = {**BODIES[path], "stream": stream}
        async with session.post(path, json=body, headers={"x-sim-fault": fault}) as response:
            assert response.status == status
            payload = await response.json()
        if path == "/v1/messages":
            assert payload["type"] == "error"
            assert payload["error"]["type"] == error
            assert response.headers["request-id"].startswith("req_")
        else:
            assert error in (payload["error"]["type"], payload["error"]["code"])
            assert set(payload["error"]) == {"message", "type", "param", "code"}
        if fault == "429":
            assert response.headers["retry-after"] == "1"


def test_sdks_see_rate_limits_with_retry_after(sim: SimulatorThread) -> None:
    fault = {"x-sim-fault": "429", "x-sim-retry-after": "7"}
    with anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(**BODIES["/v1/messages"], extra_headers=fault)
        assert caught.value.response.headers["retry-after"] == "7"
        with pytest.raises(anthropic.InternalServerError) as overloaded:
            client.messages.create(**BODIES["/v1/messages"], extra_headers={"x-sim-fault": "529"})
        assert overloaded.value.status_code == 529
    with openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key="k", max_retries=0) as oai:
        with pytest.raises(openai.RateLimitError) as limited:
            oai.chat.completions.create(**BODIES["/v1/chat/completions"], extra_headers=fault)
        assert limited.value.code == "rate_limit_exceeded"
        assert limited.value.response.headers["retry-after"] == "7"
        with pytest.raises(openai.InternalServerError):
            oai.responses.create(**BODIES["/v1/responses"], extra_headers={"x-sim-fault": "500"})


# -- timeout -----------------------------------------------------------------------------------------


async def test_timeout_hangs_until_the_client_gives_up_and_leaks_nothing(
    sim: SimulatorThread, session: aiohttp.ClientSession
) -> None:
    before = admin(sim, "GET", "/_sim/stats")
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            "/v1/messages",
            json=BODIES["/v1/messages"],
            headers={"x-sim-fault": "timeout"},
            timeout=aiohttp.ClientTimeout(total=0.3),
        ):
            pass
    assert 0.25 < time.monotonic() - started < 2
    stats = await wait_for_stats(sim, in_flight=0, client_disconnects=before["client_disconnects"] + 1)
    assert stats["in_flight"] == 0
    assert stats["client_disconnects"] == before["client_disconnects"] + 1


def test_sdk_timeout(sim: SimulatorThread) -> None:
    with (
        openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key="k", max_retries=0, timeout=0.3) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.responses.create(**BODIES["/v1/responses"], extra_headers={"x-sim-fault": "timeout"})


# -- disconnect --------------------------------------------------------------------------------------


def test_disconnect_mid_stream_breaks_the_anthropic_sdk_after_k_events(sim: SimulatorThread) -> None:
    received: list[str] = []
    headers = {"x-sim-fault": "disconnect", "x-sim-fault-after-events": "6"}
    with anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0) as client:
        stream = client.messages.create(**BODIES["/v1/messages"], stream=True, extra_headers=headers)
        with pytest.raises(httpx2.TransportError):
            received.extend(event.type for event in stream)
    # 6 frames: message_start, content_block_start, ping (hidden by the SDK) and three deltas.
    assert received == ["message_start", "content_block_start"] + ["content_block_delta"] * 3


def test_disconnect_breaks_openai_streams_and_plain_requests(sim: SimulatorThread) -> None:
    headers = {"x-sim-fault": "disconnect", "x-sim-fault-after-events": "2"}
    with openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key="k", max_retries=0) as client:
        chunks: list[Any] = []
        with pytest.raises(openai.APIConnectionError):
            chunks.extend(
                client.chat.completions.create(
                    **BODIES["/v1/chat/completions"], stream=True, extra_headers=headers
                )
            )
        assert len(chunks) == 2
        events: list[str] = []
        with pytest.raises(openai.APIConnectionError):
            events.extend(
                e.type
                for e in client.responses.create(
                    **BODIES["/v1/responses"], stream=True, extra_headers=headers
                )
            )
        assert events == ["response.created", "response.in_progress"]
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(
                **BODIES["/v1/chat/completions"], extra_headers={"x-sim-fault": "disconnect"}
            )
    with (
        anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0) as claude,
        pytest.raises(anthropic.APIConnectionError),
    ):
        claude.messages.create(**BODIES["/v1/messages"], extra_headers={"x-sim-fault": "disconnect"})


async def test_disconnect_at_zero_events_sends_only_the_headers(session: aiohttp.ClientSession) -> None:
    headers = {"x-sim-fault": "disconnect", "x-sim-fault-after-events": "0"}
    body = {**BODIES["/v1/chat/completions"], "stream": True}
    async with session.post("/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


# -- in-band stream errors ---------------------------------------------------------------------------


def test_stream_error_sends_the_providers_in_band_error(sim: SimulatorThread) -> None:
    headers = {"x-sim-fault": "stream_error", "x-sim-fault-after-events": "4"}
    with anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            for _ in client.messages.create(**BODIES["/v1/messages"], stream=True, extra_headers=headers):
                pass
        assert caught.value.body == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
        }
    with openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key="k", max_retries=0) as oai:
        with pytest.raises(openai.APIError, match="server had an error"):
            for _ in oai.chat.completions.create(
                **BODIES["/v1/chat/completions"], stream=True, extra_headers=headers
            ):
                pass
        events = list(oai.responses.create(**BODIES["/v1/responses"], stream=True, extra_headers=headers))
        assert [e.type for e in events][-2:] == ["error", "response.failed"]
        assert [e.sequence_number for e in events] == list(range(6))
        # Non-streaming requests cannot carry an in-band error: they get a plain 500.
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(**BODIES["/v1/chat/completions"], extra_headers=headers)


# -- the admin queue ---------------------------------------------------------------------------------


async def test_queued_faults_hit_the_next_matching_requests(
    sim: SimulatorThread, session: aiohttp.ClientSession
) -> None:
    queued = admin(sim, "POST", "/_sim/faults", {"fault": "500", "count": 2, "path": "/v1/chat/completions"})
    assert queued["queued"] == 2
    admin(sim, "POST", "/_sim/faults", {"fault": "429", "retry_after": 3})
    assert [f["fault"] for f in admin(sim, "GET", "/_sim/faults")["faults"]] == ["500", "500", "429"]

    statuses = []
    for path in ("/v1/messages", "/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions"):
        async with session.post(path, json=BODIES[path]) as response:
            statuses.append(response.status)
    # The 429 (any path) goes to the first request; the two path-bound 500s to the chat requests.
    assert statuses == [429, 500, 500, 200]
    assert admin(sim, "GET", "/_sim/faults")["faults"] == []

    admin(sim, "POST", "/_sim/faults", {"fault": "timeout", "count": 5})
    assert admin(sim, "DELETE", "/_sim/faults") == {"cleared": 5}
    async with session.post("/v1/messages", json=BODIES["/v1/messages"]) as response:
        assert response.status == 200


async def test_queued_disconnect_uses_after_events(
    sim: SimulatorThread, session: aiohttp.ClientSession
) -> None:
    admin(sim, "POST", "/_sim/faults", {"fault": "disconnect", "after_events": 1})
    body = {**BODIES["/v1/messages"], "stream": True}
    async with session.post("/v1/messages", json=body) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    record = admin(sim, "GET", "/_sim/requests")["requests"][-1]
    assert record["fault"] == "disconnect" and record["status"] is None


async def test_bad_fault_specifications_are_rejected(
    sim: SimulatorThread, session: aiohttp.ClientSession
) -> None:
    async with session.post("/_sim/faults", json={"fault": "teapot"}) as response:
        assert response.status == 400
        assert "unknown fault" in (await response.json())["error"]
    async with session.post(
        "/v1/messages", json=BODIES["/v1/messages"], headers={"x-sim-fault": "nope"}
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
