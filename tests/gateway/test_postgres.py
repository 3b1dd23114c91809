"""The same Bridge on PostgreSQL: a tool-use session is recorded and read back."""

from __future__ import annotations

import anthropic
import openai

from tests.gateway.conftest import StackFactory


def test_bridge_records_into_postgresql(make_stack: StackFactory, pg_url: str) -> None:
    stack = make_stack(store_url=pg_url)
    assert stack.db.dialect == "postgresql"
    c = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    with c.messages.stream(
        model="claude-sonnet-5", max_tokens=50, messages=[{"role": "user", "content": "hi from pg"}]
    ) as s:
        final = s.get_final_message()
    o = openai.OpenAI(base_url=stack.openai_url, api_key=stack.token, max_retries=0)
    o.responses.create(model="gpt-5", input="and again")
    rows = stack.interceptions()
    assert [r["status"] for r in rows] == [200, 200]
    assert rows[0]["output_tokens"] == final.usage.output_tokens
    assert rows[0]["last_prompt"] == "hi from pg"
