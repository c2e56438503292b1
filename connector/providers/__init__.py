"""Provider adapters, one module per provider, all sans-IO (see ``providers.base``): the only
code that knows a provider's wire formats. Each declares its ``capabilities``; the rest of the
worker selects providers by capability, never by name.

``REGISTRY`` maps a provider's config name to its class; routes name providers by that key.
"""

from __future__ import annotations

from connector.providers.base import (
    Auth,
    CallbackEvent,
    CallbackEvents,
    Capability,
    InvalidCallback,
    PolledStatus,
    Prepared,
    Provider,
    SendResult,
    UnauthorizedCallback,
    has,
)
from connector.providers.ogangi import Ogangi
from connector.providers.revio import RevIo
from connector.providers.smpp_rest import SmppRest
from connector.providers.thingspace import ThingSpace

REGISTRY: dict[str, type[Provider]] = {p.name: p for p in (SmppRest, RevIo, Ogangi, ThingSpace)}



def supporting(capability: Capability) -> list[type[Provider]]:
    """The provider classes that declare ``capability``."""
    return [p for p in REGISTRY.values() if capability in p.capabilities]


__all__ = ["REGISTRY", "Auth", "CallbackEvent", "CallbackEvents", "Capability", "InvalidCallback", "Ogangi",
           "PolledStatus", "Prepared", "Provider", "RevIo", "SendResult", "SmppRest", "ThingSpace",
           "UnauthorizedCallback", "has", "supporting"]
