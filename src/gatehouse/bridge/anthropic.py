"""Anthropic Messages API (`POST /v1/messages`) wire format, sans-IO.

Request (client → upstream), the parts the Bridge reads:

* `model` (string), `max_tokens` (required, positive integer), `stream` (bool, optional).
* `messages`: array of `{"role", "content": string | [block, ...]}`; roles are "user" and "assistant",
  but Claude Code 2.1.329 also sends `"system"` messages mid-conversation, so roles are not
  restricted here. A user turn that answers tool calls carries
  `{"type": "tool_result", "tool_use_id", "content", "is_error"}` blocks, where `content` is a
  string or an array of `text` / `image` / `document` / ... blocks.
  The "last user prompt" is the text of the last user turn that has any prompt text, tool results
  or not. Agents put generated context in user turns as text blocks (Claude Code starts the first
  turn with `<system-reminder>` blocks before the typed prompt, and adds them next to tool results);
  text blocks opening with such a marker are not prompt text.
* `tools`: custom tools and versioned server tools have a `name`; toolsets
  (`computer_toolset_20260801`, ...) have none, so their `type` stands in for it.

Response, non-streaming: a `message` object whose `content` is a list of blocks: `text`,
`thinking` (`thinking` text + `signature`), `redacted_thinking` (opaque `data`), `tool_use`
(`id`, `name`, `input` as a JSON *object*), server-tool blocks (`server_tool_use`,
`web_search_tool_result`, ...; not client tool calls, so not recorded as `ToolCall`s).

Streaming (`text/event-stream`): `message_start` (id, model, initial usage) →
per block `content_block_start` / `content_block_delta`* / `content_block_stop` → `message_delta`
(stop_reason, cumulative usage) → `message_stop`; `ping` and an in-band `error` event may come at
any point. Deltas: `text_delta`, `thinking_delta`, `signature_delta`, `citations_delta`,
`input_json_delta` (`partial_json` fragments whose concatenation is the tool input).

Quirks handled here:

* Tool input is an object in a complete response but a string of fragments in a stream. To make the
  two paths agree, `ToolCall.arguments` is the compact orjson serialisation of the input whenever it
  parses; a stream cut mid-arguments keeps the raw partial text instead.
* A `tool_use` block's `content_block_start` carries `input: {}` and the real input arrives as deltas;
  when no delta comes (seen with some proxies/replays) the start event's input is used.
* `message_delta.usage` is cumulative. Older API versions only put `output_tokens` there; newer ones
  repeat input and cache counts too, so every counter takes the max of what was seen.

Usage semantics, recorded as the provider reports them: `input_tokens` EXCLUDES cached input;
the total prompt is `input_tokens + cache_read_tokens + cache_write_tokens` (reads from
`cache_read_input_tokens`, writes from `cache_creation_input_tokens`). `reasoning_tokens` comes from
`usage.output_tokens_details.thinking_tokens` when present and is already included in `output_tokens`.
"""

from __future__ import annotations

from typing import Any

import orjson

from gatehouse.bridge.facts import (
    InvalidRequest,
    RequestFacts,
    ResponseFacts,
    ToolCall,
    ToolResult,
    Usage,
)
from gatehouse.bridge.sse import SSEEvent
from gatehouse.bridge.wire import (
    checked_messages,
    error_object,
    flatten,
    int_or_zero,
    last_user_prompt,
    read_request,
    str_or_none,
)

__all__ = ["StreamAccumulator", "parse_request", "parse_response"]


# --------------------------------------------------------------------------- request


def parse_request(body: bytes) -> RequestFacts:
    """Validate and summarise a Messages API request body; raise `InvalidRequest` if it is unusable."""
    obj, model, stream = read_request(body)
    max_tokens = obj.get("max_tokens")
    # bool is an int subclass; `true` is not a token budget.
    if type(max_tokens) is not int or max_tokens <= 0:
        raise InvalidRequest("`max_tokens` is required and must be a positive integer")
    messages = checked_messages(obj, "a string or an array of content blocks", null_content=False)

    return RequestFacts(
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        last_user_prompt=last_user_prompt(messages),
        tool_results=_tool_results(messages),
        tools_offered=_tools_offered(obj.get("tools")),
    )


def _tool_results(messages: list[dict[str, Any]]) -> list[ToolResult]:
    for message in reversed(messages):
        if message["role"] != "user":
            continue
        content = message["content"]
        if not isinstance(content, list):
            return []
        results: list[ToolResult] = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            text = flatten(block.get("content"))
            tool_use_id = block.get("tool_use_id")
            results.append(
                ToolResult(
                    tool_call_id=tool_use_id if isinstance(tool_use_id, str) else "",
                    is_error=block.get("is_error") is True,
                    size=len(text.encode()),
                    content=text,
                )
            )
        return results
    return []


def _tools_offered(tools: Any) -> list[str]:
    if not isinstance(tools, list):
        return []
    names: list[str] = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        name = tool.get("name")
        if isinstance(name, str):
            names.append(name)
        elif isinstance(tool.get("type"), str):
            names.append(tool["type"])
    return names


# --------------------------------------------------------------------------- helpers


def _usage_into(usage: Usage, raw: Any) -> None:
    """Fold one usage object into `usage`, keeping the max of each counter (all are cumulative)."""
    if not isinstance(raw, dict):
        return
    usage.input_tokens = max(usage.input_tokens, int_or_zero(raw.get("input_tokens")))
    usage.output_tokens = max(usage.output_tokens, int_or_zero(raw.get("output_tokens")))
    usage.cache_read_tokens = max(usage.cache_read_tokens, int_or_zero(raw.get("cache_read_input_tokens")))
    usage.cache_write_tokens = max(
        usage.cache_write_tokens, int_or_zero(raw.get("cache_creation_input_tokens"))
    )
    details = raw.get("output_tokens_details")
    if isinstance(details, dict):
        usage.reasoning_tokens = max(usage.reasoning_tokens, int_or_zero(details.get("thinking_tokens")))


def _error(obj: dict[str, Any]) -> dict[str, Any]:
    err = obj.get("error")
    out = error_object(err) if err is not None else {}
    request_id = obj.get("request_id")
    if isinstance(request_id, str):
        out.setdefault("request_id", request_id)
    return out


def _canonical_args(raw: str) -> str:
    try:
        return orjson.dumps(orjson.loads(raw)).decode()
    except orjson.JSONDecodeError:
        return raw


# --------------------------------------------------------------------------- complete response


def parse_response(body: bytes) -> ResponseFacts:
    """Summarise a complete (non-streaming) Messages API response or error body. Never raises."""
    facts = ResponseFacts()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return facts
    if not isinstance(obj, dict):
        return facts
    if obj.get("type") == "error" or (obj.get("error") is not None and obj.get("type") != "message"):
        facts.error = _error(obj)
        return facts

    facts.response_id = str_or_none(obj.get("id"))
    facts.model = str_or_none(obj.get("model"))
    facts.stop_reason = str_or_none(obj.get("stop_reason"))
    _usage_into(facts.usage, obj.get("usage"))
    content = obj.get("content")
    if not isinstance(content, list):
        return facts
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
        elif kind == "thinking":
            thinking = block.get("thinking")
            facts.thinking.append(thinking if isinstance(thinking, str) else "")
        elif kind == "redacted_thinking":
            facts.thinking.append("[redacted]")
        elif kind == "tool_use":
            raw_input = block.get("input")
            facts.tool_calls.append(
                ToolCall(
                    id=str_or_none(block.get("id")) or "",
                    name=str_or_none(block.get("name")) or "",
                    arguments=orjson.dumps(raw_input if raw_input is not None else {}).decode(),
                )
            )
    facts.text = "".join(texts)
    return facts


# --------------------------------------------------------------------------- stream


class _Block:
    __slots__ = ("id", "input", "kind", "name", "parts")

    def __init__(self, kind: str, id: str = "", name: str = "", input: Any = None) -> None:
        self.kind = kind
        self.id = id
        self.name = name
        self.input = input
        self.parts: list[str] = []


# The delta that implies a block's kind when its `content_block_start` was never seen.
_DELTA_KIND = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "tool_use"}
_DELTA_FIELD = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


class StreamAccumulator:
    """Folds Messages API SSE events into `ResponseFacts`.

    `saw_output` turns True on the first event carrying model output (a non-empty text, thinking or
    tool-input delta, or the start of a tool_use / redacted_thinking block); `first_token` is True
    only right after the `feed` call that flipped it, for time-to-first-token.
    """

    __slots__ = ("_blocks", "_error", "_id", "_model", "_stop", "_usage", "first_token", "saw_output")

    def __init__(self) -> None:
        self.saw_output = False
        self.first_token = False
        self._id: str | None = None
        self._model: str | None = None
        self._stop: str | None = None
        self._usage = Usage()
        self._blocks: dict[int, _Block] = {}
        self._error: dict[str, Any] | None = None

    def feed(self, event: SSEEvent) -> None:
        self.first_token = False
        if event.event == "ping":
            return
        try:
            obj = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") or event.event
        if kind == "content_block_delta":
            self._on_delta(obj)
        elif kind == "content_block_start":
            self._on_start(obj)
        elif kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._id = str_or_none(message.get("id")) or self._id
                self._model = str_or_none(message.get("model")) or self._model
                self._stop = str_or_none(message.get("stop_reason")) or self._stop
                _usage_into(self._usage, message.get("usage"))
        elif kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                self._stop = str_or_none(delta.get("stop_reason")) or self._stop
            _usage_into(self._usage, obj.get("usage"))
        elif kind == "error":
            self._error = _error(obj)

    def _output(self) -> None:
        if not self.saw_output:
            self.saw_output = True
            self.first_token = True

    def _on_start(self, obj: dict[str, Any]) -> None:
        index = obj.get("index")
        block = obj.get("content_block")
        if type(index) is not int or not isinstance(block, dict):
            return
        kind = block.get("type")
        if not isinstance(kind, str):
            return
        b = _Block(kind)
        if kind == "tool_use":
            b.id = str_or_none(block.get("id")) or ""
            b.name = str_or_none(block.get("name")) or ""
            b.input = block.get("input")
            self._output()
        elif kind == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                b.parts.append(text)
                self._output()
        elif kind == "thinking":
            thinking = block.get("thinking")
            if isinstance(thinking, str) and thinking:
                b.parts.append(thinking)
                self._output()
        elif kind == "redacted_thinking":
            self._output()
        self._blocks[index] = b

    def _on_delta(self, obj: dict[str, Any]) -> None:
        index = obj.get("index")
        delta = obj.get("delta")
        if type(index) is not int or not isinstance(delta, dict):
            return
        dtype = delta.get("type")
        if not isinstance(dtype, str):
            return
        field = _DELTA_FIELD.get(dtype)
        if field is None:  # signature_delta, citations_delta: nothing the Bridge records
            return
        fragment = delta.get(field)
        if not isinstance(fragment, str) or not fragment:
            return
        block = self._blocks.get(index)
        if block is None:
            # The start was lost (stream joined late / upstream bug): infer the block from the delta.
            block = self._blocks[index] = _Block(_DELTA_KIND[dtype])
        block.parts.append(fragment)
        self._output()

    def result(self) -> ResponseFacts:
        """The facts so far; callable at any time, including after an abrupt end of stream."""
        facts = ResponseFacts(
            response_id=self._id,
            model=self._model,
            stop_reason=self._stop,
            usage=Usage(**self._usage.as_dict()),
            error=dict(self._error) if self._error is not None else None,
        )
        texts: list[str] = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            if block.kind == "text":
                texts.append("".join(block.parts))
            elif block.kind == "thinking":
                facts.thinking.append("".join(block.parts))
            elif block.kind == "redacted_thinking":
                facts.thinking.append("[redacted]")
            elif block.kind == "tool_use":
                if block.parts:
                    arguments = _canonical_args("".join(block.parts))
                else:
                    arguments = orjson.dumps(block.input if block.input is not None else {}).decode()
                facts.tool_calls.append(ToolCall(id=block.id, name=block.name, arguments=arguments))
        facts.text = "".join(texts)
        return facts
