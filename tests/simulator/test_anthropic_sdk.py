"""The simulator's Anthropic Messages API, driven by the official `anthropic` SDK."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam

from gatehouse.simulator import SimulatorConfig, SimulatorThread, run_in_thread

KEY = "sk-sim-anthropic-test"
MODEL = "claude-sim-test"
HELLO: list[MessageParam] = [{"role": "user", "content": "Say hello."}]
READ_FILE: ToolParam = {
    "name": "read_file",
    "description": "Read a file",
    "input_schema": {
        "type": "object",
        "properties": {"path": {"type": "string"}, "max_lines": {"type": "integer"}},
        "required": ["path", "max_lines"],
    },
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with run_in_thread(SimulatorConfig(api_key=KEY)) as sim:
        yield sim


@pytest.fixture
def client(sim: SimulatorThread) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        yield client


def sim_get(sim: SimulatorThread, path: str) -> Any:
    with urllib.request.urlopen(sim.base_url + path) as response:
        return json.loads(response.read())


def test_text_answer_and_usage(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=1024, messages=HELLO)
    assert message.model == MODEL
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    [block] = message.content
    assert block.type == "text"
    assert len(block.text.split()) == 24
    assert message.usage.output_tokens == 24
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO)
    assert message.usage.input_tokens == counted.input_tokens > 0
    assert message.usage.cache_creation_input_tokens == message.usage.cache_read_input_tokens == 0


def test_stream_accumulates_to_the_same_message_as_non_streaming(client: anthropic.Anthropic) -> None:
    plain = client.messages.create(model=MODEL, max_tokens=1024, messages=HELLO)
    with client.messages.stream(model=MODEL, max_tokens=1024, messages=HELLO) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed_text == final.content[0].text == plain.content[0].text  # type: ignore[union-attr]
    assert final.usage.model_dump() == plain.usage.model_dump()
    assert final.stop_reason == plain.stop_reason == "end_turn"

    events = [
        event.type
        for event in client.messages.create(model=MODEL, max_tokens=1024, messages=HELLO, stream=True)
    ]
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[2:-3]) == {"content_block_delta"}


def test_max_tokens_truncates(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5
    assert len(message.content[0].text.split()) == 5  # type: ignore[union-attr]


def test_thinking_block_comes_first_and_counts_as_output(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=HELLO,
    ) as stream:
        kinds = [event.delta.type for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "thinking_delta" in kinds and "signature_delta" in kinds and "text_delta" in kinds
    assert kinds.index("signature_delta") < kinds.index("text_delta")
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.signature and thinking.thinking
    assert text.type == "text"
    words = len(thinking.thinking.split()) + len(text.text.split())
    assert final.usage.output_tokens == words
    assert final.usage.output_tokens_details is not None
    assert final.usage.output_tokens_details.thinking_tokens == len(thinking.thinking.split())
    plain = client.messages.create(
        model=MODEL, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024}, messages=HELLO
    )
    assert plain.usage.model_dump() == final.usage.model_dump()


async def test_tool_call_round_trip_async_streaming(sim: SimulatorThread) -> None:
    prompt = "Use read_file to open /tmp/demo/notes.md please, max_lines=20"
    messages: list[MessageParam] = [{"role": "user", "content": prompt}]
    async with anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        async with client.messages.stream(
            model=MODEL, max_tokens=1024, tools=[READ_FILE], messages=messages
        ) as s:
            call = await s.get_final_message()
        assert call.stop_reason == "tool_use"
        [tool_use] = call.content
        assert tool_use.type == "tool_use"
        assert tool_use.name == "read_file"
        assert tool_use.input == {"path": "/tmp/demo/notes.md", "max_lines": 20}
        assert call.usage.output_tokens == max(1, len(json.dumps(tool_use.input, separators=(",", ":"))) // 4)

        messages += [
            {"role": "assistant", "content": call.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use.id, "content": "line one of notes"}
                ],
            },
        ]
        answer = await client.messages.create(
            model=MODEL, max_tokens=1024, tools=[READ_FILE], messages=messages
        )
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].type == "text"
    assert "line one of notes" in answer.content[0].text


def test_tool_not_mentioned_or_tool_choice_none_gives_text(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=100, tools=[READ_FILE], messages=HELLO)
    assert message.content[0].type == "text"
    message = client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=[READ_FILE],
        tool_choice={"type": "none"},
        messages=[{"role": "user", "content": "read_file /etc/hosts"}],
    )
    assert message.content[0].type == "text"


def test_cache_control_creates_then_reads(client: anthropic.Anthropic) -> None:
    system: Any = [
        {"type": "text", "text": "You are a careful assistant. " * 40, "cache_control": {"type": "ephemeral"}}
    ]
    messages: list[MessageParam] = [{"role": "user", "content": "unique prefix for the cache test"}]
    first = client.messages.create(model=MODEL, max_tokens=50, system=system, messages=messages)
    with client.messages.stream(model=MODEL, max_tokens=50, system=system, messages=messages) as stream:
        second = stream.get_final_message()
    total = client.messages.count_tokens(model=MODEL, system=system, messages=messages).input_tokens
    assert first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens > 0
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    for usage in (first.usage, second.usage):
        cached = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
        assert usage.input_tokens + cached == total
        assert usage.input_tokens >= 1


def test_models_list_and_retrieve(client: anthropic.Anthropic) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == list(SimulatorConfig().anthropic_models)
    assert client.models.retrieve("claude-anything").id == "claude-anything"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("sim-unknown-model")


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="sim-unknown-1", max_tokens=10, messages=HELLO)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert caught.value.response.headers["request-id"].startswith("req_")


def test_authentication(sim: SimulatorThread) -> None:
    with (
        anthropic.Anthropic(base_url=sim.base_url, api_key="wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        bad.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with anthropic.Anthropic(base_url=sim.base_url, auth_token=KEY, api_key=None, max_retries=0) as bearer:
        assert bearer.messages.create(model=MODEL, max_tokens=10, messages=HELLO).content


def test_beta_query_is_accepted_and_recorded(client: anthropic.Anthropic, sim: SimulatorThread) -> None:
    # Claude Code calls /v1/messages?beta=true; pin the query explicitly, whatever this SDK version does.
    message = client.beta.messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}], extra_query={"beta": "true"}
    )
    assert message.content
    records = sim_get(sim, "/_sim/requests?path=/v1/messages")["requests"]
    assert records[-1]["query"] == "beta=true"
    assert records[-1]["model"] == MODEL
    headers = records[-1]["headers"]  # names lowercased; this SDK version authenticates with a bearer token
    assert KEY in (headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer "))
    assert records[-1]["status"] == 200


async def test_raw_stream_has_event_lines_and_ping(sim: SimulatorThread) -> None:
    body = {"model": MODEL, "max_tokens": 10, "stream": True, "messages": HELLO}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.base_url}/v1/messages", json=body, headers={"x-api-key": KEY}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    frames = [frame.split("\n") for frame in raw.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in frames]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-1] == "message_stop"
    for lines in frames:
        assert lines[1].startswith("data: ")
        assert json.loads(lines[1].removeprefix("data: "))["type"] == lines[0].removeprefix("event: ")


async def test_invalid_requests_get_anthropic_400s(sim: SimulatorThread) -> None:
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}) as session:
        for body in ({"model": MODEL, "messages": HELLO}, {"max_tokens": 5, "messages": HELLO}, [1]):
            async with session.post(f"{sim.base_url}/v1/messages", json=body) as response:
                assert response.status == 400
                payload = await response.json()
                assert payload["type"] == "error"
                assert payload["error"]["type"] == "invalid_request_error"
