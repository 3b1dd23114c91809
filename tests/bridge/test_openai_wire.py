"""The OpenAI wire formats (Chat Completions and Responses): requests, complete responses, streams.

Payloads are captured from the official SDK through a mock transport or validated against its
pydantic types; the SDK's streaming helpers are the oracle for "streaming and non-streaming of the
same answer give the same facts".
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from gatehouse.bridge import openai_chat, openai_responses
from gatehouse.bridge.facts import InvalidRequest, ResponseFacts, ToolCall, ToolResult, Usage
from gatehouse.bridge.sse import SSEEvent, SSEParser
from tests.bridge.test_anthropic_wire import mutants


def sdk_client(handler: Any) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="test-key", max_retries=0, http_client=httpx2.Client(transport=httpx2.MockTransport(handler))
    )


def streaming_handler(stream: bytes) -> Any:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    return handler


def accumulate(module: Any, stream: bytes, chunk: int | None = None) -> tuple[ResponseFacts, Any]:
    parser = SSEParser()
    acc = module.StreamAccumulator()
    pieces = [stream] if chunk is None else [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    for piece in pieces:
        for event in parser.feed(piece):
            acc.feed(event)
    for event in parser.flush():
        acc.feed(event)
    return acc.result(), acc


def fragments(text: str, rng: random.Random) -> list[str]:
    if len(text) <= 1:
        return [text]
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 8))))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def invalid(module: Any, body: bytes, field: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(field)):
        module.parse_request(body)


# =========================================================================== Chat Completions


CHAT_MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a coding agent."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Why does this test fail?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "run", "arguments": '{"cmd": "pytest -x"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "read", "arguments": '{"path": "a.py"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "1 failed, 3 passed"},
    {
        "role": "tool",
        "tool_call_id": "call_2",
        "content": [{"type": "text", "text": "def f():"}, {"type": "text", "text": "    return 1"}],
    },
]
CHAT_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "run", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "read", "description": "Read a file"}},
    {"type": "custom", "custom": {"name": "apply_patch", "format": {"type": "text"}}},
]


def captured_chat_request(**kwargs: Any) -> bytes:
    captured: dict[str, bytes] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured["body"] = request.content
        return httpx2.Response(200, json=ChatAnswer(text="ok").completion())

    sdk_client(handler).chat.completions.create(**kwargs)
    return captured["body"]


def test_chat_request_as_the_sdk_sends_it() -> None:
    body = captured_chat_request(
        model="gpt-5", messages=CHAT_MESSAGES, tools=CHAT_TOOLS, max_completion_tokens=2048
    )
    facts = openai_chat.parse_request(body)
    assert (facts.model, facts.stream, facts.max_tokens) == ("gpt-5", False, 2048)
    assert facts.last_user_prompt == "Why does this test fail?"
    assert facts.tools_offered == ["run", "read", "apply_patch"]
    assert facts.tool_results == [
        ToolResult(tool_call_id="call_1", is_error=False, size=18, content="1 failed, 3 passed"),
        ToolResult(tool_call_id="call_2", is_error=False, size=21, content="def f():\n    return 1"),
    ]


def test_chat_max_tokens_alias_and_precedence() -> None:
    base = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    assert openai_chat.parse_request(orjson.dumps({**base, "max_tokens": 50})).max_tokens == 50
    both = {**base, "max_tokens": 50, "max_completion_tokens": 70}
    assert openai_chat.parse_request(orjson.dumps(both)).max_tokens == 70
    assert openai_chat.parse_request(orjson.dumps({**base, "max_tokens": None})).max_tokens is None


def test_chat_tool_results_only_after_the_last_assistant_message() -> None:
    messages = [
        *CHAT_MESSAGES,
        {"role": "assistant", "content": "Found it."},
        {"role": "user", "content": "fix it"},
    ]
    facts = openai_chat.parse_request(orjson.dumps({"model": "m", "messages": messages, "stream": True}))
    assert (facts.tool_results, facts.last_user_prompt, facts.stream) == ([], "fix it", True)


def test_chat_legacy_functions_are_offered_tools() -> None:
    body = {"model": "m", "messages": [], "functions": [{"name": "old_style", "parameters": {}}]}
    assert openai_chat.parse_request(orjson.dumps(body)).tools_offered == ["old_style"]


CHAT_GOOD = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{", "JSON"),
        (b"42", "object"),
        (orjson.dumps({"messages": []}), "`model`"),
        (orjson.dumps({**CHAT_GOOD, "model": ["gpt"]}), "`model`"),
        (orjson.dumps({"model": "gpt-5"}), "`messages`"),
        (orjson.dumps({**CHAT_GOOD, "messages": "hi"}), "`messages`"),
        (orjson.dumps({**CHAT_GOOD, "messages": [None]}), "`messages[0]`"),
        (orjson.dumps({**CHAT_GOOD, "messages": [{"content": "x"}]}), "`messages[0].role`"),
        (
            orjson.dumps({**CHAT_GOOD, "messages": [{"role": "user", "content": {"text": "x"}}]}),
            "`messages[0].content`",
        ),
        (orjson.dumps({**CHAT_GOOD, "stream": "true"}), "`stream`"),
        (orjson.dumps({**CHAT_GOOD, "max_tokens": "9"}), "`max_tokens`"),
        (orjson.dumps({**CHAT_GOOD, "max_completion_tokens": 1.0}), "`max_completion_tokens`"),
        (orjson.dumps({**CHAT_GOOD, "max_completion_tokens": False}), "`max_completion_tokens`"),
    ],
)
def test_chat_invalid_requests_name_the_field(body: bytes, field: str) -> None:
    invalid(openai_chat, body, field)


@dataclass
class ChatAnswer:
    text: str = ""
    reasoning: str = ""
    tools: list[tuple[str, str, str]] = field(default_factory=list)
    finish: str = "stop"
    prompt: int = 120
    completion_tokens: int = 40
    cached: int = 0
    reasoning_tokens: int = 0

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens, "audio_tokens": 0},
        }

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None, "refusal": None}
        if self.tools:
            message["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in self.tools
            ]
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        return {
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion",
            "created": 1741569952,
            "model": "gpt-5-2025-08-07",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish}],
            "usage": self.usage(),
            "service_tier": "default",
            "system_fingerprint": None,
        }

    def stream(self, rng: random.Random, *, include_usage: bool = True) -> bytes:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
                "object": "chat.completion.chunk",
                "created": 1741569952,
                "model": "gpt-5-2025-08-07",
                "service_tier": "default",
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **({"usage": None} if include_usage else {}),
                "obfuscation": "x" * rng.randint(1, 6),
            }

        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        chunks += [chunk({"reasoning_content": p}) for p in fragments(self.reasoning, rng) if p]
        chunks += [chunk({"content": p}) for p in fragments(self.text, rng) if p]
        for index, (call_id, name, arguments) in enumerate(self.tools):
            chunks.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            chunks += [
                chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
                for p in fragments(arguments, rng)
                if p
            ]
        chunks.append(chunk({}, self.finish))
        if include_usage:
            final = chunk({})
            final["choices"] = []
            final["usage"] = self.usage()
            chunks.append(final)
        return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


CHAT_ANSWERS = [
    ChatAnswer(text="Hello there!"),
    ChatAnswer(
        text="",
        tools=[
            ("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", '{"location": "Paris, France"}'),
            ("call_ABCD", "get_time", '{"tz":"Europe/Paris","fmt": "%H:%M"}'),
        ],
        finish="tool_calls",
        cached=1024,
        reasoning_tokens=64,
    ),
    ChatAnswer(
        text="Running the tests first.",
        tools=[("call_x", "run", '{"cmd": "pytest -q"}')],
        finish="tool_calls",
    ),
    ChatAnswer(text="é" * 300, finish="length", completion_tokens=300),
]


def test_chat_complete_response() -> None:
    body = CHAT_ANSWERS[1].completion()
    ChatCompletion.model_validate(body)
    assert openai_chat.parse_response(orjson.dumps(body)) == ResponseFacts(
        response_id="chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        model="gpt-5-2025-08-07",
        stop_reason="tool_calls",
        usage=Usage(input_tokens=120, output_tokens=40, cache_read_tokens=1024, reasoning_tokens=64),
        tool_calls=[
            ToolCall(
                id="call_DdmO9pD3xa9XTPNJ32zg2hcA",
                name="get_weather",
                arguments='{"location": "Paris, France"}',
            ),
            ToolCall(id="call_ABCD", name="get_time", arguments='{"tz":"Europe/Paris","fmt": "%H:%M"}'),
        ],
    )


def test_chat_custom_and_legacy_tool_calls() -> None:
    body = ChatAnswer(text="x").completion()
    body["choices"][0]["message"]["tool_calls"] = [
        {"id": "call_c", "type": "custom", "custom": {"name": "apply_patch", "input": "*** Begin Patch"}},
        "garbage",
    ]
    body["choices"][0]["message"]["function_call"] = {"name": "legacy", "arguments": "{}"}
    facts = openai_chat.parse_response(orjson.dumps(body))
    assert facts.tool_calls == [
        ToolCall(id="call_c", name="apply_patch", arguments="*** Begin Patch"),
        ToolCall(id="", name="legacy", arguments="{}"),
    ]


def test_chat_reasoning_content_is_thinking() -> None:
    answer = ChatAnswer(text="42", reasoning="Let me think step by step.")
    assert openai_chat.parse_response(orjson.dumps(answer.completion())).thinking == [
        "Let me think step by step."
    ]
    assert accumulate(openai_chat, answer.stream(random.Random(0)))[0].thinking == [
        "Let me think step by step."
    ]


def test_chat_error_body() -> None:
    body = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    facts = openai_chat.parse_response(orjson.dumps(body))
    assert facts.error == body["error"] and facts.response_id is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"nope",
        b"[]",
        orjson.dumps({"choices": "x", "usage": []}),
        orjson.dumps({"choices": [{"message": 3}]}),
        orjson.dumps({"error": "boom"}),
    ],
)
def test_chat_unexpected_shapes_never_raise(body: bytes) -> None:
    openai_chat.parse_response(body)


def test_chat_stream_first_token_and_role_only_chunk() -> None:
    stream = CHAT_ANSWERS[0].stream(random.Random(1))
    parser = SSEParser()
    acc = openai_chat.StreamAccumulator()
    events = parser.feed(stream)
    acc.feed(events[0])  # {"role": "assistant", "content": ""}: no output yet
    assert not acc.saw_output and not acc.first_token
    acc.feed(events[1])
    assert acc.saw_output and acc.first_token
    acc.feed(events[2])
    assert acc.saw_output and not acc.first_token


def test_chat_stream_without_usage_and_cut_short() -> None:
    answer = CHAT_ANSWERS[1]
    stream = answer.stream(random.Random(3), include_usage=False)
    facts, _ = accumulate(openai_chat, stream)
    assert facts.usage == Usage() and facts.stop_reason == "tool_calls"
    cut = stream.index(b'"arguments":"Pa') if b'"arguments":"Pa' in stream else len(stream) // 2
    partial, _ = accumulate(openai_chat, stream[:cut])
    assert partial.stop_reason is None
    assert partial.tool_calls and partial.tool_calls[0].id == "call_DdmO9pD3xa9XTPNJ32zg2hcA"
    assert answer.tools[0][2].startswith(partial.tool_calls[0].arguments)


def test_chat_stream_error_chunk() -> None:
    stream = (
        CHAT_ANSWERS[0]
        .stream(random.Random(0), include_usage=False)
        .replace(
            b"data: [DONE]",
            b'data: {"error": {"message": "The server had an error", "type": "server_error"}}',
        )
    )
    facts, _ = accumulate(openai_chat, stream)
    assert facts.error == {"message": "The server had an error", "type": "server_error"}
    assert facts.text == "Hello there!"


def test_chat_stream_servers_that_reuse_index_zero() -> None:
    chunks = [
        {
            "id": "c",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]
                    },
                }
            ],
        },
        {
            "id": "c",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "b", "function": {"name": "g", "arguments": '{"x":1}'}}
                        ]
                    },
                }
            ],
        },
        {
            "id": "c",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"id": "c3", "function": {"name": "h", "arguments": "[]"}}]},
                }
            ],
        },
        {"id": "c", "model": "m", "choices": [{"index": 1, "delta": {"content": "other choice"}}]},
    ]
    stream = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    facts, _ = accumulate(openai_chat, stream)
    assert facts.tool_calls == [
        ToolCall(id="a", name="f", arguments="{}"),
        ToolCall(id="b", name="g", arguments='{"x":1}'),
        ToolCall(id="c3", name="h", arguments="[]"),
    ]
    assert facts.text == ""


def test_chat_stream_garbage_is_ignored() -> None:
    acc = openai_chat.StreamAccumulator()
    for data in (b"[DONE]", b"", b"{", b"[]", b'{"choices": "x"}', b'{"choices": [null, {"delta": 5}]}'):
        acc.feed(SSEEvent(None, data))
    assert acc.result() == ResponseFacts() and not acc.saw_output


@pytest.mark.parametrize("answer", CHAT_ANSWERS)
@pytest.mark.parametrize("seed", range(4))
def test_chat_streaming_and_complete_response_agree(answer: ChatAnswer, seed: int) -> None:
    rng = random.Random(seed)
    completion = answer.completion()
    ChatCompletion.model_validate(completion)
    stream = answer.stream(rng)

    complete = openai_chat.parse_response(orjson.dumps(completion))
    streamed, _ = accumulate(openai_chat, stream, chunk=rng.randint(1, 300))
    assert streamed == complete

    # The SDK's helper refuses to finish a `length` stream, and does not know the non-OpenAI
    # reasoning field; everywhere else its final completion is a second opinion.
    if answer.finish != "length" and not answer.reasoning:
        with sdk_client(streaming_handler(stream)).chat.completions.stream(
            model="gpt-5",
            messages=[{"role": "user", "content": "go"}],
            stream_options={"include_usage": True},
        ) as s:
            final = s.get_final_completion()
        assert openai_chat.parse_response(final.model_dump_json().encode()) == complete
    assert complete.text == answer.text
    assert [(c.id, c.name, c.arguments) for c in complete.tool_calls] == answer.tools


# =========================================================================== Responses


def captured_responses_request(**kwargs: Any) -> bytes:
    captured: dict[str, bytes] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured["body"] = request.content
        return httpx2.Response(200, json=RespAnswer(text="ok").response())

    sdk_client(handler).responses.create(**kwargs)
    return captured["body"]


# A Codex-style stateless turn: context messages, the prompt, then a tool round trip echoed back.
CODEX_INPUT: list[dict[str, Any]] = [
    {
        "type": "message",
        "role": "developer",
        "content": [{"type": "input_text", "text": "<permissions instructions>..."}],
    },
    {
        "type": "message",
        "role": "user",
        "content": [
            {
                "type": "input_text",
                "text": "<environment_context>\n  <cwd>/repo</cwd>\n</environment_context>",
            }
        ],
    },
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the failing test"}]},
    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB..."},
    {
        "type": "function_call",
        "call_id": "call_a",
        "name": "exec_command",
        "arguments": '{"cmd":"pytest -x"}',
    },
    {
        "type": "custom_tool_call",
        "call_id": "call_b",
        "name": "apply_patch",
        "input": "*** Begin Patch\n*** End Patch",
    },
    {"type": "function_call_output", "call_id": "call_a", "output": "1 failed"},
    {
        "type": "custom_tool_call_output",
        "call_id": "call_b",
        "output": [
            {"type": "input_text", "text": "Done!"},
            {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
        ],
    },
]
CODEX_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "exec_command",
        "parameters": {"type": "object", "properties": {}},
        "strict": False,
    },
    {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
    {
        "type": "namespace",
        "name": "multi_agent_v1",
        "description": "Sub-agents",
        "tools": [
            {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}},
            {"type": "function", "name": "wait_agent", "parameters": {"type": "object"}},
        ],
    },
    {"type": "web_search", "external_web_access": False},
    {"type": "local_shell"},
    {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.deepwiki.com/mcp"},
]


def test_responses_request_as_the_sdk_sends_it() -> None:
    body = captured_responses_request(
        model="gpt-5-codex",
        instructions="You are Codex.",
        input=CODEX_INPUT,
        tools=CODEX_TOOLS,
        store=False,
        include=["reasoning.encrypted_content"],
        max_output_tokens=4000,
    )
    facts = openai_responses.parse_request(body)
    assert (facts.model, facts.stream, facts.max_tokens) == ("gpt-5-codex", False, 4000)
    assert facts.last_user_prompt == "fix the failing test"
    assert facts.tools_offered == [
        "exec_command",
        "apply_patch",
        "spawn_agent",
        "wait_agent",
        "web_search",
        "local_shell",
        "mcp:deepwiki",
    ]
    assert facts.tool_results == [
        ToolResult(tool_call_id="call_a", is_error=False, size=8, content="1 failed"),
        ToolResult(tool_call_id="call_b", is_error=False, size=13, content="Done!\n[image]"),
    ]


def test_codex_parallel_tool_round_trip_as_captured() -> None:
    """Codex 0.169's request after two parallel calls (captured; trimmed): all calls, then all outputs."""
    items = [
        {
            "type": "message",
            "id": "msg_01a1",
            "role": "user",
            "content": [{"type": "input_text", "text": "run two echos"}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": None, "encrypted_content": None},
        {
            "type": "function_call",
            "status": "completed",
            "id": "fc_1",
            "name": "exec_command",
            "arguments": '{"cmd":"echo alpha"}',
            "call_id": "call_A",
        },
        {
            "type": "function_call",
            "status": "completed",
            "id": "fc_2",
            "name": "exec_command",
            "arguments": '{"cmd":"echo beta"}',
            "call_id": "call_B",
        },
        {
            "type": "function_call_output",
            "id": "fco_01a1fb9e-8799",
            "call_id": "call_A",
            "output": "Chunk ID: 6f8d37\nWall time: 0.0000 seconds\nProcess exited with code 0\n"
            "Output:\nalpha\n",
        },
        {
            "type": "function_call_output",
            "id": "fco_01a1fb9e-879a",
            "call_id": "call_B",
            "output": "Chunk ID: a04f5f\nWall time: 0.0000 seconds\nProcess exited with code 0\n"
            "Output:\nbeta\n",
        },
    ]
    facts = openai_responses.parse_request(
        orjson.dumps({"model": "gpt-5-codex", "input": items, "stream": True})
    )
    assert facts.last_user_prompt == "run two echos"
    assert [r.tool_call_id for r in facts.tool_results] == ["call_A", "call_B"]
    assert facts.tool_results[1].content.endswith("Output:\nbeta\n")


def test_responses_string_input() -> None:
    facts = openai_responses.parse_request(
        orjson.dumps({"model": "gpt-5", "input": "Tell me a joke", "stream": True})
    )
    assert (facts.last_user_prompt, facts.stream, facts.tool_results, facts.max_tokens) == (
        "Tell me a joke",
        True,
        [],
        None,
    )


def test_responses_easy_messages_and_string_content() -> None:
    items = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    facts = openai_responses.parse_request(orjson.dumps({"model": "gpt-5", "input": items}))
    assert facts.last_user_prompt == "second"


def test_responses_only_the_trailing_results_count() -> None:
    items = [*CODEX_INPUT, {"type": "message", "role": "user", "content": "thanks"}]
    facts = openai_responses.parse_request(orjson.dumps({"model": "gpt-5", "input": items}))
    assert (facts.tool_results, facts.last_user_prompt) == ([], "thanks")


def test_responses_builtin_tool_outputs() -> None:
    items = [
        {"type": "shell_call", "call_id": "sh_1", "action": {"commands": ["ls"]}},
        {
            "type": "apply_patch_call",
            "call_id": "ap_1",
            "status": "completed",
            "operation": {"type": "delete_file", "path": "x"},
        },
        {
            "type": "local_shell_call",
            "id": "ls_1",
            "call_id": "ls_1",
            "status": "completed",
            "action": {"type": "exec", "command": ["ls"], "env": {}},
        },
        {
            "type": "shell_call_output",
            "call_id": "sh_1",
            "output": [{"stdout": "a.py\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}],
        },
        {"type": "apply_patch_call_output", "call_id": "ap_1", "status": "failed", "output": "no such file"},
        {"type": "local_shell_call_output", "id": "ls_1", "output": "total 0"},
        {
            "type": "computer_call_output",
            "call_id": "cc_1",
            "output": {"type": "computer_screenshot", "image_url": "data:"},
        },
    ]
    facts = openai_responses.parse_request(orjson.dumps({"model": "gpt-5", "input": items}))
    assert [(r.tool_call_id, r.is_error, r.content) for r in facts.tool_results] == [
        ("sh_1", False, "a.py\n"),
        ("ap_1", True, "no such file"),
        ("ls_1", False, "total 0"),
        ("cc_1", False, "[image]"),
    ]


RESP_GOOD = {"model": "gpt-5", "input": "hi"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"\xff", "JSON"),
        (b"[]", "object"),
        (orjson.dumps({"input": "hi"}), "`model`"),
        (orjson.dumps({**RESP_GOOD, "model": None}), "`model`"),
        (orjson.dumps({"model": "gpt-5"}), "`input`"),
        (orjson.dumps({**RESP_GOOD, "input": {"role": "user"}}), "`input`"),
        (orjson.dumps({**RESP_GOOD, "input": 5}), "`input`"),
        (orjson.dumps({**RESP_GOOD, "input": ["hi"]}), "`input[0]`"),
        (orjson.dumps({**RESP_GOOD, "stream": "no"}), "`stream`"),
        (orjson.dumps({**RESP_GOOD, "max_output_tokens": "10"}), "`max_output_tokens`"),
        (orjson.dumps({**RESP_GOOD, "max_output_tokens": 10.5}), "`max_output_tokens`"),
    ],
)
def test_responses_invalid_requests_name_the_field(body: bytes, field: str) -> None:
    invalid(openai_responses, body, field)


@dataclass
class RespAnswer:
    text: str = ""
    summaries: list[str] = field(default_factory=list)
    tools: list[tuple[str, str, str]] = field(default_factory=list)
    custom: list[tuple[str, str, str]] = field(default_factory=list)
    incomplete: str | None = None
    input_tokens: int = 300
    output_tokens: int = 80
    cached: int = 0
    reasoning_tokens: int = 0

    def items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if self.summaries:
            items.append(
                {
                    "id": "rs_68af",
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": s} for s in self.summaries],
                    "encrypted_content": "gAAAAB",
                }
            )
        if self.text:
            items.append(
                {
                    "id": "msg_68af",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
                    ],
                }
            )
        items += [
            {
                "id": f"fc_{n}",
                "type": "function_call",
                "status": "completed",
                "call_id": c,
                "name": n,
                "arguments": a,
            }
            for c, n, a in self.tools
        ]
        items += [
            {"id": f"ctc_{n}", "type": "custom_tool_call", "call_id": c, "name": n, "input": i}
            for c, n, i in self.custom
        ]
        return items

    def response(self, *, output: list[dict[str, Any]] | None = None, final: bool = True) -> dict[str, Any]:
        status = ("incomplete" if self.incomplete else "completed") if final else "in_progress"
        return {
            "id": "resp_68af4030592c81938ec0a5fbab4a3e9f",
            "object": "response",
            "created_at": 1756315696,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": self.incomplete} if self.incomplete and final else None,
            "instructions": None,
            "max_output_tokens": None,
            "model": "gpt-5-codex",
            "output": self.items() if output is None else output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "store": False,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": self.cached, "cache_write_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": self.input_tokens + self.output_tokens,
            }
            if final
            else None,
            "user": None,
            "metadata": {},
        }

    def events(self, rng: random.Random, *, final_output: bool = True) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": self.response(output=[], final=False)},
            {"type": "response.in_progress", "response": self.response(output=[], final=False)},
        ]
        for index, item in enumerate(self.items()):
            kind, item_id = item["type"], item["id"]
            base = {"item_id": item_id, "output_index": index}
            if kind == "reasoning":
                events.append(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "summary": []},
                    }
                )
                for si, text in enumerate(self.summaries):
                    events.append(
                        {
                            "type": "response.reasoning_summary_part.added",
                            **base,
                            "summary_index": si,
                            "part": {"type": "summary_text", "text": ""},
                        }
                    )
                    events += [
                        {
                            "type": "response.reasoning_summary_text.delta",
                            **base,
                            "summary_index": si,
                            "delta": p,
                        }
                        for p in fragments(text, rng)
                    ]
                    events.append(
                        {
                            "type": "response.reasoning_summary_text.done",
                            **base,
                            "summary_index": si,
                            "text": text,
                        }
                    )
                    events.append(
                        {
                            "type": "response.reasoning_summary_part.done",
                            **base,
                            "summary_index": si,
                            "part": {"type": "summary_text", "text": text},
                        }
                    )
            elif kind == "message":
                events.append(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "status": "in_progress", "content": []},
                    }
                )
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                events.append(
                    {"type": "response.content_part.added", **base, "content_index": 0, "part": part}
                )
                events += [
                    {
                        "type": "response.output_text.delta",
                        **base,
                        "content_index": 0,
                        "delta": p,
                        "logprobs": [],
                    }
                    for p in fragments(self.text, rng)
                ]
                events.append(
                    {
                        "type": "response.output_text.done",
                        **base,
                        "content_index": 0,
                        "text": self.text,
                        "logprobs": [],
                    }
                )
                events.append(
                    {
                        "type": "response.content_part.done",
                        **base,
                        "content_index": 0,
                        "part": {**part, "text": self.text},
                    }
                )
            elif kind == "function_call":
                events.append(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "status": "in_progress", "arguments": ""},
                    }
                )
                events += [
                    {"type": "response.function_call_arguments.delta", **base, "delta": p}
                    for p in fragments(item["arguments"], rng)
                ]
                events.append(
                    {"type": "response.function_call_arguments.done", **base, "arguments": item["arguments"]}
                )
            else:
                events.append(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "input": ""},
                    }
                )
                events += [
                    {"type": "response.custom_tool_call_input.delta", **base, "delta": p}
                    for p in fragments(item["input"], rng)
                ]
                events.append(
                    {"type": "response.custom_tool_call_input.done", **base, "input": item["input"]}
                )
            events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        terminal = "response.incomplete" if self.incomplete else "response.completed"
        events.append({"type": terminal, "response": self.response(output=None if final_output else [])})
        for seq, event in enumerate(events):
            event["sequence_number"] = seq
        return events


def responses_sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


RESP_ANSWERS = [
    RespAnswer(text="Hi! What should we build?"),
    RespAnswer(
        summaries=["**Planning the fix**\n\nRun the tests first.", "**Reading code**"],
        tools=[("call_1", "exec_command", '{"cmd":["bash","-lc","pytest -x"],"workdir":"/repo"}')],
        cached=2048,
        reasoning_tokens=192,
    ),
    RespAnswer(
        text="Applying the patch.",
        custom=[
            ("call_p", "apply_patch", "*** Begin Patch\n*** Update File: a.py\n@@\n-x\n+y\n*** End Patch")
        ],
        tools=[("call_2", "view_image", '{"path": "/tmp/s.png"}')],
    ),
    RespAnswer(text="This answer got cut", incomplete="max_output_tokens", output_tokens=16),
]


def test_responses_complete_response() -> None:
    body = RESP_ANSWERS[1].response()
    Response.model_validate(body)
    assert openai_responses.parse_response(orjson.dumps(body)) == ResponseFacts(
        response_id="resp_68af4030592c81938ec0a5fbab4a3e9f",
        model="gpt-5-codex",
        stop_reason="completed",
        usage=Usage(input_tokens=300, output_tokens=80, cache_read_tokens=2048, reasoning_tokens=192),
        tool_calls=[
            ToolCall(
                id="call_1",
                name="exec_command",
                arguments='{"cmd":["bash","-lc","pytest -x"],"workdir":"/repo"}',
            )
        ],
        thinking=["**Planning the fix**\n\nRun the tests first.", "**Reading code**"],
    )


def test_responses_incomplete_stop_reason() -> None:
    facts = openai_responses.parse_response(orjson.dumps(RESP_ANSWERS[3].response()))
    assert (facts.stop_reason, facts.text) == ("max_output_tokens", "This answer got cut")


def test_responses_builtin_tool_calls_and_multiple_messages() -> None:
    output = [
        {
            "type": "message",
            "id": "m1",
            "role": "assistant",
            "status": "completed",
            "phase": "commentary",
            "content": [{"type": "output_text", "text": "Looking.", "annotations": []}],
        },
        {
            "type": "local_shell_call",
            "id": "lsh_1",
            "call_id": "call_ls",
            "status": "completed",
            "action": {"type": "exec", "command": ["ls"], "env": {}},
        },
        {
            "type": "shell_call",
            "id": "sh_1",
            "call_id": "call_sh",
            "status": "completed",
            "action": {"commands": ["pwd"]},
        },
        {
            "type": "apply_patch_call",
            "id": "ap_1",
            "call_id": "call_ap",
            "status": "completed",
            "operation": {"type": "delete_file", "path": "x.py"},
        },
        {
            "type": "web_search_call",
            "id": "ws_1",
            "status": "completed",
            "action": {"type": "search", "query": "x"},
        },
        {
            "type": "message",
            "id": "m2",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "refusal", "refusal": "no"},
                {"type": "output_text", "text": "Done.", "annotations": []},
            ],
        },
    ]
    facts = openai_responses.parse_response(orjson.dumps({**RESP_ANSWERS[0].response(), "output": output}))
    assert facts.text == "Looking.\n\nDone."
    assert facts.tool_calls == [
        ToolCall(id="call_ls", name="local_shell", arguments='{"type":"exec","command":["ls"],"env":{}}'),
        ToolCall(id="call_sh", name="shell", arguments='{"commands":["pwd"]}'),
        ToolCall(id="call_ap", name="apply_patch", arguments='{"type":"delete_file","path":"x.py"}'),
    ]


def test_responses_failed_response_and_error_body() -> None:
    failed = {
        **RESP_ANSWERS[0].response(output=[]),
        "status": "failed",
        "error": {"code": "server_error", "message": "boom"},
    }
    facts = openai_responses.parse_response(orjson.dumps(failed))
    assert (facts.stop_reason, facts.error) == ("failed", {"code": "server_error", "message": "boom"})
    body = {
        "error": {
            "message": "Invalid 'input[3]'",
            "type": "invalid_request_error",
            "param": "input[3]",
            "code": None,
        }
    }
    assert openai_responses.parse_response(orjson.dumps(body)).error == body["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"}",
        b"null",
        orjson.dumps({"output": "x", "usage": 3}),
        orjson.dumps({"output": [1, {"type": 2}, {"type": "function_call"}]}),
    ],
)
def test_responses_unexpected_shapes_never_raise(body: bytes) -> None:
    openai_responses.parse_response(body)


def test_responses_stream_error_event_is_flat() -> None:
    events = RESP_ANSWERS[0].events(random.Random(0))[:5]
    events.append(
        {
            "type": "error",
            "code": "ERR_SOMETHING",
            "message": "Something went wrong",
            "param": None,
            "sequence_number": 5,
        }
    )
    facts, _ = accumulate(openai_responses, responses_sse(events))
    assert facts.error == {"code": "ERR_SOMETHING", "message": "Something went wrong", "param": None}
    assert facts.response_id == "resp_68af4030592c81938ec0a5fbab4a3e9f" and facts.stop_reason is None


def test_responses_stream_failed_event() -> None:
    events = RESP_ANSWERS[0].events(random.Random(0))[:2]
    failed = {
        **RESP_ANSWERS[0].response(output=[]),
        "status": "failed",
        "error": {"code": "server_error", "message": "boom"},
    }
    events.append({"type": "response.failed", "response": failed, "sequence_number": 2})
    facts, _ = accumulate(openai_responses, responses_sse(events))
    assert (facts.stop_reason, facts.error) == ("failed", {"code": "server_error", "message": "boom"})


def test_responses_first_token() -> None:
    events = RESP_ANSWERS[1].events(random.Random(0))
    acc = openai_responses.StreamAccumulator()
    flipped = []
    for event in SSEParser().feed(responses_sse(events)):
        acc.feed(event)
        if acc.first_token:
            flipped.append(event.event)
    assert flipped == ["response.reasoning_summary_text.delta"]


def test_responses_stream_without_deltas_still_counts_output() -> None:
    """A server that only sends the final response: output is seen when it arrives."""
    answer = RESP_ANSWERS[0]
    acc = openai_responses.StreamAccumulator()
    acc.feed(
        SSEEvent(
            "response.created",
            orjson.dumps({"type": "response.created", "response": answer.response(output=[], final=False)}),
        )
    )
    assert not acc.saw_output
    acc.feed(
        SSEEvent(
            "response.completed", orjson.dumps({"type": "response.completed", "response": answer.response()})
        )
    )
    assert acc.saw_output and acc.first_token
    assert acc.result() == openai_responses.parse_response(orjson.dumps(answer.response()))


def test_responses_stream_garbage_is_ignored() -> None:
    acc = openai_responses.StreamAccumulator()
    for data in (
        b"",
        b"[1]",
        b'{"type": 3}',
        b'{"type": "response.output_item.added", "item": 4}',
        b'{"type": "response.output_text.delta", "delta": 5}',
        b'{"type": "response.completed", "response": []}',
    ):
        acc.feed(SSEEvent(None, data))
    assert acc.result() == ResponseFacts() and not acc.saw_output


@pytest.mark.parametrize("answer", RESP_ANSWERS)
@pytest.mark.parametrize("seed", range(4))
def test_responses_streaming_and_complete_response_agree(answer: RespAnswer, seed: int) -> None:
    rng = random.Random(seed)
    body = answer.response()
    Response.model_validate(body)
    events = answer.events(rng)
    stream = responses_sse(events)

    complete = openai_responses.parse_response(orjson.dumps(body))
    if answer.incomplete is None:  # the SDK's helper only finishes on `response.completed`
        with sdk_client(streaming_handler(stream)).responses.stream(model="gpt-5-codex", input="go") as s:
            final = s.get_final_response()
        assert openai_responses.parse_response(final.model_dump_json().encode()) == complete
    assert accumulate(openai_responses, stream, chunk=rng.randint(1, 400))[0] == complete
    assert complete.text == answer.text and complete.thinking == answer.summaries
    assert [(c.id, c.name, c.arguments) for c in complete.tool_calls] == answer.tools + answer.custom

    # A backend that leaves the final response's `output` empty: the streamed items stand in.
    assert (
        accumulate(openai_responses, responses_sse(answer.events(random.Random(seed), final_output=False)))[0]
        == complete
    )

    # Cut before the terminal event: same content, no usage or stop reason yet.
    no_final, _ = accumulate(openai_responses, responses_sse(events[:-1]))
    assert (no_final.text, no_final.thinking, no_final.tool_calls) == (
        complete.text,
        complete.thinking,
        complete.tool_calls,
    )
    assert (no_final.stop_reason, no_final.usage) == (None, Usage())

    # Only deltas (every `*.done` event dropped): rebuilt from the fragments alone.
    deltas_only = [e for e in events[:-1] if not e["type"].endswith(".done")]
    rebuilt, _ = accumulate(openai_responses, responses_sse(deltas_only))
    assert (rebuilt.text, rebuilt.thinking, rebuilt.tool_calls) == (
        complete.text,
        complete.thinking,
        complete.tool_calls,
    )


def test_responses_stream_cut_mid_arguments_keeps_the_fragment() -> None:
    answer = RESP_ANSWERS[1]
    events = answer.events(random.Random(5))
    last_delta = max(i for i, e in enumerate(events) if e["type"] == "response.function_call_arguments.delta")
    facts, _ = accumulate(openai_responses, responses_sse(events[:last_delta]))
    [call] = facts.tool_calls
    assert call.id == "call_1" and call.name == "exec_command"
    assert answer.tools[0][2].startswith(call.arguments) and call.arguments != answer.tools[0][2]


def test_json_helper_roundtrip_is_stable() -> None:
    # Guard for the fixtures above: SSE data lines must not contain raw newlines.
    for answer in RESP_ANSWERS:
        for event in answer.events(random.Random(0)):
            assert b"\n" not in orjson.dumps(event)
    assert json.loads(orjson.dumps({"a": "\n"})) == {"a": "\n"}


# =========================================================================== robustness


@pytest.mark.parametrize(
    ("module", "body"),
    [
        (
            openai_chat,
            {
                "model": "gpt-5",
                "messages": CHAT_MESSAGES,
                "tools": CHAT_TOOLS,
                "stream": True,
                "max_tokens": 5,
            },
        ),
        (
            openai_responses,
            {"model": "gpt-5", "input": CODEX_INPUT, "tools": CODEX_TOOLS, "max_output_tokens": 5},
        ),
    ],
)
def test_requests_of_the_wrong_shape_are_invalid_or_parsed_never_crash(
    module: Any, body: dict[str, Any]
) -> None:
    rng = random.Random(3)
    for mutant in mutants(body, rng, 3000):
        with contextlib.suppress(InvalidRequest):
            module.parse_request(orjson.dumps(mutant))


def test_chat_responses_and_streams_of_the_wrong_shape_never_crash() -> None:
    rng = random.Random(5)
    answer = ChatAnswer(text="hi", reasoning="hmm", tools=[("c1", "f", '{"a": 1}')], finish="tool_calls")
    for mutant in mutants(answer.completion(), rng, 2000):
        openai_chat.parse_response(orjson.dumps(mutant))
    chunks = [
        orjson.loads(e.data) for e in SSEParser().feed(answer.stream(random.Random(0))) if e.data != b"[DONE]"
    ]
    for _ in range(300):
        acc = openai_chat.StreamAccumulator()
        for chunk in chunks:
            [mutant] = mutants(chunk, rng, 1) if rng.random() < 0.3 else [chunk]
            acc.feed(SSEEvent(None, orjson.dumps(mutant)))
            acc.result()


def test_responses_api_responses_and_streams_of_the_wrong_shape_never_crash() -> None:
    rng = random.Random(9)
    answer = RESP_ANSWERS[2]
    for mutant in mutants(answer.response(), rng, 2000):
        openai_responses.parse_response(orjson.dumps(mutant))
    events = answer.events(random.Random(0))
    for _ in range(300):
        acc = openai_responses.StreamAccumulator()
        for event in events:
            [mutant] = mutants(event, rng, 1) if rng.random() < 0.3 else [event]
            acc.feed(SSEEvent(event["type"], orjson.dumps(mutant)))
            acc.result()
