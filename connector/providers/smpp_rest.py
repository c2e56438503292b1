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

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as SafeET
import orjson

from connector.config import Secret, provider_settings, setting
from connector.errors import AuthFailed, InDoubt, ProviderError, Rejected, Retriable, Throttled, for_http_status
from connector.http import HttpRequest, HttpResponse
from connector.providers.base import Auth, Capability, Prepared, Provider, SendResult
from connector.records import Accepted
from connector.providers.xmltree import local_name

PATH = "/communication/message/smpp/sms"
NS = "http://schemas.datacontract.org/2004/07/digitaluapi.ServiceModel"
NS_I = "http://www.w3.org/2001/XMLSchema-instance"
NS_SS = "http://schemas.servicestack.net/types"


@provider_settings("smpp_rest")
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
    capabilities = frozenset({Capability.SEND, Capability.CONNECTION_CHECK})
    Config = SmppRestConfig

    # -- connection check: an empty batch proves the key, nothing is sent -----------------------
    credential_settings = "{r}api_key"

    def build_check(self) -> HttpRequest | None:
        return self.auth.apply(self.build_send([]))       # {"Messages": []}: nothing to send

    def parse_check(self, response: HttpResponse) -> str:
        if response.status in (400, 200):
            return (f"API key accepted (an empty Messages[] batch answered HTTP {response.status}; "
                    f"nothing sent)")
        if response.status in (401, 403):
            raise AuthFailed(f"SMPP REST API answered HTTP {response.status} to the API key")
        raise for_http_status(response.status, f"SMPP REST API answered HTTP {response.status}",
                              retry_after=response.header("Retry-After"))

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
        if not 200 <= status < 300:
            code, text = _status_error(body)
            raise for_http_status(status, f"SMPP REST API answered HTTP {status}" + (f": {text}" if text else ""),
                                  code=code, text=text, retry_after=response.header("Retry-After"))
        # Any 2xx is judged by its body, not by its status code.
        if body is None:
            # A 2xx we cannot read: the gateway may have taken the messages. Resending is safe
            # because it dedupes by clientMessageId.
            raise Retriable(f"SMPP REST API answered {status} with an unreadable body")
        results = body.get("messages")
        results = results if isinstance(results, list) else []
        if not results:
            code, text = _status_error(body)
            if code or text:
                raise classify_request_error(code, text)
        ids = [client_message_id(p, i) for p in batch for i in range(len(p.parts))]
        tos = [p.to for p in batch for _ in p.parts]
        matched = match_results(ids, tos, results)
        leftover = len(results) - sum(r is not None for r in matched) if None in matched else 0
        out: list[SendResult] = []
        position = 0
        for p in batch:
            accepted_ids: list[str] = []
            failure: ProviderError | None = None
            for _ in p.parts:
                r = matched[position]
                position += 1
                if r is None:
                    # No result of its own: resend only when the gateway said nothing it could be
                    # about; an answer we cannot attribute may be this message's rejection.
                    failure = failure or (Retriable("SMPP REST API returned no result for this message")
                                          if leftover == 0 else
                                          InDoubt(f"SMPP REST API returned {leftover} result(s) that cannot be "
                                                  "matched to their messages (no msg echo, no unique to)"))
                    continue
                verdict = _verdict(r)
                if isinstance(verdict, str):
                    accepted_ids.append(verdict)
                else:
                    failure = failure or verdict
            if failure is not None and not accepted_ids:
                out.append(failure)
            elif failure is not None:
                # Some parts went out: resending would duplicate them; report what happened.
                out.append(Rejected(f"{len(accepted_ids)} of {len(p.parts)} parts accepted: {failure.message}",
                                    code=failure.code, text=failure.text))
            else:
                out.append(Accepted(provider_message_id=",".join(accepted_ids) or None))
        return out


def match_results(ids: Sequence[str], tos: Sequence[str], results: Sequence[object]) -> list[dict | None]:  # type: ignore[type-arg]
    """Each sent message's result entry (None: none found). By the ``msg.clientMessageId`` echo
    first; the entries without one by position when exactly the unmatched messages are left (and
    their ``to`` agrees), else by ``to`` when it names one unmatched message. Entries that are not
    objects match nothing."""
    entries = [r for r in results if isinstance(r, dict)]
    matched: list[dict | None] = [None] * len(ids)  # type: ignore[type-arg]
    index = {cid: i for i, cid in enumerate(ids)}
    rest = []
    for r in entries:
        echo = r.get("msg")
        cid = echo.get("clientMessageId") if isinstance(echo, dict) else None
        i = index.get(cid) if isinstance(cid, str) else None
        if i is not None and matched[i] is None:
            matched[i] = r
        else:
            rest.append(r)
    if not rest:
        return matched      # every entry echoed its message's id (the gateway's usual answer)
    open_ = [i for i, r in enumerate(matched) if r is None]
    if rest and len(rest) == len(open_) and all(_same_to(r, tos[i]) for r, i in zip(rest, open_)):
        for r, i in zip(rest, open_):
            matched[i] = r
        return matched
    per_to = Counter(_to_digits(r.get("to")) for r in rest)
    for r in rest:
        to = _to_digits(r.get("to"))
        candidates = [i for i in open_ if tos[i].lstrip("+") == to]
        if to is not None and per_to[to] == 1 and len(candidates) == 1:
            matched[candidates[0]] = r
    return matched


def _to_digits(value: object) -> str | None:
    return value.strip().lstrip("+") if isinstance(value, str) and value.strip() else None


def _same_to(result: dict, to: str) -> bool:  # type: ignore[type-arg]
    got = _to_digits(result.get("to"))
    return got is None or got == to.lstrip("+")


def _verdict(r: dict) -> str | ProviderError:  # type: ignore[type-arg]
    """An entry's answer: the apiMessageId when accepted, else the classified refusal. A
    malformed entry is classified too: never raised."""
    accepted = r.get("accepted")
    if isinstance(accepted, str) and accepted.strip().lower() in ("true", "false"):
        accepted = accepted.strip().lower() == "true"
    error = r.get("error")
    error = str(error) if error not in (None, "") else None
    if accepted is True and error is None:
        return str(r.get("apiMessageId") or "")
    if accepted is False or error is not None:
        text = error or "not accepted"
        return Rejected(f"SMPP REST API rejected the message: {text}", text=text)
    return InDoubt(f"SMPP REST API returned a malformed result for this message (accepted={accepted!r})")


# A 2xx carrying a top-level ``error`` / ``ResponseStatus.ErrorCode`` and no per-message results.
# ServiceStack's ErrorCode is the server exception's type name; the gateway's own codes are not
# public. Classified by meaning: the code first, then (last resort) words of the text; unknown
# meanings are permanent (code and text kept on the failed record, replay after a fix).
_CODE_CLASSES: dict[str, type[ProviderError]] = {
    "unauthorized": AuthFailed, "unauthorizedaccessexception": AuthFailed, "authenticationexception": AuthFailed,
    "forbidden": AuthFailed, "invalidapikey": AuthFailed, "tokenexception": AuthFailed,
    "toomanyrequests": Throttled, "ratelimitexceeded": Throttled, "throttled": Throttled,
    "serviceunavailable": Retriable, "timeoutexception": Retriable, "timeout": Retriable,
    "internalservererror": Retriable, "gatewaytimeout": Retriable,
    "insufficientcredit": Rejected, "insufficientfunds": Rejected, "paymentrequired": Rejected,
    "accountsuspended": Rejected, "accountdisabled": Rejected, "validationexception": Rejected,
    "argumentexception": Rejected, "argumentnullexception": Rejected, "badrequest": Rejected,
    "notfound": Rejected, "invalidoperationexception": Rejected,
}
_TEXT_CLASSES: tuple[tuple[re.Pattern[str], type[ProviderError]], ...] = (
    (re.compile(r"credit|balance|fund|payment|suspend|disabled|blocked account|account (is )?(locked|closed)",
                re.I), Rejected),
    (re.compile(r"rate.?limit|too many|throttl", re.I), Throttled),
    (re.compile(r"invalid (api )?key|api.?key (is )?(invalid|missing)|authenticat|unauthori[sz]ed|forbidden",
                re.I), AuthFailed),
    (re.compile(r"temporar|unavailable|time.?out|try again", re.I), Retriable),
)


def classify_request_error(code: str | None, text: str | None) -> ProviderError:
    """The error of a 2xx whose body refuses the whole request (see ``_CODE_CLASSES``)."""
    cls = _CODE_CLASSES.get(re.sub(r"[^a-z]", "", (code or "").lower()))
    if cls is None:
        cls = next((c for pattern, c in _TEXT_CLASSES if pattern.search(f"{code or ''} {text or ''}")), Rejected)
    what = ": ".join(x for x in (code, text) if x)
    return cls(f"SMPP REST API refused the request: {what}", code=code, text=text)


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
    try:
        if "xml" in response.content_type:
            return _xml_response(raw)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # XML under another content type (no JSON text starts with "<")
            return _xml_response(raw) if raw.lstrip().startswith(b"<") else None
        return data if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - any unreadable body is "unreadable", classified by the caller
        return None



def _xml_response(raw: bytes) -> dict:  # type: ignore[type-arg]
    """SMPPMsgResponse XML -> the JSON shape (same property names)."""
    root = SafeET.fromstring(raw)
    out: dict = {"messages": []}  # type: ignore[type-arg]
    for child in root:
        tag = local_name(child.tag)
        if tag == "error":
            out["error"] = child.text
        elif tag == "messages":
            for m in child:
                item: dict = {}  # type: ignore[type-arg]
                for f in m:
                    name = local_name(f.tag)
                    if name == "msg":
                        item["msg"] = {local_name(x.tag): x.text for x in f}
                    elif name == "accepted":
                        item["accepted"] = (f.text or "").strip().lower() == "true"
                    else:
                        item[name] = f.text
                out["messages"].append(item)
        elif tag == "ResponseStatus":
            status: dict = {"Errors": []}  # type: ignore[type-arg]
            for f in child:
                name = local_name(f.tag)
                if name == "Errors":
                    status["Errors"] = [{local_name(x.tag): x.text for x in e} for e in f]
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
