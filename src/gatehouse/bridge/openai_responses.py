"""OpenAI Responses API (`POST /v1/responses`) wire format, sans-IO.

Request, the parts the Bridge reads:

* `model` (string), `stream` (bool, optional), `max_output_tokens` (integer or null).
* `input`: a string (one user message) or an array of items. Items the Bridge looks at:
  - messages: `{"type": "message", "role", "content"}`, or the "easy" form without `type`;
    `content` is a string or an array of parts (`input_text` with `text`, `input_image`, `input_file`).
  - tool calls echoed back from earlier turns: `function_call` (`call_id`, `name`, `arguments`),
    `custom_tool_call` (`call_id`, `name`, `input`), `local_shell_call`, `shell_call`,
    `apply_patch_call`, `computer_call`;
  - their results: `function_call_output` / `custom_tool_call_output` (`call_id`, `output` as a string
    or an array of `input_text` / `input_image` / `input_file` parts), `local_shell_call_output`,
    `shell_call_output` (`output` is `[{"stdout", "stderr", "outcome"}]`), `apply_patch_call_output`
    (`status` "completed" | "failed"), `computer_call_output` (a screenshot);
  - `reasoning` items (opaque `encrypted_content` and/or summaries) that stateless clients replay.
  The "last user prompt" is the text of the last user message with prompt text. Codex sends its
  `<environment_context>` (and AGENTS.md instructions) as user messages just before the typed
  prompt; text opening with such a context marker does not count.
  The tool results of "this" request are the trailing run of result items at the end of `input`
  (Codex appends all of a turn's calls, then all their outputs; checked with Codex 0.169 making two
  parallel calls). A client that interleaved call/output pairs would only have its last result counted.
* `tools`: `function` and `custom` tools have a `name`; `namespace` tools group named tools (their
  members are listed); built-in tools (`local_shell`, `shell`, `apply_patch`, `web_search`, ...) have
  none and are listed by `type`; `mcp` tools as `mcp:<server_label>`.

Response: a `response` object with `status` (`completed`, `incomplete`, `failed`, `in_progress`,
...), `incomplete_details.reason` (`max_output_tokens`, `content_filter`, ...), `error`, `usage`
and `output` items: `message` (parts `output_text` / `refusal`), `reasoning` (`summary[].text`; raw
`content[].text` from some models), and the tool-call items above. `stop_reason` records `status`,
except that an incomplete response records its `incomplete_details.reason`. Client-executed tool
calls become `ToolCall`s: `function_call` and `custom_tool_call` under their own name, the built-in
ones under the tool type (`local_shell`, `shell`, `apply_patch`, `computer`) with their
`action`/`operation` object serialised as the arguments. Server-side tools (web search, MCP, file
search, code interpreter) are not client tool calls and are not recorded as such.

Streaming: every event has `event: <type>` and a JSON `data` whose `type` repeats it, plus a
`sequence_number`. `response.created` → `response.output_item.added` → deltas
(`response.output_text.delta`, `response.reasoning_summary_text.delta`,
`response.reasoning_text.delta`, `response.function_call_arguments.delta`,
`response.custom_tool_call_input.delta`, keyed by `item_id`) → `response.output_item.done` (the
complete item) → one of `response.completed` / `response.incomplete` / `response.failed` carrying
the whole response with usage. An in-band `error` event is flat (`code`, `message`, `param`), not
nested like error bodies. When the terminal response object lists output items it is authoritative;
some backends send it with an empty `output`, in which case the streamed items are used.

Usage semantics, recorded as the provider reports them: `input_tokens` INCLUDES cached tokens
(`cache_read_tokens` = `input_tokens_details.cached_tokens` is a subset of it, unlike Anthropic);
`reasoning_tokens` = `output_tokens_details.reasoning_tokens`, a subset of `output_tokens`;
`cache_write_tokens` = `input_tokens_details.cache_write_tokens` where reported.
"""

from __future__ import annotations

from typing import Any

import orjson

from gatehouse.bridge.facts import InvalidRequest, RequestFacts, ResponseFacts, ToolCall, ToolResult
from gatehouse.bridge.sse import SSEEvent
from gatehouse.bridge.wire import (
    error_object,
    is_prompt,
    optional_int,
    read_request,
    str_or_none,
    usage_reader,
)

__all__ = ["StreamAccumulator", "parse_request", "parse_response"]

_RESULT_ITEMS = frozenset(
    {
        "function_call_output",
        "custom_tool_call_output",
        "local_shell_call_output",
        "shell_call_output",
        "apply_patch_call_output",
        "computer_call_output",
    }
)
# Built-in, client-executed tool calls: item type → the name the call is recorded under, and the
# field holding what the model asked for.
_BUILTIN_CALLS = {
    "local_shell_call": ("local_shell", "action"),
    "shell_call": ("shell", "action"),
    "apply_patch_call": ("apply_patch", "operation"),
    "computer_call": ("computer", "action"),
}
_CALL_ITEMS = frozenset({"function_call", "custom_tool_call", *_BUILTIN_CALLS})
_IMAGE_PARTS = frozenset({"input_image", "computer_screenshot"})


def _type(obj: dict[str, Any]) -> str:
    # `type` comes from the client or upstream; anything but a string (even unhashable) means "unknown".
    kind = obj.get("type")
    return kind if isinstance(kind, str) else ""


# --------------------------------------------------------------------------- request


def parse_request(body: bytes) -> RequestFacts:
    """Validate and summarise a Responses API request body; raise `InvalidRequest` if it is unusable."""
    obj, model, stream = read_request(body)
    max_tokens = optional_int(obj, "max_output_tokens")
    items = obj.get("input")
    if isinstance(items, str):
        return RequestFacts(
            model=model,
            stream=stream,
            max_tokens=max_tokens,
            last_user_prompt=items if is_prompt(items) else None,
            tools_offered=_tools_offered(obj.get("tools")),
        )
    if not isinstance(items, list):
        raise InvalidRequest("`input` is required and must be a string or an array of items")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(f"`input[{i}]` must be an object")

    return RequestFacts(
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        last_user_prompt=_last_user_prompt(items),
        tool_results=_tool_results(items),
        tools_offered=_tools_offered(obj.get("tools")),
    )


def _last_user_prompt(items: list[dict[str, Any]]) -> str | None:
    for item in reversed(items):
        if item.get("role") != "user" or item.get("type", "message") != "message":
            continue
        content = item.get("content")
        if isinstance(content, str):
            if is_prompt(content):
                return content
            continue
        if isinstance(content, list):
            texts = [
                p["text"]
                for p in content
                if isinstance(p, dict)
                and p.get("type") in ("input_text", "text")
                and is_prompt(p.get("text"))
            ]
            if texts:
                return "\n".join(texts)
    return None


def _tool_results(items: list[dict[str, Any]]) -> list[ToolResult]:
    start = len(items)
    while start > 0 and _type(items[start - 1]) in _RESULT_ITEMS:
        start -= 1
    results: list[ToolResult] = []
    for item in items[start:]:
        text = _flatten(item.get("output"))
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            call_id = item.get("id")  # local_shell_call_output is keyed by `id` alone
        results.append(
            ToolResult(
                tool_call_id=call_id if isinstance(call_id, str) else "",
                is_error=item.get("status") == "failed",
                size=len(text.encode()),
                content=text,
            )
        )
    return results


def _flatten(output: Any) -> str:
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, dict):
        output = [output]
    if isinstance(output, list):
        parts: list[str] = []
        for part in output:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                kind = _type(part)
                if kind in ("input_text", "output_text", "text"):
                    text = part.get("text")
                    if isinstance(text, str):
                        parts.append(text)
                elif kind in _IMAGE_PARTS:
                    parts.append("[image]")
                elif kind == "input_file":
                    parts.append("[file]")
                elif "stdout" in part or "stderr" in part:  # shell_call_output content
                    parts.extend(
                        s for s in (part.get("stdout"), part.get("stderr")) if isinstance(s, str) and s
                    )
                elif kind:
                    parts.append(f"[{kind}]")
        return "\n".join(parts)
    return orjson.dumps(output).decode()


def _tools_offered(tools: Any) -> list[str]:
    if not isinstance(tools, list):
        return []
    names: list[str] = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        members = tool.get("tools")
        if kind == "namespace" and isinstance(members, list):
            names.extend(_tools_offered(members))
        elif isinstance(tool.get("name"), str):
            names.append(tool["name"])
        elif kind == "mcp" and isinstance(tool.get("server_label"), str):
            names.append(f"mcp:{tool['server_label']}")
        elif isinstance(kind, str):
            names.append(kind)
    return names


# --------------------------------------------------------------------------- helpers


_usage = usage_reader("input", "output")


def _stop_reason(response: dict[str, Any]) -> str | None:
    status = str_or_none(response.get("status"))
    if status == "incomplete":
        details = response.get("incomplete_details")
        if isinstance(details, dict) and isinstance(details.get("reason"), str):
            return str(details["reason"])
    return status


def _event_error(obj: dict[str, Any]) -> dict[str, Any]:
    nested = obj.get("error")
    if isinstance(nested, dict):
        return dict(nested)
    # The Responses stream's own `error` event is flat: the event envelope holds code/message/param.
    return {k: v for k, v in obj.items() if k not in ("type", "sequence_number")}


def _message_text(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(
        p["text"]
        for p in content
        if isinstance(p, dict) and p.get("type") == "output_text" and isinstance(p.get("text"), str)
    )


def _reasoning_texts(item: dict[str, Any]) -> list[str]:
    for key in ("summary", "content"):
        parts = item.get(key)
        if isinstance(parts, list):
            texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
            if texts:
                return texts
    return []


def _tool_call(item: dict[str, Any]) -> ToolCall | None:
    kind = item.get("type")
    call_id = str_or_none(item.get("call_id")) or str_or_none(item.get("id")) or ""
    if kind == "function_call":
        return ToolCall(
            id=call_id,
            name=str_or_none(item.get("name")) or "",
            arguments=str_or_none(item.get("arguments")) or "",
        )
    if kind == "custom_tool_call":
        return ToolCall(
            id=call_id,
            name=str_or_none(item.get("name")) or "",
            arguments=str_or_none(item.get("input")) or "",
        )
    builtin = _BUILTIN_CALLS.get(kind) if isinstance(kind, str) else None
    if builtin is not None:
        name, field = builtin
        payload = item.get(field)
        if payload is None and kind == "computer_call":
            payload = item.get("actions")
        return ToolCall(
            id=call_id, name=name, arguments=orjson.dumps(payload).decode() if payload is not None else ""
        )
    return None


def _output_into(facts: ResponseFacts, output: list[Any]) -> None:
    texts: list[str] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            text = _message_text(item)
            if text:
                texts.append(text)
        elif kind == "reasoning":
            facts.thinking.extend(_reasoning_texts(item))
        else:
            call = _tool_call(item)
            if call is not None:
                facts.tool_calls.append(call)
    facts.text = "\n\n".join(texts)


def _response_facts(response: dict[str, Any]) -> ResponseFacts:
    facts = ResponseFacts(
        response_id=str_or_none(response.get("id")),
        model=str_or_none(response.get("model")),
        stop_reason=_stop_reason(response),
        usage=_usage(response.get("usage")),
    )
    error = response.get("error")
    if isinstance(error, dict):
        facts.error = dict(error)
    output = response.get("output")
    if isinstance(output, list):
        _output_into(facts, output)
    return facts


# --------------------------------------------------------------------------- complete response


def parse_response(body: bytes) -> ResponseFacts:
    """Summarise a complete (non-streaming) `response` object or error body. Never raises."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ResponseFacts()
    if not isinstance(obj, dict):
        return ResponseFacts()
    if obj.get("object") != "response" and "output" not in obj and obj.get("error") is not None:
        return ResponseFacts(error=error_object(obj["error"]))
    return _response_facts(obj)


# --------------------------------------------------------------------------- stream


class _Item:
    __slots__ = ("done", "kind", "parts", "raw", "sections")

    def __init__(self, kind: str, raw: dict[str, Any]) -> None:
        self.kind = kind
        self.raw = raw  # the item as last announced (added, then replaced by the complete one at done)
        self.done = False
        self.parts: list[str] = []  # message text, or tool-call arguments/input
        # reasoning: ("summary" | "content", index) → fragments
        self.sections: dict[tuple[str, int], list[str]] = {}


class StreamAccumulator:
    """Folds Responses API SSE events into `ResponseFacts`.

    `saw_output` turns True on the first event carrying model output (a non-empty text, refusal,
    reasoning or tool-input delta, a client tool call announced, or, from servers that send no deltas,
    a completed item or final response that has content); `first_token` is True only right after
    the `feed` call that flipped it.
    """

    __slots__ = (
        "_by_index",
        "_error",
        "_final",
        "_id",
        "_items",
        "_model",
        "first_token",
        "saw_output",
    )

    def __init__(self) -> None:
        self.saw_output = False
        self.first_token = False
        self._id: str | None = None
        self._model: str | None = None
        self._final: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._items: dict[str, _Item] = {}  # insertion order is output order
        self._by_index: dict[int, str] = {}

    def feed(self, event: SSEEvent) -> None:
        self.first_token = False
        try:
            obj = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") or event.event
        if not isinstance(kind, str):
            return
        if kind.endswith(".delta"):
            self._on_delta(kind, obj)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            self._on_item(obj, done=kind.endswith("done"))
        elif kind in ("response.function_call_arguments.done", "response.custom_tool_call_input.done"):
            item = self._item_for(obj)
            full = obj.get("arguments" if kind.startswith("response.function") else "input")
            if item is not None and isinstance(full, str) and not item.done:
                item.parts = [full]
        elif kind == "response.reasoning_summary_text.done":
            item = self._item_for(obj)
            text, index = obj.get("text"), obj.get("summary_index")
            if item is not None and isinstance(text, str) and type(index) is int:
                item.sections[("summary", index)] = [text]
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = obj.get("response")
            if isinstance(response, dict):
                self._final = response
                self._remember(response)
                output = response.get("output")
                if isinstance(output, list) and output:
                    self._output()
        elif kind in ("response.created", "response.in_progress", "response.queued"):
            response = obj.get("response")
            if isinstance(response, dict):
                self._remember(response)
        elif kind == "error":
            self._error = _event_error(obj)

    def _output(self) -> None:
        if not self.saw_output:
            self.saw_output = True
            self.first_token = True

    def _remember(self, response: dict[str, Any]) -> None:
        self._id = str_or_none(response.get("id")) or self._id
        self._model = str_or_none(response.get("model")) or self._model

    def _item_for(self, obj: dict[str, Any]) -> _Item | None:
        item_id = obj.get("item_id")
        if isinstance(item_id, str) and item_id in self._items:
            return self._items[item_id]
        index = obj.get("output_index")
        if type(index) is int and index in self._by_index:
            return self._items[self._by_index[index]]
        return None

    def _on_item(self, obj: dict[str, Any], *, done: bool) -> None:
        raw = obj.get("item")
        if not isinstance(raw, dict):
            return
        kind = raw.get("type")
        if not isinstance(kind, str):
            return
        index = obj.get("output_index")
        key = str_or_none(raw.get("id")) or (f"#{index}" if type(index) is int else f"#{len(self._items)}")
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = _Item(kind, raw)
            if type(index) is int:
                self._by_index[index] = key
        item.raw = raw
        if done:
            item.done = True
            if kind in ("message", "reasoning"):
                if _message_text(raw) or _reasoning_texts(raw):
                    self._output()
            elif kind in _CALL_ITEMS:
                self._output()
        elif kind in _CALL_ITEMS:
            self._output()  # the model has committed to a tool call

    def _on_delta(self, kind: str, obj: dict[str, Any]) -> None:
        delta = obj.get("delta")
        if not isinstance(delta, str) or not delta:
            return
        if kind == "response.refusal.delta":
            self._output()
            return
        item = self._item_for(obj)
        if item is None:
            # No `output_item.added` seen (truncated start or a sloppy server): make one up, keyed so
            # that later events for the same item find it.
            item_kind = {
                "response.output_text.delta": "message",
                "response.function_call_arguments.delta": "function_call",
                "response.custom_tool_call_input.delta": "custom_tool_call",
                "response.reasoning_summary_text.delta": "reasoning",
                "response.reasoning_text.delta": "reasoning",
            }.get(kind)
            if item_kind is None:
                return
            item_id = str_or_none(obj.get("item_id"))
            index = obj.get("output_index")
            key = item_id or (f"#{index}" if type(index) is int else f"#{len(self._items)}")
            item = self._items[key] = _Item(item_kind, {"type": item_kind, "id": item_id})
            if type(index) is int:
                self._by_index[index] = key
        if kind in (
            "response.output_text.delta",
            "response.function_call_arguments.delta",
            "response.custom_tool_call_input.delta",
        ):
            item.parts.append(delta)
        elif kind == "response.reasoning_summary_text.delta":
            index = obj.get("summary_index")
            item.sections.setdefault(("summary", index if type(index) is int else 0), []).append(delta)
        elif kind == "response.reasoning_text.delta":
            index = obj.get("content_index")
            item.sections.setdefault(("content", index if type(index) is int else 0), []).append(delta)
        else:
            return  # audio, code-interpreter, MCP argument deltas: not recorded
        self._output()

    def _streamed_output(self) -> list[dict[str, Any]]:
        """The items as complete as the stream made them, in the shape of `response.output`."""
        output: list[dict[str, Any]] = []
        for item in self._items.values():
            if item.done:
                output.append(item.raw)
                continue
            raw = dict(item.raw)
            if item.kind == "message":
                raw["content"] = [{"type": "output_text", "text": "".join(item.parts)}]
            elif item.kind == "function_call":
                if item.parts:
                    raw["arguments"] = "".join(item.parts)
            elif item.kind == "custom_tool_call":
                if item.parts:
                    raw["input"] = "".join(item.parts)
            elif item.kind == "reasoning":
                summary = [k for k in item.sections if k[0] == "summary"]
                content = [k for k in item.sections if k[0] == "content"]
                raw["summary"] = [
                    {"type": "summary_text", "text": "".join(item.sections[k])} for k in sorted(summary)
                ]
                raw["content"] = [
                    {"type": "reasoning_text", "text": "".join(item.sections[k])} for k in sorted(content)
                ]
            output.append(raw)
        return output

    def result(self) -> ResponseFacts:
        """The facts so far; callable at any time, including after an abrupt end of stream."""
        final = self._final
        if final is not None:
            facts = _response_facts(final)
            output = final.get("output")
            if not (isinstance(output, list) and output):
                _output_into(facts, self._streamed_output())
        else:
            facts = ResponseFacts()
            _output_into(facts, self._streamed_output())
        facts.response_id = facts.response_id or self._id
        facts.model = facts.model or self._model
        if self._error is not None:
            facts.error = dict(self._error)
        return facts
