"""SMPP gateway REST API (ServiceStack style): ``POST /communication/message/smpp/sms``.

Seed ``003``; facts and assumptions in PROVIDERS.md §3. Several outbound records travel in one
request (``Messages[]``, capital M as declared); each gets its own result, matched back by
``clientMessageId`` (or by position when the gateway omits it). JSON by default, XML on request.
Auth: a bearer API key. 401/403 = auth, 400 = request invalid, 429 = throttled, 5xx = transient.

Assumptions (PROVIDERS.md §3): ``to`` is digits in international form without ``+``; ``channel``
is a route setting; the same outbound message always carries the same ``clientMessageId`` (its
client_message_id), so a resend after a timeout is recognisable by the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as SafeET
import orjson

from connector.config import Secret, setting
from connector.errors import ProviderError, Rejected, Retriable, for_http_status
from connector.http import HttpRequest, HttpResponse
from connector.providers.base import Auth, Prepared, Provider, SendResult
from connector.records import Accepted

PATH = "/communication/message/smpp/sms"
NS = "http://schemas.datacontract.org/2004/07/digitaluapi.ServiceModel"
NS_I = "http://www.w3.org/2001/XMLSchema-instance"
NS_SS = "http://schemas.servicestack.net/types"


@dataclass(frozen=True)
class SmppRestConfig:
    base_url: str = setting(doc="Base URL of the SMPP REST API.", example="https://api.example.com")
    api_key: Secret = setting(doc="Bearer API key.", secret=True, example="env:SMPP_API_KEY")
    channel: str = setting("sms", doc="The `channel` value sent with every message.")
    format: str = setting("json", doc="Request/response body format.", choices=("json", "xml"))


class BearerAuth(Auth):
    def __init__(self, key: Secret) -> None:
        self._header = f"Bearer {key.value}"

    def apply(self, request: HttpRequest) -> HttpRequest:
        request.headers["Authorization"] = self._header
        return request


class SmppRest(Provider):
    name = "smpp_rest"
    title = "SMPP REST API"
    max_batch = 1000
    Config = SmppRestConfig

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.api_key)

    def address(self, msg):  # type: ignore[no-untyped-def]
        return self.recipient_number(msg).digits

    def build_send(self, batch: Sequence[Prepared]) -> HttpRequest:
        channel = self.config.channel
        url = self.config.base_url.rstrip("/") + PATH
        messages = [{"channel": channel, "to": p.to, "content": part,
                     "clientMessageId": client_message_id(p, i)}
                    for p in batch for i, part in enumerate(p.parts)]
        if self.config.format == "xml":
            return HttpRequest("POST", url, {"Content-Type": "application/xml", "Accept": "application/xml"},
                               _xml_request(messages))
        return HttpRequest("POST", url, {"Content-Type": "application/json", "Accept": "application/json"},
                           orjson.dumps({"Messages": messages}))

    def parse_send(self, batch: Sequence[Prepared], response: HttpResponse) -> list[SendResult]:
        body = _parse_body(response)
        status = response.status
        if status != 200:
            code, text = _status_error(body)
            raise for_http_status(status, f"SMPP REST API answered HTTP {status}" + (f": {text}" if text else ""),
                                  code=code, text=text, retry_after=response.header("Retry-After"))
        if body is None:
            # A 200 we cannot read: the gateway may have taken the messages. Resending is safe
            # because it dedupes by clientMessageId.
            raise Retriable("SMPP REST API answered 200 with an unreadable body")
        results = body.get("messages") or []
        by_id = {r["msg"]["clientMessageId"]: r for r in results
                 if isinstance(r.get("msg"), dict) and r["msg"].get("clientMessageId")}
        out: list[SendResult] = []
        position = 0
        for p in batch:
            accepted_ids: list[str] = []
            failure: ProviderError | None = None
            for i in range(len(p.parts)):
                r = by_id.get(client_message_id(p, i))
                if r is None and not by_id and position < len(results):
                    r = results[position]
                position += 1
                if r is None:
                    failure = failure or Retriable("SMPP REST API returned no result for this message")
                elif r.get("accepted") is True:
                    accepted_ids.append(str(r.get("apiMessageId") or ""))
                else:
                    err = str(r.get("error") or "not accepted")
                    failure = failure or Rejected(f"SMPP REST API rejected the message: {err}", text=err)
            if failure is not None and not accepted_ids:
                out.append(failure)
            elif failure is not None:
                # Some parts went out: resending would duplicate them; report what happened.
                out.append(Rejected(f"{len(accepted_ids)} of {len(p.parts)} parts accepted: {failure.message}",
                                    text=failure.text))
            else:
                out.append(Accepted(provider_message_id=",".join(accepted_ids) or None))
        return out


def client_message_id(p: Prepared, part: int) -> str:
    cid = p.msg.client_message_id
    return cid if len(p.parts) == 1 else f"{cid}#{part + 1}"


def _xml_request(messages: list[dict[str, str]]) -> bytes:
    root = Element("SendSMPPSmsRequest", {"xmlns:i": NS_I, "xmlns": NS})
    container = SubElement(root, "Messages")
    for m in messages:
        el = SubElement(container, "SMPPMessage")
        for name in ("channel", "clientMessageId", "content", "to"):  # DataContract: alphabetical
            SubElement(el, name).text = m[name]
    return tostring(root, encoding="utf-8", xml_declaration=False)


def _parse_body(response: HttpResponse) -> dict | None:  # type: ignore[type-arg]
    raw = response.body
    if not raw:
        return None
    ctype = response.content_type
    try:
        if "xml" in ctype or raw.lstrip().startswith(b"<"):
            return _xml_response(raw)
        data = orjson.loads(raw)
        return data if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - any unreadable body is "unreadable", classified by the caller
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_response(raw: bytes) -> dict:  # type: ignore[type-arg]
    """SMPPMsgResponse XML -> the JSON shape (same property names)."""
    root = SafeET.fromstring(raw)
    out: dict = {"messages": []}  # type: ignore[type-arg]
    for child in root:
        tag = _local(child.tag)
        if tag == "error":
            out["error"] = child.text
        elif tag == "messages":
            for m in child:
                item: dict = {}  # type: ignore[type-arg]
                for f in m:
                    name = _local(f.tag)
                    if name == "msg":
                        item["msg"] = {_local(x.tag): x.text for x in f}
                    elif name == "accepted":
                        item["accepted"] = (f.text or "").strip().lower() == "true"
                    else:
                        item[name] = f.text
                out["messages"].append(item)
        elif tag == "ResponseStatus":
            status: dict = {"Errors": []}  # type: ignore[type-arg]
            for f in child:
                name = _local(f.tag)
                if name == "Errors":
                    status["Errors"] = [{_local(x.tag): x.text for x in e} for e in f]
                elif name in ("ErrorCode", "Message"):
                    status[name] = f.text
            out["ResponseStatus"] = status
    return out


def _status_error(body: dict | None) -> tuple[str | None, str | None]:  # type: ignore[type-arg]
    if not body:
        return None, None
    rs = body.get("ResponseStatus") or {}
    code, text = rs.get("ErrorCode"), rs.get("Message") or body.get("error")
    errors = rs.get("Errors") or []
    if errors and isinstance(errors[0], dict):
        detail = "; ".join(f"{e.get('FieldName')}: {e.get('Message')}" for e in errors if isinstance(e, dict))
        text = f"{text} ({detail})" if text else detail
    return code, text
