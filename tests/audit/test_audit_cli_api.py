"""`gatehouse audit ...` and /api/v1/audit/...: what operators and auditors see."""

from __future__ import annotations

import base64
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, SecretStr, ValidationError

from gatehouse.audit.events import Event, now_us
from gatehouse.audit.search import project_search_index
from gatehouse.audit.settings import RetentionSettings, SigningKey
from gatehouse.audit.writer import append_events
from gatehouse.cli import audit as audit_cli
from gatehouse.cli.audit import audit
from gatehouse.cli.context import Context
from gatehouse.config import AuditSettings, ProviderSettings, Settings, StoreSettings
from gatehouse.identity.service import Actor, IdentityService
from gatehouse.server import build, create_app
from gatehouse.serving import serve_in_thread
from gatehouse.simulator.app import create_app as create_simulator
from gatehouse.simulator.config import SimulatorConfig

UPSTREAM_KEY = "sk-upstream-audit-test"
DAY_US = 86_400_000_000


# The settings as they will be once `retention` and `signing_key` are attached to [audit].
class AuditWithIntegrity(AuditSettings):
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    signing_key: SigningKey = None


class MergedSettings(Settings):
    audit: AuditWithIntegrity = Field(default_factory=AuditWithIntegrity)


def context(settings: MergedSettings) -> Context:
    ctx = Context(None)
    ctx._settings = settings
    return ctx


def run(ctx: Context | None, *args: str) -> Result:
    return CliRunner().invoke(audit, list(args), obj=ctx, catch_exceptions=False)


def as_json(result: Result) -> Any:
    return orjson.loads(result.stdout)


@pytest.fixture
def keyfile(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "keys" / "signing.pem"
    result = run(None, "keygen", "--out", str(path))
    assert result.exit_code == 0
    public = result.stdout.split("public key:")[1].strip()
    return path, public


@pytest.fixture
def cli(tmp_path: Path, keyfile: tuple[Path, str]) -> Iterator[Context]:
    settings = MergedSettings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'gh.db'}"),
        audit=AuditWithIntegrity(
            signing_key=f"file:{keyfile[0]}",  # type: ignore[arg-type]
            retention=RetentionSettings(default_days=60, kinds={"admin.*": 0}),
        ),
    )
    ctx = context(settings)
    identity = IdentityService(ctx.db)
    identity.create_user("alice", actor=Actor(name="test"))
    identity.create_agent("ci-bot", owner="alice", actor=Actor(name="test"))
    bot = identity.list_agents()[0]["id"]
    with ctx.db.transaction() as tx:
        append_events(
            tx,
            [
                Event(
                    kind="llm.request",
                    session="s1",
                    actor_agent=bot,
                    details={"last_prompt": "DROP TABLE users"},
                ),
                Event(kind="test.old", ts=now_us() - 90 * DAY_US, session="s-old"),
            ],
            [project_search_index],
        )
    yield ctx
    ctx.db.close()


def test_keygen_writes_a_private_key_only_the_owner_reads(keyfile: tuple[Path, str]) -> None:
    path, public = keyfile
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert len(public) == 44
    assert run(None, "keygen", "--out", str(path)).exit_code == 1  # no silent overwrite


def test_signing_key_setting_reads_env_and_files_and_rejects_junk(keyfile: tuple[Path, str]) -> None:
    seed = base64.b64encode(Ed25519PrivateKey.generate().private_bytes_raw()).decode()
    from_env = AuditWithIntegrity.model_validate(
        {"signing_key": "env:GH_KEY"}, context={"environ": {"GH_KEY": seed}}
    )
    assert isinstance(from_env.signing_key, SecretStr) and seed not in repr(from_env)
    from_file = AuditWithIntegrity.model_validate({"signing_key": f"file:{keyfile[0]}"})
    assert from_file.signing_key is not None
    with pytest.raises(ValidationError, match="base64 32-byte seed"):
        AuditWithIntegrity.model_validate({"signing_key": "c2hvcnQ="})
    with pytest.raises(ValidationError, match="GH_MISSING"):
        AuditWithIntegrity.model_validate({"signing_key": "env:GH_MISSING"}, context={"environ": {}})


def test_checkpoint_verify_and_offline_verification(
    cli: Context, keyfile: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(cli, "public-key").stdout.strip() == keyfile[1]
    checkpoint = as_json(run(cli, "checkpoint", "--json"))
    assert checkpoint["signature"] and checkpoint["kind"] == "manual"
    assert [c["id"] for c in as_json(run(cli, "checkpoints", "--json"))] == [checkpoint["id"]]

    monkeypatch.setattr(audit_cli, "PROGRESS_EVERY", 2)
    result = run(cli, "verify")
    assert result.exit_code == 0, result.output
    assert "chain OK" in result.stdout and "1 signature(s) verified" in result.stdout
    assert "verified" in result.stderr  # progress goes to stderr
    report = as_json(run(cli, "verify", "--json"))
    assert report["ok"] and report["checkpoints"]["signed_through"] == checkpoint["seq"]

    trail = tmp_path / "trail.jsonl"
    exported = as_json(run(cli, "export-trail", "--out", str(trail), "--json"))
    assert exported["events"] == checkpoint["seq"] and exported["checkpoints"] == 1
    # No settings, no database: the file and the public key are enough.
    offline = run(None, "verify", "--file", str(trail), "--public-key", keyfile[1], "--json")
    assert offline.exit_code == 0 and as_json(offline)["checkpoints"]["verified"] == 1

    with cli.db.transaction() as tx:
        tx.execute("UPDATE events SET decision = 'deny' WHERE seq = 3")
    broken = run(cli, "verify")
    assert broken.exit_code == 1
    assert "chain BROKEN at seq 3" in broken.stdout and "edited" in broken.stdout
    assert as_json(run(cli, "verify", "--json"))["first_break"]["seq"] == 3


def test_holds_and_prune_from_the_command_line(cli: Context) -> None:
    held = as_json(run(cli, "hold", "add", "--session", "s-old", "--reason", "case 12", "--json"))
    assert held["scope"] == "session" and held["target"] == "s-old"
    assert [h["id"] for h in as_json(run(cli, "hold", "list", "--json"))] == [held["id"]]
    assert "case 12" in run(cli, "hold", "list").stdout

    dry = as_json(run(cli, "prune", "--dry-run", "--json"))
    assert dry["pruned"] == 0 and dry["held"] == 1

    assert run(cli, "hold", "add", "--session", "s1", "--user", "alice", "--reason", "x").exit_code == 2
    missing = run(cli, "hold", "add", "--user", "nobody", "--reason", "x")
    assert missing.exit_code == 1 and "no user named 'nobody'" in missing.output

    assert run(cli, "hold", "release", held["id"]).exit_code == 0
    assert run(cli, "hold", "release", held["id"]).exit_code == 1
    report = as_json(run(cli, "prune", "--json"))
    assert report["by_kind"] == {"test.old": 1}
    assert "held" in run(cli, "prune").stdout
    assert as_json(run(cli, "verify", "--json"))["ok"]
    kinds = [e["kind"] for e in as_json(run(cli, "timeline", "--kind", "admin.hold.*", "--json"))["events"]]
    assert kinds == ["admin.hold.add", "admin.hold.release"]


def test_timeline_search_show_and_tail(cli: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    page = as_json(run(cli, "timeline", "--agent", "ci-bot", "--json"))
    assert [e["kind"] for e in page["events"]] == ["llm.request"] and page["next_cursor"] is None
    table = run(cli, "timeline", "--agent", "ci-bot").stdout
    assert "llm.request" in table and "ci-bot" in table
    assert run(cli, "timeline", "--from", "yesterday-ish").exit_code == 2

    found = as_json(run(cli, "search", "drop table", "--json"))["events"]
    assert [e["session"] for e in found] == ["s1"]
    assert "DROP TABLE" in run(cli, "search", "DROP TABLE").stdout
    assert run(cli, "search", "!!!").exit_code == 2

    shown = as_json(run(cli, "show", found[0]["id"], "--json"))
    assert shown["details"]["last_prompt"] == "DROP TABLE users"
    assert run(cli, "show", "nope").exit_code == 1

    lines = run(cli, "tail", "-n", "2", "--json").stdout.splitlines()
    assert [orjson.loads(line)["kind"] for line in lines] == ["llm.request", "test.old"]

    # Follow: one new event arrives, then Ctrl-C ends it cleanly.
    polls = iter(["append", "interrupt"])

    def sleep(_seconds: float) -> None:
        if next(polls) == "append":
            with cli.db.transaction() as tx:
                append_events(tx, [Event(kind="test.live")])
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(audit_cli, "_wait", sleep)
    followed = run(cli, "tail", "-n", "1", "-f")
    assert followed.exit_code == 0
    assert [line.split()[2] for line in followed.stdout.splitlines()] == ["test.old", "test.live"]


# -- the REST API --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve_in_thread(lambda: create_simulator(SimulatorConfig(api_key=UPSTREAM_KEY))) as url:
        yield url


@pytest.fixture
def api(tmp_path: Path, upstream: str, keyfile: tuple[Path, str]) -> Iterator[dict[str, Any]]:
    settings = MergedSettings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'api.db'}"),
        audit=AuditWithIntegrity(signing_key=f"file:{keyfile[0]}"),  # type: ignore[arg-type]
        providers={
            "anthropic": ProviderSettings(
                type="anthropic", base_url=upstream, api_key=SecretStr(UPSTREAM_KEY)
            )
        },
    )
    gh = build(settings)
    operator = Actor(name="test")
    tokens = {}
    for name, role in (("root", "admin"), ("judy", "auditor"), ("alice", "member")):
        gh.identity.create_user(name, role=role, actor=operator)
        tokens[role] = gh.identity.create_token(user=name, actor=operator)[1]
    gh.identity.create_agent("ci-bot", owner="alice", actor=operator)
    tokens["agent"] = gh.identity.create_token(user="alice", agent="ci-bot", actor=operator)[1]

    with serve_in_thread(lambda: create_app(gh)) as url:
        yield {"url": url, "tokens": tokens, "gh": gh}


def get(api: dict[str, Any], path: str, role: str = "auditor", **params: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {api['tokens'][role]}"} if role else {}
    return httpx.get(f"{api['url']}/api/v1/audit/{path}", params=params, headers=headers)


def test_api_answers_auditors_about_bridge_calls(api: dict[str, Any]) -> None:
    answer = httpx.post(
        f"{api['url']}/bridge/anthropic/v1/messages",
        headers={"x-api-key": api["tokens"]["agent"], "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-sonnet-4-6",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Please DROP TABLE customers in staging"}],
        },
    )
    assert answer.status_code == 200
    interception = answer.headers["x-gatehouse-interception"]

    timeline = get(api, "timeline", agent="ci-bot")
    assert timeline.status_code == 200
    events = timeline.json()["events"]
    assert [e["kind"] for e in events] == ["llm.request", "llm.response"]
    assert events[0]["id"] == interception and events[1]["parent"] == interception

    found = get(api, "search", q='"drop table" customers').json()["events"]
    assert [e["id"] for e in found] == [interception]
    assert "customers" in found[0]["match"]

    event = get(api, f"events/{interception}")
    assert event.status_code == 200 and event.json()["actor"]["agent_name"] == "ci-bot"

    verified = get(api, "verify", role="admin").json()
    assert verified["ok"] and verified["events"] >= 2

    with api["gh"].db.transaction() as tx:
        tx.execute("UPDATE events SET details = '{}' WHERE id = ?", (interception,))
    broken = get(api, "verify").json()
    assert broken["ok"] is False
    assert broken["first_break"]["kind"] == "edited" and broken["first_break"]["event_id"] == interception


def test_api_refusals_are_problem_details(api: dict[str, Any]) -> None:
    for response, status in (
        (get(api, "timeline", role=""), 401),
        (get(api, "timeline", role="member"), 403),
        (get(api, "timeline", cursor="x"), 400),
        (get(api, "timeline", **{"from": "not a time"}), 400),
        (get(api, "timeline", limit="many"), 400),
        (get(api, "search"), 400),
        (get(api, "search", q="!!!"), 400),
        (get(api, "events/missing"), 404),
        (get(api, "verify", public_key="not-a-key"), 400),
    ):
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == status
