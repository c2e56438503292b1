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

``connector.sender`` does the I/O: it is the only caller of these methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

from connector.encoding import EncodedText, Encoding, analyse, split
from connector.errors import InvalidMessage, ProviderError
from connector.http import HttpRequest, HttpResponse
from connector.numbers import DEFAULT_LEVEL, PhoneNumber
from connector.records import Accepted, OutboundSms


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
