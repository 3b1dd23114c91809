"""The Anthropic Messages wire format: request validation and facts, complete responses, streams.

Payloads are either captured from the official SDK (through a mock transport), validated against the
SDK's own pydantic types, or copied from the documented stream examples. The SDK's stream helper is
also the oracle for "streaming and non-streaming of the same answer give the same facts".
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from gatehouse.bridge.anthropic import StreamAccumulator, parse_request, parse_response
from gatehouse.bridge.facts import InvalidRequest, ResponseFacts, ToolCall, ToolResult, Usage
from gatehouse.bridge.sse import SSEEvent, SSEParser

MODEL = "claude-sonnet-4-6"


def sdk_client(handler: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="test-key", max_retries=0, http_client=httpx2.Client(transport=httpx2.MockTransport(handler))
    )


def accumulate(stream: bytes, chunk: int | None = None) -> tuple[ResponseFacts, StreamAccumulator]:
    parser = SSEParser()
    acc = StreamAccumulator()
    pieces = [stream] if chunk is None else [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    for piece in pieces:
        for event in parser.feed(piece):
            acc.feed(event)
    for event in parser.flush():
        acc.feed(event)
    return acc.result(), acc


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events
    )


# --------------------------------------------------------------------------- requests


TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    {"type": "bash_20250124", "name": "bash"},
    {"type": "computer_toolset_20260801"},
]

CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "What's the weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "sig"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Rome"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C, sunny"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_02",
                "is_error": True,
                "content": [
                    {"type": "text", "text": "upstream timeout"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                    },
                ],
            },
            {"type": "text", "text": "<system-reminder>be brief</system-reminder>"},
        ],
    },
]


def captured_sdk_request(**kwargs: Any) -> tuple[bytes, dict[str, str]]:
    captured: dict[str, Any] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured["body"] = request.content
        captured["headers"] = dict(request.headers)
        return httpx2.Response(
            200,
            json={
                "id": "msg_x",
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        )

    sdk_client(handler).messages.create(**kwargs)
    return captured["body"], captured["headers"]


def test_request_as_the_sdk_sends_it() -> None:
    body, _ = captured_sdk_request(
        model=MODEL,
        max_tokens=1024,
        system="You are terse.",
        messages=CONVERSATION,
        tools=TOOLS,
    )
    facts = parse_request(body)
    assert facts.model == MODEL
    assert facts.stream is False
    assert facts.max_tokens == 1024
    # The last user turn only holds tool results and an injected reminder: the prompt is the one before.
    assert facts.last_user_prompt == "What's the weather in Paris and Rome?"
    assert facts.tools_offered == ["get_weather", "web_search", "bash", "computer_toolset_20260801"]
    assert facts.tool_results == [
        ToolResult(
            tool_call_id="toolu_01", is_error=False, size=len("18°C, sunny".encode()), content="18°C, sunny"
        ),
        ToolResult(
            tool_call_id="toolu_02",
            is_error=True,
            size=len(b"upstream timeout\n[image]"),
            content="upstream timeout\n[image]",
        ),
    ]


def test_streaming_request_from_the_sdk() -> None:
    captured: dict[str, bytes] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured["body"] = request.content
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=DOC_TOOL_STREAM)

    with sdk_client(handler).messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    ) as stream:
        stream.until_done()
    facts = parse_request(captured["body"])
    assert (facts.stream, facts.last_user_prompt, facts.tool_results, facts.tools_offered) == (
        True,
        "hi",
        [],
        [],
    )


def test_claude_code_first_turn_reminders_are_not_the_prompt() -> None:
    """The shape Claude Code 2.1.329 sends for `claude -p "say hi"` (captured; reminder text shortened)."""
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "<system-reminder>\nAttribution for git commits ...\n</system-reminder>\n",
                },
                {"type": "text", "text": "say hi", "cache_control": {"type": "ephemeral"}},
            ],
        }
    ]
    body = {"model": "claude-opus-5-5", "max_tokens": 128000, "stream": True, "messages": messages}
    assert parse_request(orjson.dumps(body)).last_user_prompt == "say hi"


def test_claude_code_tool_round_trip_as_captured() -> None:
    """Claude Code 2.1.329's second request after two parallel tool calls, one denied (captured; trimmed).

    Note the `system` role message inside `messages`: newer Claude Code sends them, so roles are not
    restricted to user/assistant here.
    """
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "<system-reminder>\nAttribution for git commits ...</system-reminder>\n",
                },
                {"type": "text", "text": "run echo alpha and read /etc/hostname"},
            ],
        },
        {
            "role": "system",
            "content": "# Environment\nYou have been invoked in the following environment: ...",
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_A",
                    "name": "Bash",
                    "input": {"command": "echo alpha", "description": "echo"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_B",
                    "name": "Read",
                    "input": {"file_path": "/etc/hostname"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "content": "Claude requested permissions to read from /etc/hostname, "
                    "but you haven't granted it yet.",
                    "is_error": True,
                    "tool_use_id": "toolu_B",
                },
                {
                    "tool_use_id": "toolu_A",
                    "type": "tool_result",
                    "content": "alpha",
                    "is_error": False,
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
    ]
    body = {"model": "claude-opus-5-5", "max_tokens": 128000, "stream": True, "messages": messages}
    facts = parse_request(orjson.dumps(body))
    assert facts.last_user_prompt == "run echo alpha and read /etc/hostname"
    assert [(r.tool_call_id, r.is_error, r.size) for r in facts.tool_results] == [
        ("toolu_B", True, 88),
        ("toolu_A", False, 5),
    ]


def test_a_prompt_that_is_only_a_reminder_is_no_prompt() -> None:
    body = {
        "model": MODEL,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "  <system-reminder>x"}],
    }
    assert parse_request(orjson.dumps(body)).last_user_prompt is None


def test_last_prompt_skips_tool_result_only_turns() -> None:
    messages = [
        *CONVERSATION[:2],
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "ok"}]},
    ]
    facts = parse_request(orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": messages}))
    assert facts.last_user_prompt == "What's the weather in Paris and Rome?"
    assert [r.tool_call_id for r in facts.tool_results] == ["toolu_01"]


def test_tool_results_only_from_the_last_user_turn() -> None:
    messages = [
        *CONVERSATION,
        {"role": "assistant", "content": "Paris is sunny."},
        {"role": "user", "content": "thanks"},
    ]
    facts = parse_request(orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": messages}))
    assert facts.tool_results == []
    assert facts.last_user_prompt == "thanks"


def test_prefilled_assistant_turn_still_finds_the_last_user_turn() -> None:
    messages = [CONVERSATION[0], {"role": "assistant", "content": "The weather is"}]
    facts = parse_request(
        orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": messages, "stream": True})
    )
    assert (facts.last_user_prompt, facts.stream) == ("What's the weather in Paris and Rome?", True)


def test_multiple_text_blocks_join_with_newlines_and_odd_tool_content_is_kept() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "part one"},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                {"type": "text", "text": "part two"},
                {"type": "tool_result", "tool_use_id": "t1"},
                {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "document", "source": {}}]},
            ],
        }
    ]
    facts = parse_request(orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": messages}))
    assert facts.last_user_prompt == "part one\npart two"
    assert [(r.tool_call_id, r.content, r.size) for r in facts.tool_results] == [
        ("t1", "", 0),
        ("t2", "[document]", 10),
    ]


def test_no_user_text_at_all() -> None:
    facts = parse_request(orjson.dumps({"model": MODEL, "max_tokens": 5, "messages": []}))
    assert (facts.last_user_prompt, facts.tool_results, facts.tools_offered) == (None, [], [])


GOOD = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "JSON"),
        (b"", "JSON"),
        (b"[1, 2]", "object"),
        (b'"text"', "object"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "model"}), "`model`"),
        (orjson.dumps({**GOOD, "model": 42}), "`model`"),
        (orjson.dumps({**GOOD, "model": ""}), "`model`"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "messages"}), "`messages`"),
        (orjson.dumps({**GOOD, "messages": {"role": "user"}}), "`messages`"),
        (orjson.dumps({**GOOD, "messages": "hi"}), "`messages`"),
        (orjson.dumps({**GOOD, "messages": ["hi"]}), "`messages[0]`"),
        (orjson.dumps({**GOOD, "messages": [{"content": "hi"}]}), "`messages[0].role`"),
        (orjson.dumps({**GOOD, "messages": [{"role": "user", "content": 5}]}), "`messages[0].content`"),
        (orjson.dumps({**GOOD, "messages": [{"role": "user"}]}), "`messages[0].content`"),
        (orjson.dumps({**GOOD, "stream": "yes"}), "`stream`"),
        (orjson.dumps({**GOOD, "stream": 1}), "`stream`"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "max_tokens"}), "`max_tokens`"),
        (orjson.dumps({**GOOD, "max_tokens": 0}), "`max_tokens`"),
        (orjson.dumps({**GOOD, "max_tokens": -5}), "`max_tokens`"),
        (orjson.dumps({**GOOD, "max_tokens": "100"}), "`max_tokens`"),
        (orjson.dumps({**GOOD, "max_tokens": 1.5}), "`max_tokens`"),
        (orjson.dumps({**GOOD, "max_tokens": True}), "`max_tokens`"),
        (orjson.dumps({**GOOD, "max_tokens": None}), "`max_tokens`"),
    ],
)
def test_invalid_requests_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(field)):
        parse_request(body)


def test_stream_null_means_false() -> None:
    assert parse_request(orjson.dumps({**GOOD, "stream": None})).stream is False


# --------------------------------------------------------------------------- complete responses


FULL_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCgIYAhIM"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
        {"type": "text", "text": "I'll check ", "citations": None},
        {"type": "text", "text": "the weather."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "fahrenheit"},
        },
        {
            "type": "server_tool_use",
            "id": "srvtoolu_1",
            "name": "web_search",
            "input": {"query": "sf weather"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 2048,
        "output_tokens": 95,
        "output_tokens_details": {"thinking_tokens": 40},
        "service_tier": "standard",
    },
}


def test_complete_response() -> None:
    anthropic.types.Message.model_validate(FULL_MESSAGE)  # the fixture is a real Message
    facts = parse_response(orjson.dumps(FULL_MESSAGE))
    assert facts == ResponseFacts(
        response_id="msg_01XFDUDYJgAACzvnptvVoYEL",
        model="claude-sonnet-4-5-20250929",
        stop_reason="tool_use",
        usage=Usage(
            input_tokens=12,
            output_tokens=95,
            cache_read_tokens=2048,
            cache_write_tokens=300,
            reasoning_tokens=40,
        ),
        tool_calls=[
            ToolCall(
                id="toolu_01A09q90qw90lq917835lq9",
                name="get_weather",
                arguments='{"location":"San Francisco, CA","unit":"fahrenheit"}',
            )
        ],
        thinking=["The user wants weather.", "[redacted]"],
        text="I'll check the weather.",
    )


def test_error_body() -> None:
    body = {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    facts = parse_response(orjson.dumps(body))
    assert facts.error == {
        "type": "overloaded_error",
        "message": "Overloaded",
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    assert facts.tool_calls == [] and facts.response_id is None


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b"",
        b"[]",
        b"null",
        orjson.dumps({"type": "message", "content": "not a list", "usage": "nope", "id": 5}),
        orjson.dumps(
            {"type": "message", "content": [None, 3, {"type": "tool_use"}, {"type": "text", "text": 7}]}
        ),
    ],
)
def test_unexpected_response_shapes_never_raise(body: bytes) -> None:
    parse_response(body)


def test_tool_use_with_odd_fields_is_recorded_with_blanks() -> None:
    facts = parse_response(orjson.dumps({"type": "message", "content": [{"type": "tool_use"}]}))
    assert facts.tool_calls == [ToolCall(id="", name="", arguments="{}")]


# --------------------------------------------------------------------------- streams


# The documented tool-use stream (Anthropic streaming docs, "Streaming request with tool use").
def _delta(index: int, kind: str, key: str, value: str) -> str:
    return json.dumps(
        {"type": "content_block_delta", "index": index, "delta": {"type": kind, key: value}},
        separators=(",", ":"),
    )


DOC_TOOL_EVENTS = [
    (
        "message_start",
        '{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message",'
        '"role":"assistant","model":"claude-sonnet-4-5-20250929","stop_sequence":null,'
        '"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}',
    ),
    (
        "content_block_start",
        '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    ),
    ("ping", '{"type": "ping"}'),
    ("content_block_delta", _delta(0, "text_delta", "text", "Okay")),
    (
        "content_block_delta",
        _delta(0, "text_delta", "text", ", let's check the weather for San Francisco, CA:"),
    ),
    ("content_block_stop", '{"type":"content_block_stop","index":0}'),
    (
        "content_block_start",
        '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
        '"id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}',
    ),
    *(
        ("content_block_delta", _delta(1, "input_json_delta", "partial_json", fragment))
        for fragment in [
            "",
            '{"location":',
            ' "San',
            " Francisc",
            "o,",
            ' CA"',
            ", ",
            '"unit": "fah',
            'renheit"}',
        ]
    ),
    ("content_block_stop", '{"type":"content_block_stop","index":1}'),
    (
        "message_delta",
        '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
        '"usage":{"output_tokens":89}}',
    ),
    ("message_stop", '{"type":"message_stop"}'),
]
DOC_TOOL_STREAM = b"".join(f"event: {event}\ndata: {data}\n\n".encode() for event, data in DOC_TOOL_EVENTS)

DOC_TOOL_FACTS = ResponseFacts(
    response_id="msg_014p7gG3wDgGV9EUtLvnow3U",
    model="claude-sonnet-4-5-20250929",
    stop_reason="tool_use",
    usage=Usage(input_tokens=472, output_tokens=89),
    tool_calls=[
        ToolCall(
            id="toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            name="get_weather",
            arguments='{"location":"San Francisco, CA","unit":"fahrenheit"}',
        )
    ],
    text="Okay, let's check the weather for San Francisco, CA:",
)


def test_documented_tool_stream() -> None:
    facts, acc = accumulate(DOC_TOOL_STREAM)
    assert facts == DOC_TOOL_FACTS
    assert acc.saw_output


def test_documented_tool_stream_at_every_split_point() -> None:
    for cut in range(len(DOC_TOOL_STREAM) + 1):
        parser = SSEParser()
        acc = StreamAccumulator()
        for piece in (DOC_TOOL_STREAM[:cut], DOC_TOOL_STREAM[cut:]):
            for event in parser.feed(piece):
                acc.feed(event)
        assert acc.result() == DOC_TOOL_FACTS, cut


def test_documented_tool_stream_in_small_chunks() -> None:
    for size in (1, 2, 3, 7, 64):
        assert accumulate(DOC_TOOL_STREAM, chunk=size)[0] == DOC_TOOL_FACTS


def test_first_token_flags_only_the_first_output_event() -> None:
    parser = SSEParser()
    acc = StreamAccumulator()
    flags: list[tuple[str | None, bool, bool]] = []
    for event in parser.feed(DOC_TOOL_STREAM):
        acc.feed(event)
        flags.append((event.event, acc.first_token, acc.saw_output))
    first = [i for i, (_, first_token, _) in enumerate(flags) if first_token]
    assert len(first) == 1
    # message_start, the empty text block start and ping carry no output; the first text delta does.
    assert flags[first[0]][0] == "content_block_delta"
    assert all(not saw for _, _, saw in flags[: first[0]])
    assert all(saw for _, _, saw in flags[first[0] :])


def test_tool_use_block_start_counts_as_output() -> None:
    acc = StreamAccumulator()
    acc.feed(
        SSEEvent("message_start", b'{"type":"message_start","message":{"id":"m","usage":{"input_tokens":1}}}')
    )
    assert not acc.saw_output
    acc.feed(
        SSEEvent(
            "content_block_start",
            b'{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"bash","input":{}}}',
        )
    )
    assert acc.saw_output and acc.first_token


def test_partial_stream_keeps_partial_tool_arguments() -> None:
    # Cut right before the `", "` fragment of the tool input.
    cut = DOC_TOOL_STREAM.rindex(b"event:", 0, DOC_TOOL_STREAM.index(b'"partial_json":", "'))
    facts, _ = accumulate(DOC_TOOL_STREAM[:cut])
    assert facts.tool_calls == [
        ToolCall(
            id="toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            name="get_weather",
            arguments='{"location": "San Francisco, CA"',
        )
    ]
    assert facts.stop_reason is None
    assert facts.usage == Usage(input_tokens=472, output_tokens=2)
    assert facts.text == "Okay, let's check the weather for San Francisco, CA:"


def test_stream_cut_mid_event_still_yields_what_was_complete() -> None:
    cut = DOC_TOOL_STREAM.index(b"Okay") + 2
    facts, acc = accumulate(DOC_TOOL_STREAM[:cut])
    assert facts.response_id == "msg_014p7gG3wDgGV9EUtLvnow3U"
    assert facts.text == "" and not acc.saw_output  # the truncated delta is not JSON, so it is dropped


def test_result_can_be_called_repeatedly_mid_stream() -> None:
    parser = SSEParser()
    acc = StreamAccumulator()
    snapshots = []
    for event in parser.feed(DOC_TOOL_STREAM):
        acc.feed(event)
        snapshots.append(acc.result())
    assert snapshots[-1] == DOC_TOOL_FACTS
    assert snapshots[0].text == "" and snapshots[0].response_id == "msg_014p7gG3wDgGV9EUtLvnow3U"


def test_error_event_mid_stream() -> None:
    stream = DOC_TOOL_STREAM[: DOC_TOOL_STREAM.index(b"event: content_block_stop")] + (
        b"event: error\n"
        b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    )
    facts, _ = accumulate(stream)
    assert facts.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert facts.text == "Okay, let's check the weather for San Francisco, CA:"


def test_message_delta_usage_with_input_and_cache_counts() -> None:
    stream = sse(
        [
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 10,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 5000,
                        "output_tokens": 1,
                    },
                },
            },
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 120,
                    "cache_read_input_tokens": None,
                    "output_tokens": 33,
                    "output_tokens_details": {"thinking_tokens": 20},
                },
            },
            {"type": "message_stop"},
        ]
    )
    facts, _ = accumulate(stream)
    assert facts.usage == Usage(
        input_tokens=10, output_tokens=33, cache_read_tokens=5000, cache_write_tokens=120, reasoning_tokens=20
    )
    assert facts.stop_reason == "end_turn"


def test_tool_use_input_given_whole_in_block_start() -> None:
    stream = sse(
        [
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {
                    "type": "tool_use",
                    "id": "t1",
                    "name": "bash",
                    "input": {"command": "ls -la"},
                },
            },
            {"type": "content_block_stop", "index": 0},
        ]
    )
    assert accumulate(stream)[0].tool_calls == [
        ToolCall(id="t1", name="bash", arguments='{"command":"ls -la"}')
    ]


def test_delta_without_its_block_start_is_still_recorded() -> None:
    stream = sse(
        [{"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": "late"}}]
    )
    assert accumulate(stream)[0].text == "late"


def test_server_tool_use_is_not_a_client_tool_call() -> None:
    stream = sse(
        [
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": '{"query": "x"}'},
            },
            {"type": "content_block_stop", "index": 0},
        ]
    )
    facts, acc = accumulate(stream)
    assert facts.tool_calls == [] and acc.saw_output


def test_garbage_events_are_ignored() -> None:
    acc = StreamAccumulator()
    for data in (b"", b"not json", b"[1]", b'{"type": 5}', b'{"type":"content_block_delta","index":"x"}'):
        acc.feed(SSEEvent("content_block_delta", data))
    acc.feed(SSEEvent("content_block_start", b'{"type":"content_block_start","index":0,"content_block":"x"}'))
    acc.feed(SSEEvent("message_start", b'{"type":"message_start","message":[]}'))
    acc.feed(
        SSEEvent("message_delta", b'{"type":"message_delta","delta":null,"usage":{"output_tokens":"9"}}')
    )
    assert acc.result() == ResponseFacts()
    assert not acc.saw_output


# --------------------------------------------------------------------------- streaming == non-streaming


@dataclass
class Answer:
    """One logical model answer, rendered both as a complete Message and as an SSE stream."""

    text: str = ""
    thinking: list[str] = field(default_factory=list)
    redacted: bool = False
    tools: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    input_tokens: int = 25
    output_tokens: int = 150
    cache_read: int = 0
    cache_write: int = 0

    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_write,
        }

    def blocks(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = [
            {"type": "thinking", "thinking": t, "signature": f"sig{i}"} for i, t in enumerate(self.thinking)
        ]
        if self.redacted:
            blocks.append({"type": "redacted_thinking", "data": "opaque"})
        if self.text:
            blocks.append({"type": "text", "text": self.text})
        blocks.extend({"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in self.tools)
        return blocks

    def message(self) -> dict[str, Any]:
        return {
            "id": "msg_equal",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": self.blocks(),
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": self.usage(),
        }

    def stream(self, rng: random.Random) -> bytes:
        return sse(self.events(rng))

    def events(self, rng: random.Random) -> list[dict[str, Any]]:
        start_usage = {**self.usage(), "output_tokens": 1}
        events: list[dict[str, Any]] = [
            {
                "type": "message_start",
                "message": {**self.message(), "content": [], "stop_reason": None, "usage": start_usage},
            },
            {"type": "ping"},
        ]
        for index, block in enumerate(self.blocks()):
            kind = block["type"]
            if kind == "thinking":
                events.append(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                    }
                )
                events += [
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": p},
                    }
                    for p in fragments(block["thinking"], rng)
                ]
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": block["signature"]},
                    }
                )
            elif kind == "redacted_thinking":
                events.append({"type": "content_block_start", "index": index, "content_block": block})
            elif kind == "text":
                events.append(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    }
                )
                events += [
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": p},
                    }
                    for p in fragments(block["text"], rng)
                ]
            else:
                events.append(
                    {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}
                )
                # The model's own spacing, which differs from the compact form of a complete response.
                events += [
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": p},
                    }
                    for p in fragments(json.dumps(block["input"], indent=rng.choice([None, 2])), rng)
                ]
            events.append({"type": "content_block_stop", "index": index})
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": self.output_tokens},
            }
        )
        events.append({"type": "message_stop"})
        return events


def fragments(text: str, rng: random.Random) -> list[str]:
    if not text:
        return [""]
    cuts = (
        sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 8))))
        if len(text) > 1
        else []
    )
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]


ANSWERS = [
    Answer(text="Hello! How can I help?"),
    Answer(
        text="", tools=[("toolu_a", "bash", {"command": "git status", "timeout": 30})], stop_reason="tool_use"
    ),
    Answer(
        text="Reading both files.",
        thinking=["The user wants two files.", "Parallel reads are fine — ünïcødé ✓"],
        redacted=True,
        tools=[
            ("toolu_1", "Read", {"file_path": "/src/a.py", "limit": 200}),
            (
                "toolu_2",
                "Read",
                {"file_path": "/src/b.py", "nested": {"list": [1, 2.5, None, True], "s": 'q"uote'}},
            ),
        ],
        stop_reason="tool_use",
        cache_read=30000,
        cache_write=1200,
    ),
    Answer(tools=[("toolu_empty", "noargs", {})], stop_reason="tool_use"),
    Answer(text="x" * 5000, stop_reason="max_tokens", output_tokens=4096),
]


def sdk_final_message(stream: bytes) -> anthropic.types.Message:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    with sdk_client(handler).messages.stream(
        model=MODEL, max_tokens=4096, messages=[{"role": "user", "content": "go"}]
    ) as s:
        return s.get_final_message()


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("seed", range(4))
def test_streaming_and_complete_response_agree(answer: Answer, seed: int) -> None:
    rng = random.Random(seed)
    message = answer.message()
    anthropic.types.Message.model_validate(message)
    stream = answer.stream(rng)

    complete = parse_response(orjson.dumps(message))
    streamed, _ = accumulate(stream, chunk=rng.randint(1, 200))
    via_sdk = parse_response(sdk_final_message(stream).model_dump_json().encode())

    assert streamed == complete
    assert via_sdk == complete
    assert complete.text == answer.text
    assert [(c.id, c.name, orjson.loads(c.arguments)) for c in complete.tool_calls] == answer.tools


# --------------------------------------------------------------------------- robustness


# Values of every JSON type, including unhashable ones where a string key is expected.
ODD_VALUES: list[Any] = [None, True, 0, -1, 1.5, "", "x", [], [None], {}, {"type": []}, [[]], {"text": {}}]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in children:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def mutants(value: Any, rng: random.Random, count: int) -> Iterator[Any]:
    """Deep copies of `value` with one to three sub-values swapped for values of another JSON type."""
    paths = list(_paths(value))
    for _ in range(count):
        mutant = copy.deepcopy(value)
        for _ in range(rng.randint(1, 3)):
            *parents, last = rng.choice(paths)
            node = mutant
            try:
                for key in parents:
                    node = node[key]
                _ = node[last]  # only swap a value that is still there
                node[last] = copy.deepcopy(rng.choice(ODD_VALUES))
            except (KeyError, IndexError, TypeError):
                pass  # an earlier swap already replaced this path's parent
        yield mutant


def test_requests_of_the_wrong_shape_are_invalid_or_parsed_never_crash() -> None:
    rng = random.Random(7)
    body = {"model": MODEL, "max_tokens": 100, "stream": True, "messages": CONVERSATION, "tools": TOOLS}
    for mutant in mutants(body, rng, 3000):
        with contextlib.suppress(InvalidRequest):
            parse_request(orjson.dumps(mutant))


def test_responses_and_streams_of_the_wrong_shape_never_crash() -> None:
    rng = random.Random(11)
    for mutant in mutants(FULL_MESSAGE, rng, 2000):
        parse_response(orjson.dumps(mutant))
    events = ANSWERS[2].events(random.Random(0))
    for _ in range(300):
        acc = StreamAccumulator()
        for event in events:
            [mutant] = mutants(event, rng, 1) if rng.random() < 0.3 else [event]
            acc.feed(SSEEvent(rng.choice([None, "content_block_delta"]), orjson.dumps(mutant)))
            acc.result()
