"""The policy commands, driven through click's runner on their groups."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from gatehouse.cli.context import Context
from gatehouse.cli.policy import policy
from gatehouse.cli.prices import prices
from gatehouse.cli.spend import spend
from gatehouse.cli.teams import teams
from gatehouse.cli.templates import templates
from gatehouse.identity.service import Actor, IdentityService
from tests.policy.conftest import CI_BOT

OPERATOR = Actor()


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "gatehouse.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "g.db"}"\n\n'
        '[providers.anthropic]\ntype = "anthropic"\nbase_url = "https://api.anthropic.com"\n'
    )
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "ci-bot.yaml").write_text(CI_BOT)
    context = Context(config)
    ids = IdentityService(context.db)
    ids.create_user("alice", actor=OPERATOR)
    ids.create_agent("ci-bot", owner="alice", actor=OPERATOR)

    def run(group, *args: str) -> Result:  # type: ignore[no-untyped-def]
        return CliRunner().invoke(group, list(args), obj=context, catch_exceptions=False)

    run.context = context  # type: ignore[attr-defined]
    return run


def test_templates_apply_plan_list_show(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    applied = cli(templates, "apply", "templates/ci-bot.yaml")
    assert applied.exit_code == 0, applied.output
    assert applied.output.startswith("applied template ci-bot v1 (new)\n--- /dev/null\n+++ ci-bot v1\n")
    assert cli(templates, "apply", "templates/ci-bot.yaml").output == "template ci-bot unchanged (v1)\n"

    (tmp_path / "templates" / "ci-bot.yaml").write_text(CI_BOT.replace("4096", "2048"))
    plan = cli(templates, "plan", "templates/ci-bot.yaml")
    assert plan.output.splitlines()[0] == "template ci-bot: v1 -> v2"
    assert "-max_tokens_per_request: 4096" in plan.output and "+max_tokens_per_request: 2048" in plan.output
    listed = orjson.loads(cli(templates, "list", "--json").output)
    assert [(t["name"], t["version"], t["source"]) for t in listed] == [
        ("ci-bot", 1, "templates/ci-bot.yaml")
    ]

    as_json = orjson.loads(cli(templates, "apply", "templates/ci-bot.yaml", "--json").output)
    assert (
        as_json["applied"]
        and as_json["next_version"] == 2
        and "+max_tokens_per_request: 2048" in as_json["diff"]
    )
    shown = cli(templates, "show", "ci-bot", "--version", "1")
    assert (
        shown.output.startswith("# ci-bot v1 from templates/ci-bot.yaml, by cli") and "4096" in shown.output
    )
    assert "2048" in cli(templates, "show", "ci-bot").output
    assert cli(templates, "show", "nope").exit_code == 1
    assert '"$schema"' in cli(templates, "schema").output


def test_invalid_template_is_rejected_with_line_and_reason(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "templates" / "bad.yaml").write_text(
        "name: bad\nmodels:\n  allow: [claude-*]\nbudgets:\n  - per: agent\n    usd: -5\n    period: day\n"
    )
    result = cli(templates, "apply", "templates/bad.yaml")
    assert result.exit_code == 1
    assert (
        "templates/bad.yaml:6: budgets[0].usd: -5 is less than or equal to the minimum of 0" in result.output
    )
    assert cli(templates, "list", "--json").output.strip() == "[]"


def test_policy_explain_names_the_deciding_rule(cli) -> None:  # type: ignore[no-untyped-def]
    cli(templates, "apply", "templates/ci-bot.yaml")
    IdentityService(cli.context.db).create_token(
        user="alice", agent="ci-bot", template="ci-bot", actor=OPERATOR
    )
    denied = cli(policy, "explain", "--agent", "ci-bot", "--model", "claude-opus-4-7")
    assert denied.exit_code == 0, denied.output
    assert "decision: DENY (HTTP 403)" in denied.output
    assert 'rule:     templates/ci-bot.yaml:11 deny models "claude-opus-*"' in denied.output
    allowed = orjson.loads(
        cli(
            policy,
            "explain",
            "--agent",
            "ci-bot",
            "--model",
            "claude-sonnet-5",
            "--max-tokens",
            "100",
            "--json",
        ).output
    )
    assert allowed["decision"] == "allow" and allowed["provider"] == "anthropic"
    assert allowed["rule"] == 'templates/ci-bot.yaml:7 allow models "claude-sonnet-*"'
    assert allowed["template"] == {"name": "ci-bot", "version": 1, "source": "templates/ci-bot.yaml"}
    too_many = cli(
        policy, "explain", "--agent", "ci-bot", "--model", "claude-sonnet-5", "--max-tokens", "9999"
    )
    assert "rule:     templates/ci-bot.yaml:13 max_tokens_per_request 4096" in too_many.output
    assert cli(policy, "explain", "--agent", "nobody", "--model", "x").exit_code == 1
    assert cli(policy, "explain", "--model", "x").exit_code == 2


def test_prices_and_spend_commands(cli) -> None:  # type: ignore[no-untyped-def]
    out = cli(prices, "set", "my-model*", "--input", "1.5", "--output", "6", "--cache-read", "0.15")
    assert out.exit_code == 0 and "cache read 0.15, cache write 1.5" in out.output
    stored = orjson.loads(cli(prices, "list", "--stored", "--json").output)
    assert [(p["model"], p["input"], p["source"]) for p in stored] == [("my-model*", 1.5, "store")]
    assert "claude-sonnet-4*" in cli(prices, "list").output
    assert cli(prices, "set", "x", "--input", "-1", "--output", "1").exit_code == 1

    db = cli.context.db
    user = db.query_one("SELECT id FROM users WHERE name = 'alice'")
    with db.transaction() as tx:
        for i, (model, cost) in enumerate([("claude-sonnet-5", 0.5), ("gpt-5", 0.25), ("gpt-5", 0.25)]):
            tx.execute(
                "INSERT INTO spend (interception_id, ts, day, user_id, model, input_tokens, output_tokens,"
                " cost_usd, price_model, settled) VALUES (?, ?, '2026-11-17', ?, ?, 10, 20, ?, 'p', 1)",
                (f"i{i}", 1_700_000_000_000_000 + i, user["id"] if user else None, model, cost),
            )
    report = orjson.loads(cli(spend, "report", "--by", "model", "--json").output)
    assert [(r["key"], r["calls"], r["cost_usd"]) for r in report["rows"]] == [
        ("claude-sonnet-5", 1, 0.5),
        ("gpt-5", 2, 0.5),
    ]
    csv = cli(spend, "report", "--by", "user", "--csv").output
    assert csv == (
        "user,calls,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,cost_usd,unpriced\n"
        "alice,3,30,60,0,0,1.0,0\n"
    )
    table = cli(spend, "report", "--by", "day").output
    assert "2026-11-17" in table and "TOTAL" in table
    assert cli(spend, "report", "--from", "soon").exit_code == 2
    assert cli(spend, "rebuild").output == "rebuilt spend for 0 calls\n"


def test_team_commands(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli(teams, "create", "platform", "--description", "Platform team").exit_code == 0
    assert cli(teams, "create", "platform").exit_code == 1
    assert cli(teams, "add-member", "platform", "alice").output == "alice is in team platform\n"
    cli(teams, "create", "research")
    assert "moved from platform" in cli(teams, "add-member", "research", "alice").output
    assert cli(teams, "set-agent", "ci-bot", "platform").exit_code == 0
    out = cli(teams, "limits", "platform", "--daily-usd", "50", "--rpm", "600")
    assert out.output == "team platform limits: 50 USD/day, 600 req/min\n"
    shown = cli(teams, "show", "platform").output
    assert "agents:  ci-bot" in shown and "members: -" in shown and "50 USD/day" in shown
    listed = orjson.loads(cli(teams, "list", "--json").output)
    assert [(t["name"], t["members"], t["agents"]) for t in listed] == [
        ("platform", 0, 1),
        ("research", 1, 0),
    ]
    assert cli(teams, "limits", "platform").exit_code == 2
    assert cli(teams, "limits", "platform", "--clear").output == "team platform limits: none\n"
    assert cli(teams, "remove-member", "research", "alice").exit_code == 0
    assert cli(teams, "remove-member", "research", "alice").exit_code == 1
    kinds = [r["kind"] for r in cli.context.db.query("SELECT kind FROM events WHERE kind LIKE 'admin.team%'")]
    assert kinds == [
        "admin.team.create",
        "admin.team.member.add",
        "admin.team.create",
        "admin.team.member.add",
        "admin.team.agent",
        "admin.team.limits",
        "admin.team.limits",
        "admin.team.member.remove",
    ]


def test_tokens_create_binds_a_template(cli) -> None:  # type: ignore[no-untyped-def]
    from gatehouse.cli.identity import tokens

    assert cli(templates, "apply", "templates/ci-bot.yaml").exit_code == 0
    made = cli(tokens, "create", "--user", "alice", "--agent", "ci-bot", "--template", "ci-bot", "--json")
    assert made.exit_code == 0, made.output
    token = orjson.loads(made.output)
    assert token["template"] == "ci-bot"
    listed = orjson.loads(cli(tokens, "list", "--json").output)
    assert [t["template"] for t in listed if t["id"] == token["id"]] == ["ci-bot"]
    missing = CliRunner().invoke(tokens, ["create", "--user", "alice", "--template", "nope"], obj=cli.context)
    assert missing.exit_code == 1 and "no template named 'nope'" in missing.output
