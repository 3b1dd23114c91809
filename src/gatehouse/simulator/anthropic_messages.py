"""Anthropic Messages API: POST /v1/messages, /v1/messages/count_tokens and the models listing."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from gatehouse.simulator.script import (
    Plan,
    ToolSpec,
    Turn,
    chunk_arguments,
    chunk_words,
    flatten_text,
    make_plan,
    new_id,
    tokens_for_bytes,
)
from gatehouse.simulator.state import SimulatorState
from gatehouse.simulator.wire import SLOT, Event, FrameTemplate, Generation, InvalidRequest, sse_event

_PING = sse_event("ping", {"type": "ping"})
_MESSAGE_STOP = sse_event("message_stop", {"type": "message_stop"})
_CACHE_MARKER = b'"cache_control"'


class _Prompt:
    """Token accounting of a request's prompt (system + tools + messages)."""

    __slots__ = ("cache_creation", "cache_read", "input_tokens", "total")

    def __init__(self, data: dict[str, Any], raw: bytes, state: SimulatorState | None) -> None:
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise InvalidRequest("messages: Field required")
        system_json = orjson.dumps(data["system"]) if data.get("system") is not None else b""
        tools_json = orjson.dumps(data["tools"]) if data.get("tools") is not None else b""
        self.total = tokens_for_bytes(len(system_json) + len(tools_json) + len(orjson.dumps(messages)))
        self.cache_creation = 0
        self.cache_read = 0
        # A byte search keeps prompts without cache_control (the common case) free of any cache work.
        if state is not None and messages and _CACHE_MARKER in raw and self.total > 1:
            first_json = orjson.dumps(messages[0])
            prefix = tokens_for_bytes(len(system_json) + len(tools_json) + len(first_json))
            cached = min(prefix, self.total - 1)
            if state.seen_prefix(hash((data.get("model"), tools_json, system_json, first_json))):
                self.cache_read = cached
            else:
                self.cache_creation = cached
        self.input_tokens = self.total - self.cache_creation - self.cache_read


def count_tokens(data: dict[str, Any]) -> bytes:
    """The count_tokens body; equals input + cache tokens of the same prompt sent to /v1/messages."""
    return orjson.dumps({"input_tokens": _Prompt(data, b"", None).total})


def _turn(data: dict[str, Any], prompt_tokens: int) -> Turn:
    max_tokens = data.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Field required")
    messages: list[Any] = data["messages"]
    user_text: str | None = None
    tool_result: str | None = None
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "user":
        content = last.get("content")
        results = (
            [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
            if isinstance(content, list)
            else []
        )
        if results:
            tool_result = " | ".join(flatten_text(b.get("content")) for b in results)
        else:
            user_text = flatten_text(content)
    tools = [
        ToolSpec(t["name"], t.get("input_schema"))
        for t in data.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("name"), str)
    ]
    choice = data.get("tool_choice")
    thinking = data.get("thinking")
    budget: int | None = None
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        requested = thinking.get("budget_tokens")
        budget = requested if isinstance(requested, int) else max_tokens
    return Turn(
        prompt_tokens=prompt_tokens,
        user_text=user_text,
        tool_result=tool_result,
        tools=tools,
        max_output=max_tokens,
        thinking_budget=budget,
        allow_tools=not (isinstance(choice, dict) and choice.get("type") == "none"),
    )


def _signature(thinking: str) -> str:
    # Opaque like the real one, but derived from the text so identical answers carry identical signatures.
    return base64.b64encode(b"\x12gatehouse-sim\x00" + hashlib.sha256(thinking.encode()).digest()).decode()


class AnthropicMessage(Generation):
    __slots__ = ("id", "model", "plan", "prompt", "tool_id", "words_per_chunk")

    def __init__(self, data: dict[str, Any], raw: bytes, state: SimulatorState) -> None:
        self.prompt = _Prompt(data, raw, state)
        self.model: str = data["model"]
        self.plan: Plan = make_plan(_turn(data, self.prompt.total), state.lorem, state.config)
        self.id = new_id("msg_")
        self.tool_id = new_id("toolu_") if self.plan.tool is not None else ""
        self.words_per_chunk = state.config.words_per_chunk

    @property
    def stop_reason(self) -> str:
        if self.plan.tool is not None:
            return "tool_use"
        return "max_tokens" if self.plan.truncated else "end_turn"

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        prompt = self.prompt
        return {
            "input_tokens": prompt.input_tokens,
            "cache_creation_input_tokens": prompt.cache_creation,
            "cache_read_input_tokens": prompt.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": prompt.cache_creation,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _output_details(self) -> dict[str, int] | None:
        return {"thinking_tokens": self.plan.reasoning_tokens} if self.plan.thinking else None

    def body(self) -> bytes:
        plan = self.plan
        content: list[dict[str, Any]] = []
        if plan.thinking:
            thinking = " ".join(plan.thinking)
            content.append({"type": "thinking", "thinking": thinking, "signature": _signature(thinking)})
        if plan.tool is not None:
            arguments = orjson.Fragment(plan.tool.arguments)
            content.append(
                {"type": "tool_use", "id": self.tool_id, "name": plan.tool.name, "input": arguments}
            )
        else:
            content.append({"type": "text", "text": " ".join(plan.text)})
        usage = self._usage(plan.output_tokens)
        details = self._output_details()
        if details is not None:
            usage["output_tokens_details"] = details
        return orjson.dumps(
            {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": content,
                "stop_reason": self.stop_reason,
                "stop_sequence": None,
                "usage": usage,
            }
        )

    def events(self) -> list[Event]:
        plan = self.plan
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(1),  # like the real API: a placeholder until message_delta
        }
        out: list[Event] = [
            (sse_event("message_start", {"type": "message_start", "message": message}), False)
        ]
        index = 0

        def start(block: dict[str, Any]) -> None:
            payload = {"type": "content_block_start", "index": index, "content_block": block}
            out.append((sse_event("content_block_start", payload), False))
            if index == 0:
                out.append((_PING, False))  # the real API pings right after the first block opens

        def deltas(kind: str, field: str, pieces: list[str]) -> None:
            payload = {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: SLOT}}
            frame = FrameTemplate("content_block_delta", payload)
            out.extend([(frame.fill(piece), True) for piece in pieces])

        def stop() -> None:
            payload = {"type": "content_block_stop", "index": index}
            out.append((sse_event("content_block_stop", payload), False))

        if plan.thinking:
            start({"type": "thinking", "thinking": "", "signature": ""})
            deltas("thinking_delta", "thinking", chunk_words(plan.thinking, self.words_per_chunk))
            signature = {"type": "signature_delta", "signature": _signature(" ".join(plan.thinking))}
            payload = {"type": "content_block_delta", "index": index, "delta": signature}
            out.append((sse_event("content_block_delta", payload), False))
            stop()
            index += 1
        if plan.tool is not None:
            start({"type": "tool_use", "id": self.tool_id, "name": plan.tool.name, "input": {}})
            deltas("input_json_delta", "partial_json", chunk_arguments(plan.tool.arguments))
            stop()
        else:
            start({"type": "text", "text": ""})
            deltas("text_delta", "text", chunk_words(plan.text, self.words_per_chunk))
            stop()

        prompt = self.prompt
        usage: dict[str, Any] = {
            "input_tokens": prompt.input_tokens,
            "cache_creation_input_tokens": prompt.cache_creation,
            "cache_read_input_tokens": prompt.cache_read,
            "output_tokens": plan.output_tokens,
        }
        details = self._output_details()
        if details is not None:
            usage["output_tokens_details"] = details
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": usage,
        }
        out.append((sse_event("message_delta", message_delta), False))
        out.append((_MESSAGE_STOP, False))
        return out

    def error_events(self, index: int) -> list[bytes]:
        payload = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return [sse_event("error", payload)]


def _model_info(model_id: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id.replace("-", " ").title(),
        "created_at": "2025-01-01T00:00:00Z",
        "max_input_tokens": 200_000,
        "max_tokens": 64_000,
    }


def models_list(models: tuple[str, ...]) -> bytes:
    data = [_model_info(m) for m in models]
    return orjson.dumps(
        {
            "data": data,
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        }
    )


def model_info(model_id: str) -> bytes:
    return orjson.dumps(_model_info(model_id))
