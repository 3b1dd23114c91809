"""People manage their own tokens; agents cannot mint credentials."""

from __future__ import annotations

import time

import anthropic
import httpx

from gatehouse.identity.service import Actor
from tests.stack import Stack


def test_a_member_creates_uses_and_revokes_a_token_of_their_own(stack: Stack) -> None:
    _, alice = stack.gh.identity.create_token(user="alice", actor=Actor())
    me = {"authorization": f"Bearer {alice}"}
    made = httpx.post(f"{stack.url}/api/v1/me/tokens", json={"agent": "ci-bot", "name": "laptop"}, headers=me)
    assert made.status_code == 201, made.text
    token = made.json()
    assert (token["user"], token["agent"], token["name"]) == ("alice", "ci-bot", "laptop")
    thirty_days_us = 30 * 86400 * 1_000_000
    assert abs(token["expires_at"] - token["created_at"] - thirty_days_us) < 1_000_000  # default expiry

    c = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=token["token"], max_retries=0)
    c.messages.create(model="claude-sonnet-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])

    listed = httpx.get(f"{stack.url}/api/v1/me/tokens", headers=me).json()["tokens"]
    assert token["id"] in [t["id"] for t in listed] and token["token"] not in str(listed)
    assert httpx.delete(f"{stack.url}/api/v1/me/tokens/{token['prefix']}", headers=me).status_code == 200
    time.sleep(0)  # revocation is immediate: no cache to wait for
    try:
        c.messages.create(model="claude-sonnet-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        raise AssertionError("a revoked token still works")
    except anthropic.AuthenticationError:
        pass


def test_nobody_reaches_someone_elses_tokens_and_agents_mint_none(stack: Stack) -> None:
    _, alice = stack.gh.identity.create_token(user="alice", actor=Actor())
    root_token = stack.gh.identity.list_tokens("root")[0]
    me = {"authorization": f"Bearer {alice}"}
    other = httpx.delete(f"{stack.url}/api/v1/me/tokens/{root_token.id}", headers=me)
    assert other.status_code == 404
    assert stack.gh.identity.list_tokens("root")[0].revoked_at is None

    stack.gh.identity.create_agent("root-bot", owner="root", actor=Actor())
    theirs = httpx.post(f"{stack.url}/api/v1/me/tokens", json={"agent": "root-bot"}, headers=me)
    assert theirs.status_code == 422 and "not owned" in theirs.json()["detail"]

    agent = {"authorization": f"Bearer {stack.token}"}  # ci-bot's token
    refused = httpx.post(f"{stack.url}/api/v1/me/tokens", json={}, headers=agent)
    assert refused.status_code == 403 and "agent" in refused.json()["detail"]
