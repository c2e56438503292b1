"""SMPP REST adapter: requests as seed 003 documents them; responses parsed into results and errors."""

from __future__ import annotations

import orjson
import pytest

from connector import errors
from connector.config import Secret
from connector.http import HttpResponse
from connector.providers.smpp_rest import SmppRest, SmppRestConfig
from connector.records import Accepted, OutboundSms, Recipient

CONFIG = SmppRestConfig(base_url="https://gw.example/", api_key=Secret("key-1"), channel="String")
P = SmppRest(CONFIG, route="smpp")

# The seed's sample response (XML, every field "String"), with one accepted message added.
SEED_XML_RESPONSE = b"""<SMPPMsgResponse xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns="http://schemas.datacontract.org/2004/07/digitaluapi.ServiceModel">
<ResponseStatus xmlns:d2p1="http://schemas.servicestack.net/types">
<d2p1:ErrorCode>String</d2p1:ErrorCode>
<d2p1:Message>String</d2p1:Message>
<d2p1:StackTrace>String</d2p1:StackTrace>
<d2p1:Errors>
<d2p1:ResponseError>
<d2p1:ErrorCode>String</d2p1:ErrorCode>
<d2p1:FieldName>String</d2p1:FieldName>
<d2p1:Message>String</d2p1:Message>
</d2p1:ResponseError>
</d2p1:Errors>
</ResponseStatus>
<error>String</error>
<messages>
<SMPPResponseMsg>
<accepted>false</accepted>
<apiMessageId>String</apiMessageId>
<error>String</error>
<msg>
<channel>String</channel>
<clientMessageId>m-1</clientMessageId>
<content>String</content>
<to>String</to>
</msg>
<to>String</to>
</SMPPResponseMsg>
<SMPPResponseMsg>
<accepted>true</accepted>
<apiMessageId>api-2</apiMessageId>
<error></error>
<msg><channel>String</channel><clientMessageId>m-2</clientMessageId><content>String</content><to>String</to></msg>
<to>String</to>
</SMPPResponseMsg>
</messages>
</SMPPMsgResponse>"""


def prepared(cid: str, phone: str = "+27821234567", text: str = "String"):  # type: ignore[no-untyped-def]
    return P.prepare(OutboundSms(client_message_id=cid, recipient=Recipient(phone=phone), text=text))


def test_json_request_has_the_declared_shape() -> None:
    req = P.build_send([prepared("m-1"), prepared("m-2")])
    assert req.method == "POST" and req.url == "https://gw.example/communication/message/smpp/sms"
    assert orjson.loads(req.body) == {"Messages": [
        {"channel": "String", "to": "27821234567", "content": "String", "clientMessageId": "m-1"},
        {"channel": "String", "to": "27821234567", "content": "String", "clientMessageId": "m-2"}]}
    assert P.auth.apply(req).headers["Authorization"] == "Bearer key-1"


def test_xml_request_matches_the_seed_sample() -> None:
    p = SmppRest(SmppRestConfig(base_url="https://gw.example", api_key=Secret("k"), channel="String", format="xml"),
                 route="x")
    req = p.build_send([p.prepare(OutboundSms(client_message_id="String", recipient=Recipient(phone="+12025550123"),
                                              text="String"))])
    assert req.headers["Content-Type"] == "application/xml"
    body = req.body.decode()
    assert body.startswith('<SendSMPPSmsRequest xmlns:i="http://www.w3.org/2001/XMLSchema-instance" '
                           'xmlns="http://schemas.datacontract.org/2004/07/digitaluapi.ServiceModel">')
    assert ("<Messages><SMPPMessage><channel>String</channel><clientMessageId>String</clientMessageId>"
            "<content>String</content><to>12025550123</to></SMPPMessage></Messages>") in body


def test_seed_xml_response_gives_partial_acceptance() -> None:
    batch = [prepared("m-1"), prepared("m-2")]
    results = P.parse_send(batch, HttpResponse(200, SEED_XML_RESPONSE, {"content-type": "application/xml"}))
    assert isinstance(results[0], errors.Rejected) and results[0].text == "String"
    assert results[1] == Accepted(provider_message_id="api-2")


def test_results_matched_by_client_message_id_not_position() -> None:
    batch = [prepared("a"), prepared("b")]
    body = orjson.dumps({"messages": [
        {"apiMessageId": "B", "accepted": True, "msg": {"clientMessageId": "b"}},
        {"apiMessageId": "A", "accepted": True, "msg": {"clientMessageId": "a"}}]})
    assert P.parse_send(batch, HttpResponse(200, body)) == [Accepted("A"), Accepted("B")]


def test_results_by_position_when_ids_are_omitted() -> None:
    batch = [prepared("a"), prepared("b")]
    body = orjson.dumps({"messages": [{"apiMessageId": "A", "accepted": True}, {"accepted": False, "error": "bad"}]})
    results = P.parse_send(batch, HttpResponse(200, body))
    assert results[0] == Accepted("A") and isinstance(results[1], errors.Rejected)


def test_missing_result_is_retriable() -> None:
    results = P.parse_send([prepared("a")], HttpResponse(200, b'{"messages": []}'))
    assert isinstance(results[0], errors.Retriable)


@pytest.mark.parametrize("status, body, headers, cls", [
    (401, b'{"ResponseStatus":{"ErrorCode":"Unauthorized","Message":"Invalid API key"}}', {}, errors.AuthFailed),
    (403, b"", {}, errors.AuthFailed),
    (400, b'{"ResponseStatus":{"ErrorCode":"ValidationException","Message":"bad","Errors":[{"FieldName":"Messages","Message":"empty"}]}}', {}, errors.Rejected),
    (429, b"", {"retry-after": "3"}, errors.Throttled),
    (500, b"oops", {}, errors.Retriable),
    (503, b"", {}, errors.Retriable),
])
def test_http_errors_are_classified(status: int, body: bytes, headers: dict[str, str], cls: type) -> None:
    with pytest.raises(cls) as err:
        P.parse_send([prepared("a")], HttpResponse(status, body, headers))
    if cls is errors.Throttled:
        assert err.value.retry_after == 3.0
    if status == 400:
        assert err.value.code == "ValidationException" and "Messages: empty" in (err.value.text or "")


def test_unreadable_200_is_retriable() -> None:
    with pytest.raises(errors.Retriable):
        P.parse_send([prepared("a")], HttpResponse(200, b"<html>"))


@pytest.mark.parametrize("phone", ["14155550100", "+1", "+0123456789"])
def test_bad_numbers_fail_before_any_call(phone: str) -> None:
    with pytest.raises(errors.InvalidMessage):
        prepared("a", phone=phone)


def test_segment_policy() -> None:
    long_text = "x" * 400
    assert prepared("a", text=long_text).segments == 3
    strict = SmppRest(CONFIG, route="strict", segment_policy="reject")
    with pytest.raises(errors.InvalidMessage, match="3 segments"):
        strict.prepare(OutboundSms(client_message_id="a", recipient=Recipient(phone="+14155550100"), text=long_text))
    capped = SmppRest(CONFIG, route="capped", max_segments=2)
    with pytest.raises(errors.InvalidMessage, match="allows 2"):
        capped.prepare(OutboundSms(client_message_id="a", recipient=Recipient(phone="+14155550100"), text=long_text))


def test_split_sends_parts_with_derived_ids() -> None:
    p = SmppRest(CONFIG, route="split", segment_policy="split")
    pr = p.prepare(OutboundSms(client_message_id="a", recipient=Recipient(phone="+14155550100"), text="y" * 200))
    body = orjson.loads(p.build_send([pr]).body)
    assert [m["clientMessageId"] for m in body["Messages"]] == ["a#1", "a#2"]
    ok = orjson.dumps({"messages": [{"apiMessageId": "1", "accepted": True, "msg": {"clientMessageId": "a#1"}},
                                    {"apiMessageId": "2", "accepted": True, "msg": {"clientMessageId": "a#2"}}]})
    assert p.parse_send([pr], HttpResponse(200, ok)) == [Accepted("1,2")]


# --------------------------------------------------------------------------------------------
# 2xx answers are judged by their body (issue 12). Shapes from seed 003's SMPPMsgResponse:
# top-level `error`, `ResponseStatus{ErrorCode, Message, Errors[]}`, `messages[]`.

SEED_XML_REQUEST_ERROR = b"""<SMPPMsgResponse xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns="http://schemas.datacontract.org/2004/07/digitaluapi.ServiceModel">
<ResponseStatus xmlns:d2p1="http://schemas.servicestack.net/types">
<d2p1:ErrorCode>InsufficientCredit</d2p1:ErrorCode>
<d2p1:Message>Account balance too low</d2p1:Message>
</ResponseStatus>
<error>Account balance too low</error>
<messages></messages>
</SMPPMsgResponse>"""


@pytest.mark.parametrize("status, body, cls, code, text", [
    (200, b'{"error": "Insufficient credit on account"}', errors.Rejected, None, "Insufficient credit on account"),
    (200, b'{"messages": [], "ResponseStatus": {"ErrorCode": "InsufficientCredit", "Message": "no credit"}}',
     errors.Rejected, "InsufficientCredit", "no credit"),
    (200, b'{"ResponseStatus": {"ErrorCode": "Unauthorized", "Message": "Invalid API key"}}',
     errors.AuthFailed, "Unauthorized", "Invalid API key"),
    (200, b'{"ResponseStatus": {"ErrorCode": "TooManyRequests", "Message": "slow down"}}',
     errors.Throttled, "TooManyRequests", "slow down"),
    (200, b'{"ResponseStatus": {"ErrorCode": "ServiceUnavailable", "Message": "SMSC link down"}}',
     errors.Retriable, "ServiceUnavailable", "SMSC link down"),
    (200, b'{"ResponseStatus": {"ErrorCode": "ValidationException", "Message": "bad",'
          b' "Errors": [{"FieldName": "Messages", "Message": "empty"}]}}',
     errors.Rejected, "ValidationException", "bad (Messages: empty)"),
    (200, b'{"error": "Rate limit exceeded"}', errors.Throttled, None, "Rate limit exceeded"),   # words: last resort
    (200, b'{"error": "Something odd"}', errors.Rejected, None, "Something odd"),               # unknown: permanent
    (202, b'{"error": "Account suspended"}', errors.Rejected, None, "Account suspended"),       # any 2xx
    (200, SEED_XML_REQUEST_ERROR, errors.Rejected, "InsufficientCredit", "Account balance too low"),
])
def test_a_2xx_refusing_the_request_keeps_the_providers_code_and_text(status: int, body: bytes, cls: type,
                                                                      code: str | None, text: str) -> None:
    with pytest.raises(errors.ProviderError) as err:
        P.parse_send([prepared("a"), prepared("b")], HttpResponse(status, body))
    assert type(err.value) is cls
    assert (err.value.code, err.value.text) == (code, text)


def test_a_result_without_the_msg_echo_is_matched_by_to() -> None:
    batch = [prepared("a", phone="+27821234567"), prepared("b", phone="+27829999999")]
    body = orjson.dumps({"messages": [
        {"apiMessageId": "A", "accepted": True, "msg": {"clientMessageId": "a"}},
        {"accepted": False, "error": "ESME_RINVDSTADR", "to": "27829999999"},     # no echo
        {"accepted": False, "error": "stray", "to": "27820000000"}]})               # matches nothing
    results = P.parse_send(batch, HttpResponse(200, body))
    assert results[0] == Accepted("A")
    assert isinstance(results[1], errors.Rejected) and results[1].text == "ESME_RINVDSTADR"


def test_an_unattributable_result_never_becomes_a_retry() -> None:
    # Two messages to one number, one echo-less refusal besides an echoed acceptance of another:
    # the refusal is someone's, so the unmatched message is in doubt, not resent.
    batch = [prepared("a"), prepared("b"), prepared("c")]
    body = orjson.dumps({"messages": [
        {"apiMessageId": "A", "accepted": True, "msg": {"clientMessageId": "a"}},
        {"accepted": False, "error": "refused"}]})
    results = P.parse_send(batch, HttpResponse(200, body))
    assert results[0] == Accepted("A")
    assert all(isinstance(r, errors.InDoubt) and not r.retriable for r in results[1:])


@pytest.mark.parametrize("entry, cls", [
    ("not an object", errors.InDoubt),
    (None, errors.InDoubt),
    ([1, 2], errors.InDoubt),
    ({"msg": "x", "accepted": "yes"}, errors.InDoubt),
    ({"msg": {"clientMessageId": "a"}, "accepted": "false", "error": "bad"}, errors.Rejected),
    ({"msg": {"clientMessageId": "a"}, "accepted": "true", "apiMessageId": 7}, Accepted),
    ({"msg": {"clientMessageId": "a"}, "accepted": None}, errors.InDoubt),
    ({"msg": {"clientMessageId": "a"}, "accepted": True, "error": "but also an error"}, errors.Rejected),
    ({"msg": {"clientMessageId": ["a"]}, "accepted": True}, Accepted),      # matched by position
])
def test_malformed_result_entries_are_classified_never_raised(entry: object, cls: type) -> None:
    [result] = P.parse_send([prepared("a")], HttpResponse(200, orjson.dumps({"messages": [entry]})))
    assert isinstance(result, cls), result


@pytest.mark.parametrize("body", [b'{"messages": "nope"}', b'{"messages": {"a": 1}}', b'[1, 2]', b'"x"'])
def test_malformed_bodies_are_classified_never_raised(body: bytes) -> None:
    try:
        results = P.parse_send([prepared("a")], HttpResponse(200, body))
    except errors.ProviderError as exc:
        results = [exc]
    assert [type(r) for r in results] == [errors.Retriable]
