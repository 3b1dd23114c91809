"""OpenTelemetry over OTLP/HTTP (protobuf), with the official SDK's exporters.

Logs: every event is one log record: `event_name` = `gatehouse.<kind>`, the time of the event, a severity
from the decision, the envelope as `gatehouse.*` attributes and the whole event as a JSON body.

Traces: every LLM interception (an `llm.request` and its `llm.response`) is one CLIENT span from the
request's time to the response's, following the GenAI semantic conventions (`gen_ai.operation.name` =
`chat`, `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.response.id`,
`gen_ai.response.finish_reasons`, `gen_ai.usage.*`, `gen_ai.conversation.id`), with one span event per tool
call the model made (`gen_ai.tool.call`: `gen_ai.tool.name`, `gen_ai.tool.call.id`). A refused request is a
span of its own with an error status. Ids are derived from Gatehouse's: all spans of one session share a
trace (the trace id is a hash of the session id), a span's id is a hash of its interception id, and a call
that continues another (tool results) is its child; the llm.* log records carry the same trace context.
So re-sending a batch (delivery is at least once) produces identical records, not new ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from opentelemetry import trace as trace_api
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from gatehouse import __version__
from gatehouse.audit.events import Event, llm_model, llm_provider
from gatehouse.audit.export.base import Sink, SinkError, event_json
from gatehouse.audit.export.settings import OtlpSinkSettings

SCOPE = InstrumentationScope("gatehouse.audit.export", __version__)

_SEVERITY = {
    "allow": (SeverityNumber.INFO, "INFO"),
    "pending": (SeverityNumber.INFO2, "INFO"),
    "deny": (SeverityNumber.WARN, "WARN"),
    "error": (SeverityNumber.ERROR, "ERROR"),
}
# Bridge routes -> the wire format, when the provider instance's type is not known.
_ROUTE_PROVIDER = {"messages": "anthropic", "chat_completions": "openai", "responses": "openai"}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)

EventLookup = Callable[[Sequence[str]], Mapping[str, Event]]


def trace_id(key: str) -> int:
    value = int.from_bytes(hashlib.sha256(b"gatehouse-trace:" + key.encode()).digest()[:16], "big")
    return value or 1


def span_id(interception_id: str) -> int:
    value = int.from_bytes(hashlib.sha256(b"gatehouse-span:" + interception_id.encode()).digest()[:8], "big")
    return value or 1


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """OTel attribute values are primitives or homogeneous lists of them; None means absent."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None or value == [] or value == "":
            continue
        if isinstance(value, str | bool | int | float):
            out[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            out[key] = list(value)
        else:
            out[key] = orjson.dumps(value).decode()
    return out


def interception_context(event: Event) -> tuple[int, int] | None:
    """(trace id, span id) of the interception an llm.* event belongs to."""
    if event.kind == "llm.request":
        interception = event.id
    elif event.kind == "llm.response" and event.parent:
        interception = event.parent
    else:
        return None
    return trace_id(event.session or interception), span_id(interception)


class OtlpEncoder:
    """Builds SDK log records and spans from events (no I/O)."""

    def __init__(self, settings: OtlpSinkSettings, provider_types: Mapping[str, str] | None = None) -> None:
        self.resource = Resource.create(
            {
                "service.name": settings.service_name,
                "service.version": __version__,
                **settings.resource_attributes,
            }
        )
        self.provider_types = dict(provider_types or {})

    # -- logs ------------------------------------------------------------------------------------

    def log_record(self, event: Event) -> ReadableLogRecord:
        severity, text = _SEVERITY.get(event.decision, (SeverityNumber.UNSPECIFIED, event.decision.upper()))
        ids = interception_context(event)
        context = Context()
        if ids is not None:
            span_context = SpanContext(ids[0], ids[1], is_remote=False, trace_flags=_SAMPLED)
            context = trace_api.set_span_in_context(NonRecordingSpan(span_context))
        attributes = _clean(
            {
                "gatehouse.event.id": event.id,
                "gatehouse.event.seq": event.seq,
                "gatehouse.event.kind": event.kind,
                "gatehouse.decision": event.decision,
                "gatehouse.actor.user": event.actor_user,
                "gatehouse.actor.agent": event.actor_agent,
                "gatehouse.actor.token": event.actor_token,
                "gatehouse.actor.on_behalf_of": event.on_behalf_of,
                "gatehouse.workspace": event.workspace,
                "gatehouse.session": event.session,
                "gatehouse.parent": event.parent,
                "gatehouse.resource": event.resource,
                "gatehouse.prev_hash": event.prev_hash,
                "gatehouse.hash": event.hash,
            }
        )
        record = LogRecord(
            timestamp=event.ts * 1000,
            observed_timestamp=time.time_ns(),
            context=context,
            severity_text=text,
            severity_number=severity,
            body=event_json(event).decode(),
            attributes=attributes,
            event_name=f"gatehouse.{event.kind}",
        )
        return ReadableLogRecord(log_record=record, resource=self.resource, instrumentation_scope=SCOPE)

    # -- spans -----------------------------------------------------------------------------------

    def provider_name(self, details: Mapping[str, Any]) -> str | None:
        provider = details.get("provider")
        if isinstance(provider, str) and provider in self.provider_types:
            return self.provider_types[provider]
        by_route = _ROUTE_PROVIDER.get(str(details.get("route")))
        return by_route or (provider if isinstance(provider, str) else None)

    def span(self, request: Event | None, response: Event | None) -> ReadableSpan:
        """The span of one interception, from its request and/or its response event."""
        anchor = request or response
        assert anchor is not None
        interception = request.id if request is not None else (response.parent if response else None)
        interception = interception or anchor.id
        rq = request.details if request is not None else {}
        rs = response.details if response is not None else {}
        provider = rq.get("provider") or llm_provider(anchor.resource)
        provider_name = self.provider_name({**rq, "provider": provider})
        model = rq.get("model") or rs.get("model") or llm_model(anchor.resource)
        usage = rs.get("usage") or {}
        status = rs.get("status") if response is not None else rq.get("status")
        error = rs.get("error") if response is not None else rq.get("error")
        stop_reason = rs.get("stop_reason")
        ttft = rs.get("ttft_ms")

        end_us = response.ts if response is not None else anchor.ts
        if request is not None:
            start_us = request.ts
        else:
            latency = rs.get("latency_ms")
            start_us = end_us - int(float(latency) * 1000) if isinstance(latency, int | float) else end_us

        attributes = _clean(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider_name,
                "gen_ai.system": provider_name,
                "gen_ai.request.model": rq.get("model") or model,
                "gen_ai.request.max_tokens": rq.get("max_tokens"),
                "gen_ai.request.stream": rq.get("stream"),
                "gen_ai.response.model": rs.get("model"),
                "gen_ai.response.id": rs.get("response_id"),
                "gen_ai.response.finish_reasons": [stop_reason] if isinstance(stop_reason, str) else None,
                "gen_ai.response.time_to_first_chunk": float(ttft) / 1000
                if isinstance(ttft, int | float)
                else None,
                "gen_ai.usage.input_tokens": _input_tokens(provider_name, usage)
                if response is not None
                else None,
                "gen_ai.usage.output_tokens": usage.get("output_tokens") if response is not None else None,
                "gen_ai.usage.cache_read.input_tokens": usage.get("cache_read_tokens") or None,
                "gen_ai.usage.cache_creation.input_tokens": usage.get("cache_write_tokens") or None,
                "gen_ai.usage.reasoning.output_tokens": usage.get("reasoning_tokens") or None,
                "gen_ai.conversation.id": anchor.session,
                "gen_ai.agent.id": anchor.actor_agent,
                "http.response.status_code": status if isinstance(status, int) else None,
                "error.type": (str(status) if status is not None else "_OTHER") if error else None,
                "gatehouse.interception.id": interception,
                "gatehouse.request.event_id": request.id if request is not None else None,
                "gatehouse.response.event_id": response.id if response is not None else None,
                "gatehouse.provider": provider,
                "gatehouse.route": rq.get("route"),
                "gatehouse.client": rq.get("client"),
                "gatehouse.decision": (response or anchor).decision,
                "gatehouse.actor.user": anchor.actor_user,
                "gatehouse.actor.agent": anchor.actor_agent,
                "gatehouse.actor.token": anchor.actor_token,
                "gatehouse.tool_results": len(rq.get("tool_results") or []) or None,
            }
        )
        events = []
        for call in rs.get("tool_calls") or []:
            events.append(
                SpanEvent(
                    "gen_ai.tool.call",
                    _clean(
                        {
                            "gen_ai.tool.name": call.get("name"),
                            "gen_ai.tool.call.id": call.get("id"),
                            "gen_ai.tool.type": "function",
                            "gen_ai.tool.call.arguments": call.get("arguments"),
                        }
                    ),
                    timestamp=end_us * 1000,
                )
            )
        trace = trace_id(anchor.session or interception)
        parent_interception = rq.get("parent_interception") or (
            request.parent if request is not None else None
        )
        parent = (
            SpanContext(trace, span_id(parent_interception), is_remote=False, trace_flags=_SAMPLED)
            if isinstance(parent_interception, str)
            else None
        )
        failed = anchor.decision == "deny" or (response is not None and response.decision == "error")
        return ReadableSpan(
            name=f"chat {model}" if model else "chat",
            context=SpanContext(trace, span_id(interception), is_remote=False, trace_flags=_SAMPLED),
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            events=events,
            kind=SpanKind.CLIENT,
            status=Status(StatusCode.ERROR, str(error or "denied")[:500])
            if failed
            else Status(StatusCode.UNSET),
            start_time=start_us * 1000,
            end_time=end_us * 1000,
            instrumentation_scope=SCOPE,
        )

    def spans(self, events: Sequence[Event], lookup: EventLookup | None) -> list[ReadableSpan]:
        requests = {e.id: e for e in events if e.kind == "llm.request"}
        missing = [
            e.parent for e in events if e.kind == "llm.response" and e.parent and e.parent not in requests
        ]
        found = dict(lookup([m for m in missing if m])) if (missing and lookup) else {}
        spans = []
        for event in events:
            if event.kind == "llm.response":
                request = requests.get(event.parent or "") or found.get(event.parent or "")
                spans.append(self.span(request, event))
            elif event.kind == "llm.request" and event.decision == "deny":
                spans.append(self.span(event, None))
        return spans


def _input_tokens(provider_name: str | None, usage: Mapping[str, Any]) -> int | None:
    """The conventions count cached input in gen_ai.usage.input_tokens. OpenAI's prompt_tokens already
    does; Anthropic's input_tokens does not, so its cache reads and writes are added."""
    count = usage.get("input_tokens")
    if not isinstance(count, int):
        return None
    if provider_name == "anthropic":
        count += int(usage.get("cache_read_tokens") or 0) + int(usage.get("cache_write_tokens") or 0)
    return count


class OtlpSink(Sink):
    def __init__(
        self,
        name: str,
        settings: OtlpSinkSettings,
        *,
        lookup: EventLookup | None = None,
        provider_types: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, settings.kinds)
        self.settings = settings
        self.encoder = OtlpEncoder(settings, provider_types)
        self.lookup = lookup
        self._closed = False
        headers = {k: v.get_secret_value() for k, v in settings.headers.items()}
        compression = Compression.Gzip if settings.compression == "gzip" else Compression.NoCompression
        certificate = str(settings.certificate_file) if settings.certificate_file else None
        self._logs = (
            OTLPLogExporter(
                endpoint=f"{settings.endpoint}/v1/logs",
                certificate_file=certificate,
                headers=headers,
                timeout=settings.timeout_s,
                compression=compression,
            )
            if settings.logs
            else None
        )
        self._traces = (
            OTLPSpanExporter(
                endpoint=f"{settings.endpoint}/v1/traces",
                certificate_file=certificate,
                headers=headers,
                timeout=settings.timeout_s,
                compression=compression,
            )
            if settings.traces
            else None
        )

    @property
    def destination(self) -> str:
        return f"otlp {self.settings.endpoint}"

    async def send(self, events: Sequence[Event]) -> None:
        await asyncio.to_thread(self._send, events)

    def _send(self, events: Sequence[Event]) -> None:
        if self._logs is not None:
            records = [self.encoder.log_record(e) for e in events]
            if self._logs.export(records) is not LogRecordExportResult.SUCCESS:
                raise SinkError(f"{self.destination}: log export failed")
        if self._traces is not None:
            spans = self.encoder.spans(events, self.lookup)
            if spans and self._traces.export(spans) is not SpanExportResult.SUCCESS:
                raise SinkError(f"{self.destination}: span export failed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for exporter in (self._logs, self._traces):
            if exporter is not None:
                exporter.shutdown()  # type: ignore[no-untyped-call]  # later exports fail (and are retried by a new exporter)
