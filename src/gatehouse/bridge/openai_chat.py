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

from gatehouse.bridge.facts import (
    InvalidRequest,
    RequestFacts,
    ResponseFacts,
    ToolCall,
    ToolResult,
    Usage,
)
from gatehouse.bridge.sse import SSEEvent

__all__ = ["StreamAccumulator", "parse_request", "parse_response"]


# --------------------------------------------------------------------------- request


def parse_request(body: bytes) -> RequestFacts:
    """Validate and summarise a Chat Completions request body; raise `InvalidRequest` if it is unusable."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRequest("request body must be a JSON object")

    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string")
    stream = obj.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean")
    max_tokens: int | None = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = obj.get(key)
        if value is None:
            continue
        if type(value) is not int:
            raise InvalidRequest(f"`{key}` must be an integer")
        max_tokens = value  # max_completion_tokens comes second, so it wins
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` is required and must be an array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"`messages[{i}]` must be an object")
        if not isinstance(message.get("role"), str):
            raise InvalidRequest(f"`messages[{i}].role` must be a string")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(f"`messages[{i}].content` must be a string, an array of parts or null")

    return RequestFacts(
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        last_user_prompt=_last_user_prompt(messages),
        tool_results=_tool_results(messages),
        tools_offered=_tools_offered(obj.get("tools"), obj.get("functions")),
    )


# Agents inject generated context into user turns as text (Claude Code's `<system-reminder>` blocks,
# Codex's `<environment_context>` / AGENTS.md messages); that is not what the user asked, so it does
# not count as prompt text.
_INJECTED_PREFIXES = (
    "<system-reminder>",
    "<environment_context>",
    "<user_instructions>",
    "# AGENTS.md instructions",
)


def _is_prompt(text: Any) -> bool:
    return isinstance(text, str) and bool(text) and not text.lstrip().startswith(_INJECTED_PREFIXES)


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content if _is_prompt(content) else None
    if not isinstance(content, list):
        return None
    texts = [
        p["text"]
        for p in content
        if isinstance(p, dict) and p.get("type") == "text" and _is_prompt(p.get("text"))
    ]
    return "\n".join(texts) if texts else None


def _last_user_prompt(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message["role"] == "user":
            text = _text_of(message.get("content"))
            if text is not None:
                return text
    return None


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
        text = _flatten(message.get("content"))
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


def _flatten(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind == "text":
                    text = part.get("text")
                    if isinstance(text, str):
                        parts.append(text)
                elif kind == "image_url":
                    parts.append("[image]")
                elif isinstance(kind, str):
                    parts.append(f"[{kind}]")
        return "\n".join(parts)
    return orjson.dumps(content).decode()


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


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _usage(raw: Any) -> Usage:
    usage = Usage()
    if not isinstance(raw, dict):
        return usage
    usage.input_tokens = _int(raw.get("prompt_tokens"))
    usage.output_tokens = _int(raw.get("completion_tokens"))
    prompt_details = raw.get("prompt_tokens_details")
    if isinstance(prompt_details, dict):
        usage.cache_read_tokens = _int(prompt_details.get("cached_tokens"))
        usage.cache_write_tokens = _int(prompt_details.get("cache_write_tokens"))
    completion_details = raw.get("completion_tokens_details")
    if isinstance(completion_details, dict):
        usage.reasoning_tokens = _int(completion_details.get("reasoning_tokens"))
    return usage


def _error(err: Any) -> dict[str, Any]:
    return dict(err) if isinstance(err, dict) else {"message": str(err)}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _reasoning(obj: dict[str, Any]) -> str | None:
    for key in ("reasoning_content", "reasoning"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _tool_call(raw: Any) -> ToolCall | None:
    if not isinstance(raw, dict):
        return None
    call_id = _str(raw.get("id")) or ""
    function = raw.get("function")
    if isinstance(function, dict):
        return ToolCall(
            id=call_id, name=_str(function.get("name")) or "", arguments=_str(function.get("arguments")) or ""
        )
    custom = raw.get("custom")
    if isinstance(custom, dict):
        return ToolCall(
            id=call_id, name=_str(custom.get("name")) or "", arguments=_str(custom.get("input")) or ""
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
        facts.error = _error(obj["error"])
        return facts

    facts.response_id = _str(obj.get("id"))
    facts.model = _str(obj.get("model"))
    facts.usage = _usage(obj.get("usage"))
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return facts
    choice = choices[0]
    facts.stop_reason = _str(choice.get("finish_reason"))
    message = choice.get("message")
    if not isinstance(message, dict):
        return facts
    facts.text = _str(message.get("content")) or ""
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
                id="", name=_str(legacy.get("name")) or "", arguments=_str(legacy.get("arguments")) or ""
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
            self._error = _error(obj["error"])
            return
        if self._id is None:
            self._id = _str(obj.get("id"))
        if self._model is None:
            self._model = _str(obj.get("model"))
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
