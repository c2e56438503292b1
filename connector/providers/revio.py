"""Rev.io (SOAP 1.1): ``SMS_Send``, the SMS opt-out list and sessions, on ``POST /v20/default.asmx``.

Seed ``001``; facts in PROVIDERS.md §2. This module owns Rev.io's wire format and nothing else:
SOAP envelopes built with ``xml.etree`` (the serializer escapes every piece of user text),
responses read with ``defusedxml`` by local name (so the v20 and the older
``http://api.myh2o.com/`` namespaces both parse), the response ``Header`` (``Success``,
``Message``, ``Error_Code``) classified into ``connector.errors``, the session state machine
(``RevIoAuth``: one ``Sessions_Create``, then ``<Session>`` in every request, or
``<Credentials>`` in every request when sessions are off or none can be had) and the idempotent
opt-out operations (``SMSOptOut_Create`` / ``SMSOptOut_Delete``). ``SMS_Send`` takes one
``ToNumber``, so every message is one call. No I/O: ``connector.sender`` drives it.

Assumptions where Rev.io's documentation is silent (PROVIDERS.md §2 lists the shared ones):

- Authentication failures come back as HTTP 200, ``Success=false`` and a ``Message`` about
  credentials, login or session (no documented ``Error_Code``): ``AuthFailed``, so the sender
  forgets the session and logs in again once. HTTP 401/403 are ``AuthFailed`` too. The
  ``Error_Code`` decides first (any code: ``Rejected``); the wording only when there is none,
  and a refusal that names a number or only says "not authorized" is a ``Rejected`` message,
  not a failed login (``_AUTH_WORDS``).
- A ``Sessions_Create`` answered ``Success=false`` is a refused login (``AuthFailed``: the sender's
  login breaker opens, nothing loops). When the operation answers but yields no session (a
  ``soap:Client`` fault such as an unknown SOAPAction, a 4xx, or ``Success=true`` without a
  ``SessionKey``) the adapter falls back to ``<Credentials>`` in each request until the next
  ``invalidate()``. 5xx / 429 / network errors during login stay retriable: no fallback.
- ``S2010`` ("Invalid input received.") is the only documented code; any other ``Error_Code``
  (or none) with ``Success=false`` and no auth wording is a permanent ``Rejected``. SOAP faults:
  ``soap:Client`` / ``VersionMismatch`` / ``MustUnderstand`` -> ``Rejected``; ``soap:Server`` and
  anything else -> ``Retriable``; HTTP 429 -> ``Throttled`` (``Retry-After``); other statuses via
  ``errors.for_http_status``.
- ``SMS_Send`` has no idempotency key: a 200 whose result cannot be read is ``InDoubt`` (the
  message may be out; it is not resent). A network timeout is still retried by policy, and may
  duplicate, as with any provider without idempotency keys.
- "1 to 160 characters" is counted as .NET counts ``String.Length`` (UTF-16 code units: an emoji
  counts 2), which never under-counts whatever Rev.io really measures. UCS-2 text is accepted
  (the doc does not forbid it); the segment count recorded is ``connector.encoding``'s estimate
  (GSM-7 153/160, UCS-2 67/70), i.e. what the carrier is expected to bill. Characters XML 1.0
  cannot carry (C0 controls other than tab, CR, LF; lone surrogates) are ``InvalidMessage``.
- ``ToNumber`` is a North American number: only ``+1`` followed by 10 digits is accepted.
- ``SmsProfileID`` / ``FromNumber`` travel inside ``<Profile>``, as the input list nests them and
  as the output does. The message's choice (``options.revio.sms_profile_id``,
  ``options.revio.from_number`` or the record's ``sender``) wins over the route's
  (``sms_profile_id``, ``from_number``, then the route ``sender``); both kinds named at one level
  is ``InvalidMessage``. A FromNumber written ``+1XXXXXXXXXX`` is sent as its 10 digits, anything
  else (a short code) as given.
- Opt-out: when some TNs are already listed (create) or not listed (delete), Rev.io refuses the
  whole request (``S2010`` "Invalid input received.") and changes nothing, so those TNs count as
  done (idempotent) and the others come back as ``pending`` (send them again). The seed has no
  sample for delete's "not listed" message; ``'…' is not in the opt-out list.`` and close
  variants are recognised. TNs written ``+1XXXXXXXXXX`` are sent as 10 digits.
- The seed's sample ``SessionKey`` values contain a bare ``&`` (the doc page shows them
  unescaped). Real responses should escape it; bare ampersands are repaired before parsing
  rather than failing a call that has already happened.
- The ``SessionKey`` echoed in response headers is not adopted: the key from ``Sessions_Create``
  is used until Rev.io refuses it. ``SOAPAction`` is ``"<namespace>/<Operation>"``, quoted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterator, Literal, Sequence
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

import defusedxml.ElementTree as SafeET

from connector.config import Secret, provider_settings, setting
from connector import numbers
from connector.encoding import analyse
from connector.errors import AuthFailed, InDoubt, InvalidMessage, ProviderError, Rejected, Retriable, for_http_status
from connector.http import HttpRequest, HttpResponse
from connector.providers.base import Auth, Capability, Prepared, Provider, SendResult
from connector.records import Accepted, OutboundSms
from connector.providers.xmltree import find_child, local_name

PATH = "/v20/default.asmx"
NS_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
NS_V20 = "http://api.myh2o.com/v20"
NS_LEGACY = "http://api.myh2o.com/"     # the seed's SMS_Send sample
CONTENT_TYPE = "text/xml; charset=utf-8"
MAX_CHARS = 160
INVALID_INPUT = "S2010"                  # "Invalid input received."
XML_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'

OptOutOperation = Literal["create", "delete"]
OPTOUT_OPERATIONS: dict[str, str] = {"create": "SMSOptOut_Create", "delete": "SMSOptOut_Delete"}

_NANP = re.compile(r"^\+1([0-9]{10})$")
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BARE_AMP = re.compile(rb"&(?!(?:[A-Za-z_][\w.-]*|#[0-9]+|#x[0-9A-Fa-f]+);)")
# Last resort, for a refusal without an Error_Code: wording about the caller's own login. Not
# "authorized" / "access denied": a per-message refusal says those about a recipient ("number not
# authorized for SMS"), and mistaking it for an auth failure re-logs in and counts a breaker failure.
_AUTH_WORDS = re.compile(r"credential|session\s*key|\bsession\b.*\b(expired|invalid|not exist|unknown)|"
                         r"log\s*-?\s*in failed|logon failed|invalid (user\s*name|password)|password|user\s*name|"
                         r"authenticat|client code|impersonat", re.I)
# A refusal naming a number ('8504700000') is about a message, whatever its words.
_QUOTED_NUMBER = re.compile(r"'\+?[0-9][0-9 ,-]*'")
# "'1234567890' is already in the opt-out list." / "'a, b' are already in the opt-out list."
_ALREADY_LISTED = re.compile(r"^'(?P<tns>[^']*)' (?:is|are) already (?:in|on) the opt-?out list\.?$", re.I)
# Not in the seed: delete's "not listed" answer, recognised in its likely wordings.
_NOT_LISTED = re.compile(r"^'(?P<tns>[^']*)' (?:(?:is|are) not (?:in|on)|(?:was|were) not found in|"
                         r"(?:does|do) not exist in) the opt-?out list\.?$", re.I)
_IDEMPOTENT = {"create": _ALREADY_LISTED, "delete": _NOT_LISTED}
_CLIENT_FAULTS = ("Client", "VersionMismatch", "MustUnderstand")


@provider_settings("revio")
@dataclass(frozen=True)
class RevIoConfig:
    username: str = setting(doc="Rev.io API login: `<Credentials><Username>`.", example="api-sms")
    password: Secret = setting(doc="Password of `username`: `<Credentials><Password>`.", secret=True,
                               example="env:REVIO_PASSWORD")
    client: str = setting(doc="Client code of the Rev.io system: `<Credentials><Client>`.", example="ACME")
    base_url: str = setting("https://api.rev.io", doc="Base URL of the Rev.io SOAP API; requests go to "
                            "`{base_url}/v20/default.asmx`.", example="https://api.rev.io")
    customer_id: int | None = setting(None, doc="Default `CustomerID` the sent SMS is associated with "
                                      "(a record's `options.revio.customer_id` wins); none when empty.",
                                      example="1001", minimum=1)
    sms_profile_id: int | None = setting(None, doc="Default `SmsProfileID` (the SMS profile to send from). "
                                         "Cannot be set with `from_number`; Rev.io picks a profile when "
                                         "neither is set.", example="1000", minimum=0)
    from_number: str = setting("", doc="Default `FromNumber` (picks the SMS profile by its number; "
                               "`+1XXXXXXXXXX` is sent as 10 digits). Cannot be set with `sms_profile_id`; "
                               "the route `sender` is used when both are empty.", example="8005550100")
    namespace: str = setting(NS_V20, doc="SOAP body namespace; also the SOAPAction prefix.",
                             example=NS_V20)
    use_sessions: bool = setting(True, doc="Log in once with `Sessions_Create` and send `<Session>` in each "
                                 "request; when false (or no session can be had) `<Credentials>` go in each "
                                 "request.")


# --------------------------------------------------------------------------------------------
# Building requests (pure)


def _el(tag: str, text: str | None = None, *children: Element) -> Element:
    el = Element(tag)
    if text is not None:
        el.text = text
    el.extend(children)
    return el


def credentials_element(config: RevIoConfig) -> Element:
    """``<Credentials><Username/><Password/><Client/></Credentials>``."""
    return _el("Credentials", None, _el("Username", config.username), _el("Password", config.password.value),
               _el("Client", config.client))


def session_element(session_key: str) -> Element:
    """``<Session><SessionKey/></Session>``."""
    return _el("Session", None, _el("SessionKey", session_key))


def soap_action(namespace: str, operation: str) -> str:
    return f'"{namespace.rstrip("/")}/{operation}"'


def build_request(config: RevIoConfig, operation: str, fields: Sequence[Element],
                  auth: Element | None = None) -> HttpRequest:
    """A SOAP 1.1 call of ``operation`` whose ``<Request>`` holds ``auth`` (if any), then ``fields``."""
    root = Element("soap:Envelope", {"xmlns:soap": NS_SOAP})
    op = SubElement(SubElement(root, "soap:Body"), operation, {"xmlns": config.namespace})
    request = SubElement(op, "Request")
    if auth is not None:
        request.append(auth)
    request.extend(fields)
    # No self-closing tags: ``with_auth`` finds ``<Request>`` even when it is empty.
    body = XML_DECLARATION + tostring(root, encoding="utf-8", short_empty_elements=False)
    return HttpRequest("POST", config.base_url.rstrip("/") + PATH,
                       {"Content-Type": CONTENT_TYPE, "SOAPAction": soap_action(config.namespace, operation)},
                       body)


def build_sessions_create(config: RevIoConfig) -> HttpRequest:
    return build_request(config, "Sessions_Create", (), credentials_element(config))


def build_sms_send(config: RevIoConfig, to_number: str, message: str, *, customer_id: int | None = None,
                   sms_profile_id: int | None = None, from_number: str | None = None,
                   auth: Element | None = None) -> HttpRequest:
    """``SMS_Send``; the caller has checked the inputs (``RevIo.prepare``)."""
    if sms_profile_id is not None and from_number:
        raise ValueError("SmsProfileID cannot be used with FromNumber")
    fields = [_el("ToNumber", to_number), _el("Message", message)]
    if customer_id is not None:
        fields.append(_el("CustomerID", str(customer_id)))
    if sms_profile_id is not None:
        fields.append(_el("Profile", None, _el("SmsProfileID", str(sms_profile_id))))
    elif from_number:
        fields.append(_el("Profile", None, _el("FromNumber", from_number)))
    return build_request(config, "SMS_Send", fields, auth)


def _optout(config: RevIoConfig, operation: str, auth: Element | None, tns: Sequence[str]) -> HttpRequest:
    if isinstance(tns, str) or not tns:
        raise InvalidMessage(f"{operation} needs a list of at least one TN", field="TNs")
    return build_request(config, operation, [_el("TNs", None, *(_el("TN", tn) for tn in tns))], auth)


def build_optout_create(config: RevIoConfig, auth: Element | None, tns: Sequence[str]) -> HttpRequest:
    """``SMSOptOut_Create``: put ``tns`` on the opt-out list."""
    return _optout(config, OPTOUT_OPERATIONS["create"], auth, tns)


def build_optout_delete(config: RevIoConfig, auth: Element | None, tns: Sequence[str]) -> HttpRequest:
    """``SMSOptOut_Delete``: take ``tns`` off the opt-out list."""
    return _optout(config, OPTOUT_OPERATIONS["delete"], auth, tns)


def with_auth(request: HttpRequest, auth: Element) -> HttpRequest:
    """``request`` with ``auth`` as the first child of ``<Request>`` (unchanged if it has one).

    Both pieces are serialized by ElementTree (user text escaped), and ``<Request>`` cannot occur
    in escaped text, so inserting at the first ``<Request>`` is exact.
    """
    body = request.body
    if b"<Request>" not in body or b"<Request><Session>" in body or b"<Request><Credentials>" in body:
        return request
    return replace(request, body=body.replace(b"<Request>", b"<Request>" + tostring(auth, encoding="utf-8"), 1))


def normalize_tn(number: str) -> str:
    """A +1 number in any accepted form -> its 10 digits; anything else unchanged (Rev.io judges it)."""
    try:
        parsed = numbers.parse(number)
    except InvalidMessage:
        return number
    return parsed.nanp10() if parsed.is_nanp else number


# --------------------------------------------------------------------------------------------
# Reading responses (pure)


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """``<Op>Result/Header``."""

    success: bool
    message: str | None = None
    error_code: str | None = None
    error_description: str | None = None
    session_key: str | None = None
    impersonated: bool | None = None


@dataclass(frozen=True, slots=True)
class OptOutResult:
    """A successful (or idempotently successful) opt-out call.

    ``unchanged``: TNs that were already in the wanted state (already listed for ``create``, not
    listed for ``delete``). ``pending``: TNs Rev.io did not apply because it refused the request
    over the ``unchanged`` ones; send them again.
    """

    operation: str
    tns: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    message: str | None = None

    @property
    def complete(self) -> bool:
        return not self.pending




def _text(el: Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip()


def _parse_xml(raw: bytes) -> Element | None:
    if not raw.strip():
        return None
    try:
        return SafeET.fromstring(raw)
    except (ParseError, ValueError):   # defusedxml's refusals are ValueErrors
        pass
    repaired = _BARE_AMP.sub(b"&amp;", raw)
    if repaired == raw:
        return None
    try:
        return SafeET.fromstring(repaired)
    except (ParseError, ValueError):
        return None


def _fault_error(operation: str, fault: Element) -> ProviderError:
    code = _text(find_child(fault, "faultcode")) or ""
    text = _text(find_child(fault, "faultstring")) or ""
    message = f"Rev.io {operation}: SOAP fault {code or '(no code)'}: {text or '(no text)'}"
    kind = code.rsplit(":", 1)[-1].split(".", 1)[0]
    if kind in _CLIENT_FAULTS:
        return Rejected(message, code=code or None, text=text or None)
    return Retriable(message, code=code or None, text=text or None)


def _header(el: Element) -> ResponseHeader:
    def nil(name: str) -> str | None:
        child = find_child(el, name)
        return _text(child) or None

    impersonated = nil("Impersonated")
    return ResponseHeader(
        success=(nil("Success") or "").lower() == "true",
        message=nil("Message"), error_code=nil("Error_Code"), error_description=nil("Error_Description"),
        session_key=nil("SessionKey"),
        impersonated=None if impersonated is None else impersonated.lower() == "true")


def read_result(operation: str, response: HttpResponse,
                unreadable: type[ProviderError] = Retriable) -> tuple[ResponseHeader, Element]:
    """The ``<Op>Result`` element and its header, or the classified error of the whole call.

    ``unreadable`` is raised for a 2xx without a readable result: ``Retriable`` for idempotent
    calls, ``InDoubt`` for ``SMS_Send``.
    """
    status = response.status
    if status == 429:
        raise for_http_status(429, f"Rev.io {operation} answered HTTP 429",
                              retry_after=response.header("Retry-After"))
    root = _parse_xml(response.body)
    if root is not None:
        fault = next((e for e in root.iter() if local_name(e.tag) == "Fault"), None)
        if fault is not None:
            raise _fault_error(operation, fault)
    if not 200 <= status < 300:
        raise for_http_status(status, f"Rev.io {operation} answered HTTP {status}",
                              retry_after=response.header("Retry-After"))
    name = operation + "Result"
    result = None if root is None else next((e for e in root.iter() if local_name(e.tag) == name), None)
    header = find_child(result, "Header")
    if result is None or header is None:
        raise unreadable(f"Rev.io {operation} answered HTTP {status} without a readable {name}/Header")
    return _header(header), result


def header_error(operation: str, header: ResponseHeader) -> ProviderError:
    """The error for ``Success=false``, by ``Error_Code`` first: every code (``S2010`` is the only
    documented one) is a permanent ``Rejected``. Without a code, and only then, the wording
    decides, as a documented last resort: the caller's own login (credentials, session, password)
    is ``AuthFailed``; anything else, or a refusal naming a number, is ``Rejected``."""
    text = header.message or header.error_description or "no message"
    code, description = header.error_code, header.error_description
    detail = f" ({code}: {description})" if code and description else f" ({code})" if code else ""
    message = f"Rev.io {operation} refused: {text}{detail}"
    if code is None:
        wording = " ".join(filter(None, (header.message, header.error_description)))
        if _AUTH_WORDS.search(wording) and not _QUOTED_NUMBER.search(wording):
            return AuthFailed(message, code=code, text=text)
    return Rejected(message, code=code, text=text)


def parse_sessions_create(response: HttpResponse) -> str | None:
    """The new SessionKey; None when Rev.io answered without one. Raises on a refused login."""
    header, result = read_result("Sessions_Create", response)
    if not header.success:
        error = header_error("Sessions_Create", header)
        # Any refusal of a login is a login failure: the sender's breaker must see it.
        raise error if isinstance(error, AuthFailed) else AuthFailed(error.message, code=error.code,
                                                                     text=error.text)
    return _text(find_child(result, "SessionKey")) or header.session_key or None


def _int_or_text(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def parse_sms_send(response: HttpResponse, *, sms_profile_id: int | None = None,
                   from_number: str | None = None) -> Accepted:
    """``SMS_Send``'s answer -> Accepted with the profile Rev.io used, or a classified error.

    ``sms_profile_id`` / ``from_number``: what was asked for, reported when the answer omits
    the ``Profile``.
    """
    header, result = read_result("SMS_Send", response, unreadable=InDoubt)
    if not header.success:
        raise header_error("SMS_Send", header)
    profile = find_child(result, "Profile")
    used_id = _int_or_text(_text(find_child(profile, "SmsProfileID")))
    used_from = _text(find_child(profile, "FromNumber"))
    return Accepted(provider_message_id=_text(find_child(result, "ID")) or None,
                    details={"sms_profile_id": used_id if used_id is not None else sms_profile_id,
                             "from_number": used_from if used_from is not None else from_number})


def parse_optout(op: OptOutOperation, response: HttpResponse, tns: Sequence[str] = ()) -> OptOutResult:
    """``SMSOptOut_Create`` / ``_Delete``'s answer; "already listed" / "not listed" are successes.

    ``tns``: the TNs sent, to tell which ones still need a call (``pending``).
    """
    operation = OPTOUT_OPERATIONS[op]
    header, _ = read_result(operation, response)
    sent = tuple(tns)
    if header.success:
        return OptOutResult(op, sent, message=header.message)
    m = _IDEMPOTENT[op].match(header.message or "")
    if m is None:
        raise header_error(operation, header)
    unchanged = tuple(t.strip() for t in m.group("tns").split(","))
    pending = tuple(t for t in sent if t not in unchanged)
    return OptOutResult(op, sent, unchanged, pending, header.message)


# --------------------------------------------------------------------------------------------
# Session state machine


class RevIoAuth(Auth):
    """``Sessions_Create`` once, then ``<Session>`` in each request; ``<Credentials>`` otherwise."""

    def __init__(self, config: RevIoConfig) -> None:
        self.config = config
        self.session_key: str | None = None
        self.fallback_reason: str | None = None   # set: credentials go in each request

    @property
    def ready(self) -> bool:
        return not self.config.use_sessions or self.session_key is not None or self.fallback_reason is not None

    @property
    def mode(self) -> str:
        return "session" if self.session_key is not None else "credentials"

    def login_requests(self) -> Iterator[HttpRequest]:
        if self.config.use_sessions:
            yield build_sessions_create(self.config)

    def handle_login(self, request: HttpRequest, response: HttpResponse) -> None:
        try:
            key = parse_sessions_create(response)
        except Rejected as exc:   # the operation is not available: no session can be had
            self.fallback_reason = exc.message
            return
        if key is None:
            self.fallback_reason = "Sessions_Create answered without a SessionKey"
            return
        self.session_key, self.fallback_reason = key, None

    def element(self) -> Element:
        """What goes first in ``<Request>`` now."""
        if self.session_key is not None:
            return session_element(self.session_key)
        return credentials_element(self.config)

    def apply(self, request: HttpRequest) -> HttpRequest:
        return with_auth(request, self.element())

    def invalidate(self) -> None:
        self.session_key = None
        self.fallback_reason = None


# --------------------------------------------------------------------------------------------
# The provider


def characters(text: str) -> int:
    """Length as Rev.io (.NET ``String.Length``) counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) >> 1


def _integer(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise InvalidMessage(f"{field} must be an integer, got {value!r}", field=field)
    return int(value)


def _from_number(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidMessage(f"{field} must be a phone number or short code, got {value!r}", field=field)
    text = str(value).strip()
    m = _NANP.match(text)
    return m.group(1) if m else text


class RevIo(Provider):
    """Rev.io: one ``SMS_Send`` per message, 1 to 160 characters, sessions or credentials."""

    name = "revio"
    title = "Rev.io"
    max_batch = 1          # SMS_Send takes one ToNumber
    supports_ucs2 = True   # the doc limits characters, not alphabets (module docstring)
    max_segments = 1       # one SMS_Send per message; the limit is 160 characters, not segments
    can_split = False      # the sender makes one call per message
    capabilities = frozenset({Capability.SEND, Capability.OPTOUT_SYNC, Capability.CONNECTION_CHECK})
    Config = RevIoConfig

    # -- opt-out list sync ----------------------------------------------------------------------
    @staticmethod
    def optout_numbers(phone: str) -> list[str]:
        """The numbers of an opt-out change its lists can hold: 10-digit North American only."""
        return [phone] if phone.startswith("+1") and len(phone) == 12 else []

    # -- connection check -----------------------------------------------------------------------
    login_summary = "Sessions_Create gave a session key"
    credential_settings = "{r}username, {r}password and {r}client"

    def build_check(self) -> HttpRequest | None:
        """With sessions, logging in is the check; without, a bare Sessions_Create."""
        return None if self.config.use_sessions else build_sessions_create(self.config)

    def parse_check(self, response: HttpResponse) -> str:
        parse_sessions_create(response)
        return "Sessions_Create accepted the credentials (use_sessions is off: they go in each request)"

    config: RevIoConfig
    auth: RevIoAuth

    def make_auth(self) -> RevIoAuth:
        return RevIoAuth(self.config)

    def address(self, msg: OutboundSms) -> str:
        return self.recipient_number(msg).nanp10("Rev.io sends to North American numbers only (+1 and 10 digits)")

    def profile(self, msg: OutboundSms) -> tuple[int | None, str | None]:
        """(SmsProfileID, FromNumber) to send with, at most one set; InvalidMessage when both are."""
        opts = msg.options_for(self.name)
        profile_id = _integer(opts.get("sms_profile_id"), f"options.{self.name}.sms_profile_id")
        from_number = _from_number(opts.get("from_number"), f"options.{self.name}.from_number") \
            or _from_number(msg.sender, "sender")
        if profile_id is not None and from_number:
            raise InvalidMessage("Rev.io: SmsProfileID cannot be used with FromNumber, and the record names "
                                 "both (options.revio.sms_profile_id and a from number)", field="sender")
        if profile_id is not None or from_number:
            return profile_id, from_number
        c = self.config
        from_number = _from_number(c.from_number, "from_number")
        if c.sms_profile_id is not None and from_number:
            raise InvalidMessage(f"route {self.route}: sms_profile_id and from_number are both set; Rev.io "
                                 "takes one (SmsProfileID cannot be used with FromNumber)", field="sms_profile_id")
        if c.sms_profile_id is not None:
            return c.sms_profile_id, None
        return None, from_number or _from_number(self.default_sender, "sender")

    def customer_id(self, msg: OutboundSms) -> int | None:
        value = _integer(msg.options_for(self.name).get("customer_id"), f"options.{self.name}.customer_id")
        return value if value is not None else self.config.customer_id

    def prepare(self, msg: OutboundSms) -> Prepared:
        text = msg.text
        if not text:
            raise InvalidMessage("text is empty", field="text")
        to = self.address(msg)
        n = characters(text)
        if n > MAX_CHARS:
            raise InvalidMessage(f"Rev.io takes 1 to {MAX_CHARS} characters; the text has {n} "
                                 "(Rev.io cannot split messages)", field="text")
        bad = _XML_INVALID.search(text)
        if bad is not None:
            raise InvalidMessage(f"text contains U+{ord(bad.group()):04X}, which XML (SOAP) cannot carry",
                                 field="text")
        _, from_number = self.profile(msg)
        self.customer_id(msg)
        encoded = analyse(text)
        if encoded.segments > 1 and self.segment_policy in ("reject", "split"):
            why = "Rev.io cannot split messages" if self.segment_policy == "split" else "the route sends one"
            raise InvalidMessage(f"text needs {encoded.segments} segments ({encoded.encoding.value}); {why}",
                                 field="text")
        if encoded.segments > self.route_max_segments:
            raise InvalidMessage(f"text needs {encoded.segments} segments ({encoded.encoding.value}); "
                                 f"route {self.route} allows {self.route_max_segments}", field="text")
        return Prepared(msg=msg, to=to, encoded=encoded, parts=(text,), sender=from_number)

    def build_send(self, batch: Sequence[Prepared]) -> HttpRequest:
        if len(batch) != 1:
            raise ValueError(f"Rev.io sends one message per call, got {len(batch)}")
        p = batch[0]
        sms_profile_id, from_number = self.profile(p.msg)
        return build_sms_send(self.config, p.to, p.parts[0], customer_id=self.customer_id(p.msg),
                              sms_profile_id=sms_profile_id, from_number=from_number)

    def parse_send(self, batch: Sequence[Prepared], response: HttpResponse) -> list[SendResult]:
        # Errors of the call are raised: with one message per call they are the message's result,
        # and a raised AuthFailed is what makes the sender refresh the session.
        sms_profile_id, from_number = self.profile(batch[0].msg) if batch else (None, None)
        return [parse_sms_send(response, sms_profile_id=sms_profile_id, from_number=from_number)]

    # -- the opt-out list (not driven by the sender: callers apply ``auth`` and do the I/O) ------
    def build_optout(self, op: OptOutOperation, numbers: Sequence[str]) -> HttpRequest:
        """Without auth: send ``self.auth.apply(request)`` after logging in like the sender does."""
        if op not in OPTOUT_OPERATIONS:
            raise ValueError(f"opt-out operation must be 'create' or 'delete', not {op!r}")
        return _optout(self.config, OPTOUT_OPERATIONS[op], None, [normalize_tn(n) for n in numbers])

    def parse_optout(self, op: OptOutOperation, response: HttpResponse,
                     numbers: Sequence[str] = ()) -> OptOutResult:
        return parse_optout(op, response, [normalize_tn(n) for n in numbers])
