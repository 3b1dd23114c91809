"""Keys stay where they belong: the upstream never sees the Gatehouse token, the client never sees the
upstream key, and neither appears in the store, the logs or any API response."""

from __future__ import annotations

import logging

import anthropic
import httpx
import httpx2
import openai
import pytest

from gatehouse.audit.journal import journal_dir
from gatehouse.config import AuditSettings, BridgeSettings, CapturePolicy
from tests.gateway.conftest import UPSTREAM_KEY, StackFactory


def test_keys_never_cross_over_or_get_recorded(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stack = make_stack(bridge=BridgeSettings(capture=CapturePolicy.FULL), audit=AuditSettings(journal=True))
    seen_by_client: list[str] = []

    def keep(response: httpx2.Response) -> None:
        response.read()
        seen_by_client.append(str(response.headers) + response.text)

    a = anthropic.Anthropic(
        base_url=stack.anthropic_url,
        api_key=stack.token,
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"response": [keep]}),
    )
    a.messages.create(model="claude-sonnet-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    with a.messages.stream(
        model="claude-sonnet-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        s.get_final_message()
    a.models.list()
    o = openai.OpenAI(
        base_url=stack.openai_url,
        api_key=stack.token,
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"response": [keep]}),
    )
    o.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    o.responses.create(model="gpt-5", input="hi")
    api = httpx.get(f"{stack.url}/api/v1/sessions", headers={"authorization": f"Bearer {stack.admin_token}"})
    tokens = httpx.get(f"{stack.url}/api/v1/tokens", headers={"authorization": f"Bearer {stack.admin_token}"})
    assert api.status_code == 200 and tokens.status_code == 200

    upstream = stack.sim.requests()
    assert len(upstream) == 5
    for request in upstream:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert stack.token not in str(request)
        assert UPSTREAM_KEY in (headers.get("x-api-key", "") + headers.get("authorization", ""))

    client_side = "".join(seen_by_client) + api.text + tokens.text
    assert UPSTREAM_KEY not in client_side
    assert stack.token not in api.text + tokens.text

    dump = ""
    for table in ("events", "sessions", "spend", "tokens", "users", "agents", "tool_calls"):
        dump += str(stack.derived_db.query(f"SELECT * FROM {table}"))
    journal = journal_dir(stack.db)
    assert journal is not None and list(journal.glob("*.seg"))  # the events went through it
    dump += "".join(p.read_bytes().decode("utf-8", "replace") for p in journal.glob("*.seg"))
    assert "x-api-key" not in dump.lower() or UPSTREAM_KEY not in dump
    assert UPSTREAM_KEY not in dump and stack.token not in dump and stack.admin_token not in dump
    logs = caplog.text
    assert UPSTREAM_KEY not in logs and stack.token not in logs
