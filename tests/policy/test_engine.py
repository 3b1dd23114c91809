"""The engine's decisions: deny rules win, deny by default, which rule decided, and limits per scope."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gatehouse.bridge.facts import RequestFacts, Usage
from gatehouse.identity.service import Actor, IdentityService, Principal
from gatehouse.policy import explain as explaining
from gatehouse.policy.engine import PolicyEngine, PolicyRefusal
from gatehouse.policy.prices import PriceService
from gatehouse.policy.settings import PolicySettings
from gatehouse.policy.teams import TeamService
from gatehouse.policy.templates import TemplateStore
from gatehouse.store.db import Database

OPERATOR = Actor()

TEMPLATE = """\
name: reviewer
providers:
  allow: ["anthropic", "openai"]
  deny: ["openai"]
models:
  allow:
    - "claude-*"
    - "anthropic/claude-opus-4-7"
  deny:
    - "claude-opus-*"
rate_limits:
  - per: user
    tokens_per_minute: 10000
  - per: agent
    requests_per_minute: 100
budgets:
  - per: template
    usd: 1
    period: week
    window: rolling
"""


@pytest.fixture
def engine(db: Database) -> PolicyEngine:
    ids = IdentityService(db)
    ids.create_user("alice", actor=OPERATOR)
    ids.create_agent("bot", owner="alice", actor=OPERATOR)
    TemplateStore(db).apply(TEMPLATE, "templates/reviewer.yaml", actor=OPERATOR)
    ids.create_token(user="alice", agent="bot", template="reviewer", actor=OPERATOR)
    engine = PolicyEngine(db, PolicySettings())
    engine.load()
    return engine


def principal(
    engine: PolicyEngine, *, template: str | None = "reviewer", team: str | None = None
) -> Principal:
    agent = engine.db.query_one("SELECT id, owner_id FROM agents WHERE name = 'bot'")
    assert agent is not None
    return Principal(
        token_id="tok",
        user_id=agent["owner_id"],
        user_name="alice",
        role="member",
        agent_id=agent["id"],
        agent_name="bot",
        template=template,
        team_id=team,
        policy_version=engine.version,
    )


def facts(model: str, max_tokens: int | None = 1000) -> RequestFacts:
    return RequestFacts(model=model, stream=False, max_tokens=max_tokens, last_user_prompt="hi")


def test_deny_wins_over_allow_and_nothing_unlisted_passes(engine: PolicyEngine) -> None:
    t = engine.state.templates["reviewer"]
    assert (
        str(t.decide("anthropic", "claude-sonnet-5").rule)
        == 'templates/reviewer.yaml:7 allow models "claude-*"'
    )
    # Allowed by two rules (one provider-qualified), denied by one: the deny wins.
    opus = t.decide("anthropic", "claude-opus-4-7")
    assert not opus.allowed and str(opus.rule) == 'templates/reviewer.yaml:10 deny models "claude-opus-*"'
    gpt = t.decide("openai", "claude-sonnet-5")
    assert not gpt.allowed and str(gpt.rule) == 'templates/reviewer.yaml:4 deny providers "openai"'
    other = t.decide("bedrock", "claude-sonnet-5")
    assert (
        str(other.rule)
        == 'templates/reviewer.yaml:3 providers: no allow rule matches "bedrock" (deny by default)'
    )
    none = t.decide("anthropic", "mistral-large")
    assert (
        str(none.rule)
        == 'templates/reviewer.yaml:6 models: no allow rule matches "mistral-large" (deny by default)'
    )


async def test_tokens_per_minute_reserve_and_settle(engine: PolicyEngine) -> None:
    p = principal(engine)
    first = await engine.admit(p, "anthropic", facts("claude-sonnet-5", 4000), 2000, openai=False)
    # Reserved: 1000 input tokens assumed for 2000 body bytes, plus 4000 output.
    tokens = next(c for c in first.charges if c.rule.metric == "tokens")
    assert tokens.amount == 5000 and tokens.key.startswith("template:reviewer|user=")
    second = await engine.admit(p, "anthropic", facts("claude-sonnet-5", 4000), 2000, openai=False)
    with pytest.raises(PolicyRefusal) as exc:
        await engine.admit(p, "anthropic", facts("claude-sonnet-5", 4000), 2000, openai=False)
    assert exc.value.kind == "rate_limit" and exc.value.headers["retry-after"]
    assert (
        exc.value.details["rule"] == "templates/reviewer.yaml:13 rate limit per user: 10000 tokens per minute"
    )
    # Settling on the real usage (small) makes room again; an unforwarded call gives everything back.
    engine.settle(first, Usage(input_tokens=50, output_tokens=100))
    engine.settle(second, None)
    third = await engine.admit(p, "anthropic", facts("claude-sonnet-5", 4000), 2000, openai=False)
    assert third.details["template"] == "reviewer"


async def test_team_limits_apply_to_every_template_and_unpriced_models_are_refused(
    engine: PolicyEngine, db: Database
) -> None:
    teams = TeamService(db)
    team = teams.create("platform", actor=OPERATOR)
    teams.add_member("platform", "alice", actor=OPERATOR)
    teams.set_limits("platform", {"rate_limits": {"requests_per_minute": 1}}, actor=OPERATOR)
    engine.load()
    p = principal(engine, template=None, team=team["id"])
    await engine.admit(p, "anthropic", facts("claude-opus-4-7"), 100, openai=False)
    with pytest.raises(PolicyRefusal) as exc:
        await engine.admit(p, "anthropic", facts("claude-opus-4-7"), 100, openai=False)
    assert exc.value.details["rule"] == "team:platform team rate limit: 1 requests per minute"
    # A budget cannot be kept for a model the price book does not know: refused.
    with pytest.raises(PolicyRefusal) as unpriced:
        await engine.admit(principal(engine), "anthropic", facts("claude-unknown-9"), 100, openai=False)
    assert "no price for model 'claude-unknown-9'" in unpriced.value.message
    PriceService(db).set("claude-unknown-*", input=1, output=2, actor=OPERATOR)
    later = replace(principal(engine), policy_version=engine.version + 1)  # as read with the token
    assert (await engine.admit(later, "anthropic", facts("claude-unknown-9"), 100, openai=False)).price


async def test_explain_names_the_deciding_rule_and_the_budget_state(
    engine: PolicyEngine, db: Database
) -> None:
    who = explaining.resolve(db, agent="bot")
    assert who.templates == ["reviewer"]
    denied = await explaining.explain(engine, who, model="claude-opus-4-7", provider="anthropic")
    assert denied["decision"] == "deny" and denied["status"] == 403
    assert denied["rule"] == 'templates/reviewer.yaml:10 deny models "claude-opus-*"'
    unbounded = await explaining.explain(engine, who, model="claude-haiku-4-5", provider="anthropic")
    assert (unbounded["decision"], unbounded["status"]) == ("deny", 403)  # 32000 output tokens assumed
    assert unbounded["reason"] == "this call alone exceeds: 10000 tokens per minute"
    allowed = await explaining.explain(
        engine, who, model="claude-haiku-4-5", provider="anthropic", max_tokens=1000
    )
    assert allowed["decision"] == "allow"
    assert allowed["rule"] == 'templates/reviewer.yaml:7 allow models "claude-*"'
    budget = next(lim for lim in allowed["limits"] if lim["unit"] == "USD")
    assert budget["rule"] == "templates/reviewer.yaml:17 budget per template: 1 USD per week (rolling)"
    assert budget["used"] == 0 and budget["limit_value"] == 1.0 and budget["fits"]
