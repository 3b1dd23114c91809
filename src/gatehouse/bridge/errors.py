"""Errors in the wire format of the client's provider, so SDKs raise their usual exception types.

Anthropic: {"type": "error", "error": {"type": ..., "message": ...}}
OpenAI:    {"error": {"message": ..., "type": ..., "param": null, "code": ...}}
"""

from __future__ import annotations

from typing import Literal

import orjson
from aiohttp import web

Flavor = Literal["anthropic", "openai"]

# Our error kinds, mapped to each provider's status and type names.
_KINDS: dict[str, tuple[int, str, str]] = {
    # kind: (status, anthropic type, openai type)
    "invalid_request": (400, "invalid_request_error", "invalid_request_error"),
    "authentication": (401, "authentication_error", "invalid_request_error"),
    "permission": (403, "permission_error", "permission_error"),
    "not_found": (404, "not_found_error", "invalid_request_error"),
    "too_large": (413, "request_too_large", "invalid_request_error"),
    "rate_limit": (429, "rate_limit_error", "rate_limit_exceeded"),
    "upstream": (502, "api_error", "server_error"),
    "unavailable": (503, "api_error", "server_error"),
    "timeout": (504, "api_error", "server_error"),
    "internal": (500, "api_error", "server_error"),
}

OPENAI_CODES = {
    "authentication": "invalid_api_key",
    "not_found": "not_found",
    "too_large": "request_too_large",
}


class BridgeError(Exception):
    """An error to answer in the provider's format. `kind` is a key of the table above."""

    def __init__(self, kind: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return _KINDS[self.kind][0]


def error_body(flavor: Flavor, kind: str, message: str) -> bytes:
    _, anthropic_type, openai_type = _KINDS[kind]
    if flavor == "anthropic":
        return orjson.dumps({"type": "error", "error": {"type": anthropic_type, "message": message}})
    return orjson.dumps(
        {"error": {"message": message, "type": openai_type, "param": None, "code": OPENAI_CODES.get(kind)}}
    )


def error_response(flavor: Flavor, error: BridgeError, request_id: str | None = None) -> web.Response:
    headers = dict(error.headers)
    if request_id:
        headers["request-id"] = request_id
    return web.Response(
        status=error.status,
        body=error_body(flavor, error.kind, error.message),
        content_type="application/json",
        headers=headers,
    )


def stream_error_event(flavor: Flavor, kind: str, message: str) -> bytes:
    """The in-band error an SSE client expects when a stream cannot be finished."""
    if flavor == "anthropic":
        return b"event: error\ndata: " + error_body(flavor, kind, message) + b"\n\n"
    return b"data: " + error_body(flavor, kind, message) + b"\n\n"
