"""Every way a call can go wrong gets a clear error in the provider's format, and nothing recorded is lost."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

import anthropic
import apsw
import httpx
import openai
import orjson
import pytest

from gatehouse.config import AuditSettings, BridgeSettings, ServerSettings
from gatehouse.identity.service import Actor
from tests.gateway.conftest import Simulator, Stack, StackFactory

MODEL = "claude-sonnet-5"
BODY = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


def post_messages(stack: Stack, body: bytes, token: str | None = None, **headers: str) -> httpx.Response:
    h = {
        "x-api-key": token or stack.token,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    return httpx.post(
        f"{stack.anthropic_url}/v1/messages", content=body, headers={**h, **headers}, timeout=30
    )


def anthropic_error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["type"] == "error"
    return response.status_code, body["error"]["type"], body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (orjson.dumps({**BODY, "model": 7}), "model"),
        (orjson.dumps({**BODY, "messages": "hi"}), "messages"),
        (orjson.dumps({**BODY, "max_tokens": "many"}), "max_tokens"),
        (orjson.dumps({**BODY, "stream": "yes"}), "stream"),
    ],
)
def test_malformed_requests_are_refused_and_recorded(stack: Stack, body: bytes, message: str) -> None:
    status, kind, text = anthropic_error(post_messages(stack, body))
    assert (status, kind) == (400, "invalid_request_error")
    assert message in text
    [row] = stack.interceptions()
    assert (row["decision"], row["status"]) == ("deny", 400)
    assert message in row["error"]
    assert stack.sim.requests() == []  # nothing reached the upstream


def test_openai_errors_use_the_openai_format(stack: Stack) -> None:
    c = openai.OpenAI(base_url=stack.openai_url, api_key=stack.token, max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="gpt-5", messages="nope")  # type: ignore[arg-type]
    assert exc.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError) as auth:
        openai.OpenAI(base_url=stack.openai_url, api_key="gth_" + "x" * 43, max_retries=0).models.list()
    assert auth.value.body["code"] == "invalid_api_key"  # type: ignore[index]


def test_body_over_the_limit_is_413(make_stack: StackFactory) -> None:
    stack = make_stack(server=ServerSettings(max_body_bytes=10_000))
    big = orjson.dumps({**BODY, "messages": [{"role": "user", "content": "x" * 20_000}]})
    status, kind, _ = anthropic_error(post_messages(stack, big))
    assert (status, kind) == (413, "request_too_large")
    [row] = stack.interceptions()
    assert (row["decision"], row["status"]) == ("deny", 413)


def test_unknown_provider_and_route_are_404_and_never_proxied(stack: Stack) -> None:
    r = httpx.post(f"{stack.url}/bridge/gemini/v1/messages", json=BODY, headers={"x-api-key": stack.token})
    assert anthropic_error(r)[:2] == (404, "not_found_error")
    r = httpx.get(f"{stack.anthropic_url}/v1/files", headers={"x-api-key": stack.token})
    assert anthropic_error(r)[:2] == (404, "not_found_error")
    r = httpx.post(
        f"{stack.openai_url}/embeddings", json={}, headers={"authorization": f"Bearer {stack.token}"}
    )
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    assert stack.sim.requests() == []


def test_unknown_model_upstream_404_passes_through_and_is_recorded(stack: Stack) -> None:
    c = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        c.messages.create(
            model="sim-unknown-model", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    [row] = stack.interceptions()
    assert (row["decision"], row["status"], row["model"]) == ("allow", 404, "sim-unknown-model")
    assert row["error"].startswith("upstream error")


def test_model_outside_the_allowlist_is_refused_before_the_upstream(make_stack: StackFactory) -> None:
    stack = make_stack(anthropic_models=["claude-haiku-*"])
    c = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError, match="not allowed"):
        c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert stack.sim.requests() == []
    [row] = stack.interceptions()
    assert (row["decision"], row["status"]) == ("deny", 403)


def test_missing_invalid_expired_and_revoked_tokens_are_401(stack: Stack) -> None:
    operator = Actor()
    _, revoked = stack.gh.identity.create_token(user="alice", actor=operator)
    stack.gh.identity.revoke_token(revoked[:12], actor=operator)
    info, expired = stack.gh.identity.create_token(user="alice", ttl_seconds=60, actor=operator)
    with stack.db.transaction() as tx:
        tx.execute("UPDATE tokens SET expires_at = 1 WHERE id = ?", (info.id,))

    r = httpx.post(f"{stack.anthropic_url}/v1/messages", json=BODY)
    assert anthropic_error(r)[:2] == (401, "authentication_error")
    for token in ("sk-ant-not-ours", "gth_" + "A" * 43, revoked, expired):
        assert anthropic_error(post_messages(stack, orjson.dumps(BODY), token=token))[:2] == (
            401,
            "authentication_error",
        )
    assert stack.sim.requests() == []
    reasons = _wait(lambda: [orjson.loads(e["details"])["reason"] for e in stack.events("auth.failure")], 4)
    assert sorted(reasons) == ["expired token", "malformed token", "revoked token", "unknown token"]


@pytest.mark.parametrize(
    ("fault", "error"), [("429", anthropic.RateLimitError), ("500", anthropic.InternalServerError)]
)
def test_upstream_errors_pass_through_and_are_recorded(
    stack: Stack, fault: str, error: type[Exception]
) -> None:
    stack.sim.fault(fault)
    c = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    with pytest.raises(error) as exc:
        c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    if fault == "429":
        assert exc.value.response.headers.get("retry-after")  # type: ignore[attr-defined]
    [row] = stack.interceptions()
    assert row["status"] == int(fault) and row["error"]


def test_upstream_timeout_is_504_and_recorded(make_stack: StackFactory) -> None:
    stack = make_stack(bridge=BridgeSettings(read_timeout_s=0.5))
    stack.sim.fault("timeout")
    c = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as exc:
        c.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 504
    [row] = stack.interceptions()
    assert row["status"] == 504 and "time" in row["error"]


def test_upstream_disconnect_mid_stream_ends_the_stream_with_an_error_event(stack: Stack) -> None:
    stack.sim.fault("disconnect", after_events=4)
    c = anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)
    with (
        pytest.raises(anthropic.APIStatusError),
        c.messages.stream(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "x"}]) as stream,
    ):
        for _ in stream:
            pass
    row = _wait(lambda: [r for r in stack.interceptions() if r["status"] is not None], 1)[0]
    assert row["status"] == 502 and "mid-stream" in row["error"]


def test_client_disconnect_mid_stream_cancels_the_upstream_request(
    make_stack: StackFactory, slow_simulator: Simulator
) -> None:
    from urllib.parse import urlsplit

    stack = make_stack(upstream=slow_simulator)
    before = stack.sim.stats()["client_disconnects"]
    host = urlsplit(stack.url)
    body = orjson.dumps({**BODY, "stream": True, "max_tokens": 4000})
    request = (
        f"POST /bridge/anthropic/v1/messages HTTP/1.1\r\nHost: {host.netloc}\r\n"
        f"x-api-key: {stack.token}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host.hostname, host.port)) as sock:
        sock.sendall(request)
        received = b""
        while b"content_block_delta" not in received:
            received += sock.recv(65536)
    row = _wait(lambda: [r for r in stack.interceptions() if r["status"] is not None], 1)[0]
    assert row["status"] == 499 and "client disconnected" in row["error"]
    assert _wait(lambda: [1] * (stack.sim.stats()["client_disconnects"] - before), 1)


def _fill_the_disk_under_the_journal(stack: Stack) -> None:
    """The journal's next write fails as on a full disk (its file swapped for /dev/full): from then on,
    events are committed to the store."""
    journal = stack.gh.writer._journal
    assert journal is not None
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, journal._fd)
    os.close(full)


@contextlib.contextmanager
def _store_locked(stack: Stack) -> Iterator[None]:
    blocker = apsw.Connection(str(stack.db.path))
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_a_locked_store_does_not_hold_up_calls_made_durable_in_the_journal(make_stack: StackFactory) -> None:
    stack = make_stack(audit=AuditSettings(journal=True))
    with _store_locked(stack):
        assert post_messages(stack, orjson.dumps(BODY)).status_code == 200
    [call] = stack.interceptions()
    assert call["status"] == 200 and call["last_prompt"] == "hi"
    assert not stack.events("audit.gap")


def test_store_unavailable_fails_closed_with_503(make_stack: StackFactory) -> None:
    stack = make_stack(audit=AuditSettings(journal=True))
    _fill_the_disk_under_the_journal(stack)
    with _store_locked(stack):
        r = post_messages(stack, orjson.dumps(BODY))
        assert anthropic_error(r)[0] == 503
        assert stack.sim.requests() == []  # refused before anything left for the upstream
    assert post_messages(stack, orjson.dumps(BODY)).status_code == 200
    gap = _wait(lambda: stack.events("audit.gap"), 1)[0]
    assert orjson.loads(gap["details"])["refused_events"] >= 1


def test_store_unavailable_fail_open_forwards_and_records_later(make_stack: StackFactory) -> None:
    stack = make_stack(audit=AuditSettings(fail_mode="open", journal=True))  # type: ignore[arg-type]
    _fill_the_disk_under_the_journal(stack)
    with _store_locked(stack):
        assert post_messages(stack, orjson.dumps(BODY)).status_code == 200
    rows = _wait(lambda: [r for r in stack.interceptions() if r["status"] == 200], 1)
    assert rows[0]["last_prompt"] == "hi"
    assert _wait(lambda: stack.events("audit.gap"), 1)


def _wait(probe, n: int, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if len(found) >= n or time.monotonic() > deadline:
            assert len(found) >= n, f"expected {n}, found {found!r}"
            return found
        time.sleep(0.02)


async def test_a_final_event_without_its_blank_line_is_still_recorded(make_stack: StackFactory) -> None:
    """An upstream that closes right after `message_stop` with no trailing blank line: the call is complete,
    and its usage is recorded, not reported as a broken stream."""
    from aiohttp import web

    from gatehouse.serving import serve_in_thread
    from tests.stack import Simulator

    frames = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 7, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
        ),
    ]
    body = b"".join(f"event: {n}\ndata: {orjson.dumps(d).decode()}\n\n".encode() for n, d in frames)
    body += b'event: message_stop\ndata: {"type":"message_stop"}'  # no closing blank line

    async def messages(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/event-stream")

    def upstream() -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", messages)
        for path in ("/_sim/faults", "/_sim/requests"):
            app.router.add_delete(path, lambda _r: web.json_response({}))
        return app

    with serve_in_thread(upstream) as url:
        stack = make_stack(upstream=Simulator(url))
        r = post_messages(stack, orjson.dumps({**BODY, "stream": True}))
        assert r.status_code == 200 and b"message_stop" in r.content
        row = _wait(lambda: [x for x in stack.interceptions() if x["status"] is not None], 1)[0]
    assert (row["status"], row["error"], row["output_tokens"]) == (200, None, 3)
