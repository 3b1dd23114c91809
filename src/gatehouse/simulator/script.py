"""The simulated model's deterministic "script", independent of any wire format.

Each provider module reduces its request to a `Turn`; `make_plan` decides what the model says (a tool call,
a reply to tool results, or lorem-like text) and how many tokens it costs. The provider modules then only
render the `Plan`, so the streaming and non-streaming renderings of one request cannot disagree.
"""

from __future__ import annotations

import itertools
import random
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gatehouse.simulator.config import SimulatorConfig

_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip "
    "ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla "
    "pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim "
    "id est laborum"
)
_VOCAB = _LOREM.split()

_TOOL_RESULT_EXCERPT_WORDS = 16
_MAX_EXCERPT_WORD_CHARS = 64
_ARGS_CHUNK_CHARS = 24

# A per-process prefix keeps ids unique across simulator restarts while a counter keeps them cheap.
_ID_PREFIX = secrets.token_hex(6)
_id_counter = itertools.count(1)

# An absolute path starts a word (or follows a quote, bracket or `=`); `http://x/y` does not qualify.
_ABS_PATH = re.compile(r"(?:^|(?<=[\s\"'`(=<\[]))(/[^\s\"'`)<>\],;]+)")


def new_id(prefix: str) -> str:
    return f"{prefix}{_ID_PREFIX}{next(_id_counter):012x}"


def tokens_for_bytes(size: int) -> int:
    """The simulator's tokenizer: four bytes of JSON per token, never zero."""
    return max(1, size // 4)


def json_size(*values: object) -> int:
    """Bytes of the values as compact JSON.

    Input tokens are counted on the prompt-bearing fields rather than the raw body so that `stream`,
    `stream_options` and whitespace do not change the count: the same prompt costs the same whether it
    is streamed, sent non-streaming or passed to count_tokens.
    """
    return sum(len(orjson.dumps(v)) for v in values if v is not None)


class Lorem:
    """A fixed pseudo-random word sequence; responses are slices of it, so generating text is a slice."""

    __slots__ = ("_size", "_words")

    def __init__(self, seed: int, size: int = 1024) -> None:
        rng = random.Random(seed)
        self._words = [rng.choice(_VOCAB) for _ in range(size)]
        self._size = size

    def take(self, count: int, offset: int) -> list[str]:
        start = offset % self._size
        if start + count <= self._size:
            return self._words[start : start + count]
        out: list[str] = []
        while len(out) < count:
            out.extend(self._words[start : start + count - len(out)])
            start = 0
        return out


@dataclass(slots=True)
class ToolSpec:
    name: str
    schema: Mapping[str, Any] | None


@dataclass(slots=True)
class Turn:
    """What the script needs to know about a request, whatever its wire format."""

    prompt_tokens: int
    user_text: str | None  # the last message, when it is a plain user text turn
    tool_result: str | None  # flattened tool results, when the last message carries them
    tools: list[ToolSpec] = field(default_factory=list)
    max_output: int | None = None
    thinking_budget: int | None = None  # None: the request did not ask for thinking / reasoning
    allow_tools: bool = True  # False when tool_choice is "none"


@dataclass(slots=True)
class ToolCallPlan:
    name: str
    arguments: str  # JSON text, exactly what is streamed and returned
    tokens: int


@dataclass(slots=True)
class Plan:
    thinking: list[str]  # words of the thinking block / reasoning summary
    text: list[str]  # words of the visible answer
    tool: ToolCallPlan | None
    truncated: bool  # the answer was cut by the request's output-token cap

    @property
    def reasoning_tokens(self) -> int:
        return len(self.thinking)

    @property
    def output_tokens(self) -> int:
        tool_tokens = self.tool.tokens if self.tool is not None else 0
        # Real APIs never report zero output tokens, even for an empty answer.
        return max(1, len(self.thinking) + len(self.text) + tool_tokens)


def make_plan(turn: Turn, lorem: Lorem, config: SimulatorConfig) -> Plan:
    offset = turn.prompt_tokens * 7  # varies the text with the prompt, identically for stream/non-stream
    remaining = turn.max_output
    thinking: list[str] = []
    if turn.thinking_budget is not None:
        count = min(config.thinking_words, max(turn.thinking_budget, 0))
        if remaining is not None:
            count = min(count, max(remaining - 1, 0))  # leave room for at least one answer token
            remaining -= count
        thinking = lorem.take(count, offset + 101)  # a different slice than the answer's

    if turn.allow_tools and turn.user_text is not None and turn.tools:
        spec = pick_tool(turn.user_text, turn.tools)
        if spec is not None:
            arguments = orjson.dumps(synthesize_arguments(spec.schema, turn.user_text)).decode()
            call = ToolCallPlan(spec.name, arguments, tokens_for_bytes(len(arguments)))
            return Plan(thinking, [], call, truncated=False)

    if turn.tool_result is not None:
        words = tool_reply_words(turn.tool_result)
    else:
        words = lorem.take(config.output_words, offset)
    if remaining is not None and len(words) > remaining:
        return Plan(thinking, words[: max(remaining, 0)], None, truncated=True)
    return Plan(thinking, words, None, truncated=False)


def pick_tool(text: str, tools: Sequence[ToolSpec]) -> ToolSpec | None:
    """The offered tool the prompt names; the longest name wins so `read_file` beats `read`."""
    lowered = text.lower()
    best: ToolSpec | None = None
    for spec in tools:
        if spec.name and spec.name.lower() in lowered and (best is None or len(spec.name) > len(best.name)):
            best = spec
    return best


def tool_reply_words(result: str) -> list[str]:
    excerpt = [w[:_MAX_EXCERPT_WORD_CHARS] for w in result.split()[:_TOOL_RESULT_EXCERPT_WORDS]]
    return ["Tool", "result", "received:", *(excerpt or ["(empty)"])]


def synthesize_arguments(schema: Mapping[str, Any] | None, text: str) -> dict[str, Any]:
    """Arguments for the `required` properties of a JSON schema, filled from the prompt where possible."""
    if not isinstance(schema, Mapping):
        return {}
    props = schema.get("properties")
    required = schema.get("required")
    if not isinstance(required, list):
        return {}
    out: dict[str, Any] = {}
    for name in required:
        if not isinstance(name, str):
            continue
        prop = props.get(name) if isinstance(props, Mapping) else None
        out[name] = _value_for(name, prop if isinstance(prop, Mapping) else {}, text)
    return out


def _value_for(name: str, prop: Mapping[str, Any], text: str) -> Any:
    if "const" in prop:
        return prop["const"]
    explicit = _key_value(name, text)
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        return explicit if explicit in enum else enum[0]
    kind = _schema_type(prop)
    if kind == "string":
        if explicit is not None:
            return explicit
        lowered = name.lower()
        if "path" in lowered or "file" in lowered:
            match = _ABS_PATH.search(text)
            if match:
                return match.group(1).rstrip(".:")
        return "example"
    if kind == "integer":
        try:
            return int(explicit) if explicit is not None else 1
        except ValueError:
            return 1
    if kind == "number":
        try:
            return float(explicit) if explicit is not None else 1
        except ValueError:
            return 1
    if kind == "boolean":
        if explicit is not None:
            return explicit.lower() not in ("false", "0", "no", "off")
        return True
    if kind == "array":
        return [explicit] if explicit is not None else []
    if kind == "object":
        return synthesize_arguments(prop, text)
    if kind == "null":
        return None
    return explicit if explicit is not None else "example"


def _schema_type(prop: Mapping[str, Any]) -> str:
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    for key in ("anyOf", "oneOf"):
        branches = prop.get(key)
        if isinstance(branches, list) and branches and isinstance(branches[0], Mapping):
            return _schema_type(branches[0])
    return "object" if "properties" in prop else "string"


def _key_value(name: str, text: str) -> str | None:
    """`name=value` in the prompt (value optionally quoted)."""
    match = re.search(rf"(?<![\w.-]){re.escape(name)}=(?:\"([^\"]*)\"|'([^']*)'|([^\s,;]+))", text)
    if match is None:
        return None
    if match.group(3) is not None:
        return match.group(3).rstrip(".)]}")
    return match.group(1) if match.group(1) is not None else match.group(2)


def chunk_words(words: Sequence[str], per_chunk: int) -> list[str]:
    """Stream deltas whose concatenation is exactly `" ".join(words)`."""
    out: list[str] = []
    for i in range(0, len(words), per_chunk):
        piece = " ".join(words[i : i + per_chunk])
        out.append(piece if i == 0 else " " + piece)
    return out


def chunk_arguments(arguments: str) -> list[str]:
    return [arguments[i : i + _ARGS_CHUNK_CHARS] for i in range(0, len(arguments), _ARGS_CHUNK_CHARS)]


def flatten_text(content: object) -> str:
    """Text of a message/tool-result content that is a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping):
                value = part.get("text")
                if isinstance(value, str):
                    parts.append(value)
                elif "content" in part:
                    parts.append(flatten_text(part["content"]))
        return "\n".join(parts)
    return ""
