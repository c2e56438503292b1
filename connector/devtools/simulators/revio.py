"""A faithful simulator of Rev.io's SOAP 1.1 API (seed 001, PROVIDERS.md §2).

One endpoint, ``POST /v20/default.asmx``, dispatching on the ``SOAPAction`` header as ASP.NET
web services do; both the v20 namespace and the seed's ``http://api.myh2o.com/`` are accepted
(header and body must name the same operation), and answers use the namespace of the request.
Operations: ``Sessions_Create`` (checks ``<Credentials>``, returns a ``SessionKey`` valid for
``session_ttl_s`` from creation), ``SMS_Send`` (``ToNumber`` 10 digits, ``Message`` 1 to 160
UTF-16 code units, optional integer ``CustomerID``, ``SmsProfileID`` xor ``FromNumber``, inside
``<Profile>`` or directly in ``<Request>``; answers ``ID`` and the ``Profile`` used, profile 1 /
8005550100 when none is named), ``SMSOptOut_Create`` / ``SMSOptOut_Delete`` on an in-memory
opt-out list (``GET /_sim/revio/optouts``) with the seed's exact ``S2010`` messages. Every
operation but ``Sessions_Create`` takes ``<Session>`` or ``<Credentials>``; requests authenticated
by credentials get a session key echoed in the header, as the seed's samples show.

Working assumptions (the same ones the adapter documents):

- Wrong credentials, an unknown or expired session, or no auth at all: HTTP 200 with
  ``Success=false`` and a message about credentials or session, no ``Error_Code`` (SOAP APIs
  report business errors in the body, not in the status).
- Unreadable XML, an unknown SOAPAction or a body that does not match it: HTTP 500 with a
  ``soap:Client`` fault worded as ASP.NET words it; injected errors are HTTP 500 ``soap:Server``
  faults, injected throttling HTTP 429 with ``Retry-After`` and a ``soap:Server`` fault.
- Input errors are ``S2010`` "Invalid input received." (the only documented code). The opt-out
  calls are all-or-nothing: one invalid, already listed (create) or unlisted (delete) TN refuses
  the whole request and changes nothing. Delete's "not listed" wording is invented.
- A destination rejected by ``should_reject`` (numbers ending 0666, ``reject_rate``) fails with
  the invented code ``S3010`` "SMS could not be sent."; the opt-out list does not block
  ``SMS_Send`` (the seed says it applies to SMS sent by Rev.io's own SMS events).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import string
import time
from collections import deque
from typing import Any, Callable
from urllib.parse import quote
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

import defusedxml.ElementTree as SafeET
import orjson
from aiohttp import web

from connector.devtools.simulators.base import Simulator
from connector.providers.xmltree import find_child, local_name

PATH = "/v20/default.asmx"
NS_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_XSD = "http://www.w3.org/2001/XMLSchema"
# SOAPAction prefix -> body namespace
NAMESPACES = {"http://api.myh2o.com/v20": "http://api.myh2o.com/v20",
              "http://api.myh2o.com": "http://api.myh2o.com/"}
INVALID_INPUT = ("S2010", "Invalid input received.")
NOT_SENT = ("S3010", "SMS could not be sent.")
DEFAULT_PROFILES = {1: "8005550100", 1000: "67312"}   # SmsProfileID -> FromNumber; the first is the default
MAX_CHARS = 160
KEY_ALPHABET = string.ascii_letters + string.digits + "%&^@!*"   # the seed's keys carry & and friends
TEN_DIGITS = re.compile(r"^[0-9]{10}$")

AUTH_NO_CREDENTIALS = "No Credentials or Session were supplied."
AUTH_BAD_CREDENTIALS = "Invalid Username, Password or Client. Login failed."
AUTH_BAD_SESSION = "Invalid SessionKey: the session does not exist."
AUTH_EXPIRED_SESSION = "The session has expired. Create a new session with Sessions_Create."


class SoapFault(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


class RevIoSimulator(Simulator):
    name = "revio"

    def __init__(self, *args: Any, session_ttl_s: float = 3600.0, profiles: dict[int, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.session_ttl_s = session_ttl_s
        self.profiles = dict(profiles or DEFAULT_PROFILES)
        self.clock = clock
        self.sessions: dict[str, float] = {}          # SessionKey -> created at (clock)
        self.optouts: dict[str, None] = {}            # ordered set of TNs
        self.sent: deque[dict[str, Any]] = deque(maxlen=1000)   # recent accepted SMS, for tests
        self._ids = itertools.count(3939323)
        self._credentials_session: str | None = None

    @classmethod
    def default_credentials(cls) -> dict[str, str]:
        return {"username": "sim-revio-user", "password": "sim-revio-pass", "client": "sim-client"}

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.soap), web.get("/_sim/revio/optouts", self.list_optouts)]

    async def list_optouts(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"optouts": list(self.optouts)}), content_type="application/json")

    # -- the SOAP endpoint -------------------------------------------------------------------
    async def soap(self, request: web.Request) -> web.Response:
        fault = await self.transient_fault()
        if fault is not None:
            return fault
        if not request.headers.get("Content-Type", "").lower().startswith("text/xml"):
            return web.Response(status=415, text="Unsupported Media Type: SOAP 1.1 requests are text/xml.")
        raw = await request.read()
        try:
            operation, ns, req = self._read(request.headers.get("SOAPAction", ""), raw)
            handler = {"Sessions_Create": self._sessions_create, "SMS_Send": self._sms_send,
                       "SMSOptOut_Create": self._optout_create, "SMSOptOut_Delete": self._optout_delete}[operation]
        except SoapFault as exc:
            return _fault(exc.code, exc.text)
        header, fields = handler(req)
        return _answer(operation, ns, header, fields)

    def _read(self, action: str, raw: bytes) -> tuple[str, str, Element]:
        soap_action = action.strip().strip('"')
        prefix, _, operation = soap_action.rpartition("/")
        ns = NAMESPACES.get(prefix)
        if ns is None or operation not in ("Sessions_Create", "SMS_Send", "SMSOptOut_Create", "SMSOptOut_Delete"):
            raise SoapFault("soap:Client", f"Server did not recognize the value of HTTP Header SOAPAction: "
                                           f"{soap_action}.")
        try:
            root = SafeET.fromstring(raw)
        except (ParseError, ValueError) as exc:
            raise SoapFault("soap:Client", "Server was unable to read request. ---> There is an error in XML "
                                           f"document. ---> {exc}") from None
        body = root.find(f"{{{NS_SOAP}}}Body") if root.tag == f"{{{NS_SOAP}}}Envelope" else None
        op = body[0] if body is not None and len(body) else None
        if op is None or op.tag not in (f"{{{n}}}{operation}" for n in NAMESPACES.values()):
            raise SoapFault("soap:Client", "Server was unable to read request. ---> The request body does not "
                                           f"contain {operation} in namespace {ns}.")
        req = find_child(op, "Request")
        return operation, op.tag[1:].split("}")[0], req if req is not None else Element("Request")

    # -- auth --------------------------------------------------------------------------------
    def _new_session(self) -> str:
        if len(self.sessions) >= 10_000:   # keep a long benchmark's memory flat
            self.sessions = {k: t for k, t in self.sessions.items() if not self._expired(k)}
        key = "".join(secrets.choice(KEY_ALPHABET) for _ in range(32))
        self.sessions[key] = self.clock()
        return key

    def _expired(self, key: str) -> bool:
        created = self.sessions.get(key)
        return created is None or self.clock() - created > self.session_ttl_s

    def _credentials_ok(self, creds: Element | None) -> bool:
        if creds is None:
            return False
        c = self.credentials
        return (_field(creds, "Username"), _field(creds, "Password"), _field(creds, "Client")) == (
            c.get("username"), c.get("password"), c.get("client"))

    def _authenticate(self, req: Element) -> tuple[str | None, str | None]:
        """(SessionKey to echo, None) or (None, the auth error message)."""
        session = find_child(req, "Session")
        if session is not None:
            key = _field(session, "SessionKey") or ""
            if key not in self.sessions:
                return None, AUTH_BAD_SESSION
            if self._expired(key):
                del self.sessions[key]
                return None, AUTH_EXPIRED_SESSION
            return key, None
        creds = find_child(req, "Credentials")
        if creds is None:
            return None, AUTH_NO_CREDENTIALS
        if not self._credentials_ok(creds):
            return None, AUTH_BAD_CREDENTIALS
        key = self._credentials_session
        if key is None or self._expired(key):
            self.sessions.pop(key or "", None)
            key = self._credentials_session = self._new_session()
        return key, None

    # -- operations: each returns (Header fields, result fields) -----------------------------
    def _sessions_create(self, req: Element) -> tuple[dict[str, Any], list[Element]]:
        if not self._credentials_ok(find_child(req, "Credentials")):
            return _refused(AUTH_BAD_CREDENTIALS), []
        key = self._new_session()
        return _ok(key), [_el("SessionKey", key), _el("SessionKey_Encoded", quote(key, safe=""))]

    def _sms_send(self, req: Element) -> tuple[dict[str, Any], list[Element]]:
        key, error = self._authenticate(req)
        if error:
            return _refused(error), []
        to, message = _field(req, "ToNumber") or "", _field(req, "Message", strip=False) or ""
        self.stats.count_messages(1)
        self.stats.sends_by_id[hashlib.sha256(f"{to}\n{message}".encode()).hexdigest()[:16]] += 1
        profile = find_child(req, "Profile")
        profile_id = _field(profile, "SmsProfileID") or _field(req, "SmsProfileID")
        from_number = _field(profile, "FromNumber") or _field(req, "FromNumber")
        customer_id = _field(req, "CustomerID")
        chars = len(message.encode("utf-16-le", "surrogatepass")) // 2
        problem = None
        if not TEN_DIGITS.match(to):
            problem = f"'{to}' is an invalid ToNumber."
        elif not 1 <= chars <= MAX_CHARS:
            problem = f"Message must be between 1 and {MAX_CHARS} characters."
        elif customer_id is not None and not customer_id.isdigit():
            problem = f"'{customer_id}' is an invalid CustomerID."
        elif profile_id is not None and from_number is not None:
            problem = "SmsProfileID cannot be used with FromNumber."
        elif profile_id is not None and not (profile_id.isdigit() and int(profile_id) in self.profiles):
            problem = f"SMS Profile '{profile_id}' was not found."
        elif from_number is not None and from_number not in self.profiles.values():
            problem = f"No SMS Profile was found with FromNumber '{from_number}'."
        if problem:
            self.stats.rejected += 1
            return _refused(problem, INVALID_INPUT), []
        if self.should_reject(to):
            self.stats.rejected += 1
            return _refused(f"SMS to '{to}' could not be sent: the number is not SMS-capable.", NOT_SENT), []
        if profile_id is not None:
            used = int(profile_id)
        elif from_number is not None:
            used = next(pid for pid, number in self.profiles.items() if number == from_number)
        else:
            used = next(iter(self.profiles))
        sms_id = next(self._ids)
        self.stats.accepted += 1
        self.stats.texts.append(message)
        self.sent.append({"id": sms_id, "to": to, "message": message, "customer_id": customer_id,
                          "sms_profile_id": used, "from_number": self.profiles[used]})
        return _ok(key), [_el("ID", str(sms_id)),
                          _el("Profile", None, _el("SmsProfileID", str(used)),
                              _el("FromNumber", self.profiles[used]))]

    def _optout_create(self, req: Element) -> tuple[dict[str, Any], list[Element]]:
        return self._optout(req, create=True)

    def _optout_delete(self, req: Element) -> tuple[dict[str, Any], list[Element]]:
        return self._optout(req, create=False)

    def _optout(self, req: Element, *, create: bool) -> tuple[dict[str, Any], list[Element]]:
        key, error = self._authenticate(req)
        if error:
            return _refused(error), []
        tns_el = find_child(req, "TNs")
        tns = [(t.text or "").strip() for t in tns_el if local_name(t.tag) == "TN"] if tns_el is not None else []
        tns = tns or [""]   # "Must be non null or empty string"
        invalid = [t for t in tns if not TEN_DIGITS.match(t)]
        if invalid:
            return _refused(_listed(invalid, "is an invalid TN.", "are invalid TNs."), INVALID_INPUT), []
        unique = list(dict.fromkeys(tns))
        if create:
            listed = [t for t in unique if t in self.optouts]
            if listed:
                return _refused(_listed(listed, "is already in the opt-out list.",
                                        "are already in the opt-out list."), INVALID_INPUT), []
            self.optouts.update(dict.fromkeys(unique))
        else:
            missing = [t for t in unique if t not in self.optouts]
            if missing:
                return _refused(_listed(missing, "is not in the opt-out list.",
                                        "are not in the opt-out list."), INVALID_INPUT), []
            for t in unique:
                del self.optouts[t]
        return {**_ok(key), "Impersonated": "false"}, []

    # -- fault injection in SOAP shape -------------------------------------------------------
    def throttled_response(self, retry_after_s: float) -> web.Response:
        return _fault("soap:Server", "Too many requests: rate limit exceeded (simulated).", status=429,
                      headers={"Retry-After": str(int(max(retry_after_s, 0)))})

    def server_error_response(self) -> web.Response:
        return _fault("soap:Server", "Server was unable to process request. ---> Service temporarily "
                                     "unavailable (simulated).")


# --------------------------------------------------------------------------------------------
# XML helpers




def _field(el: Element | None, name: str, *, strip: bool = True) -> str | None:
    child = find_child(el, name)
    if child is None:
        return None
    text = child.text or ""
    return text.strip() if strip else text


def _el(tag: str, text: str | None = None, *children: Element) -> Element:
    el = Element(tag)
    el.text = text
    el.extend(children)
    return el


def _listed(tns: list[str], one: str, many: str) -> str:
    return f"'{', '.join(tns)}' {one if len(tns) == 1 else many}"


def _ok(session_key: str | None) -> dict[str, Any]:
    return {"Success": "true", "SessionKey": session_key}


def _refused(message: str, error: tuple[str, str] | None = None) -> dict[str, Any]:
    header: dict[str, Any] = {"Success": "false", "Message": message, "Impersonated": None}
    if error is not None:
        header["Error_Code"], header["Error_Description"] = error
    return header


def _envelope() -> tuple[Element, Element]:
    root = Element("soap:Envelope", {"xmlns:soap": NS_SOAP, "xmlns:xsi": NS_XSI, "xmlns:xsd": NS_XSD})
    return root, SubElement(root, "soap:Body")


def _xml(root: Element) -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + tostring(root, encoding="utf-8")


def _answer(operation: str, ns: str, header: dict[str, Any], fields: list[Element]) -> web.Response:
    root, body = _envelope()
    result = SubElement(SubElement(body, f"{operation}Response", {"xmlns": ns}), f"{operation}Result")
    h = SubElement(result, "Header")
    for name, value in header.items():
        if value is None and name == "Impersonated":
            SubElement(h, name, {"xsi:nil": "true"})
        elif value is not None:
            SubElement(h, name).text = value
    result.extend(fields)
    return web.Response(body=_xml(root), content_type="text/xml", charset="utf-8")


def _fault(code: str, text: str, *, status: int = 500, headers: dict[str, str] | None = None) -> web.Response:
    root, body = _envelope()
    fault = SubElement(body, "soap:Fault")
    SubElement(fault, "faultcode").text = code
    SubElement(fault, "faultstring").text = text
    SubElement(fault, "detail")
    return web.Response(status=status, body=_xml(root), content_type="text/xml", charset="utf-8", headers=headers)
