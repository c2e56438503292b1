"""Rev.io: the adapter against seed 001's own samples, and the simulator over real HTTP on loopback.

Requests are compared with the seed's samples modulo whitespace (and, for SMS_Send, the body
namespace: the seed's sample uses ``http://api.myh2o.com/``, the adapter sends v20 as
PROVIDERS.md §2 says). Responses are the seed's bytes as printed, bare ``&`` included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import AsyncIterator
from xml.etree.ElementTree import Element, fromstring
from xml.sax.saxutils import escape

import aiohttp
import pytest

from connector import errors
from connector.config import Problem, Secret, build
from connector.encoding import Encoding
from connector.http import HttpRequest, HttpResponse
from connector.policy import RetryPolicy
from connector.providers.revio import (
    NS_LEGACY,
    NS_V20,
    OptOutResult,
    RevIo,
    RevIoAuth,
    RevIoConfig,
    build_optout_create,
    build_optout_delete,
    build_request,
    build_sessions_create,
    credentials_element,
    parse_optout,
    parse_sessions_create,
    parse_sms_send,
    session_element,
)
from connector.records import Accepted, OutboundSms, Recipient
from connector.sender import RouteSender
from connector.devtools.simulators.base import serve
from connector.devtools.simulators.revio import RevIoSimulator
from connector.transport import HttpTransport

# --------------------------------------------------------------------------------------------
# Seed 001, verbatim

SEED_SMS_SEND_REQUEST = b"""<SMS_Send xmlns="http://api.myh2o.com/">
<Request>
<Session>
<SessionKey>xyzabc123</SessionKey>
</Session>
<ToNumber>8504700000</ToNumber>
<Message>Test Message from Rev.io</Message>
</Request>
</SMS_Send>"""

SEED_SMS_SEND_RESULT = b"""<SMS_SendResult>
<Header>
<Success>true</Success>
<SessionKey>xyzabc123</SessionKey>
</Header>
<ID>3939323</ID>
<Profile>
<SmsProfileID>1000</SmsProfileID>
<FromNumber>67312</FromNumber>
</Profile>
</SMS_SendResult>"""

SEED_OPTOUT_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
<soap:Body>
<{op} xmlns="http://api.myh2o.com/v20">
<Request>
<Credentials>
<Username>[Rev.io user]</Username>
<Password>[Rev.io password]</Password>
<Client>[Rev.io Client Code]</Client>
</Credentials>
<TNs>
<TN>{tn}</TN>
</TNs>
</Request>
</{op}>
</soap:Body>
</soap:Envelope>"""
SEED_OPTOUT_CREATE_REQUEST = SEED_OPTOUT_REQUEST.format(op="SMSOptOut_Create", tn="6788651234").encode()
SEED_OPTOUT_DELETE_REQUEST = SEED_OPTOUT_REQUEST.format(op="SMSOptOut_Delete", tn="1234567890").encode()

_ENVELOPE = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
<soap:Body>
<{op}Response xmlns="http://api.myh2o.com/v20">
<{op}Result>
<Header>
{header}
</Header>
</{op}Result>
</{op}Response>
</soap:Body>
</soap:Envelope>"""


def _seed_response(op: str, header: str) -> bytes:
    return _ENVELOPE.format(op=op, header=header).encode()


def _seed_error(op: str, message: str) -> bytes:
    return _seed_response(op, f"""<Success>false</Success>
<Message>{message}</Message>
<Impersonated xsi:nil="true" />
<Error_Code>S2010</Error_Code>
<Error_Description>Invalid input received.</Error_Description>""")


SEED_CREATE_OK = _seed_response("SMSOptOut_Create", """<Success>true</Success>
<SessionKey>ASGJDHAGS%&^%&@!</SessionKey>
<Impersonated>false</Impersonated>""")
SEED_CREATE_INVALID_TN = _seed_error("SMSOptOut_Create", "'' is an invalid TN.")
SEED_CREATE_INVALID_TNS = _seed_error("SMSOptOut_Create", "', ' are invalid TNs.")
SEED_CREATE_ALREADY = _seed_error("SMSOptOut_Create", "'1234567890' is already in the opt-out list.")
SEED_CREATE_ALREADY_TWO = _seed_error("SMSOptOut_Create", "'1234567890, 1234567891' are already in the opt-out list.")
SEED_DELETE_OK = _seed_response("SMSOptOut_Delete", """<Success>true</Success>
<SessionKey>asdjlas^*&^*&@KJHASD</SessionKey>
<Impersonated>false</Impersonated>""")
SEED_DELETE_INVALID_TN = _seed_error("SMSOptOut_Delete", "'' is an invalid TN.")
SEED_DELETE_INVALID_TNS = _seed_error("SMSOptOut_Delete", "', ' are invalid TNs.")

SEED_CONFIG = RevIoConfig(username="[Rev.io user]", password=Secret("[Rev.io password]"),
                          client="[Rev.io Client Code]")
SEED_PHONE = "+18504700000"
CONFIG = RevIoConfig(username="u", password=Secret("p"), client="c", base_url="https://rev.example/")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def canon(el: Element, *, namespaces: bool = True) -> tuple:  # type: ignore[type-arg]
    """An element as (tag, attributes, text, children), insensitive to whitespace between tags."""
    tag = el.tag if namespaces else _local(el.tag)
    return (tag, dict(el.attrib), (el.text or "").strip(),
            tuple(canon(c, namespaces=namespaces) for c in el))


def response_shape(raw: bytes) -> tuple:  # type: ignore[type-arg]
    """``canon`` of a response with every SessionKey blanked (and the seed's bare ``&`` escaped)."""
    root = fromstring(re.sub(rb"&(?![a-z]+;)", b"&amp;", raw))
    for key in root.iter(f"{{{NS_V20}}}SessionKey"):
        key.text = "KEY"
    return canon(root)


def body_operation(request: HttpRequest) -> Element:
    root = fromstring(request.body)
    body = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
    assert body is not None and len(body) == 1
    return body[0]


def sms(text: str = "Test Message from Rev.io", phone: str = "+18504701234", **kw: object) -> OutboundSms:
    return OutboundSms(client_message_id="m-1", recipient=Recipient(phone=phone), text=text, **kw)  # type: ignore[arg-type]


def with_session(provider: RevIo, key: str) -> RevIo:
    provider.auth.session_key = key
    return provider


# --------------------------------------------------------------------------------------------
# Requests


def test_metadata_and_config_are_documented() -> None:
    assert (RevIo.name, RevIo.title, RevIo.max_batch, RevIo.max_segments, RevIo.can_split) == (
        "revio", "Rev.io", 1, 1, False)
    fields = dataclasses.fields(RevIoConfig)
    assert {f.name for f in fields} == {"base_url", "username", "password", "client", "customer_id",
                                        "sms_profile_id", "from_number", "namespace", "use_sessions"}
    assert all(f.metadata["doc"] for f in fields)
    assert next(f for f in fields if f.name == "password").metadata["secret"]
    assert (CONFIG.namespace, CONFIG.use_sessions, SEED_CONFIG.base_url) == (NS_V20, True, "https://api.rev.io")


def test_config_builds_from_environment_strings() -> None:
    problems: list[Problem] = []
    config = build(RevIoConfig, {"username": "u", "password": "p", "client": "c", "customer_id": "1001",
                                 "sms_profile_id": "1000", "use_sessions": "false"}, "routes.rev", problems)
    assert problems == []
    assert (config.customer_id, config.sms_profile_id, config.use_sessions, config.password) == (
        1001, 1000, False, Secret("p"))
    build(RevIoConfig, {"username": "u"}, "routes.rev", problems)
    assert [p.path for p in problems] == ["routes.rev.password", "routes.rev.client"]


def test_sms_send_matches_the_seed_sample() -> None:
    p = with_session(RevIo(CONFIG, route="rev"), "xyzabc123")
    req = p.auth.apply(p.build_send([p.prepare(sms(phone=SEED_PHONE))]))
    assert req.method == "POST" and req.url == "https://rev.example/v20/default.asmx"
    assert req.headers == {"Content-Type": "text/xml; charset=utf-8",
                           "SOAPAction": '"http://api.myh2o.com/v20/SMS_Send"'}
    assert req.body.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    op = body_operation(req)
    assert op.tag == "{http://api.myh2o.com/v20}SMS_Send"
    assert canon(op, namespaces=False) == canon(fromstring(SEED_SMS_SEND_REQUEST), namespaces=False)


def test_sms_send_in_the_seed_namespace_is_the_seed_sample() -> None:
    p = with_session(RevIo(dataclasses.replace(CONFIG, namespace=NS_LEGACY), route="rev"), "xyzabc123")
    req = p.auth.apply(p.build_send([p.prepare(sms(phone=SEED_PHONE))]))
    assert req.headers["SOAPAction"] == '"http://api.myh2o.com/SMS_Send"'
    assert canon(body_operation(req)) == canon(fromstring(SEED_SMS_SEND_REQUEST))


def test_optional_inputs_go_in_documented_order() -> None:
    p = with_session(RevIo(dataclasses.replace(CONFIG, customer_id=1001), route="rev"), "k")
    req = p.auth.apply(p.build_send([p.prepare(sms(options={"revio": {"sms_profile_id": 1000}}))]))
    request = body_operation(req)[0]
    assert [_local(c.tag) for c in request] == ["Session", "ToNumber", "Message", "CustomerID", "Profile"]
    assert canon(request[4], namespaces=False) == ("Profile", {}, "", (("SmsProfileID", {}, "1000", ()),))
    req = p.build_send([p.prepare(sms(sender="+18005550100", options={"revio": {"customer_id": "7"}}))])
    request = body_operation(req)[0]
    assert request.findtext(f"{{{NS_V20}}}CustomerID") == "7"
    assert request.findtext(f"{{{NS_V20}}}Profile/{{{NS_V20}}}FromNumber") == "8005550100"


def test_user_text_is_escaped_by_the_serializer() -> None:
    p = RevIo(dataclasses.replace(CONFIG, password=Secret("p<&>\"'")), route="rev")
    text = "</Message><ToNumber>9999999999</ToNumber> & \"quotes\" 'x'"
    req = p.auth.apply(p.build_send([p.prepare(sms(text))]))
    request = body_operation(req)[0]
    assert request.findtext(f"{{{NS_V20}}}Message") == text
    assert request.findall(f"{{{NS_V20}}}ToNumber")[0].text == "8504701234"
    assert len(request.findall(f"{{{NS_V20}}}ToNumber")) == 1
    assert request.findtext(f"{{{NS_V20}}}Credentials/{{{NS_V20}}}Password") == "p<&>\"'"
    with_session(p, "ASGJDHAGS%&^%&@!")
    assert body_operation(p.auth.apply(p.build_send([p.prepare(sms())])))[0].findtext(
        f"{{{NS_V20}}}Session/{{{NS_V20}}}SessionKey") == "ASGJDHAGS%&^%&@!"


def test_optout_requests_match_the_seed_samples() -> None:
    auth = credentials_element(SEED_CONFIG)
    create = build_optout_create(SEED_CONFIG, auth, ["6788651234"])
    delete = build_optout_delete(SEED_CONFIG, credentials_element(SEED_CONFIG), ["1234567890"])
    assert canon(fromstring(create.body)) == canon(fromstring(SEED_OPTOUT_CREATE_REQUEST))
    assert canon(fromstring(delete.body)) == canon(fromstring(SEED_OPTOUT_DELETE_REQUEST))
    assert create.headers["SOAPAction"] == '"http://api.myh2o.com/v20/SMSOptOut_Create"'
    assert delete.headers["SOAPAction"] == '"http://api.myh2o.com/v20/SMSOptOut_Delete"'
    # The provider's form: built without auth, E.164 normalised, auth applied like a send.
    p = RevIo(dataclasses.replace(SEED_CONFIG, use_sessions=False), route="rev")
    req = p.auth.apply(p.build_optout("create", ["+16788651234"]))
    assert canon(fromstring(req.body)) == canon(fromstring(SEED_OPTOUT_CREATE_REQUEST))
    assert p.auth.apply(req) == req   # auth goes in once
    with pytest.raises(errors.InvalidMessage):
        p.build_optout("delete", [])


def test_sessions_create_carries_credentials() -> None:
    req = build_sessions_create(SEED_CONFIG)
    assert req.headers["SOAPAction"] == '"http://api.myh2o.com/v20/Sessions_Create"'
    seed_credentials = fromstring(SEED_OPTOUT_CREATE_REQUEST).find(f".//{{{NS_V20}}}Credentials")
    assert seed_credentials is not None
    assert [canon(c) for c in body_operation(req).find(f"{{{NS_V20}}}Request")] == [canon(seed_credentials)]


# --------------------------------------------------------------------------------------------
# Checks before any call


@pytest.mark.parametrize("text,encoding,segments", [
    ("x" * 160, Encoding.GSM7, 1),
    ("ж" * 160, Encoding.UCS2, 3),           # characters, not segments: Rev.io takes it
    ("{" * 100, Encoding.GSM7, 2),
])
def test_up_to_160_characters_are_taken(text: str, encoding: Encoding, segments: int) -> None:
    prepared = RevIo(CONFIG, route="rev").prepare(sms(text))
    assert (prepared.to, prepared.parts, prepared.encoded.encoding, prepared.segments) == (
        "8504701234", (text,), encoding, segments)


@pytest.mark.parametrize("msg,field", [
    (sms(""), "text"),
    (sms("x" * 161), "text"),
    (sms("\U0001f600" * 81), "text"),       # 162 UTF-16 code units
    (sms("bell\x07"), "text"),              # XML 1.0 cannot carry it
    (sms(phone="+442071234567"), "recipient.phone"),
    (sms(phone="+1850470000"), "recipient.phone"),
    (OutboundSms("m", Recipient(device_kind="MDN", device_id="8504700000"), "hi"), "recipient"),
    (sms(sender="8005550100", options={"revio": {"sms_profile_id": 1}}), "sender"),
    (sms(options={"revio": {"sms_profile_id": 1, "from_number": "67312"}}), "sender"),
    (sms(options={"revio": {"sms_profile_id": "one"}}), "options.revio.sms_profile_id"),
    (sms(options={"revio": {"customer_id": True}}), "options.revio.customer_id"),
])
def test_invalid_messages_fail_before_any_call(msg: OutboundSms, field: str) -> None:
    with pytest.raises(errors.InvalidMessage) as info:
        RevIo(CONFIG, route="rev").prepare(msg)
    assert info.value.field == field


def test_profile_precedence_and_route_conflicts() -> None:
    p = RevIo(dataclasses.replace(CONFIG, sms_profile_id=1000), route="rev", sender="+18005550100")
    assert p.profile(sms()) == (1000, None)                                   # route: the profile id
    assert p.profile(sms(sender="67312")) == (None, "67312")                  # the record wins
    assert p.profile(sms(options={"revio": {"sms_profile_id": "5"}})) == (5, None)
    assert RevIo(CONFIG, route="rev", sender="+18005550100").profile(sms()) == (None, "8005550100")
    assert RevIo(CONFIG, route="rev").profile(sms()) == (None, None)          # Rev.io picks
    both = RevIo(dataclasses.replace(CONFIG, sms_profile_id=1, from_number="67312"), route="rev")
    with pytest.raises(errors.InvalidMessage, match="both set"):
        both.prepare(sms())
    assert both.prepare(sms(sender="67312")).sender == "67312"


def test_segment_policy_is_honoured() -> None:
    ucs2 = sms("ж" * 100)   # 2 UCS-2 segments
    with pytest.raises(errors.InvalidMessage, match="route sends one"):
        RevIo(CONFIG, route="rev", segment_policy="reject").prepare(ucs2)
    with pytest.raises(errors.InvalidMessage, match="cannot split"):
        RevIo(CONFIG, route="rev", segment_policy="split").prepare(ucs2)
    with pytest.raises(errors.InvalidMessage, match="allows 1"):
        RevIo(CONFIG, route="rev", max_segments=1).prepare(ucs2)
    assert RevIo(CONFIG, route="rev", segment_policy="reject").prepare(sms("x" * 160)).segments == 1


# --------------------------------------------------------------------------------------------
# Responses


def test_seed_sms_send_result_is_accepted_with_the_profile_used() -> None:
    enveloped = (b'<?xml version="1.0" encoding="utf-8"?>\n<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/'
                 b'soap/envelope/"><soap:Body><SMS_SendResponse xmlns="http://api.myh2o.com/v20">'
                 + SEED_SMS_SEND_RESULT + b"</SMS_SendResponse></soap:Body></soap:Envelope>")
    for body in (SEED_SMS_SEND_RESULT, enveloped):
        assert parse_sms_send(HttpResponse(200, body)) == Accepted(
            provider_message_id="3939323", details={"sms_profile_id": 1000, "from_number": "67312"})
    p = RevIo(CONFIG, route="rev")
    prepared = p.prepare(sms())
    assert p.parse_send([prepared], HttpResponse(200, SEED_SMS_SEND_RESULT))[0] == Accepted(
        provider_message_id="3939323", details={"sms_profile_id": 1000, "from_number": "67312"})


def test_seed_optout_successes_parse_despite_the_bare_ampersands() -> None:
    assert parse_optout("create", HttpResponse(200, SEED_CREATE_OK), ["6788651234"]) == OptOutResult(
        "create", ("6788651234",))
    assert parse_optout("delete", HttpResponse(200, SEED_DELETE_OK), ["1234567890"]).complete
    escaped = SEED_CREATE_OK.replace(b"%&^%&@!", b"%&amp;^%&amp;@!")
    assert parse_optout("create", HttpResponse(200, escaped)) == parse_optout(
        "create", HttpResponse(200, SEED_CREATE_OK))


@pytest.mark.parametrize("op,body,text", [
    ("create", SEED_CREATE_INVALID_TN, "'' is an invalid TN."),
    ("create", SEED_CREATE_INVALID_TNS, "', ' are invalid TNs."),
    ("delete", SEED_DELETE_INVALID_TN, "'' is an invalid TN."),
    ("delete", SEED_DELETE_INVALID_TNS, "', ' are invalid TNs."),
])
def test_seed_invalid_tn_samples_are_rejected(op: str, body: bytes, text: str) -> None:
    with pytest.raises(errors.Rejected) as info:
        parse_optout(op, HttpResponse(200, body), [""])  # type: ignore[arg-type]
    assert (info.value.code, info.value.text) == ("S2010", text)
    assert "Invalid input received." in info.value.message


def test_seed_already_listed_samples_are_idempotent_successes() -> None:
    one = parse_optout("create", HttpResponse(200, SEED_CREATE_ALREADY), ["1234567890"])
    assert (one.unchanged, one.pending, one.complete) == (("1234567890",), (), True)
    two = parse_optout("create", HttpResponse(200, SEED_CREATE_ALREADY_TWO),
                       ["1234567890", "1234567891", "5555550123"])
    # Rev.io refused the request over the listed two: the third still needs a call.
    assert (two.unchanged, two.pending, two.complete) == (("1234567890", "1234567891"), ("5555550123",), False)
    # "Already listed" is no success for a delete, and "not listed" none for a create.
    with pytest.raises(errors.Rejected):
        parse_optout("delete", HttpResponse(200, SEED_CREATE_ALREADY.replace(b"Create", b"Delete")))
    not_listed = _seed_error("SMSOptOut_Delete", "'1234567890' is not in the opt-out list.")
    assert parse_optout("delete", HttpResponse(200, not_listed), ["1234567890"]).complete
    with pytest.raises(errors.Rejected):
        parse_optout("create", HttpResponse(200, not_listed.replace(b"Delete", b"Create")))


def _header_only(op: str, header: str) -> HttpResponse:
    return HttpResponse(200, _seed_response(op, header))


@pytest.mark.parametrize("response,error,code", [
    (_header_only("SMS_Send", "<Success>false</Success><Message>Invalid Username, Password or Client. Login "
                              "failed.</Message>"), errors.AuthFailed, None),
    (_header_only("SMS_Send", "<Success>false</Success><Message>The session has expired.</Message>"),
     errors.AuthFailed, None),
    (_header_only("SMS_Send", "<Success>false</Success><Message>SMS to '8504700000' could not be sent"
                              "</Message><Error_Code>S3010</Error_Code>"), errors.Rejected, "S3010"),
    (_header_only("SMS_Send", "<Success>false</Success><Message>Message must be between 1 and 160 characters."
                              "</Message><Error_Code>S2010</Error_Code>"), errors.Rejected, "S2010"),
    (_header_only("SMS_Send", "<Success>false</Success>"), errors.Rejected, None),
    (HttpResponse(500, b"<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'><soap:Body>"
                       b"<soap:Fault><faultcode>soap:Server</faultcode><faultstring>boom</faultstring>"
                       b"</soap:Fault></soap:Body></soap:Envelope>"), errors.Retriable, "soap:Server"),
    (HttpResponse(500, b"<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'><soap:Body>"
                       b"<soap:Fault><faultcode>soap:Client</faultcode><faultstring>bad</faultstring>"
                       b"</soap:Fault></soap:Body></soap:Envelope>"), errors.Rejected, "soap:Client"),
    (HttpResponse(503, b"Service Unavailable"), errors.Retriable, None),
    (HttpResponse(401, b""), errors.AuthFailed, None),
    (HttpResponse(404, b"<html/>"), errors.Rejected, None),
    (HttpResponse(200, b"<html>maintenance</html>"), errors.InDoubt, None),
    (HttpResponse(200, b""), errors.InDoubt, None),
])
def test_send_errors_are_classified(response: HttpResponse, error: type, code: str | None) -> None:
    with pytest.raises(errors.ProviderError) as info:
        parse_sms_send(response)
    assert type(info.value) is error and info.value.code == code


@pytest.mark.parametrize("header, error", [
    # A per-message refusal mentioning "authorized" is a rejection: no re-login, no breaker count.
    ("<Message>SMS to '8504700000' could not be sent: number not authorized for SMS.</Message>", errors.Rejected),
    ("<Message>The destination is not authorized to receive messages.</Message>", errors.Rejected),
    ("<Message>Access denied for this destination.</Message>", errors.Rejected),
    ("<Message>'8504700000' is not authorized: session limit reached for this number.</Message>", errors.Rejected),
    # The code decides first: a coded refusal is never an auth failure, whatever its words.
    ("<Message>Session profile not found.</Message><Error_Code>S2010</Error_Code>", errors.Rejected),
    ("<Message>Password change required for profile 1000.</Message><Error_Code>S4001</Error_Code>",
     errors.Rejected),
    # Without a code, the caller's own login words (the simulator's messages) stay auth failures.
    ("<Message>No Credentials or Session were supplied.</Message>", errors.AuthFailed),
    ("<Message>Invalid Username, Password or Client. Login failed.</Message>", errors.AuthFailed),
    ("<Message>Invalid SessionKey: the session does not exist.</Message>", errors.AuthFailed),
    ("<Message>The session has expired. Create a new session with Sessions_Create.</Message>", errors.AuthFailed),
])
def test_send_refusals_classified_by_code_first(header: str, error: type) -> None:
    with pytest.raises(errors.ProviderError) as info:
        parse_sms_send(_header_only("SMS_Send", "<Success>false</Success>" + header))
    assert type(info.value) is error, info.value.message


def test_throttling_carries_retry_after() -> None:
    with pytest.raises(errors.Throttled) as info:
        parse_sms_send(HttpResponse(429, b"", {"retry-after": "7"}))
    assert info.value.retry_after == 7


# --------------------------------------------------------------------------------------------
# The session state machine


def _sessions_create_answer(header: str, extra: str = "") -> HttpResponse:
    body = _ENVELOPE.replace("</Header>", "</Header>\n" + extra).format(op="Sessions_Create", header=header)
    return HttpResponse(200, body.encode())


def test_session_login_then_session_in_each_request() -> None:
    auth = RevIoAuth(CONFIG)
    assert not auth.ready
    (login,) = list(auth.login_requests())
    assert body_operation(login)[0][0].tag == f"{{{NS_V20}}}Credentials"
    auth.handle_login(login, _sessions_create_answer("<Success>true</Success><SessionKey>k&amp;1</SessionKey>",
                                                     "<SessionKey>k&amp;1</SessionKey>"))
    assert auth.ready and auth.mode == "session" and auth.session_key == "k&1"
    req = auth.apply(build_request(CONFIG, "SMS_Send", []))
    assert canon(body_operation(req)[0][0], namespaces=False) == canon(session_element("k&1"))
    auth.invalidate()
    assert not auth.ready and auth.session_key is None


def test_refused_login_is_auth_failed_and_leaves_no_session() -> None:
    auth = RevIoAuth(CONFIG)
    (login,) = auth.login_requests()
    refused = _sessions_create_answer("<Success>false</Success><Message>Invalid Username, Password or Client."
                                      "</Message>")
    with pytest.raises(errors.AuthFailed):
        auth.handle_login(login, refused)
    # Any refusal of a login counts as a failed login (the sender's breaker must see it).
    with pytest.raises(errors.AuthFailed):
        parse_sessions_create(_sessions_create_answer("<Success>false</Success><Error_Code>X1</Error_Code>"))
    assert not auth.ready


@pytest.mark.parametrize("response", [
    HttpResponse(500, b"<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'><soap:Body>"
                      b"<soap:Fault><faultcode>soap:Client</faultcode><faultstring>Server did not recognize the "
                      b"value of HTTP Header SOAPAction</faultstring></soap:Fault></soap:Body></soap:Envelope>"),
    _sessions_create_answer("<Success>true</Success>"),
])
def test_no_session_to_be_had_falls_back_to_credentials(response: HttpResponse) -> None:
    auth = RevIoAuth(CONFIG)
    (login,) = auth.login_requests()
    auth.handle_login(login, response)
    assert auth.ready and auth.mode == "credentials" and auth.fallback_reason
    req = auth.apply(build_request(CONFIG, "SMS_Send", []))
    assert canon(body_operation(req)[0][0], namespaces=False) == canon(credentials_element(CONFIG))
    auth.invalidate()   # a refused request: try a session again next time
    assert not auth.ready


def test_transient_login_failures_stay_retriable() -> None:
    auth = RevIoAuth(CONFIG)
    (login,) = auth.login_requests()
    with pytest.raises(errors.Retriable):
        auth.handle_login(login, HttpResponse(503, b""))
    assert not auth.ready


def test_without_sessions_credentials_go_in_every_request() -> None:
    auth = RevIoAuth(dataclasses.replace(CONFIG, use_sessions=False))
    assert auth.ready and list(auth.login_requests()) == []
    req = auth.apply(build_request(CONFIG, "SMS_Send", []))
    assert body_operation(req)[0][0].tag == f"{{{NS_V20}}}Credentials"


# --------------------------------------------------------------------------------------------
# The simulator, over real HTTP on loopback


@contextlib.asynccontextmanager
async def running(sim: RevIoSimulator) -> AsyncIterator[str]:
    runner = await serve(sim, "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def call(session: aiohttp.ClientSession, request: HttpRequest) -> HttpResponse:
    async with session.request(request.method, request.url, headers=request.headers, data=request.body) as r:
        return HttpResponse(r.status, await r.read(), {k.lower(): v for k, v in r.headers.items()})


def sim_config(url: str, **kw: object) -> RevIoConfig:
    creds = RevIoSimulator.default_credentials()
    return RevIoConfig(username=creds["username"], password=Secret(creds["password"]), client=creds["client"],
                       base_url=url, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def sim() -> AsyncIterator[tuple[RevIoSimulator, str, aiohttp.ClientSession]]:
    s = RevIoSimulator()
    async with running(s) as url, aiohttp.ClientSession() as session:
        yield s, url, session


async def login(session: aiohttp.ClientSession, provider: RevIo) -> None:
    for request in provider.auth.login_requests():
        provider.auth.handle_login(request, await call(session, request))


async def test_sim_session_create_and_send(sim) -> None:  # type: ignore[no-untyped-def]
    s, url, session = sim
    p = RevIo(sim_config(url), route="rev")
    await login(session, p)
    assert p.auth.mode == "session" and p.auth.session_key in s.sessions
    req = p.auth.apply(p.build_send([p.prepare(sms("a <b> & c"))]))
    result = p.parse_send([p.prepare(sms())], await call(session, req))[0]
    assert isinstance(result, Accepted) and result.provider_message_id
    assert result.details == {"sms_profile_id": 1, "from_number": "8005550100"}   # the default profile
    assert s.sent[-1]["message"] == "a <b> & c" and s.sent[-1]["to"] == "8504701234"
    async with session.get(url + "/_sim/stats") as r:
        stats = await r.json()
    assert (stats["requests"], stats["messages"], stats["accepted"], stats["rejected"]) == (2, 1, 1, 0)


async def test_sim_refuses_a_wrong_password(sim) -> None:  # type: ignore[no-untyped-def]
    _, url, session = sim
    p = RevIo(dataclasses.replace(sim_config(url), password=Secret("wrong")), route="rev")
    with pytest.raises(errors.AuthFailed, match="Invalid Username, Password or Client"):
        await login(session, p)
    assert not p.auth.ready
    p = RevIo(dataclasses.replace(sim_config(url), password=Secret("wrong"), use_sessions=False), route="rev")
    with pytest.raises(errors.AuthFailed):
        p.parse_send([], await call(session, p.auth.apply(p.build_send([p.prepare(sms())]))))


async def test_sim_credentials_fallback_and_profiles(sim) -> None:  # type: ignore[no-untyped-def]
    s, url, session = sim
    p = RevIo(sim_config(url, use_sessions=False), route="rev")
    for msg, profile in ((sms(sender="67312"), {"sms_profile_id": 1000, "from_number": "67312"}),
                         (sms(options={"revio": {"sms_profile_id": 1000, "customer_id": 42}}),
                          {"sms_profile_id": 1000, "from_number": "67312"}),
                         (sms(sender="+18005550100"), {"sms_profile_id": 1, "from_number": "8005550100"})):
        response = await call(session, p.auth.apply(p.build_send([p.prepare(msg)])))
        assert b"<SessionKey>" in response.body   # credentials requests get a key echoed
        result = p.parse_send([p.prepare(msg)], response)[0]
        assert isinstance(result, Accepted) and result.details == profile
    assert s.sent[1]["customer_id"] == "42"
    unknown = sms(options={"revio": {"sms_profile_id": 77}})
    with pytest.raises(errors.Rejected) as info:
        p.parse_send([], await call(session, p.auth.apply(p.build_send([p.prepare(unknown)]))))
    assert (info.value.code, info.value.text) == ("S2010", "SMS Profile '77' was not found.")


def _raw_send(config: RevIoConfig, *fields: Element, ns: str | None = None) -> HttpRequest:
    return build_request(dataclasses.replace(config, namespace=ns or config.namespace), "SMS_Send", fields,
                         credentials_element(config))


def _el(tag: str, text: str | None = None, *children: Element) -> Element:
    el = Element(tag)
    el.text = text
    el.extend(children)
    return el


async def test_sim_validates_what_rev_io_validates(sim) -> None:  # type: ignore[no-untyped-def]
    s, url, session = sim
    config = sim_config(url)
    cases = [
        ((_el("ToNumber", "8504701234"), _el("Message", "hi"),
          _el("Profile", None, _el("SmsProfileID", "1"), _el("FromNumber", "8005550100"))),
         "SmsProfileID cannot be used with FromNumber."),
        ((_el("ToNumber", "8504701234"), _el("Message", "hi"), _el("SmsProfileID", "1"),
          _el("FromNumber", "8005550100")), "SmsProfileID cannot be used with FromNumber."),
        ((_el("ToNumber", "+18504701234"), _el("Message", "hi")), "'+18504701234' is an invalid ToNumber."),
        ((_el("ToNumber", "8504701234"), _el("Message", "x" * 161)), "Message must be between 1 and 160 characters."),
        ((_el("ToNumber", "8504701234"), _el("Message", "")), "Message must be between 1 and 160 characters."),
    ]
    for fields, text in cases:
        with pytest.raises(errors.Rejected) as info:
            parse_sms_send(await call(session, _raw_send(config, *fields)))
        assert (info.value.code, info.value.text) == ("S2010", text)
    with pytest.raises(errors.Rejected) as info:   # the simulators' rejected numbers
        parse_sms_send(await call(session, _raw_send(config, _el("ToNumber", "8505550666"), _el("Message", "hi"))))
    assert info.value.code == "S3010"
    assert (s.stats.messages, s.stats.accepted, s.stats.rejected) == (6, 0, 6)


async def test_sim_takes_the_seed_sample_in_the_seed_namespace(sim) -> None:  # type: ignore[no-untyped-def]
    s, url, session = sim
    p = RevIo(sim_config(url), route="rev")
    await login(session, p)
    assert p.auth.session_key
    body = (b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
            b'envelope/"><soap:Body>' + SEED_SMS_SEND_REQUEST.replace(
                b"xyzabc123", escape(p.auth.session_key).encode()) + b"</soap:Body></soap:Envelope>")
    # The seed's own ToNumber (8504700000) is accepted: no simulator trigger is a seed sample's.
    response = await call(session, HttpRequest("POST", url + "/v20/default.asmx", {
        "Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"http://api.myh2o.com/SMS_Send"'}, body))
    assert b'<SMS_SendResponse xmlns="http://api.myh2o.com/">' in response.body
    result = parse_sms_send(response)
    assert result.provider_message_id == str(s.sent[-1]["id"])
    assert (s.sent[-1]["to"], s.sent[-1]["message"]) == ("8504700000", "Test Message from Rev.io")


async def test_sim_opt_out_list_is_idempotent_for_the_adapter(sim) -> None:  # type: ignore[no-untyped-def]
    s, url, session = sim
    p = RevIo(sim_config(url), route="rev")
    await login(session, p)

    async def optout(op: str, numbers: list[str]) -> tuple[HttpResponse, OptOutResult]:
        response = await call(session, p.auth.apply(p.build_optout(op, numbers)))  # type: ignore[arg-type]
        return response, p.parse_optout(op, response, numbers)  # type: ignore[arg-type]

    def same_as_seed(response: HttpResponse, seed: bytes) -> bool:
        return response_shape(response.body) == response_shape(seed)

    response, first = await optout("create", ["+11234567890"])
    assert first == OptOutResult("create", ("1234567890",)) and same_as_seed(response, SEED_CREATE_OK)
    response, again = await optout("create", ["1234567890"])
    assert same_as_seed(response, SEED_CREATE_ALREADY)
    assert again.complete and again.unchanged == ("1234567890",)
    _, first = await optout("create", ["1234567891"])
    response, again = await optout("create", ["1234567890", "1234567891"])
    assert same_as_seed(response, SEED_CREATE_ALREADY_TWO) and again.complete
    _, mixed = await optout("create", ["1234567890", "6788651234"])   # all or nothing
    assert mixed.pending == ("6788651234",)
    async with session.get(url + "/_sim/revio/optouts") as r:
        assert await r.json() == {"optouts": ["1234567890", "1234567891"]}
    _, missing = await optout("delete", ["6788651234"])
    assert missing.complete and missing.unchanged == ("6788651234",)
    response, deleted = await optout("delete", ["1234567890", "1234567891"])
    assert deleted.complete and deleted.unchanged == () and same_as_seed(response, SEED_DELETE_OK)
    assert s.optouts == {}
    for op, numbers, seed in (("create", [""], SEED_CREATE_INVALID_TN),
                              ("create", ["", ""], SEED_CREATE_INVALID_TNS),
                              ("delete", [""], SEED_DELETE_INVALID_TN),
                              ("delete", ["", ""], SEED_DELETE_INVALID_TNS)):
        response = await call(session, p.auth.apply(p.build_optout(op, numbers)))  # type: ignore[arg-type]
        assert same_as_seed(response, seed)
        with pytest.raises(errors.Rejected) as info:
            p.parse_optout(op, response, numbers)  # type: ignore[arg-type]
        assert info.value.code == "S2010"


async def test_sim_sessions_expire(sim) -> None:  # type: ignore[no-untyped-def]
    _, _, session = sim
    now = [0.0]
    s = RevIoSimulator(session_ttl_s=60, clock=lambda: now[0])
    async with running(s) as url2:
        p = RevIo(sim_config(url2), route="rev")
        await login(session, p)
        now[0] = 61
        with pytest.raises(errors.AuthFailed, match="expired"):
            parse_sms_send(await call(session, p.auth.apply(p.build_send([p.prepare(sms())]))))
        with pytest.raises(errors.AuthFailed, match="does not exist"):   # and it is gone
            parse_sms_send(await call(session, p.auth.apply(p.build_send([p.prepare(sms())]))))


async def test_sim_soap_faults(sim) -> None:  # type: ignore[no-untyped-def]
    s, url, session = sim
    p = RevIo(sim_config(url, use_sessions=False), route="rev")
    good = p.auth.apply(p.build_send([p.prepare(sms())]))
    malformed = dataclasses.replace(good, body=good.body[:-20])
    response = await call(session, malformed)
    assert response.status == 500 and b"<faultcode>soap:Client</faultcode>" in response.body
    with pytest.raises(errors.Rejected, match="soap:Client"):
        parse_sms_send(response)
    unknown = HttpRequest("POST", good.url, {**good.headers, "SOAPAction": '"http://api.myh2o.com/v20/Nope"'},
                          good.body)
    with pytest.raises(errors.Rejected, match="did not recognize the value of HTTP Header SOAPAction"):
        parse_sms_send(await call(session, unknown))
    mismatch = HttpRequest("POST", good.url, {**good.headers, "SOAPAction": '"http://api.myh2o.com/v20/'
                                                                            'SMSOptOut_Create"'}, good.body)
    with pytest.raises(errors.Rejected):
        parse_optout("create", await call(session, mismatch))
    s.faults.update({"error_rate": 1.0})
    response = await call(session, good)
    assert response.status == 500
    with pytest.raises(errors.Retriable, match="soap:Server"):
        parse_sms_send(response)
    s.faults.update({"error_rate": 0.0, "throttle_rate": 1.0, "retry_after_s": 3})
    with pytest.raises(errors.Throttled) as info:
        parse_sms_send(await call(session, good))
    assert info.value.retry_after == 3
    s.faults.update({"throttle_rate": 0.0})
    assert isinstance(parse_sms_send(await call(session, good)), Accepted)
    assert dict(s.stats.injected) == {"error": 1, "throttle": 1}


# --------------------------------------------------------------------------------------------
# Driven by the real sender: refresh once, never loop on a refused login


@contextlib.asynccontextmanager
async def route_sender(provider: RevIo) -> AsyncIterator[RouteSender]:
    transport = HttpTransport(timeout_s=5)
    sender = RouteSender(provider, transport, retry=RetryPolicy(max_attempts=1))
    try:
        yield sender
    finally:
        await sender.aclose()
        await transport.aclose()


async def test_sender_refreshes_an_expired_session_once() -> None:
    now = [0.0]
    s = RevIoSimulator(session_ttl_s=60, clock=lambda: now[0])
    async with running(s) as url:
        p = RevIo(sim_config(url), route="rev")
        async with route_sender(p) as sender:
            first = await sender.send(p.prepare(sms()))
            key = p.auth.session_key
            now[0] = 61
            second = await sender.send(p.prepare(sms()))
    assert isinstance(first.result, Accepted) and isinstance(second.result, Accepted)
    assert p.auth.session_key != key and second.attempts == 1
    assert s.stats.requests == 5   # login, send, refused send, login, send


async def test_sender_does_not_loop_on_a_refused_login() -> None:
    s = RevIoSimulator()
    async with running(s) as url:
        p = RevIo(dataclasses.replace(sim_config(url), password=Secret("wrong")), route="rev")
        async with route_sender(p) as sender:
            first = await sender.send(p.prepare(sms()))
            second = await sender.send(p.prepare(sms()))
    assert type(first.result) is errors.AuthFailed and isinstance(second.result, errors.LoginLocked)
    assert s.stats.requests == 1


async def test_sender_with_credentials_in_each_request() -> None:
    s = RevIoSimulator()
    async with running(s) as url:
        p = RevIo(sim_config(url, use_sessions=False), route="rev")
        async with route_sender(p) as sender:
            outcomes = [await sender.send(p.prepare(sms(f"n{i}"))) for i in range(3)]
    assert all(isinstance(o.result, Accepted) for o in outcomes)
    assert s.stats.requests == 3 and len(s.sessions) == 1   # the echoed key is reused, not one per call
