"""A faithful simulator of Ogangi Mobile Engagement (seed 004, PROVIDERS.md §4).

Serves the real paths under ``/rest/api/`` (GET, as in the provider's Java example), each ending
``/{publicKey}/{signature}``, and answers the documented XML envelope: ``<input>``, ``<status>``,
``<description>``, ``<result>`` as siblings with no root element, as the documentation shows.

It checks what the real API checks: the public key and the HMAC-SHA256 signature (a wrong one
gets ``BAD_SIGNATURE`` / "Invalid signature, access denied", HTTP 200), then the instance id,
the base64 parameters (standard alphabet, UTF-8), numbers (7 to 15 digits), PIN length, page
numbers and MO filters (anything wrong: ``ERROR`` with a description). The signature is checked
as the provider's Java example computes it: over the parameter values as they are (each path
segment percent-decoded), joined by ``/``; so a path sent raw (``=`` and ``+`` literal) and one
an HTTP client re-quoted (``%3D``, ``%2B``) verify alike. Credentials ``signature_encoding``
(hex|base64), ``signature_covers`` (decoded|encoded: then over the values re-encoded as the
adapter's ``path_encoding``, minimal|strict, sends them) and ``base64_alphabet``
(standard|urlsafe) mirror the adapter's overrides.

State: sent messages get an id (a signed 64-bit number, like the samples) and a status that
advances with time: ``SENT``, then ``SENT_TO_CARRIER`` after ``carrier_delay_s``, then
``DELIVERED_TO_DEVICE`` after ``device_delay_s``. Numbers the base class rejects (``…0666`` or
the ``reject_rate`` fault) and malformed numbers are refused at once: sendSMS answers OK with the
message in status ``BAD_TO`` (its answer carries per-message status), sendMT and the PIN call
answer ``ERROR`` (their answers carry none). Numbers ending in ``9999`` are accepted and end
``UNDELIVERED`` instead, so delivery polling sees a late failure. The PIN call generates a PIN,
returns it once and keeps no copy. MO messages come from fireMessage and from
``POST /_sim/ogangi/mo`` (a JSON list of ``{"from", "text", ...}``); getMOMessages filters
(CARRIER, TO, FROM, KEYWORD as a regex over the text, ORDER) and pages them (page 1 first).
Also: ``GET /_sim/ogangi/messages`` (sent messages), ``PUT /_sim/ogangi/delays``;
``POST /_sim/reset`` clears messages and MO too. ``sends_by_id`` counts sends per
number + text hash: the API has no client message id, so a duplicate is the same text twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote, unquote
from xml.etree.ElementTree import Element, SubElement, tostring

import orjson
from aiohttp import web

from connector.devtools.simulators.base import Simulator

API = "/rest/api/"
UNDELIVERED_SUFFIX = "9999"
# call path -> (name, parameter counts allowed before publicKey/signature)
CALLS: dict[str, tuple[str, tuple[int, ...]]] = {
    "tools/sendSMS": ("sendSMS", (5,)),
    "sendMT": ("sendMT", (5, 6)),
    "tools/sendSMSPinMobileNumberConfirm": ("sendSMSPinMobileNumberConfirm", (6,)),
    "fireMessage": ("fireMessage", (3,)),
    "tools/getMOMessages": ("getMOMessages", (4,)),
    "tools/getMessage": ("getMessage", (2,)),
}
DESCRIPTIONS = {
    "SENT": "Sent",
    "SENT_TO_CARRIER": "Sent to Carrier",
    "DELIVERED_TO_DEVICE": "Message delivered to device.",
    "UNDELIVERED": "Message not delivered to device.",
    "BAD_TO": "Message not sent. Invalid 'to' parameter.",
}
MO_FILTERS = ("carrier", "to", "from", "keyword", "order")
_NUMBER = re.compile(r"^[0-9]{7,15}$")


class _BadRequest(Exception):
    """A parameter the real API refuses: answered as an ERROR envelope with this description."""


@dataclass
class SimMessage:
    id: str
    method: str
    carrier: str
    sender: str
    to: str
    text: str
    created: float                  # simulator clock
    date: str
    final: str | None = None        # a status fixed at send time (BAD_TO)
    outcome: str = "DELIVERED_TO_DEVICE"
    flags: str = ""


class OgangiSimulator(Simulator):
    name = "ogangi"
    short_code = "55555"            # the `to` of MO messages injected by fireMessage

    def __init__(self, *args: Any, carrier_delay_s: float = 0.5, device_delay_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.carrier_delay_s = carrier_delay_s
        self.device_delay_s = device_delay_s
        self.clock = clock
        self.messages: dict[str, SimMessage] = {}
        self.mo: list[dict[str, str]] = []

    @classmethod
    def default_credentials(cls) -> dict[str, str]:
        return {"public_key": "sim-ogangi-public", "private_key": "sim-ogangi-private", "instance_id": "1001"}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(API + "{tail:.*}", self.api),
            web.post("/_sim/ogangi/mo", self._add_mo),
            web.get("/_sim/ogangi/messages", self._list_messages),
            web.put("/_sim/ogangi/delays", self._set_delays),
        ]

    # -- the API ---------------------------------------------------------------------------------
    async def api(self, request: web.Request) -> web.Response:
        fault = await self.transient_fault()
        if fault is not None:
            return fault
        raw = request.rel_url.raw_path[len(API):].split("/")
        key, rest = ("/".join(raw[:2]), raw[2:]) if raw[0] == "tools" else (raw[0], raw[1:])
        spec = CALLS.get(key)
        if spec is None or len(rest) - 2 not in spec[1]:
            return web.Response(status=404, text="Not Found")
        name = spec[0]
        params = [unquote(s) for s in rest[:-2]]
        public_key, signature = unquote(rest[-2]), unquote(rest[-1])
        if public_key != self.credentials["public_key"] or not hmac.compare_digest(
                signature.encode("utf-8", "replace"), self.signature(params).encode("ascii")):
            return _envelope(name, "BAD_SIGNATURE", "Invalid signature, access denied")
        try:
            if params[0] != self.credentials["instance_id"]:
                raise _BadRequest(f"Invalid instance id '{params[0]}'")
            return getattr(self, "_" + name)(name, params)
        except _BadRequest as exc:
            return _envelope(name, "ERROR", str(exc))

    def signature(self, params: list[str]) -> str:
        """What the adapter signs, from the decoded parameters."""
        safe = "" if self.credentials.get("path_encoding") == "strict" else "!$&'()*+,;=:@"   # RFC 3986 pchar
        covered = [quote(p, safe=safe) for p in params] if self.credentials.get("signature_covers") == "encoded" \
            else params
        digest = hmac.new(self.credentials["private_key"].encode("utf-8"), "/".join(covered).encode("utf-8"),
                          hashlib.sha256).digest()
        if self.credentials.get("signature_encoding") == "base64":
            return base64.b64encode(digest).decode("ascii")
        return digest.hex()

    def _sendSMS(self, name: str, p: list[str]) -> web.Response:
        _, carrier, sender, number_b64, text_b64 = p
        number = self._b64(number_b64, "mobileNumber")
        msg = self._send(name, carrier, sender, number, self._b64(text_b64, "text"))
        assert msg is not None
        result = Element("result")
        self._message_xml(SubElement(result, "messages"), msg)
        return _envelope(name, "OK", "Completed", result)

    def _sendMT(self, name: str, p: list[str]) -> web.Response:
        _, sender, carrier, number, text_b64 = p[:5]
        msg = self._send(name, carrier, sender, number, self._b64(text_b64, "text"),
                         flags=p[5] if len(p) > 5 else "")
        if msg is None:
            raise _BadRequest(DESCRIPTIONS["BAD_TO"])
        return _envelope(name, "OK", "Completed")

    def _sendSMSPinMobileNumberConfirm(self, name: str, p: list[str]) -> web.Response:
        _, carrier, sender, number, text_b64, length = p
        if not length.isdigit() or not 1 <= int(length) <= 10:
            raise _BadRequest(f"Invalid PIN length '{length}'")
        if self._send(name, carrier, sender, number, self._b64(text_b64, "text")) is None:
            raise _BadRequest(DESCRIPTIONS["BAD_TO"])
        result = Element("result")
        pin = "".join(str(self.random.randrange(10)) for _ in range(int(length)))
        SubElement(SubElement(result, "PinSMSConfirmation"), "pin").text = pin
        return _envelope(name, "OK", "Completed", result)

    def _fireMessage(self, name: str, p: list[str]) -> web.Response:
        instance, number, text_b64 = p
        if not _NUMBER.match(number):
            raise _BadRequest(f"Invalid mobile number '{number}'")
        text = self._b64(text_b64, "text")
        self.add_mo({"from": number, "text": text})
        result = Element("result")
        mo = SubElement(result, "mo")
        for tag, value in (("instanceId", instance), ("mobileNumber", number), ("text", text)):
            SubElement(mo, tag).text = value
        return _envelope(name, "OK", "Completed", result)

    def _getMOMessages(self, name: str, p: list[str]) -> web.Response:
        _, page_s, per_page_s, parameters = p
        if not page_s.isdigit() or int(page_s) < 1:
            raise _BadRequest(f"Invalid page '{page_s}' (pages start at 1)")
        if not per_page_s.isdigit() or not 1 <= int(per_page_s) <= 1000:
            raise _BadRequest(f"Invalid resultsPerPage '{per_page_s}'")
        found = self._filter_mo(parameters)
        page, per_page = int(page_s), int(per_page_s)
        result = Element("result")
        mo_list = SubElement(result, "MOMessageList")
        SubElement(mo_list, "records").text = str(len(found))
        messages = SubElement(mo_list, "MessageList")
        for mo in found[(page - 1) * per_page: page * per_page]:
            el = SubElement(messages, "MOMessage")
            for tag in ("text", "from", "to", "encoding", "keyword", "carrier", "sendDate"):
                SubElement(el, tag).text = mo.get(tag, "")
        return _envelope(name, "OK", "Completed", result)

    def _getMessage(self, name: str, p: list[str]) -> web.Response:
        msg = self.messages.get(p[1])
        if msg is None:
            raise _BadRequest(f"Message '{p[1]}' not found")
        result = Element("result")
        self._message_xml(result, msg)
        return _envelope(name, "OK", "Completed", result)

    # -- state -----------------------------------------------------------------------------------
    def status_of(self, msg: SimMessage) -> str:
        if msg.final:
            return msg.final
        elapsed = self.clock() - msg.created
        if elapsed >= self.device_delay_s:
            return msg.outcome
        if elapsed >= self.carrier_delay_s:
            return "SENT_TO_CARRIER"
        return "SENT"

    def add_mo(self, mo: dict[str, Any]) -> None:
        text = str(mo.get("text") or "")
        first = text.split(maxsplit=1)[0].upper() if text.strip() else ""
        self.mo.append({
            "text": text, "from": str(mo["from"]), "to": str(mo.get("to") or self.short_code),
            "encoding": str(mo.get("encoding") or "UTF-8"),
            "keyword": str(mo.get("keyword") or (f"^{re.escape(first)}.*" if first else "")),
            "carrier": str(mo.get("carrier") or "SimCarrier"),
            "sendDate": str(mo.get("sendDate") or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]),
        })

    def _send(self, method: str, carrier: str, sender: str, number: str, text: str,
              flags: str = "") -> SimMessage | None:
        """Record one send; None when refused and the call has no per-message status to say so."""
        if not text:
            raise _BadRequest("Invalid 'text' parameter: empty")
        self.stats.count_messages(1)
        self.stats.sends_by_id[f"{number}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"] += 1
        refused = not _NUMBER.match(number) or self.should_reject(number)
        if refused:
            self.stats.rejected += 1
            if method != "sendSMS":
                return None
        else:
            self.stats.accepted += 1
            self.stats.texts.append(text)
        msg_id = str(self.random.getrandbits(64) - 2 ** 63)
        now = datetime.now(timezone.utc)
        msg = SimMessage(id=msg_id, method=method, carrier=carrier, sender=sender, to=number, text=text,
                         created=self.clock(), date=now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+00:00",
                         final="BAD_TO" if refused else None, flags=flags,
                         outcome="UNDELIVERED" if number.endswith(UNDELIVERED_SUFFIX) else "DELIVERED_TO_DEVICE")
        self.messages[msg_id] = msg
        return msg

    def _b64(self, value: str, what: str) -> str:
        try:
            if self.credentials.get("base64_alphabet") == "urlsafe":
                raw = base64.b64decode(value.encode("ascii"), altchars=b"-_", validate=True)
            else:
                raw = base64.b64decode(value.encode("ascii"), validate=True)
            return raw.decode("utf-8")
        except (binascii.Error, UnicodeError, ValueError):
            raise _BadRequest(f"Invalid '{what}' parameter: not Base64 encoded UTF-8") from None

    def _filter_mo(self, parameters: str) -> list[dict[str, str]]:
        found = list(self.mo)
        if parameters == "null":
            return found
        descending = False
        for item in parameters.split("&"):
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            if not sep or key not in MO_FILTERS or not value:
                raise _BadRequest(f"Invalid search parameter '{item}'")
            values = value.split(",")
            if key == "order":
                if value.upper() not in ("ASC", "DESC"):
                    raise _BadRequest(f"Invalid ORDER '{value}'")
                descending = value.upper() == "DESC"
            elif key == "keyword":
                try:
                    patterns = [re.compile(v) for v in values]
                except re.error:
                    raise _BadRequest(f"Invalid KEYWORD expression '{value}'") from None
                found = [m for m in found if any(pt.search(m["text"]) for pt in patterns)]
            else:
                wanted = {v.lower() for v in values}
                found = [m for m in found if m[key].lower() in wanted]
        return found[::-1] if descending else found

    def _message_xml(self, parent: Element, msg: SimMessage) -> None:
        status = self.status_of(msg)
        el = SubElement(parent, "message")
        for tag, value in (("id", msg.id), ("carrier", msg.carrier), ("from", msg.sender), ("to", msg.to),
                           ("text", msg.text), ("status", status),
                           ("statusDescription", DESCRIPTIONS.get(status, status)), ("encoding", "UTF-8"),
                           ("date", msg.date), ("timezone", "UTC"), ("clientId", self.credentials["public_key"])):
            SubElement(el, tag).text = value

    # -- faults and admin ------------------------------------------------------------------------
    def throttled_response(self, retry_after_s: float) -> web.Response:
        return _envelope("", "ERROR", "Too many requests (simulated)", http_status=429,
                         headers={"Retry-After": str(int(max(retry_after_s, 0)))})

    def server_error_response(self) -> web.Response:
        return _envelope("", "ERROR", "Service unavailable (simulated)", http_status=503)

    async def _add_mo(self, request: web.Request) -> web.Response:
        try:
            items = orjson.loads(await request.read())
            if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("from") for i in items):
                raise ValueError("expected a JSON list of objects, each with 'from'")
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for item in items:
            self.add_mo(item)
        return web.json_response({"added": len(items), "total": len(self.mo)})

    async def _list_messages(self, request: web.Request) -> web.Response:
        body = [{"id": m.id, "method": m.method, "carrier": m.carrier, "from": m.sender, "to": m.to,
                 "text": m.text, "flags": m.flags, "status": self.status_of(m)} for m in self.messages.values()]
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _set_delays(self, request: web.Request) -> web.Response:
        try:
            values = orjson.loads(await request.read())
            carrier = float(values.get("carrier_delay_s", self.carrier_delay_s))
            device = float(values.get("device_delay_s", self.device_delay_s))
        except (ValueError, TypeError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.carrier_delay_s, self.device_delay_s = carrier, device
        return web.json_response({"carrier_delay_s": carrier, "device_delay_s": device})

    async def _reset(self, request: web.Request) -> web.Response:
        self.messages.clear()
        self.mo.clear()
        return await super()._reset(request)


def _envelope(name: str, status: str, description: str, result: Element | None = None, *,
              http_status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """The documented answer: static part + optional <result>, siblings without a root."""
    parts = []
    for tag, text in (("input", name), ("status", status), ("description", description)):
        el = Element(tag)
        el.text = text
        parts.append(tostring(el, encoding="unicode"))
    if result is not None:
        parts.append(tostring(result, encoding="unicode"))
    return web.Response(status=http_status, body=" ".join(parts).encode("utf-8"), headers=headers,
                        content_type="application/xml", charset="utf-8")
