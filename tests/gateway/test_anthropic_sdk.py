"""The official Anthropic SDK through the Bridge: what it gets back is what the upstream sent, and what
Gatehouse recorded matches what the upstream reported."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from tests.gateway.conftest import Stack

MODEL = "claude-sonnet-5"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)


def test_non_streaming_call_is_recorded_with_usage_and_identity(stack: Stack) -> None:
    message = client(stack).messages.create(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "Say hello to the auditors"}]
    )
    assert message.content[0].type == "text" and message.content[0].text
    [row] = stack.interceptions()
    assert (row["provider"], row["model"], row["route"], row["stream"], row["status"]) == (
        "anthropic",
        MODEL,
        "messages",
        0,
        200,
    )
    assert row["input_tokens"] == message.usage.input_tokens
    assert row["output_tokens"] == message.usage.output_tokens
    assert row["last_prompt"] == "Say hello to the auditors"
    assert row["client"] == "anthropic-sdk-python"
    agent = stack.db.query_one("SELECT id FROM agents WHERE name = 'ci-bot'")
    assert agent is not None and row["agent_id"] == agent["id"]
    assert row["latency_ms"] > 0


def test_streaming_passes_events_through_and_records_time_to_first_token(stack: Stack) -> None:
    with client(stack).messages.stream(
        model=MODEL,
        max_tokens=300,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think, then answer"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "thinking"
    [row] = stack.interceptions()
    assert row["stream"] == 1 and row["status"] == 200 and row["error"] is None
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"]
    assert (row["input_tokens"], row["output_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    [response] = stack.events("llm.response")
    details = orjson.loads(response["details"])
    assert details["thinking"] and details["thinking"][0] == final.content[0].thinking  # type: ignore[union-attr]


async def test_async_streaming_and_cache_tokens(stack: Stack) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=stack.anthropic_url, api_key=stack.token, max_retries=0
    ) as c:
        system = [{"type": "text", "text": "You are terse. " * 50, "cache_control": {"type": "ephemeral"}}]
        usages = []
        for _ in range(2):
            async with c.messages.stream(
                model=MODEL,
                max_tokens=100,
                system=system,
                messages=[{"role": "user", "content": "hi"}],  # type: ignore[arg-type]
            ) as stream:
                usages.append((await stream.get_final_message()).usage)
    rows = stack.interceptions()
    assert [r["cache_write_tokens"] for r in rows] == [u.cache_creation_input_tokens or 0 for u in usages]
    assert [r["cache_read_tokens"] for r in rows] == [u.cache_read_input_tokens or 0 for u in usages]
    assert rows[0]["cache_write_tokens"] > 0 and rows[1]["cache_read_tokens"] > 0


@pytest.mark.parametrize("streaming", [False, True])
def test_tool_use_round_trip_is_linked_into_one_session(stack: Stack, streaming: bool) -> None:
    c = client(stack)
    messages: list[dict[str, object]] = [{"role": "user", "content": "Use get_weather for city=Paris"}]
    if streaming:
        with c.messages.stream(model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], messages=messages) as s:  # type: ignore[list-item,arg-type]
            first = s.get_final_message()
    else:
        first = c.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], messages=messages)  # type: ignore[list-item,arg-type]
    [tool_use] = [b for b in first.content if b.type == "tool_use"]
    assert tool_use.name == "get_weather" and tool_use.input == {"city": "Paris"}
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "18C and sunny"}],
        },
    ]
    second = c.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], messages=messages)  # type: ignore[list-item,arg-type]
    assert second.stop_reason == "end_turn"

    asked, answered = stack.interceptions()
    assert answered["parent_id"] == asked["id"]
    assert answered["session_id"] == asked["session_id"]
    response = orjson.loads(stack.events("llm.response")[0]["details"])
    assert response["tool_calls"] == [
        {"id": tool_use.id, "name": "get_weather", "arguments": orjson.dumps(tool_use.input).decode()}
    ]
    request = orjson.loads(stack.events("llm.request")[1]["details"])
    assert request["tool_results"] == [
        {"id": tool_use.id, "is_error": False, "size": len("18C and sunny"), "content": "18C and sunny"}
    ]
    session = stack.derived_db.query_one("SELECT * FROM sessions WHERE id = ?", (asked["session_id"],))
    assert session is not None and session["interceptions"] == 2 and session["tool_calls"] == 1


def test_claude_code_session_header_groups_calls(stack: Stack) -> None:
    c = anthropic.Anthropic(
        base_url=stack.anthropic_url,
        api_key=stack.token,
        max_retries=0,
        default_headers={"X-Claude-Code-Session-Id": "cc-session-42"},
    )
    for prompt in ("one", "two"):
        c.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": prompt}])
    rows = stack.interceptions()
    assert {r["session_id"] for r in rows} == {"cc-session-42"}
    assert {r["client_session"] for r in rows} == {"cc-session-42"}


def test_count_tokens_and_models_go_through_and_are_recorded(stack: Stack) -> None:
    c = client(stack)
    count = c.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "How long is this?"}])
    assert count.input_tokens > 0
    models = [m.id for m in c.models.list()]
    assert "claude-haiku-4-5" in models
    routes = sorted(orjson.loads(e["details"])["route"] for e in _wait_events(stack, "llm.api", 2))
    assert routes == ["count_tokens", "models"]
    assert stack.interceptions() == []  # metadata calls are not model calls


def test_model_list_is_filtered_by_the_provider_allowlist(make_stack: object) -> None:
    stack = make_stack(anthropic_models=["claude-haiku-*"])  # type: ignore[operator]
    models = [m.id for m in client(stack).models.list()]
    assert models and all(m.startswith("claude-haiku-") for m in models)


def _wait_events(stack: Stack, kind: str, n: int) -> list[dict[str, object]]:
    import time

    for _ in range(100):
        rows = stack.events(kind)
        if len(rows) >= n:
            return rows
        time.sleep(0.02)
    raise AssertionError(f"expected {n} {kind} events, found {len(stack.events(kind))}")
