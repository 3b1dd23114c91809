"""The policy engine: may this token make this call, and which rule says so?

Templates are compiled once into decision tables (patterns with the rule each came from, limits with
their counters) and every (provider, model) answer is memoised, so deciding a call is a few dict lookups.
The compiled state is swapped whole when the store's policy version moves past it: the version is read
with the token lookup, so every replica notices a change at its next request, with no polling and no
extra query.

For a call that passes the rules, `admit` reserves its maximum cost on every budget and rate limit that
applies (the template's, the team's), all or none; the Bridge settles the reservation on the real usage
when the call ends (`settle`). Threshold crossings become `policy.budget.threshold` events (and webhook
notifications when configured).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

from gatehouse.audit.events import Event, now_us
from gatehouse.bridge.facts import RequestFacts, Usage
from gatehouse.identity.service import Principal
from gatehouse.policy.budgets import (
    MINUTE,
    NANO_PER_USD,
    ROLLING_BUCKETS,
    Calendar,
    LimitRule,
    Rule,
    budget_window,
)
from gatehouse.policy.counters import (
    Alert,
    Charge,
    Counters,
    MemoryCounters,
    NeedsInit,
    RedisCounters,
    Refused,
)
from gatehouse.policy.prices import Price, PriceBook
from gatehouse.policy.settings import PolicySettings
from gatehouse.policy.templates import LoadedTemplate, stored_template
from gatehouse.store.db import Database

if TYPE_CHECKING:
    from gatehouse.audit.projector import Projector
    from gatehouse.audit.writer import AuditWriter
    from gatehouse.config import ProviderSettings

log = logging.getLogger(__name__)
_MEMO_LIMIT = 4096


class PolicyRefusal(Exception):
    """The call is refused by policy. `kind` is a Bridge error kind (`permission` 403, `rate_limit` 429)."""

    def __init__(
        self,
        kind: str,
        message: str,
        rule: Rule | None,
        *,
        retry_after_s: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.rule = rule
        self.retry_after_s = retry_after_s
        self.details: dict[str, Any] = {
            **(details or {}),
            "decision": "deny",
            "rule": str(rule) if rule else None,
        }
        if retry_after_s is not None:
            self.details["retry_after_s"] = math.ceil(retry_after_s)

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after_s)))}


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: Rule


Patterns = tuple[tuple[str, Rule], ...]


def _matches(pattern: str, provider: str, model: str) -> bool:
    return fnmatchcase(f"{provider}/{model}" if "/" in pattern else model, pattern)


class CompiledTemplate:
    """One template as decision tables. Deny rules are checked first and win; then the first allow rule
    that matches; nothing matching is a deny (deny by default)."""

    def __init__(self, template: LoadedTemplate, version: int) -> None:
        doc = template.document
        self.name = template.name
        self.version = version
        self.source = template.source
        self.template = template

        def rules(section: str, verb: str) -> Patterns:
            items = (doc.get(section) or {}).get(verb) or []
            return tuple(
                (p, Rule(template.source, template.line(section, verb, i), f'{verb} {section} "{p}"'))
                for i, p in enumerate(items)
            )

        providers = doc.get("providers")
        self.providers_allow: Patterns | None = (
            rules("providers", "allow") if isinstance(providers, dict) and "allow" in providers else None
        )
        self.providers_deny = rules("providers", "deny")
        self.models_allow = rules("models", "allow")
        self.models_deny = rules("models", "deny")
        self._no_model = (template.line("models", "allow") or template.line("models"), "models")
        self._no_provider = (template.line("providers", "allow") or template.line("providers"), "providers")
        self.max_tokens: int | None = doc.get("max_tokens_per_request")
        self.max_tokens_rule = Rule(
            template.source,
            template.line("max_tokens_per_request"),
            f"max_tokens_per_request {self.max_tokens}",
        )
        self.limits = tuple(_template_limits(template))
        self._memo: dict[tuple[str, str], Verdict] = {}

    def decide(self, provider: str, model: str) -> Verdict:
        key = (provider, model)
        verdict = self._memo.get(key)
        if verdict is None:
            verdict = self._decide(provider, model)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = verdict
        return verdict

    def _decide(self, provider: str, model: str) -> Verdict:
        for pattern, rule in self.providers_deny:
            if fnmatchcase(provider, pattern):
                return Verdict(False, rule)
        if self.providers_allow is not None and not any(
            fnmatchcase(provider, p) for p, _ in self.providers_allow
        ):
            line, _ = self._no_provider
            return Verdict(
                False,
                Rule(self.source, line, f'providers: no allow rule matches "{provider}" (deny by default)'),
            )
        for pattern, rule in self.models_deny:
            if _matches(pattern, provider, model):
                return Verdict(False, rule)
        for pattern, rule in self.models_allow:
            if _matches(pattern, provider, model):
                return Verdict(True, rule)
        line, _ = self._no_model
        return Verdict(
            False, Rule(self.source, line, f'models: no allow rule matches "{model}" (deny by default)')
        )


def _template_limits(t: LoadedTemplate) -> list[LimitRule]:
    doc = t.document
    owner = f"template:{t.name}"
    out = []
    for i, b in enumerate(doc.get("budgets") or []):
        window = budget_window(b["period"], b.get("window", "calendar"))
        limit = round(b["usd"] * NANO_PER_USD)
        text = f"budget per {b['per']}: {b['usd']:g} USD {window.label}"
        out.append(
            LimitRule(owner, b["per"], "spend", limit, window, Rule(t.source, t.line("budgets", i), text))
        )
    for i, r in enumerate(doc.get("rate_limits") or []):
        for key, metric in (("requests_per_minute", "requests"), ("tokens_per_minute", "tokens")):
            if key in r:
                text = f"rate limit per {r['per']}: {r[key]} {metric} per minute"
                rule = Rule(t.source, t.line("rate_limits", i, key) or t.line("rate_limits", i), text)
                out.append(LimitRule(owner, r["per"], metric, int(r[key]), MINUTE, rule))  # type: ignore[arg-type]
    return out


def team_limits(team_id: str, team_name: str, limits: dict[str, Any]) -> list[LimitRule]:
    owner = f"team:{team_id}"
    source = f"team:{team_name}"
    out = []
    for b in limits.get("budgets") or []:
        window = budget_window(b["period"], b.get("window", "calendar"))
        text = f"team budget: {b['usd']:g} USD {window.label}"
        out.append(
            LimitRule(
                owner, "team", "spend", round(b["usd"] * NANO_PER_USD), window, Rule(source, None, text)
            )
        )
    rates = limits.get("rate_limits") or {}
    for key, metric in (("requests_per_minute", "requests"), ("tokens_per_minute", "tokens")):
        if key in rates:
            text = f"team rate limit: {rates[key]} {metric} per minute"
            out.append(
                LimitRule(owner, "team", metric, int(rates[key]), MINUTE, Rule(source, None, text))  # type: ignore[arg-type]
            )
    return out


@dataclass(frozen=True, slots=True)
class Compiled:
    version: int
    templates: dict[str, CompiledTemplate]
    teams: dict[str, tuple[LimitRule, ...]]  # team id -> its limits
    team_names: dict[str, str]
    prices: PriceBook


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a call counts for: the token's identities, as the counters key them."""

    user_id: str
    agent_id: str | None
    token_id: str | None
    team_id: str | None

    @classmethod
    def of(cls, p: Principal) -> Subject:
        return cls(p.user_id, p.agent_id, p.token_id, p.team_id)


@dataclass(slots=True)
class Admission:
    """An admitted call: what to record with its request, and what it reserved."""

    details: dict[str, Any]
    charges: list[Charge] = field(default_factory=list)
    price: Price | None = None
    openai: bool = False
    subject: Subject | None = None
    settled: bool = False


def call_tokens(usage: Usage, *, openai: bool) -> int:
    """Tokens a call used, for tokens-per-minute: all input (cached or not) plus output."""
    if openai:
        return usage.input_tokens + usage.output_tokens
    return usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens + usage.output_tokens


class PolicyEngine:
    def __init__(
        self,
        db: Database,
        settings: PolicySettings | None = None,
        *,
        writer: AuditWriter | None = None,
        providers: dict[str, ProviderSettings] | None = None,
        counters: Counters | None = None,
        derived: Projector | None = None,
    ) -> None:
        self.db = db
        self.derived = derived  # brings the spend table up to date before it is read
        self.settings = settings or PolicySettings()
        self.writer = writer
        self.providers = providers or {}
        thresholds = self.settings.alert_thresholds
        if counters is None:
            if self.settings.counters == "redis":
                counters = RedisCounters(
                    self.settings.redis_url,
                    prefix=self.settings.redis_prefix,
                    thresholds=thresholds,
                    max_connections=self.settings.redis_max_connections,
                )
            else:
                counters = MemoryCounters(thresholds)
        self.counters = counters
        self._memory = counters if isinstance(counters, MemoryCounters) else None
        self.calendar = Calendar(self.settings.timezone)
        self.state = Compiled(-1, {}, {}, {}, PriceBook.defaults())
        self._reload: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def version(self) -> int:
        return self.state.version

    # -- compiled state ----------------------------------------------------------------------------

    def load(self) -> Compiled:
        """Read the current policy from the store and compile it (a few ms; only when it changed)."""
        row = self.db.query_one("SELECT version FROM policy_state WHERE id = 1")
        version = int(row["version"]) if row else 0
        templates = {}
        for r in self.db.query(
            "SELECT v.name, v.source, v.content, v.document, v.lines, v.hash, v.version FROM templates t"
            " JOIN template_versions v ON v.name = t.name AND v.version = t.version"
        ):
            templates[r["name"]] = CompiledTemplate(stored_template(r), int(r["version"]))
        teams: dict[str, tuple[LimitRule, ...]] = {}
        names = {}
        for r in self.db.query("SELECT id, name, limits FROM teams"):
            names[r["id"]] = r["name"]
            if r["limits"]:
                teams[r["id"]] = tuple(team_limits(r["id"], r["name"], orjson.loads(r["limits"])))
        self.state = Compiled(version, templates, teams, names, PriceBook.load(self.db))
        return self.state

    async def refresh(self, seen: int) -> None:
        """Reload unless another request already did, past version `seen`."""
        if self._reload is None:
            self._reload = asyncio.Lock()
        async with self._reload:
            if self.state.version >= seen:
                return
            if self.db.dialect == "sqlite":
                self.load()
            else:
                await asyncio.to_thread(self.load)

    async def start(self) -> None:
        await self.refresh(0)

    async def close(self) -> None:
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
        await self.counters.close()

    # -- the Bridge's questions --------------------------------------------------------------------

    async def admit(
        self, principal: Principal, provider: str, facts: RequestFacts, body_bytes: int, *, openai: bool
    ) -> Admission:
        """Decide; if allowed, reserve the call's maximum cost. Raises PolicyRefusal."""
        if principal.policy_version > self.state.version:
            try:
                await self.refresh(principal.policy_version)
            except Exception as exc:  # fail closed: never decide on a policy known to be stale
                log.error("cannot load the policy: %s", exc)
                raise PolicyRefusal(
                    "unavailable", "the policy could not be loaded, so the request was refused", None
                ) from None
        state = self.state
        model = facts.model or ""
        name = principal.template or self.settings.default_template
        details: dict[str, Any] = {"team": principal.team_id}
        template = None
        if name is not None:
            template = state.templates.get(name)
            if template is None:
                raise PolicyRefusal(
                    "permission",
                    f"the token's template {name!r} does not exist, so nothing is allowed",
                    Rule("template", None, f"{name} (missing)"),
                    details={"template": name, "team": principal.team_id},
                )
            details["template"] = name
            details["template_version"] = template.version
            verdict = template.decide(provider, model)
            if not verdict.allowed:
                raise PolicyRefusal(
                    "permission",
                    f"model {model!r} on provider {provider!r} is not allowed by template {name!r}:"
                    f" {verdict.rule}",
                    verdict.rule,
                    details=details,
                )
            details["rule"] = str(verdict.rule)
            if template.max_tokens is not None and (facts.max_tokens or 0) > template.max_tokens:
                raise PolicyRefusal(
                    "permission",
                    f"max_tokens {facts.max_tokens} is over the template's limit of {template.max_tokens}"
                    f" ({template.max_tokens_rule}); ask for at most {template.max_tokens}",
                    template.max_tokens_rule,
                    details=details,
                )
            if template.max_tokens is not None and facts.max_tokens is None:
                raise PolicyRefusal(
                    "permission",
                    f"the request does not say its maximum output; template {name!r} requires one of at most"
                    f" {template.max_tokens} ({template.max_tokens_rule})",
                    template.max_tokens_rule,
                    details=details,
                )
        elif self.settings.require_template:
            raise PolicyRefusal(
                "permission",
                "this token is bound to no template, and policy.require_template is set",
                Rule("settings", None, "policy.require_template = true"),
                details=details,
            )
        limits: tuple[LimitRule, ...] = template.limits if template is not None else ()
        if principal.team_id is not None:
            team = state.teams.get(principal.team_id)
            if team:
                limits = limits + team
        admission = Admission(details, openai=openai, subject=Subject.of(principal))
        if limits:
            max_out = facts.max_tokens or (
                template.max_tokens
                if template and template.max_tokens
                else self.settings.assumed_max_output_tokens
            )
            est_in = math.ceil(body_bytes / self.settings.input_bytes_per_token)
            await self._reserve(admission, limits, name, model, est_in, max_out, state)
        return admission

    async def _reserve(
        self,
        admission: Admission,
        limits: Sequence[LimitRule],
        template: str | None,
        model: str,
        est_in: int,
        max_out: int,
        state: Compiled,
    ) -> None:
        subject = admission.subject
        assert subject is not None
        now = time.time()
        price = None
        if any(r.metric == "spend" for r in limits):
            price = state.prices.lookup(model, int(now * 1_000_000))
            if price is None:
                rule = next(r.rule for r in limits if r.metric == "spend")
                raise PolicyRefusal(
                    "permission",
                    f"no price for model {model!r} in the price book, and a budget applies ({rule});"
                    " set one with `gatehouse prices set`",
                    rule,
                    details=admission.details,
                )
        charges, origins = self._charges(limits, subject, template, now, est_in, max_out, price)
        if not charges:
            return
        for _ in range(4):
            try:
                if self._memory is not None:
                    result = self._memory.reserve_now(charges, now)
                else:
                    result = await self.counters.reserve(charges, now)
                if isinstance(result, NeedsInit):
                    for i in result.indexes:
                        await self.counters.init(
                            charges[i], await self._stored_buckets(charges[i], origins[i])
                        )
                    continue
            except Exception as exc:  # fail closed: no counter, no call
                log.error("budget counters unavailable: %s", exc)
                raise PolicyRefusal(
                    "unavailable",
                    "the budget counters are unavailable, so the request was refused; try again shortly",
                    None,
                    retry_after_s=1,
                    details={**admission.details, "error": str(exc)[:200]},
                ) from None
            if result is None:
                admission.charges = charges
                admission.price = price
                if price is not None:
                    admission.details["reserved_usd"] = round(
                        sum(c.amount for c in charges if c.rule.metric == "spend") / NANO_PER_USD, 9
                    )
                return
            raise self._refusal(result, charges, origins, admission.details)
        raise PolicyRefusal("rate_limit", "the budget counters are busy; retry", None, retry_after_s=1)

    def _charges(
        self,
        limits: Sequence[LimitRule],
        s: Subject,
        template: str | None,
        now: float,
        est_in: int,
        max_out: int,
        price: Price | None,
    ) -> tuple[list[Charge], list[tuple[str, str, str | None]]]:
        charges = []
        origins = []
        spend_amount = price.max_cost_nano(est_in, max_out) if price is not None else 0
        for rule in limits:
            scope = rule.scope
            if scope == "agent":
                column, ident = ("agent_id", s.agent_id) if s.agent_id else ("token_id", s.token_id)
            elif scope == "user":
                column, ident = "user_id", s.user_id
            elif scope == "team":
                column, ident = "team_id", s.team_id
            else:
                column, ident = "template", template
            if ident is None:
                continue  # e.g. a per-team limit for a user in no team
            window = rule.window
            if window.calendar:
                bucket, start, end = self.calendar.period(window.name, now)
                keep, width, reset = 0, 0.0, end
                ttl = int(end - now) + 86_400
            else:
                width = window.bucket_s
                bucket = int(now // width)
                keep = ROLLING_BUCKETS
                start, reset = (bucket - keep) * width, 0.0
                ttl = int(window.seconds + width) + 3600
            if rule.metric == "requests":
                amount = 1
            elif rule.metric == "tokens":
                amount = est_in + max_out
            else:
                amount = spend_amount
            charges.append(
                Charge(
                    key=rule.key_prefix + ident + rule.key_suffix,
                    amount=amount,
                    limit=rule.limit,
                    bucket=bucket,
                    keep=keep,
                    bucket_s=width,
                    reset_at=reset,
                    start_s=start,
                    ttl_s=ttl,
                    persistent=rule.metric == "spend",
                    rule=rule,
                )
            )
            origins.append((column, ident, template if rule.owner.startswith("template:") else None))
        return charges, origins

    async def _stored_buckets(self, charge: Charge, origin: tuple[str, str, str | None]) -> dict[int, int]:
        """A new spend counter starts from the settled spend in its window, read from the log's projection."""
        if self.derived is not None:
            await self.derived.acatch_up(self.db)
        column, ident, template = origin
        sql = f"SELECT ts, cost_usd FROM spend WHERE {column} = ? AND ts >= ? AND settled = 1"
        params: list[Any] = [ident, int(charge.start_s * 1_000_000)]
        if template is not None:
            sql += " AND template = ?"
            params.append(template)
        rows = await self.db.aquery(sql, params)
        buckets: dict[int, float] = {}
        for r in rows:
            b = charge.bucket if charge.bucket_s == 0 else int((r["ts"] / 1_000_000) // charge.bucket_s)
            buckets[b] = buckets.get(b, 0.0) + float(r["cost_usd"])
        return {b: round(v * NANO_PER_USD) for b, v in buckets.items() if b >= charge.bucket - charge.keep}

    def _refusal(
        self,
        refused: Refused,
        charges: Sequence[Charge],
        origins: Sequence[tuple[str, str, str | None]],
        details: dict[str, Any],
    ) -> PolicyRefusal:
        charge = charges[refused.index]
        rule = charge.rule
        ident = origins[refused.index][1]
        extra = {**details, "limit": rule.describe_limit(), "scope": f"{rule.scope} {ident}"}
        retry = refused.retry_after_s
        if rule.metric == "spend":
            spent = refused.used / NANO_PER_USD
            cost = charge.amount / NANO_PER_USD
            extra |= {"used_usd": round(spent, 6), "requested_usd": round(cost, 6)}
            if retry is None:
                return PolicyRefusal(
                    "permission",
                    f"this call alone may cost up to {cost:.4f} USD, more than the whole budget"
                    f" ({rule.rule}); ask for fewer output tokens or send less",
                    rule.rule,
                    details=extra,
                )
            return PolicyRefusal(
                "permission",
                f"budget exhausted: {spent:.4f} USD spent or reserved of {rule.describe_limit()}"
                f" ({rule.rule}); this call may cost up to {cost:.4f} USD; more budget in {_human(retry)}",
                rule.rule,
                retry_after_s=retry,
                details=extra,
            )
        extra |= {"used": refused.used, "requested": charge.amount}
        if retry is None:
            return PolicyRefusal(
                "permission",
                f"this call alone ({charge.amount} {rule.metric}) exceeds the rate limit ({rule.rule});"
                " ask for fewer output tokens or send less",
                rule.rule,
                details=extra,
            )
        return PolicyRefusal(
            "rate_limit",
            f"rate limit reached: {rule.describe_limit()} ({rule.rule}); retry in {_human(retry)}",
            rule.rule,
            retry_after_s=retry,
            details=extra,
        )

    async def filter_models(self, principal: Principal, provider: str, payload: bytes) -> bytes:
        """A model listing (`GET /v1/models`) shows only the models the token's template allows."""
        name = principal.template or self.settings.default_template
        if name is None:
            return payload
        if principal.policy_version > self.state.version:
            await self.refresh(principal.policy_version)
        template = self.state.templates.get(name)
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payload
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            return payload
        doc["data"] = [
            m
            for m in doc["data"]
            if isinstance(m, dict)
            and template is not None
            and template.decide(provider, str(m.get("id", ""))).allowed
        ]
        return orjson.dumps(doc)

    def settle(self, admission: Admission, usage: Usage | None) -> None:
        """The call ended: replace its reservation by what it used (`None`: it never went upstream)."""
        if admission.settled or not admission.charges:
            return
        admission.settled = True
        actual = []
        for c in admission.charges:
            metric = c.rule.metric
            if usage is None:
                actual.append(0)
            elif metric == "requests":
                actual.append(c.amount)
            elif metric == "tokens":
                actual.append(call_tokens(usage, openai=admission.openai))
            else:
                price = admission.price
                actual.append(
                    price.cost_nano(
                        usage.input_tokens,
                        usage.output_tokens,
                        usage.cache_read_tokens,
                        usage.cache_write_tokens,
                        openai=admission.openai,
                    )
                    if price is not None
                    else 0
                )
        if self._memory is not None:
            self._alerts(admission, self._memory.settle_now(admission.charges, actual))
            return
        self._spawn(self._settle_async(admission, actual))

    async def _settle_async(self, admission: Admission, actual: list[int]) -> None:
        try:
            self._alerts(admission, await self.counters.settle(admission.charges, actual))
        except Exception:
            log.exception("settling a reservation failed; it is held until its window passes")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- alerts ------------------------------------------------------------------------------------

    def _alerts(self, admission: Admission, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            charge = admission.charges[alert.index]
            rule = charge.rule
            s = admission.subject
            event = Event(
                kind="policy.budget.threshold",
                decision="allow",
                actor_user=s.user_id if s else None,
                actor_agent=s.agent_id if s else None,
                actor_token=s.token_id if s else None,
                resource=f"budget:{charge.key}",
                details={
                    "threshold_pct": alert.level,
                    "spent_usd": round(alert.total / NANO_PER_USD, 6),
                    "limit_usd": round(charge.limit / NANO_PER_USD, 6),
                    "limit": rule.describe_limit(),
                    "scope": rule.scope,
                    "owner": rule.owner,
                    "rule": str(rule.rule),
                    "template": admission.details.get("template"),
                    "team": admission.details.get("team"),
                },
            )
            if self.writer is not None:
                self.writer.append_nowait(event)
            if self.settings.alert_webhook_url:
                self._spawn(self._post(event))

    async def _post(self, event: Event) -> None:
        import aiohttp

        url = self.settings.alert_webhook_url
        assert url is not None
        body = orjson.dumps(event.to_dict())
        headers = {"content-type": "application/json"}
        if self.settings.alert_webhook_secret is not None:
            key = self.settings.alert_webhook_secret.get_secret_value().encode()
            headers["x-gatehouse-signature"] = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                http.post(url, data=body, headers=headers) as response,
            ):
                if response.status >= 300:
                    log.warning("budget alert webhook answered HTTP %s", response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("budget alert webhook failed: %s", exc)

    # -- explain -----------------------------------------------------------------------------------

    async def explain(
        self,
        *,
        subject: Subject,
        template: str | None,
        model: str,
        provider: str | None = None,
        max_tokens: int | None = None,
        body_bytes: int = 0,
    ) -> dict[str, Any]:
        """What the Bridge would decide for this call now, which rule decides it, and the state of every
        budget and rate limit that applies."""
        row = await self.db.aquery_one("SELECT version FROM policy_state WHERE id = 1")
        await self.refresh(int(row["version"]) if row else 0)
        state = self.state
        name = template or self.settings.default_template
        compiled = state.templates.get(name) if name else None
        out: dict[str, Any] = {
            "model": model,
            "provider": provider,
            "template": {"name": name, "version": compiled.version, "source": compiled.source}
            if compiled
            else ({"name": name, "missing": True} if name else None),
            "team": state.team_names.get(subject.team_id or "", None),
            "checks": [],
            "limits": [],
        }
        checks: list[dict[str, Any]] = out["checks"]

        def decide(decision: str, rule: Rule | str, reason: str, status: int) -> dict[str, Any]:
            out.update(decision=decision, rule=str(rule), reason=reason, status=status)
            return out

        if provider is None:
            provider = next(
                (n for n, p in self.providers.items() if any(fnmatchcase(model, g) for g in p.models)),
                None,
            ) or next(iter(self.providers), "")
            out["provider"] = provider or None
        if self.providers:
            p = self.providers.get(provider)
            if p is None:
                return decide("deny", f"settings providers.{provider}", f"no provider {provider!r}", 404)
            if not any(fnmatchcase(model, g) for g in p.models):
                rule = f"settings providers.{provider}.models {p.models}"
                return decide("deny", rule, f"model {model!r} is not served by provider {provider!r}", 403)
            checks.append(
                {
                    "check": "provider models",
                    "result": "allow",
                    "rule": f"settings providers.{provider}.models",
                }
            )
        if name is not None:
            if compiled is None:
                return decide("deny", f"template {name} (missing)", f"template {name!r} does not exist", 403)
            verdict = compiled.decide(provider, model)
            checks.append(
                {
                    "check": "template",
                    "result": "allow" if verdict.allowed else "deny",
                    "rule": str(verdict.rule),
                }
            )
            if not verdict.allowed:
                return decide(
                    "deny", verdict.rule, f"model {model!r} is not allowed by template {name!r}", 403
                )
            if compiled.max_tokens is not None:
                ok = max_tokens is not None and max_tokens <= compiled.max_tokens
                checks.append(
                    {
                        "check": "max_tokens",
                        "result": "allow"
                        if ok
                        else ("deny" if max_tokens is not None else "requires max_tokens"),
                        "rule": str(compiled.max_tokens_rule),
                    }
                )
                if max_tokens is not None and not ok:
                    return decide(
                        "deny", compiled.max_tokens_rule, f"max_tokens over {compiled.max_tokens}", 403
                    )
        elif self.settings.require_template:
            return decide("deny", "settings policy.require_template", "bound to no template", 403)
        allow_rule: Rule | str = (
            compiled.decide(provider, model).rule if compiled else f"settings providers.{provider}.models"
        )
        limits: tuple[LimitRule, ...] = compiled.limits if compiled else ()
        if subject.team_id is not None:
            limits = limits + state.teams.get(subject.team_id, ())
        if not limits:
            return decide("allow", allow_rule, "allowed; no budget or rate limit applies", 200)
        now = time.time()
        price = state.prices.lookup(model, int(now * 1_000_000))
        max_out = max_tokens or (
            compiled.max_tokens
            if compiled and compiled.max_tokens
            else self.settings.assumed_max_output_tokens
        )
        est_in = math.ceil(body_bytes / self.settings.input_bytes_per_token)
        charges, origins = self._charges(limits, subject, name, now, est_in, max_out, price)
        live = await self.counters.peek(charges)
        verdict_out: tuple[str, Rule | str, str, int] | None = None
        if price is None and any(r.metric == "spend" for r in limits):
            verdict_out = (
                "deny",
                next(r.rule for r in limits if r.metric == "spend"),
                f"no price for {model!r}",
                403,
            )
        for charge, origin, used in zip(charges, origins, live, strict=True):
            if used < 0:
                used = await self._stored_usage(charge, origin)
            lr = charge.rule
            spend = lr.metric == "spend"
            scale = NANO_PER_USD if spend else 1
            fits = used + charge.amount <= charge.limit
            out["limits"].append(
                {
                    "rule": str(lr.rule),
                    "limit": lr.describe_limit(),
                    "scope": f"{lr.scope} {origin[1]}",
                    "unit": "USD" if spend else lr.metric,
                    "used": round(used / scale, 6) if spend else used,
                    "limit_value": round(charge.limit / scale, 6) if spend else charge.limit,
                    "remaining": round(max(0, charge.limit - used) / scale, 6)
                    if spend
                    else max(0, charge.limit - used),
                    "this_call": round(charge.amount / scale, 6) if spend else charge.amount,
                    "fits": fits,
                    "window_start": _iso(charge.start_s),
                    "resets_at": _iso(charge.reset_at) if charge.reset_at else None,
                }
            )
            if not fits and verdict_out is None:
                if charge.amount > charge.limit:
                    what, status = "this call alone exceeds", 403
                elif spend:
                    what, status = "budget exhausted", 403
                else:
                    what, status = "rate limit reached", 429
                verdict_out = ("deny", lr.rule, f"{what}: {lr.describe_limit()}", status)
        if verdict_out is not None:
            return decide(*verdict_out)
        return decide("allow", allow_rule, "allowed; every budget and rate limit has room for this call", 200)

    async def _stored_usage(self, charge: Charge, origin: tuple[str, str, str | None]) -> int:
        """A counter this process has not used yet: what the spend table says about its window."""
        if self.derived is not None:
            await self.derived.acatch_up(self.db)
        column, ident, template = origin
        metric = charge.rule.metric
        what = {
            "spend": "SUM(cost_usd)",
            "requests": "COUNT(*)",
            "tokens": "SUM(CASE WHEN route = 'messages' THEN input_tokens + cache_read_tokens"
            " + cache_write_tokens ELSE input_tokens END + output_tokens)",
        }[metric]
        sql = f"SELECT {what} AS v FROM spend WHERE {column} = ? AND ts >= ?"
        params: list[Any] = [ident, int(charge.start_s * 1_000_000)]
        if template is not None:
            sql += " AND template = ?"
            params.append(template)
        row = await self.db.aquery_one(sql, params)
        value = float(row["v"] or 0) if row else 0.0
        return round(value * NANO_PER_USD) if metric == "spend" else int(value)


def _human(seconds: float) -> str:
    seconds = max(1, math.ceil(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{math.ceil(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _iso(epoch_s: float) -> str | None:
    from gatehouse.timeutil import iso

    return iso(int(epoch_s * 1_000_000)) if epoch_s else None


def now_s() -> float:
    return now_us() / 1_000_000
