"""OpenAI Chat Completions (`POST /v1/chat/completions`) wire format, sans-IO.

Request, the parts the Bridge reads:

* `model` (string), `stream` (bool, optional), `max_completion_tokens` or its deprecated alias
  `max_tokens` (integer or null; the former wins when both are set).
* `messages`: array of `{"role", "content", ...}`. `content` is a string, an array of parts
  (`{"type": "text", "text"}`, `image_url`, `input_audio`, `file`), or null on an assistant turn that
  only calls tools. Tool results come back as separate `{"role": "tool", "tool_call_id", "content"}`
  messages following the assistant message that requested them; Chat has no error flag for them.
  The "last user prompt" is the text of the last user message with prompt text; text opening with
  an agent's context marker (`<system-reminder>`, `<environment_context>`, ...) does not count.
* `tools`: `{"type": "function", "function": {"name", ...}}` or `{"type": "custom", "custom": {"name"}}`;
  the deprecated `functions` array is read as well.

Response, non-streaming: `choices[0].message` with `content`, `tool_calls`
(`{"id", "type": "function", "function": {"name", "arguments"}}` where `arguments` is a JSON *string*,
or `{"type": "custom", "custom": {"name", "input"}}`), and `choices[0].finish_reason`
(`stop`, `length`, `tool_calls`, `content_filter`, `function_call`). Only choice 0 is recorded (`n`
greater than 1 is not something coding agents use).

Streaming: `data:` lines without `event:` names, each a `chat.completion.chunk`, ended by
`data: [DONE]`. The first chunk usually carries only `delta.role`. Tool calls stream as
`delta.tool_calls[]` entries keyed by `index`: the first for an index carries `id` and
`function.name`, later ones only `function.arguments` fragments to concatenate. Some
OpenAI-compatible servers reuse index 0 for every call, so a new `id` at a known index starts a new
call. Usage arrives only with `stream_options: {"include_usage": true}`, in a final chunk whose
`choices` is empty (other chunks carry `usage: null`); an interrupted stream has no usage. Errors
mid-stream arrive as a chunk `{"error": {...}}`. Reasoning text is not part of OpenAI's own API but
OpenAI-compatible servers (DeepSeek, vLLM, OpenRouter) send it as `reasoning_content` or `reasoning`
on the message/delta; it is recorded as one thinking entry.

Usage semantics, recorded as the provider reports them: `input_tokens` is `prompt_tokens`, which
INCLUDES cached tokens (`cache_read_tokens` = `prompt_tokens_details.cached_tokens` is a subset of it,
unlike Anthropic). `reasoning_tokens` = `completion_tokens_details.reasoning_tokens`, a subset of
`output_tokens` (`completion_tokens`). `cache_write_tokens` = `prompt_tokens_details.cache_write_tokens`
where the server reports it.
"""

from __future__ import annotations

from typing import Any

import orjson

from gatehouse.bridge.facts import RequestFacts, ResponseFacts, ToolCall, ToolResult, Usage
from gatehouse.bridge.sse import SSEEvent
from gatehouse.bridge.wire import (
    checked_messages,
    error_object,
    flatten,
    last_user_prompt,
    optional_int,
    read_request,
    str_or_none,
    usage_reader,
)

__all__ = ["StreamAccumulator", "parse_request", "parse_response"]


# --------------------------------------------------------------------------- request


def parse_request(body: bytes) -> RequestFacts:
    """Validate and summarise a Chat Completions request body; raise `InvalidRequest` if it is unusable."""
    obj, model, stream = read_request(body)
    legacy_max = optional_int(obj, "max_tokens")  # checked first, so its error is the one reported
    max_tokens = optional_int(obj, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = legacy_max
    messages = checked_messages(obj, "a string, an array of parts or null", null_content=True)

    return RequestFacts(
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        last_user_prompt=last_user_prompt(messages),
        tool_results=_tool_results(messages),
        tools_offered=_tools_offered(obj.get("tools"), obj.get("functions")),
    )


def _tool_results(messages: list[dict[str, Any]]) -> list[ToolResult]:
    start = 0
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            start = i + 1
            break
    results: list[ToolResult] = []
    for message in messages[start:]:
        if message["role"] != "tool":
            continue
        text = flatten(message.get("content"), image_part="image_url")
        call_id = message.get("tool_call_id")
        results.append(
            ToolResult(
                tool_call_id=call_id if isinstance(call_id, str) else "",
                is_error=False,
                size=len(text.encode()),
                content=text,
            )
        )
    return results


def _tools_offered(tools: Any, functions: Any) -> list[str]:
    names: list[str] = []
    if isinstance(tools, list):
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            inner = tool.get("function")
            if not isinstance(inner, dict):
                inner = tool.get("custom")
            name = inner.get("name") if isinstance(inner, dict) else tool.get("name")
            if isinstance(name, str):
                names.append(name)
    if isinstance(functions, list):
        names.extend(f["name"] for f in functions if isinstance(f, dict) and isinstance(f.get("name"), str))
    return names


# --------------------------------------------------------------------------- helpers


_usage = usage_reader("prompt", "completion")


def _reasoning(obj: dict[str, Any]) -> str | None:
    for key in ("reasoning_content", "reasoning"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _tool_call(raw: Any) -> ToolCall | None:
    if not isinstance(raw, dict):
        return None
    call_id = str_or_none(raw.get("id")) or ""
    function = raw.get("function")
    if isinstance(function, dict):
        return ToolCall(
            id=call_id,
            name=str_or_none(function.get("name")) or "",
            arguments=str_or_none(function.get("arguments")) or "",
        )
    custom = raw.get("custom")
    if isinstance(custom, dict):
        return ToolCall(
            id=call_id,
            name=str_or_none(custom.get("name")) or "",
            arguments=str_or_none(custom.get("input")) or "",
        )
    return None


# --------------------------------------------------------------------------- complete response


def parse_response(body: bytes) -> ResponseFacts:
    """Summarise a complete (non-streaming) chat completion or error body. Never raises."""
    facts = ResponseFacts()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return facts
    if not isinstance(obj, dict):
        return facts
    if obj.get("error") is not None:
        facts.error = error_object(obj["error"])
        return facts

    facts.response_id = str_or_none(obj.get("id"))
    facts.model = str_or_none(obj.get("model"))
    facts.usage = _usage(obj.get("usage"))
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return facts
    choice = choices[0]
    facts.stop_reason = str_or_none(choice.get("finish_reason"))
    message = choice.get("message")
    if not isinstance(message, dict):
        return facts
    facts.text = str_or_none(message.get("content")) or ""
    reasoning = _reasoning(message)
    if reasoning is not None:
        facts.thinking.append(reasoning)
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for raw in tool_calls:
            call = _tool_call(raw)
            if call is not None:
                facts.tool_calls.append(call)
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        facts.tool_calls.append(
            ToolCall(
                id="",
                name=str_or_none(legacy.get("name")) or "",
                arguments=str_or_none(legacy.get("arguments")) or "",
            )
        )
    return facts


# --------------------------------------------------------------------------- stream


class _Call:
    __slots__ = ("id", "name", "parts")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.parts: list[str] = []


class StreamAccumulator:
    """Folds `chat.completion.chunk` events into `ResponseFacts`.

    `saw_output` turns True on the first chunk carrying model output (non-empty content, reasoning,
    or a tool-call name/arguments fragment); `first_token` is True only right after the `feed` call
    that flipped it.
    """

    __slots__ = (
        "_by_index",
        "_calls",
        "_error",
        "_id",
        "_model",
        "_reasoning",
        "_stop",
        "_text",
        "_usage",
        "first_token",
        "saw_output",
    )

    def __init__(self) -> None:
        self.saw_output = False
        self.first_token = False
        self._id: str | None = None
        self._model: str | None = None
        self._stop: str | None = None
        self._usage: Usage | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[_Call] = []
        self._by_index: dict[int, _Call] = {}
        self._error: dict[str, Any] | None = None

    def feed(self, event: SSEEvent) -> None:
        self.first_token = False
        data = event.data
        if data == b"[DONE]":
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        if obj.get("error") is not None:
            self._error = error_object(obj["error"])
            return
        if self._id is None:
            self._id = str_or_none(obj.get("id"))
        if self._model is None:
            self._model = str_or_none(obj.get("model"))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage = _usage(usage)
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                self._stop = finish
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._on_delta(delta)

    def _output(self) -> None:
        if not self.saw_output:
            self.saw_output = True
            self.first_token = True

    def _on_delta(self, delta: dict[str, Any]) -> None:
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._text.append(content)
            self._output()
        reasoning = _reasoning(delta)
        if reasoning is not None:
            self._reasoning.append(reasoning)
            self._output()
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for position, raw in enumerate(tool_calls):
                if isinstance(raw, dict):
                    self._on_tool_delta(position, raw)
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            self._on_tool_delta(-1, {"index": -1, "function": legacy})

    def _on_tool_delta(self, position: int, raw: dict[str, Any]) -> None:
        index = raw.get("index")
        if type(index) is not int:
            index = position
        call_id = raw.get("id")
        call = self._by_index.get(index)
        if call is None or (isinstance(call_id, str) and call_id and call.id and call_id != call.id):
            call = self._by_index[index] = _Call()
            self._calls.append(call)
        if isinstance(call_id, str) and call_id:
            call.id = call_id
        function = raw.get("function")
        if not isinstance(function, dict):
            return
        name = function.get("name")
        if isinstance(name, str) and name:
            # Assigned, not appended: some compatible servers repeat the full name on every delta.
            call.name = name
            self._output()
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.parts.append(arguments)
            self._output()

    def result(self) -> ResponseFacts:
        """The facts so far; callable at any time, including after an abrupt end of stream."""
        return ResponseFacts(
            response_id=self._id,
            model=self._model,
            stop_reason=self._stop,
            usage=Usage(**self._usage.as_dict()) if self._usage is not None else Usage(),
            tool_calls=[ToolCall(id=c.id, name=c.name, arguments="".join(c.parts)) for c in self._calls],
            thinking=["".join(self._reasoning)] if self._reasoning else [],
            text="".join(self._text),
            error=dict(self._error) if self._error is not None else None,
        )
