"""A faithful simulator of Verizon ThingSpace's M2M SMS API (seeds 000 and 002, PROVIDERS.md §1).

Every route sits under ``/api``, so a route's ``base_url`` is ``http://HOST:PORT/api``. It checks
what the real service checks, in the same order: the gateway's OAuth bearer (401 ``fault``
900901/900902), then the ``VZ-M2M-Token`` session (400 ``...SessionToken.Expired`` after
``session_idle_s`` without use, ``Invalid``/``Missing`` otherwise), then the request. Logins
follow the real rules: the OAuth endpoint checks HTTP Basic client credentials; five
consecutive failed session logins lock the account (further logins fail with a lock code, even
with the right password, until ``POST /_sim/reset`` or ``POST /_sim/thingspace/unlock``).

``POST /m2m/v1/sms`` takes either ``deviceIds`` (kinds compared case-insensitively, ids checked
per kind) or a selection (``accountName`` / ``groupName`` plus ``servicePlan`` /
``customFields``), never both; ``dataEncoding`` one of the four values; ``smsMessage`` one
segment (160 GSM-7 characters, or 140 bytes after base64-decoding in 8-bit). A device id ending
in ``0666`` (or the ``reject_rate`` fault) gets a 400 ``DeviceNotFound``. Each accepted send is
recorded (``sent``, ``stats.sends_by_id`` keyed by ``KIND:id|text``) and answered
``{requestId}``.

MO queue per account: ``POST /_sim/thingspace/mo`` enqueues (JSON list of ``{device: {kind, id},
text, timestamp?}``; ``?account=`` defaults to the simulator's account). ``GET .../history``
returns up to ``mo_page_size`` messages; when more remain it answers 202 with ``hasMoreData: true``
and ``Location: .../history?next=TOKEN``. A block stays queued until acknowledged: a request
carrying its token acknowledges it (and gets the next block); a request without the token gets the
same unacknowledged block again; the last block (200, no token) is acknowledged by the next poll.
Re-sending the token just used (a retried request whose answer was lost) gets the current block
again; any other token is a 400.

Callback registration (``POST``/``GET``/``DELETE /m2m/v1/callbacks/{account}``) is kept in memory.
With ``deliver_callbacks=True``, each accepted send is followed by the SOAP callbacks of seed 000
POSTed to the registered URLs (per-device and "Request Completed Processing" for
``EnhancedConnectivityService``, ``Delivered`` for ``SMSDeliveryConfirmation``), with the registered
username/password in the body, resent every ``callback_retry_s`` until a 2xx, at most
``max_callback_threshold`` times (``CallbackCount`` counts up). ``startCallbacks`` answers
``{success: true}`` and records the account; it does not push queued MO messages.

Error codes not given by the documents (assumptions, matched by the adapter on their parts):
``...Login.InvalidCredentials``, ``...Login.AccountLocked``, ``...SessionToken.Invalid`` /
``.Missing``, ``...DeviceNotFound``, ``...INPUT_INVALID.<Field>.<Problem>``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import aiohttp
import orjson
from aiohttp import web

from connector.encoding import Encoding, detect, gsm7_septets
from connector.devtools.simulators.base import Simulator

BASE = "/api"
SERVICE = "UnifiedWebService"
LOGIN_FAILED = f"{SERVICE}.REQUEST_FAILED.Login.InvalidCredentials"
ACCOUNT_LOCKED = f"{SERVICE}.REQUEST_FAILED.Login.AccountLocked"
SESSION_EXPIRED = f"{SERVICE}.REQUEST_FAILED.SessionToken.Expired"
SESSION_INVALID = f"{SERVICE}.REQUEST_FAILED.SessionToken.Invalid"
SESSION_MISSING = f"{SERVICE}.INPUT_INVALID.SessionToken.Missing"
ACCOUNT_NOT_FOUND = f"{SERVICE}.REQUEST_FAILED.AccountNotFound"
DEVICE_NOT_FOUND = f"{SERVICE}.REQUEST_FAILED.DeviceNotFound"
CUSTOM_FIELD_INVALID = "DeviceService.INPUT_INVALID.CustomField.InvalidName"
CALLBACK_NOT_FOUND = f"{SERVICE}.REQUEST_FAILED.CallbackNotFound"


def invalid(field: str, problem: str) -> str:
    return f"{SERVICE}.INPUT_INVALID.{field}.{problem}"


DATA_ENCODINGS = frozenset({"7-bit", "8-bit-ASCII", "8-bit-UTF-8", "8-bit-DATA"})
CUSTOM_FIELDS = frozenset(f"CustomField{i}" for i in range(1, 6))
CALLBACK_SERVICES = frozenset({
    "EnhancedConnectivityService", "SMSDeliveryConfirmation", "CarrierService", "DeviceUsage",
    "DevicePRLInformation", "DeviceProvisioningHistory", "DeviceSuspensionStatus",
    "ExternalProvisioningChanges", "PromoChanges",
})
DEVICE_ID_FORMATS = {
    "MDN": re.compile(r"^[0-9]{10}$"),
    "MSISDN": re.compile(r"^[0-9]{10,15}$"),
    "IMEI": re.compile(r"^[0-9]{14,16}$"),
    "IMSI": re.compile(r"^[0-9]{6,15}$"),
    "ICCID": re.compile(r"^[0-9]{18,22}F?$", re.I),
    "MEID": re.compile(r"^([0-9A-F]{14}|[0-9]{18})$", re.I),
    "ESN": re.compile(r"^([0-9A-F]{8}|[0-9]{11})$", re.I),
    "EID": re.compile(r"^[0-9]{32}$"),
}
SOAP_CALLBACK = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"> <s:Body '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"> '
    '<CallbackRequest xmlns="http://nphase.com/unifiedwebservice/v2"> {username} {password} '
    '<RequestId>{request_id}</RequestId> {device}<Data> <Data> <CarrierService xsi:nil="true"/> '
    '<ExternalProvisioningChange xsi:nil="true"/> <PromoChange xsi:nil="true"/> {delivery} '
    '<PRLInformation xsi:nil="true"/> <GoToState xsi:nil="true"/> <Fault xsi:nil="true"/> {comment} '
    '{summary} <Status xsi:nil="true"/> <CallbackCount>{count}</CallbackCount> '
    '<MaxCallbackThreshold>{threshold}</MaxCallbackThreshold> </Data> </Data> </CallbackRequest> '
    '</s:Body> </s:Envelope>'
)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _element(name: str, value: str | None) -> str:
    return f"<{name}>{escape(value)}</{name}>" if value else f"<{name}/>"


class ThingSpaceSimulator(Simulator):
    name = "thingspace"
    base_path: ClassVar[str] = BASE   # a route's base_url is the server's URL + this

    def __init__(self, *args: Any, session_idle_s: float = 1200.0, token_ttl_s: float = 3600.0,
                 lock_after: int = 5, mo_page_size: int = 100, deliver_callbacks: bool = False,
                 callback_retry_s: float = 1.0, max_callback_threshold: int = 4,
                 clock: Callable[[], float] = time.monotonic, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.session_idle_s = session_idle_s
        self.token_ttl_s = token_ttl_s
        self.lock_after = lock_after
        self.mo_page_size = mo_page_size
        self.deliver_callbacks = deliver_callbacks
        self.callback_retry_s = callback_retry_s
        self.max_callback_threshold = max_callback_threshold
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: aiohttp.ClientSession | None = None
        self.clear()

    def clear(self) -> None:
        """Forget every token, session, lock, send, queued MO message and callback."""
        self.access_tokens: dict[str, float] = {}        # token -> expiry (clock)
        self.sessions: dict[str, float] = {}             # token -> last use (clock)
        self.failed_logins = 0
        self.locked = False
        self.logins = 0
        self.sent: list[dict[str, Any]] = []
        self.mo_pending: dict[str, deque[dict[str, Any]]] = {}
        # account -> (token or None for the last page, block, has_more)
        self.mo_outstanding: dict[str, tuple[str | None, list[dict[str, Any]], bool]] = {}
        self.mo_last_acked: dict[str, str] = {}
        self.callbacks: dict[str, dict[str, dict[str, str | None]]] = {}
        self.callbacks_started: set[str] = set()
        self.callback_log: list[dict[str, Any]] = []

    @classmethod
    def default_credentials(cls) -> dict[str, str]:
        return {"client_id": "sim-ts-key", "client_secret": "sim-ts-secret", "username": "sim-ts-user",
                "password": "sim-ts-pass", "account_name": "0000123456-00001"}

    @property
    def account(self) -> str:
        return self.credentials["account_name"]

    def routes(self) -> list[web.RouteDef]:
        m2m = f"{BASE}/m2m/v1"
        return [
            web.post(f"{BASE}/ts/v1/oauth2/token", self.oauth_token),
            web.post(f"{m2m}/session/login", self.session_login),
            web.post(f"{m2m}/sms", self.send_sms),
            web.get(m2m + "/sms/{account}/history", self.mo_history),
            web.put(m2m + "/sms/{account}/startCallbacks", self.start_callbacks),
            web.post(m2m + "/callbacks/{account}", self.register_callback),
            web.get(m2m + "/callbacks/{account}", self.list_callbacks),
            web.delete(m2m + "/callbacks/{account}/name/{service}", self.delete_callback),
            web.post("/_sim/thingspace/mo", self.enqueue_mo),
            web.get("/_sim/thingspace/sent", self.list_sent),
            web.post("/_sim/thingspace/unlock", self.unlock),
        ]

    def app(self) -> web.Application:
        app = super().app()
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _reset(self, request: web.Request) -> web.Response:
        self.clear()
        return await super()._reset(request)

    # -- answers -----------------------------------------------------------------------------
    @staticmethod
    def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                            headers=headers)

    def _error(self, code: str, message: str, status: int = 400) -> web.Response:
        return self._json({"errorCode": code, "errorMessage": message}, status)

    def _fault(self, code: str, message: str, description: str, status: int = 401) -> web.Response:
        return self._json({"fault": {"code": code, "message": message, "description": description}}, status)

    def throttled_response(self, retry_after_s: float) -> web.Response:
        return self._json({"fault": {"code": "900800", "message": "Message throttled out",
                                     "description": "You have exceeded your quota"}}, 429,
                          {"Retry-After": str(int(max(retry_after_s, 0)))})

    def server_error_response(self) -> web.Response:
        return self._json({"fault": {"code": "101503", "message": "Runtime Error",
                                     "description": "Error connecting to the back end (simulated)"}}, 503)

    # -- checks ------------------------------------------------------------------------------
    def _check_bearer(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return self._fault("900902", "Missing Credentials",
                               "Required OAuth credentials not provided. Make sure your API invocation "
                               "call has a header: \"Authorization: Bearer ACCESS_TOKEN\"")
        expires = self.access_tokens.get(header[7:].strip())
        if expires is None or self.clock() >= expires:
            return self._fault("900901", "Invalid Credentials",
                               f"Access failure for API: {request.path}, version: v1. "
                               "Make sure you have given the correct access token")
        return None

    def _check_session(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("VZ-M2M-Token")
        if not token:
            return self._error(SESSION_MISSING, "The VZ-M2M-Token header is required.")
        last = self.sessions.get(token)
        if last is None:
            return self._error(SESSION_INVALID, "Session token is invalid.")
        now = self.clock()
        if now - last > self.session_idle_s:
            del self.sessions[token]
            return self._error(SESSION_EXPIRED, "Session token is expired.")
        self.sessions[token] = now
        return None

    async def _m2m(self, request: web.Request, account: str | None = None) -> web.Response | None:
        """Fault injection, then both tokens, then the account in the path."""
        fault = await self.transient_fault()
        if fault is not None:
            return fault
        refused = self._check_bearer(request)
        if refused is None:
            refused = self._check_session(request)
        if refused is not None:
            return refused
        if account is not None and account != self.account:
            return self._error(ACCOUNT_NOT_FOUND, f"Account {account} not found.")
        return None

    async def _json_body(self, request: web.Request) -> tuple[Any, web.Response | None]:
        if request.content_type != "application/json":
            return None, self._error(invalid("ContentType", "Invalid"), "Content-Type must be application/json.")
        try:
            return orjson.loads(await request.read()), None
        except orjson.JSONDecodeError:
            return None, self._error(invalid("Body", "Invalid"), "The request body is not valid JSON.")

    async def _json_object(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        """The JSON body as an object, or the error to answer."""
        body, bad = await self._json_body(request)
        if bad is None and not isinstance(body, dict):
            bad = self._error(invalid("Body", "Invalid"), "The request body must be an object.")
        return (body if isinstance(body, dict) else {}), bad

    # -- auth --------------------------------------------------------------------------------
    async def oauth_token(self, request: web.Request) -> web.Response:
        fault = await self.transient_fault()
        if fault is not None:
            return fault
        header = request.headers.get("Authorization", "")
        key = secret = ""
        if header.startswith("Basic "):
            try:
                key, _, secret = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                pass
        if (key, secret) != (self.credentials["client_id"], self.credentials["client_secret"]):
            return self._json({"error": "invalid_client",
                               "error_description": "Client Authentication failed."}, 401)
        form = parse_qs((await request.read()).decode("utf-8", "replace"))
        grant = form.get("grant_type", [""])[0]
        if not grant:
            return self._json({"error": "invalid_request",
                               "error_description": "Missing grant_type parameter value"}, 400)
        if grant != "client_credentials":
            return self._json({"error": "unsupported_grant_type",
                               "error_description": "Unsupported grant_type value"}, 400)
        token = str(uuid.uuid4())
        self.access_tokens[token] = self.clock() + self.token_ttl_s
        return self._json({"access_token": token, "token_type": "Bearer",
                           "expires_in": int(self.token_ttl_s), "scope": "default"})

    async def session_login(self, request: web.Request) -> web.Response:
        fault = await self.transient_fault()
        if fault is not None:
            return fault
        refused = self._check_bearer(request)
        if refused is not None:
            return refused
        body, bad = await self._json_object(request)
        if bad is not None:
            return bad
        self.logins += 1
        if self.locked:
            return self._error(ACCOUNT_LOCKED, "The account is locked after too many failed logins.")
        if body.get("username") != self.credentials["username"] or \
                body.get("password") != self.credentials["password"]:
            if body.get("username") == self.credentials["username"]:
                self.failed_logins += 1
                self.locked = self.failed_logins >= self.lock_after
            return self._error(LOGIN_FAILED, "Invalid username or password.")
        self.failed_logins = 0
        token = str(uuid.uuid4())
        self.sessions[token] = self.clock()
        return self._json({"sessionToken": token})

    # -- send --------------------------------------------------------------------------------
    def _check_devices(self, devices: Any) -> tuple[list[dict[str, str]], web.Response | None]:
        if not isinstance(devices, list) or not devices:
            return [], self._error(invalid("DeviceIds", "Invalid"), "deviceIds must be a non-empty list.")
        out = []
        for d in devices:
            if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or not isinstance(d.get("id"), str):
                return [], self._error(invalid("DeviceIds", "Invalid"), "Each device is {kind, id}.")
            kind = d["kind"].upper()
            if kind not in DEVICE_ID_FORMATS:
                return [], self._error(invalid("DeviceIdentifier.Kind", "Invalid"),
                                       f"Device kind {d['kind']} is not valid.")
            if not DEVICE_ID_FORMATS[kind].match(d["id"]):
                return [], self._error(invalid("DeviceIdentifier.Id", "Invalid"),
                                       f"{kind} {d['id']} is not a valid identifier.")
            out.append({"kind": kind, "id": d["id"]})
        return out, None

    def _check_selection(self, body: dict[str, Any]) -> web.Response | None:
        account, group = body.get("accountName"), body.get("groupName")
        if account is None and group is None:
            return self._error(invalid("AccountName", "Required"),
                               "Give deviceIds, or an accountName or groupName.")
        for name in ("accountName", "groupName", "servicePlan"):
            if name in body and (not isinstance(body[name], str) or not body[name]):
                return self._error(invalid(name[0].upper() + name[1:], "Invalid"), f"{name} must be a string.")
        if account is not None and account != self.account:
            return self._error(ACCOUNT_NOT_FOUND, f"Account {account} not found.")
        fields = body.get("customFields")
        if fields is not None:
            if not isinstance(fields, list) or not fields:
                return self._error(invalid("CustomFields", "Invalid"), "customFields must be a list.")
            for f in fields:
                if not isinstance(f, dict) or f.get("key") not in CUSTOM_FIELDS:
                    return self._error(CUSTOM_FIELD_INVALID,
                                       "Custom field name must be CustomField1 to CustomField5.")
                if not isinstance(f.get("value"), str):
                    return self._error(invalid("CustomField.Value", "Invalid"), "Custom field value is required.")
        return None

    def _check_message(self, encoding: Any, message: Any) -> web.Response | None:
        if encoding not in DATA_ENCODINGS:
            return self._error(invalid("DataEncoding", "Invalid"), f"dataEncoding {encoding!r} is not valid.")
        if not isinstance(message, str) or not message:
            return self._error(invalid("SmsMessage", "Required"), "smsMessage is required.")
        if encoding == "7-bit":
            if detect(message) is not Encoding.GSM7:
                return self._error(invalid("SmsMessage", "InvalidCharacters"),
                                   "smsMessage has characters outside the 7-bit alphabet.")
            if gsm7_septets(message) > 160:
                return self._error(invalid("SmsMessage", "TooLong"), "smsMessage exceeds 160 characters.")
            return None
        try:
            data = base64.b64decode(message.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            return self._error(invalid("SmsMessage", "NotBase64"), "8-bit smsMessage must be base64 encoded.")
        if not data:
            return self._error(invalid("SmsMessage", "Required"), "smsMessage is empty.")
        if len(data) > 140:
            return self._error(invalid("SmsMessage", "TooLong"), "smsMessage exceeds 140 bytes.")
        if encoding == "8-bit-ASCII" and not data.isascii():
            return self._error(invalid("SmsMessage", "InvalidCharacters"), "smsMessage is not ASCII.")
        if encoding == "8-bit-UTF-8":
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return self._error(invalid("SmsMessage", "InvalidCharacters"), "smsMessage is not UTF-8.")
        return None

    async def send_sms(self, request: web.Request) -> web.Response:
        refused = await self._m2m(request)
        if refused is not None:
            return refused
        body, bad = await self._json_object(request)
        if bad is not None:
            return bad
        selection = any(k in body for k in ("accountName", "groupName", "servicePlan", "customFields"))
        devices: list[dict[str, str]] = []
        if "deviceIds" in body and selection:
            error: web.Response | None = self._error(
                invalid("DeviceIds", "NotAllowed"),
                "Do not pass groupName, accountName, servicePlan or customFields with deviceIds.")
        elif "deviceIds" in body:
            devices, error = self._check_devices(body["deviceIds"])
        else:
            error = self._check_selection(body)
        message = body.get("smsMessage")
        if error is None:
            error = self._check_message(body.get("dataEncoding", "7-bit"), message)
        self.stats.count_messages(max(len(devices), 1))
        if error is None:
            rejected = next((d for d in devices if self.should_reject(d["id"])), None)
            if rejected is not None:
                error = self._error(DEVICE_NOT_FOUND, f"Device {rejected['kind']} {rejected['id']} not found.")
        selected = {k: v for k, v in body.items() if k not in ("smsMessage", "dataEncoding")}
        keys = ([f"{d['kind']}:{d['id']}|{message}" for d in devices] if devices else
                [f"selection:{orjson.dumps(selected, option=orjson.OPT_SORT_KEYS).decode()}|{message}"])
        for key in keys:
            self.stats.sends_by_id[key] += 1
        if error is not None:
            self.stats.rejected += 1
            return error
        self.stats.accepted += 1
        self.stats.texts.append(message)
        request_id = str(uuid.uuid4())
        record = {"requestId": request_id, "deviceIds": devices,
                  "selection": None if devices else selected,
                  "dataEncoding": body.get("dataEncoding", "7-bit"), "smsMessage": message}
        self.sent.append(record)
        if self.deliver_callbacks:
            self._schedule_callbacks(request_id, devices)
        return self._json({"requestId": request_id})

    async def list_sent(self, request: web.Request) -> web.Response:
        return self._json(self.sent)

    async def unlock(self, request: web.Request) -> web.Response:
        self.locked, self.failed_logins = False, 0
        return self._json({"locked": False})

    # -- MO queue ----------------------------------------------------------------------------
    def enqueue(self, messages: list[dict[str, Any]], account: str | None = None) -> int:
        queue = self.mo_pending.setdefault(account or self.account, deque())
        for m in messages:
            device = m["device"]
            queue.append({"deviceIds": [{"id": str(device["id"]), "kind": str(device["kind"])}],
                          "message": str(m["text"]), "timestamp": m.get("timestamp") or _now_iso()})
        return len(messages)

    async def enqueue_mo(self, request: web.Request) -> web.Response:
        try:
            data = orjson.loads(await request.read())
            if isinstance(data, dict):
                data = data["messages"]
            n = self.enqueue(list(data), request.query.get("account"))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return self._json({"error": f"expected a list of {{device: {{kind, id}}, text, timestamp?}}: {exc}"},
                              400)
        return self._json({"queued": n})

    async def mo_history(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        refused = await self._m2m(request, account)
        if refused is not None:
            return refused
        token = request.query.get("next")
        outstanding = self.mo_outstanding.get(account)
        if token:
            if outstanding is not None and outstanding[0] == token:
                self.mo_outstanding.pop(account)       # acknowledged
                self.mo_last_acked[account] = token
                outstanding = None
            elif token != self.mo_last_acked.get(account):
                return self._error(invalid("Next", "Invalid"), "The next token is not valid.")
        elif outstanding is not None and outstanding[0] is None:
            self.mo_outstanding.pop(account)           # the last page: acknowledged by this poll
            outstanding = None
        if outstanding is None:
            pending = self.mo_pending.setdefault(account, deque())
            block = [pending.popleft() for _ in range(min(self.mo_page_size, len(pending)))]
            has_more = bool(pending)
            outstanding = (uuid.uuid4().hex if has_more else None, block, has_more)
            if block:
                self.mo_outstanding[account] = outstanding
        next_token, block, has_more = outstanding
        body = {"messages": block, "hasMoreData": has_more}
        if next_token is None:
            return self._json(body)
        location = str(request.url.with_query({"next": next_token}))
        return self._json(body, 202, {"Location": location})

    async def start_callbacks(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        refused = await self._m2m(request, account)
        if refused is not None:
            return refused
        self.callbacks_started.add(account)
        return self._json({"success": True})

    # -- callback registration ---------------------------------------------------------------
    async def register_callback(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        refused = await self._m2m(request, account)
        if refused is not None:
            return refused
        body, bad = await self._json_object(request)
        if bad is not None:
            return bad
        name, url = body.get("name"), body.get("url")
        if name not in CALLBACK_SERVICES:
            return self._error(invalid("ServiceName", "Invalid"), f"{name!r} is not a callback service.")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return self._error(invalid("Url", "Invalid"), "url must be an http(s) URL.")
        self.callbacks.setdefault(account, {})[name] = {
            "url": url, "username": body.get("username"), "password": body.get("password")}
        return self._json({"accountName": account, "name": name})

    async def list_callbacks(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        refused = await self._m2m(request, account)
        if refused is not None:
            return refused
        return self._json([{"accountName": account, "name": name, "url": cb["url"]}
                           for name, cb in self.callbacks.get(account, {}).items()])

    async def delete_callback(self, request: web.Request) -> web.Response:
        account, service = request.match_info["account"], request.match_info["service"]
        refused = await self._m2m(request, account)
        if refused is not None:
            return refused
        if self.callbacks.get(account, {}).pop(service, None) is None:
            return self._error(CALLBACK_NOT_FOUND, f"No callback registered for {service}.")
        return self._json({"accountName": account, "name": service})

    # -- callbacks delivered -----------------------------------------------------------------
    def _schedule_callbacks(self, request_id: str, devices: list[dict[str, str]]) -> None:
        registered = self.callbacks.get(self.account, {})
        jobs: list[tuple[str, dict[str, str | None], dict[str, Any]]] = []
        ecs = registered.get("EnhancedConnectivityService")
        if ecs is not None:
            for d in devices:
                jobs.append(("EnhancedConnectivityService", ecs,
                             {"device": d, "comment": "SendSmsMessage,Performed action on device."}))
            jobs.append(("EnhancedConnectivityService", ecs,
                         {"comment": "SendSmsMessage,Request Completed Processing",
                          "num_devices": len(devices)}))
        dc = registered.get("SMSDeliveryConfirmation")
        if dc is not None:
            for d in devices:
                jobs.append(("SMSDeliveryConfirmation", dc, {"device": d, "confirmation": "Delivered"}))
        for service, cb, parts in jobs:
            task = asyncio.get_running_loop().create_task(self._deliver(service, cb, request_id, parts))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def callback_body(self, cb: dict[str, str | None], request_id: str, parts: dict[str, Any],
                      count: int) -> bytes:
        d = parts.get("device")
        device = (f"<Device> <Kind>{escape(d['kind'])}</Kind> <Identifier>{escape(d['id'])}</Identifier> "
                  "</Device> ") if d else ""
        confirmation = parts.get("confirmation")
        delivery = (f"<SMSDelivery> <Confirmation>{confirmation}</Confirmation> <Fault xsi:nil=\"true\"/> "
                    "</SMSDelivery>") if confirmation else '<SMSDelivery xsi:nil="true"/>'
        comment = parts.get("comment")
        num = parts.get("num_devices")
        return SOAP_CALLBACK.format(
            username=_element("Username", cb.get("username")), password=_element("Password", cb.get("password")),
            request_id=escape(request_id), device=device, delivery=delivery,
            comment=f"<Comment>{escape(comment)}</Comment>" if comment else '<Comment xsi:nil="true"/>',
            summary=(f"<Summary> <NumDevicesRequested>{num}</NumDevicesRequested> </Summary>"
                     if num is not None else '<Summary xsi:nil="true"/>'),
            count=count, threshold=self.max_callback_threshold).encode()

    async def _deliver(self, service: str, cb: dict[str, str | None], request_id: str,
                       parts: dict[str, Any]) -> None:
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        url = cb["url"] or ""
        for count in range(1, self.max_callback_threshold + 1):
            body = self.callback_body(cb, request_id, parts, count)
            entry: dict[str, Any] = {"service": service, "url": url, "request_id": request_id,
                                     "count": count, "status": None}
            try:
                async with self._client.post(url, data=body,
                                             headers={"Content-Type": "text/xml; charset=utf-8"}) as resp:
                    await resp.read()
                    entry["status"] = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                entry["error"] = type(exc).__name__
            self.callback_log.append(entry)
            if entry["status"] is not None and 200 <= entry["status"] < 300:
                return
            await asyncio.sleep(self.callback_retry_s)
