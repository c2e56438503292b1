"""A faithful simulator of the SMPP gateway REST API (seed 003, PROVIDERS.md §3).

Checks what the real API checks: the bearer key (401 with a ServiceStack ResponseStatus when
wrong), the body shape (``Messages`` with a capital M, each with ``channel``, ``to``, ``content``,
``clientMessageId``), JSON or XML by Content-Type and Accept. Each message gets its own result;
an invalid ``to`` (not 7-15 digits), an empty ``content`` or a rejected number (see
``simulators.base``) gives ``accepted: false`` with an error, the others are accepted with a new
``apiMessageId``. A resend of a known ``clientMessageId`` gets its first ``apiMessageId`` back.
"""

from __future__ import annotations

import itertools
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as SafeET
import orjson
from aiohttp import web

from connector.devtools.simulators.base import FAULT_OUTCOMES, Simulator
from connector.providers.xmltree import local_name

PATH = "/communication/message/smpp/sms"
NS = "http://schemas.datacontract.org/2004/07/digitaluapi.ServiceModel"
NS_SS = "http://schemas.servicestack.net/types"
FIELDS = ("channel", "to", "content", "clientMessageId")
MAX_CONTENT = 1600


class SmppRestSimulator(Simulator):
    name = "smpp_rest"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._ids = itertools.count(1)
        self.api_ids: dict[str, str] = {}

    @classmethod
    def default_credentials(cls) -> dict[str, str]:
        return {"api_key": "sim-smpp-key"}

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.send)]

    async def send(self, request: web.Request) -> web.Response:
        fault = await self.transient_fault()
        if fault is not None:
            for cid in _client_ids(await request.read(), request.headers.get("Content-Type", "")):
                self.stats.called(cid, FAULT_OUTCOMES.get(fault.status, str(fault.status)))
            return fault
        xml = "xml" in request.headers.get("Accept", "") or request.query.get("format") == "xml"
        if request.headers.get("Authorization") != f"Bearer {self.credentials['api_key']}":
            return self._error(401, "Unauthorized", "Invalid API key", xml)
        raw = await request.read()
        try:
            if "xml" in request.headers.get("Content-Type", ""):
                messages = _parse_xml_request(raw)
            else:
                body = orjson.loads(raw)
                messages = body.get("Messages") if isinstance(body, dict) else None
        except Exception:  # noqa: BLE001 - anything unreadable is a 400, as the real API does
            return self._error(400, "SerializationException", "Could not deserialize the request body", xml)
        if not isinstance(messages, list) or not messages:
            return self._error(400, "ValidationException", "'Messages' must not be empty", xml,
                               field="Messages")
        channel_ok = self.credentials.get("channel")
        results = []
        self.stats.count_messages(len(messages))
        for m in messages:
            if not isinstance(m, dict):
                return self._error(400, "ValidationException", "each message must be an object", xml)
            msg = {k: (str(m[k]) if m.get(k) is not None else None) for k in FIELDS}
            to, content, cid = msg["to"] or "", msg["content"] or "", msg["clientMessageId"]
            error = None
            if not to.isdigit() or not 7 <= len(to) <= 15:
                error = f"Invalid destination number '{to}'"
            elif not content:
                error = "Message content is empty"
            elif len(content) > MAX_CONTENT:
                error = f"Message content longer than {MAX_CONTENT} characters"
            elif channel_ok and msg["channel"] != channel_ok:
                error = f"Unknown channel '{msg['channel']}'"
            elif self.should_reject(to):
                error = "Destination rejected by the SMSC (ESME_RINVDSTADR)"
            if cid:
                self.stats.sent(cid)
                self.stats.called(cid, "rejected" if error else "accepted")
            if error:
                self.stats.rejected += 1
                results.append({"apiMessageId": None, "accepted": False, "to": to, "error": error, "msg": msg})
                continue
            self.stats.accepted += 1
            self.stats.texts.append(content)
            api_id = self.api_ids.get(cid) if cid else None
            if api_id is None:
                api_id = f"smpp-{next(self._ids):010d}"
                if cid:
                    self.api_ids[cid] = api_id
            results.append({"apiMessageId": api_id, "accepted": True, "to": to, "error": None, "msg": msg})
        if xml:
            return web.Response(body=_xml_response(results), content_type="application/xml")
        return web.Response(body=orjson.dumps({"messages": results}), content_type="application/json")

    def _error(self, status: int, code: str, message: str, xml: bool, field: str | None = None) -> web.Response:
        errors = [{"ErrorCode": code, "FieldName": field, "Message": message}] if field else []
        body = {"ResponseStatus": {"ErrorCode": code, "Message": message, "Errors": errors}}
        if xml:
            root = Element("SMPPMsgResponse", {"xmlns": NS})
            rs = SubElement(root, "ResponseStatus", {"xmlns:d2p1": NS_SS})
            SubElement(rs, "d2p1:ErrorCode").text = code
            SubElement(rs, "d2p1:Message").text = message
            return web.Response(status=status, body=tostring(root), content_type="application/xml")
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    def throttled_response(self, retry_after_s: float) -> web.Response:
        body = {"ResponseStatus": {"ErrorCode": "TooManyRequests", "Message": "Rate limit exceeded"}}
        return web.Response(status=429, body=orjson.dumps(body), content_type="application/json",
                            headers={"Retry-After": str(int(max(retry_after_s, 0)))})

    def server_error_response(self) -> web.Response:
        body = {"ResponseStatus": {"ErrorCode": "ServiceUnavailable", "Message": "SMSC link down (simulated)"}}
        return web.Response(status=503, body=orjson.dumps(body), content_type="application/json")



def _client_ids(raw: bytes, content_type: str) -> list[str]:
    """The client message ids of a request body, best effort (for the call log of a faulted call)."""
    try:
        messages = _parse_xml_request(raw) if "xml" in content_type else orjson.loads(raw).get("Messages")
        return [str(m["clientMessageId"]) for m in messages or () if isinstance(m, dict) and m.get("clientMessageId")]
    except Exception:  # noqa: BLE001 - an unreadable body has no ids to log
        return []


def _parse_xml_request(raw: bytes) -> list[dict[str, str | None]]:
    root = SafeET.fromstring(raw)
    if local_name(root.tag) != "SendSMPPSmsRequest":
        raise ValueError("not a SendSMPPSmsRequest")
    out = []
    for container in root:
        if local_name(container.tag) == "Messages":
            for m in container:
                out.append({local_name(f.tag): f.text for f in m})
    return out


def _xml_response(results: list[dict[str, Any]]) -> bytes:
    root = Element("SMPPMsgResponse", {"xmlns:i": "http://www.w3.org/2001/XMLSchema-instance", "xmlns": NS})
    msgs = SubElement(root, "messages")
    for r in results:
        el = SubElement(msgs, "SMPPResponseMsg")
        SubElement(el, "accepted").text = "true" if r["accepted"] else "false"
        SubElement(el, "apiMessageId").text = r["apiMessageId"] or ""
        SubElement(el, "error").text = r["error"] or ""
        msg = SubElement(el, "msg")
        for name in ("channel", "clientMessageId", "content", "to"):
            SubElement(msg, name).text = r["msg"].get(name) or ""
        SubElement(el, "to").text = r["to"]
    return tostring(root, encoding="utf-8")
