"""The simulator's Chat Completions and Responses APIs, driven by the official `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from gatehouse.simulator import SimulatorConfig, SimulatorThread, run_in_thread

KEY = "sk-sim-openai-test"
MODEL = "gpt-sim-test"
HELLO: Any = [{"role": "user", "content": "Say hello."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "file_path": {"type": "string"},
        "recursive": {"type": "boolean"},
        "depth": {"type": "integer"},
    },
    "required": ["file_path", "recursive", "depth"],
}
CHAT_TOOL: Any = {
    "type": "function",
    "function": {"name": "list_dir", "description": "List", "parameters": SCHEMA},
}
RESPONSES_TOOL: Any = {"type": "function", "name": "list_dir", "description": "List", "parameters": SCHEMA}
TOOL_PROMPT = "call list_dir on /var/log with depth=3"
EXPECTED_ARGS = {"file_path": "/var/log", "recursive": True, "depth": 3}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with run_in_thread(SimulatorConfig(api_key=KEY)) as sim:
        yield sim


@pytest.fixture
def client(sim: SimulatorThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key=KEY, max_retries=0) as client:
        yield client


# -- chat completions --------------------------------------------------------------------------------


def test_chat_text_and_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert completion.model == MODEL
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None and len(choice.message.content.split()) == 24
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 24
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 24
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0


def test_chat_stream_with_usage_matches_non_streaming(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=HELLO)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.model_dump() == plain.usage.model_dump()  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])
    # Without include_usage there is no usage chunk at all.
    bare = list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
    assert all(c.choices and c.usage is None for c in bare)


def test_chat_reasoning_models_report_reasoning_tokens(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="o4-mini", messages=HELLO, max_completion_tokens=100)
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning == 16
    assert usage.completion_tokens == reasoning + len((completion.choices[0].message.content or "").split())
    capped = client.chat.completions.create(model="my-reasoner", messages=HELLO, max_completion_tokens=20)
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 20


async def test_chat_tool_call_round_trip_async_streaming(sim: SimulatorThread) -> None:
    messages: list[Any] = [{"role": "user", "content": TOOL_PROMPT}]
    async with openai.AsyncOpenAI(base_url=f"{sim.base_url}/v1", api_key=KEY, max_retries=0) as client:
        async with client.chat.completions.stream(
            model=MODEL, messages=messages, tools=[CHAT_TOOL]
        ) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        assert call.type == "function" and call.function.name == "list_dir"
        assert json.loads(call.function.arguments) == EXPECTED_ARGS
        messages += [
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "syslog auth.log kern.log"},
        ]
        answer = await client.chat.completions.create(model=MODEL, messages=messages, tools=[CHAT_TOOL])
    assert answer.choices[0].finish_reason == "stop"
    assert "syslog auth.log kern.log" in (answer.choices[0].message.content or "")


def test_chat_cached_tokens_rule(client: openai.OpenAI) -> None:
    small = client.chat.completions.create(model=MODEL, messages=HELLO)
    keyed = client.chat.completions.create(model=MODEL, messages=HELLO, prompt_cache_key="agent-1")
    big = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 5000}])
    for completion, cached in ((small, False), (keyed, True), (big, True)):
        usage = completion.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        expected = usage.prompt_tokens // 2 if cached else 0
        assert usage.prompt_tokens_details.cached_tokens == expected


# -- responses ---------------------------------------------------------------------------------------


def test_responses_text_and_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Say hello.", instructions="Be brief.")
    assert response.status == "completed"
    assert response.model == MODEL
    assert len(response.output_text.split()) == 24
    assert response.usage is not None
    assert response.usage.output_tokens == 24
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.instructions == "Be brief."


def test_responses_stream_with_reasoning_summary(client: openai.OpenAI) -> None:
    params: Any = {
        "model": MODEL,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Think, then answer."}]}],
        "reasoning": {"effort": "medium", "summary": "auto"},
        "prompt_cache_key": "session-42",
    }
    with client.responses.stream(**params) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    for expected in (
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_item.done",
    ):
        assert expected in kinds
    assert kinds.index("response.reasoning_summary_text.done") < kinds.index("response.output_text.delta")
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and message.type == "message"
    summary = reasoning.summary[0].text
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert deltas == summary
    usage = final.usage
    assert usage is not None
    assert usage.output_tokens_details.reasoning_tokens == len(summary.split()) == 16
    assert usage.output_tokens == 16 + len(final.output_text.split())
    assert usage.input_tokens_details.cached_tokens == usage.input_tokens // 2  # prompt_cache_key set
    plain = client.responses.create(**params)
    assert plain.usage is not None and plain.usage.model_dump() == usage.model_dump()
    assert plain.output_text == final.output_text


def test_responses_reasoning_without_summary_still_counts(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="hi", reasoning={"effort": "low"}, include=["reasoning.encrypted_content"]
    )
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary == [] and reasoning.encrypted_content
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 16


def test_responses_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    with client.responses.stream(model=MODEL, input="hi", max_output_tokens=16) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.incomplete"


async def test_responses_function_call_round_trip_async(sim: SimulatorThread) -> None:
    async with openai.AsyncOpenAI(base_url=f"{sim.base_url}/v1", api_key=KEY, max_retries=0) as client:
        async with client.responses.stream(model=MODEL, input=TOOL_PROMPT, tools=[RESPONSES_TOOL]) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        assert "response.function_call_arguments.delta" in kinds
        assert "response.function_call_arguments.done" in kinds
        [call] = final.output
        assert call.type == "function_call" and call.name == "list_dir"
        assert json.loads(call.arguments) == EXPECTED_ARGS
        follow_up: Any = [
            {"role": "user", "content": TOOL_PROMPT},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "nginx.log mail.log"},
        ]
        answer = await client.responses.create(model=MODEL, input=follow_up, tools=[RESPONSES_TOOL])
    assert "nginx.log mail.log" in answer.output_text


# -- models, errors, auth ----------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == list(SimulatorConfig().openai_models)
    assert client.models.retrieve("gpt-anything").id == "gpt-anything"


def test_unknown_model_is_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="sim-unknown", messages=HELLO)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="sim-unknown-2", input="hi")
    assert caught.value.code == "model_not_found"


def test_wrong_key_is_rejected_in_openai_format(sim: SimulatorThread) -> None:
    with (
        openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key="nope", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        bad.chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.code == "invalid_api_key"


# -- Azure OpenAI ------------------------------------------------------------------------------------


def azure(sim: SimulatorThread, key: str = KEY) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=sim.base_url, api_key=key, api_version="2024-10-21", max_retries=0
    )


def test_azure_deployment_path_with_api_key(sim: SimulatorThread) -> None:
    httpx.delete(f"{sim.base_url}/_sim/requests")
    with azure(sim) as client:
        completion = client.chat.completions.create(model="my-deployment", messages=HELLO)
        chunks = list(
            client.chat.completions.create(
                model="my-deployment", messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "gpt-4.1" in [m.id for m in client.models.list()]  # GET /openai/models
    assert completion.model == "my-deployment" and completion.choices[0].message.content
    assert chunks[-1].usage is not None
    records = httpx.get(f"{sim.base_url}/_sim/requests").json()["requests"]
    assert [(r["path"], r["query"], r["status"], r["headers"]["api-key"]) for r in records] == [
        ("/openai/deployments/my-deployment/chat/completions", "api-version=2024-10-21", 200, KEY),
        ("/openai/deployments/my-deployment/chat/completions", "api-version=2024-10-21", 200, KEY),
        ("/openai/models", "api-version=2024-10-21", 200, KEY),
    ]


async def test_azure_deployment_decides_the_model_and_needs_an_api_version(sim: SimulatorThread) -> None:
    url = f"{sim.base_url}/openai/deployments/my-deployment/chat/completions"
    async with aiohttp.ClientSession(headers={"api-key": KEY}) as session:
        body = {"model": "ignored", "messages": HELLO}
        async with session.post(url, params={"api-version": "2024-10-21"}, json=body) as response:
            assert response.status == 200 and (await response.json())["model"] == "my-deployment"
        async with session.post(url, json=body) as response:
            assert response.status == 404
            assert await response.json() == {"error": {"code": "404", "message": "Resource not found"}}
        async with session.post(url, params={"api-version": "2024-10-21"}, headers={"api-key": "nope"}) as r:
            assert r.status == 401


def test_azure_unknown_deployment(sim: SimulatorThread) -> None:
    with azure(sim) as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="sim-unknown-deployment", messages=HELLO)
    assert caught.value.code == "DeploymentNotFound"


async def test_raw_chat_stream_ends_with_done_and_responses_frames_are_named(sim: SimulatorThread) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        body: dict[str, Any] = {"model": MODEL, "messages": HELLO, "stream": True}
        async with session.post(f"{sim.base_url}/v1/chat/completions", json=body) as response:
            raw = (await response.read()).decode()
        frames = raw.strip().split("\n\n")
        assert frames[-1] == "data: [DONE]"
        assert all(frame.startswith("data: {") for frame in frames[:-1])

        body = {"model": MODEL, "input": "hi", "stream": True}
        async with session.post(f"{sim.base_url}/v1/responses", json=body) as response:
            raw = (await response.read()).decode()
        for frame in raw.strip().split("\n\n"):
            event, data = frame.split("\n")
            assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")
