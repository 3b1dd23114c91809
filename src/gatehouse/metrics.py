"""Prometheus metrics, derived from the audit trail.

Request, token, latency and denial metrics come from committed events through an AuditWriter observer, so
the proxy's hot path does no metrics work of its own and the numbers agree with the trail. Gauges that
describe the present (audit queue depth, writer health, export lag per sink) are read when scraped.

Labels are low-cardinality by default: provider, route, status, decision, model (as answered by the
upstream), token type, denial reason. Per-user series (`gatehouse_llm_user_*`) exist only with
`metrics.per_user = true`. Free-text label values (models, reasons) are capped: past 200 distinct values a
label reads `other`.

`/metrics` needs `Authorization: Bearer <token>` by default: the static `metrics.token` (for Prometheus'
`authorization.credentials_file`), or a Gatehouse token of an owner, admin or auditor. `metrics.auth =
"none"` serves it openly, for a port that only the monitoring network reaches. docs/metrics.md lists
every metric.
"""

from __future__ import annotations

import bisect
import collections
import hmac
import itertools
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from gatehouse import __version__
from gatehouse.audit import journal
from gatehouse.audit.events import llm_model, llm_provider

if TYPE_CHECKING:
    from gatehouse.audit.events import Event
    from gatehouse.audit.export.exporter import Exporter
    from gatehouse.audit.writer import AuditWriter
    from gatehouse.identity.service import IdentityService

log = logging.getLogger(__name__)

TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
_USAGE_KEYS = tuple((token_type, f"{token_type}_tokens") for token_type in TOKEN_TYPES)
READER_ROLES = ("owner", "admin", "auditor")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_STATUS_REASONS = {
    400: "invalid_request",
    401: "authentication",
    403: "permission",
    404: "not_found",
    413: "too_large",
    429: "rate_limit",
    503: "unavailable",
}
_MAX_LABEL_VALUES = 200
_PENDING_REQUESTS = 50_000
_CACHED_LABELS = 4096
_NUMBER = (int, float)  # a tuple: `int | float` in isinstance builds a union on every call


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_\-/.]*$")] = "/metrics"
    # `token`: a bearer token is required (metrics.token, or a Gatehouse token of an owner, admin or
    # auditor). `none`: anyone who reaches the port may scrape.
    auth: Literal["token", "none"] = "token"
    token: SecretStr | None = None
    # Series per user and agent (gatehouse_llm_user_*): one series per identity, so off by default.
    per_user: bool = False

    @field_validator("token", mode="before")
    @classmethod
    def _resolve_secret(cls, value: Any, info: ValidationInfo) -> Any:
        from gatehouse.config import resolve_secret_reference

        environ = (info.context or {}).get("environ", os.environ)
        return resolve_secret_reference(value, environ) if isinstance(value, str) else value


_UNSAFE = re.compile(r"[^a-z0-9_.:/\-]+")
_cleaned: dict[Any, str] = {}  # label texts repeat (kinds, routes, statuses): clean each one once


def label_value(text: Any, default: str = "unknown") -> str:
    """A label value from free text: lower case, [a-z0-9_.:/-], at most 64 characters."""
    if text is None or text == "":
        return default
    key = text if type(text) is str else (type(text), text)  # True == 1, but labels "true" and "1"
    cleaned = _cleaned.get(key)
    if cleaned is None:
        cleaned = _UNSAFE.sub("_", str(text).strip().lower()).strip("_")[:64]
        if len(_cleaned) < 10_000:
            _cleaned[key] = cleaned
    return cleaned or default


class _Capped:
    """Remembers which values a free-text label has taken; past the cap, new ones become `other`."""

    def __init__(self, cap: int = _MAX_LABEL_VALUES) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.cap:
            return "other"
        self.seen.add(value)
        return value


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: a tally's dict key, every event
class _Family:
    """A counter or histogram family tallied by the observer and exposed at scrape time."""

    name: str
    doc: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds (without +Inf); none for a counter


REQUESTS = _Family(
    "gatehouse_llm_requests",
    "Calls through the Bridge, by provider instance, route, HTTP status and decision.",
    ("provider", "route", "status", "decision"),
)
TOKENS = _Family(
    "gatehouse_llm_tokens",
    "Tokens reported by upstreams, by provider, model and type.",
    ("provider", "model", "type"),
)
DURATION = _Family(
    "gatehouse_llm_request_duration_seconds",
    "Time from receiving an LLM call to its last byte.",
    ("provider", "route"),
    LATENCY_BUCKETS,
)
TTFT = _Family(
    "gatehouse_llm_time_to_first_token_seconds",
    "Time from receiving a streamed LLM call to its first token.",
    ("provider", "route"),
    TTFT_BUCKETS,
)
DENIALS = _Family("gatehouse_denials", "Refused actions, by event kind and reason.", ("kind", "reason"))
COMMIT_SECONDS = _Family(
    "gatehouse_audit_commit_duration_seconds",
    "Time to write one group commit of audit events.",
    (),
    COMMIT_BUCKETS,
)
COMMIT_EVENTS = _Family("gatehouse_audit_commit_events", "Events per group commit.", (), BATCH_BUCKETS)
COMMITTED = _Family(
    "gatehouse_audit_events_committed", "Audit events committed by this process, by kind.", ("kind",)
)
USER_REQUESTS = _Family(
    "gatehouse_llm_user_requests",
    "LLM calls per user and agent (metrics.per_user).",
    ("user", "agent", "decision"),
)
USER_TOKENS = _Family(
    "gatehouse_llm_user_tokens", "Tokens per user and agent (metrics.per_user).", ("user", "agent", "type")
)


def _empty(family: _Family) -> Any:
    """A series' starting value: 0 for a counter; for a histogram, a zero per bucket and +Inf, and the sum."""
    return [0] * (len(family.buckets) + 1) + [0.0] if family.buckets else 0


@dataclass(frozen=True, slots=True)
class _CallLabels:
    """The label values of an answered LLM call's series."""

    requests: tuple[str, str, str, str]  # provider, route, status, decision
    timing: tuple[str, str]  # provider, route
    tokens: tuple[tuple[tuple[str, str, str], str], ...]  # (provider, model, type), usage key: per type


class _Tally:
    """The observed values of some families, as plain numbers. prometheus_client's metric objects take a
    lock and validate labels on every update, a cost paid per event on the serving loop; here an update is
    a dict lookup and an addition, and the families are built when scraped. The caller serialises updates
    and `collect` (`Metrics._lock`)."""

    def __init__(self, families: Sequence[_Family]) -> None:
        self.families = tuple(families)
        # family -> label values -> count (counter) or [per-bucket counts..., +Inf count, sum] (histogram)
        self.series: dict[_Family, dict[tuple[str, ...], Any]] = {f: {} for f in families}
        for family in families:
            if not family.labels:  # a family without labels has its one series from the start, at zero
                self.series[family][()] = _empty(family)

    def add(self, family: _Family, labels: tuple[str, ...], amount: float = 1) -> None:
        series = self.series[family]
        series[labels] = series.get(labels, 0) + amount

    def observe(self, family: _Family, labels: tuple[str, ...], value: float) -> None:
        series = self.series[family]
        counts = series.get(labels)
        if counts is None:
            counts = series[labels] = _empty(family)
        counts[bisect.bisect_left(family.buckets, value)] += 1  # le: value <= bound
        counts[-1] += value

    def collect(self) -> list[Metric]:
        metrics: list[Metric] = []
        for family in self.families:
            metric: CounterMetricFamily | HistogramMetricFamily
            if not family.buckets:
                metric = CounterMetricFamily(family.name, family.doc, labels=family.labels)
                for labels, value in self.series[family].items():
                    metric.add_metric(labels, value)
            else:
                metric = HistogramMetricFamily(family.name, family.doc, labels=family.labels)
                bounds = [*map(floatToGoString, family.buckets), "+Inf"]
                for labels, counts in self.series[family].items():
                    cumulative = list(itertools.accumulate(counts[:-1]))
                    metric.add_metric(labels, list(zip(bounds, cumulative, strict=True)), counts[-1])
            metrics.append(metric)
        return metrics


class Metrics:
    """The metrics of one Gatehouse process, in their own registry (not prometheus_client's global one)."""

    def __init__(
        self,
        settings: MetricsSettings | None = None,
        *,
        writer: AuditWriter | None = None,
        exporter: Exporter | None = None,
        identity: IdentityService | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings or MetricsSettings()
        self.writer = writer
        self.exporter = exporter
        self.identity = identity
        self.registry = registry or CollectorRegistry(auto_describe=True)
        Info("gatehouse_build", "Gatehouse version.", registry=self.registry).info({"version": __version__})
        families = [REQUESTS, TOKENS, DURATION, TTFT, DENIALS, COMMIT_SECONDS, COMMIT_EVENTS, COMMITTED]
        self.per_user = self.settings.per_user
        if self.per_user:
            families += [USER_REQUESTS, USER_TOKENS]
        self._tally = _Tally(families)
        self.registry.register(_TallyCollector(self))
        self.registry.register(_LiveCollector(self))
        self._models = _Capped()
        self._reasons = _Capped()
        self._kinds = _Capped()
        self._providers = _Capped()
        self._lock = threading.Lock()
        # llm.request id -> (provider, route, model) as the request gave them, until its llm.response arrives.
        self._pending: collections.OrderedDict[str, tuple[Any, Any, Any]] = collections.OrderedDict()
        # What an event's labels are, computed once per distinct source: label cleaning, capping and tuple
        # building cost more than the counting itself, and nearly every event repeats an earlier one's.
        self._kind_labels: dict[str, tuple[str]] = {}
        self._call_labels: dict[tuple[Any, ...], _CallLabels] = {}

    # -- the writer observer -------------------------------------------------------------------------

    def observer(self, events: Sequence[Event], seconds: float) -> None:
        """An AuditWriter observer: called after each commit (on the loop or the writer thread)."""
        with self._lock:
            self._tally.observe(COMMIT_SECONDS, (), seconds)
            self._tally.observe(COMMIT_EVENTS, (), len(events))
            for event in events:
                try:
                    self._observe(event)
                except Exception:  # a malformed event must not stop the metrics
                    log.exception("metrics: cannot read event %s", event.kind)

    def _observe(self, event: Event) -> None:
        tally = self._tally
        kind = event.kind
        labels = self._kind_labels.get(kind)
        if labels is None:
            labels = (self._kinds(label_value(kind)),)
            if len(self._kind_labels) < _CACHED_LABELS:
                self._kind_labels[kind] = labels
        committed = tally.series[COMMITTED]
        committed[labels] = committed.get(labels, 0) + 1
        details = event.details
        if kind == "llm.request":
            if event.decision == "deny":
                provider = self._providers(
                    label_value(details.get("provider") or llm_provider(event.resource))
                )
                route = label_value(details.get("route"))
                status = details.get("status")
                tally.add(REQUESTS, (provider, route, label_value(status), "deny"))
                reason = (
                    _STATUS_REASONS.get(status, f"status_{status}") if isinstance(status, int) else "denied"
                )
                policy = details.get("policy")
                if isinstance(policy, dict) and policy.get("decision") == "deny":
                    reason = f"policy_{reason}"  # a template, limit or budget refused it
                tally.add(DENIALS, (kind, self._reasons(reason)))
                self._per_user(event, "deny", None)
            else:
                provider_text = details.get("provider") or llm_provider(event.resource)
                self._pending[event.id] = (provider_text, details.get("route"), details.get("model"))
                if len(self._pending) > _PENDING_REQUESTS:
                    self._pending.popitem(last=False)
        elif kind == "llm.response":
            key = (
                self._pending.pop(event.parent or "", None),
                event.resource,
                details.get("status"),
                event.decision,
                details.get("model"),
            )
            call = self._call_labels.get(key) or self._labels_of_call(key)
            series = tally.series
            requests = series[REQUESTS]
            requests[call.requests] = requests.get(call.requests, 0) + 1
            latency = details.get("latency_ms")
            if isinstance(latency, _NUMBER):
                tally.observe(DURATION, call.timing, latency / 1000)
            ttft = details.get("ttft_ms")
            if isinstance(ttft, _NUMBER):
                tally.observe(TTFT, call.timing, ttft / 1000)
            usage = details.get("usage") or {}
            tokens = series[TOKENS]
            for token_labels, usage_key in call.tokens:
                count = usage.get(usage_key)
                if count and isinstance(count, int) and count > 0:
                    tokens[token_labels] = tokens.get(token_labels, 0) + count
            if self.per_user:
                self._per_user(event, event.decision, usage)
        elif kind == "llm.api":
            provider = self._providers(label_value(details.get("provider") or llm_provider(event.resource)))
            route = label_value(details.get("route"))
            tally.add(REQUESTS, (provider, route, label_value(details.get("status")), event.decision))
        elif kind == "auth.failure":
            provider = self._providers(label_value(llm_provider(event.resource)))
            tally.add(REQUESTS, (provider, label_value(details.get("route")), "401", "deny"))
            tally.add(DENIALS, (kind, self._reasons(label_value(details.get("reason"), "denied"))))
        elif event.decision == "deny":
            reason = self._reasons(label_value(details.get("reason"), "denied"))
            tally.add(DENIALS, (self._kinds(label_value(kind)), reason))

    def _labels_of_call(self, key: tuple[Any, ...]) -> _CallLabels:
        """The labels of an answered call: (its request's provider, route and model, or None if this process
        did not see the request; the response's resource, status, decision and model)."""
        request, resource, status, decision, answered_model = key
        if request is not None:
            provider_text, route_text, requested_model = request
            provider, route = self._providers(label_value(provider_text)), label_value(route_text)
        else:
            provider, route = self._providers(label_value(llm_provider(resource))), "unknown"
            requested_model = None
        model = self._models(label_value(answered_model or requested_model or llm_model(resource)))
        call = _CallLabels(
            (provider, route, label_value(status), decision),
            (provider, route),
            tuple(((provider, model, token_type), usage_key) for token_type, usage_key in _USAGE_KEYS),
        )
        if len(self._call_labels) >= _CACHED_LABELS:
            self._call_labels.clear()
        self._call_labels[key] = call
        return call

    def _per_user(self, event: Event, decision: str, usage: Mapping[str, Any] | None) -> None:
        if not self.per_user:
            return
        user, agent = event.actor_user or "none", event.actor_agent or "none"
        self._tally.add(USER_REQUESTS, (user, agent, decision))
        for token_type, usage_key in _USAGE_KEYS:
            count = (usage or {}).get(usage_key)
            if isinstance(count, int) and count > 0:
                self._tally.add(USER_TOKENS, (user, agent, token_type), count)

    def collect_tally(self) -> list[Metric]:
        with self._lock:
            return self._tally.collect()

    # -- exposition ----------------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def authorize(self, request: web.Request) -> web.Response | None:
        """None if the scrape may proceed, else the error response to send."""
        if self.settings.auth == "none":
            return None
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="gatehouse-metrics"'}
        if scheme.lower() != "bearer" or not credential:
            return web.Response(status=401, text="send a bearer token\n", headers=challenge)
        token = self.settings.token
        if token is not None and hmac.compare_digest(credential.encode(), token.get_secret_value().encode()):
            return None
        if self.identity is not None:
            from gatehouse.identity.service import AuthError

            try:
                principal = await self.identity.authenticate(credential)
            except AuthError:
                return web.Response(status=401, text="unknown, expired or revoked token\n", headers=challenge)
            if principal.role in READER_ROLES:
                return None
            return web.Response(status=403, text=f"role {principal.role!r} may not read metrics\n")
        return web.Response(status=401, text="invalid token\n", headers=challenge)


class _TallyCollector:
    """The observer's counters and histograms, built when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics.collect_tally()


class _LiveCollector:
    """Values read at scrape time from the running writer and exporter."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # unchecked collector: its series vary with the configured sinks

    def collect(self) -> Iterator[Any]:
        writer = self.metrics.writer
        if writer is not None:
            yield GaugeMetricFamily(
                "gatehouse_audit_queue_depth",
                "Audit events appended but not yet committed.",
                value=writer.queue_depth,
            )
            yield GaugeMetricFamily(
                "gatehouse_audit_journal_backlog_bytes",
                "Audit journal bytes acknowledged but not yet chained into the log.",
                value=journal.backlog_bytes(writer.db),
            )
            yield GaugeMetricFamily(
                "gatehouse_audit_writer_healthy",
                "1 while the audit store accepts writes, 0 while it fails.",
                value=1 if writer.healthy else 0,
            )
        exporter = self.metrics.exporter
        if exporter is not None:
            lag = GaugeMetricFamily(
                "gatehouse_export_lag_events",
                "Events written but not yet delivered, per sink.",
                labels=["sink"],
            )
            up = GaugeMetricFamily(
                "gatehouse_export_up",
                "1 if the sink's last delivery succeeded, 0 if it failed.",
                labels=["sink"],
            )
            delivered = CounterMetricFamily(
                "gatehouse_export_delivered_events",
                "Events delivered by this process, per sink.",
                labels=["sink"],
            )
            failures = CounterMetricFamily(
                "gatehouse_export_failures", "Failed delivery attempts, per sink.", labels=["sink"]
            )
            skipped = CounterMetricFamily(
                "gatehouse_export_skipped_events",
                "Events deleted by retention before they reached the sink, per sink.",
                labels=["sink"],
            )
            lags = exporter.lag()
            for name, status in exporter.status.items():
                if name in lags:
                    lag.add_metric([name], lags[name])
                if status.up is not None:
                    up.add_metric([name], 1 if status.up else 0)
                delivered.add_metric([name], status.delivered)
                failures.add_metric([name], status.failures_total)
                skipped.add_metric([name], status.skipped)
            yield from (lag, up, delivered, failures, skipped)


METRICS = web.AppKey("metrics", Metrics)


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    metrics = request.app[METRICS]
    refused = await metrics.authorize(request)
    if refused is not None:
        return refused
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_metrics_route(app: web.Application, metrics: Metrics) -> None:
    """Serve `metrics.settings.path` (default /metrics) on `app`, if metrics are enabled."""
    if not metrics.settings.enabled:
        return
    app[METRICS] = metrics
    app.router.add_get(metrics.settings.path, handle_metrics)
