"""The Bridge enforces templates: a model outside the template is refused before any upstream call, in the
provider's error format, and the refusal is recorded naming the rule that made it."""

from __future__ import annotations

import anthropic
import httpx
import openai
import orjson
import pytest

from gatehouse.identity.service import IdentityError
from gatehouse.policy.settings import PolicySettings
from gatehouse.policy.templates import TemplateStore
from tests.policy.conftest import CI_BOT, OPERATOR, PolicyStackFactory, deny_details


def anthropic_client(url: str, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=token, max_retries=0)


def test_model_outside_template_is_refused_before_any_upstream_call(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack()
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        anthropic_client(stack.anthropic_url, stack.token).messages.create(
            model="claude-opus-4-7", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
    assert exc.value.status_code == 403
    body = exc.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "permission_error"
    assert 'templates/ci-bot.yaml:11 deny models "claude-opus-*"' in body["error"]["message"]
    assert stack.sim.requests() == []  # nothing reached the upstream

    details = deny_details(stack)
    assert details["status"] == 403
    assert details["policy"]["rule"] == 'templates/ci-bot.yaml:11 deny models "claude-opus-*"'
    assert details["policy"]["template"] == "ci-bot"
    [row] = stack.interceptions()
    assert (row["decision"], row["status"], row["model"]) == ("deny", 403, "claude-opus-4-7")


def test_deny_by_default_and_openai_format(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack()
    c = openai.OpenAI(base_url=stack.openai_url, api_key=stack.token, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        c.chat.completions.create(
            model="gpt-4.1", max_completion_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
    body = exc.value.body
    assert isinstance(body, dict) and body["type"] == "permission_error"
    assert 'models: no allow rule matches "gpt-4.1" (deny by default)' in body["message"]
    # A deny rule wins over an allow rule that also matches (openai/gpt-5* allows, gpt-5-pro* denies).
    with pytest.raises(openai.PermissionDeniedError) as exc2:
        c.responses.create(model="gpt-5-pro", input="hi", max_output_tokens=100)
    assert 'deny models "gpt-5-pro*"' in str(exc2.value.body)
    assert stack.sim.requests() == []
    # The allowed one goes through, and its request event names the rule that allowed it.
    done = c.chat.completions.create(
        model="gpt-5-mini", max_completion_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content
    rows = stack.log_db.query("SELECT details FROM events WHERE kind = 'llm.request' AND decision = 'allow'")
    policy = orjson.loads(rows[0]["details"])["policy"]
    assert policy["rule"] == 'templates/ci-bot.yaml:9 allow models "openai/gpt-5*"'
    assert policy["template_version"] == 1


def test_allowed_call_is_forwarded_and_recorded(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack()
    message = anthropic_client(stack.anthropic_url, stack.token).messages.create(
        model="claude-sonnet-5", max_tokens=200, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.content
    [row] = stack.interceptions()
    assert (row["decision"], row["status"]) == ("allow", 200)
    assert len(stack.sim.requests()) == 1


def test_max_tokens_over_the_template_limit_is_refused_with_a_clear_message(
    policy_stack: PolicyStackFactory,
) -> None:
    stack = policy_stack()
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        anthropic_client(stack.anthropic_url, stack.token).messages.create(
            model="claude-sonnet-5", max_tokens=8000, messages=[{"role": "user", "content": "hi"}]
        )
    message = str(exc.value.body)
    assert "max_tokens 8000 is over the template's limit of 4096" in message
    assert "templates/ci-bot.yaml:13 max_tokens_per_request 4096" in message
    # OpenAI requests that do not say their maximum are refused when the template sets one.
    c = openai.OpenAI(base_url=stack.openai_url, api_key=stack.token, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as exc2:
        c.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert "does not say its maximum output" in str(exc2.value.body)
    assert stack.sim.requests() == []


def test_a_new_template_version_applies_at_the_next_request(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack()
    client = anthropic_client(stack.anthropic_url, stack.token)
    call = {"model": "claude-opus-4-7", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(**call)  # type: ignore[call-overload]
    TemplateStore(stack.db).apply(
        CI_BOT.replace('    - "claude-opus-*"\n', "").replace('"claude-haiku-*"', '"claude-opus-*"'),
        "templates/ci-bot.yaml",
        actor=OPERATOR,
    )
    assert client.messages.create(**call).content  # type: ignore[call-overload]
    events = stack.events("llm.request")
    assert orjson.loads(events[-1]["details"])["policy"]["template_version"] == 2


def test_tokens_bound_to_no_template(policy_stack: PolicyStackFactory) -> None:
    # By default an unbound token is governed by the provider's models globs only.
    stack = policy_stack(template=None)
    client = anthropic_client(stack.anthropic_url, stack.token)
    assert client.messages.create(
        model="claude-opus-4-7", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ).content
    # With a default template, it is governed by that one.
    stack = policy_stack(template=None, policy=PolicySettings(default_template="ci-bot"), fresh=False)
    _, token = stack.gh.identity.create_token(user="alice", agent="ci-bot", actor=OPERATOR)
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic_client(stack.anthropic_url, token).messages.create(
            model="claude-opus-4-7", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    # With require_template, it may do nothing.
    stack = policy_stack(template=None, policy=PolicySettings(require_template=True), fresh=False)
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        anthropic_client(stack.anthropic_url, token).messages.create(
            model="claude-sonnet-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert "bound to no template" in str(exc.value.body)


def test_token_ttl_is_validated_against_the_template(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack()
    ids = stack.gh.identity
    info, _ = ids.create_token(user="alice", agent="ci-bot", template="ci-bot", actor=OPERATOR)
    assert info.template == "ci-bot"
    assert info.expires_at is not None and info.expires_at - info.created_at == 30 * 86400 * 1_000_000
    short, _ = ids.create_token(
        user="alice", agent="ci-bot", template="ci-bot", ttl_seconds=3600, actor=OPERATOR
    )
    assert short.expires_at is not None and short.expires_at - short.created_at == 3600 * 1_000_000
    with pytest.raises(IdentityError, match=r"at most 30d \(tokens.max_ttl\); asked for 31d"):
        ids.create_token(
            user="alice", agent="ci-bot", template="ci-bot", ttl_seconds=31 * 86400, actor=OPERATOR
        )
    with pytest.raises(IdentityError, match="no template named 'nope'"):
        ids.create_token(user="alice", template="nope", actor=OPERATOR)
    created = stack.events("admin.token.create")
    assert orjson.loads(created[-1]["details"])["template"] == "ci-bot"


def test_revoked_template_token_stops_at_once(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack()
    info, token = stack.gh.identity.create_token(
        user="alice", agent="ci-bot", template="ci-bot", actor=OPERATOR
    )
    body = {"model": "claude-sonnet-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": token, "anthropic-version": "2023-06-01"}
    assert httpx.post(f"{stack.anthropic_url}/v1/messages", json=body, headers=headers).status_code == 200
    stack.gh.identity.revoke_token(info.id, actor=OPERATOR)
    assert httpx.post(f"{stack.anthropic_url}/v1/messages", json=body, headers=headers).status_code == 401


def test_model_listing_shows_only_what_the_template_allows(policy_stack: PolicyStackFactory) -> None:
    stack = policy_stack()
    listed = [m.id for m in anthropic_client(stack.anthropic_url, stack.token).models.list()]
    assert listed == ["claude-sonnet-4-6", "claude-haiku-4-5"]  # the simulator also offers claude-opus-4-7
    unbound = stack.gh.identity.create_token(user="alice", agent="ci-bot", actor=OPERATOR)[1]
    assert "claude-opus-4-7" in [m.id for m in anthropic_client(stack.anthropic_url, unbound).models.list()]
    oai = openai.OpenAI(base_url=stack.openai_url, api_key=stack.token, max_retries=0)
    assert [m.id for m in oai.models.list()] == ["gpt-5", "gpt-5-mini"]
