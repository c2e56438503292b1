"""Ogangi Mobile Engagement (seed 004, PROVIDERS.md §4): signed path-parameter calls, XML answers.

This module owns everything Ogangi-specific on the wire and does no I/O. It builds the URL of
each call (``tools/sendSMS``, ``sendMT``, ``tools/sendSMSPinMobileNumberConfirm``,
``fireMessage``, ``tools/getMOMessages``, ``tools/getMessage``): every parameter is one path
segment, followed by ``/{publicKey}/{signature}``, the signature an HMAC-SHA256 of the
parameters. It reads the response XML envelope (``input``, ``status``, ``description``,
``result``) and turns it into a result or a classified error, and maps Ogangi's message
statuses to delivery states. Ogangi pushes no delivery receipts: status is polled with
``getMessage``, inbound (MO) messages with ``getMOMessages``; this module builds and parses
those calls, the caller schedules them.

Assumptions where the documentation is silent (route settings named in brackets override them):

- Signature: HMAC-SHA256 keyed with the private key (UTF-8, never sent) over the call's path
  parameters joined with ``/`` in URL order; method name, publicKey and signature excluded. The
  provider's public Java example ("Java Example Call") signs the parameter string as written,
  ``signHmacSHA256("8/peter/peterpassword", PRIVATE_KEY.getBytes())``, and appends
  ``/{publicKey}/{signature}``: the signature covers the values as they are, not
  percent-encoded [``signature_covers``: ``encoded`` signs the segments as sent]. Its output form
  is not shown: lowercase hex [``signature_encoding``: ``base64`` is standard base64].
- In the URL each value is one path segment, percent-encoding only what must be: ``/``, ``%`` and
  characters outside RFC 3986's segment set (``pchar``); ``=``, ``+`` and the other sub-delims
  stay literal. A base64 text without ``/`` then reads the same raw or decoded, so the server's
  check succeeds whichever it verifies [``path_encoding``: ``strict`` encodes every character
  but the unreserved ones, ``+`` as ``%2B``, ``=`` as ``%3D``].
- Base64 parameters are the UTF-8 bytes in standard base64 with padding [``base64_alphabet``:
  ``urlsafe`` for a server that refuses ``%2F`` in a path, as Tomcat does by default].
- Mobile numbers are international digits without ``+`` (the samples: ``13056708084``)
  [``number_format``].
- Every call is an HTTP GET (the Java example); the seed names POST only for the JSON variant of
  fireMessage, which this module does not build.
- ``carrier`` is ``null`` when unknown: documented for sendMT, assumed for sendSMS and the PIN
  call [``carrier``, or ``options.ogangi.carrier`` per message].
- Texts are sent whole (``can_split`` is False): one call carries one text and the provider
  concatenates; the route's ``max_segments`` bounds it.
- The response has no single root element (the documented shape): it is parsed wrapped. The
  seed's own getMOMessages sample is not well-formed (``<MOMessageList>`` closed by another
  ``<MOMessageList>``), so when the strict parse fails a lenient one (tags matched by name,
  unmatched closing tags ignored; no DTD, no entities beyond XML's five) is the fallback.
- Classification: ``BAD_SIGNATURE`` -> ``AuthFailed`` at any HTTP status; other non-2xx ->
  ``errors.for_http_status`` (429 throttled, 5xx retriable). ``ERROR`` -> ``Rejected`` with the
  description, unless the description says the failure is transient (``classify_error``:
  "temporar", "try again", "retry", "timeout", "unavailable", "busy", "overload" -> Retriable;
  "rate limit", "too many", "throttl" -> Throttled). The documented ERROR description,
  "Internal error, please report this to support", is not transient. A 2xx body that cannot be
  read: ``InDoubt`` for sends (the API has no idempotency key, a resend could duplicate),
  ``Retriable`` for reads.
- A sendSMS answer whose message already has a failed status (``BAD_TO``, ``NOT_ENOUGH_FUNDS``,
  ...) is ``Rejected`` with that status as the code. sendMT and the PIN call answer without a
  message id: ``Accepted(provider_message_id=None)`` (their status cannot be polled).
- PIN sends: the generated PIN is never stored, returned or logged in clear. ``Accepted.details``
  carries ``pin_sha256 = HMAC-SHA256(pin_hash_key, client_message_id + ":" + pin)`` (hex), where
  ``pin_hash_key`` defaults to the private key. A keyed hash rather than a salted one because a
  PIN has only 10^4..10^8 values: a salted SHA-256 stored next to its salt is brute-forced in
  milliseconds by anyone who can read the record, a keyed hash is not without the key. Binding
  it to the client_message_id gives equal PINs different hashes (the job of a salt) and makes a
  hash useless for another message. A verifier holding ``pin_hash_key`` uses ``verify_pin``.
  Where the provider puts the PIN in the text is not documented: the text is sent as given.
- MO filter ``parameters``: ``key=value&key=value`` with keys CARRIER, TO, FROM, KEYWORD, ORDER
  (written lowercase, as in the provider's example), several values comma-separated, ``null``
  for none; ``page`` starts at 1. In the MO sample ``from`` is the user's number and ``to`` the
  short code (the field table says the reverse; the sample is taken as the truth).
- Status mapping (``map_status``): the SMS statuses of the provider's status appendix, plus the
  external-entity (SMSC) ones ACCEPTD, BUFFRED, ENROUTE, DELIVRD, UNDELIV, REJECTD; anything
  unknown is "in-flight", never a failure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Sequence
from urllib.parse import quote
from xml.etree.ElementTree import Element, ParseError, SubElement

import defusedxml.ElementTree as SafeET
import orjson

from connector.config import Secret, provider_settings, setting
from connector.errors import (
    AuthFailed,
    InDoubt,
    InvalidMessage,
    ProviderError,
    Rejected,
    Retriable,
    Throttled,
    for_http_status,
)
from connector.http import HttpRequest, HttpResponse
from connector import numbers
from connector.keywords import Keywords, first_word
from connector.providers.base import Capability, PolledStatus, Prepared, Provider, SendResult
from connector.records import Accepted, DeliveryReceipt, InboundSms, OutboundSms, Recipient, stable_id

__all__ = [
    "API_PATH", "CALL_PATHS", "DeliveryState", "Envelope", "FiredMo", "MessageStatus", "MoMessage",
    "MoPage", "Ogangi", "OgangiConfig", "SendCall", "b64", "check_envelope", "classify_error",
    "map_status", "mo_parameters", "parse_fire_message", "parse_get_message",
    "decode_body", "parse_get_mo_messages", "path_segment", "pin_digest", "read_envelope", "sign", "signed_url",
    "verify_pin",
]

API_PATH = "/rest/api/"
SEND_SMS, SEND_MT, SEND_PIN = "sendSMS", "sendMT", "sendSMSPinMobileNumberConfirm"
FIRE_MESSAGE, GET_MO_MESSAGES, GET_MESSAGE = "fireMessage", "getMOMessages", "getMessage"
CALL_PATHS: dict[str, str] = {
    SEND_SMS: "tools/sendSMS",
    SEND_MT: "sendMT",
    SEND_PIN: "tools/sendSMSPinMobileNumberConfirm",
    FIRE_MESSAGE: "fireMessage",
    GET_MO_MESSAGES: "tools/getMOMessages",
    GET_MESSAGE: "tools/getMessage",
}
MO_FILTERS = ("carrier", "to", "from", "keyword", "order")
PIN_HASH_SCHEME = "hmac-sha256(pin_hash_key, client_message_id:pin)"
PIN_LENGTH_RANGE = (4, 10)
_OPTION_KEYS = frozenset({"method", "flags", "pin", "carrier"})
_NUMBER = re.compile(r"^[0-9]{7,15}$")


@provider_settings("ogangi")
@dataclass(frozen=True)
class OgangiConfig:
    base_url: str = setting(doc="Base URL of the Mobile Engagement API, up to (not including) `/rest/api/`.",
                            example="https://customer.ogangi.com/mmc")
    public_key: str = setting(doc="Public key: sent in every URL, identifies the account.",
                              example="4BFB-4943-9546-9BB8964254F2")
    private_key: Secret = setting(doc="Private key: signs every call (HMAC-SHA256); never sent.",
                                  secret=True, example="env:OGANGI_PRIVATE_KEY")
    instance_id: str = setting(doc="Workspace (instance) id, the first parameter of every call.", example="43")
    carrier: str = setting("null", doc="Carrier parameter of send calls; `null` lets the provider choose "
                                       "(documented for sendMT, assumed for sendSMS and the PIN call).")
    send_method: str = setting(SEND_SMS, doc="Send call: sendSMS (number in base64, answers a message id "
                                             "that getMessage can poll) or sendMT (plain number, optional "
                                             "flags, answers no id).", choices=(SEND_SMS, SEND_MT))
    mt_flags: str = setting("", doc="Flags appended to every sendMT call (`/{flags}`); empty: none. "
                                    "`options.ogangi.flags` overrides it per message.")
    pin_length: int = setting(6, doc="PIN length of PIN sends (`options.ogangi.pin`) that name none.",
                              minimum=PIN_LENGTH_RANGE[0], maximum=PIN_LENGTH_RANGE[1])
    pin_hash_key: Secret | None = setting(None, doc="Key of the PIN hash (`pin_sha256` in the accepted "
                                                    "record); the private key when unset. Give it to "
                                                    "whoever verifies PINs instead of the private key.",
                                          secret=True, example="env:OGANGI_PIN_HASH_KEY")
    signature_encoding: str = setting("hex", doc="Signature form: lowercase hex (assumed) or standard base64 "
                                                 "(its `/` percent-encoded in the path).", choices=("hex", "base64"))
    signature_covers: str = setting("decoded", doc="What the signature covers: the parameter values as they "
                                                   "are (decoded, as in the provider's Java example) or "
                                                   "as sent (percent-encoded).",
                                    choices=("decoded", "encoded"))
    path_encoding: str = setting("minimal", doc="Percent-encoding of parameters in the URL: minimal (only `/`, "
                                                "`%` and characters outside RFC 3986 path segments; `=` and "
                                                "`+` stay literal) or strict (everything but letters, digits "
                                                "and `-._~`).", choices=("minimal", "strict"))
    base64_alphabet: str = setting("standard", doc="Base64 alphabet of text and number parameters: standard "
                                                   "(assumed; `/` percent-encoded in the path, `+` and `=` literal) or urlsafe (`-_`).",
                                   choices=("standard", "urlsafe"))
    number_format: str = setting("digits", doc="Mobile numbers as international digits without `+` (assumed) "
                                               "or E.164 with `+`.", choices=("digits", "e164"))


# --------------------------------------------------------------------------------------------
# Signing and URLs


def sign(private_key: str | bytes, segments: Sequence[str], *, encoding: str = "hex") -> str:
    """HMAC-SHA256 of ``segments`` joined with ``/``, keyed with the private key.

    ``encoding``: ``hex`` (lowercase) or ``base64`` (standard, unquoted: ``signed_url`` puts it
    in the path percent-encoded).
    """
    key = private_key.encode("utf-8") if isinstance(private_key, str) else private_key
    digest = hmac.new(key, "/".join(segments).encode("utf-8"), hashlib.sha256).digest()
    if encoding == "hex":
        return digest.hex()
    if encoding == "base64":
        return base64.b64encode(digest).decode("ascii")
    raise ValueError(f"signature encoding {encoding!r} is not hex or base64")


# RFC 3986 pchar without "%" (always encoded): unreserved (quote keeps them), sub-delims, ":" and "@".
SEGMENT_SAFE = "!$&'()*+,;=:@"


def path_segment(value: str, encoding: str = "minimal") -> str:
    """One parameter as a path segment: ``minimal`` percent-encodes only what must be (``/``,
    ``%``, anything outside RFC 3986 ``pchar``); ``strict`` everything but the unreserved."""
    return quote(value, safe=SEGMENT_SAFE if encoding == "minimal" else "")


def b64(value: str, alphabet: str = "standard") -> str:
    """A text parameter as base64 of its UTF-8 bytes (padded)."""
    raw = value.encode("utf-8")
    out = base64.urlsafe_b64encode(raw) if alphabet == "urlsafe" else base64.b64encode(raw)
    return out.decode("ascii")


def signed_url(base_url: str, call: str, params: Sequence[str], *, public_key: str, private_key: str,
               signature_encoding: str = "hex", signature_covers: str = "decoded",
               path_encoding: str = "minimal") -> str:
    """``{base_url}/rest/api/{call}/{params...}/{publicKey}/{signature}``.

    ``call`` is the path of the method (``CALL_PATHS``); ``params`` are the decoded values, each
    one path segment (``path_segment``); the signature covers the values as they are unless
    ``signature_covers`` is ``encoded`` (then the segments as sent).
    """
    values = [str(p) for p in params]
    if any(v == "" for v in values):
        raise ValueError(f"{call}: empty path parameter (position {values.index('')})")
    segments = [path_segment(v, path_encoding) for v in values]
    signature = sign(private_key, segments if signature_covers == "encoded" else values,
                     encoding=signature_encoding)
    tail = "/".join([*segments, path_segment(public_key, path_encoding), path_segment(signature, path_encoding)])
    return f"{base_url.rstrip('/')}{API_PATH}{call}/{tail}"


def pin_digest(key: str | bytes, client_message_id: str, pin: str) -> str:
    """The stored form of a generated PIN: HMAC-SHA256(key, ``client_message_id:pin``), hex."""
    k = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(k, f"{client_message_id}:{pin}".encode("utf-8"), hashlib.sha256).hexdigest()


def verify_pin(key: str | bytes, client_message_id: str, candidate: str, digest: str) -> bool:
    """Whether ``candidate`` is the PIN whose ``pin_digest`` is ``digest`` (constant time)."""
    return hmac.compare_digest(pin_digest(key, client_message_id, candidate.strip()), digest)


def mo_parameters(filters: Mapping[str, str | Sequence[str]] | None = None) -> str:
    """The getMOMessages ``parameters`` value: ``key=value&...`` (decoded), ``null`` for none.

    Keys: carrier, to, from, keyword (a regular expression), order (ASC or DESC), any case.
    Several values of one key: a list, or one string with ``,`` between them (the provider's
    syntax). ``&``, ``=`` and a ``,`` inside one value cannot be expressed: ValueError.
    """
    if not filters:
        return "null"
    parts = []
    for key, value in filters.items():
        name = key.lower()
        if name not in MO_FILTERS:
            raise ValueError(f"MO filter {key!r} is not one of {', '.join(f.upper() for f in MO_FILTERS)}")
        values = value.split(",") if isinstance(value, str) else list(value)
        if not values or any(not v or any(c in v for c in "&=,") for v in values):
            raise ValueError(f"MO filter {key}: values must be non-empty, without '&', '=' or ','")
        if name == "order":
            values = [v.upper() for v in values]
            if values not in (["ASC"], ["DESC"]):
                raise ValueError("MO filter ORDER is ASC or DESC")
        parts.append(f"{name}={','.join(values)}")
    return "&".join(parts)


# --------------------------------------------------------------------------------------------
# Message status


class DeliveryState(str, Enum):
    """Where a sent message stands, from its Ogangi status."""

    IN_FLIGHT = "in-flight"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self is not DeliveryState.IN_FLIGHT


_IN, _OK, _UNDELIV, _EXP, _REJ = (DeliveryState.IN_FLIGHT, DeliveryState.DELIVERED,
                                  DeliveryState.UNDELIVERABLE, DeliveryState.EXPIRED,
                                  DeliveryState.REJECTED)
STATUS_STATES: dict[str, DeliveryState] = {
    # SMS statuses (the provider's "Message's Status" appendix)
    "PENDING": _IN, "SENDING": _IN, "SENT": _IN, "SENT_TO_CARRIER": _IN,
    "DELIVERED_TO_CARRIER": _IN,            # the carrier has it; the handset does not yet
    "SENT_TO_DEVICE": _IN,
    "DELIVERED_TO_DEVICE": _OK, "READ": _OK,
    "UNDELIVERED": _UNDELIV, "UNREACHABLE": _UNDELIV,
    "EXPIRED": _EXP,
    "NOT_SENT": _REJ, "BAD_FROM": _REJ, "BAD_TO": _REJ, "BAD_ENCODING": _REJ,
    "BAD_CARRIER/FROM": _REJ, "BAD_TIMEZONE": _REJ, "NOT_ENOUGH_FUNDS": _REJ,
    # external-entity (SMSC delivery receipt) statuses listed in the same appendix
    "ACCEPTD": _IN, "BUFFRED": _IN, "ENROUTE": _IN,
    "DELIVRD": _OK, "UNDELIV": _UNDELIV, "REJECTD": _REJ,
}


def map_status(status: str | None) -> DeliveryState:
    """An Ogangi message status -> DeliveryState; unknown or empty -> in-flight, never a failure."""
    if not status:
        return DeliveryState.IN_FLIGHT
    return STATUS_STATES.get(status.strip().upper(), DeliveryState.IN_FLIGHT)


# --------------------------------------------------------------------------------------------
# Response envelope


@dataclass(frozen=True)
class Envelope:
    """The static part of every answer, and the ``<result>`` element (None when absent)."""

    input: str | None
    status: str | None
    description: str | None
    result: Element | None = field(default=None, compare=False)


def read_envelope(body: bytes, content_type: str = "") -> Envelope | None:
    """Parse an answer (decoded by ``decode_body``); None when it is not an Ogangi envelope."""
    root = _parse_xml(decode_body(body, content_type))
    if root is None:
        return None
    if root.find("status") is None:
        children = list(root)
        if len(children) != 1 or children[0].find("status") is None:
            return None
        root = children[0]          # a wrapped envelope: <anyRoot><input>...</anyRoot>
    return Envelope(input=_text(root, "input"), status=_text(root, "status"),
                    description=_text(root, "description"), result=root.find("result"))


_TRANSIENT = re.compile(r"temporar|try again|retry|time[ds]?[ -]?out|unavailable|busy|overload", re.I)
_THROTTLED = re.compile(r"rate[ -]?limit|too many|throttl", re.I)


def classify_error(call: str, description: str | None) -> ProviderError:
    """The error for an ``ERROR`` envelope: Rejected unless the description says it is transient."""
    text = (description or "").strip() or None
    message = f"Ogangi {call} failed: {text or 'ERROR without description'}"
    if text and _THROTTLED.search(text):
        return Throttled(message, code="ERROR", text=text)
    if text and _TRANSIENT.search(text):
        return Retriable(message, code="ERROR", text=text)
    return Rejected(message, code="ERROR", text=text)


def check_envelope(response: HttpResponse, *, call: str, sends: bool = False) -> Envelope:
    """The envelope of an ``OK`` answer, or raise the classified error (module docstring).

    ``sends``: the call may have sent a message, so an unreadable 2xx is InDoubt, not Retriable.
    """
    env = read_envelope(response.body, response.content_type) if response.body else None
    desc = env.description if env else None
    status = (env.status or "").strip().upper() if env else ""
    if status == "BAD_SIGNATURE":
        raise AuthFailed(f"Ogangi refused the signature of {call}: {desc or 'BAD_SIGNATURE'}",
                         code="BAD_SIGNATURE", text=desc)
    if not 200 <= response.status < 300:
        raise for_http_status(response.status, f"Ogangi {call} answered HTTP {response.status}"
                              + (f": {desc}" if desc else ""), code=status or None, text=desc,
                              retry_after=response.header("Retry-After"))
    if status == "OK":
        assert env is not None
        return env
    if status == "ERROR":
        raise classify_error(call, desc)
    what = f"status {status!r}" if status else "an unreadable body"
    message = f"Ogangi {call} answered HTTP {response.status} with {what}"
    if sends:
        raise InDoubt(message, code=status or None, text=desc)
    raise Retriable(message, code=status or None, text=desc)


# --------------------------------------------------------------------------------------------
# Result values


@dataclass(frozen=True)
class MessageStatus:
    """One message as getMessage (or sendSMS) describes it."""

    id: str | None
    status: str | None
    state: DeliveryState
    status_description: str | None
    date: str | None
    raw: dict[str, str | None] = field(default_factory=dict, compare=False)   # every field, by tag

    @property
    def final(self) -> bool:
        return self.state.final


@dataclass(frozen=True)
class MoMessage:
    """One inbound message. ``sender`` is the wire's ``from`` (the user), ``to`` the short code."""

    text: str | None
    sender: str | None
    to: str | None
    encoding: str | None
    keyword: str | None
    carrier: str | None
    send_date: str | None        # as sent: the sample is "2014-10-13 10:30:51.922", no zone


@dataclass(frozen=True)
class MoPage:
    total: int                   # <records>: every match, not only this page
    messages: tuple[MoMessage, ...]

    def more_after(self, page: int, results_per_page: int) -> bool:
        return page * results_per_page < self.total


@dataclass(frozen=True)
class FiredMo:
    """What fireMessage echoes back (absent fields are None: the GET variant echoes nothing)."""

    instance_id: str | None
    mobile_number: str | None
    text: str | None


@dataclass(frozen=True, slots=True)
class SendCall:
    """How one outbound message is sent: the call, its carrier, sendMT flags, PIN length."""

    method: str
    carrier: str
    flags: str = ""
    pin_length: int | None = None


def parse_get_message(response: HttpResponse) -> MessageStatus:
    env = check_envelope(response, call=GET_MESSAGE)
    message = env.result.find(".//message") if env.result is not None else None
    if message is None:
        raise Rejected("Ogangi getMessage answered OK without a <message>")
    return _message_status(message)


def parse_get_mo_messages(response: HttpResponse) -> MoPage:
    env = check_envelope(response, call=GET_MO_MESSAGES)
    result = env.result if env.result is not None else Element("result")
    messages = tuple(
        MoMessage(text=_text(m, "text"), sender=_text(m, "from"), to=_text(m, "to"),
                  encoding=_text(m, "encoding"), keyword=_text(m, "keyword"),
                  carrier=_text(m, "carrier"), send_date=_text(m, "sendDate"))
        for m in result.iter("MOMessage"))
    records = next((r.text for r in result.iter("records") if (r.text or "").strip()), None)
    try:
        total = int(records.strip()) if records is not None else len(messages)
    except ValueError:
        total = len(messages)
    return MoPage(total=total, messages=messages)


def parse_fire_message(response: HttpResponse) -> FiredMo:
    env = check_envelope(response, call=FIRE_MESSAGE)
    mo = env.result.find(".//mo") if env.result is not None else None
    if mo is None:
        return FiredMo(None, None, None)
    return FiredMo(instance_id=_text(mo, "instanceId"), mobile_number=_text(mo, "mobileNumber"),
                   text=_text(mo, "text"))


# --------------------------------------------------------------------------------------------
# The provider


def mo_inbound(m: MoMessage, keywords: Keywords, now: float) -> InboundSms:
    """The ``InboundSms`` of one MO (``from`` is the user's number, ``to`` the short code).
    A sender that is not a number is kept as given and never opts out (the table is by number).
    ``keyword`` is the text's first word: Ogangi's own ``keyword`` field is the rule that matched
    (seed 004: ``^OGANGI.*``), not a keyword; it stays in ``raw``."""
    text = m.text or ""
    phone = numbers.from_provider(m.sender, "digits")
    raw = {"text": m.text, "from": m.sender, "to": m.to, "encoding": m.encoding, "keyword": m.keyword,
           "carrier": m.carrier, "sendDate": m.send_date}
    return InboundSms(provider=Ogangi.name, sender=Recipient(phone=phone or (m.sender or "").strip()), text=text,
                      received_at=now, raw=orjson.dumps(raw).decode(),
                      dedupe_key=stable_id(m.sender, m.to, m.send_date, m.text), to=m.to,
                      keyword=first_word(text), occurred_at=m.send_date,
                      optout=keywords.classify(text) if phone else None)


def mo_read_plan(cursor: int, per_page: int, overlap: int) -> tuple[int, int]:
    """(page, index in that page) of the first entry to read: ``overlap`` entries before the
    cursor, pages numbered from 1."""
    start = max(0, cursor - max(0, overlap))
    return start // per_page + 1, start % per_page


def mo_cursor_after(cursor: int, page: int, per_page: int, count: int) -> int:
    """The cursor once ``count`` entries of ``page`` have been handled (never moves back)."""
    return max(cursor, (page - 1) * per_page + count)


def mo_reset_cursor(cursor: int, total: int, window: int) -> int | None:
    """A new cursor when the list (``total`` entries) is shorter than the cursor, else None."""
    if total >= cursor:
        return None
    return max(0, total - window)


class Ogangi(Provider):
    name = "ogangi"
    title = "Ogangi"
    max_batch = 1
    supports_ucs2 = True
    max_segments = None
    can_split = False
    capabilities = frozenset({Capability.SEND, Capability.MO_LIST, Capability.STATUS_POLL,
                              Capability.CONNECTION_CHECK})
    Config = OgangiConfig

    parse_get_message = staticmethod(parse_get_message)
    parse_get_mo_messages = staticmethod(parse_get_mo_messages)
    parse_fire_message = staticmethod(parse_fire_message)

    # -- sending -------------------------------------------------------------------------------
    def address(self, msg: OutboundSms) -> str:
        number = self.recipient_number(msg)
        return number.e164 if self.config.number_format == "e164" else number.digits

    def prepare(self, msg: OutboundSms) -> Prepared:
        prepared = super().prepare(msg)
        self.send_call(msg)
        if not prepared.sender:
            raise InvalidMessage("Ogangi needs a from short/long code: set the record's sender or the "
                                 f"route's sender (route {self.route})", field="sender")
        return prepared

    def send_call(self, msg: OutboundSms) -> SendCall:
        """The call for ``msg`` from the route config and ``options.ogangi`` (InvalidMessage if bad).

        Options: ``method`` (sendSMS, sendMT or sendSMSPinMobileNumberConfirm), ``flags`` (sendMT),
        ``pin`` (true, or ``{"length": n}``: a PIN send), ``carrier``.
        """
        opts: Mapping[str, Any] = msg.options_for(self.name)
        where = f"options.{self.name}"
        if not isinstance(opts, Mapping):
            raise InvalidMessage(f"{where} must be an object", field=where)
        unknown = sorted(set(opts) - _OPTION_KEYS)
        if unknown:
            raise InvalidMessage(f"{where}: unknown option(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(_OPTION_KEYS))})", field=f"{where}.{unknown[0]}")
        method = opts.get("method", self.config.send_method)
        if method not in (SEND_SMS, SEND_MT, SEND_PIN):
            raise InvalidMessage(f"{where}.method must be {SEND_SMS}, {SEND_MT} or {SEND_PIN}",
                                 field=f"{where}.method")
        pin = opts.get("pin")
        pin_length: int | None = None
        if pin is not None and pin is not False:
            if method == SEND_MT and "method" in opts:
                raise InvalidMessage(f"{where}: pin cannot be sent with sendMT", field=f"{where}.pin")
            method = SEND_PIN
            if pin is True:
                pin_length = self.config.pin_length
            elif isinstance(pin, Mapping) and set(pin) <= {"length"}:
                pin_length = pin.get("length", self.config.pin_length)
            else:
                raise InvalidMessage(f"{where}.pin must be true or {{\"length\": n}}", field=f"{where}.pin")
        elif method == SEND_PIN:
            pin_length = self.config.pin_length
        if method == SEND_PIN:
            lo, hi = PIN_LENGTH_RANGE
            if isinstance(pin_length, bool) or not isinstance(pin_length, int) or not lo <= pin_length <= hi:
                raise InvalidMessage(f"{where}.pin.length must be an integer from {lo} to {hi}",
                                     field=f"{where}.pin.length")
        carrier = opts.get("carrier", self.config.carrier)
        if not isinstance(carrier, str) or not carrier.strip():
            raise InvalidMessage(f"{where}.carrier must be a non-empty string", field=f"{where}.carrier")
        flags = opts.get("flags", self.config.mt_flags if method == SEND_MT else "")
        if not isinstance(flags, str):
            raise InvalidMessage(f"{where}.flags must be a string", field=f"{where}.flags")
        if flags and method != SEND_MT:
            raise InvalidMessage(f"{where}.flags only go with sendMT", field=f"{where}.flags")
        return SendCall(method=method, carrier=carrier.strip(), flags=flags, pin_length=pin_length)

    def build_send(self, batch: Sequence[Prepared]) -> HttpRequest:
        p = _single(batch)
        call = self.send_call(p.msg)
        if not p.sender:
            raise Rejected("Ogangi needs a from code and none is set", field="sender")
        c = self.config
        text = b64(p.msg.text, c.base64_alphabet)
        if call.method == SEND_SMS:
            params = [c.instance_id, call.carrier, p.sender, b64(p.to, c.base64_alphabet), text]
        elif call.method == SEND_MT:
            params = [c.instance_id, p.sender, call.carrier, p.to, text, *([call.flags] if call.flags else [])]
        else:
            params = [c.instance_id, call.carrier, p.sender, p.to, text, str(call.pin_length)]
        return self._get(call.method, params)

    def parse_send(self, batch: Sequence[Prepared], response: HttpResponse) -> list[SendResult]:
        p = _single(batch)
        call = self.send_call(p.msg)
        env = check_envelope(response, call=call.method, sends=True)
        details: dict[str, Any] = {"method": call.method}
        if call.method == SEND_PIN:
            pin_el = env.result.find(".//PinSMSConfirmation/pin") if env.result is not None else None
            pin = (pin_el.text or "").strip() if pin_el is not None else ""
            details.update(pin_length=call.pin_length, pin_hash=PIN_HASH_SCHEME,
                           pin_sha256=pin_digest(self._pin_key(), p.msg.client_message_id, pin) if pin else None)
            return [Accepted(provider_message_id=None, details=details)]
        message = env.result.find(".//message") if env.result is not None else None
        if message is None:
            return [Accepted(provider_message_id=None, details=details)]
        status = _message_status(message)
        if status.status:
            details["status"] = status.status
        if status.state in (DeliveryState.REJECTED, DeliveryState.UNDELIVERABLE, DeliveryState.EXPIRED):
            return [Rejected(f"Ogangi did not send the message: {status.status}"
                             + (f" ({status.status_description})" if status.status_description else ""),
                             code=status.status, text=status.status_description)]
        return [Accepted(provider_message_id=status.id, details=details)]

    # -- polling and MO --------------------------------------------------------------------------
    def build_get_message(self, message_id: str) -> HttpRequest:
        if not message_id:
            raise ValueError("message_id is empty")
        return self._get(GET_MESSAGE, [self.config.instance_id, message_id])

    def build_get_mo_messages(self, page: int = 1, results_per_page: int = 100,
                              filters: Mapping[str, str | Sequence[str]] | None = None) -> HttpRequest:
        """One page of inbound messages (``page`` from 1); ``filters`` as ``mo_parameters``."""
        if page < 1 or results_per_page < 1:
            raise ValueError("page and results_per_page start at 1")
        return self._get(GET_MO_MESSAGES, [self.config.instance_id, str(page), str(results_per_page),
                                           mo_parameters(filters)])

    # -- status polling (Ogangi pushes no delivery receipts) ----------------------------------
    def build_status_poll(self, message_id: str) -> HttpRequest:
        return self.build_get_message(message_id)

    def parse_status_poll(self, response: HttpResponse) -> PolledStatus:
        status = parse_get_message(response)
        return PolledStatus(state=status.state.value, status=status.status, date=status.date, raw=status.raw)

    def status_receipt(self, correlation_key: str, message_id: str, polled: PolledStatus, state: str,
                       received_at: float) -> DeliveryReceipt:
        """The ``sms.receipts`` record of a poll (``state`` may be ``expired`` for a poll given up)."""
        return DeliveryReceipt(
            provider=self.name, correlation_key=correlation_key, kind="status-poll", state=state,
            received_at=received_at, raw=orjson.dumps(polled.raw).decode(), raw_format="json",
            provider_message_id=message_id, provider_status=polled.status, occurred_at=polled.date)

    # -- MO: a growing list, read oldest first with a cursor (entries consumed) --------------
    def mo_source(self) -> str:
        return f"ogangi-mo:{self.config.instance_id}"

    def build_mo_poll(self, page: int, per_page: int) -> HttpRequest:
        return self.build_get_mo_messages(page, per_page, {"order": "ASC"})

    def parse_mo_poll(self, response: HttpResponse) -> MoPage:
        return parse_get_mo_messages(response)

    def mo_records(self, messages: Sequence[MoMessage], keywords: Keywords, now: float) -> list[InboundSms]:
        return [mo_inbound(m, keywords, now) for m in messages]

    mo_read_plan = staticmethod(mo_read_plan)
    mo_cursor_after = staticmethod(mo_cursor_after)
    mo_reset_cursor = staticmethod(mo_reset_cursor)

    # -- connection check: a read-only signed call -------------------------------------------
    credential_settings = "{r}private_key and {r}public_key (then {r}signature_encoding / {r}signature_covers)"

    def build_check(self) -> HttpRequest | None:
        return self.auth.apply(self.build_get_mo_messages(page=1, results_per_page=1))

    def parse_check(self, response: HttpResponse) -> str:
        parse_get_mo_messages(response)
        return "signature accepted (getMOMessages page 1, one result: a read-only call)"

    def build_fire_message(self, mobile_number: str, text: str) -> HttpRequest:
        """Inject an MO from ``mobile_number`` (E.164 or digits) into the campaign manager."""
        if not text:
            raise ValueError("text is empty")
        return self._get(FIRE_MESSAGE, [self.config.instance_id, self.number(mobile_number),
                                        b64(text, self.config.base64_alphabet)])

    def number(self, value: str) -> str:
        """A mobile number in this route's form (``number_format``); ValueError when it is none."""
        digits = value.strip().removeprefix("+")
        if not _NUMBER.match(digits):
            raise ValueError("mobile number must be 7 to 15 digits, optionally after '+'")
        return "+" + digits if self.config.number_format == "e164" else digits

    # -- internals -----------------------------------------------------------------------------
    def _get(self, method: str, params: Sequence[str]) -> HttpRequest:
        c = self.config
        if c.private_key is None or not c.private_key.value:
            raise AuthFailed(f"route {self.route}: Ogangi private_key is not configured")
        url = signed_url(c.base_url, CALL_PATHS[method], params, public_key=c.public_key,
                         private_key=c.private_key.value, signature_encoding=c.signature_encoding,
                         signature_covers=c.signature_covers, path_encoding=c.path_encoding)
        return HttpRequest("GET", url, {"Accept": "application/xml"})

    def _pin_key(self) -> str:
        key = self.config.pin_hash_key or self.config.private_key
        return key.value if key is not None else ""


def _single(batch: Sequence[Prepared]) -> Prepared:
    if len(batch) != 1:
        raise ProviderError(f"Ogangi sends one message per call, got a batch of {len(batch)}")
    return batch[0]


def _message_status(message: Element) -> MessageStatus:
    raw = {child.tag: (child.text or "").strip() or None for child in message}
    status = raw.get("status")
    return MessageStatus(id=raw.get("id"), status=status, state=map_status(status),
                         status_description=raw.get("statusDescription"), date=raw.get("date"), raw=raw)


def _text(el: Element, name: str) -> str | None:
    child = el.find(name)
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


# --------------------------------------------------------------------------------------------
# XML: strict first, lenient when the provider's XML is not well-formed

_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>", re.S)
_DTD = re.compile(r"<!(DOCTYPE|ENTITY)", re.I)
_TOKEN = re.compile(
    r"<!\[CDATA\[(.*?)\]\]>"                                   # 1: CDATA
    r"|<!--.*?-->|<[?!][^>]*>"                                 # comments, PIs, DOCTYPE: skipped
    r"|<(/?)([A-Za-z_][\w.:-]*)(?:\s[^>]*?)?(/?)>",            # 2: '/', 3: name, 4: '/' (empty)
    re.S)
_ENTITY = re.compile(r"&(#x[0-9a-fA-F]+|#[0-9]+|lt|gt|amp|quot|apos);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")


def decode_body(body: bytes, content_type: str = "") -> str:
    """An answer's text, by its declared charset: the Content-Type's ``charset`` (RFC 7303: it
    wins), else the XML declaration's ``encoding``, else a BOM, else UTF-8. A declared charset
    that cannot decode the bytes gives way to the next; the last resort replaces bad bytes."""
    declared: list[str] = []
    m = _CHARSET.search(content_type or "")
    if m:
        declared.append(m.group(1))
    m = _XML_ENCODING.match(body.removeprefix(b"\xef\xbb\xbf"))
    if m:
        declared.append(m.group(1).decode("ascii"))
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):
        declared.append("utf-16")
    for charset in [*declared, "utf-8"]:
        try:
            return body.decode(charset).lstrip("\ufeff")
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("utf-8", errors="replace").lstrip("\ufeff")


def _parse_xml(text: str) -> Element | None:
    text = _DECLARATION.sub("", text, count=1)
    if "<" not in text or _DTD.search(text):
        return None                 # no markup, or a DTD: not an Ogangi answer, never expanded
    try:
        return SafeET.fromstring(f"<ogangi-response>{text}</ogangi-response>".encode("utf-8"))
    except ParseError:
        return _parse_lenient(text)
    except Exception:  # noqa: BLE001 - defusedxml refusing a DTD or entity: not an Ogangi answer
        return None


def _parse_lenient(text: str) -> Element:
    root = Element("ogangi-response")
    stack = [root]
    pos = 0
    for m in _TOKEN.finditer(text):
        _add_text(stack[-1], _unescape(text[pos:m.start()]))
        pos = m.end()
        if m.group(1) is not None:
            _add_text(stack[-1], m.group(1))
            continue
        name = m.group(3)
        if name is None:
            continue
        if m.group(2):
            for i in range(len(stack) - 1, 0, -1):
                if stack[i].tag == name:
                    del stack[i:]
                    break
            continue
        el = SubElement(stack[-1], name)
        if not m.group(4):
            stack.append(el)
    _add_text(stack[-1], _unescape(text[pos:]))
    return root


def _add_text(el: Element, chunk: str) -> None:
    if chunk and len(el) == 0:
        el.text = (el.text or "") + chunk


def _unescape(chunk: str) -> str:
    def one(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref.startswith("#x"):
            return chr(int(ref[2:], 16))
        if ref.startswith("#"):
            return chr(int(ref[1:]))
        return _NAMED[ref]

    try:
        return _ENTITY.sub(one, chunk)
    except (ValueError, OverflowError):
        return chunk
