"""Budgets and rate limits through a real stack: exact under concurrency, 429 with Retry-After for rate
limits, 403 for an exhausted budget, both in the provider's format and recorded as denials."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading

import anthropic
import openai
import orjson
import pytest
from aiohttp import web

from gatehouse.policy.settings import PolicySettings
from gatehouse.policy.teams import TeamService
from gatehouse.policy.templates import TemplateStore
from gatehouse.serving import serve_in_thread
from tests.gateway.conftest import Simulator, Stack
from tests.policy.conftest import OPERATOR, PolicyStackFactory

MODEL = "claude-sonnet-5"
PROMPT = [{"role": "user", "content": "Write a haiku about budgets"}]


def template(budget_usd: float | None = None, rpm: int | None = None, per: str = "agent") -> str:
    text = 'name: metered\nmodels:\n  allow: ["claude-sonnet-*", "gpt-5*"]\n'
    if budget_usd is not None:
        text += f"budgets:\n  - per: {per}\n    usd: {budget_usd!r}\n    period: day\n"
    if rpm is not None:
        text += f"rate_limits:\n  - per: {per}\n    requests_per_minute: {rpm}\n"
    return text


def spent_nano(stack: Stack) -> int:
    row = stack.derived_db.query_one("SELECT SUM(cost_usd) AS c FROM spend")
    return round(float(row["c"] or 0) * 1e9) if row else 0


@pytest.mark.parametrize(("counters", "store"), [("memory", "sqlite"), ("redis", "postgresql")])
async def test_fifty_parallel_calls_against_a_budget_for_ten_let_exactly_ten_through(
    policy_stack: PolicyStackFactory,
    slow_upstream: Simulator,
    redis_prefix: str,
    counters: str,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    stack = policy_stack(
        templates=(template(budget_usd=100.0),),
        template="metered",
        upstream=slow_upstream,
        store_url=request.getfixturevalue("pg_url") if store == "postgresql" else None,
        policy=PolicySettings(counters=counters, redis_prefix=redis_prefix),  # type: ignore[arg-type]
    )
    client = anthropic.AsyncAnthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)

    # One call to learn what a call reserves (its maximum cost) and what it really costs.
    await client.messages.create(model=MODEL, max_tokens=1000, messages=PROMPT)
    [request] = stack.events("llm.request")
    reserve = round(orjson.loads(request["details"])["policy"]["reserved_usd"] * 1e9)
    spent = spent_nano(stack)
    assert 0 < spent < reserve

    # A budget that affords exactly ten more reservations (and half of an eleventh).
    budget = (spent + 10 * reserve + reserve // 2) / 1e9
    TemplateStore(stack.db).apply(template(budget_usd=budget), "templates/metered.yaml", actor=OPERATOR)

    results = await asyncio.gather(
        *(client.messages.create(model=MODEL, max_tokens=1000, messages=PROMPT) for _ in range(50)),
        return_exceptions=True,
    )
    passed = [r for r in results if isinstance(r, anthropic.types.Message)]
    refused = [r for r in results if isinstance(r, anthropic.PermissionDeniedError)]
    assert (len(passed), len(refused)) == (10, 40), [r for r in results if isinstance(r, Exception)][:3]
    assert all("budget exhausted" in str(r.body) for r in refused)
    assert len(slow_upstream.requests()) == 11  # the calibration call and exactly ten more
    await client.close()

    # Recorded: 40 denials naming the budget rule, and the spend never went over the budget.
    denials = stack.log_db.query(
        "SELECT details FROM events WHERE kind = 'llm.request' AND decision = 'deny'"
    )
    assert len(denials) == 40
    policy = orjson.loads(denials[0]["details"])["policy"]
    assert policy["rule"] == f"templates/metered.yaml:5 budget per agent: {budget:g} USD per day"
    assert policy["retry_after_s"] > 0
    stack.gh.writer.close()  # flush the last responses
    assert spent_nano(stack) <= round(budget * 1e9)


@pytest.mark.parametrize("counters", ["memory", "redis"])
def test_rate_limit_answers_429_with_retry_after_in_both_formats(
    policy_stack: PolicyStackFactory, redis_prefix: str, counters: str
) -> None:
    stack = policy_stack(
        templates=(template(rpm=3),),
        template="metered",
        policy=PolicySettings(counters=counters, redis_prefix=redis_prefix),  # type: ignore[arg-type]
    )
    client = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    for _ in range(3):
        client.messages.create(model=MODEL, max_tokens=50, messages=PROMPT)
    with pytest.raises(anthropic.RateLimitError) as exc:
        client.messages.create(model=MODEL, max_tokens=50, messages=PROMPT)
    retry_after = int(exc.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 61
    body = exc.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "rate_limit_error"
    assert "rate limit reached: 3 requests per minute" in body["error"]["message"]
    assert "templates/metered.yaml:6 rate limit per agent" in body["error"]["message"]

    oai = openai.OpenAI(base_url=stack.openai_url, api_key=stack.token, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc2:
        oai.chat.completions.create(model="gpt-5", max_completion_tokens=50, messages=PROMPT)  # type: ignore[arg-type]
    assert int(exc2.value.response.headers["retry-after"]) >= 1
    assert len(stack.sim.requests()) == 3

    denials = stack.log_db.query(
        "SELECT details FROM events WHERE kind = 'llm.request' AND decision = 'deny'"
    )
    assert [orjson.loads(d["details"])["status"] for d in denials] == [429, 429]


def test_team_budget_and_threshold_alerts_with_a_signed_webhook(policy_stack: PolicyStackFactory) -> None:
    received: list[tuple[bytes, str]] = []
    got = threading.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers.get("x-gatehouse-signature", "")))
        got.set()
        return web.Response(status=204)

    def hook_app() -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", hook)
        return app

    with serve_in_thread(hook_app) as hook_url:
        policy = PolicySettings(
            alert_thresholds=[50, 100],
            alert_webhook_url=f"{hook_url}/hook",
            alert_webhook_secret="s3cret",  # type: ignore[arg-type]
        )
        stack = policy_stack(template=None, policy=policy)
        teams = TeamService(stack.db)
        teams.create("platform", actor=OPERATOR)
        teams.add_member("platform", "alice", actor=OPERATOR)
        teams.set_limits("platform", {"budgets": [{"usd": 0.002, "period": "day"}]}, actor=OPERATOR)
        client = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
        calls = 0
        with pytest.raises(anthropic.PermissionDeniedError) as exc:
            for _ in range(50):
                client.messages.create(model=MODEL, max_tokens=20, messages=PROMPT)
                calls += 1
        assert calls >= 2
        assert "team:platform team budget: 0.002 USD per day" in str(exc.value.body)
        assert got.wait(10)

    stack.gh.writer.close()
    assert spent_nano(stack) <= 2_000_000
    alerts = [orjson.loads(e["details"]) for e in stack.events("policy.budget.threshold")]
    assert [a["threshold_pct"] for a in alerts][:1] == [50]
    assert alerts[0]["owner"].startswith("team:") and alerts[0]["limit_usd"] == 0.002
    body, signature = received[0]
    assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert orjson.loads(body)["kind"] == "policy.budget.threshold"
    rows = stack.derived_db.query("SELECT DISTINCT team_id FROM spend")
    assert [r["team_id"] for r in rows] == [teams.show("platform")["id"]]


def test_spend_counters_survive_a_restart(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack(templates=(template(budget_usd=0.002),), template="metered")
    client = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        for _ in range(50):
            client.messages.create(model=MODEL, max_tokens=20, messages=PROMPT)
    stack.gh.writer.close()
    # A new process on the same store: its counter starts from the settled spend in the log.
    again = policy_stack(templates=(), template="metered", fresh=False)
    client = anthropic.Anthropic(base_url=again.anthropic_url, api_key=stack.token, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        client.messages.create(model=MODEL, max_tokens=20, messages=PROMPT)
    assert "budget exhausted" in str(exc.value.body)


def test_a_call_that_alone_exceeds_the_budget_is_refused_for_good(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack(templates=(template(budget_usd=0.0001),), template="metered")
    client = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        client.messages.create(model=MODEL, max_tokens=4000, messages=PROMPT)
    assert "more than the whole budget" in str(exc.value.body)
    assert "retry-after" not in exc.value.response.headers


def test_unreachable_counters_fail_closed(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack(
        templates=(template(rpm=100),),
        template="metered",
        policy=PolicySettings(counters="redis", redis_url="redis://127.0.0.1:1/0"),
    )
    client = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as exc:
        client.messages.create(model=MODEL, max_tokens=20, messages=PROMPT)
    assert exc.value.status_code == 503 and "budget counters are unavailable" in str(exc.value.body)
    assert stack.sim.requests() == []
    [row] = stack.interceptions()
    assert (row["decision"], row["status"]) == ("deny", 503)
