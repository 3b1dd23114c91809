"""The official OpenAI SDK through the Bridge: Chat Completions and the Responses API."""

from __future__ import annotations

import json

import openai
import orjson
import pytest

from tests.gateway.conftest import Stack

MODEL = "gpt-5-mini"
TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.openai_url, api_key=stack.token, max_retries=0)


def test_chat_completion_records_usage(stack: Stack) -> None:
    completion = client(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}]
    )
    assert completion.choices[0].message.content
    [row] = stack.interceptions()
    assert completion.usage is not None
    assert (row["route"], row["status"], row["input_tokens"], row["output_tokens"]) == (
        "chat_completions",
        200,
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row["client"] == "openai-sdk-python"


async def test_async_chat_stream_with_usage_and_tool_round_trip(stack: Stack) -> None:
    async with openai.AsyncOpenAI(base_url=stack.openai_url, api_key=stack.token, max_retries=0) as c:
        messages: list[dict[str, object]] = [{"role": "user", "content": "please read_file /etc/hostname"}]
        stream = await c.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            tools=[TOOL],  # type: ignore[list-item]
            stream=True,
            stream_options={"include_usage": True},
        )
        calls: dict[int, dict[str, str]] = {}
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    if delta.function:
                        call["name"] = delta.function.name or call["name"]
                        call["arguments"] += delta.function.arguments or ""
        [call] = calls.values()
        assert call["name"] == "read_file" and json.loads(call["arguments"]) == {"path": "/etc/hostname"}
        messages += [
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": "buildbox"},
        ]
        final = await c.chat.completions.create(model=MODEL, messages=messages, tools=[TOOL])  # type: ignore[arg-type,list-item]
        assert final.choices[0].message.content
    asked, answered = stack.interceptions()
    assert usage is not None
    assert (asked["input_tokens"], asked["output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert asked["stream"] == 1 and asked["ttft_ms"] is not None
    assert answered["parent_id"] == asked["id"] and answered["session_id"] == asked["session_id"]


def test_responses_api_with_reasoning_summary_streamed(stack: Stack) -> None:
    c = client(stack)
    with c.responses.stream(
        model="o4-mini", input="Explain the plan", reasoning={"effort": "low", "summary": "auto"}
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text
    assert final.usage is not None
    [row] = stack.interceptions()
    assert row["route"] == "responses" and row["stream"] == 1
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
        final.usage.output_tokens_details.reasoning_tokens,
    )
    details = orjson.loads(stack.events("llm.response")[0]["details"])
    assert details["thinking"], "the reasoning summary is recorded"
    assert row["last_prompt"] == "Explain the plan"


@pytest.mark.parametrize("streaming", [False, True])
def test_responses_function_call_round_trip(stack: Stack, streaming: bool) -> None:
    c = client(stack)
    tools = [{"type": "function", "name": "read_file", "parameters": TOOL["function"]["parameters"]}]  # type: ignore[index]
    if streaming:
        with c.responses.stream(model=MODEL, input="read_file /tmp/notes.txt", tools=tools) as s:  # type: ignore[arg-type]
            first = s.get_final_response()
    else:
        first = c.responses.create(model=MODEL, input="read_file /tmp/notes.txt", tools=tools)  # type: ignore[arg-type]
    [call] = [o for o in first.output if o.type == "function_call"]
    second = c.responses.create(
        model=MODEL,
        tools=tools,  # type: ignore[arg-type]
        input=[
            {"role": "user", "content": "read_file /tmp/notes.txt"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "remember the milk"},
        ],
    )
    assert second.output_text
    asked, answered = stack.interceptions()
    assert answered["parent_id"] == asked["id"]
    request = orjson.loads(stack.events("llm.request")[1]["details"])
    assert request["tool_results"][0]["id"] == call.call_id
    assert request["tool_results"][0]["content"] == "remember the milk"


def test_models_list(stack: Stack) -> None:
    assert MODEL in [m.id for m in client(stack).models.list()]
