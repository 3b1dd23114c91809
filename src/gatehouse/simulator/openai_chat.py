"""OpenAI Chat Completions: POST /v1/chat/completions and the OpenAI models listing."""

from __future__ import annotations

import time
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
from gatehouse.simulator.wire import SLOT, Event, FrameTemplate, Generation, InvalidRequest, sse_data

_DONE = b"data: [DONE]\n\n"
_FINGERPRINT = "fp_gatehouse_sim"
# Above this many prompt bytes OpenAI's automatic prompt caching would kick in (1024 tokens ~ 4 KB).
CACHE_THRESHOLD_BYTES = 4096


def cached_tokens(data: dict[str, Any], prompt_bytes: int, prompt_tokens: int) -> int:
    """OpenAI's cache rule here: half the prompt is a cache hit when prompt_cache_key is set or the prompt
    exceeds 4 KB. Stateless, so streaming and non-streaming calls report the same numbers."""
    if data.get("prompt_cache_key") or prompt_bytes > CACHE_THRESHOLD_BYTES:
        return prompt_tokens // 2
    return 0


def is_reasoning_model(model: str) -> bool:
    return model.startswith("o") or "reason" in model


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _turn(data: dict[str, Any], messages: list[Any], prompt_tokens: int, thinking: int | None) -> Turn:
    user_text: str | None = None
    tool_result: str | None = None
    last = messages[-1] if messages else None
    if isinstance(last, dict):
        role = last.get("role")
        if role == "user":
            user_text = flatten_text(last.get("content"))
        elif role in ("tool", "function"):
            results: list[str] = []
            for message in reversed(messages):
                if not isinstance(message, dict) or message.get("role") not in ("tool", "function"):
                    break
                results.append(flatten_text(message.get("content")))
            tool_result = " | ".join(reversed(results))
    tools: list[ToolSpec] = []
    for tool in data.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            tools.append(ToolSpec(function["name"], function.get("parameters")))
    cap = _int_or_none(data.get("max_completion_tokens"))
    if cap is None:
        cap = _int_or_none(data.get("max_tokens"))
    return Turn(
        prompt_tokens=prompt_tokens,
        user_text=user_text,
        tool_result=tool_result,
        tools=tools,
        max_output=cap,
        thinking_budget=thinking,
        allow_tools=data.get("tool_choice") != "none",
    )


class ChatCompletion(Generation):
    __slots__ = (
        "cached",
        "call_id",
        "created",
        "id",
        "include_usage",
        "model",
        "plan",
        "prompt_tokens",
        "wpc",
    )

    def __init__(self, data: dict[str, Any], raw: bytes, state: SimulatorState) -> None:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("Missing required parameter: 'messages'.", "messages")
        self.model: str = data["model"]
        prompt_bytes = len(orjson.dumps(messages)) + (
            len(orjson.dumps(data["tools"])) if data.get("tools") is not None else 0
        )
        self.prompt_tokens = tokens_for_bytes(prompt_bytes)
        self.cached = cached_tokens(data, prompt_bytes, self.prompt_tokens)
        config = state.config
        # Chat Completions hides reasoning; only its token count shows, for o-series / "reason" models.
        thinking = config.thinking_words if is_reasoning_model(self.model) else None
        self.plan: Plan = make_plan(_turn(data, messages, self.prompt_tokens, thinking), state.lorem, config)
        self.id = new_id("chatcmpl-")
        self.call_id = new_id("call_") if self.plan.tool is not None else ""
        self.created = int(time.time())
        options = data.get("stream_options")
        self.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self.wpc = config.words_per_chunk

    @property
    def finish_reason(self) -> str:
        if self.plan.tool is not None:
            return "tool_calls"
        return "length" if self.plan.truncated else "stop"

    def usage(self) -> dict[str, Any]:
        output = self.plan.output_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": output,
            "total_tokens": self.prompt_tokens + output,
            "prompt_tokens_details": {"cached_tokens": self.cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.plan.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def body(self) -> bytes:
        plan = self.plan
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
        if plan.tool is not None:
            message["tool_calls"] = [
                {
                    "id": self.call_id,
                    "type": "function",
                    "function": {"name": plan.tool.name, "arguments": plan.tool.arguments},
                }
            ]
        else:
            message["content"] = " ".join(plan.text)
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
                ],
                "usage": self.usage(),
                "service_tier": "default",
                "system_fingerprint": _FINGERPRINT,
            }
        )

    def _chunk_payload(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None  # like the real API: null on every chunk but the last
        return chunk

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return sse_data(self._chunk_payload(delta, finish_reason))

    def events(self) -> list[Event]:
        plan = self.plan
        out: list[Event] = []
        if plan.tool is not None:
            first_call = {
                "index": 0,
                "id": self.call_id,
                "type": "function",
                "function": {"name": plan.tool.name, "arguments": ""},
            }
            first = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [first_call]}
            out.append((self._chunk(first), False))
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": SLOT}}]}
            frame = FrameTemplate(None, self._chunk_payload(delta))
            out.extend([(frame.fill(piece), True) for piece in chunk_arguments(plan.tool.arguments)])
        else:
            out.append((self._chunk({"role": "assistant", "content": "", "refusal": None}), False))
            frame = FrameTemplate(None, self._chunk_payload({"content": SLOT}))
            out.extend([(frame.fill(piece), True) for piece in chunk_words(plan.text, self.wpc)])
        out.append((self._chunk({}, self.finish_reason), False))
        if self.include_usage:
            final = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "service_tier": "default",
                "system_fingerprint": _FINGERPRINT,
                "choices": [],
                "usage": self.usage(),
            }
            out.append((sse_data(final), False))
        out.append((_DONE, False))
        return out

    def error_events(self, index: int) -> list[bytes]:
        error = {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        return [sse_data({"error": error})]


def models_list(models: tuple[str, ...]) -> bytes:
    return orjson.dumps({"object": "list", "data": [_model(m) for m in models]})


def model_info(model_id: str) -> bytes:
    return orjson.dumps(_model(model_id))


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1_735_689_600, "owned_by": "gatehouse-simulator"}
