"""The one seam that does provider HTTP I/O: send an ``HttpRequest``, get an ``HttpResponse``.

aiohttp's client, chosen by measurement (``benchmarks/http_clients.py``): at 50 concurrent
requests to a local server, plain aiohttp did 4,600-7,300 req/s at ~140 µs CPU per request;
httpx with the httpx-aiohttp transport 1,800-2,500 req/s at ~440 µs; httpx's default transport
240-400 req/s. Provider adapters stay sans-IO; tests inject a handler (an async function from
``HttpRequest`` to ``HttpResponse``) instead of patching.

Network failures become classified errors: timeouts -> ``errors.Timeout``; anything else on the
wire -> ``errors.Retriable``.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import aiohttp
from yarl import URL

from connector.errors import Retriable, Timeout
from connector.http import HttpRequest, HttpResponse

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpTransport:
    def __init__(self, *, timeout_s: float = 10.0, max_connections: int = 200,
                 handler: Handler | None = None) -> None:
        self._handler = handler
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300),
                timeout=self._timeout, auto_decompress=True, skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "sms-connector"})
        return self._session

    async def send(self, request: HttpRequest) -> HttpResponse:
        if self._handler is not None:
            return await self._handler(request)
        try:
            # encoded=True: send the path exactly as the adapter built it (signatures cover it).
            async with self._client().request(request.method, URL(request.url, encoded=True), headers=request.headers,
                                              data=request.body or None, allow_redirects=False) as resp:
                body = await resp.read()
                headers = {k.lower(): v for k, v in resp.headers.items()}
                return HttpResponse(resp.status, body, headers)
        except asyncio.TimeoutError:
            raise Timeout(f"{request.method} {request.host}: no answer within {self._timeout.total}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Retriable(f"{request.method} {request.host}: {type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
