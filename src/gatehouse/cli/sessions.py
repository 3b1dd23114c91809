"""`gatehouse sessions list|show`: what agents did through the Bridge."""

from __future__ import annotations

from typing import Any

import click

from gatehouse.bridge.sessions import SessionFilter, list_sessions, show_session
from gatehouse.cli.context import Context, pass_context
from gatehouse.cli.output import emit_json, emit_table, json_option
from gatehouse.timeutil import iso, parse_time


@click.group()
def sessions() -> None:
    """Recorded agent sessions."""


@sessions.command("list")
@click.option("--user", help="User name or id.")
@click.option("--agent", help="Agent name or id.")
@click.option("--model")
@click.option("--provider")
@click.option("--client", help="claude-code, codex, anthropic-sdk-python, ...")
@click.option("--from", "since", help="Start of the window: ISO 8601 or an age (24h, 7d).")
@click.option("--to", "until", help="End of the window: ISO 8601 or an age.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@pass_context
def sessions_list(
    ctx: Context,
    user: str | None,
    agent: str | None,
    model: str | None,
    provider: str | None,
    client: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List sessions, most recent first."""
    try:
        f = SessionFilter(
            user=user,
            agent=agent,
            model=model,
            provider=provider,
            client=client,
            since_us=parse_time(since) if since else None,
            until_us=parse_time(until) if until else None,
            limit=limit,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    rows = list_sessions(ctx.derived_db, f)
    if as_json:
        emit_json(rows)
        return
    emit_table(
        rows,
        [
            "id",
            "user",
            "agent",
            "client",
            "model",
            "interceptions",
            "tool_calls",
            "input_tokens",
            "output_tokens",
            "last_at",
        ],
        times=["last_at"],
    )


@sessions.command("show")
@click.argument("session_id")
@json_option
@pass_context
def sessions_show(ctx: Context, session_id: str, as_json: bool) -> None:
    """Show one session: its LLM calls in order, with prompts, tool calls, results and usage."""
    found = show_session(ctx.derived_db, session_id)
    if found is None:
        raise click.ClickException(f"no session {session_id!r}")
    if as_json:
        emit_json(found)
        return
    s = found["session"]
    click.echo(f"session {s['id']}  user={s['user']} agent={s['agent'] or '-'} client={s['client']}")
    click.echo(
        f"  {s['interceptions']} calls, {s['tool_calls']} tool calls, tokens in={s['input_tokens']}"
        f" out={s['output_tokens']} cache_read={s['cache_read_tokens']} cache_write={s['cache_write_tokens']}"
    )
    for n, item in enumerate(found["interceptions"], 1):
        _print_interception(n, item)


def _print_interception(n: int, item: dict[str, Any]) -> None:
    req, resp = item["request"], item["response"] or {}
    status = resp.get("status", req.get("status", "…"))
    click.echo(
        f"\n#{n} {iso(item['started_at'])}  {req['provider']}/{req.get('model')}  {req['route']}"
        f"{' stream' if req.get('stream') else ''}  -> {status}  [{item['decision']}]"
    )
    if req.get("last_prompt"):
        click.echo(f"  prompt: {_short(req['last_prompt'])}")
    for result in req.get("tool_results") or []:
        flag = " ERROR" if result["is_error"] else ""
        click.echo(
            f"  tool result {result['id']}{flag} ({result['size']} B): {_short(result.get('content'))}"
        )
    if req.get("error"):
        click.echo(f"  refused: {req['error']}")
    for thought in resp.get("thinking") or []:
        click.echo(f"  thinking: {_short(thought)}")
    for call in resp.get("tool_calls") or []:
        click.echo(f"  tool call {call['id']} {call['name']}({_short(call.get('arguments'))})")
    if resp:
        u = resp.get("usage") or {}
        click.echo(
            f"  usage in={u.get('input_tokens')} out={u.get('output_tokens')}"
            f" cache_read={u.get('cache_read_tokens')} cache_write={u.get('cache_write_tokens')}"
            f" reasoning={u.get('reasoning_tokens')}"
            f"  latency={resp.get('latency_ms')} ms ttft={resp.get('ttft_ms')} ms"
        )
        if resp.get("error"):
            click.echo(f"  error: {resp['error']}")


def _short(text: str | None, width: int = 100) -> str:
    if not text:
        return ""
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
