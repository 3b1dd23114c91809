"""Templates as code: validated against the published schema, rejected with line and reason, versioned."""

from __future__ import annotations

import orjson
import pytest
from jsonschema import Draft202012Validator

from gatehouse.identity.service import Actor, IdentityService
from gatehouse.policy.templates import TemplateInvalid, TemplateNotFound, TemplateStore, load_template, schema
from gatehouse.store.db import Database
from tests.policy.conftest import CI_BOT

OPERATOR = Actor()


def test_the_published_schema_is_a_valid_json_schema_and_accepts_every_section() -> None:
    Draft202012Validator.check_schema(schema())
    full = CI_BOT + (
        "budgets:\n"
        "  - {per: agent, usd: 5, period: day}\n"
        "  - {per: template, usd: 500, period: month, window: rolling}\n"
        "rate_limits:\n"
        "  - {per: user, requests_per_minute: 60, tokens_per_minute: 100000}\n"
        "mcp: {servers: [github]}\n"
        "egress: {allow: [pypi.org]}\n"
        "databases: {}\n"
        "approvals: {required_for: [deploy]}\n"
    )
    t = load_template(full, "templates/ci-bot.yaml")
    assert t.name == "ci-bot" and t.max_ttl_s == 30 * 86400
    assert t.document["mcp"] == {"servers": ["github"]}
    assert t.line("models", "deny", 0) == 11
    assert t.line("budgets", 1) == 18


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: x\nmodels:\n  allow: [a]\nbudgets:\n  - per: agent\n    usd: 5\n    period: daily\n",
            "t.yaml:7: budgets[0].period: 'daily' is not one of ['day', 'week', 'month']",
        ),
        (
            "name: x\nmodels:\n  allow: [a]\n  permit: [b]\n",
            "t.yaml:4: models.permit: unknown setting 'permit'",
        ),
        ("name: x\nmodels:\n  deny: [7]\n", "t.yaml:3: models.deny[0]: 7 is not of type 'string'"),
        ("name: x\n", "t.yaml:1: 'models' is a required property"),
        ("name: Not Valid\nmodels: {}\n", "t.yaml:1: name: 'Not Valid' does not match"),
        ("name: x\nmodels:\n  allow: [a\n", "t.yaml:4: invalid YAML"),
        ("name: x\nmodels: {}\nmodels: {}\n", "t.yaml:3: models: duplicate key"),
        ("name: x\nmodels: {}\nmax_tokens_per_request: -1\n", "t.yaml:3: max_tokens_per_request: -1 is less"),
        (
            "name: x\nmodels: {}\ntokens:\n  max_ttl: forever\n",
            "t.yaml:4: tokens.max_ttl: 'forever' does not match",
        ),
        (
            "name: x\nmodels: {}\nrate_limits:\n  - per: agent\n",
            "t.yaml:4: rate_limits[0]: a rate limit needs requests_per_minute or tokens_per_minute",
        ),
        (
            "name: x\nmodels: {}\nbudgets:\n  - {per: agent, usd: 1, period: day}\n"
            "  - {per: agent, usd: 2, period: day}\n",
            "t.yaml:5: budgets[1]: duplicate budget per agent per day (calendar); see budgets[0]",
        ),
        ("", "t.yaml:1: the template is empty"),
        ("- a\n- b\n", "t.yaml:1: must be a mapping"),
    ],
)
def test_invalid_template_is_rejected_with_line_and_reason(text: str, expected: str) -> None:
    with pytest.raises(TemplateInvalid) as exc:
        load_template(text, "t.yaml")
    assert expected in str(exc.value), str(exc.value)


def test_every_problem_is_reported_in_line_order() -> None:
    text = "name: x\ncolour: red\nmodels:\n  allow: [1]\nbudgets:\n  - {per: planet, usd: 0, period: day}\n"
    with pytest.raises(TemplateInvalid) as exc:
        load_template(text, "t.yaml")
    lines = [p.line for p in exc.value.problems]
    assert lines == sorted(lines) and lines[:2] == [2, 4] and len(lines) == 4


def test_apply_versions_the_template_with_a_diff_event(db: Database) -> None:
    store = TemplateStore(db)
    first = store.apply(CI_BOT, "templates/ci-bot.yaml", actor=OPERATOR)
    assert (first.changed, first.current_version, first.next_version) == (True, None, 1)
    again = store.apply(CI_BOT, "templates/ci-bot.yaml", actor=OPERATOR)
    assert (again.changed, again.current_version) == (False, 1)
    changed = CI_BOT.replace("max_tokens_per_request: 4096", "max_tokens_per_request: 8192")
    plan = store.plan(changed, "templates/ci-bot.yaml")
    assert plan.changed and plan.next_version == 2
    assert "-max_tokens_per_request: 4096\n+max_tokens_per_request: 8192" in plan.diff
    assert store.list()[0]["version"] == 1  # plan changed nothing
    second = store.apply(changed, "templates/ci-bot.yaml", actor=Actor(user_id=None, name="dana"))
    assert second.next_version == 2

    events = db.query("SELECT * FROM events WHERE kind = 'admin.template.apply' ORDER BY seq")
    assert len(events) == 2
    details = orjson.loads(events[1]["details"])
    assert details["version"] == 2 and details["previous_version"] == 1 and details["by"] == "dana"
    assert details["diff"] == second.diff and details["hash"] == load_template(changed).hash
    assert events[1]["resource"] == "template:ci-bot"

    current = store.show("ci-bot")
    assert current["version"] == 2 and current["content"] == changed and current["created_by"] == "dana"
    assert [v["version"] for v in current["versions"]] == [1, 2]
    old = store.show("ci-bot", 1)
    assert old["content"] == CI_BOT and old["document"]["max_tokens_per_request"] == 4096
    with pytest.raises(TemplateNotFound):
        store.show("ci-bot", 3)
    with pytest.raises(TemplateNotFound):
        store.show("nope")
    version = db.query_one("SELECT version FROM policy_state")
    assert version is not None and version["version"] == 3  # 1 + two applies


async def test_principal_carries_template_team_and_policy_version(db: Database) -> None:
    ids = IdentityService(db)
    ids.create_user("alice", actor=OPERATOR)
    ids.create_agent("bot", owner="alice", actor=OPERATOR)
    TemplateStore(db).apply(CI_BOT, "templates/ci-bot.yaml", actor=OPERATOR)
    from gatehouse.policy.teams import TeamService

    teams = TeamService(db)
    team = teams.create("platform", actor=OPERATOR)
    teams.add_member("platform", "alice", actor=OPERATOR)
    _, secret = ids.create_token(user="alice", agent="bot", template="ci-bot", actor=OPERATOR)
    p = await ids.authenticate(secret)
    assert (p.template, p.team_id, p.policy_version) == ("ci-bot", team["id"], 2)
    other = teams.create("research", actor=OPERATOR)
    teams.set_agent_team("bot", "research", actor=OPERATOR)
    assert (await ids.authenticate(secret)).team_id == other["id"]
    [token] = ids.list_tokens("alice")
    assert token.template == "ci-bot"
