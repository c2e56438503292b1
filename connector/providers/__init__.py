"""Provider adapters, one module per provider, all sans-IO (see ``providers.base``).

``REGISTRY`` maps a provider's config name to its class; routes name providers by that key.
"""

from __future__ import annotations

from connector.providers.base import Auth, Prepared, Provider, SendResult
from connector.providers.ogangi import Ogangi
from connector.providers.revio import RevIo
from connector.providers.smpp_rest import SmppRest
from connector.providers.thingspace import ThingSpace

REGISTRY: dict[str, type[Provider]] = {p.name: p for p in (SmppRest, RevIo, Ogangi, ThingSpace)}

__all__ = ["REGISTRY", "Auth", "Ogangi", "Prepared", "Provider", "RevIo", "SendResult", "SmppRest", "ThingSpace"]
