"""aiohttp handlers: auth, faults, recording and the (streamed) rendering of a `Generation`.

Hot-path rules: no middleware, no logging, one `orjson.loads` per request, and with chunk_delay_ms=0 the
whole SSE stream goes out in a single write.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from gatehouse.simulator import anthropic_messages, errors, openai_chat, openai_responses
from gatehouse.simulator.faults import Fault, FaultError, from_admin_body, from_headers
from gatehouse.simulator.script import new_id
from gatehouse.simulator.state import RequestRecord, SimulatorState
from gatehouse.simulator.wire import Event, Generation, InvalidRequest, Provider

JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_HANG_POLL_SECONDS = 0.05  # how fast a `timeout` fault notices the client left without handler cancellation
_FLUSH_POLL_SECONDS = 0.001
_FLUSH_MAX_POLLS = 1000
_RST_LINGER = struct.pack("ii", 1, 0)

GenerationFactory = Callable[[dict[str, Any], bytes, SimulatorState], Generation]


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=JSON)


def _abort(request: web.BaseRequest) -> None:
    """Drop the connection with a TCP RST: no HTTP terminator, no FIN, like a crashed upstream."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    transport.abort()


def provider_from_headers(request: web.BaseRequest) -> Provider:
    """Shared paths (/v1/models, unknown routes): the Anthropic SDK always sends anthropic-version and
    authenticates with x-api-key; OpenAI clients send neither."""
    headers = request.headers
    if "anthropic-version" in headers or "x-api-key" in headers:
        return "anthropic"
    return "openai"


def provider_for_path(request: web.BaseRequest) -> Provider:
    path = request.path
    if path.startswith("/anthropic/"):
        return "anthropic"
    if path.startswith("/openai/"):
        return "openai"
    return provider_from_headers(request)


class Handlers:
    __slots__ = ("_api_key", "state")

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self._api_key = state.config.api_key.encode() if state.config.api_key is not None else None

    # -- helpers -----------------------------------------------------------------------------------

    def _authorized(self, request: web.BaseRequest) -> bool:
        expected = self._api_key
        if expected is None:
            return True
        headers = request.headers
        given = headers.get("x-api-key") or headers.get("api-key")  # api-key: Azure OpenAI
        if given is None:
            auth = headers.get("authorization", "")
            if auth[:7].lower() != "bearer ":
                return False
            given = auth[7:].strip()
        return secrets.compare_digest(given.encode(), expected)

    def _record(self, request: web.BaseRequest, body_size: int) -> RequestRecord:
        return self.state.record(
            request.method, request.path, request.query_string, request.headers, body_size
        )

    def _client_left(self, rec: RequestRecord) -> None:
        rec.client_disconnected = True
        self.state.client_disconnects += 1

    # -- model endpoints ---------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._model_request(request, "anthropic", anthropic_messages.AnthropicMessage)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._model_request(request, "openai", openai_chat.ChatCompletion)

    async def azure_chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Azure OpenAI's `/openai/deployments/{deployment}/chat/completions?api-version=...`: the
        deployment, not the body, says which model runs; it is echoed as the model."""
        deployment = request.match_info["deployment"]
        return await self._model_request(request, "openai", openai_chat.ChatCompletion, deployment)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self._model_request(request, "openai", openai_responses.ResponsesGeneration)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        return await self._model_request(request, "anthropic", None)

    async def _model_request(
        self,
        request: web.Request,
        provider: Provider,
        factory: GenerationFactory | None,
        deployment: str | None = None,
    ) -> web.StreamResponse:
        raw = await request.read()
        rec = self._record(request, len(raw))
        if not self._authorized(request):
            rec.status = 401
            return errors.unauthorized(provider)
        if deployment is not None and not request.query.get("api-version"):
            return self._done(rec, errors.azure_error(404, "404", "Resource not found"))
        state = self.state
        state.in_flight += 1
        try:
            return await self._serve(request, rec, provider, factory, raw, deployment)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client goes away (handler_cancellation=True).
            self._client_left(rec)
            raise
        finally:
            state.in_flight -= 1

    async def _serve(
        self,
        request: web.Request,
        rec: RequestRecord,
        provider: Provider,
        factory: GenerationFactory | None,
        raw: bytes,
        deployment: str | None = None,
    ) -> web.StreamResponse:
        state = self.state
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            return self._done(rec, errors.invalid_request(provider, "The request body is not valid JSON."))
        if deployment is not None:
            data["model"] = deployment
        model = data.get("model")
        rec.model = model if isinstance(model, str) else None
        stream = data.get("stream") is True and factory is not None
        rec.stream = stream
        try:
            fault = from_headers(request.headers) or state.faults.take(request.path)
        except FaultError as exc:
            return self._done(rec, errors.invalid_request(provider, str(exc)))
        if fault is not None:
            rec.fault = fault.kind
            state.faults_served += 1

        latency = state.config.latency_ms
        if latency:
            await asyncio.sleep(latency / 1000)

        if fault is not None:
            kind = fault.kind
            if kind == "timeout":
                return await self._hang(request, rec)
            if kind == "disconnect" and not stream:
                _abort(request)
                return web.Response()  # aiohttp fails to send it on the dead transport and moves on quietly
            if kind == "stream_error" and not stream:
                return self._done(rec, errors.fault_response(provider, Fault("500")))
            if kind in ("429", "500", "529"):
                return self._done(rec, errors.fault_response(provider, fault))

        if not isinstance(model, str) or not model:
            message = (
                "model: Field required" if provider == "anthropic" else "Missing required parameter: 'model'."
            )
            return self._done(rec, errors.invalid_request(provider, message, "model"))
        if model.startswith("sim-unknown"):
            if deployment is not None:
                return self._done(rec, errors.deployment_not_found())
            return self._done(rec, errors.model_not_found(provider, model))

        try:
            if factory is None:
                body = anthropic_messages.count_tokens(data)
                return self._done(rec, web.Response(body=body, content_type=JSON, headers=_headers(provider)))
            generation = factory(data, raw, state)
        except InvalidRequest as exc:
            return self._done(rec, errors.invalid_request(provider, exc.message, exc.param))

        if not stream:
            return self._done(
                rec, web.Response(body=generation.body(), content_type=JSON, headers=_headers(provider))
            )
        return await self._stream(request, rec, provider, generation, fault)

    @staticmethod
    def _done(rec: RequestRecord, response: web.Response) -> web.Response:
        rec.status = response.status
        return response

    async def _hang(self, request: web.Request, rec: RequestRecord) -> web.StreamResponse:
        """The `timeout` fault: never answer. Ends when the client leaves or the server shuts down."""
        state = self.state
        while not state.closing:
            transport = request.transport
            if transport is None or transport.is_closing():  # the client left and nobody cancelled us
                self._client_left(rec)
                return web.Response()
            await asyncio.sleep(_HANG_POLL_SECONDS)
        _abort(request)
        return web.Response()

    async def _stream(
        self,
        request: web.Request,
        rec: RequestRecord,
        provider: Provider,
        generation: Generation,
        fault: Fault | None,
    ) -> web.StreamResponse:
        headers = _headers(provider)
        headers["Content-Type"] = _SSE
        headers["Cache-Control"] = "no-cache"
        response = web.StreamResponse(status=200, headers=headers)
        events = generation.events()
        if fault is not None:
            events = events[: fault.after_events]
        try:
            await response.prepare(request)
            if not await self._write_events(request, response, events):
                return response
            if fault is None:
                await response.write_eof()
                rec.status = 200
                return response
            if fault.kind == "stream_error":
                await response.write(b"".join(generation.error_events(len(events))))
                await response.write_eof()
                rec.status = 200
                return response
            # disconnect: make sure the K events left this process before the connection dies
            transport = request.transport
            polls = 0
            while transport is not None and transport.get_write_buffer_size() and polls < _FLUSH_MAX_POLLS:
                await asyncio.sleep(_FLUSH_POLL_SECONDS)
                polls += 1
            _abort(request)
            return response
        except ConnectionResetError:
            self._client_left(rec)
            return response

    async def _write_events(
        self, request: web.Request, response: web.StreamResponse, events: list[Event]
    ) -> bool:
        """Write the frames, pausing chunk_delay_ms between deltas. False if the server is shutting down."""
        delay = self.state.config.chunk_delay_ms / 1000
        if not delay:
            if events:
                await response.write(b"".join([frame for frame, _ in events]))
            return True
        state = self.state
        pending: list[bytes] = []
        seen_delta = False
        for frame, is_delta in events:
            if is_delta:
                if seen_delta:
                    if pending:
                        await response.write(b"".join(pending))
                        pending.clear()
                    await asyncio.sleep(delay)
                    if state.closing:
                        _abort(request)
                        return False
                seen_delta = True
            pending.append(frame)
        if pending:
            await response.write(b"".join(pending))
        return True

    # -- models ------------------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(request, 0)
        provider = provider_for_path(request)
        if not self._authorized(request):
            return self._done(rec, errors.unauthorized(provider))
        config = self.state.config
        if provider == "anthropic":
            body = anthropic_messages.models_list(config.anthropic_models)
        else:
            body = openai_chat.models_list(config.openai_models)
        return self._done(rec, web.Response(body=body, content_type=JSON, headers=_headers(provider)))

    async def model(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(request, 0)
        provider = provider_for_path(request)
        if not self._authorized(request):
            return self._done(rec, errors.unauthorized(provider))
        model_id = request.match_info["model_id"]
        rec.model = model_id
        if model_id.startswith("sim-unknown"):
            return self._done(rec, errors.model_not_found(provider, model_id))
        module = anthropic_messages if provider == "anthropic" else openai_chat
        body = module.model_info(model_id)
        return self._done(rec, web.Response(body=body, content_type=JSON, headers=_headers(provider)))

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(request, request.content_length or 0)
        response = errors.route_not_found(provider_for_path(request), request.method, request.path)
        return self._done(rec, response)

    # -- admin: /_sim/* ----------------------------------------------------------------------------

    async def add_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            fault, count = from_admin_body(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, FaultError) as exc:
            return _json({"error": str(exc)}, 400)
        faults = self.state.faults
        faults.add(fault, count)
        return _json({"queued": len(faults), "faults": faults.pending()})

    async def list_faults(self, request: web.Request) -> web.StreamResponse:
        return _json({"faults": self.state.faults.pending()})

    async def clear_faults(self, request: web.Request) -> web.StreamResponse:
        faults = self.state.faults
        cleared = len(faults)
        faults.clear()
        return _json({"cleared": cleared})

    async def list_requests(self, request: web.Request) -> web.StreamResponse:
        path = request.query.get("path")
        records = [r.as_dict() for r in self.state.records if path is None or r.path == path]
        return _json({"requests": records})

    async def clear_requests(self, request: web.Request) -> web.StreamResponse:
        records = self.state.records
        cleared = len(records)
        records.clear()
        return _json({"cleared": cleared})

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return _json(self.state.stats())

    async def reset_stats(self, request: web.Request) -> web.StreamResponse:
        self.state.reset_stats()
        return _json(self.state.stats())

    async def reset(self, request: web.Request) -> web.StreamResponse:
        self.state.reset()
        return _json(self.state.stats())


def _headers(provider: Provider) -> dict[str, str]:
    return {"request-id" if provider == "anthropic" else "x-request-id": new_id("req_")}
