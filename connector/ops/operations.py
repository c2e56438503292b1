"""One-off provider operations run from the command line (no Kafka): ThingSpace callback
registration and startCallbacks. Each uses the route's own login and session handling."""

from __future__ import annotations

from typing import Any

from connector.app import build_senders
from connector.config import Settings
from connector.providers import Capability, has
from connector.providers import thingspace as ts
from connector.sender import RouteSender

CALLBACK_SERVICES = (ts.SERVICE_SEND_AND_MO, ts.SERVICE_DELIVERY)
CALLBACK_PATH = ts.CALLBACK_PATH


def thingspace_senders(settings: Settings, route: str | None) -> dict[str, RouteSender]:
    senders = {n: s for n, s in build_senders(settings).items() if has(s.provider, Capability.CALLBACKS)}
    if route is not None:
        if route not in senders:
            raise ValueError(f"no ThingSpace route named {route!r} (ThingSpace routes: {', '.join(senders) or 'none'})")
        senders = {route: senders[route]}
    if not senders:
        raise ValueError("no ThingSpace route is configured")
    return senders


async def register_callbacks(settings: Settings, route: str | None) -> list[tuple[str, str, str]]:
    """Register both callback services for each ThingSpace route: (route, service, url)."""
    cb = settings.callbacks
    if not cb.public_url:
        raise ValueError("callbacks.public_url is not set: the URL ThingSpace should call")
    if not cb.thingspace_username or cb.thingspace_password is None:
        raise ValueError("callbacks.thingspace_username / thingspace_password are not set: ThingSpace must "
                         "send credentials the endpoint can check")
    url = cb.public_url.rstrip("/") + CALLBACK_PATH
    done = []
    senders = thingspace_senders(settings, route)
    try:
        for name, sender in senders.items():
            config: Any = sender.provider.config
            for service in CALLBACK_SERVICES:
                await sender.call(lambda: ts.build_register_callback(config, service, url, cb.thingspace_username,
                                                                     cb.thingspace_password),
                                  ts.parse_register_callback)
                done.append((name, service, url))
    finally:
        await _close(senders)
    return done


async def start_callbacks(settings: Settings, route: str | None) -> list[tuple[str, bool]]:
    from connector.streams.pollers import start_callbacks as start

    senders = thingspace_senders(settings, route)
    try:
        return [(name, await start(sender)) for name, sender in senders.items()]
    finally:
        await _close(senders)


async def _close(senders: dict[str, RouteSender]) -> None:
    for s in senders.values():
        await s.aclose()
        await s.transport.aclose()
