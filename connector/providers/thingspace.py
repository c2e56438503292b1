"""Verizon ThingSpace (M2M REST JSON): send SMS to devices, read the MO queue, manage callbacks.

This module owns everything ThingSpace puts on the wire, and no I/O (seeds 000 and 002, facts in
PROVIDERS.md §1): the two-token login (OAuth2 client credentials, then an M2M session) as an
``Auth`` state machine with an injectable clock; turning an ``OutboundSms`` into one
``POST /m2m/v1/sms`` (a device id, a US phone number as an MDN, or a selection by account /
group / service plan / custom fields; ``7-bit`` or one of the three 8-bit ``dataEncoding`` values,
one segment only); classifying every answer (400 ``errorCode`` matched on the code without its
service name, never on the text; gateway ``fault`` 401s; 403; 429; 5xx); and the pure
request/response pairs of the other operations a poller or an operator needs (MO history with
its acknowledgement token, ``startCallbacks``, callback registration) plus a lenient parser of
received callbacks (SOAP XML as in seed 000, or JSON). Callers apply ``ThingSpaceAuth.apply`` to
every request built here except the two login requests.

Assumptions taken where the documents are silent (operators can rely on them; the simulator
follows them):

- The session token survives an OAuth access-token refresh; it is dropped only after a refused
  session (any ``errorCode`` with a ``SessionToken`` part) or a gateway 401 (which also drops the
  access token). A 403 drops the session only: a new bearer would carry the same permissions.
- The access token is refreshed ``token_refresh_margin_s`` before its ``expires_in``, counted
  from when the token request was made.
- Any non-retriable answer to a login request is an ``AuthFailed`` (the sender opens its login
  breaker); an ``errorCode`` with a part containing ``Locked`` is ``LoginLocked``.
- Device kinds are sent upper-case (as in seed 000's sample); only MDN ids are checked for
  format (10 digits); other ids must be letters and digits. A phone number recipient must be
  ``+1`` and 10 digits and is sent as that MDN.
- A selection message carries an empty ``Recipient()`` and its selection in
  ``options.thingspace``; ``accountName`` is always sent with a selection (the route's
  ``account_name`` unless the options name one), as the docs require it for users with several
  accounts. Unknown option keys are an ``InvalidMessage`` (typos must not change who receives).
- ``8-bit-DATA`` messages carry their payload base64-encoded in ``text``; ``8-bit-ASCII`` and
  ``8-bit-UTF-8`` carry plain text which is encoded, then base64-encoded for the wire.
- A 200 answer to a send without a ``requestId`` is ``InDoubt``: ThingSpace does not dedupe, so
  resending could deliver twice.
- MO history: the next-page token is the ``next`` query parameter of the 202 ``Location`` header;
  a page is "more" when the answer is 202 or ``hasMoreData`` is true. A message's device is the
  first of its ``deviceIds``; its ``dedupe_key`` hashes all its ids, timestamp and text.
- Received callbacks: JSON callbacks use camelCase forms of the SOAP names; the seed's
  ``Unceliverable`` means ``Undeliverable``; a SOAP document truncated after ``CallbackRequest``
  (seed 000's "Delivered" sample lacks ``</s:Envelope>``) is still read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import parse_qs, quote, urlsplit
from xml.etree.ElementTree import Element, ParseError, TreeBuilder, XMLParser

import defusedxml.ElementTree as SafeET
import orjson
from defusedxml import DefusedXmlException

from connector.config import Secret, provider_settings, setting
from connector.encoding import EncodedText, Encoding, analyse, analyse_bytes
from connector.errors import (
    AuthFailed,
    InDoubt,
    InvalidMessage,
    InvalidRecord,
    LoginLocked,
    ProviderError,
    Rejected,
    Retriable,
    for_http_status,
)
from connector.http import HttpRequest, HttpResponse
from connector.numbers import DEFAULT_LEVEL
from connector.keywords import Keywords, first_word
from connector.providers.base import (
    Auth,
    CallbackEvent,
    CallbackEvents,
    Capability,
    InvalidCallback,
    Prepared,
    Provider,
    SendResult,
    UnauthorizedCallback,
)
from connector.records import (DEVICE_KINDS, Accepted, DeliveryReceipt, InboundSms, OutboundSms, Recipient,
                               correlation_key, stable_id)
from connector.providers.xmltree import local_name

__all__ = [
    "BearerRefused", "CallbackRegistration", "DATA_ENCODINGS", "MoMessage", "MoPage", "SessionRefused",
    "ThingSpace", "ThingSpaceAuth", "ThingSpaceCallback", "ThingSpaceConfig",
    "build_delete_callback", "build_list_callbacks", "build_mo_history", "build_register_callback",
    "build_start_callbacks", "callback_credentials_match", "callback_format", "classify_error", "encode_message",
    "is_lock_error", "is_session_error",
    "parse_callback", "parse_delete_callback", "parse_list_callbacks", "parse_mo_history",
    "parse_register_callback", "parse_start_callbacks", "send_target",
]

TOKEN_PATH = "/ts/v1/oauth2/token"
LOGIN_PATH = "/m2m/v1/session/login"
SMS_PATH = "/m2m/v1/sms"
CALLBACKS_PATH = "/m2m/v1/callbacks"

DATA_ENCODINGS = ("7-bit", "8-bit-ASCII", "8-bit-UTF-8", "8-bit-DATA")
CUSTOM_FIELD_NAMES = frozenset(f"CustomField{i}" for i in range(1, 6))
SELECTION_OPTIONS = ("account_name", "group_name", "service_plan", "custom_fields")
OPTIONS = frozenset({"data_encoding", *SELECTION_OPTIONS})
SINGLE_7BIT = 160
SINGLE_8BIT = 140
DEFAULT_TOKEN_TTL_S = 3600.0   # "valid about 1 hour" when expires_in is missing
SERVICE_SEND_AND_MO = "EnhancedConnectivityService"
SERVICE_DELIVERY = "SMSDeliveryConfirmation"

_MDN = re.compile(r"^[0-9]{10}$")
_DEVICE_ID = re.compile(r"^[0-9A-Za-z]{1,64}$")


@provider_settings("thingspace")
@dataclass(frozen=True, kw_only=True)
class ThingSpaceConfig:
    base_url: str = setting("https://thingspace.verizon.com/api",
                            doc="Base URL of the ThingSpace API (OAuth and M2M paths are below it).",
                            example="https://thingspace.verizon.com/api")
    client_id: str = setting(doc="OAuth2 client id (the ThingSpace application key).",
                             example="a1b2c3d4-key")
    client_secret: Secret = setting(doc="OAuth2 client secret (the ThingSpace application secret).",
                                    secret=True, example="env:THINGSPACE_CLIENT_SECRET")
    username: str = setting(doc="M2M (UWS) username for POST /m2m/v1/session/login.", example="acme-api")
    password: Secret = setting(doc="M2M (UWS) password. Five failed logins lock the account: the "
                                   "connector never retries a refused login in a loop.",
                               secret=True, example="file:/var/run/secrets/thingspace/password")
    account_name: str = setting(doc="Billing account name, with its leading zeros: MO history, callbacks "
                                    "and the default accountName of selection sends.",
                                example="0000123456-00001")
    default_data_encoding: str = setting("7-bit", doc="dataEncoding when a record's "
                                                      "options.thingspace.data_encoding names none.",
                                         choices=DATA_ENCODINGS)
    token_refresh_margin_s: float = setting(60.0, doc="Fetch a new OAuth access token this long before "
                                                      "the current one expires.", minimum=0, maximum=3000)


# --------------------------------------------------------------------------------------------
# Errors


class SessionRefused(AuthFailed):
    """ThingSpace refused the VZ-M2M session token (expired, invalid, missing): log in again."""


class BearerRefused(AuthFailed):
    """The API gateway refused the OAuth bearer (401 ``fault``): fetch a new token, then log in."""


def _base(config: ThingSpaceConfig) -> str:
    return config.base_url.rstrip("/")


def _json(response: HttpResponse) -> Any:
    if not response.body:
        return None
    try:
        return orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None


def _xml_error(raw: bytes) -> tuple[str | None, str | None]:
    """(code, message) of a gateway XML error body, e.g. ``<ams:fault><ams:code>…``."""
    try:
        root = SafeET.fromstring(raw, forbid_dtd=True)
    except (ParseError, DefusedXmlException):
        return None, None
    found: dict[str, str] = {}
    for el in root.iter():
        name = local_name(el.tag).lower()
        if name in ("code", "message", "description", "faultcode", "faultstring") and el.text:
            found.setdefault(name, el.text.strip())
    return (found.get("code") or found.get("faultcode"),
            found.get("message") or found.get("faultstring") or found.get("description"))


def _error_fields(response: HttpResponse) -> tuple[str | None, str | None]:
    """The provider's own (code, text) from any ThingSpace error body shape."""
    body = _json(response)
    if isinstance(body, dict):
        if "errorCode" in body or "errorMessage" in body:
            return _str(body.get("errorCode")), _str(body.get("errorMessage"))
        fault = body.get("fault")
        if isinstance(fault, dict):
            text = _str(fault.get("message"))
            desc = _str(fault.get("description"))
            return _str(fault.get("code")), f"{text}: {desc}" if text and desc else text or desc
        if "error" in body:
            return _str(body.get("error")), _str(body.get("error_description"))
    elif response.body.lstrip().startswith(b"<"):
        return _xml_error(response.body)
    return None, None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _code_parts(code: str | None) -> list[str]:
    """``Service.CATEGORY.Detail...`` split on dots. The docs advise matching the code without its
    service name; looking for one part anywhere does that, with or without the service name."""
    return code.split(".") if code else []


def is_session_error(code: str | None) -> bool:
    return any(p.lower() == "sessiontoken" for p in _code_parts(code))


def is_lock_error(code: str | None) -> bool:
    return any("locked" in p.lower() for p in _code_parts(code))


def classify_error(response: HttpResponse, what: str = "ThingSpace") -> ProviderError:
    """The classified error of a non-2xx M2M answer (send, MO history, callbacks)."""
    status = response.status
    code, text = _error_fields(response)
    message = f"{what} answered HTTP {status}" + (f" {code}" if code else "") + (f": {text}" if text else "")
    if status == 400 and is_session_error(code):
        return SessionRefused(message, code=code, text=text)
    if status == 400:
        return Rejected(message, code=code, text=text)
    if status == 401:
        return BearerRefused(message, code=code, text=text)
    return for_http_status(status, message, code=code, text=text, retry_after=response.header("Retry-After"))


# --------------------------------------------------------------------------------------------
# Authentication


class ThingSpaceAuth(Auth):
    """Two tokens: an OAuth2 access token (refreshed before it expires) and an M2M session token
    (kept until ThingSpace refuses it). ``login_requests`` yields only the steps needed, lazily:
    the session login is built after the token response has been handled."""

    def __init__(self, config: ThingSpaceConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.token_url = _base(config) + TOKEN_PATH
        self.login_url = _base(config) + LOGIN_PATH
        self.access_token: str | None = None
        self.access_expires_at = 0.0
        self.session_token: str | None = None
        self._token_requested_at = 0.0
        self._refusal: AuthFailed | None = None

    # -- state -------------------------------------------------------------------------------
    @property
    def access_valid(self) -> bool:
        return (self.access_token is not None
                and self.clock() < self.access_expires_at - self.config.token_refresh_margin_s)

    @property
    def ready(self) -> bool:
        return self.access_valid and self.session_token is not None

    def note_refusal(self, error: AuthFailed) -> None:
        """Remember why credentials were refused, for the ``invalidate`` that follows."""
        self._refusal = error

    def invalidate(self, error: AuthFailed | None = None) -> None:
        """Drop the session; also the access token when the gateway refused the bearer.

        ``error`` is the refusal (callers of the module-level parsers pass it); without it, the
        refusal noted by the last ``parse_send`` decides."""
        error = error or self._refusal
        self._refusal = None
        self.session_token = None
        if isinstance(error, BearerRefused):
            self.access_token = None

    # -- login -------------------------------------------------------------------------------
    def token_request(self) -> HttpRequest:
        pair = f"{self.config.client_id}:{self.config.client_secret.value}".encode()
        return HttpRequest("POST", self.token_url,
                           {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii"),
                            "Content-Type": "application/x-www-form-urlencoded",
                            "Accept": "application/json"},
                           b"grant_type=client_credentials")

    def session_request(self) -> HttpRequest:
        body = orjson.dumps({"username": self.config.username, "password": self.config.password.value})
        return HttpRequest("POST", self.login_url,
                           {"Authorization": f"Bearer {self.access_token}",
                            "Content-Type": "application/json", "Accept": "application/json"}, body)

    def login_requests(self) -> Iterator[HttpRequest]:
        if not self.access_valid:
            self._token_requested_at = self.clock()
            yield self.token_request()
        if self.session_token is None:
            yield self.session_request()

    def handle_login(self, request: HttpRequest, response: HttpResponse) -> None:
        if request.url == self.token_url:
            self._handle_token(response)
        elif request.url == self.login_url:
            self._handle_session(response)
        else:  # pragma: no cover - only our own requests come back here
            raise AuthFailed(f"unexpected login request {request.method} {request.url}")

    def _handle_token(self, response: HttpResponse) -> None:
        if response.status != 200:
            raise _login_error(response, "ThingSpace OAuth token request")
        body = _json(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise AuthFailed("ThingSpace OAuth answered 200 without an access_token")
        try:
            ttl = float(body.get("expires_in") or DEFAULT_TOKEN_TTL_S)
        except (TypeError, ValueError):
            ttl = DEFAULT_TOKEN_TTL_S
        self.access_token = str(token)
        self.access_expires_at = self._token_requested_at + ttl

    def _handle_session(self, response: HttpResponse) -> None:
        if response.status != 200:
            error = _login_error(response, "ThingSpace session login")
            if isinstance(error, BearerRefused):
                self.access_token = None
            raise error
        body = _json(response)
        token = body.get("sessionToken") if isinstance(body, dict) else None
        if not token:
            raise AuthFailed("ThingSpace session login answered 200 without a sessionToken")
        self.session_token = str(token)

    # -- every M2M call ----------------------------------------------------------------------
    def apply(self, request: HttpRequest) -> HttpRequest:
        if self.access_token is None or self.session_token is None:
            raise AuthFailed("ThingSpace: not logged in")
        request.headers["Authorization"] = f"Bearer {self.access_token}"
        request.headers["VZ-M2M-Token"] = self.session_token
        request.headers["Content-Type"] = "application/json"
        request.headers.setdefault("Accept", "application/json")
        return request


def _login_error(response: HttpResponse, what: str) -> ProviderError:
    """A failed login step: retriable (429, 5xx) or AuthFailed (never loop on a refused login)."""
    error = classify_error(response, what)
    if is_lock_error(error.code):
        return LoginLocked(error.message + " (the account is locked: unlock it in ThingSpace)",
                           code=error.code, text=error.text)
    if error.retriable or isinstance(error, AuthFailed):
        return error
    return AuthFailed(error.message, code=error.code, text=error.text)


# --------------------------------------------------------------------------------------------
# Sending


def encode_message(text: str, data_encoding: str) -> tuple[str, EncodedText]:
    """(``smsMessage`` as sent, its encoding and size); InvalidMessage unless it fits one segment."""
    if data_encoding == "7-bit":
        encoded = analyse(text)
        if encoded.encoding is Encoding.UCS2:
            raise InvalidMessage("ThingSpace cannot send UCS-2 text in 7-bit (characters outside GSM-7); "
                                 "use options.thingspace.data_encoding 8-bit-UTF-8", field="text")
        if encoded.units > SINGLE_7BIT:
            raise InvalidMessage(f"text needs {encoded.units} GSM-7 septets; ThingSpace sends one segment "
                                 f"of at most {SINGLE_7BIT}", field="text")
        return text, encoded
    if data_encoding == "8-bit-ASCII":
        try:
            data = text.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidMessage("text is not ASCII; use data_encoding 8-bit-UTF-8", field="text") from None
    elif data_encoding == "8-bit-UTF-8":
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidMessage("text is not encodable as UTF-8", field="text") from None
    elif data_encoding == "8-bit-DATA":
        try:
            data = base64.b64decode(text.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise InvalidMessage("with data_encoding 8-bit-DATA, text must be the payload in base64",
                                 field="text") from None
        if not data:
            raise InvalidMessage("8-bit-DATA payload is empty", field="text")
    else:
        raise InvalidMessage(f"data_encoding {data_encoding!r} is not one of {', '.join(DATA_ENCODINGS)}",
                             field="options.thingspace.data_encoding")
    encoded = analyse_bytes(data)
    if encoded.units > SINGLE_8BIT:
        raise InvalidMessage(f"payload is {encoded.units} bytes; ThingSpace sends one segment of at most "
                             f"{SINGLE_8BIT} bytes in 8-bit", field="text")
    return base64.b64encode(data).decode("ascii"), encoded


def _options(msg: OutboundSms) -> dict[str, Any]:
    opts = msg.options_for("thingspace")
    if not isinstance(opts, Mapping):
        raise InvalidMessage("options.thingspace must be an object", field="options.thingspace")
    unknown = sorted(set(opts) - OPTIONS)
    if unknown:
        raise InvalidMessage(f"unknown ThingSpace option(s) {', '.join(unknown)} (known: "
                             f"{', '.join(sorted(OPTIONS))})", field="options.thingspace")
    selection = msg.recipient.selection
    if selection:
        if any(opts.get(k) is not None for k in SELECTION_OPTIONS):
            raise InvalidMessage("give the device selection in recipient.selection or in "
                                 "options.thingspace, not both", field="recipient.selection")
        return {**opts, **selection}
    return dict(opts)


def _device(kind: str, device_id: str) -> dict[str, str]:
    kind = kind.upper()
    if kind not in DEVICE_KINDS:
        raise InvalidMessage(f"device kind {kind!r} is not one of {', '.join(sorted(DEVICE_KINDS))}",
                             field="recipient.device.kind")
    if kind == "MDN" and not _MDN.match(device_id):
        raise InvalidMessage("an MDN is 10 digits", field="recipient.device.id")
    if not _DEVICE_ID.match(device_id):
        raise InvalidMessage(f"{kind} id must be letters and digits only", field="recipient.device.id")
    return {"kind": kind, "id": device_id}


def _selection(opts: Mapping[str, Any], config: ThingSpaceConfig) -> dict[str, Any]:
    def text(name: str) -> str | None:
        value = opts.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise InvalidMessage(f"options.thingspace.{name} must be a non-empty string",
                                 field=f"options.thingspace.{name}")
        return value

    out: dict[str, Any] = {"accountName": text("account_name") or config.account_name}
    if (group := text("group_name")) is not None:
        out["groupName"] = group
    if (plan := text("service_plan")) is not None:
        out["servicePlan"] = plan
    fields = opts.get("custom_fields")
    if fields is not None:
        where = "options.thingspace.custom_fields"
        if not isinstance(fields, list) or not fields:
            raise InvalidMessage("custom_fields must be a non-empty list of {key, value}", field=where)
        seen: set[str] = set()
        out["customFields"] = []
        for item in fields:
            if not isinstance(item, Mapping) or set(item) != {"key", "value"}:
                raise InvalidMessage("each custom field is {key, value}", field=where)
            key, value = item["key"], item["value"]
            if key not in CUSTOM_FIELD_NAMES:
                raise InvalidMessage(f"custom field key {key!r} is not CustomField1..CustomField5", field=where)
            if key in seen:
                raise InvalidMessage(f"custom field {key} given twice", field=where)
            if not isinstance(value, str) or not value:
                raise InvalidMessage(f"custom field {key} needs a non-empty string value", field=where)
            seen.add(key)
            out["customFields"].append({"key": key, "value": value})
    return out


def send_target(msg: OutboundSms, config: ThingSpaceConfig) -> dict[str, Any]:
    """Who receives: ``{"deviceIds": [...]}`` or a selection (``accountName``, ``groupName``, ...)."""
    return _target(msg, _options(msg), config)


def _target(msg: OutboundSms, opts: Mapping[str, Any], config: ThingSpaceConfig,
            level: str = DEFAULT_LEVEL) -> dict[str, Any]:
    selection = any(opts.get(k) is not None for k in SELECTION_OPTIONS)
    rcpt = msg.recipient
    has_recipient = rcpt.phone is not None or rcpt.device_id is not None
    if selection and has_recipient:
        raise InvalidMessage("give either a recipient (device id or phone) or a selection in "
                             "options.thingspace, not both", field="recipient")
    if selection:
        return _selection(opts, config)
    if rcpt.device_id is not None:
        return {"deviceIds": [_device(rcpt.device_kind or "", rcpt.device_id)]}
    if rcpt.phone is not None:
        mdn = rcpt.number(level).nanp10("ThingSpace reaches US numbers only (+1 and 10 digits)")
        return {"deviceIds": [{"kind": "MDN", "id": mdn}]}
    raise InvalidMessage("no recipient: give a device id, a phone number or a selection "
                         "(options.thingspace.group_name, ...)", field="recipient")


def _describe(target: Mapping[str, Any]) -> str:
    if "deviceIds" in target:
        d = target["deviceIds"][0]
        return f"{d['kind']}:{d['id']}"
    parts = [f"account:{target['accountName']}"]
    if "groupName" in target:
        parts.append(f"group:{target['groupName']}")
    if "servicePlan" in target:
        parts.append(f"plan:{target['servicePlan']}")
    parts += [f"{f['key']}={f['value']}" for f in target.get("customFields", ())]
    return "/".join(parts)


class ThingSpace(Provider):
    name = "thingspace"
    title = "Verizon ThingSpace"
    max_batch = 1
    supports_ucs2 = False
    max_segments = 1
    can_split = False   # one segment per request, no concatenation: longer text is refused
    capabilities = frozenset({Capability.SEND, Capability.CALLBACKS, Capability.MO_QUEUE,
                              Capability.CONNECTION_CHECK})
    Config = ThingSpaceConfig

    # -- callbacks (class level: a callback names no route) -----------------------------------
    callback_path = "/callbacks/thingspace"

    @staticmethod
    def callback_credentials(callbacks: Any) -> tuple[str | None, Secret | None]:
        """The Username / Password registered with ThingSpace (``callbacks.thingspace_*``)."""
        return callbacks.thingspace_username, callbacks.thingspace_password

    @staticmethod
    def read_callback(body: bytes, headers: Mapping[str, str], *, keywords: Keywords,
                      credentials: tuple[str, str | Secret] | None,
                      received_at: float | None = None) -> CallbackEvents:
        return read_callback(body, headers, keywords=keywords, credentials=credentials, received_at=received_at)

    # -- MO: an acknowledged queue (a block stays until a request carries its token) ----------
    def mo_source(self) -> str:
        return f"thingspace-mo:{self.config.account_name}"

    def build_mo_poll(self, token: str | None) -> HttpRequest:
        return build_mo_history(self.config, token)

    def parse_mo_poll(self, response: HttpResponse) -> MoPage:
        return parse_mo_history(response)

    def mo_records(self, messages: Sequence[MoMessage], keywords: Keywords, now: float) -> list[InboundSms]:
        return [mo_inbound(m, keywords, now) for m in messages]

    def build_mo_release(self) -> HttpRequest:
        """Queued MO go to the registered callback instead (``startCallbacks``)."""
        return build_start_callbacks(self.config)

    def parse_mo_release(self, response: HttpResponse) -> bool:
        return parse_start_callbacks(response)

    # -- connection check: the OAuth + M2M login, nothing sent ---------------------------------
    login_summary = "OAuth access token and M2M session token received"
    auth_refused_note = "ThingSpace locks an account after five refused logins: fix it before running check again"
    credential_settings = "{r}client_id / {r}client_secret (OAuth) and {r}username / {r}password (M2M session)"

    def build_check(self) -> HttpRequest | None:
        return None     # logging in is the check

    def __init__(self, config: ThingSpaceConfig, *, clock: Callable[[], float] = time.monotonic,
                 **kw: Any) -> None:
        self._clock = clock
        super().__init__(config, **kw)
        self.auth: ThingSpaceAuth

    def make_auth(self) -> Auth:
        return ThingSpaceAuth(self.config, self._clock)

    def address(self, msg: OutboundSms) -> str:
        return _describe(send_target(msg, self.config))

    def prepare(self, msg: OutboundSms) -> Prepared:
        if not msg.text:
            raise InvalidMessage("text is empty", field="text")
        opts = _options(msg)
        to = _describe(_target(msg, opts, self.config, self.number_check))
        data_encoding = opts.get("data_encoding") or self.config.default_data_encoding
        sms_message, encoded = encode_message(msg.text, data_encoding)
        # ThingSpace has no sender id: the device sees the account's short code.
        return Prepared(msg=msg, to=to, encoded=encoded, parts=(sms_message,), sender=None)

    def build_send(self, batch: Sequence[Prepared]) -> HttpRequest:
        (p,) = batch
        opts = _options(p.msg)
        data_encoding = opts.get("data_encoding") or self.config.default_data_encoding
        body = {**_target(p.msg, opts, self.config), "dataEncoding": data_encoding, "smsMessage": p.parts[0]}
        return HttpRequest("POST", _base(self.config) + SMS_PATH,
                           {"Content-Type": "application/json", "Accept": "application/json"},
                           orjson.dumps(body))

    def parse_send(self, batch: Sequence[Prepared], response: HttpResponse) -> list[SendResult]:
        if 200 <= response.status < 300:
            body = _json(response)
            request_id = body.get("requestId") if isinstance(body, dict) else None
            if not request_id:
                raise InDoubt(f"ThingSpace answered {response.status} without a requestId; "
                              "the message may have been queued")
            return [Accepted(provider_message_id=None, provider_request_id=str(request_id))]
        error = classify_error(response, "ThingSpace send")
        if isinstance(error, AuthFailed):
            self.auth.note_refusal(error)
        raise error


# --------------------------------------------------------------------------------------------
# Mobile-originated queue


@dataclass(frozen=True, slots=True)
class MoMessage:
    """One SMS from a device, as the MO history returns it."""

    device_kind: str | None     # upper-case; the first of the message's deviceIds
    device_id: str | None
    text: str
    timestamp: str | None       # as ThingSpace gives it
    raw: dict[str, Any] = field(compare=False)

    @property
    def dedupe_key(self) -> str:
        """Stable across re-deliveries: the same message always gives the same key."""
        ids = sorted(f"{str(d.get('kind', '')).upper()}:{d.get('id', '')}"
                     for d in self.raw.get("deviceIds") or () if isinstance(d, Mapping))
        basis = "\x1f".join([",".join(ids), self.timestamp or "", self.text])
        return hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class MoPage:
    messages: tuple[MoMessage, ...]
    has_more: bool
    next_token: str | None      # send it with the next request: that acknowledges this page


def mo_inbound(m: MoMessage, keywords: Keywords, now: float) -> InboundSms:
    """The ``InboundSms`` of one MO (the sender is its device)."""
    return InboundSms(provider=ThingSpace.name, sender=Recipient(device_kind=m.device_kind, device_id=m.device_id),
                      text=m.text, received_at=now, raw=orjson.dumps(m.raw).decode(), dedupe_key=m.dedupe_key,
                      keyword=first_word(m.text), occurred_at=m.timestamp, optout=keywords.classify(m.text))


def build_mo_history(config: ThingSpaceConfig, next_token: str | None = None) -> HttpRequest:
    """``GET /m2m/v1/sms/{accountName}/history[?next=TOKEN]``; a token acknowledges its page."""
    url = f"{_base(config)}{SMS_PATH}/{quote(config.account_name, safe='')}/history"
    if next_token:
        url += "?next=" + quote(next_token, safe="")
    return HttpRequest("GET", url, {"Accept": "application/json"})


def parse_mo_history(response: HttpResponse) -> MoPage:
    if response.status not in (200, 202):
        raise classify_error(response, "ThingSpace MO history")
    body = _json(response)
    if not isinstance(body, dict):   # nothing is acknowledged until the next request: retrying is safe
        raise Retriable(f"ThingSpace MO history answered {response.status} with an unreadable body")
    messages = []
    for item in body.get("messages") or ():
        if not isinstance(item, dict):
            continue
        ids = [d for d in item.get("deviceIds") or () if isinstance(d, dict)]
        first = ids[0] if ids else {}
        kind = first.get("kind")
        messages.append(MoMessage(device_kind=str(kind).upper() if kind is not None else None,
                                  device_id=_str(first.get("id")), text=str(item.get("message") or ""),
                                  timestamp=_str(item.get("timestamp")), raw=item))
    next_token = None
    location = response.header("Location")
    if location:
        values = parse_qs(urlsplit(location).query).get("next")
        next_token = values[0] if values else None
    has_more = response.status == 202 or bool(body.get("hasMoreData"))
    return MoPage(tuple(messages), has_more, next_token)


def build_start_callbacks(config: ThingSpaceConfig) -> HttpRequest:
    """``PUT /m2m/v1/sms/{accountName}/startCallbacks``: push queued MO to the registered callback."""
    url = f"{_base(config)}{SMS_PATH}/{quote(config.account_name, safe='')}/startCallbacks"
    return HttpRequest("PUT", url, {"Accept": "application/json"})


def parse_start_callbacks(response: HttpResponse) -> bool:
    if response.status != 200:
        raise classify_error(response, "ThingSpace startCallbacks")
    body = _json(response)
    success = body.get("success") if isinstance(body, dict) else None
    if success is True or str(success).lower() == "true":
        return True
    raise ProviderError(f"ThingSpace startCallbacks answered 200 without success: true ({success!r})")


# --------------------------------------------------------------------------------------------
# Callback registration


@dataclass(frozen=True, slots=True)
class CallbackRegistration:
    account_name: str | None
    name: str | None            # the callback service, e.g. EnhancedConnectivityService
    url: str | None = None


def _callbacks_url(config: ThingSpaceConfig) -> str:
    return f"{_base(config)}{CALLBACKS_PATH}/{quote(config.account_name, safe='')}"


def build_register_callback(config: ThingSpaceConfig, service_name: str, url: str,
                            username: str | None = None, password: str | Secret | None = None) -> HttpRequest:
    """``POST /m2m/v1/callbacks/{accountName}``; username/password come back in every callback."""
    body: dict[str, str] = {"name": service_name, "url": url}
    if username:
        body["username"] = username
    if password:
        body["password"] = password.value if isinstance(password, Secret) else password
    return HttpRequest("POST", _callbacks_url(config), {"Accept": "application/json"}, orjson.dumps(body))


def build_list_callbacks(config: ThingSpaceConfig) -> HttpRequest:
    return HttpRequest("GET", _callbacks_url(config), {"Accept": "application/json"})


def build_delete_callback(config: ThingSpaceConfig, service_name: str) -> HttpRequest:
    url = f"{_callbacks_url(config)}/name/{quote(service_name, safe='')}"
    return HttpRequest("DELETE", url, {"Accept": "application/json"})


def _registration(item: Mapping[str, Any]) -> CallbackRegistration:
    return CallbackRegistration(_str(item.get("accountName")), _str(item.get("name") or item.get("serviceName")),
                                _str(item.get("url")))


def _ok_object(response: HttpResponse, what: str) -> Any:
    if not 200 <= response.status < 300:
        raise classify_error(response, what)
    return _json(response)


def parse_register_callback(response: HttpResponse) -> CallbackRegistration:
    body = _ok_object(response, "ThingSpace callback registration")
    return _registration(body if isinstance(body, dict) else {})


def parse_list_callbacks(response: HttpResponse) -> list[CallbackRegistration]:
    body = _ok_object(response, "ThingSpace callback list")
    if isinstance(body, dict):  # tolerate a wrapped list
        body = body.get("callbacks") or body.get("items") or []
    return [_registration(item) for item in body or () if isinstance(item, dict)]


def parse_delete_callback(response: HttpResponse) -> CallbackRegistration:
    body = _ok_object(response, "ThingSpace callback deletion")
    return _registration(body if isinstance(body, dict) else {})


# --------------------------------------------------------------------------------------------
# Received callbacks


CONFIRMATIONS = {"delivered": "Delivered", "undeliverable": "Undeliverable",
                 "unceliverable": "Undeliverable", "expired": "Expired"}


@dataclass(frozen=True, slots=True)
class ThingSpaceCallback:
    """One callback ThingSpace POSTed to us (SOAP ``CallbackRequest`` or its JSON form)."""

    request_id: str | None
    device_kind: str | None
    device_id: str | None
    comment: str | None = None
    confirmation: str | None = None         # Delivered / Undeliverable / Expired
    num_devices_requested: int | None = None
    callback_count: int | None = None
    max_callback_threshold: int | None = None
    fault: str | None = None
    message: str | None = None              # MO text, when the callback carries one
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def kind(self) -> str:
        """``delivery`` (SMSDeliveryConfirmation), ``completed`` (request done) or ``device``."""
        if self.confirmation is not None:
            return "delivery"
        if self.num_devices_requested is not None:
            return "completed"
        return "device"


def callback_credentials_match(cb: ThingSpaceCallback, username: str | None,
                               password: str | Secret | None) -> bool:
    """Whether a callback carries the username/password registered with it (constant time)."""
    want_pw = password.value if isinstance(password, Secret) else password
    user_ok = hmac.compare_digest((cb.username or "").encode(), (username or "").encode())
    password_ok = hmac.compare_digest((cb.password or "").encode(), (want_pw or "").encode())
    return user_ok and password_ok



class _Tolerant:
    """A TreeBuilder target that can close elements a truncated document left open."""

    def __init__(self) -> None:
        self.builder = TreeBuilder()
        self.open: list[str] = []

    def start(self, tag: str, attrib: dict[str, str]) -> Element:
        self.open.append(tag)
        return self.builder.start(tag, attrib)

    def end(self, tag: str) -> Element:
        self.open.pop()
        return self.builder.end(tag)

    def data(self, data: str) -> None:
        self.builder.data(data)

    def close(self) -> Element:
        while self.open:
            self.end(self.open[-1])
        return self.builder.close()


# An XML declaration's encoding: documents in these encodings show a DTD as the ASCII bytes "<!".
_DECLARED_ENCODING = re.compile(rb'^(?:\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*["\']([A-Za-z0-9._-]+)["\']')
_ASCII_COMPATIBLE = frozenset({b"utf-8", b"utf8", b"us-ascii", b"ascii", b"iso-8859-1", b"latin-1", b"latin1"})


def _cannot_hold_a_dtd(body: bytes) -> bool:
    """True when ``body`` is in an ASCII-compatible encoding and has no ``<!`` anywhere: then it
    has no DTD, so no entity can be declared (no entity expansion, no external entities) and the
    C parser is as safe as defusedxml's. UTF-16/32 or other declared encodings take the
    defusedxml path."""
    if b"<!" in body or b"\x00" in body[:4] or body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return False
    declared = _DECLARED_ENCODING.match(body)
    return declared is None or declared.group(1).lower() in _ASCII_COMPATIBLE


def _parse_xml(body: bytes) -> Element:
    if _cannot_hold_a_dtd(body):
        # Fast path (the C parser and tree builder, ~4x faster): ordinary callbacks.
        parser = XMLParser()
        try:
            parser.feed(body)
            return parser.close()
        except ParseError:
            pass   # the tolerant parser below decides (a truncated document may still be read)
    target = _Tolerant()
    parser = SafeET.DefusedXMLParser(target=target, forbid_dtd=True)
    try:
        parser.feed(body)
        return parser.close()
    except DefusedXmlException as exc:
        raise InvalidRecord(f"callback XML refused: {type(exc).__name__}") from None
    except ParseError as exc:
        if target.open and "CallbackRequest" not in {local_name(t) for t in target.open}:
            return target.close()   # truncated after CallbackRequest was complete
        raise InvalidRecord(f"callback is not well-formed XML: {exc}") from None


_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


def _text(el: Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _confirmation(value: str | None) -> str | None:
    return None if value is None else CONFIRMATIONS.get(value.strip().lower(), value.strip())


def _children(el: Element | None) -> dict[str, Element]:
    """Local name -> the first child of that name that is not xsi:nil, for every child at once:
    the callback reads a dozen names of the same element."""
    found: dict[str, Element] = {}
    if el is not None:
        for c in el:
            name = local_name(c.tag)
            if name not in found and c.get(_NIL) != "true":
                found[name] = c
    return found


def _from_soap(body: bytes) -> ThingSpaceCallback:
    root = _parse_xml(body)
    req = next((el for el in root.iter() if local_name(el.tag) == "CallbackRequest"), None)
    if req is None:
        raise InvalidRecord("callback XML has no CallbackRequest")
    r = _children(req)
    device = _children(r.get("Device"))
    data = r.get("Data")
    inner_el = _children(data).get("Data")
    inner = _children(inner_el if inner_el is not None else data)
    delivery = _children(inner.get("SMSDelivery"))
    fault = _children(inner.get("Fault") if inner.get("Fault") is not None else delivery.get("Fault"))
    return ThingSpaceCallback(
        request_id=_text(r.get("RequestId")),
        device_kind=(_text(device.get("Kind")) or "").upper() or None,
        device_id=_text(device.get("Identifier")),
        comment=_text(inner.get("Comment")),
        confirmation=_confirmation(_text(delivery.get("Confirmation"))),
        num_devices_requested=_int(_text(_children(inner.get("Summary")).get("NumDevicesRequested"))),
        callback_count=_int(_text(inner.get("CallbackCount"))),
        max_callback_threshold=_int(_text(inner.get("MaxCallbackThreshold"))),
        fault=_text(fault.get("faultstring")) or _text(fault.get("faultcode")),
        message=_text(inner.get("SMSMessage")) or _text(inner.get("Message")),
        username=_text(r.get("Username")),
        password=_text(r.get("Password")),
        raw=body,
    )


def _get(obj: Any, *names: str) -> Any:
    """The first present key among ``names`` (camelCase assumption, case-insensitive)."""
    if not isinstance(obj, Mapping):
        return None
    lowered = {str(k).lower(): v for k, v in obj.items()}
    for name in names:
        if name.lower() in lowered and lowered[name.lower()] is not None:
            return lowered[name.lower()]
    return None


def _from_json(body: bytes) -> ThingSpaceCallback:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"callback is not valid JSON: {exc}") from None
    doc = _get(doc, "callbackRequest") or doc
    if not isinstance(doc, Mapping):
        raise InvalidRecord("callback JSON is not an object")
    data = _get(doc, "data") or doc
    data = _get(data, "data") or data
    device = _get(doc, "device")
    if device is None:
        ids = _get(doc, "deviceIds")
        device = ids[0] if isinstance(ids, list) and ids else None
    delivery = _get(data, "smsDelivery")
    fault = _get(data, "fault") or _get(delivery, "fault")
    kind = _get(device, "kind")
    return ThingSpaceCallback(
        request_id=_str(_get(doc, "requestId")),
        device_kind=str(kind).upper() if kind is not None else None,
        device_id=_str(_get(device, "identifier", "id")),
        comment=_str(_get(data, "comment")),
        confirmation=_confirmation(_str(_get(delivery, "confirmation"))),
        num_devices_requested=_int(_get(_get(data, "summary"), "numDevicesRequested")),
        callback_count=_int(_get(data, "callbackCount")),
        max_callback_threshold=_int(_get(data, "maxCallbackThreshold")),
        fault=_str(_get(fault, "faultstring", "faultString", "message")) if isinstance(fault, Mapping) else _str(fault),
        message=_str(_get(data, "smsMessage", "message")),
        username=_str(_get(doc, "username")),
        password=_str(_get(doc, "password")),
        raw=body,
    )


_BOM = b"\xef\xbb\xbf"


def callback_format(body: bytes, content_type: str = "") -> str | None:
    """``xml`` or ``json``, by the body's content (its first byte after whitespace and a BOM),
    whatever the Content-Type says; the Content-Type only decides an empty or odd body."""
    head = body.lstrip().removeprefix(_BOM).lstrip()[:1]
    if head == b"<":
        return "xml"
    if head in (b"{", b"["):
        return "json"
    ctype = content_type.lower()
    return "xml" if "xml" in ctype else "json" if "json" in ctype else None


def parse_callback(body: bytes, content_type: str = "") -> ThingSpaceCallback:
    """A received callback, SOAP XML or JSON (``callback_format``).

    XML is parsed with defusedxml (no DTD, no entity expansion); raises ``InvalidRecord`` when
    the body cannot be read. Whitespace (or a BOM) before the XML declaration is tolerated: XML
    forbids it, senders add it, and refusing makes ThingSpace resend the callback forever."""
    return _parse_callback(body, content_type, callback_format(body, content_type))


def _parse_callback(body: bytes, content_type: str, fmt: str | None) -> ThingSpaceCallback:
    if fmt == "xml":
        return _from_soap(body.lstrip().removeprefix(_BOM).lstrip())
    if fmt == "json":
        return _from_json(body)
    raise InvalidRecord(f"callback body is neither XML nor JSON (content type {content_type!r})")


# --------------------------------------------------------------------------------------------
# Received callbacks as records (the ``Capability.CALLBACKS`` entry point)
#
# State mapping (``DeliveryReceipt.kind`` / ``state``):
# - ``SMSDelivery/Confirmation`` -> ``delivery-confirmation``; ``Delivered`` -> ``delivered``,
#   ``Undeliverable`` (also the seed's ``Unceliverable``) -> ``undeliverable``, ``Expired`` ->
#   ``expired``; any other value -> ``in-flight`` (an unknown status is never a failure).
# - ``Summary/NumDevicesRequested`` present (or no device and a comment saying "Request Completed")
#   -> ``request-complete`` / ``completed``.
# - Otherwise a per-device ``progress`` callback -> ``in-flight``, or ``undeliverable`` when the
#   callback carries a SOAP ``Fault`` or its comment says so in words (``FAILED_COMMENT``): seed
#   000 shows only the success comment ``SendSmsMessage,Performed action on device.``.

CALLBACK_PATH = ThingSpace.callback_path
MAX_REQUEST_ID = 256

# A progress comment that clearly says the send to the device failed.
FAILED_COMMENT = re.compile(
    r"\b(fail|failed|failure|error|unable|could\s*not|cannot|not\s+performed|rejected|denied)\b", re.I)
_COMPLETED_COMMENT = re.compile(r"\brequest\s+complete", re.I)
_RECEIPT_STATES = {"Delivered": "delivered", "Undeliverable": "undeliverable", "Expired": "expired"}

# The password's value in either wire form: <Password>…</Password> (any prefix, CDATA, comments)
# and "password": "…" (any case, any depth).
_XML_PASSWORD = re.compile(
    r"(<(?:[\w.-]+:)?Password(?:\s[^>]*)?>)((?:<!\[CDATA\[.*?\]\]>|<!--.*?-->|[^<])*)(</(?:[\w.-]+:)?Password\s*>)",
    re.S)
_JSON_PASSWORD = re.compile(r'("password"\s*:\s*)"(?:[^"\\]|\\.)*"', re.I)
REDACTED = "***"


def redact_password(text: str, password: str | None = None) -> str:
    """``text`` with every password value replaced by ``***``. ``password`` (the value the body
    carried) is also removed literally wherever it is left, in its plain, XML- and JSON-escaped
    forms: a secret must never reach a record, even if that mangles the raw text."""
    text = _XML_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)
    text = _JSON_PASSWORD.sub(lambda m: m.group(1) + '"' + REDACTED + '"', text)
    if password:
        for form in {password, html.escape(password, quote=False), html.escape(password),
                     orjson.dumps(password).decode()[1:-1]}:
            if form:
                text = text.replace(form, REDACTED)
    return text


def _receipt_kind_state(cb: ThingSpaceCallback) -> tuple[str, str, str | None]:
    """(kind, state, provider_status) of a callback that carries no MO text."""
    if cb.confirmation is not None:
        return "delivery-confirmation", _RECEIPT_STATES.get(cb.confirmation, "in-flight"), cb.confirmation
    if cb.kind == "completed" or (cb.device_id is None and cb.comment and _COMPLETED_COMMENT.search(cb.comment)):
        return "request-complete", "completed", cb.comment or cb.fault
    failed = cb.fault is not None or bool(cb.comment and FAILED_COMMENT.search(cb.comment))
    return "progress", "undeliverable" if failed else "in-flight", cb.comment or cb.fault


def receipt_from_callback(cb: ThingSpaceCallback, raw: str, raw_format: str,
                          received_at: float | None = None) -> DeliveryReceipt:
    """The ``sms.receipts`` record of one callback; ``raw`` must already be redacted."""
    if not cb.request_id:
        raise InvalidRecord("callback has no RequestId")
    if len(cb.request_id) > MAX_REQUEST_ID or not cb.request_id.isprintable():
        raise InvalidRecord("callback RequestId is not a request id")
    kind, state, status = _receipt_kind_state(cb)
    return DeliveryReceipt(
        provider=ThingSpace.name, correlation_key=correlation_key(ThingSpace.name, cb.request_id), kind=kind,
        state=state, received_at=time.time() if received_at is None else received_at, raw=raw,
        raw_format=raw_format, provider_request_id=cb.request_id,
        device_kind=cb.device_kind if cb.device_id else None,
        device_id=cb.device_id, provider_status=status, occurred_at=None)


def mo_from_callback(cb: ThingSpaceCallback, raw: str, keywords: Keywords,
                     received_at: float | None = None) -> InboundSms:
    """The ``sms.inbound`` record of a callback carrying an MO text; ``raw`` must be redacted.
    The dedupe key hashes ``KIND:id``, the timestamp and the text exactly as ``MoMessage.dedupe_key``
    does, so an MO seen by both the poller and a callback has one key (callbacks carry no
    timestamp, so the callback's ``requestId`` goes into the event id, not into the key)."""
    if not cb.device_id or not cb.device_kind:
        raise InvalidRecord("MO callback has no device")
    text = cb.message or ""
    occurred_at = None      # not in ThingSpace callbacks
    return InboundSms(
        provider=ThingSpace.name, sender=Recipient(device_kind=cb.device_kind, device_id=cb.device_id), text=text,
        received_at=time.time() if received_at is None else received_at, raw=raw,
        # == MoMessage.dedupe_key for a message from one device: poller and callback agree.
        dedupe_key=stable_id(f"{cb.device_kind}:{cb.device_id}", occurred_at, text),
        keyword=first_word(text), occurred_at=occurred_at, optout=keywords.classify(text))


_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([^\";]+)\"?", re.I)


def _header(headers: Mapping[str, str], name: str) -> str:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return ""


def _decode(body: bytes, content_type: str) -> str:
    m = _CHARSET.search(content_type)
    charset = m.group(1).strip() if m else None
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def read_callback(body: bytes, headers: Mapping[str, str], *, keywords: Keywords,
                  credentials: tuple[str, str | Secret] | None,
                  received_at: float | None = None) -> CallbackEvents:
    """One received callback body -> its records. Raises ``InvalidCallback`` when the body
    cannot be read (or turned into a record) and ``UnauthorizedCallback`` when its
    Username/Password differ from ``credentials`` (None: not configured, every body refused)."""
    content_type = _header(headers, "Content-Type")
    fmt = callback_format(body, content_type)
    try:
        cb = _parse_callback(body, content_type, fmt)
    except (InvalidRecord, DefusedXmlException, ParseError, ValueError, RecursionError) as exc:
        raise InvalidCallback(exc.message if isinstance(exc, InvalidRecord)
                              else f"unreadable callback ({type(exc).__name__})") from None
    kind = "mo" if cb.message is not None else _receipt_kind_state(cb)[0]
    if credentials is None or not callback_credentials_match(cb, *credentials):
        raise UnauthorizedCallback(kind)
    raw = redact_password(_decode(body, content_type), cb.password)
    try:
        if cb.message is not None:
            mo = mo_from_callback(cb, raw, keywords, received_at)
            event = CallbackEvent(mo, "mo:" + stable_id(mo.dedupe_key, cb.request_id))
        else:
            receipt = receipt_from_callback(cb, raw, fmt or "json", received_at)
            event = CallbackEvent(receipt, "receipt:" + receipt.event_id)
    except InvalidRecord as exc:
        raise InvalidCallback(exc.message, kind) from None
    return CallbackEvents(kind, (event,))
