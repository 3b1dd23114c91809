"""Reading sessions back through the CLI and the REST API, over the same data."""

from __future__ import annotations

import anthropic
import httpx
import orjson
from click.testing import CliRunner

from gatehouse.cli.main import cli
from tests.gateway.conftest import Stack

TOOL = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def drive_session(stack: Stack) -> str:
    c = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    messages: list[dict[str, object]] = [{"role": "user", "content": "get_weather city=Oslo"}]
    first = c.messages.create(model="claude-sonnet-5", max_tokens=100, tools=[TOOL], messages=messages)  # type: ignore[list-item,arg-type]
    call = next(b for b in first.content if b.type == "tool_use")
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "-3C, snow"}],
        },
    ]
    c.messages.create(model="claude-sonnet-5", max_tokens=100, tools=[TOOL], messages=messages)  # type: ignore[list-item,arg-type]
    return str(stack.interceptions()[0]["session_id"])


def run_cli(stack: Stack, *args: str) -> str:
    result = CliRunner().invoke(
        cli, list(args), env={"GATEHOUSE_STORE__URL": stack.db.url}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_lists_filters_and_shows_a_session(stack: Stack) -> None:
    session_id = drive_session(stack)
    listed = orjson.loads(run_cli(stack, "sessions", "list", "--agent", "ci-bot", "--json"))
    assert [s["id"] for s in listed] == [session_id]
    assert listed[0]["interceptions"] == 2 and listed[0]["tool_calls"] == 1
    assert orjson.loads(run_cli(stack, "sessions", "list", "--agent", "someone-else", "--json")) == []
    assert (
        orjson.loads(
            run_cli(stack, "sessions", "list", "--from", "2001-01-01", "--to", "2001-01-02", "--json")
        )
        == []
    )
    assert (
        len(orjson.loads(run_cli(stack, "sessions", "list", "--client", "anthropic-sdk-python", "--json")))
        == 1
    )

    shown = orjson.loads(run_cli(stack, "sessions", "show", session_id, "--json"))
    first, second = shown["interceptions"]
    assert first["request"]["last_prompt"] == "get_weather city=Oslo"
    assert first["response"]["tool_calls"][0]["name"] == "get_weather"
    assert second["request"]["tool_results"][0]["content"] == "-3C, snow"

    text = run_cli(stack, "sessions", "show", session_id)
    assert "tool call" in text and "get_weather" in text and "-3C, snow" in text
    assert session_id in run_cli(stack, "sessions", "list")


def test_cli_reports_bad_input_clearly(stack: Stack) -> None:
    result = CliRunner().invoke(cli, ["sessions", "show", "nope"], env={"GATEHOUSE_STORE__URL": stack.db.url})
    assert result.exit_code == 1 and "no session 'nope'" in result.output
    result = CliRunner().invoke(
        cli, ["sessions", "list", "--from", "yesterday-ish"], env={"GATEHOUSE_STORE__URL": stack.db.url}
    )
    assert result.exit_code == 2 and "cannot read time" in result.output


def test_rest_api_serves_the_same_sessions_to_authorized_roles(stack: Stack) -> None:
    session_id = drive_session(stack)
    admin = {"authorization": f"Bearer {stack.admin_token}"}
    listed = httpx.get(f"{stack.url}/api/v1/sessions", params={"agent": "ci-bot"}, headers=admin).json()
    assert [s["id"] for s in listed["sessions"]] == [session_id]
    shown = httpx.get(f"{stack.url}/api/v1/sessions/{session_id}", headers=admin).json()
    assert len(shown["interceptions"]) == 2

    member = httpx.get(f"{stack.url}/api/v1/sessions", headers={"authorization": f"Bearer {stack.token}"})
    assert member.status_code == 403 and member.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{stack.url}/api/v1/sessions").status_code == 401
    missing = httpx.get(f"{stack.url}/api/v1/sessions/nope", headers=admin)
    assert missing.status_code == 404 and missing.json()["detail"] == "no session 'nope'"
    bad = httpx.get(f"{stack.url}/api/v1/sessions", params={"since": "soon"}, headers=admin)
    assert bad.status_code == 400 and "cannot read time" in bad.json()["detail"]


def test_rest_api_manages_tokens_and_shows_the_secret_once(stack: Stack) -> None:
    admin = {"authorization": f"Bearer {stack.admin_token}"}
    created = httpx.post(f"{stack.url}/api/v1/tokens", json={"user": "alice", "ttl": "1h"}, headers=admin)
    assert created.status_code == 201
    secret = created.json()["token"]
    listed = httpx.get(f"{stack.url}/api/v1/tokens", headers=admin)
    assert secret not in listed.text and created.json()["prefix"] in listed.text
    c = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=secret, max_retries=0)
    c.messages.create(model="claude-sonnet-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    revoked = httpx.delete(f"{stack.url}/api/v1/tokens/{created.json()['id']}", headers=admin)
    assert revoked.status_code == 200
    try:
        c.messages.create(model="claude-sonnet-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        raise AssertionError("a revoked token still works")
    except anthropic.AuthenticationError:
        pass
    bad = httpx.post(f"{stack.url}/api/v1/tokens", json={"user": "alice", "ttl": "forever"}, headers=admin)
    assert bad.status_code == 422 and "cannot read duration" in bad.json()["detail"]
    dup = httpx.post(f"{stack.url}/api/v1/users", json={"name": "alice"}, headers=admin)
    assert dup.status_code == 409
    unbound = httpx.post(
        f"{stack.url}/api/v1/tokens", json={"user": "alice", "template": "nope"}, headers=admin
    )
    assert unbound.status_code in (404, 422) and "no template named 'nope'" in unbound.json()["detail"]
