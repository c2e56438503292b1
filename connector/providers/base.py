"""The seam every provider adapter implements: build requests, parse responses. No I/O.

A provider module declares its metadata (name, batch capacity, segment limits), its ``Config``
(the route settings it needs, documented with ``config.setting``) and a ``Provider`` subclass:

- ``prepare(msg)`` checks a message against the provider's rules and computes encoding and
  segments; raises ``InvalidMessage`` before any call is made.
- ``build_send(batch)`` -> ``HttpRequest``; ``parse_send(batch, response)`` -> one result per
  message (``Accepted`` or a classified ``ProviderError``), or raises a ``ProviderError`` that
  applies to the whole request.
- ``auth``: an ``Auth`` object, a small state machine for sessions and tokens. ``login_requests``
  yields the requests needed to (re)authenticate, ``handle_login`` consumes their responses,
  ``apply`` adds credentials to a request, ``invalidate`` forgets a session refused by the provider.

Beyond sending, a provider declares the capabilities it has in ``capabilities`` (a set of
``Capability``) and implements the methods of each (all sans-IO):

- ``CALLBACKS`` (class methods, no route needed): ``callback_path``, ``callback_credentials``
  and ``read_callback(body, headers, ...)``: one entry point per received body, bytes + headers
  in, typed ``CallbackEvents`` out (or ``InvalidCallback`` / ``UnauthorizedCallback``).
- ``MO_QUEUE`` (an acknowledged queue: a block stays until a request carries its token) or
  ``MO_LIST`` (a growing list read with a cursor): ``mo_source()`` names the MO source (routes
  sharing one are polled once), ``build_mo_poll`` / ``parse_mo_poll`` fetch a page and turn it
  into ``InboundSms`` records; list sources also own their cursor (``mo_read_plan``,
  ``mo_cursor_after``, ``mo_reset_cursor``).
- ``STATUS_POLL``: ``build_status_poll(message_id)`` / ``parse_status_poll`` ->
  ``PolledStatus``; ``status_receipt`` turns it into the ``sms.receipts`` record.
- ``OPTOUT_SYNC``: ``optout_numbers(phone)`` (which numbers its list can hold),
  ``build_optout`` / ``parse_optout``.
- ``CONNECTION_CHECK``: ``build_check()`` (a read-only call, or None: log in instead) and
  ``parse_check(response)`` -> what was proven; ``credentials_hint(route)`` and
  ``login_summary`` / ``auth_refused_note`` word the operator's report.

``connector.sender`` does the I/O: it is the only caller of these methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Iterator, Sequence, Union

from connector.encoding import EncodedText, Encoding, analyse, split
from connector.errors import InvalidMessage, InvalidRecord, ProviderError
from connector.http import HttpRequest, HttpResponse
from connector.numbers import DEFAULT_LEVEL, PhoneNumber
from connector.records import Accepted, DeliveryReceipt, InboundSms, OutboundSms


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message checked against its route: what will be sent."""

    msg: OutboundSms
    to: str                       # the address in the provider's form
    encoded: EncodedText
    parts: tuple[str, ...]        # the text as sent: one part, or several when the route splits
    sender: str | None = None

    @property
    def segments(self) -> int:
        return self.encoded.segments


SendResult = Accepted | ProviderError


class Capability(str, Enum):
    """What a provider can do besides sending (see the module docstring)."""

    SEND = "send"
    CALLBACKS = "callbacks"
    MO_QUEUE = "mo-queue"
    MO_LIST = "mo-list"
    STATUS_POLL = "status-poll"
    OPTOUT_SYNC = "optout-sync"
    CONNECTION_CHECK = "connection-check"


class InvalidCallback(InvalidRecord):
    """A received callback body that cannot be read or turned into records (answer 400)."""

    def __init__(self, message: str, kind: str = "unknown") -> None:
        super().__init__(message)
        self.kind = kind


class UnauthorizedCallback(Exception):
    """A callback whose credentials do not match the configured ones, or none are (answer 401)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """One record a callback body yields: a delivery receipt or an MO, with the id that makes
    the provider's resends of it one record (``event_id``)."""

    record: Union["DeliveryReceipt", "InboundSms"]
    event_id: str

    @property
    def is_mo(self) -> bool:
        return isinstance(self.record, InboundSms)


@dataclass(frozen=True, slots=True)
class CallbackEvents:
    """What one callback body carried: ``kind`` (a metrics label) and its events."""

    kind: str
    events: tuple[CallbackEvent, ...]


@dataclass(frozen=True, slots=True)
class PolledStatus:
    """A message's status as a status poll read it."""

    state: str                  # a receipt state: in-flight / delivered / undeliverable / expired ...
    status: str | None          # the provider's own words
    date: str | None
    raw: Any


def has(provider: "Provider | type[Provider]", capability: Capability) -> bool:
    return capability in provider.capabilities


class Auth:
    """No authentication state (static credentials go in ``apply``)."""

    def login_requests(self) -> Iterator[HttpRequest]:
        """Requests to make before sending; each response goes to ``handle_login``."""
        return iter(())

    def handle_login(self, request: HttpRequest, response: HttpResponse) -> None:
        """Consume a login response; raise AuthFailed/Retriable when it failed."""

    def apply(self, request: HttpRequest) -> HttpRequest:
        return request

    def invalidate(self) -> None:
        """Forget the session: the next send logs in again."""

    @property
    def ready(self) -> bool:
        return True


class Provider:
    """Base of provider adapters. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    title: ClassVar[str]
    # Hard limits of the API (route settings may only narrow them).
    max_batch: ClassVar[int] = 1
    supports_ucs2: ClassVar[bool] = True
    max_segments: ClassVar[int | None] = None   # None: not public, the route decides
    can_split: ClassVar[bool] = True             # whether segment_policy=split is allowed
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.SEND})

    Config: ClassVar[type]

    def __init__(self, config: Any, *, route: str, segment_policy: str = "whole",
                 max_segments: int = 10, sender: str = "", number_check: str = DEFAULT_LEVEL) -> None:
        self.config = config
        self.number_check = number_check
        self.route = route
        self.segment_policy = segment_policy
        self.route_max_segments = max_segments
        self.default_sender = sender or None
        self.auth: Auth = self.make_auth()

    # -- connection check defaults (``Capability.CONNECTION_CHECK`` overrides them) -----------
    login_summary: ClassVar[str | None] = None   # what a successful login proves, for ``check``
    auth_refused_note: ClassVar[str] = ""         # a warning added when credentials are refused
    # Which route settings hold the credentials ("{r}" stands for "routes.<route>."), for "what to fix".
    credential_settings: ClassVar[str | None] = None

    @classmethod
    def credentials_hint(cls, route: str) -> str:
        if cls.credential_settings is None:
            return f"the credentials of routes.{route}"
        return cls.credential_settings.format(r=f"routes.{route}.")

    def build_check(self) -> HttpRequest | None:
        """A read-only call proving the credentials (None: logging in is the check)."""
        return None

    def parse_check(self, response: HttpResponse) -> str:
        """What the check call proved; raises a classified error when it failed."""
        raise NotImplementedError

    # -- to implement ------------------------------------------------------------------------
    def make_auth(self) -> Auth:
        return Auth()

    def recipient_number(self, msg: OutboundSms) -> PhoneNumber:
        """The recipient's canonical number, checked at this route's level (``number_check``)."""
        return msg.recipient.number(self.number_check)

    def address(self, msg: OutboundSms) -> str:
        """The recipient in the provider's form; InvalidMessage when it cannot take it."""
        return self.recipient_number(msg).e164

    def build_send(self, batch: Sequence[Prepared]) -> HttpRequest:
        raise NotImplementedError

    def parse_send(self, batch: Sequence[Prepared], response: HttpResponse) -> list[SendResult]:
        raise NotImplementedError

    # -- shared rules ------------------------------------------------------------------------
    def encode(self, msg: OutboundSms) -> EncodedText:
        return analyse(msg.text)

    def prepare(self, msg: OutboundSms) -> Prepared:
        if not msg.text:
            raise InvalidMessage("text is empty", field="text")
        to = self.address(msg)
        encoded = self.encode(msg)
        if encoded.encoding is Encoding.UCS2 and not self.supports_ucs2:
            raise InvalidMessage(f"{self.title} cannot send UCS-2 text (characters outside GSM-7)",
                                 field="text")
        limit = min(self.route_max_segments, self.max_segments or self.route_max_segments)
        parts: tuple[str, ...] = (msg.text,)
        if encoded.segments > 1:
            if self.segment_policy == "reject" or (self.max_segments == 1 and self.segment_policy != "split"):
                raise InvalidMessage(f"text needs {encoded.segments} segments ({encoded.encoding.value}); "
                                     f"route {self.route} sends one", field="text")
            if self.segment_policy == "split":
                if not self.can_split:
                    raise InvalidMessage(f"{self.title} cannot split messages", field="text")
                parts = tuple(split(msg.text, encoded.encoding))
                limit = self.route_max_segments
        if encoded.segments > limit:
            raise InvalidMessage(f"text needs {encoded.segments} segments ({encoded.encoding.value}); "
                                 f"route {self.route} allows {limit}", field="text")
        return Prepared(msg=msg, to=to, encoded=encoded, parts=parts,
                        sender=msg.sender or self.default_sender)
