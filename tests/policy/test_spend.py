"""The price book and spend: effective-dated prices, cost per call derived from the log, reports."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import anthropic
import openai
import pytest

from gatehouse.identity.service import Actor
from gatehouse.policy.prices import Price, PriceBook, PriceService
from gatehouse.policy.spend import SpendFilter, SpendProjection, rebuild_spend, report_csv, spend_report
from gatehouse.policy.teams import TeamService
from gatehouse.store.db import Database
from tests.gateway.conftest import Stack
from tests.policy.conftest import OPERATOR, PolicyStackFactory


def test_which_price_applies(db: Database) -> None:
    prices = PriceService(db)
    book = PriceBook.load(db)
    default = book.lookup("claude-sonnet-4-5-20250929", 10)
    assert default is not None and (default.model, default.source) == ("claude-sonnet-4*", "default")
    assert book.lookup("gpt-5-mini-2025-08-07", 10).model == "gpt-5-mini*"  # type: ignore[union-attr]
    assert book.lookup("gpt-5", 10).model == "gpt-5"  # type: ignore[union-attr]
    assert book.lookup("llama-4", 10) is None

    prices.set("claude-sonnet-4*", input=2, output=10, effective_from=1_000, actor=OPERATOR)
    prices.set("claude-sonnet-4-5*", input=2.5, output=12, effective_from=2_000, actor=OPERATOR)
    book = PriceBook.load(db)
    assert book.lookup("claude-sonnet-4-5", 500).source == "default"  # type: ignore[union-attr]
    assert book.lookup("claude-sonnet-4-5", 1_500).input == 2  # type: ignore[union-attr]
    assert book.lookup("claude-sonnet-4-5", 2_500).input == 2.5  # type: ignore[union-attr]
    assert book.lookup("claude-sonnet-4-6", 2_500).input == 2  # type: ignore[union-attr]
    stored = prices.list(include_defaults=False)
    assert [(p.model, p.cache_read) for p in stored] == [
        ("claude-sonnet-4*", 2.0),
        ("claude-sonnet-4-5*", 2.5),
    ]
    [event] = db.query("SELECT details FROM events WHERE kind = 'admin.price.set' ORDER BY seq LIMIT 1")
    assert '"input":2.0' in event["details"]


def test_cost_follows_each_providers_usage_semantics() -> None:
    price = Price(
        "m", input=3, output=15, cache_read=0.3, cache_write=3.75, effective_from=0, source="default"
    )
    # Anthropic: input_tokens exclude the cached ones.
    assert (
        price.cost_nano(1000, 100, 2000, 400, openai=False)
        == 1000 * 3000 + 100 * 15000 + 2000 * 300 + 400 * 3750
    )
    # OpenAI: input_tokens include the cached ones.
    assert price.cost_nano(3000, 100, 2000, 0, openai=True) == 1000 * 3000 + 100 * 15000 + 2000 * 300
    assert price.max_cost_nano(1000, 100) == 1000 * 3750 + 100 * 15000


def _call_both(stack: Stack, n: int, token: str) -> None:
    a = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=token, max_retries=0)
    o = openai.OpenAI(base_url=stack.openai_url, api_key=token, max_retries=0)
    for _ in range(n):
        a.messages.create(
            model="claude-sonnet-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        o.chat.completions.create(
            model="gpt-5-mini", max_completion_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )


def test_spend_is_derived_from_the_log_and_never_repriced(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack(template=None)
    teams = TeamService(stack.db)
    teams.create("platform", actor=OPERATOR)
    teams.add_member("platform", "alice", actor=OPERATOR)
    _call_both(stack, 2, stack.token)
    stack.gh.writer.close()
    rows = stack.derived_db.query("SELECT * FROM spend ORDER BY ts")
    assert len(rows) == 4 and all(r["settled"] == 1 for r in rows)
    sonnet = next(r for r in rows if r["model"] == "claude-sonnet-5")
    expected = (sonnet["input_tokens"] * 3 + sonnet["output_tokens"] * 15) / 1e6
    assert sonnet["cost_usd"] == pytest.approx(expected) and sonnet["price_model"] == "claude-sonnet-5*"
    mini = next(r for r in rows if r["model"] == "gpt-5-mini")
    assert mini["cost_usd"] == pytest.approx((mini["input_tokens"] * 0.25 + mini["output_tokens"] * 2) / 1e6)
    before = spend_report(stack.db, "model", SpendFilter())

    # A new price from now on: the calls already made keep their cost.
    PriceService(stack.db).set("claude-sonnet-5", input=30, output=150, actor=Actor(name="finance"))
    again = policy_stack(template=None, fresh=False)
    _call_both(again, 1, stack.token)
    again.gh.writer.close()
    report = spend_report(again.derived_db, "model", SpendFilter())
    by_model = {r["key"]: r for r in report["rows"]}
    old = {r["key"]: r for r in before["rows"]}
    assert by_model["claude-sonnet-5"]["calls"] == 3
    # Two calls at the old price, one at ten times it.
    assert by_model["claude-sonnet-5"]["cost_usd"] == pytest.approx(
        old["claude-sonnet-5"]["cost_usd"] * 6, rel=1e-5
    )
    assert by_model["gpt-5-mini"]["cost_usd"] == pytest.approx(old["gpt-5-mini"]["cost_usd"] * 1.5)

    # The projection can be rebuilt from the log, to the same figures.
    assert rebuild_spend(again.db) == 6
    assert spend_report(again.db, "model", SpendFilter()) == report

    by_user = spend_report(again.db, "user", SpendFilter())
    assert [r["key"] for r in by_user["rows"]] == ["alice"]
    assert by_user["total"]["calls"] == 6
    assert [r["key"] for r in spend_report(again.db, "team", SpendFilter())["rows"]] == ["platform"]
    assert [r["key"] for r in spend_report(again.db, "agent", SpendFilter())["rows"]] == ["ci-bot"]
    days = spend_report(again.db, "day", SpendFilter())["rows"]
    assert len(days) == 1 and len(days[0]["key"]) == 10
    assert spend_report(again.db, "user", SpendFilter(since_us=2**62))["rows"] == []
    csv = report_csv(by_user)
    assert (
        csv.splitlines()[0]
        == "user,calls,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,cost_usd,unpriced"
    )
    assert csv.splitlines()[1].startswith("alice,6,")


@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/Paris", "America/Sao_Paulo", "Australia/Lord_Howe", "Asia/Tehran"]
)
def test_the_day_of_a_call_in_the_configured_zone(zone: str) -> None:
    """The projection keeps the bounds of the last day it looked up; across clock changes (including ones at
    midnight, and half-hour ones) every answer is the zone's local date."""
    projection = SpendProjection(zone)
    rng = random.Random(zone)
    start = int(datetime(2010, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    ts = start
    for _ in range(20_000):
        ts += rng.choice([1, 60_000_000, 3_600_000_000, 86_400_000_000, 12 * 3_600_000_000 + 17])
        if rng.random() < 0.01:
            ts = start + rng.randrange(20 * 365 * 86_400_000_000)
        want = datetime.fromtimestamp(ts / 1_000_000, ZoneInfo(zone)).date().isoformat()
        assert projection.day(ts) == want, ts
