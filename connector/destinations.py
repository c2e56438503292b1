"""Destination rules: which recipients a route may send to, decided before any provider call.

Per route, allow and block lists of regions (ISO 3166-1 alpha-2, ``allow_regions`` /
``block_regions``) and of number types from the recipient's parse (``allow_number_types`` /
``block_number_types``: ``mobile``, ``fixed-line``, ``premium-rate``, ... as
``connector.numbers`` names them). A refused recipient fails with reason
``blocked-destination`` (``errors.BlockedDestination``) and no call. Precedence: a block list
always wins; a non-empty allow list lets through only what it names; empty lists say nothing.
The default blocks premium-rate numbers.

What the parse may not know is not held against a number: one outside every allocated range
(accepted by ``number_check = possible``) has type ``unknown``, which no block list matches unless
it names ``unknown``, and which passes an allow list of types only if that names ``unknown``; its
region is its country calling code's main region (``PhoneNumber.country_region``). A
``fixed-line-or-mobile`` number (the library cannot tell, e.g. every US number) passes an allow
list naming ``mobile`` or ``fixed-line`` and is blocked only by a block list naming
``fixed-line-or-mobile``. A non-geographic number (+800, +882, ...) has no region: an allow list
of regions refuses it, a block list of regions does not. Recipients that are not numbers (device
ids other than an MDN / MSISDN, device selections) are not subject to the rules.

``conflicts`` finds what ``check`` warns of: a region or type both allowed and blocked, rules
that refuse everything, an allow list that refuses every number a prefix rule sends to the route.
"""

from __future__ import annotations

from dataclasses import dataclass

from connector.config import RouteSettings, RoutingSettings, number_type_list, parse_prefix_routes, region_list
from connector.errors import BlockedDestination
from connector.numbers import PhoneNumber, parse, regions_of_prefix
from connector.records import Recipient

DEFAULT_BLOCKED_TYPES = frozenset({"premium-rate"})
UNKNOWN = "unknown"
EITHER = "fixed-line-or-mobile"
_EITHER_OF = frozenset({"mobile", "fixed-line"})
# The setting that refused a recipient: the ``rule`` label of sms_outbound_blocked_total.
RULES = ("block_regions", "allow_regions", "block_number_types", "allow_number_types")


@dataclass(frozen=True, slots=True)
class DestinationRules:
    allow_regions: frozenset[str] = frozenset()
    block_regions: frozenset[str] = frozenset()
    allow_types: frozenset[str] = frozenset()
    block_types: frozenset[str] = DEFAULT_BLOCKED_TYPES

    @classmethod
    def from_settings(cls, c: RouteSettings) -> DestinationRules:
        return cls(frozenset(region_list(c.allow_regions)), frozenset(region_list(c.block_regions)),
                   frozenset(number_type_list(c.allow_number_types)),
                   frozenset(number_type_list(c.block_number_types)))

    @property
    def empty(self) -> bool:
        return not (self.allow_regions or self.block_regions or self.allow_types or self.block_types)

    def refusal(self, number: PhoneNumber) -> tuple[str, str] | None:
        """(the rule that refuses ``number``, why), or None when the route may send to it."""
        if self.empty:
            return None
        if self.block_regions or self.allow_regions:
            region = number.country_region
            if region in self.block_regions:
                return "block_regions", f"region {region} is in block_regions"
            if self.allow_regions and region not in self.allow_regions:
                return "allow_regions", (f"region {region} is not in allow_regions" if region else
                                         "a non-geographic number is in no region of allow_regions")
        if self.block_types or self.allow_types:
            kind = number.number_type
            if kind in self.block_types:
                return "block_number_types", f"number type {kind} is in block_number_types"
            if self.allow_types and not (kind in self.allow_types or (kind == EITHER and self.allow_types & _EITHER_OF)):
                return "allow_number_types", f"number type {kind} is not in allow_number_types"
        return None

    def check(self, number: PhoneNumber | None, route: str) -> None:
        """Raise ``BlockedDestination`` when the rules refuse ``number`` (None: not a number, not
        subject to them)."""
        refused = self.refusal(number) if number is not None else None
        if refused is not None:
            rule, why = refused
            raise BlockedDestination(f"route {route} does not send to this recipient: {why}", rule=rule,
                                     field="recipient")


    def check_recipient(self, recipient: Recipient, level: str, route: str) -> None:
        """``check`` for a message's recipient: a phone number at the route's ``number_check``
        level (one that fails it raises InvalidMessage, reason invalid, as sending would), a
        device addressed by its MDN / MSISDN by that number; other devices are not subject."""
        if self.empty:
            return
        if recipient.phone is not None:
            self.check(recipient.number(level), route)
        elif (e164 := recipient.e164) is not None:
            self.check(parse(e164), route)


def conflicts(name: str, c: RouteSettings, routing: RoutingSettings) -> list[tuple[str, str, str]]:
    """(setting path, what is wrong, how to fix it) for rules of route ``name`` that are
    probably not meant (``sms-connector check`` shows them as warnings)."""
    rules = DestinationRules.from_settings(c)
    path = f"routes.{name}."
    found: list[tuple[str, str, str]] = []
    for both, allow, block in ((rules.allow_regions & rules.block_regions, "allow_regions", "block_regions"),
                               (rules.allow_types & rules.block_types, "allow_number_types", "block_number_types")):
        if both:
            found.append((path + allow, f"{', '.join(sorted(both))} also in {block}: blocked ({block} wins)",
                          f"remove {', '.join(sorted(both))} from one of {path + allow} and {path + block}"))
    nothing = "the route sends to no number"
    if rules.allow_regions and not rules.allow_regions - rules.block_regions:
        found.append((path + "allow_regions", f"every allowed region is also blocked: {nothing}",
                      f"correct {path}allow_regions or {path}block_regions"))
    if rules.allow_types and not rules.allow_types - rules.block_types:
        found.append((path + "allow_number_types", f"every allowed number type is also blocked: {nothing}",
                      f"correct {path}allow_number_types or {path}block_number_types"))
    elif rules.allow_types and UNKNOWN not in rules.allow_types and c.number_check == "possible":
        found.append((path + "allow_number_types", "numbers outside libphonenumber's allocated ranges (accepted "
                                                   "by number_check = possible) have type unknown and are blocked",
                      f"add unknown to {path}allow_number_types to send to them, or set {path}number_check = "
                      f"valid to refuse them as invalid"))
    for prefix, route in parse_prefix_routes(routing.prefix_routes):
        reachable = regions_of_prefix(prefix) if route == name else frozenset()
        sendable = (reachable & rules.allow_regions if rules.allow_regions else reachable) - rules.block_regions
        if reachable and not sendable:
            setting = "allow_regions" if rules.allow_regions and not reachable & rules.allow_regions else "block_regions"
            found.append((path + setting, f"routing.prefix_routes sends {prefix} numbers "
                                          f"({', '.join(sorted(reachable))}) to this route, and its rules block "
                                          f"every one of them", f"correct {path}{setting} or the rule "
                                                                f"{prefix}={route} in routing.prefix_routes"))
    return found
