"""Destination rules (connector.destinations): decisions, configuration checks, check warnings."""

from __future__ import annotations

from typing import Any

import pytest

import connector.providers  # noqa: F401 - registers the providers' route settings
from connector.config import NUMBER_TYPES, ConfigError, RouteSettings, RoutingSettings, load
from connector.destinations import DestinationRules, conflicts
from connector.errors import BlockedDestination, InvalidMessage
from connector.numbers import _TYPE_NAMES, parse, regions_of_prefix
from connector.ops.check import Status, config_rows
from connector.records import Recipient

US_MOBILE = "+14155550100"         # fixed-line-or-mobile (US numbers cannot be told apart)
US_PREMIUM = "+19005550100"        # premium-rate
GB_MOBILE = "+447400123456"        # mobile
GB_PREMIUM = "+449098790123"       # premium-rate
GB_DRAMA = "+447700900123"         # Ofcom's drama range: possible, not allocated -> type unknown, no region
DE_MOBILE = "+4915112345678"       # mobile
DE_FIXED = "+4930123456"           # fixed-line
NON_GEO = "+80012345678"           # toll-free, non-geographic


def test_the_numbers_are_what_the_tests_say() -> None:
    facts = {n: (parse(n).region, parse(n).country_region, parse(n).number_type) for n in
             (US_MOBILE, US_PREMIUM, GB_MOBILE, GB_PREMIUM, GB_DRAMA, DE_MOBILE, DE_FIXED, NON_GEO)}
    assert facts == {US_MOBILE: ("US", "US", "fixed-line-or-mobile"), US_PREMIUM: ("US", "US", "premium-rate"),
                     GB_MOBILE: ("GB", "GB", "mobile"), GB_PREMIUM: ("GB", "GB", "premium-rate"),
                     GB_DRAMA: (None, "GB", "unknown"), DE_MOBILE: ("DE", "DE", "mobile"),
                     DE_FIXED: ("DE", "DE", "fixed-line"), NON_GEO: (None, None, "toll-free")}


def test_the_documented_types_are_the_librarys() -> None:
    assert set(NUMBER_TYPES) == set(_TYPE_NAMES.values())


def rules(**kw: str) -> DestinationRules:
    return DestinationRules.from_settings(RouteSettings(provider="smpp_rest", **kw))


# (settings, number) -> the rule that refuses it, or None
CASES: list[tuple[dict[str, str], str, str | None]] = [
    # defaults: premium-rate blocked, everything else sent
    ({}, US_PREMIUM, "block_number_types"),
    ({}, GB_PREMIUM, "block_number_types"),
    ({}, US_MOBILE, None),
    ({}, GB_DRAMA, None),
    ({}, NON_GEO, None),
    ({"block_number_types": ""}, US_PREMIUM, None),
    # regions: an allow list lets through only what it names; a block list always wins
    ({"allow_regions": "GB,DE"}, GB_MOBILE, None),
    ({"allow_regions": "GB,DE"}, US_MOBILE, "allow_regions"),
    ({"allow_regions": "gb, de"}, DE_FIXED, None),                         # case and spaces do not matter
    ({"allow_regions": "GB", "block_regions": "GB"}, GB_MOBILE, "block_regions"),
    ({"block_regions": "US"}, US_MOBILE, "block_regions"),
    ({"block_regions": "US"}, GB_MOBILE, None),
    # a region block wins over a type allow, a type block over a region allow
    ({"allow_regions": "US", "block_number_types": "premium-rate"}, US_PREMIUM, "block_number_types"),
    ({"block_regions": "US", "allow_number_types": "premium-rate", "block_number_types": ""}, US_PREMIUM,
     "block_regions"),
    # an unallocated number: region from its country code, type unknown
    ({"allow_regions": "GB"}, GB_DRAMA, None),
    ({"block_regions": "GB"}, GB_DRAMA, "block_regions"),
    ({"allow_number_types": "mobile"}, GB_DRAMA, "allow_number_types"),
    ({"allow_number_types": "mobile,unknown"}, GB_DRAMA, None),
    ({"block_number_types": "unknown"}, GB_DRAMA, "block_number_types"),
    ({"block_number_types": "mobile"}, GB_DRAMA, None),                    # unknown is not held against it
    # fixed-line-or-mobile: passes an allow list of either, blocked only when named
    ({"allow_number_types": "mobile"}, US_MOBILE, None),
    ({"allow_number_types": "fixed_line"}, US_MOBILE, None),               # "_" reads as "-"
    ({"allow_number_types": "toll-free"}, US_MOBILE, "allow_number_types"),
    ({"block_number_types": "fixed-line"}, US_MOBILE, None),
    ({"block_number_types": "fixed-line-or-mobile"}, US_MOBILE, "block_number_types"),
    ({"allow_number_types": "mobile"}, DE_FIXED, "allow_number_types"),
    ({"allow_number_types": "mobile"}, DE_MOBILE, None),
    # non-geographic numbers: in no region
    ({"allow_regions": "US"}, NON_GEO, "allow_regions"),
    ({"block_regions": "US"}, NON_GEO, None),
    ({"block_number_types": "toll-free"}, NON_GEO, "block_number_types"),
]


@pytest.mark.parametrize(("settings", "number", "rule"), CASES)
def test_rules(settings: dict[str, str], number: str, rule: str | None) -> None:
    r = rules(**settings)
    refused = r.refusal(parse(number))
    assert (refused[0] if refused else None) == rule
    if rule is None:
        r.check(parse(number), "r")
    else:
        with pytest.raises(BlockedDestination) as exc:
            r.check(parse(number), "r")
        assert exc.value.rule == rule and exc.value.reason == "blocked-destination"
        assert exc.value.field == "recipient" and "route r does not send" in exc.value.message


def test_recipients_that_are_not_numbers_are_not_subject() -> None:
    r = rules(allow_regions="DE")
    r.check_recipient(Recipient(device_kind="IMEI", device_id="990000862471854"), "possible", "r")
    r.check_recipient(Recipient(selection={"accountName": "0000123456-00001"}), "possible", "r")
    with pytest.raises(BlockedDestination):   # a device addressed by its MDN is a +1 number
        r.check_recipient(Recipient(device_kind="MDN", device_id="4155550100"), "possible", "r")
    with pytest.raises(BlockedDestination):
        rules().check_recipient(Recipient(device_kind="MDN", device_id="9005550100"), "possible", "r")


def test_a_number_that_fails_the_route_check_is_invalid_not_blocked() -> None:
    with pytest.raises(InvalidMessage) as exc:
        rules().check_recipient(Recipient(phone=GB_DRAMA), "valid", "r")
    assert exc.value.reason == "invalid"
    with pytest.raises(InvalidMessage) as exc:
        rules().check_recipient(Recipient(phone="+1415"), "possible", "r")
    assert exc.value.reason == "invalid"


def test_regions_of_a_prefix() -> None:
    assert regions_of_prefix("+58") == {"VE"}
    assert regions_of_prefix("+44") == {"GB", "GG", "IM", "JE"}
    assert {"US", "CA", "JM"} <= regions_of_prefix("+1 415")
    assert {"GB", "DE", "SE"} <= regions_of_prefix("+4")     # shorter than a country code: every one it starts
    assert regions_of_prefix("+800") == frozenset()         # non-geographic


# --- configuration --------------------------------------------------------------------------------

ROUTE = {"SMS_CONNECTOR_ROUTES__R__PROVIDER": "smpp_rest", "SMS_CONNECTOR_ROUTES__R__BASE_URL": "https://gw",
         "SMS_CONNECTOR_ROUTES__R__API_KEY": "k"}


def env(**kw: str) -> dict[str, str]:
    return {**ROUTE, **{f"SMS_CONNECTOR_ROUTES__R__{k.upper()}": v for k, v in kw.items()}}


def test_defaults() -> None:
    c = load(None, ROUTE).routes["r"].common
    assert (c.smart_encoding, c.allow_regions, c.block_regions, c.allow_number_types, c.block_number_types) == \
        (False, "", "", "", "premium-rate")
    assert DestinationRules.from_settings(c) == DestinationRules()


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("allow_regions", "US,XX", "'XX' is not an ISO 3166-1 alpha-2 region code"),
    ("block_regions", "UK", "'UK' is not an ISO 3166-1 alpha-2 region code"),   # the ISO code is GB
    ("allow_number_types", "mobile,cell", "'cell' is not a number type"),
    ("block_number_types", "premium", "'premium' is not a number type"),
])
def test_unknown_codes_are_configuration_errors(setting: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(None, env(**{setting: value}))
    [problem] = exc.value.problems
    assert problem.path == f"routes.r.{setting}" and message in problem.message
    assert problem.fix.startswith("correct")
    if value == "UK":
        assert "the United Kingdom's ISO code is GB" in problem.fix


def warnings(routing: dict[str, str] | None = None, **kw: str) -> dict[str, str]:
    e = env(**kw)
    e.update({f"SMS_CONNECTOR_ROUTING__{k.upper()}": v for k, v in (routing or {}).items()})
    return {r.item: r.detail for r in config_rows(load(None, e)) if r.status is Status.WARN}


@pytest.mark.parametrize(("routing", "settings", "item", "says"), [
    ({}, {"allow_regions": "US,GB", "block_regions": "GB"}, "routes.r.allow_regions",
     "GB also in block_regions: blocked (block_regions wins)"),
    ({}, {"allow_regions": "GB", "block_regions": "GB"}, "routes.r.allow_regions",
     "every allowed region is also blocked"),
    ({}, {"allow_number_types": "premium-rate"}, "routes.r.allow_number_types",
     "every allowed number type is also blocked"),
    ({}, {"allow_number_types": "mobile"}, "routes.r.allow_number_types", "have type unknown and are blocked"),
    ({"prefix_routes": "+58=r"}, {"allow_regions": "US,CA"}, "routes.r.allow_regions",
     "routing.prefix_routes sends +58 numbers (VE) to this route, and its rules block every one of them"),
    ({"prefix_routes": "+44=r"}, {"block_regions": "GB,GG,IM,JE"}, "routes.r.block_regions",
     "sends +44 numbers (GB, GG, IM, JE)"),
])
def test_check_warns_of_inconsistent_rules(routing: dict[str, str], settings: dict[str, str], item: str,
                                           says: str) -> None:
    found = warnings(routing, **settings)
    assert item in found and says in found[item], found
    assert "Fix: " in found[item]


@pytest.mark.parametrize(("routing", "settings"), [
    ({}, {}),
    ({"prefix_routes": "+1=r"}, {"allow_regions": "US,CA"}),
    ({"prefix_routes": "+44=r"}, {"block_regions": "GG"}),                 # GB is still sent
    ({}, {"allow_number_types": "mobile,unknown"}),
    ({}, {"allow_number_types": "mobile", "number_check": "valid"}),
])
def test_consistent_rules_give_no_warning(routing: dict[str, str], settings: dict[str, Any]) -> None:
    assert not {k for k in warnings(routing, **settings) if k.startswith("routes.r.")}


def test_conflicts_ignore_other_routes_prefixes() -> None:
    c = RouteSettings(provider="smpp_rest", allow_regions="US")
    assert conflicts("r", c, RoutingSettings(prefix_routes="+58=other")) == []
