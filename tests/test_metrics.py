"""Prometheus metrics from a real stack: requests through the Bridge, scraped from /metrics and parsed with
the Prometheus text parser; the numbers agree with what the trail recorded."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from gatehouse.audit.events import Event
from gatehouse.audit.export.exporter import Exporter
from gatehouse.audit.export.settings import ExportSettings, JsonlSinkSettings
from gatehouse.identity.service import Actor
from gatehouse.metrics import Metrics, MetricsSettings, add_metrics_route
from gatehouse.serving import serve_in_thread
from gatehouse.store.db import Database
from tests.gateway.conftest import Stack, StackFactory, make_stack, simulator  # noqa: F401 - fixtures

MODEL = "claude-sonnet-5"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Scrape:
    samples: Samples
    text: str

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum over series whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def labels(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for (n, ls), _ in self.samples.items() if n == name]


def scrape(url: str, token: str | None = None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parsed(response.text)


def parsed(text: str) -> Scrape:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return Scrape(samples, text)


@pytest.fixture
def metrics_stack(make_stack: StackFactory) -> Iterator[tuple[Stack, Metrics, str]]:  # noqa: F811
    stack = make_stack(anthropic_models=["claude-*"])
    metrics = Metrics(MetricsSettings(auth="none"), writer=stack.gh.writer, identity=stack.gh.identity)
    stack.gh.writer.observers.append(metrics.observer)

    def app() -> web.Application:
        application = web.Application()
        add_metrics_route(application, metrics)
        return application

    with serve_in_thread(app) as url:
        yield stack, metrics, url


def drive(stack: Stack) -> None:
    claude = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    claude.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hello"}])
    with claude.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "stream please"}]
    ) as stream:
        "".join(stream.text_stream)
    gpt = openai.OpenAI(base_url=stack.openai_url, api_key=stack.token, max_retries=0)
    gpt.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.PermissionDeniedError):  # not in anthropic_models: refused, recorded
        claude.messages.create(model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    bad = anthropic.Anthropic(base_url=stack.anthropic_url, api_key="gth_" + "x" * 40, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])


def test_request_token_latency_and_denial_metrics(metrics_stack: tuple[Stack, Metrics, str]) -> None:
    stack, _, url = metrics_stack
    drive(stack)
    m = scrape(url)

    ok = {"decision": "allow", "status": "200"}
    assert m.value("gatehouse_llm_requests_total", provider="anthropic", route="messages", **ok) == 2
    assert m.value("gatehouse_llm_requests_total", provider="openai", route="chat_completions", **ok) == 1
    deny = {"provider": "anthropic", "route": "messages", "decision": "deny"}
    assert m.value("gatehouse_llm_requests_total", status="403", **deny) == 1
    assert m.value("gatehouse_llm_requests_total", status="401", **deny) == 1
    assert m.value("gatehouse_denials_total", kind="llm.request", reason="permission") == 1
    assert m.value("gatehouse_denials_total", kind="auth.failure", reason="unknown_token") == 1

    # Tokens agree with the interceptions the trail recorded.
    rows = stack.interceptions()
    for provider, model in (("anthropic", MODEL), ("openai", "gpt-5")):
        mine = [r for r in rows if r["provider"] == provider and r["status"] == 200]
        for token_type in ("input", "output"):
            expected = sum(r[f"{token_type}_tokens"] for r in mine)
            assert expected > 0
            got = m.value("gatehouse_llm_tokens_total", provider=provider, model=model, type=token_type)
            assert got == expected, (provider, token_type)
    assert all(series["model"] != "gpt-4o" for series in m.labels("gatehouse_llm_tokens_total"))

    labels = {"provider": "anthropic", "route": "messages"}
    assert m.value("gatehouse_llm_request_duration_seconds_count", **labels) == 2
    latency = sum(r["latency_ms"] for r in rows if r["provider"] == "anthropic" and r["status"] == 200)
    assert m.value("gatehouse_llm_request_duration_seconds_sum", **labels) == pytest.approx(latency / 1000)
    assert m.value("gatehouse_llm_time_to_first_token_seconds_count", **labels) == 1  # the streamed one
    assert m.value("gatehouse_llm_request_duration_seconds_bucket", le="+Inf", **labels) == 2

    # The audit writer: commits observed, events counted by kind, live gauges read at scrape time.
    assert m.value("gatehouse_audit_events_committed_total", kind="llm.response") == 3
    assert m.value("gatehouse_audit_events_committed_total", kind="auth.failure") == 1
    assert m.value("gatehouse_audit_commit_duration_seconds_count") >= 3
    assert m.value("gatehouse_audit_commit_events_sum") == m.total("gatehouse_audit_events_committed_total")
    assert m.value("gatehouse_audit_queue_depth") == 0
    assert m.value("gatehouse_audit_writer_healthy") == 1
    assert m.value("gatehouse_build_info", version="0.1.0") == 1
    # Low cardinality by default: no per-user series, no user or session labels anywhere.
    assert "gatehouse_llm_user_" not in m.text
    assert not any("user" in dict(ls) or "session" in dict(ls) for (_, ls) in m.samples)


async def test_per_user_series_and_sink_lag(tmp_path: Path) -> None:
    from gatehouse.store.db import Database
    from gatehouse.store.migrations import migrate
    from tests.export.conftest import interception, running, wait_until, write

    db = Database(f"sqlite:///{tmp_path / 'g.db'}")
    migrate(db)
    try:
        export = ExportSettings(
            sinks={
                "file": JsonlSinkSettings(type="jsonl", path=tmp_path / "a.jsonl", fsync=False),
                "down": JsonlSinkSettings(type="jsonl", path=tmp_path / "missing" / "dir" / "x", fsync=False),
            },
            retry_initial_s=0.05,
            retry_max_s=0.1,
        )
        (tmp_path / "missing").write_text("a file where a directory should be: the sink cannot write")
        exporter = Exporter(db, export)
        metrics = Metrics(MetricsSettings(per_user=True), exporter=exporter)
        request, response = interception()
        events: list[Event] = [request, response]
        write(db, events)
        metrics.observer(events, 0.001)
        async with running(exporter):
            await wait_until(lambda: exporter.status["file"].cursor == 2, what="delivery")
            await wait_until(lambda: exporter.status["down"].failures >= 2, what="failures")
            body, _ = metrics.render()
    finally:
        db.close()
    m = parsed(body.decode())
    user = {"user": "u-alice", "agent": "a-bot"}
    assert m.value("gatehouse_llm_user_requests_total", decision="allow", **user) == 1
    assert m.value("gatehouse_llm_user_tokens_total", type="input", **user) == 100
    assert m.value("gatehouse_llm_user_tokens_total", type="cache_read", **user) == 7
    assert m.value("gatehouse_export_lag_events", sink="file") == 0
    assert m.value("gatehouse_export_lag_events", sink="down") == 2
    assert m.value("gatehouse_export_up", sink="file") == 1
    assert m.value("gatehouse_export_up", sink="down") == 0
    assert m.value("gatehouse_export_delivered_events_total", sink="file") == 2
    assert m.value("gatehouse_export_failures_total", sink="down") >= 2


def test_metrics_require_a_token_by_default(make_stack: StackFactory) -> None:  # noqa: F811
    stack = make_stack()
    member = stack.token  # alice: role member
    settings = MetricsSettings(token=SecretStr("scrape-secret"))
    metrics = Metrics(settings, writer=stack.gh.writer, identity=stack.gh.identity)
    stack.gh.identity.create_user("ines", role="auditor", actor=Actor())
    _, auditor_token = stack.gh.identity.create_token(user="ines", actor=Actor())

    def app() -> web.Application:
        application = web.Application()
        add_metrics_route(application, metrics)
        return application

    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics").headers["WWW-Authenticate"].startswith("Bearer")
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {member}"}).status_code == 403
        scrape(url, "scrape-secret")  # the static token (Prometheus credentials_file)
        scrape(url, stack.admin_token)  # a Gatehouse admin
        scrape(url, auditor_token)  # or auditor


def test_disabled_metrics_add_no_route() -> None:
    app = web.Application()
    add_metrics_route(app, Metrics(MetricsSettings(enabled=False)))
    assert [r.resource.canonical for r in app.router.routes() if r.resource is not None] == []


async def test_the_journal_backlog_is_a_gauge(store: Database) -> None:
    """What the journal holds that is not in the log yet, in bytes, at scrape time."""
    from gatehouse.audit import journal
    from gatehouse.audit.writer import AuditWriter

    writer = AuditWriter(store, journal=True)
    writer.start()
    try:
        metrics = Metrics(MetricsSettings(), writer=writer)
        assert parsed(metrics.render()[0].decode()).value("gatehouse_audit_journal_backlog_bytes") == 0
        await writer.append(Event(kind="test.one"), Event(kind="test.two"))
        directory, taken = journal.journal_dir(store), writer._journal
        assert directory is not None and taken is not None
        size = (directory / f"{taken.segment:012d}.seg").stat().st_size
        backlog = parsed(metrics.render()[0].decode()).value("gatehouse_audit_journal_backlog_bytes")
        assert size > 0 and backlog == size
        assert journal.drain_all(store) == 2
        assert parsed(metrics.render()[0].decode()).value("gatehouse_audit_journal_backlog_bytes") == 0
    finally:
        writer.close()


def test_the_grafana_dashboard_uses_only_metrics_that_exist(tmp_path: Path) -> None:
    from gatehouse.audit.writer import AuditWriter
    from gatehouse.store.db import Database
    from gatehouse.store.migrations import migrate

    db = Database(f"sqlite:///{tmp_path / 'g.db'}")
    migrate(db)
    exporter = Exporter(
        db, ExportSettings(sinks={"f": JsonlSinkSettings(type="jsonl", path=tmp_path / "f.jsonl")})
    )
    exporter.status["f"].cursor, exporter.status["f"].up = 0, True
    metrics = Metrics(MetricsSettings(), writer=AuditWriter(db), exporter=exporter)
    families = {family.name for family in metrics.registry.collect()}  # with or without samples yet
    db.close()
    dashboard = orjson.loads(
        (Path(__file__).parents[1] / "deploy" / "grafana" / "gatehouse.json").read_bytes()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"gatehouse_[a-z_]+", e)}
    assert len(exprs) > 20 and len(used) > 10
    missing = {n for n in used if re.sub(r"_(total|bucket|sum|count)$", "", n) not in families}
    assert not missing, missing
    text = metrics.render()[0].decode()
    for name in ("gatehouse_llm_requests_total", "gatehouse_llm_tokens_total", "gatehouse_denials_total"):
        assert f"# TYPE {name} counter" in text  # declared even before the first sample


def test_denial_reasons_and_capped_labels() -> None:
    from tests.export.conftest import interception

    metrics = Metrics(MetricsSettings())
    budget = Event(
        kind="llm.request",
        decision="deny",
        resource="llm:anthropic/claude-sonnet-5",
        details={"route": "messages", "provider": "anthropic", "status": 429, "policy": {"decision": "deny"}},
    )
    tool = Event(kind="mcp.tool.call", decision="deny", details={"reason": "Not On The Allow List!"})
    responses = []
    for i in range(210):  # a client cycling through model names cannot blow up the series count
        _, response = interception(model=f"model-{i}")
        responses.append(response)
    metrics.observer([budget, tool, *responses], 0.002)
    samples: Samples = {}
    for family in text_string_to_metric_families(metrics.render()[0].decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    m = Scrape(samples, "")
    assert m.value("gatehouse_denials_total", kind="llm.request", reason="policy_rate_limit") == 1
    assert m.value("gatehouse_denials_total", kind="mcp.tool.call", reason="not_on_the_allow_list") == 1
    models = {series["model"] for series in m.labels("gatehouse_llm_tokens_total")}
    assert len(models) == 201 and "other" in models
    assert (
        m.value("gatehouse_llm_tokens_total", provider="anthropic", model="other", type="input") == 10 * 100
    )
    # Responses whose request this process did not see still count, under route "unknown".
    assert (
        m.value(
            "gatehouse_llm_requests_total",
            provider="anthropic",
            route="unknown",
            status="200",
            decision="allow",
        )
        == 210
    )


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_histograms_expose_what_prometheus_client_would() -> None:
    """The observer tallies histograms itself (cheaper per event); the exposition must be the library's:
    `le` inclusive, cumulative buckets, +Inf, count and sum."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from gatehouse.metrics import BATCH_BUCKETS, COMMIT_BUCKETS, COMMIT_EVENTS, COMMIT_SECONDS

    values = [0.0, 0.0001, 0.00011, 0.001, 0.0025, 0.3, 2.5, 2.6, 1e9]  # on, between and beyond the bounds
    metrics = Metrics(MetricsSettings())
    reference = CollectorRegistry()
    seconds = Histogram(COMMIT_SECONDS.name, COMMIT_SECONDS.doc, buckets=COMMIT_BUCKETS, registry=reference)
    events = Histogram(COMMIT_EVENTS.name, COMMIT_EVENTS.doc, buckets=BATCH_BUCKETS, registry=reference)
    for i, value in enumerate(values):
        metrics.observer([Event(kind="admin.user.create")] * i, value)
        seconds.observe(value)
        events.observe(i)
    ours = _samples(metrics.render()[0].decode())
    theirs = _samples(generate_latest(reference).decode())
    assert theirs and all(ours[key] == value for key, value in theirs.items()), (ours, theirs)
    assert ours[("gatehouse_audit_events_committed_total", frozenset({("kind", "admin.user.create")}))] == 36
