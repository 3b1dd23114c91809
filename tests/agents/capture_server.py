"""A tiny recording "upstream" for discovering how real agent CLIs talk to a base URL.

Every request (method, path, query, headers, body) is appended to ``CaptureServer.records``
(and optionally to a JSONL file), then answered minimally but validly so that a CLI can
finish one turn with a plain text answer:

* Anthropic Messages: ``POST .../v1/messages`` (SSE when ``"stream": true``, JSON otherwise),
  ``POST .../v1/messages/count_tokens``.
* OpenAI Responses: ``POST .../responses`` (SSE with the full event sequence
  ``response.created`` .. ``response.completed`` when ``"stream": true``, JSON otherwise).
* OpenAI Chat Completions: ``POST .../chat/completions`` (SSE chunks + ``[DONE]`` or JSON).
* ``GET .../models`` (one body that parses as both an Anthropic and an OpenAI model list).
* ``HEAD`` anything: 200, empty.
* Anything else: 404 with an Anthropic-shaped error body (still recorded).

Routing is by path *suffix*, so ``/v1/messages``, ``/bridge/anthropic/v1/messages`` and
``/anything/v1/messages?beta=true`` are all the same endpoint.

Use from tests (runs in a background thread with its own event loop, so the test can block on
a subprocess)::

    with CaptureServer(reply_text="hello") as cap:
        run_claude_code(cap.url("/bridge/anthropic"), ...)
        cap.records  # list of dicts

or standalone, for poking at a CLI by hand::

    python tests/agents/capture_server.py --port 8099 --jsonl /tmp/capture.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

DEFAULT_REPLY = "GATEHOUSE_CAPTURE_OK"
DEFAULT_ANTHROPIC_MODEL = "claude-opus-5-5"
DEFAULT_OPENAI_MODEL = "gpt-5.5"

# Header names whose values are secrets; kept verbatim in records (tests assert on them) but
# never printed by ``summarize``.
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization", "cookie"})


def classify(method: str, path: str) -> str:
    """Name the endpoint a request targets, ignoring any prefix before ``/v1``."""
    p = path.rstrip("/")
    if method == "HEAD":
        return "head"
    if p.endswith("/messages/count_tokens"):
        return "anthropic.count_tokens"
    if p.endswith("/messages"):
        return "anthropic.messages"
    if p.endswith("/responses/compact"):
        return "openai.responses.compact"
    if p.endswith("/responses"):
        return "openai.responses"
    if p.endswith("/chat/completions"):
        return "openai.chat_completions"
    if p.endswith("/models") or "/models/" in p:
        return "models"
    return "unknown"


def _decode_body(raw: bytes, encoding: str) -> tuple[bytes, str | None]:
    enc = encoding.strip().lower()
    if not raw or enc in ("", "identity"):
        return raw, None
    try:
        if enc in ("gzip", "x-gzip"):
            return zlib.decompress(raw, 16 + zlib.MAX_WBITS), None
        if enc == "deflate":
            return zlib.decompress(raw), None
    except zlib.error as exc:
        return raw, f"could not decode {enc}: {exc}"
    return raw, f"content-encoding {enc} not decoded"


def _sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"


class CaptureServer:
    """Recording fake upstream; see module docstring."""

    def __init__(
        self,
        reply_text: str = DEFAULT_REPLY,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        jsonl_path: Path | str | None = None,
    ) -> None:
        self.reply_text = reply_text
        self.host = host
        self.port = port
        self.jsonl_path = Path(jsonl_path) if jsonl_path else None
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ app

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _record(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        body, note = _decode_body(raw, request.headers.get("Content-Encoding", ""))
        rec: dict[str, Any] = {
            "seq": next(self._seq),
            "ts": time.time(),
            "method": request.method,
            "path": request.path,
            "query": {k: request.query.getall(k) for k in request.query},
            "raw_query": request.query_string,
            "kind": classify(request.method, request.path),
            "http_version": f"{request.version.major}.{request.version.minor}",
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_bytes": len(raw),
        }
        if note:
            rec["body_note"] = note
        if body:
            try:
                rec["json"] = orjson.loads(body)
            except orjson.JSONDecodeError:
                try:
                    rec["text"] = body.decode()
                except UnicodeDecodeError:
                    rec["body_b64"] = base64.b64encode(body).decode()
        with self._lock:
            self.records.append(rec)
            if self.jsonl_path:
                with self.jsonl_path.open("ab") as fh:
                    fh.write(orjson.dumps(rec) + b"\n")
        return rec

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        kind = rec["kind"]
        parsed = rec.get("json")
        body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        if kind == "head":
            return web.Response(status=200)
        if request.method == "POST" and kind == "anthropic.messages":
            return await self._anthropic_messages(request, body)
        if request.method == "POST" and kind == "anthropic.count_tokens":
            return web.json_response({"input_tokens": max(1, rec["body_bytes"] // 4)})
        if request.method == "POST" and kind in ("openai.responses", "openai.responses.compact"):
            return await self._openai_responses(request, body)
        if request.method == "POST" and kind == "openai.chat_completions":
            return await self._openai_chat(request, body)
        if request.method == "GET" and kind == "models":
            return web.json_response(self._models())
        return web.json_response(
            {
                "type": "error",
                "error": {"type": "not_found_error", "message": f"capture: no route {request.path}"},
            },
            status=404,
        )

    # ------------------------------------------------------------ anthropic

    def _usage_in(self, body: dict[str, Any]) -> int:
        return max(1, len(orjson.dumps(body)) // 4)

    async def _anthropic_messages(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        model = str(body.get("model") or DEFAULT_ANTHROPIC_MODEL)
        msg_id = "msg_cap_" + uuid.uuid4().hex[:20]
        text = self.reply_text
        in_tok, out_tok = self._usage_in(body), max(1, len(text) // 4)
        headers = {"request-id": "req_cap_" + uuid.uuid4().hex[:16]}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": in_tok,
                        "output_tokens": out_tok,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
                headers=headers,
            )
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        await resp.prepare(request)
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": in_tok,
                            "output_tokens": 1,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0,
                        },
                    },
                },
            ),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            ("ping", {"type": "ping"}),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": out_tok},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        for name, data in events:
            await resp.write(_sse(name, data))
        await resp.write_eof()
        return resp

    # --------------------------------------------------------------- openai

    def _models(self) -> dict[str, Any]:
        # One body that both SDK families accept: Anthropic reads type/id/display_name/created_at,
        # OpenAI reads object/id/created/owned_by.
        ids = [DEFAULT_ANTHROPIC_MODEL, "claude-haiku-4-5", DEFAULT_OPENAI_MODEL]
        data = [
            {
                "type": "model",
                "id": mid,
                "display_name": mid,
                "created_at": "2025-01-01T00:00:00Z",
                "object": "model",
                "created": 1735689600,
                "owned_by": "gatehouse-capture",
            }
            for mid in ids
        ]
        return {"object": "list", "data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}

    async def _openai_responses(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        model = str(body.get("model") or DEFAULT_OPENAI_MODEL)
        text = self.reply_text
        resp_id = "resp_cap_" + uuid.uuid4().hex[:24]
        item_id = "msg_cap_" + uuid.uuid4().hex[:24]
        created = int(time.time())
        in_tok, out_tok = self._usage_in(body), max(1, len(text) // 4)
        usage = {
            "input_tokens": in_tok,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out_tok,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": in_tok + out_tok,
        }
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {
            "id": item_id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }

        def response_obj(status: str, output: list[Any], with_usage: bool) -> dict[str, Any]:
            return {
                "id": resp_id,
                "object": "response",
                "created_at": created,
                "status": status,
                "error": None,
                "incomplete_details": None,
                "instructions": body.get("instructions"),
                "model": model,
                "output": output,
                "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "previous_response_id": body.get("previous_response_id"),
                "store": body.get("store", False),
                "temperature": None,
                "tool_choice": body.get("tool_choice", "auto"),
                "tools": body.get("tools", []),
                "top_p": None,
                "usage": usage if with_usage else None,
                "metadata": {},
            }

        headers = {"x-request-id": "req_cap_" + uuid.uuid4().hex[:16]}
        if not body.get("stream"):
            return web.json_response(response_obj("completed", [item], True), headers=headers)

        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        await resp.prepare(request)
        seq = itertools.count(0)
        in_progress_item = {**item, "status": "in_progress", "content": []}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": response_obj("in_progress", [], False)},
            {"type": "response.in_progress", "response": response_obj("in_progress", [], False)},
            {"type": "response.output_item.added", "output_index": 0, "item": in_progress_item},
            {
                "type": "response.content_part.added",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
            {
                "type": "response.output_text.delta",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            },
            {
                "type": "response.output_text.done",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            },
            {
                "type": "response.content_part.done",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": part,
            },
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": response_obj("completed", [item], True)},
        ]
        for ev in events:
            ev["sequence_number"] = next(seq)
            await resp.write(_sse(ev["type"], ev))
        await resp.write_eof()
        return resp

    async def _openai_chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        model = str(body.get("model") or DEFAULT_OPENAI_MODEL)
        text = self.reply_text
        cid = "chatcmpl-cap" + uuid.uuid4().hex[:20]
        created = int(time.time())
        in_tok, out_tok = self._usage_in(body), max(1, len(text) // 4)
        usage = {"prompt_tokens": in_tok, "completion_tokens": out_tok, "total_tokens": in_tok + out_tok}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        chunks = [
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
            },
            {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        for chunk in chunks:
            await resp.write(_sse(None, chunk))
        await resp.write(_sse(None, b"[DONE]"))
        await resp.write_eof()
        return resp

    # ------------------------------------------------------ thread runner

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, prefix: str = "") -> str:
        """``base_url`` + prefix, e.g. ``cap.url("/bridge/openai/v1")``."""
        return self.base_url + prefix

    def start(self) -> CaptureServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="capture-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("capture server did not start within 10s")
        if self._startup_error:
            raise RuntimeError("capture server failed to start") from self._startup_error
        return self

    def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.SockSite(self._runner, sock).start())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> CaptureServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ queries

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)

    def by_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.snapshot() if r["kind"] == kind]

    def summarize(self) -> list[str]:
        """One line per request: method, path?query, kind, status-relevant headers (secrets masked)."""
        lines = []
        for r in self.snapshot():
            q = f"?{r['raw_query']}" if r["raw_query"] else ""
            model = (r.get("json") or {}).get("model") if isinstance(r.get("json"), dict) else None
            stream = (r.get("json") or {}).get("stream") if isinstance(r.get("json"), dict) else None
            hdrs = {k: ("<redacted>" if k in SECRET_HEADERS else v) for k, v in r["headers"].items()}
            lines.append(
                f"{r['method']} {r['path']}{q} kind={r['kind']} model={model} stream={stream} {hdrs}"
            )
        return lines


@contextlib.contextmanager
def running(reply_text: str = DEFAULT_REPLY, **kwargs: Any) -> Iterator[CaptureServer]:
    server = CaptureServer(reply_text, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--jsonl", default=None, help="append every request here as one JSON line")
    ap.add_argument("--reply", default=DEFAULT_REPLY)
    args = ap.parse_args(argv)
    server = CaptureServer(args.reply, host=args.host, port=args.port, jsonl_path=args.jsonl)
    print(f"capture server on http://{args.host}:{args.port} -> {args.jsonl or '(memory only)'}", flush=True)
    web.run_app(server.build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
