"""The Bridge: authenticate, record, forward, stream back, record again.

One interception, top to bottom:
  1. find the provider instance and route (404 in the provider's format otherwise);
  2. authenticate the Gatehouse token (401), read the body within the limit (413), parse what must be
     recorded (400), check the model against the provider's allowlist (403), ask the policy engine
     (template rules 403, budgets 403, rate limits 429), which reserves the call's maximum cost;
  3. append `llm.request` and wait until it is durable (503 if it cannot be, unless fail-open);
  4. forward with the upstream key in place of the client's token; stream the answer back chunk by chunk
     while a copy feeds the wire-format accumulator;
  5. append `llm.response` and wait until it is durable before the last byte (the `message_stop`,
     `[DONE]` or `response.completed` event) reaches the client, so an acknowledged call is a recorded one;
  6. settle the policy reservation on the usage the upstream reported.

Every refusal is itself an event. Bytes pass through untouched: the parsers only observe. Two exceptions,
both for Azure OpenAI: a body sent to an Azure-style path without a `model` gets the path's deployment
as its model, and a Responses body for an Azure resource names the deployment its model maps to.

Azure OpenAI, both ways. A provider with `azure_api_version` is a classic Azure resource: Chat Completions
go to `/openai/deployments/{deployment}/chat/completions?api-version=...` (deployment from the model, via
`azure_deployments`), Responses to `/openai/v1/responses`, models to `/openai/models?api-version=...`.
Any `openai` provider also serves clients that speak Azure's dialect (`AzureOpenAI`, LiteLLM's `azure/`):
`openai/deployments/{deployment}/chat/completions` is the `chat_completions` route, whose model is the
body's `model`, else the deployment; the client's `api-version` is not forwarded.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import orjson
from aiohttp import web

from gatehouse.audit.events import Event, new_id
from gatehouse.audit.writer import AuditUnavailable, AuditWriter
from gatehouse.bridge.clients import client_session_id, detect_client
from gatehouse.bridge.errors import BridgeError, Flavor, error_response, stream_error_event
from gatehouse.bridge.facts import InvalidRequest, RequestFacts, ResponseFacts, Usage
from gatehouse.bridge.projection import REQUEST, RESPONSE
from gatehouse.bridge.routes import Route, azure_deployment, guess_flavor, match_route
from gatehouse.bridge.sse import SSEParser
from gatehouse.bridge.upstream import Upstream, UpstreamError, UpstreamResponse, UpstreamTimeout
from gatehouse.config import BridgeSettings, CapturePolicy, ProviderSettings
from gatehouse.identity.service import AuthError, IdentityService, Principal
from gatehouse.policy.engine import Admission, PolicyEngine, PolicyRefusal
from gatehouse.store.db import Database, Row

log = logging.getLogger(__name__)

# Never forwarded upstream: hop-by-hop headers (RFC 9110 7.6.1), the client's credentials, and what the
# HTTP client sets itself. Everything else (anthropic-version, anthropic-beta, openai-*, x-stainless-*,
# user agents, session ids) goes through, so provider features keep working.
_DROP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "authorization",
        "x-api-key",
        "api-key",
        "cookie",
    }
)
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "set-cookie",
    }
)
# Recent tool calls kept in memory to link tool results without a query; older ones are found in the
# `tool_calls` table. 10,000 entries is about 3 MiB.
_TOOL_CALL_MEMORY = 10_000


@dataclass(slots=True)
class Interception:
    """The state of one model call as it goes through the pipeline."""

    id: str
    route: Route
    provider: str
    principal: Principal
    started: float  # perf_counter at arrival
    client: str
    client_session: str | None
    session: str = ""
    parent: str | None = None
    facts: RequestFacts | None = None
    ttft_ms: float | None = None
    raw_response: bytearray | None = None
    details: dict[str, Any] = field(default_factory=dict)
    admission: Admission | None = None  # what the policy engine reserved for this call
    usage: Usage | None = None  # what the upstream reported, once the call ended

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)


class Bridge:
    def __init__(
        self,
        *,
        providers: dict[str, ProviderSettings],
        settings: BridgeSettings,
        db: Database,
        writer: AuditWriter,
        identity: IdentityService,
        max_body_bytes: int,
        policy: PolicyEngine | None = None,
    ) -> None:
        self.providers = providers
        self.policy = policy
        self.settings = settings
        self.db = db
        self.writer = writer
        self.identity = identity
        self.max_body_bytes = max_body_bytes
        self._http: Upstream | None = None
        # tool call id -> (interception id, session id): links a tool result to the call that asked for it.
        self._tool_calls: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bridge/{provider}/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)

    async def _open(self, _app: web.Application) -> None:
        self._http = Upstream(
            connect_timeout=self.settings.connect_timeout_s, read_timeout=self.settings.read_timeout_s
        )

    async def _close(self, _app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    # -- entry point -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["provider"]
        tail = request.match_info["tail"]
        provider = self.providers.get(name)
        flavor: Flavor = provider.type if provider else guess_flavor(tail)
        try:
            if provider is None:
                known = ", ".join(sorted(self.providers)) or "none configured"
                raise BridgeError("not_found", f"unknown provider {name!r} (providers: {known})")
            route = match_route(provider.type, request.method, tail)
            principal = await self._authenticate(request, name, route)
            if route.wire is None:
                return await self._pass_through(request, route, name, provider, principal)
            return await self._intercept(request, route, name, provider, principal)
        except BridgeError as exc:
            return error_response(flavor, exc)

    async def _authenticate(self, request: web.Request, provider: str, route: Route) -> Principal:
        secret = _presented_token(request)
        if secret is None:
            raise BridgeError(
                "authentication",
                "missing API key: send your Gatehouse token as x-api-key, api-key or Authorization: Bearer",
            )
        try:
            return await self.identity.authenticate(secret)
        except AuthError as exc:
            self.writer.append_nowait(
                Event(
                    kind="auth.failure",
                    decision="deny",
                    resource=f"llm:{provider}",
                    details={
                        "reason": exc.reason,
                        "route": route.name,
                        "client": detect_client(request.headers),
                        "remote": request.remote,
                        "token_prefix": secret[:12] if secret.startswith("gth_") else None,
                    },
                )
            )
            raise BridgeError(
                "authentication", "invalid API key: the Gatehouse token is unknown, expired or revoked"
            ) from None

    # -- model calls -------------------------------------------------------------------------------

    async def _intercept(
        self, request: web.Request, route: Route, name: str, provider: ProviderSettings, principal: Principal
    ) -> web.StreamResponse:
        assert route.wire is not None
        call = Interception(
            id=new_id(),
            route=route,
            provider=name,
            principal=principal,
            started=time.perf_counter(),
            client=detect_client(request.headers),
            client_session=client_session_id(request.headers),
        )
        call.session = call.client_session or call.id
        try:
            body = await self._read_body(request)
            if route.azure:
                deployment = azure_deployment(request.match_info["tail"])
                assert deployment is not None
                call.details["deployment"] = deployment
                body = _with_model(body, deployment, only_if_missing=True)
            call.facts = route.wire.parse_request(body)
        except BridgeError as exc:
            await self._refuse(call, exc)
            raise
        except InvalidRequest as exc:
            error = BridgeError("invalid_request", str(exc))
            await self._refuse(call, error)
            raise error from None
        await self._link_tool_results(call)
        if not any(fnmatch.fnmatchcase(call.facts.model or "", p) for p in provider.models):
            error = BridgeError(
                "permission", f"model {call.facts.model!r} is not allowed on provider {name!r}"
            )
            await self._refuse(call, error)
            raise error
        model = call.facts.model or ""
        try:
            url = _upstream_url(request, route, provider, model)
        except BridgeError as exc:
            await self._refuse(call, exc)
            raise
        upstream_body = body
        if provider.azure_api_version is not None:
            deployment = call.details["upstream_deployment"] = provider.azure_deployment(model)
            if route.name == "responses" and deployment != model:
                # Azure's v1 Responses API takes the deployment from the body's `model`.
                upstream_body = _with_model(body, deployment, only_if_missing=False)
        if self.policy is not None:
            try:
                call.admission = await self.policy.admit(
                    principal, name, call.facts, len(body), openai=route.flavor == "openai"
                )
            except PolicyRefusal as refusal:
                call.details["policy"] = refusal.details
                error = BridgeError(refusal.kind, refusal.message, headers=refusal.headers)
                await self._refuse(call, error)
                raise error from None
            call.details["policy"] = call.admission.details
        try:
            await self._record(self._request_event(call, body, "allow"), call)
            return await self._forward(request, call, provider, url, upstream_body)
        finally:
            if call.admission is not None and self.policy is not None:
                self.policy.settle(call.admission, call.usage)

    async def _forward(
        self, request: web.Request, call: Interception, provider: ProviderSettings, url: str, body: bytes
    ) -> web.StreamResponse:
        forward = _upstream_headers(request, provider)
        assert self._http is not None
        try:
            upstream = await self._http.request(request.method, url, forward, body)
        except UpstreamTimeout:
            raise await self._upstream_failed(
                call, "timeout", "the upstream did not answer in time"
            ) from None
        except UpstreamError as exc:
            raise await self._upstream_failed(call, "upstream", f"cannot reach the upstream: {exc}") from None
        try:
            if upstream.content_type == "text/event-stream":
                return await self._stream(request, upstream, call)
            return await self._buffered(upstream, call)
        finally:
            upstream.release()

    async def _buffered(self, upstream: UpstreamResponse, call: Interception) -> web.StreamResponse:
        assert call.route.wire is not None
        try:
            payload = await upstream.read()
        except UpstreamError as exc:
            raise await self._upstream_failed(
                call, "upstream", f"the upstream connection failed: {exc}"
            ) from None
        facts: ResponseFacts = call.route.wire.parse_response(payload)
        if self.settings.capture is CapturePolicy.FULL:
            call.raw_response = bytearray(payload)
        await self._record(
            self._response_event(call, upstream.status, facts, _error_text(upstream, facts)), call
        )
        return web.Response(status=upstream.status, body=payload, headers=_client_headers(upstream, call))

    async def _stream(
        self, request: web.Request, upstream: UpstreamResponse, call: Interception
    ) -> web.StreamResponse:
        assert call.route.wire is not None
        response = web.StreamResponse(status=upstream.status, headers=_client_headers(upstream, call))
        await response.prepare(request)
        parser = SSEParser()
        accumulator = call.route.wire.StreamAccumulator()
        capture_raw = self.settings.capture is CapturePolicy.FULL
        if capture_raw:
            call.raw_response = bytearray()
        finished = False
        try:
            async for chunk in upstream.chunks():
                terminal = False
                for event in parser.feed(chunk):
                    accumulator.feed(event)
                    if call.ttft_ms is None and accumulator.saw_output:
                        call.ttft_ms = call.elapsed_ms()
                    terminal = terminal or call.route.is_terminal(event)
                if capture_raw:
                    call.raw_response.extend(chunk)  # type: ignore[union-attr]
                if terminal and not finished:
                    finished = True
                    facts = accumulator.result()
                    try:
                        await self._record(
                            self._response_event(call, upstream.status, facts, _error_text(upstream, facts)),
                            call,
                        )
                    except BridgeError as exc:
                        await _write_quietly(
                            response, stream_error_event(call.route.flavor, exc.kind, exc.message)
                        )
                        return response
                if not await _write_quietly(response, chunk):
                    return await self._client_gone(call, upstream, accumulator.result(), response)
        except UpstreamError as exc:
            message = (
                "the upstream connection broke mid-stream"
                if not isinstance(exc, TimeoutError)
                else ("the upstream stopped sending mid-stream")
            )
            if not finished:
                for event in parser.flush():  # an event cut off before its blank line still counts
                    accumulator.feed(event)
                facts = accumulator.result()
                self.writer.append_nowait(self._response_event(call, 502, facts, f"{message}: {exc!r}"[:500]))
                await _write_quietly(response, stream_error_event(call.route.flavor, "upstream", message))
            return response
        except asyncio.CancelledError:
            if not finished:
                self.writer.append_nowait(self._response_event(call, 499, accumulator.result(), "cancelled"))
            raise
        if not finished:
            terminal = False
            for event in parser.flush():  # the last event may lack its closing blank line
                accumulator.feed(event)
                terminal = terminal or call.route.is_terminal(event)
            facts = accumulator.result()
            error = _error_text(upstream, facts) or (
                None if terminal else "the stream ended without its final event"
            )
            await self._record(self._response_event(call, upstream.status, facts, error), call)
        await _write_quietly(response, b"", eof=True)
        return response

    async def _client_gone(
        self,
        call: Interception,
        upstream: UpstreamResponse,
        facts: ResponseFacts,
        response: web.StreamResponse,
    ) -> web.StreamResponse:
        """The client hung up mid-stream: stop the upstream generation (closing the connection cancels
        it, and stops the spend) and record how far it got."""
        upstream.close()
        self.writer.append_nowait(
            self._response_event(call, 499, facts, "the client disconnected mid-stream")
        )
        return response

    # -- metadata calls (models, count_tokens) -----------------------------------------------------

    async def _pass_through(
        self, request: web.Request, route: Route, name: str, provider: ProviderSettings, principal: Principal
    ) -> web.StreamResponse:
        started = time.perf_counter()
        body = await self._read_body(request) if request.method == "POST" else None
        url = _upstream_url(request, route, provider, "")
        forward = _upstream_headers(request, provider)
        assert self._http is not None
        try:
            upstream = await self._http.request(request.method, url, forward, body)
            try:
                payload = await upstream.read()
            finally:
                upstream.release()
        except UpstreamError as exc:
            raise BridgeError("upstream", f"cannot reach the upstream: {exc}") from None
        status, headers = upstream.status, _client_headers(upstream, None)
        if route.name == "models" and status == 200:
            payload = _filter_models(payload, provider.models)
            if self.policy is not None:
                payload = await self.policy.filter_models(principal, name, payload)
        self.writer.append_nowait(
            Event(
                kind="llm.api",
                decision="allow",
                actor_user=principal.user_id,
                actor_agent=principal.agent_id,
                actor_token=principal.token_id,
                resource=f"llm:{name}",
                details={
                    "route": route.name,
                    "provider": name,
                    "status": status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                    "client": detect_client(request.headers),
                },
            )
        )
        return web.Response(status=status, body=payload, headers=headers)

    # -- recording ---------------------------------------------------------------------------------

    async def _record(self, event: Event, call: Interception) -> None:
        try:
            await self.writer.append(event)
        except AuditUnavailable:
            raise BridgeError(
                "unavailable", "the audit trail is unavailable, so the request was refused; try again shortly"
            ) from None

    async def _refuse(self, call: Interception, error: BridgeError) -> None:
        call.details.update(status=error.status, error=error.message)
        await self._record(self._request_event(call, None, "deny"), call)

    async def _upstream_failed(self, call: Interception, kind: str, message: str) -> BridgeError:
        error = BridgeError(kind, message)
        await self._record(self._response_event(call, error.status, ResponseFacts(), message), call)
        return error

    async def _link_tool_results(self, call: Interception) -> None:
        """A request that carries tool results continues the interception that asked for those tools."""
        assert call.facts is not None
        ids = [r.tool_call_id for r in call.facts.tool_results if r.tool_call_id]
        if not ids:
            return
        for tool_call_id in ids:
            hit = self._tool_calls.get(tool_call_id)
            if hit is not None:
                call.parent, session = hit
                break
        else:
            row = await self._recorded_tool_call(ids)
            if row is None:
                return
            call.parent, session = row["interception_id"], row["session_id"]
        if call.client_session is None:
            call.session = session

    async def _recorded_tool_call(self, ids: list[str]) -> Row | None:
        """A tool call this process does not remember (older, from before a restart, or from another
        replica), from the derived `tool_calls` table. Not caught up first: that table trails the log by
        about a second (the projector's pass), far less than a tool takes to run, and a result for a call
        nobody recorded (a client's own ids) would make every such request pay for a catch-up."""
        marks = ", ".join("?" for _ in ids)
        return await self.db.aquery_one(
            f"SELECT interception_id, session_id FROM tool_calls WHERE tool_call_id IN ({marks}) LIMIT 1", ids
        )

    def _capture(self, text: str | None) -> str | None:
        if text is None or self.settings.capture is CapturePolicy.METADATA:
            return None
        if self.settings.capture is CapturePolicy.LAST_PROMPT:
            return text[: self.settings.capture_max_chars]
        return text

    def _event(
        self,
        call: Interception,
        kind: str,
        decision: Any,
        details: dict[str, Any],
        parent: str | None,
        event_id: str,
    ) -> Event:
        p = call.principal
        model = call.facts.model if call.facts else None
        return Event(
            id=event_id,
            kind=kind,
            decision=decision,
            actor_user=p.user_id,
            actor_agent=p.agent_id,
            actor_token=p.token_id,
            session=call.session,
            parent=parent,
            resource=f"llm:{call.provider}/{model or '?'}",
            details=details,
        )

    def _request_event(self, call: Interception, body: bytes | None, decision: str) -> Event:
        facts = call.facts
        details: dict[str, Any] = {
            "route": call.route.name,
            "provider": call.provider,
            "client": call.client,
            "client_session": call.client_session,
            "model": facts.model if facts else None,
            "stream": facts.stream if facts else False,
            "parent_interception": call.parent,
            **call.details,
        }
        if facts is not None:
            details["max_tokens"] = facts.max_tokens
            details["tools_offered"] = len(facts.tools_offered)
            details["last_prompt"] = self._capture(facts.last_user_prompt)
            details["tool_results"] = [
                {
                    "id": r.tool_call_id,
                    "is_error": r.is_error,
                    "size": r.size,
                    "content": self._capture(r.content),
                }
                for r in facts.tool_results
            ]
        if body is not None:
            details["request_bytes"] = len(body)
            if self.settings.capture is CapturePolicy.FULL:
                details["request_body"] = body.decode("utf-8", "replace")
        return self._event(call, REQUEST, decision, details, call.parent, call.id)  # the call's own id

    def _response_event(
        self, call: Interception, status: int, facts: ResponseFacts, error: str | None
    ) -> Event:
        details: dict[str, Any] = {
            "status": status,
            "error": error,
            "latency_ms": call.elapsed_ms(),
            "ttft_ms": call.ttft_ms,
            "response_id": facts.response_id,
            "model": facts.model,
            "stop_reason": facts.stop_reason,
            "usage": facts.usage.as_dict(),
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": self._capture(c.arguments)}
                for c in facts.tool_calls
            ],
            "thinking": [self._capture(t) for t in facts.thinking],
        }
        if self.settings.capture is CapturePolicy.FULL:
            details["text"] = facts.text
            if call.raw_response is not None:
                details["response_body"] = call.raw_response.decode("utf-8", "replace")
        for c in facts.tool_calls:
            self._remember_tool_call(c.id, call)
        call.usage = facts.usage
        return self._event(call, RESPONSE, "error" if error else "allow", details, call.id, new_id())

    def _remember_tool_call(self, tool_call_id: str, call: Interception) -> None:
        self._tool_calls[tool_call_id] = (call.id, call.session)
        if len(self._tool_calls) > _TOOL_CALL_MEMORY:
            self._tool_calls.popitem(last=False)

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise BridgeError("too_large", f"request body over the limit of {self.max_body_bytes} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BridgeError(
                "too_large", f"request body over the limit of {self.max_body_bytes} bytes"
            ) from None


def _presented_token(request: web.Request) -> str | None:
    """The Gatehouse token: `x-api-key` (Anthropic clients), `api-key` (Azure OpenAI clients) or a Bearer
    token. All three headers are dropped before forwarding, so the upstream never sees it."""
    headers = request.headers
    key = headers.get("x-api-key") or headers.get("api-key")
    if key and key.strip():
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _upstream_url(request: web.Request, route: Route, provider: ProviderSettings, model: str) -> str:
    """Where the call goes upstream. `model` is the one the call was checked against (empty for metadata
    calls); for an Azure resource it picks the deployment, so what runs is what the policy allowed."""
    tail, query = request.match_info["tail"].lstrip("/"), request.query_string
    if provider.azure_api_version is not None:
        version: str | None = provider.azure_api_version
        if route.name in ("chat_completions", "responses"):
            deployment = provider.azure_deployment(model)
            if not ProviderSettings.is_azure_deployment_name(deployment):
                raise BridgeError(
                    "invalid_request",
                    f"model {model!r} cannot name an Azure deployment (letters, digits, ., - and _ only)",
                )
            if route.name == "chat_completions":
                tail = f"openai/deployments/{deployment}/chat/completions"
            else:  # Azure serves Responses on its v1 API only, which takes no dated api-version
                tail, version = "openai/v1/responses", None
        else:  # models: the resource's models (Azure lists models, not deployments)
            tail = "openai/" + tail.removeprefix("v1/")
        query = _with_api_version(query, version)
    elif route.azure:
        tail, query = "v1/chat/completions", _with_api_version(query, None)
    url = f"{provider.base_url.removesuffix('/v1')}/{tail}"
    return f"{url}?{query}" if query else url


def _with_api_version(query: str, version: str | None) -> str:
    """The query string with the client's `api-version` replaced by `version` (or removed)."""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "api-version"]
    if version is not None:
        pairs.append(("api-version", version))
    return urlencode(pairs)


def _with_model(body: bytes, model: str, *, only_if_missing: bool) -> bytes:
    """The JSON body with `model` set; unchanged if it is not a JSON object (the parser reports that), or,
    with `only_if_missing`, if it already names a model."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(obj, dict) or (only_if_missing and obj.get("model") not in (None, "")):
        return body
    obj["model"] = model
    return orjson.dumps(obj)


def _upstream_headers(request: web.Request, provider: ProviderSettings) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
    headers["Accept-Encoding"] = "identity"
    if provider.api_key is not None:
        key = provider.api_key.get_secret_value()
        if provider.auth_header == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        elif provider.auth_header == "api-key":
            headers["api-key"] = key
        else:
            headers["x-api-key"] = key
    return headers


def _client_headers(upstream: UpstreamResponse, call: Interception | None) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in upstream.headers if k.lower() not in _DROP_RESPONSE]
    if call is not None:
        headers.append(("x-gatehouse-interception", call.id))
    return headers


def _error_text(upstream: UpstreamResponse, facts: ResponseFacts) -> str | None:
    if facts.error is not None:
        message = facts.error.get("message") or facts.error.get("type") or "error"
        return f"upstream error: {message}"[:500]
    if upstream.status >= 400:
        return f"upstream answered HTTP {upstream.status}"
    return None


def _filter_models(payload: bytes, patterns: list[str]) -> bytes:
    """List only the models this provider instance may serve."""
    if patterns == ["*"]:
        return payload
    try:
        doc = orjson.loads(payload)
        doc["data"] = [
            m for m in doc.get("data", []) if any(fnmatch.fnmatchcase(m.get("id", ""), p) for p in patterns)
        ]
        return orjson.dumps(doc)
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return payload


async def _write_quietly(response: web.StreamResponse, chunk: bytes, *, eof: bool = False) -> bool:
    """Write to the client; False if it has gone away."""
    try:
        if eof:
            await response.write_eof()
        elif chunk:
            await response.write(chunk)
        return True
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        return False
