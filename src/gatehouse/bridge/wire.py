"""What the wire-format modules (`anthropic`, `openai_chat`, `openai_responses`) share, sans-IO.

The checks every request body gets before its format-specific ones, the rule for what counts as
prompt text, and the lenient readers for upstream JSON, where a value of the wrong type counts as
absent rather than as an error. What each format accepts is in its own module's docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gatehouse.bridge.facts import InvalidRequest, Usage

# --------------------------------------------------------------------------- request


def read_request(body: bytes) -> tuple[dict[str, Any], str, bool]:
    """The body as a JSON object, its `model` and its `stream` flag; raise `InvalidRequest` if unusable."""
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
    return obj, model, stream


def optional_int(obj: dict[str, Any], key: str) -> int | None:
    """`obj[key]` if it is an integer, None if absent or null; raise `InvalidRequest` for anything else."""
    value = obj.get(key)
    # bool is an int subclass; `true` is not a token budget.
    if value is not None and type(value) is not int:
        raise InvalidRequest(f"`{key}` must be an integer")
    return value


def checked_messages(obj: dict[str, Any], content_rule: str, *, null_content: bool) -> list[dict[str, Any]]:
    """The `messages` array, each an object with a string `role` and a string or array `content`
    (or null, if `null_content`); raise `InvalidRequest`, saying `content_rule`, if not."""
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` is required and must be an array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"`messages[{i}]` must be an object")
        if not isinstance(message.get("role"), str):
            raise InvalidRequest(f"`messages[{i}].role` must be a string")
        content = message.get("content")
        if not isinstance(content, str | list) and (content is not None or not null_content):
            raise InvalidRequest(f"`messages[{i}].content` must be {content_rule}")
    return messages


# Agents inject generated context into user turns as text (Claude Code's `<system-reminder>` blocks,
# Codex's `<environment_context>` / AGENTS.md messages); that is not what the user asked, so it does
# not count as prompt text.
_INJECTED_PREFIXES = (
    "<system-reminder>",
    "<environment_context>",
    "<user_instructions>",
    "# AGENTS.md instructions",
)


def is_prompt(text: Any) -> bool:
    return isinstance(text, str) and bool(text) and not text.lstrip().startswith(_INJECTED_PREFIXES)


def _prompt_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content if is_prompt(content) else None
    if not isinstance(content, list):
        return None
    texts = [
        p["text"]
        for p in content
        if isinstance(p, dict) and p.get("type") == "text" and is_prompt(p.get("text"))
    ]
    return "\n".join(texts) if texts else None


def last_user_prompt(messages: list[dict[str, Any]]) -> str | None:
    """The prompt text of the last `user` message that has any, from checked `messages` whose
    content is a string or an array of `{"type": "text", "text"}` (and other) parts."""
    for message in reversed(messages):
        if message["role"] == "user":
            text = _prompt_text(message.get("content"))
            if text is not None:
                return text
    return None


def flatten(content: Any, image_part: str | None = None) -> str:
    """Tool-result content as text: a string as it is; of an array, strings and `text` parts joined by
    newlines and any other typed part as a `[type]` marker (`[image]` for parts of type `image_part`)."""
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
                elif isinstance(kind, str):
                    # Binary or structured parts (image, document, search_result, ...) are recorded as
                    # a marker: their payload is base64 or a reference, not something to keep as text.
                    parts.append("[image]" if kind == image_part else f"[{kind}]")
        return "\n".join(parts)
    # Not a shape the API accepts; keep it verbatim rather than lose it.
    return orjson.dumps(content).decode()


# --------------------------------------------------------------------------- upstream values


def int_or_zero(value: Any) -> int:
    """A token counter: a non-negative integer, or 0 for anything else."""
    return value if type(value) is int and value >= 0 else 0


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def error_object(err: Any) -> dict[str, Any]:
    """An upstream's `error` value as an object: a copy if it is one, else `{"message": str(err)}`."""
    return dict(err) if isinstance(err, dict) else {"message": str(err)}


def usage_reader(input_name: str, output_name: str) -> Callable[[Any], Usage]:
    """The reader of OpenAI-style usage objects, whose counters are named after `input_name` (`in`)
    and `output_name` (`out`): `<in>_tokens`, `<out>_tokens`, `<in>_tokens_details.cached_tokens`
    (cache reads) and `.cache_write_tokens`, `<out>_tokens_details.reasoning_tokens`."""
    input_key, output_key = f"{input_name}_tokens", f"{output_name}_tokens"
    input_details, output_details = f"{input_name}_tokens_details", f"{output_name}_tokens_details"

    def read(raw: Any) -> Usage:
        usage = Usage()
        if not isinstance(raw, dict):
            return usage
        usage.input_tokens = int_or_zero(raw.get(input_key))
        usage.output_tokens = int_or_zero(raw.get(output_key))
        details = raw.get(input_details)
        if isinstance(details, dict):
            usage.cache_read_tokens = int_or_zero(details.get("cached_tokens"))
            usage.cache_write_tokens = int_or_zero(details.get("cache_write_tokens"))
        details = raw.get(output_details)
        if isinstance(details, dict):
            usage.reasoning_tokens = int_or_zero(details.get("reasoning_tokens"))
        return usage

    return read
