"""The worker's HTTP server: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process's event loop runs. ``/readyz`` answers 200 when the
broker answers a metadata request and the worker has partitions assigned, else 503 with the
reason in JSON. Later roles (callbacks) add their routes to the same app.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]


def make_app(ready: ReadyCheck) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    started = time.time()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "uptime_s": round(time.time() - started, 1)})

    async def readyz(request: web.Request) -> web.Response:
        ok, details = await ready()
        return web.Response(status=200 if ok else 503, content_type="application/json",
                            body=orjson.dumps({"ready": ok, **details}))

    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except BaseException:   # a port taken, or a stop during start-up: nothing left listening
        await runner.cleanup()
        raise
    return runner
