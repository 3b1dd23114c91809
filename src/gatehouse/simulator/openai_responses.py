"""OpenAI Responses API: POST /v1/responses, streamed as typed events with sequence numbers."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import orjson

from gatehouse.simulator.openai_chat import cached_tokens
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
from gatehouse.simulator.wire import SEQ, SLOT, Event, FrameTemplate, Generation, sse_event

_TOOL_OUTPUT_TYPES = ("function_call_output", "custom_tool_call_output")
_DEFAULT_TEXT = {"format": {"type": "text"}, "verbosity": "medium"}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _last_turn(items: object) -> tuple[str | None, str | None]:
    """(user text, tool results) of the conversation's last input item(s)."""
    if isinstance(items, str):
        return items, None
    if not isinstance(items, list) or not items:
        return None, None
    last = items[-1]
    if not isinstance(last, dict):
        return None, None
    if last.get("type") in _TOOL_OUTPUT_TYPES:
        results: list[str] = []
        for item in reversed(items):
            if not isinstance(item, dict) or item.get("type") not in _TOOL_OUTPUT_TYPES:
                break
            results.append(flatten_text(item.get("output")))
        return None, " | ".join(reversed(results))
    if last.get("role") == "user" and last.get("type", "message") == "message":
        return flatten_text(last.get("content")), None
    return None, None


class ResponsesGeneration(Generation):
    __slots__ = (
        "cached",
        "call_id",
        "created",
        "data",
        "encrypted",
        "fc_id",
        "id",
        "msg_id",
        "plan",
        "prompt_tokens",
        "reasoning",
        "rs_id",
        "show_summary",
        "wpc",
    )

    def __init__(self, data: dict[str, Any], raw: bytes, state: SimulatorState) -> None:
        self.data = data
        prompt_bytes = sum(
            len(orjson.dumps(data[key]))
            for key in ("instructions", "input", "tools")
            if data.get(key) is not None
        )
        self.prompt_tokens = tokens_for_bytes(prompt_bytes)
        self.cached = cached_tokens(data, prompt_bytes, self.prompt_tokens)
        reasoning = data.get("reasoning")
        self.reasoning: dict[str, Any] | None = (
            reasoning if isinstance(reasoning, dict) and reasoning.get("effort") != "none" else None
        )
        self.show_summary = self.reasoning is not None and bool(self.reasoning.get("summary"))
        include = data.get("include")
        self.encrypted = isinstance(include, list) and "reasoning.encrypted_content" in include
        user_text, tool_result = _last_turn(data.get("input"))
        tools = [
            ToolSpec(t["name"], t.get("parameters"))
            for t in data.get("tools") or ()
            if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
        ]
        config = state.config
        turn = Turn(
            prompt_tokens=self.prompt_tokens,
            user_text=user_text,
            tool_result=tool_result,
            tools=tools,
            max_output=_int_or_none(data.get("max_output_tokens")),
            thinking_budget=config.thinking_words if self.reasoning is not None else None,
            allow_tools=data.get("tool_choice") != "none",
        )
        self.plan: Plan = make_plan(turn, state.lorem, config)
        self.id = new_id("resp_")
        self.rs_id = new_id("rs_")
        self.msg_id = new_id("msg_")
        self.fc_id = new_id("fc_")
        self.call_id = new_id("call_")
        self.created = int(time.time())
        self.wpc = config.words_per_chunk

    # -- items -------------------------------------------------------------------------------------

    def _reasoning_item(self, done: bool) -> dict[str, Any]:
        summary_text = " ".join(self.plan.thinking)
        item: dict[str, Any] = {"id": self.rs_id, "type": "reasoning", "summary": []}
        if done and self.show_summary:
            item["summary"] = [{"type": "summary_text", "text": summary_text}]
        if self.encrypted:
            digest = hashlib.sha256(summary_text.encode()).digest()
            item["encrypted_content"] = "gAAAAA" + base64.urlsafe_b64encode(digest * 3).decode()
        return item

    def _text_part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def _message_item(self, done: bool) -> dict[str, Any]:
        status = ("incomplete" if self.plan.truncated else "completed") if done else "in_progress"
        content = [self._text_part(" ".join(self.plan.text))] if done else []
        return {
            "id": self.msg_id,
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        }

    def _call_item(self, done: bool) -> dict[str, Any]:
        tool = self.plan.tool
        assert tool is not None
        return {
            "id": self.fc_id,
            "type": "function_call",
            "status": "completed" if done else "in_progress",
            "arguments": tool.arguments if done else "",
            "call_id": self.call_id,
            "name": tool.name,
        }

    def _output(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if self.reasoning is not None:
            items.append(self._reasoning_item(True))
        items.append(self._call_item(True) if self.plan.tool is not None else self._message_item(True))
        return items

    # -- the response object -----------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        output = self.plan.output_tokens
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached, "cache_write_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": self.plan.reasoning_tokens},
            "total_tokens": self.prompt_tokens + output,
        }

    @property
    def final_status(self) -> str:
        return "incomplete" if self.plan.truncated else "completed"

    def _response(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        data = self.data
        reasoning = self.reasoning
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": data.get("instructions"),
            "max_output_tokens": data.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": data["model"],
            "output": output,
            "parallel_tool_calls": data.get("parallel_tool_calls", True),
            "previous_response_id": data.get("previous_response_id"),
            "prompt_cache_key": data.get("prompt_cache_key"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
            if reasoning is not None
            else {"effort": None, "summary": None},
            "safety_identifier": None,
            "service_tier": "default",
            "store": data.get("store", True),
            "temperature": data.get("temperature", 1.0),
            "text": data.get("text") or _DEFAULT_TEXT,
            "tool_choice": data.get("tool_choice", "auto"),
            "tools": data.get("tools") or [],
            "top_logprobs": 0,
            "top_p": data.get("top_p", 1.0),
            "truncation": data.get("truncation", "disabled"),
            "usage": usage,
            "user": None,
            "metadata": data.get("metadata") or {},
        }

    def body(self) -> bytes:
        return orjson.dumps(self._response(self.final_status, self._output(), self.usage()))

    def events(self) -> list[Event]:
        plan = self.plan
        out: list[Event] = []
        seq = 0

        def emit(kind: str, payload: dict[str, Any]) -> None:
            nonlocal seq
            payload["type"] = kind
            payload["sequence_number"] = seq
            seq += 1
            out.append((sse_event(kind, payload), False))

        def emit_deltas(kind: str, payload: dict[str, Any], pieces: list[str]) -> None:
            nonlocal seq
            payload.update(type=kind, delta=SLOT, sequence_number=SEQ)
            frame = FrameTemplate(kind, payload)
            for piece in pieces:
                out.append((frame.fill_seq(piece, seq), True))
                seq += 1

        pending = self._response("in_progress", [], None)
        emit("response.created", {"response": pending})
        emit("response.in_progress", {"response": pending})
        index = 0
        if self.reasoning is not None:
            emit("response.output_item.added", {"output_index": index, "item": self._reasoning_item(False)})
            if self.show_summary:
                where = {"item_id": self.rs_id, "output_index": index, "summary_index": 0}
                emit(
                    "response.reasoning_summary_part.added",
                    {**where, "part": {"type": "summary_text", "text": ""}},
                )
                emit_deltas(
                    "response.reasoning_summary_text.delta", {**where}, chunk_words(plan.thinking, self.wpc)
                )
                text = " ".join(plan.thinking)
                emit("response.reasoning_summary_text.done", {**where, "text": text})
                emit(
                    "response.reasoning_summary_part.done",
                    {**where, "part": {"type": "summary_text", "text": text}},
                )
            emit("response.output_item.done", {"output_index": index, "item": self._reasoning_item(True)})
            index += 1
        if plan.tool is not None:
            emit("response.output_item.added", {"output_index": index, "item": self._call_item(False)})
            where = {"item_id": self.fc_id, "output_index": index}
            emit_deltas(
                "response.function_call_arguments.delta", {**where}, chunk_arguments(plan.tool.arguments)
            )
            emit("response.function_call_arguments.done", {**where, "arguments": plan.tool.arguments})
            emit("response.output_item.done", {"output_index": index, "item": self._call_item(True)})
        else:
            emit("response.output_item.added", {"output_index": index, "item": self._message_item(False)})
            where = {"item_id": self.msg_id, "output_index": index, "content_index": 0}
            emit("response.content_part.added", {**where, "part": self._text_part("")})
            pieces = chunk_words(plan.text, self.wpc)
            emit_deltas("response.output_text.delta", {**where, "logprobs": []}, pieces)
            text = " ".join(plan.text)
            emit("response.output_text.done", {**where, "text": text, "logprobs": []})
            emit("response.content_part.done", {**where, "part": self._text_part(text)})
            emit("response.output_item.done", {"output_index": index, "item": self._message_item(True)})
        status = self.final_status
        emit(f"response.{status}", {"response": self._response(status, self._output(), self.usage())})
        return out

    def error_events(self, index: int) -> list[bytes]:
        message = "The server had an error while processing your request. Sorry about that!"
        error = {
            "type": "error",
            "code": "server_error",
            "message": message,
            "param": None,
            "sequence_number": index,
        }
        failed = self._response("failed", [], None)
        failed["error"] = {"code": "server_error", "message": message}
        return [
            sse_event("error", error),
            sse_event(
                "response.failed",
                {"type": "response.failed", "response": failed, "sequence_number": index + 1},
            ),
        ]
