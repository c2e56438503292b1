"""routing: the order of rules."""

from __future__ import annotations

import pytest

from connector.config import RoutingSettings
from connector.errors import InvalidMessage
from connector.records import OutboundSms, Recipient
from connector.routing import Router

ROUTES = {"ts": "thingspace", "rev": "revio", "og": "ogangi", "smpp": "smpp_rest"}
R = Router.from_settings(RoutingSettings(default_route="smpp", device_route="ts", prefix_routes="+1=rev,+58=og,+1809=smpp"),
                         ROUTES)


def msg(phone: str | None = "+14155550100", **kw: object) -> OutboundSms:
    recipient = Recipient(phone=phone) if phone else Recipient(device_kind="IMEI", device_id="1")
    return OutboundSms(client_message_id="x", recipient=recipient, text="t", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("m, route", [
    (msg(route="og"), "og"),
    (msg(provider="ogangi"), "og"),
    (msg(None), "ts"),
    (msg("+14155550100"), "rev"),
    (msg("+18095550100"), "smpp"),   # longest prefix wins
    (msg("+582125550100"), "og"),
    (msg("+442071838750"), "smpp"),  # default
])
def test_choose(m: OutboundSms, route: str) -> None:
    assert R.choose(m) == route


@pytest.mark.parametrize("m", [msg(route="nope"), msg(provider="nope")])
def test_unknown_route_or_provider_is_invalid(m: OutboundSms) -> None:
    with pytest.raises(InvalidMessage):
        R.choose(m)


def test_single_route_is_the_default() -> None:
    assert Router.from_settings(RoutingSettings(), {"only": "smpp_rest"}).choose(msg()) == "only"


def test_devices_fall_back_to_the_default_route() -> None:
    assert Router.from_settings(RoutingSettings(default_route="smpp"), ROUTES).choose(msg(None)) == "smpp"


def test_no_default_and_no_match() -> None:
    with pytest.raises(InvalidMessage, match="no route"):
        Router.from_settings(RoutingSettings(), ROUTES).choose(msg())
