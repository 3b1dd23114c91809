"""Error responses in each provider's real body shape.

Anthropic: `{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}` plus a
`request-id` header. OpenAI: `{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}` plus an
`x-request-id` header. Azure OpenAI: `{"error": {"code": ..., "message": ...}}` for its own errors.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gatehouse.simulator.faults import Fault
from gatehouse.simulator.script import new_id
from gatehouse.simulator.wire import Provider

JSON = "application/json"


def anthropic_error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    request_id = new_id("req_")
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    all_headers = {"request-id": request_id}
    if headers:
        all_headers.update(headers)
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers=all_headers)


def openai_error(
    status: int,
    kind: str,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    all_headers = {"x-request-id": new_id("req_")}
    if headers:
        all_headers.update(headers)
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers=all_headers)


def unauthorized(provider: Provider) -> web.Response:
    if provider == "anthropic":
        return anthropic_error(401, "authentication_error", "invalid x-api-key")
    return openai_error(
        401,
        "invalid_request_error",
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def route_not_found(provider: Provider, method: str, path: str) -> web.Response:
    if provider == "anthropic":
        return anthropic_error(404, "not_found_error", "Not Found")
    return openai_error(404, "invalid_request_error", f"Invalid URL ({method} {path})")


def model_not_found(provider: Provider, model: str) -> web.Response:
    if provider == "anthropic":
        return anthropic_error(404, "not_found_error", f"model: {model}")
    return openai_error(
        404,
        "invalid_request_error",
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def azure_error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=JSON, headers={"apim-request-id": new_id("req_")}
    )


def deployment_not_found() -> web.Response:
    return azure_error(
        404,
        "DeploymentNotFound",
        "The API deployment for this resource does not exist. If you created the deployment within the last"
        " 5 minutes, please wait a moment and try again.",
    )


def invalid_request(provider: Provider, message: str, param: str | None = None) -> web.Response:
    if provider == "anthropic":
        return anthropic_error(400, "invalid_request_error", message)
    return openai_error(400, "invalid_request_error", message, param=param)


def fault_response(provider: Provider, fault: Fault) -> web.Response:
    """The HTTP error of a status-code fault (429, 500, 529)."""
    if fault.kind == "429":
        headers = {"retry-after": str(fault.retry_after)}
        if provider == "anthropic":
            return anthropic_error(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization. Please try again later.",
                headers,
            )
        return openai_error(
            429,
            "requests",
            "Rate limit reached for requests. Please try again later.",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if fault.kind == "529":
        if provider == "anthropic":
            return anthropic_error(529, "overloaded_error", "Overloaded")
        # OpenAI has no 529; its overload signal is a 503.
        return openai_error(
            503,
            "server_error",
            "The server is overloaded or not ready yet.",
            code="server_is_overloaded",
        )
    if provider == "anthropic":
        return anthropic_error(500, "api_error", "Internal server error")
    return openai_error(
        500,
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
    )
