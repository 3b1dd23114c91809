"""OTLP/HTTP: a receiver started here decodes the protobuf requests with opentelemetry-proto and checks
log records for every event and GenAI spans for LLM interceptions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gatehouse.audit.events import Event
from gatehouse.audit.export.exporter import Exporter
from gatehouse.audit.export.otlp import span_id, trace_id
from gatehouse.audit.export.settings import ExportSettings, OtlpSinkSettings
from gatehouse.store.db import Database
from tests.export.conftest import denied_request, interception, running, wait_until, write


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(items: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in items if isinstance(kv, KeyValue)}


@dataclass
class Collector:
    url: str = ""
    logs: list[tuple[dict[str, Any], LogRecord]] = field(default_factory=list)
    spans: list[tuple[dict[str, Any], Span]] = field(default_factory=list)
    scopes: set[str] = field(default_factory=set)
    encodings: set[str] = field(default_factory=set)

    def span(self, name_or_id: str) -> tuple[dict[str, Any], Span]:
        for a, s in self.spans:
            if a.get("gatehouse.interception.id") == name_or_id:
                return a, s
        raise KeyError(name_or_id)


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    seen = Collector()

    async def body(request: web.Request) -> bytes:
        assert request.content_type == "application/x-protobuf"
        seen.encodings.add(request.headers.get("Content-Encoding", "none"))
        return await request.read()  # aiohttp undoes the Content-Encoding

    async def logs(request: web.Request) -> web.Response:
        message = ExportLogsServiceRequest.FromString(await body(request))
        for resource_logs in message.resource_logs:
            resource = attrs(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                seen.scopes.add(scope_logs.scope.name)
                for record in scope_logs.log_records:
                    seen.logs.append((resource, record))
        reply = ExportLogsServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await body(request))
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    seen.spans.append((attrs(span.attributes), span))
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/logs", logs)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    seen.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield seen
    await runner.cleanup()


def otlp(url: str, **extra: Any) -> ExportSettings:
    sink = OtlpSinkSettings.model_validate(
        {
            "type": "otlp",
            "endpoint": url,
            "timeout_s": 2,
            "resource_attributes": {"deployment": "test"},
            **extra,
        }
    )
    return ExportSettings(sinks={"otel": sink}, retry_initial_s=0.05, retry_max_s=0.2)


async def test_logs_for_every_event_and_genai_spans(store: Database, collector: Collector) -> None:
    tools = [
        {"id": "toolu_1", "name": "read_file", "arguments": '{"path": "a.py"}'},
        {"id": "toolu_2", "name": "bash", "arguments": None},
    ]
    first_request, first_response = interception(tool_calls=tools)
    follow_request, follow_response = interception(
        parent_interception=first_request.id, provider="work", route="chat_completions", model="gpt-5"
    )
    denied = denied_request()
    admin = Event(
        kind="admin.user.create", resource="user:dana", actor_user="u-root", details={"name": "dana"}
    )
    events = write(store, [first_request, first_response, follow_request, follow_response, denied, admin])
    exporter = Exporter(store, otlp(collector.url, compression="gzip"), provider_types={"work": "openai"})
    async with running(exporter):
        await wait_until(lambda: exporter.status["otel"].cursor == 6, what="delivery")

    assert collector.encodings == {"gzip"}
    assert collector.scopes == {"gatehouse.audit.export"}
    # Logs: one record per event, in order, with the envelope as attributes and the event as the body.
    assert len(collector.logs) == 6
    for (resource, record), event in zip(collector.logs, events, strict=True):
        a = attrs(record.attributes)
        assert resource["service.name"] == "gatehouse" and resource["deployment"] == "test"
        assert record.event_name == f"gatehouse.{event.kind}"
        assert record.time_unix_nano == event.ts * 1000
        assert a["gatehouse.event.id"] == event.id
        assert a["gatehouse.event.seq"] == event.seq
        assert a["gatehouse.hash"] == event.hash
        assert orjson.loads(record.body.string_value)["details"] == event.details
    assert [r.severity_text for _, r in collector.logs] == ["INFO", "INFO", "INFO", "INFO", "WARN", "INFO"]
    # llm.* records carry the trace context of their interception's span.
    request_log = collector.logs[0][1]
    assert request_log.trace_id == trace_id("sess-1").to_bytes(16, "big")
    assert request_log.span_id == span_id(first_request.id).to_bytes(8, "big")
    assert collector.logs[1][1].span_id == request_log.span_id  # the response: same span
    assert collector.logs[5][1].trace_id == b""  # an admin event is not part of a trace

    # Spans: one per interception, plus the refused request.
    assert len(collector.spans) == 3
    a, span = collector.span(first_request.id)
    assert span.name == "chat claude-sonnet-5"
    assert span.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert span.start_time_unix_nano == first_request.ts * 1000
    assert span.end_time_unix_nano == first_response.ts * 1000
    assert span.trace_id == trace_id("sess-1").to_bytes(16, "big")
    assert span.parent_span_id == b""
    assert span.status.code == Status.StatusCode.STATUS_CODE_UNSET
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "anthropic"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "claude-sonnet-5"
    assert a["gen_ai.request.max_tokens"] == 1024
    assert a["gen_ai.response.id"] == "msg_01abc"
    assert a["gen_ai.response.finish_reasons"] == ["tool_use"]
    # Anthropic reports input without the cache; the conventions count it in: 100 + 7 read + 3 written.
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (110, 40)
    assert a["gen_ai.usage.cache_read.input_tokens"] == 7
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 3
    assert "gen_ai.usage.reasoning.output_tokens" not in a  # zero: left out
    assert a["gen_ai.conversation.id"] == "sess-1"
    assert a["gen_ai.agent.id"] == "a-bot"
    assert a["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.12)
    assert a["http.response.status_code"] == 200
    calls = [(e.name, attrs(e.attributes)) for e in span.events]
    assert calls == [
        (
            "gen_ai.tool.call",
            {
                "gen_ai.tool.name": "read_file",
                "gen_ai.tool.call.id": "toolu_1",
                "gen_ai.tool.type": "function",
                "gen_ai.tool.call.arguments": '{"path": "a.py"}',
            },
        ),
        (
            "gen_ai.tool.call",
            {"gen_ai.tool.name": "bash", "gen_ai.tool.call.id": "toolu_2", "gen_ai.tool.type": "function"},
        ),
    ]
    # The call that carried the tool results is a child of the one that asked for the tools.
    b, follow = collector.span(follow_request.id)
    assert follow.parent_span_id == span.span_id and follow.trace_id == span.trace_id
    assert b["gen_ai.provider.name"] == "openai"  # provider instance "work" is of type openai
    assert b["gatehouse.provider"] == "work"
    assert b["gen_ai.usage.input_tokens"] == 100  # OpenAI's prompt_tokens already include cached ones
    # The refused request: an error span with the HTTP status as error.type.
    c, refused = collector.span(denied.id)
    assert refused.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert "not allowed" in refused.status.message
    assert c["error.type"] == "403" and c["gen_ai.request.model"] == "gpt-9"
    assert refused.start_time_unix_nano == refused.end_time_unix_nano == denied.ts * 1000


async def test_a_response_whose_request_went_in_an_earlier_batch(
    store: Database, collector: Collector
) -> None:
    request, response = interception()
    write(store, [request])
    exporter = Exporter(store, otlp(collector.url, logs=False))
    async with running(exporter):
        await wait_until(lambda: exporter.status["otel"].cursor == 1, what="the request")
        assert collector.spans == []  # an allowed request alone is not a span yet
    write(store, [response])
    exporter = Exporter(store, otlp(collector.url, logs=False))  # a restart, too: the cursor persisted
    async with running(exporter):
        await wait_until(lambda: len(collector.spans) == 1, what="the span")
    a, span = collector.spans[0]
    assert span.start_time_unix_nano == request.ts * 1000  # read back from the store
    assert a["gen_ai.request.model"] == "claude-sonnet-5" and a["gen_ai.request.stream"] is True
    assert collector.logs == []


async def test_an_unreachable_collector_is_retried(store: Database, collector: Collector) -> None:
    write(store, list(interception()))
    down = otlp("http://127.0.0.1:9", timeout_s=0.5)
    exporter = Exporter(store, down)
    async with running(exporter):
        await wait_until(lambda: exporter.status["otel"].failures >= 2, what="retries")
    assert exporter.status["otel"].cursor == 0 and exporter.status["otel"].up is False
