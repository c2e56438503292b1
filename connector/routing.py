"""Choosing a route for a message: pure rules over the configured routes.

Order: the record's ``route``; else its ``provider`` (the first route of that provider); else
device-id recipients go to ``routing.device_route``; else the longest matching number prefix in
``routing.prefix_routes``; else ``routing.default_route``; else the only route, if there is one.
(A route whose provider cannot take the recipient fails the message with reason invalid.)
A record naming an unknown route or provider fails with reason invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from connector.config import RoutingSettings, parse_prefix_routes
from connector.errors import InvalidMessage
from connector.records import OutboundSms


@dataclass(frozen=True)
class Router:
    routes: tuple[str, ...]
    providers: Mapping[str, str]            # route -> provider name
    device_route: str | None
    prefixes: tuple[tuple[str, str], ...]   # longest prefix first
    default_route: str | None

    @classmethod
    def from_settings(cls, routing: RoutingSettings, providers: Mapping[str, str]) -> Router:
        routes = tuple(providers)
        default = routing.default_route or (routes[0] if len(routes) == 1 else None)
        # Prefixes compare with the canonical E.164 number: "+1 415" means "+1415".
        prefixes = tuple(sorted(((_digits_only(p), r) for p, r in parse_prefix_routes(routing.prefix_routes)),
                                key=lambda r: -len(r[0])))
        return cls(routes, dict(providers), routing.device_route or None, prefixes, default)

    def choose(self, msg: OutboundSms) -> str:
        if msg.route is not None:
            if msg.route not in self.providers:
                raise InvalidMessage(f"unknown route {msg.route!r}", field="route")
            return msg.route
        if msg.provider is not None:
            for route, provider in self.providers.items():
                if provider == msg.provider:
                    return route
            raise InvalidMessage(f"no route for provider {msg.provider!r}", field="provider")
        if msg.recipient.is_device:
            if self.device_route or self.default_route:
                return self.device_route or self.default_route  # type: ignore[return-value]
            raise InvalidMessage("no route for device recipients (set routing.device_route)", field="recipient")
        phone = msg.recipient.e164 or msg.recipient.phone or ""
        for prefix, route in self.prefixes:
            if phone.startswith(prefix):
                return route
        if self.default_route:
            return self.default_route
        raise InvalidMessage("no route matches this message and there is no default route", field="route")


def _digits_only(prefix: str) -> str:
    return "".join(ch for ch in prefix if ch.isascii() and (ch.isdigit() or ch == "+"))
