"""What the Bridge learns from one LLM call: the facts each wire-format module extracts.

The provider modules (`anthropic`, `openai_chat`, `openai_responses`) are sans-IO: they turn request
bodies, response bodies and streamed SSE events into these plain values; the proxy turns them into
audit events. Nothing here touches a socket or the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ToolCall:
    """A tool the model asked the client to run."""

    id: str
    name: str
    arguments: str  # the JSON text exactly as the model produced it (may be partial if the stream broke)


@dataclass(slots=True)
class ToolResult:
    """A tool result the client sent back to the model."""

    tool_call_id: str
    is_error: bool
    size: int  # bytes of the result content, as UTF-8 text
    content: str  # the result flattened to text; the recorder decides how much of it to keep


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass(slots=True)
class RequestFacts:
    """What a client request says, read from its JSON body."""

    model: str | None
    stream: bool
    max_tokens: int | None
    last_user_prompt: str | None
    tool_results: list[ToolResult] = field(default_factory=list)
    tools_offered: list[str] = field(default_factory=list)  # names of the tools the client declared


@dataclass(slots=True)
class ResponseFacts:
    """What the model answered, read from a complete response body or accumulated from a stream."""

    response_id: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    tool_calls: list[ToolCall] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)  # thinking blocks / reasoning summaries, as text
    text: str = ""  # the assistant's visible text
    error: dict[str, Any] | None = None  # an error the upstream reported in-band (e.g. an SSE `error` event)


class InvalidRequest(ValueError):
    """The client's request body is not what the provider's API accepts; the message says why."""
