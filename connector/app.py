"""Wiring of the worker process: settings in, running dispatcher and HTTP server out.

No business logic: builds one ``RouteSender`` per configured route (provider adapter + shared
transport), the ``Router``, the ``Dispatcher`` and the web app, then runs until SIGINT/SIGTERM
and stops them in order (stop fetching, drain, commit, close).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from connector.config import Settings
from connector.policy import RetryPolicy
from connector.providers import REGISTRY
from connector.routing import Router
from connector.sender import RouteSender
from connector.streams.dispatch import Dispatcher
from connector.transport import HttpTransport
from connector.web import make_app, serve

log = logging.getLogger("sms_connector.worker")


def build_senders(settings: Settings) -> dict[str, RouteSender]:
    d, h = settings.dispatch, settings.http
    retry = RetryPolicy(max_attempts=d.retry_max_attempts, base_delay_s=d.retry_base_delay_s,
                        max_delay_s=d.retry_max_delay_s, max_retry_after_s=d.retry_after_max_s)
    senders: dict[str, RouteSender] = {}
    for name, route in settings.routes.items():
        c = route.common
        provider = REGISTRY[c.provider](route.provider, route=name, segment_policy=c.segment_policy,
                                        max_segments=c.max_segments, sender=c.sender)
        transport = HttpTransport(timeout_s=h.provider_timeout_s,
                                  max_connections=min(h.provider_max_connections, c.concurrency))
        senders[name] = RouteSender(provider, transport, concurrency=c.concurrency, batch_max=c.batch_max,
                                    batch_linger_ms=c.batch_linger_ms, retry=retry)
    return senders


async def run_worker(settings: Settings, stop: asyncio.Event | None = None,
                     roles: frozenset[str] = frozenset({"dispatch"})) -> None:
    """Run the worker's roles until ``stop`` is set or SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    senders = build_senders(settings)
    router = Router.from_settings(settings.routing, {n: s.provider.name for n, s in senders.items()})
    dispatcher = Dispatcher(settings, senders, router)

    async def ready() -> tuple[bool, dict[str, object]]:
        reachable = await dispatcher.broker_reachable()
        ok = reachable and dispatcher.assigned > 0
        return ok, {"broker_reachable": reachable, "partitions_assigned": dispatcher.assigned}

    runner = await serve(make_app(ready), settings.http.host, settings.http.port)
    log.info("http server listening", extra={"host": settings.http.host, "port": settings.http.port})
    try:
        await dispatcher.run(stop)
    finally:
        await runner.cleanup()
