"""`gatehouse audit ...`: verify the chain, checkpoints and keys, the raw trail export, retention and legal
holds, and reading the log back (timeline, search, tail, show)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import SecretStr

from gatehouse.audit.checkpoints import (
    create_checkpoint,
    generate_private_key_pem,
    list_checkpoints,
    load_private_key,
    load_public_key,
    public_key_text,
)
from gatehouse.audit.queries import EventFilter, QueryError, get_event, search, tail, timeline
from gatehouse.audit.retention import (
    HOLD_SCOPES,
    RetentionError,
    add_hold,
    list_holds,
    prune,
    release_hold,
)
from gatehouse.audit.settings import RetentionSettings
from gatehouse.audit.verify import TrailError, VerifyReport, export_trail, verify_database, verify_file
from gatehouse.cli.context import Context, pass_context
from gatehouse.cli.output import emit_json, emit_table, json_option
from gatehouse.store.db import StoreError
from gatehouse.timeutil import iso, parse_time

PROGRESS_EVERY = 250_000


@click.group()
def audit() -> None:
    """The audit trail: verify, checkpoint, export, retention, holds, timeline, search, tail."""


# -- settings that are attached to [audit] -------------------------------------------------------------


def retention_settings(ctx: Context) -> RetentionSettings:
    value = getattr(ctx.settings.audit, "retention", None)
    return value if isinstance(value, RetentionSettings) else RetentionSettings()


def signing_key(ctx: Context) -> Ed25519PrivateKey | None:
    secret = getattr(ctx.settings.audit, "signing_key", None)
    if not isinstance(secret, SecretStr):
        return None
    try:
        return load_private_key(secret.get_secret_value())
    except ValueError as exc:
        raise click.ClickException(f"audit.signing_key: {exc}") from None


def _public_key(ctx: Context | None, given: str | None) -> Ed25519PublicKey | None:
    if given:
        try:
            return load_public_key(given)
        except (ValueError, OSError) as exc:
            raise click.BadParameter(str(exc), param_hint="--public-key") from None
    if ctx is None or not _has_settings(ctx):
        return None
    key = signing_key(ctx)
    return key.public_key() if key is not None else None


def _has_settings(ctx: Context) -> bool:
    try:
        _ = ctx.settings
    except click.ClickException:
        return False
    return True


def _progress(what: str) -> Any:
    started = time.perf_counter()

    def report(done: int, expected: int) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        total = f"/{expected:,}" if expected else ""
        click.echo(f"  {what} {done:,}{total} events ({rate:,.0f}/s)", err=True)

    return report


# -- verify, checkpoints, keys, export -----------------------------------------------------------------


@audit.command("verify")
@click.option(
    "--file",
    "trail",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Verify an exported trail (gatehouse audit export-trail) instead of the store; no database needed.",
)
@click.option(
    "--public-key",
    help="Ed25519 public key (base64, PEM, or a file) to check checkpoint signatures. Default: the"
    " public half of audit.signing_key, if set.",
)
@click.option("--keep-going", is_flag=True, help="Report every break (up to 100), not only the first.")
@json_option
@click.pass_context
def verify_command(
    click_ctx: click.Context, trail: Path | None, public_key: str | None, keep_going: bool, as_json: bool
) -> None:
    """Walk the hash chain and report the first broken link; exit status 1 if the chain is broken."""
    ctx = click_ctx.find_object(Context)
    max_breaks = 100 if keep_going else 1
    key = _public_key(ctx, public_key)
    if trail is not None:
        try:
            report = verify_file(
                trail,
                public_key=key,
                max_breaks=max_breaks,
                progress=_progress("verified"),
                progress_every=PROGRESS_EVERY,
            )
        except TrailError as exc:
            raise click.ClickException(f"{trail}: {exc}") from None
    else:
        if ctx is None:
            raise click.UsageError("no settings: run under `gatehouse` or pass --file")
        report = verify_database(
            ctx.db,
            public_key=key,
            max_breaks=max_breaks,
            progress=_progress("verified"),
            progress_every=PROGRESS_EVERY,
        )
    if as_json:
        emit_json(report.as_dict())
    else:
        _print_report(report, keyed=key is not None)
    if not report.ok:
        click_ctx.exit(1)


def _print_report(r: VerifyReport, *, keyed: bool) -> None:
    span = f"seq {r.first_seq}..{r.last_seq}" if r.first_seq is not None else "empty"
    if r.ok:
        click.echo(f"chain OK: {r.events:,} events ({span}), head seq {r.head_seq}")
    else:
        first = r.first
        assert first is not None
        where = f" (event {first.event_id})" if first.event_id else ""
        click.echo(f"chain BROKEN at seq {first.seq}{where}: {first.kind}")
        click.echo(f"  {first.detail}")
        for other in sorted(r.breaks, key=lambda b: b.seq)[1:]:
            click.echo(f"  also at seq {other.seq}: {other.kind}: {other.detail}")
        if not r.complete:
            click.echo(f"  stopped after {r.events:,} events ({span}); --keep-going reports every break")
    if r.pruned:
        click.echo(
            f"  {r.pruned:,} pruned events (linked, content not verifiable), {r.prune_records} prune records"
        )
    if r.anchored_at is not None:
        click.echo(f"  starts after compaction, anchored at seq {r.anchored_at}")
    if r.checkpoints:
        signed = (
            f"{r.checkpoints_verified} signature(s) verified, through seq {r.signed_through}"
            if keyed
            else "signatures not checked (no public key)"
        )
        click.echo(f"  {r.checkpoints} checkpoint(s): {signed}; {r.checkpoints_unverified} unverified")
    click.echo(f"  {r.elapsed_s:.2f} s, {r.events_per_s:,.0f} events/s")


@audit.command("checkpoint")
@json_option
@pass_context
def checkpoint_command(ctx: Context, as_json: bool) -> None:
    """Record a checkpoint of the chain's head, signed with audit.signing_key when set."""
    try:
        checkpoint = create_checkpoint(ctx.db, signing_key(ctx), kind="manual", created_by=ctx.actor.name)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(checkpoint.as_dict())
        return
    signed = (
        f"signed by key {checkpoint.key_id}" if checkpoint.signature else "unsigned (no audit.signing_key)"
    )
    click.echo(f"checkpoint {checkpoint.id}: seq {checkpoint.seq} hash {checkpoint.hash} ({signed})")


@audit.command("checkpoints")
@json_option
@pass_context
def checkpoints_command(ctx: Context, as_json: bool) -> None:
    """List checkpoints, oldest first."""
    rows = [c.as_dict() for c in list_checkpoints(ctx.db)]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        row["signed"] = "yes" if row["signature"] else "no"
    emit_table(rows, ["id", "seq", "kind", "ts", "signed", "key_id", "created_by"], times=["ts"])


@audit.command("keygen")
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Private key file."
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def keygen_command(out: Path, force: bool) -> None:
    """Create an Ed25519 signing key (PEM, mode 600) and print its public key."""
    if out.exists() and not force:
        raise click.ClickException(f"{out} exists; pass --force to replace it")
    pem, public = generate_private_key_pem()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch(mode=0o600, exist_ok=True)
    out.chmod(0o600)
    out.write_bytes(pem)
    click.echo(f'private key: {out}  (set audit.signing_key = "file:{out.resolve()}")')
    click.echo(f"public key:  {public}")


@audit.command("public-key")
@pass_context
def public_key_command(ctx: Context) -> None:
    """Print the public key of audit.signing_key (base64), for `audit verify --public-key`."""
    key = signing_key(ctx)
    if key is None:
        raise click.ClickException("audit.signing_key is not set")
    click.echo(public_key_text(key.public_key()))


@audit.command("export-trail")
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="JSONL file to write."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_context
def export_trail_command(ctx: Context, out: Path, as_json: bool) -> None:
    """Write the raw chain (header, checkpoints, one event per line, columns as stored) for `audit verify
    --file`. For SIEM formats, see `gatehouse audit export`."""
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("wb") as f:
        summary = export_trail(ctx.db, f, path=str(out), progress=_progress("exported"))
    tmp.replace(out)
    if as_json:
        emit_json(summary.as_dict())
        return
    click.echo(
        f"exported {summary.events:,} events (seq {summary.first_seq}..{summary.last_seq}) and"
        f" {summary.checkpoints} checkpoint(s) to {out}"
    )


# -- retention and legal holds -------------------------------------------------------------------------


@audit.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; change nothing.")
@json_option
@pass_context
def prune_command(ctx: Context, dry_run: bool, as_json: bool) -> None:
    """Apply retention now (the server also does it every audit.retention.interval_s)."""
    report = prune(
        ctx.db, retention_settings(ctx), dry_run=dry_run, signing_key=signing_key(ctx), actor=ctx.actor
    )
    if as_json:
        emit_json(report.as_dict())
        return
    verb = "would prune" if dry_run else "pruned"
    kinds = ", ".join(f"{k} {n}" for k, n in report.by_kind.items())
    click.echo(f"{verb} {report.pruned:,} events{f' ({kinds})' if kinds else ''}; {report.held:,} held")
    if report.compacted:
        click.echo(
            f"compacted {report.compacted:,} events; the chain now starts at seq {report.first_kept_seq}"
        )


@audit.group("hold")
def hold() -> None:
    """Legal holds: events of a session, user or agent that retention must keep."""


@hold.command("add")
@click.option("--session", help="Session id.")
@click.option("--user", help="User name or id (as actor or on-behalf-of).")
@click.option("--agent", help="Agent name or id.")
@click.option("--reason", required=True, help="Why (case number, request).")
@json_option
@pass_context
def hold_add(
    ctx: Context, session: str | None, user: str | None, agent: str | None, reason: str, as_json: bool
) -> None:
    """Place a legal hold."""
    given = [
        (scope, value) for scope, value in zip(HOLD_SCOPES, (session, user, agent), strict=True) if value
    ]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --session, --user, --agent")
    scope, target = given[0]
    try:
        placed = add_hold(ctx.db, scope=scope, target=target, reason=reason, actor=ctx.actor)
    except RetentionError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(placed.as_dict())
        return
    click.echo(f"hold {placed.id}: {placed.scope} {placed.target_name or placed.target} ({placed.reason})")


@hold.command("list")
@click.option("--all", "include_released", is_flag=True, help="Include released holds.")
@json_option
@pass_context
def hold_list(ctx: Context, include_released: bool, as_json: bool) -> None:
    """List legal holds (active ones unless --all)."""
    rows = [h.as_dict() for h in list_holds(ctx.db, include_released=include_released)]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        row["target"] = row["target_name"] or row["target"]
    emit_table(
        rows,
        ["id", "scope", "target", "reason", "created_at", "created_by", "released_at"],
        times=["created_at", "released_at"],
    )


@hold.command("release")
@click.argument("hold_id")
@json_option
@pass_context
def hold_release(ctx: Context, hold_id: str, as_json: bool) -> None:
    """Release a legal hold: its events follow retention again."""
    try:
        released = release_hold(ctx.db, hold_id, actor=ctx.actor)
    except RetentionError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(released.as_dict())
        return
    click.echo(f"released hold {released.id} ({released.scope} {released.target_name or released.target})")


# -- reading the log -----------------------------------------------------------------------------------


def _filter_options(command: Any) -> Any:
    options = [
        click.option("--user", help="User name or id (as actor or on-behalf-of)."),
        click.option("--agent", help="Agent name or id."),
        click.option("--session", help="Session id."),
        click.option("--workspace", help="Workspace id."),
        click.option("--from", "since", help="Start of the window: ISO 8601 or an age (24h, 7d)."),
        click.option("--to", "until", help="End of the window (exclusive): ISO 8601 or an age."),
        click.option("--kind", "kinds", multiple=True, help="Kind or prefix (llm.*); repeatable."),
        click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True),
        click.option("--cursor", help="Continue after the page that printed this cursor."),
        json_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _event_filter(**kw: Any) -> EventFilter:
    try:
        return EventFilter(
            user=kw["user"],
            agent=kw["agent"],
            session=kw["session"],
            workspace=kw["workspace"],
            since_us=parse_time(kw["since"]) if kw["since"] else None,
            until_us=parse_time(kw["until"]) if kw["until"] else None,
            kinds=tuple(kw["kinds"]),
            limit=kw["limit"],
            cursor=kw["cursor"],
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "seq": e["seq"],
            "ts": e["ts"],
            "kind": e["kind"],
            "decision": e["decision"],
            "user": e["actor"]["user_name"] or e["actor"]["user"],
            "agent": e["actor"]["agent_name"] or e["actor"]["agent"],
            "session": e["session"],
            "resource": e["resource"],
            "match": e.get("match"),
        }
        for e in events
    ]


@audit.command("timeline")
@_filter_options
@pass_context
def timeline_command(ctx: Context, /, as_json: bool, **kw: Any) -> None:
    """What an actor, agent, session or workspace did, across all kinds, in causal (seq) order."""
    try:
        page = timeline(ctx.db, _event_filter(**kw))
    except QueryError as exc:
        raise click.BadParameter(str(exc)) from None
    if as_json:
        emit_json(page.as_dict())
        return
    columns = ["seq", "ts", "kind", "decision", "user", "agent", "session", "resource"]
    emit_table(_rows(page.events), columns, times=["ts"])
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@audit.command("search")
@click.argument("query")
@_filter_options
@pass_context
def search_command(ctx: Context, /, query: str, as_json: bool, **kw: Any) -> None:
    """Full-text search over prompts, tool names and arguments, tool results, errors and admin details,
    newest first. Words must all appear; "quoted words" must appear together."""
    try:
        page = search(ctx.db, query, _event_filter(**kw))
    except QueryError as exc:
        raise click.BadParameter(str(exc), param_hint="QUERY") from None
    if as_json:
        emit_json(page.as_dict())
        return
    emit_table(_rows(page.events), ["seq", "ts", "kind", "user", "agent", "session", "match"], times=["ts"])
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@audit.command("tail")
@click.option("-n", "--lines", "count", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they are written.")
@click.option(
    "--interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True, help="Poll period (s)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def tail_command(ctx: Context, count: int, follow: bool, interval: float, as_json: bool) -> None:
    """The latest events; with -f, follow new ones until Ctrl-C."""
    try:
        events = tail(ctx.db, limit=count)
        last = _print_tail(events, as_json, 0)
        while follow:
            _wait(interval)
            events = tail(ctx.db, after_seq=last, limit=1000)
            last = _print_tail(events, as_json, last)
    except KeyboardInterrupt:
        return


def _wait(seconds: float) -> None:
    time.sleep(seconds)


def _print_tail(events: list[dict[str, Any]], as_json: bool, last: int) -> int:
    for e in events:
        if as_json:
            click.echo(orjson.dumps(e).decode())
        else:
            who = e["actor"]["agent_name"] or e["actor"]["user_name"] or e["actor"]["user"] or "-"
            click.echo(
                f"{e['seq']:>8} {iso(e['ts'])} {e['kind']:<20} {e['decision']:<7} {who:<16}"
                f" {e['resource'] or '-'}"
            )
        last = max(last, int(e["seq"]))
    sys.stdout.flush()
    return last


@audit.command("show")
@click.argument("event_id")
@json_option
@pass_context
def show_command(ctx: Context, event_id: str, as_json: bool) -> None:
    """One event, by id or seq, with its details."""
    event = get_event(ctx.db, event_id)
    if event is None:
        raise click.ClickException(f"no event {event_id!r}")
    if as_json:
        emit_json(event)
        return
    actor = event["actor"]
    click.echo(
        f"event {event['id']}  seq {event['seq']}  {event['time']}  {event['kind']}  [{event['decision']}]"
    )
    user = actor["user_name"] or actor["user"] or "-"
    agent = actor["agent_name"] or actor["agent"] or "-"
    click.echo(
        f"  user={user} agent={agent} session={event['session'] or '-'}"
        f" workspace={event['workspace'] or '-'} parent={event['parent'] or '-'}"
    )
    click.echo(f"  resource={event['resource'] or '-'}{'  (pruned)' if event['pruned'] else ''}")
    click.echo(orjson.dumps(event["details"], option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
