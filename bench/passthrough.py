"""A bare aiohttp pass-through proxy: the reference point for "what any Python proxy on aiohttp costs".

No authentication, no parsing, no recording: read the body, forward it, relay the answer (buffered, or
chunk by chunk for event streams). Whatever Gatehouse costs beyond this is the price of its features.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}
)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_app(upstream: str) -> web.Application:
    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        url = upstream + request.path_qs
        async with request.app[SESSION].request(request.method, url, data=body, headers=headers) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            if up.content_type != "text/event-stream":
                return web.Response(status=up.status, body=await up.read(), headers=out)
            response = web.StreamResponse(status=up.status, headers=out)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(app: web.Application) -> None:
        await app[SESSION].close()

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", proxy)
    app.on_startup.append(session)
    app.on_cleanup.append(close)
    return app
