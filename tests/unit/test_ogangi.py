"""Ogangi adapter (sans-IO) with the seed 004 samples, and its simulator over real HTTP on loopback.

Expected URLs and signatures are written out or computed here independently (``hmac`` directly),
not with the adapter's own helpers, so a bug in ``sign``/``signed_url`` cannot hide itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass

import aiohttp
import pytest
import yarl

from connector.config import Problem, Secret, build
from connector.errors import AuthFailed, InDoubt, InvalidMessage, ProviderError, Rejected, Retriable, Throttled
from connector.http import HttpRequest, HttpResponse
from connector.providers.ogangi import (
    DeliveryState,
    MoMessage,
    Ogangi,
    OgangiConfig,
    b64,
    check_envelope,
    map_status,
    mo_parameters,
    parse_fire_message,
    parse_get_message,
    parse_get_mo_messages,
    pin_digest,
    read_envelope,
    sign,
    signed_url,
    verify_pin,
)
from connector.records import Accepted, OutboundSms, Recipient
from connector.devtools.simulators.base import serve
from connector.devtools.simulators.ogangi import OgangiSimulator

BASE = "https://customer.ogangi.com/mmc"
CONFIG = OgangiConfig(base_url=BASE, public_key="PUBKEY", private_key=Secret("PRIVKEY"), instance_id="43")
SAMPLE_FROM = "19893653744"

# -- seed 004 sample payloads, verbatim ----------------------------------------------------------
SEND_SMS_SAMPLE = (
    b"<input>sendSMS</input> <status>OK</status> <description>Completed</description> <result> <messages> "
    b"<message> <id>-8174720676710228700</id> <carrier>carrierName</carrier> <from>19893653744</from> "
    b"<to>13056708084</to> <text>OGANGI TEST MESSAGE</text> <status>SENT_TO_CARRIER</status> "
    b"<statusDescription>Sent to Carrier</statusDescription> <encoding>UTF-8</encoding> "
    b"<date>2013-09-17T10:13:59.176-04:30</date> <timezone>America/Caracas</timezone> "
    b"<clientId>As223sdadq8d8287v5v</clientId> </message> </messages> </result>")
SEND_MT_SAMPLE = b"<input>sendMT</input> <status>OK</status> <description>Completed</description>"
PIN_SAMPLE = (b"<input>sendSMSPinMobileNumberConfirm</input> <status>OK</status> <description>Completed"
              b"</description> <result> <PinSMSConfirmation> <pin>846547</pin> </PinSMSConfirmation> </result>")
FIRE_GET_SAMPLE = b"<input>activateCampaign</input> <status>OK</status> <description>Completed</description>"
FIRE_POST_SAMPLE = (b"<input>fireMessage</input> <status>OK</status> <description>Completed</description> "
                    b"<result> <mo> <instanceId>43</instanceId> <mobileNumber>1200000001</mobileNumber> "
                    b"<text>Test qa API fireMessage.</text> </mo> </result>")
# Not well-formed as published: the list is closed by a second <MOMessageList>.
GET_MO_SAMPLE = (
    b"<input>getMOMessages</input> <status>OK</status> <description>Completed</description> <result> "
    b"<MOMessageList> <records>17</records> <MessageList> <MOMessage> <text>Test</text> "
    b"<from>58123456789</from> <to>19893143924</to> <encoding>UTF-8</encoding> <keyword>^OGANGI.*</keyword> "
    b"<carrier>Movistar</carrier> <sendDate>2014-10-13 10:30:51.922</sendDate> </MOMessage> </MessageList> "
    b"<MOMessageList> </result>")
# getMessage is not in the seed; this is the provider's documented answer (restapi:message).
GET_MESSAGE_SAMPLE = (
    b"<input>getMessage</input>\n<status>OK</status>\n<description>Completed</description>\n<result>\n"
    b"<message>\n<blastId>-2490820026197535447</blastId>\n<id>2758ebc5-1db5-4822-a5ed-36121e0674a6</id>\n"
    b"<type>PUSH</type>\n<from>Inbox</from>\n<to>18133210984</to>\n<subject>Inbox Push Ogangi</subject>\n"
    b"<text>Inbox Push Ogangi Message</text>\n<status>SENT</status>\n<statusDescription>Sent</statusDescription>\n"
    b"<date>2014-01-24T12:45:50.903-04:30</date>\n<timezone>America/Caracas</timezone>\n"
    b"<clientId>As223sdadq8d8287v5v</clientId>\n<appName>Inbox</appName>\n<platform>IOS</platform>\n"
    b"</message>\n</result>")
# The static part's documented failure values (Response XML Basics).
BAD_SIGNATURE_SAMPLE = (b"<input>sendSMS</input> <status>BAD_SIGNATURE</status> "
                        b"<description>Invalid signature, access denied</description>")
ERROR_SAMPLE = (b"<input>sendSMS</input> <status>ERROR</status> "
                b"<description>Internal error, please report this to support@messangi.com</description>")


def provider(**overrides: object) -> Ogangi:
    return Ogangi(dataclasses.replace(CONFIG, **overrides), route="ogangi", sender=SAMPLE_FROM)


def sms(text: str = "OGANGI TEST MESSAGE", phone: str = "+13056708084", *, cid: str = "cid-1",
        options: dict[str, object] | None = None, sender: str | None = None) -> OutboundSms:
    return OutboundSms(client_message_id=cid, recipient=Recipient(phone=phone), text=text, sender=sender,
                       options={"ogangi": options} if options is not None else {})


_PCHAR = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@")


def segment(value: str) -> str:
    """RFC 3986 path segment, written out here: pchar literal, every other byte %XX."""
    return "".join(ch if ch in _PCHAR else "".join(f"%{b:02X}" for b in ch.encode()) for ch in value)


def expected_url(call: str, values: list[str], key: str = "PRIVKEY") -> str:
    """As the provider's Java example: the signature over the values as they are, joined by '/'."""
    sig = hmac.new(key.encode(), "/".join(values).encode(), hashlib.sha256).hexdigest()
    return f"{BASE}/rest/api/{call}/" + "/".join(segment(v) for v in values) + f"/PUBKEY/{sig}"


def ok(body: bytes, status: int = 200, **headers: str) -> HttpResponse:
    return HttpResponse(status, body, {k.lower().replace("_", "-"): v for k, v in headers.items()})


def send_result(p: Ogangi, msg: OutboundSms, body: bytes, status: int = 200,
                **headers: str) -> Accepted | ProviderError:
    prepared = p.prepare(msg)
    return p.parse_send([prepared], ok(body, status, **headers))[0]


# -- signature -------------------------------------------------------------------------------------


def test_sign_is_hmac_sha256_lowercase_hex():
    assert sign("key", ["The quick brown fox jumps over the lazy dog"]) == \
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


def test_sign_joins_parameters_with_slash_as_in_the_providers_java_example():
    # login/8/peter/peterpassword signed with the example's private key
    assert sign("FBF3-4310-909C-C4BBC26F886F", ["8", "peter", "peterpassword"]) == \
        "954221dc7ba612b2633c0ff1e0f5c4058f2bf982902faada38c78c4f044f5ef4"


def test_sign_base64_is_standard_and_only_its_slash_encoded_in_the_url():
    assert sign("key", ["The quick brown fox jumps over the lazy dog"], encoding="base64") == \
        "97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg="
    url = signed_url("http://h", "x", ["a"], public_key="P", private_key="key", signature_encoding="base64")
    assert url.endswith("/P/" + sign("key", ["a"], encoding="base64").replace("/", "%2F"))


def test_signature_covers_the_values_as_they_are_and_the_url_keeps_pchar_literal():
    value = "b2s/IH4+fiBvaw=="                     # base64 with / + and =
    url = signed_url("http://h", "c", ["1", value], public_key="P", private_key="k")
    # The Java example: signHmacSHA256("1/b2s/IH4+fiBvaw==", key); only '/' must be encoded.
    assert url == "http://h/rest/api/c/1/b2s%2FIH4+fiBvaw==/P/" + hmac.new(
        b"k", b"1/b2s/IH4+fiBvaw==", hashlib.sha256).hexdigest()
    # Overrides: signed as sent, and every reserved character encoded.
    enc = signed_url("http://h", "c", ["1", value], public_key="P", private_key="k", signature_covers="encoded")
    assert enc == "http://h/rest/api/c/1/b2s%2FIH4+fiBvaw==/P/" + sign("k", ["1", "b2s%2FIH4+fiBvaw=="])
    strict = signed_url("http://h", "c", ["1", value], public_key="P", private_key="k", path_encoding="strict",
                        signature_covers="encoded")
    assert strict == "http://h/rest/api/c/1/b2s%2FIH4%2BfiBvaw%3D%3D/P/" + sign("k", ["1", "b2s%2FIH4%2BfiBvaw%3D%3D"])


@pytest.mark.parametrize("value, in_url", [
    ("a=b+c", "a=b+c"), ("x/y", "x%2Fy"), ("50%", "50%25"), ("a b", "a%20b"), ("^.*", "%5E.*"),
    ("ñ", "%C3%B1"), ("q?#", "q%3F%23"), ("!$&'()*,;:@", "!$&'()*,;:@"),
])
def test_path_segments_encode_only_what_must_be(value: str, in_url: str) -> None:
    url = signed_url("http://h", "c", [value], public_key="P", private_key="k")
    assert url == f"http://h/rest/api/c/{in_url}/P/" + hmac.new(b"k", value.encode(), hashlib.sha256).hexdigest()


def test_sign_rejects_unknown_encoding():
    with pytest.raises(ValueError):
        sign("k", ["a"], encoding="hex2")


# -- URLs of every documented call -----------------------------------------------------------------


def test_send_sms_url_is_the_documented_shape():
    p = provider(carrier="carrierName")
    req = p.build_send([p.prepare(sms())])
    assert req.method == "GET" and req.body == b""
    assert req.url == expected_url("tools/sendSMS", [
        "43", "carrierName", "19893653744", "MTMwNTY3MDgwODQ=", "T0dBTkdJIFRFU1QgTUVTU0FHRQ=="])


def test_send_mt_url_plain_number_null_carrier_and_flags():
    p = provider(send_method="sendMT")
    req = p.build_send([p.prepare(sms())])
    assert req.url == expected_url("sendMT", [
        "43", "19893653744", "null", "13056708084", "T0dBTkdJIFRFU1QgTUVTU0FHRQ=="])
    req = p.build_send([p.prepare(sms(options={"flags": "f1,f 2"}))])
    assert req.url == expected_url("sendMT", [
        "43", "19893653744", "null", "13056708084", "T0dBTkdJIFRFU1QgTUVTU0FHRQ==", "f1,f 2"])
    # config flags, and method chosen per message
    p = provider(mt_flags="BATCH")
    req = p.build_send([p.prepare(sms(options={"method": "sendMT"}))])
    assert req.url.split("/PUBKEY/")[0].endswith("/BATCH")


def test_pin_url_is_the_documented_shape():
    p = provider(carrier="Movistar")
    req = p.build_send([p.prepare(sms("Your code", options={"pin": {"length": 4}}))])
    assert req.url == expected_url("tools/sendSMSPinMobileNumberConfirm", [
        "43", "Movistar", "19893653744", "13056708084", "WW91ciBjb2Rl", "4"])
    req = p.build_send([p.prepare(sms("Your code", options={"method": "sendSMSPinMobileNumberConfirm"}))])
    assert req.url.split("/PUBKEY/")[0].endswith("/WW91ciBjb2Rl/6")


def test_fire_message_url():
    req = provider().build_fire_message("+1200000001", "Test qa API fireMessage.")
    assert req.url == expected_url("fireMessage", ["43", "1200000001", "VGVzdCBxYSBBUEkgZmlyZU1lc3NhZ2Uu"])
    with pytest.raises(ValueError):
        provider().build_fire_message("12ab", "x")


def test_get_mo_messages_url_with_and_without_filters():
    p = provider()
    assert p.build_get_mo_messages(1, 50).url == expected_url("tools/getMOMessages", ["43", "1", "50", "null"])
    req = p.build_get_mo_messages(2, 10, {"FROM": "13056708084", "order": "desc", "to": "19893143924",
                                          "keyword": "^OGANGI.*", "carrier": ["movistar", "digitel"]})
    assert req.url == expected_url("tools/getMOMessages", [
        "43", "2", "10", "from=13056708084&order=DESC&to=19893143924&keyword=^OGANGI.*"
        "&carrier=movistar,digitel"])
    with pytest.raises(ValueError):
        p.build_get_mo_messages(0, 10)


def test_get_message_url():
    req = provider().build_get_message("-8174720676710228700")
    assert req.url == expected_url("tools/getMessage", ["43", "-8174720676710228700"])
    assert req.headers == {"Accept": "application/xml"}


@pytest.mark.parametrize(("filters", "expected"), [
    (None, "null"), ({}, "null"), ({"ORDER": "asc"}, "order=ASC"),
    ({"Carrier": ["a", "b"]}, "carrier=a,b"), ({"to": "1,2"}, "to=1,2"),
])
def test_mo_parameters(filters, expected):
    assert mo_parameters(filters) == expected


@pytest.mark.parametrize("filters", [{"date": "x"}, {"from": "a&b"}, {"to": "a=b"}, {"order": "up"},
                                     {"carrier": ["a,b"]}, {"keyword": ""}])
def test_mo_parameters_refuses_what_the_syntax_cannot_say(filters):
    with pytest.raises(ValueError):
        mo_parameters(filters)


def test_overrides_urlsafe_base64_e164_numbers_and_base64_signature():
    p = provider(base64_alphabet="urlsafe", number_format="e164", signature_encoding="base64")
    req = p.build_send([p.prepare(sms("ok? ~>~ ok"))])
    segments = req.url.split("/rest/api/tools/sendSMS/")[1].split("/")
    assert segments[3] == b64("+13056708084", "urlsafe")
    assert segments[4] == "b2s_IH4-fiBvaw=="
    expected_sig = sign("PRIVKEY", segments[:5], encoding="base64")   # nothing encoded: values as sent
    assert segments[6] == expected_sig.replace("/", "%2F")


def test_missing_private_key_fails_as_auth_before_any_call():
    p = provider(private_key=None)
    with pytest.raises(AuthFailed):
        p.build_send([p.prepare(sms())])


# -- parsing the seed's answers --------------------------------------------------------------------


def _mo_page(text: str) -> str:
    return GET_MO_SAMPLE.decode().replace("<text>Test</text>", f"<text>{text}</text>")


@pytest.mark.parametrize("body, content_type", [
    # declared in the XML declaration only
    (('<?xml version="1.0" encoding="ISO-8859-1"?>' + _mo_page("Señal: ¿sí? ÑANDÚ")).encode("latin-1"), "text/xml"),
    # declared in the Content-Type only
    (_mo_page("Señal: ¿sí? ÑANDÚ").encode("latin-1"), "application/xml; charset=ISO-8859-1"),
    (_mo_page("Señal: ¿sí? ÑANDÚ").encode("cp1252"), 'text/xml; charset="windows-1252"'),
    # the Content-Type is wrong about the bytes: the declaration decides
    (('<?xml version="1.0" encoding="ISO-8859-1"?>' + _mo_page("Señal: ¿sí? ÑANDÚ")).encode("latin-1"),
     "text/xml; charset=UTF-8"),
    # nothing declared: UTF-8
    (_mo_page("Señal: ¿sí? ÑANDÚ").encode("utf-8"), "text/xml"),
    (("\ufeff" + _mo_page("Señal: ¿sí? ÑANDÚ")).encode("utf-16"), "text/xml"),
])
def test_answers_are_decoded_by_their_declared_charset(body: bytes, content_type: str) -> None:
    page = parse_get_mo_messages(ok(body, content_type=content_type))
    assert page.messages[0].text == "Señal: ¿sí? ÑANDÚ"




def test_send_sms_sample_is_accepted_with_the_message_id():
    result = send_result(provider(), sms(), SEND_SMS_SAMPLE)
    assert result == Accepted(provider_message_id="-8174720676710228700",
                              details={"method": "sendSMS", "status": "SENT_TO_CARRIER"})


def test_send_mt_sample_is_accepted_without_id():
    result = send_result(provider(send_method="sendMT"), sms(), SEND_MT_SAMPLE)
    assert result == Accepted(provider_message_id=None, details={"method": "sendMT"})


def test_pin_sample_keeps_only_a_keyed_hash_of_the_pin():
    msg = sms("Your code", cid="otp-7", options={"pin": True})
    result = send_result(provider(), msg, PIN_SAMPLE)
    assert isinstance(result, Accepted) and result.provider_message_id is None
    details = result.details or {}
    assert "846547" not in repr(details)
    assert details["pin_sha256"] == hmac.new(b"PRIVKEY", b"otp-7:846547", hashlib.sha256).hexdigest()
    assert details["pin_length"] == 6 and details["method"] == "sendSMSPinMobileNumberConfirm"
    assert verify_pin("PRIVKEY", "otp-7", "846547", details["pin_sha256"])
    assert not verify_pin("PRIVKEY", "otp-8", "846547", details["pin_sha256"])
    assert not verify_pin("PRIVKEY", "otp-7", "846548", details["pin_sha256"])
    # a dedicated verification key, when configured
    result = send_result(provider(pin_hash_key=Secret("VERIFY")), msg, PIN_SAMPLE)
    assert isinstance(result, Accepted)
    assert (result.details or {})["pin_sha256"] == pin_digest("VERIFY", "otp-7", "846547")


def test_fire_message_samples():
    assert parse_fire_message(ok(FIRE_POST_SAMPLE)).mobile_number == "1200000001"
    fired = parse_fire_message(ok(FIRE_POST_SAMPLE))
    assert (fired.instance_id, fired.text) == ("43", "Test qa API fireMessage.")
    assert parse_fire_message(ok(FIRE_GET_SAMPLE)).mobile_number is None


def test_get_mo_messages_sample_despite_its_broken_closing_tag():
    page = parse_get_mo_messages(ok(GET_MO_SAMPLE))
    assert page.total == 17
    assert page.messages == (MoMessage(text="Test", sender="58123456789", to="19893143924", encoding="UTF-8",
                                       keyword="^OGANGI.*", carrier="Movistar",
                                       send_date="2014-10-13 10:30:51.922"),)
    assert page.more_after(1, 10) and not page.more_after(2, 10)


def test_get_message_sample():
    status = parse_get_message(ok(GET_MESSAGE_SAMPLE))
    assert (status.id, status.status, status.state) == ("2758ebc5-1db5-4822-a5ed-36121e0674a6", "SENT",
                                                        DeliveryState.IN_FLIGHT)
    assert status.status_description == "Sent" and status.date == "2014-01-24T12:45:50.903-04:30"
    assert status.raw["clientId"] == "As223sdadq8d8287v5v" and not status.final
    # the <message> object of the sendSMS sample parses the same way
    assert parse_get_message(ok(SEND_SMS_SAMPLE)).id == "-8174720676710228700"


def test_envelope_with_a_root_element_and_declaration_is_read_too():
    env = read_envelope(b'<?xml version="1.0" encoding="UTF-8"?><response><input>getMessage</input>'
                        b"<status>OK</status><description>Completed</description></response>")
    assert env is not None and (env.input, env.status, env.result) == ("getMessage", "OK", None)


def test_lenient_parse_unescapes_and_keeps_cdata():
    env = read_envelope(b"<input>a &amp; b</input><status>OK</status><description><![CDATA[x<y]]></description>"
                        b"<result><x>&#233;<y/></result>")
    assert env is not None and (env.input, env.description) == ("a & b", "x<y")


def test_dtds_are_refused_not_expanded():
    body = (b'<!DOCTYPE d [<!ENTITY a "aaaa">]><input>x</input><status>OK</status>'
            b"<description>&a;</description>")
    assert read_envelope(body) is None


# -- classification --------------------------------------------------------------------------------


@pytest.mark.parametrize("http_status", [200, 401, 403])
def test_bad_signature_is_an_auth_failure(http_status):
    with pytest.raises(AuthFailed) as err:
        send_result(provider(), sms(), BAD_SIGNATURE_SAMPLE, http_status)
    assert err.value.code == "BAD_SIGNATURE" and err.value.text == "Invalid signature, access denied"


def test_documented_error_is_rejected_with_its_description():
    with pytest.raises(Rejected) as err:
        send_result(provider(), sms(), ERROR_SAMPLE)
    assert err.value.text == "Internal error, please report this to support@messangi.com"
    assert not err.value.retriable


@pytest.mark.parametrize(("description", "kind"), [
    ("Service temporarily unavailable", Retriable),
    ("Timeout talking to the carrier, try again later", Retriable),
    ("Rate limit exceeded", Throttled),
    ("Invalid 'from' parameter", Rejected),
])
def test_error_descriptions_that_say_transient_are_retriable(description, kind):
    body = f"<input>sendSMS</input><status>ERROR</status><description>{description}</description>".encode()
    with pytest.raises(kind) as err:
        send_result(provider(), sms(), body)
    assert type(err.value) is kind


def test_http_errors():
    with pytest.raises(Retriable):
        send_result(provider(), sms(), b"<html>down</html>", 503)
    with pytest.raises(Throttled) as err:
        send_result(provider(), sms(), b"", 429, retry_after="3")
    assert err.value.retry_after == 3.0
    with pytest.raises(Rejected):
        send_result(provider(), sms(), b"Bad Request", 400)


def test_unreadable_ok_answer_is_in_doubt_for_sends_and_retriable_for_reads():
    with pytest.raises(InDoubt):
        send_result(provider(), sms(), b"<html>proxy page</html>")
    with pytest.raises(InDoubt):
        send_result(provider(), sms(), b"<input>sendSMS</input><status>QUEUED</status>")
    with pytest.raises(Retriable) as err:
        parse_get_message(ok(b""))
    assert not isinstance(err.value, InDoubt)
    with pytest.raises(Rejected):
        parse_get_message(ok(SEND_MT_SAMPLE))


def test_send_sms_answer_with_a_failed_message_status_is_rejected():
    body = SEND_SMS_SAMPLE.replace(b"<status>SENT_TO_CARRIER</status>", b"<status>BAD_TO</status>").replace(
        b"Sent to Carrier", b"Message not sent. Invalid 'to' parameter.")
    result = send_result(provider(), sms(), body)
    assert isinstance(result, Rejected) and result.code == "BAD_TO"
    assert result.text == "Message not sent. Invalid 'to' parameter."


def test_check_envelope_returns_the_result_element():
    env = check_envelope(ok(PIN_SAMPLE), call="x")
    assert env.result is not None and env.result.findtext(".//pin") == "846547"


# -- status mapping --------------------------------------------------------------------------------

IN, DONE, UNDELIV, EXP, REJ = ("in-flight", "delivered", "undeliverable", "expired", "rejected")


@pytest.mark.parametrize(("status", "state"), [
    ("SENT", IN), ("SENT_TO_CARRIER", IN), ("DELIVERED_TO_CARRIER", IN), ("SENT_TO_DEVICE", IN),
    ("PENDING", IN), ("SENDING", IN), ("DELIVERED_TO_DEVICE", DONE), ("READ", DONE),
    ("UNDELIVERED", UNDELIV), ("UNREACHABLE", UNDELIV), ("EXPIRED", EXP), ("NOT_SENT", REJ),
    ("BAD_FROM", REJ), ("BAD_TO", REJ), ("BAD_ENCODING", REJ), ("NOT_ENOUGH_FUNDS", REJ),
    ("DELIVRD", DONE), ("UNDELIV", UNDELIV), ("REJECTD", REJ),
    ("SOMETHING_NEW", IN), ("", IN), (None, IN), (" delivered_to_device ", DONE),
])
def test_map_status(status, state):
    assert map_status(status).value == state
    assert map_status(status).final is (state != IN)


# -- prepare: what is refused before any call ------------------------------------------------------


@pytest.mark.parametrize(("options", "field"), [
    ({"colour": "red"}, "options.ogangi.colour"),
    ({"method": "sendPush"}, "options.ogangi.method"),
    ({"pin": {"length": 3}}, "options.ogangi.pin.length"),
    ({"pin": {"length": True}}, "options.ogangi.pin.length"),
    ({"pin": "yes"}, "options.ogangi.pin"),
    ({"pin": True, "method": "sendMT"}, "options.ogangi.pin"),
    ({"flags": "x"}, "options.ogangi.flags"),
    ({"method": "sendMT", "flags": 3}, "options.ogangi.flags"),
    ({"carrier": " "}, "options.ogangi.carrier"),
])
def test_bad_options_are_invalid_messages(options, field):
    with pytest.raises(InvalidMessage) as err:
        provider().prepare(sms(options=options))
    assert err.value.field == field


def test_a_from_code_is_required():
    p = Ogangi(CONFIG, route="r")
    with pytest.raises(InvalidMessage) as err:
        p.prepare(sms())
    assert err.value.field == "sender"
    assert p.prepare(sms(sender="777")).sender == "777"


def test_texts_are_sent_whole_never_split():
    long_text = "x" * 200
    assert provider().prepare(sms(long_text)).segments == 2      # whole: the provider concatenates
    p = Ogangi(CONFIG, route="r", sender="1", segment_policy="split")
    with pytest.raises(InvalidMessage):
        p.prepare(sms(long_text))


def test_ucs2_text_travels_as_utf8_base64():
    p = provider()
    prepared = p.prepare(sms("Hola ж €"))
    assert prepared.encoded.encoding.value == "ucs2"
    assert "/SG9sYSDQtiDigqw=/PUBKEY/" in p.build_send([prepared]).url


def test_config_builds_from_strings_like_the_environment_gives():
    problems: list[Problem] = []
    cfg = build(OgangiConfig, {"base_url": BASE, "public_key": "P", "private_key": "secret", "instance_id": "43",
                               "pin_length": "8", "signature_encoding": "base64"}, "routes.o", problems)
    assert problems == [] and cfg.pin_length == 8 and cfg.private_key.value == "secret"
    assert "secret" not in repr(cfg)
    build(OgangiConfig, {"base_url": BASE, "public_key": "P", "private_key": "s", "instance_id": "1",
                         "send_method": "sendPush", "pin_length": 2}, "routes.o", problems)
    assert len(problems) == 2


# -- the simulator, over real HTTP on loopback -----------------------------------------------------


@dataclass
class SimEnv:
    sim: OgangiSimulator
    base_url: str
    session: aiohttp.ClientSession
    now: list[float]

    def provider(self, **overrides: object) -> Ogangi:
        creds = OgangiSimulator.default_credentials()
        cfg = OgangiConfig(base_url=self.base_url, public_key=creds["public_key"],
                           private_key=Secret(creds["private_key"]), instance_id=creds["instance_id"])
        return Ogangi(dataclasses.replace(cfg, **overrides), route="sim", sender="55555")

    async def call(self, request: HttpRequest, *, requote: bool = False) -> HttpResponse:
        # encoded=True sends the URL byte for byte as signed; requote=True lets aiohttp re-quote it
        url = request.url if requote else yarl.URL(request.url, encoded=True)
        async with self.session.request(request.method, url, headers=request.headers) as resp:
            return HttpResponse(resp.status, await resp.read(), {k.lower(): v for k, v in resp.headers.items()})

    async def send(self, p: Ogangi, msg: OutboundSms, **kw: bool) -> Accepted | ProviderError:
        prepared = p.prepare(msg)
        return p.parse_send([prepared], await self.call(p.build_send([prepared]), **kw))[0]

    async def admin(self, method: str, path: str, json: object = None) -> object:
        async with self.session.request(method, self.base_url + path, json=json) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


@pytest.fixture
async def env():
    now = [1000.0]
    sim = OgangiSimulator(clock=lambda: now[0], carrier_delay_s=1.0, device_delay_s=5.0)
    runner = await serve(sim, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        yield SimEnv(sim, f"http://{host}:{port}", session, now)
    await runner.cleanup()


async def test_sim_send_then_status_advances(env):
    p = env.provider()
    accepted = await env.send(p, sms("hello ogangi"))
    assert isinstance(accepted, Accepted) and accepted.provider_message_id
    assert accepted.details == {"method": "sendSMS", "status": "SENT"}
    states = []
    for advance in (0.0, 1.5, 4.0):
        env.now[0] += advance
        status = p.parse_get_message(await env.call(p.build_get_message(accepted.provider_message_id)))
        states.append((status.status, status.state))
        assert status.id == accepted.provider_message_id and status.raw["to"] == "13056708084"
    assert states == [("SENT", DeliveryState.IN_FLIGHT), ("SENT_TO_CARRIER", DeliveryState.IN_FLIGHT),
                      ("DELIVERED_TO_DEVICE", DeliveryState.DELIVERED)]
    stats = env.sim.stats
    assert (stats.messages, stats.accepted, stats.rejected, len(stats.sends_by_id)) == (1, 1, 0, 1)


async def test_sim_accepts_urls_that_the_http_client_requoted(env):
    p = env.provider()
    # base64 with '/', '+' and '=': aiohttp turns %3D into '=' on the way, the signature still holds
    assert b64("ok? ~>~ ok") == "b2s/IH4+fiBvaw=="
    for requote in (False, True):
        result = await env.send(p, sms("ok? ~>~ ok", cid=f"c{requote}"), requote=requote)
        assert isinstance(result, Accepted), result
    assert [m.text for m in env.sim.messages.values()] == ["ok? ~>~ ok"] * 2
    assert env.sim.stats.sends_by_id.most_common(1)[0][1] == 2     # the duplicate is visible


async def test_sim_through_the_connectors_transport(env):
    from connector.transport import HttpTransport

    p = env.provider()
    transport = HttpTransport(timeout_s=5)
    try:
        prepared = p.prepare(sms("Ünïcode ж text ~>"))
        result = p.parse_send([prepared], await transport.send(p.build_send([prepared])))
    finally:
        await transport.aclose()
    assert isinstance(result[0], Accepted)
    assert next(iter(env.sim.messages.values())).text == "Ünïcode ж text ~>"


async def test_sim_refuses_bad_signatures(env):
    with pytest.raises(AuthFailed):
        await env.send(env.provider(private_key=Secret("wrong")), sms())
    with pytest.raises(AuthFailed):
        await env.send(env.provider(public_key="someone-else"), sms())
    p = env.provider()
    request = p.build_send([p.prepare(sms("pay 10"))])
    tampered = request.url.replace(b64("pay 10").replace("=", "%3D"), b64("pay 99").replace("=", "%3D"))
    assert tampered != request.url
    response = await env.call(dataclasses.replace(request, url=tampered))
    assert response.status == 200
    assert b"<status>BAD_SIGNATURE</status>" in response.body
    assert b"<description>Invalid signature, access denied</description>" in response.body
    assert env.sim.messages == {} and env.sim.stats.messages == 0


async def test_sim_signature_overrides_mirror_the_adapters(env):
    env.sim.credentials.update(signature_encoding="base64", signature_covers="encoded", path_encoding="strict")
    overrides = {"signature_encoding": "base64", "signature_covers": "encoded", "path_encoding": "strict"}
    assert isinstance(await env.send(env.provider(**overrides), sms("a+b/c=?")), Accepted)
    with pytest.raises(AuthFailed):
        await env.send(env.provider(), sms("a+b/c=?"))


async def test_sim_verifies_the_values_whether_the_path_arrives_raw_or_percent_encoded(env):
    # As the Java example signs: the values as they are. '=' and '+' travel literally; a proxy or
    # client that percent-encodes them (or leaves them) changes nothing for the check.
    p = env.provider()
    request = p.build_send([p.prepare(sms("ok? ~>~ ok", cid="raw"))])
    assert "/b2s%2FIH4+fiBvaw==/" in request.url
    head, sig = request.url.rsplit("/", 1)
    for url in (request.url, head.replace("=", "%3D").replace("+", "%2B") + "/" + sig):
        response = await env.call(dataclasses.replace(request, url=url))
        assert b"<status>OK</status>" in response.body, (url, response.body)
    assert [m.text for m in env.sim.messages.values()] == ["ok? ~>~ ok"] * 2


async def test_sim_rejected_numbers(env):
    p = env.provider()
    result = await env.send(p, sms(phone="+13050000666"))
    assert isinstance(result, Rejected) and result.code == "BAD_TO"
    # sendMT answers carry no message: the refusal is an ERROR envelope
    with pytest.raises(Rejected) as err:
        await env.send(env.provider(send_method="sendMT"), sms(phone="+13050000666"))
    assert err.value.text == "Message not sent. Invalid 'to' parameter."
    assert (env.sim.stats.accepted, env.sim.stats.rejected) == (0, 2)
    assert [m.final for m in env.sim.messages.values()] == ["BAD_TO"]


async def test_sim_late_undelivered(env):
    p = env.provider()
    accepted = await env.send(p, sms(phone="+13055559999"))
    assert isinstance(accepted, Accepted)
    env.now[0] += 10
    status = p.parse_get_message(await env.call(p.build_get_message(accepted.provider_message_id)))
    assert (status.status, status.state) == ("UNDELIVERED", DeliveryState.UNDELIVERABLE)


async def test_sim_send_mt_with_flags(env):
    p = env.provider(send_method="sendMT")
    result = await env.send(p, sms(options={"flags": "job-7"}))
    assert result == Accepted(provider_message_id=None, details={"method": "sendMT"})
    listed = await env.admin("GET", "/_sim/ogangi/messages")
    assert [(m["method"], m["flags"], m["to"]) for m in listed] == [("sendMT", "job-7", "13056708084")]


async def test_sim_pin_send_keeps_only_the_hash(env):
    p = env.provider()
    prepared = p.prepare(sms("Your code", cid="otp-1", options={"pin": {"length": 8}}))
    response = await env.call(p.build_send([prepared]))
    pin = read_envelope(response.body).result.findtext(".//pin")   # type: ignore[union-attr]
    assert pin is not None and len(pin) == 8 and pin.isdigit()
    result = p.parse_send([prepared], response)[0]
    assert isinstance(result, Accepted)
    assert pin not in repr(result)
    assert verify_pin("sim-ogangi-private", "otp-1", pin, (result.details or {})["pin_sha256"])
    assert pin not in repr(list(env.sim.messages.values()))


async def test_sim_fire_message_then_get_mo_pages(env):
    p = env.provider()
    for i in range(3):
        fired = p.parse_fire_message(await env.call(p.build_fire_message(f"+5812345678{i}", f"OGANGI hi {i}")))
        assert (fired.mobile_number, fired.text) == (f"5812345678{i}", f"OGANGI hi {i}")
    assert await env.admin("POST", "/_sim/ogangi/mo", [
        {"from": "584140000001", "text": "STOP", "carrier": "Movistar"},
        {"from": "584140000002", "text": "ogangi lower", "carrier": "Digitel", "to": "777"},
    ]) == {"added": 2, "total": 5}

    async def page(n: int, per: int, filters: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        return p.parse_get_mo_messages(await env.call(p.build_get_mo_messages(n, per, filters)))

    first, third, beyond = await page(1, 2), await page(3, 2), await page(4, 2)
    assert first.total == third.total == beyond.total == 5
    assert [m.text for m in first.messages] == ["OGANGI hi 0", "OGANGI hi 1"]
    assert [m.sender for m in third.messages] == ["584140000002"] and beyond.messages == ()
    assert first.more_after(1, 2) and not third.more_after(3, 2)
    assert first.messages[0].to == OgangiSimulator.short_code and first.messages[0].keyword == "^OGANGI.*"
    assert [m.text for m in (await page(1, 10, {"keyword": "^OGANGI.*", "order": "DESC"})).messages] == \
        ["OGANGI hi 2", "OGANGI hi 1", "OGANGI hi 0"]
    movistar = await page(1, 10, {"carrier": "movistar,digitel", "from": ["584140000001"]})
    assert [m.text for m in movistar.messages] == ["STOP"] and movistar.total == 1


async def test_sim_validates_parameters(env):
    p = env.provider()
    with pytest.raises(Rejected) as err:
        await env.send(env.provider(instance_id="9"), sms())
    assert "instance" in (err.value.text or "")
    creds = OgangiSimulator.default_credentials()

    def raw(call: str, params: list[str]) -> HttpRequest:
        return HttpRequest("GET", signed_url(env.base_url, call, params, public_key=creds["public_key"],
                                             private_key=creds["private_key"]))

    for call, params, needle in [
        ("tools/sendSMS", ["1001", "null", "55555", "not base64!", b64("x")], "mobileNumber"),
        ("tools/sendSMS", ["1001", "null", "55555", b64("13056708084"), "%%%"], "text"),
        ("tools/sendSMSPinMobileNumberConfirm", ["1001", "null", "5", "13056708084", b64("x"), "99"], "PIN"),
        ("tools/getMOMessages", ["1001", "0", "10", "null"], "page"),
        ("tools/getMOMessages", ["1001", "1", "10", "colour=red"], "parameter"),
        ("tools/getMOMessages", ["1001", "1", "10", "keyword=("], "KEYWORD"),
        ("fireMessage", ["1001", "+58", b64("x")], "mobile"),
    ]:
        with pytest.raises(Rejected) as err:
            check_envelope(await env.call(raw(call, params)), call=call)
        assert needle in (err.value.text or ""), (call, err.value.text)
    with pytest.raises(Rejected):
        p.parse_get_message(await env.call(p.build_get_message("12345")))
    response = await env.call(raw("tools/sendSMS", ["1001", "null"]))
    assert response.status == 404
    assert env.sim.stats.messages == 0


async def test_sim_faults(env):
    p = env.provider()
    await env.admin("PUT", "/_sim/faults", {"error_rate": 1.0})
    with pytest.raises(Retriable):
        await env.send(p, sms())
    await env.admin("PUT", "/_sim/faults", {"error_rate": 0.0, "throttle_rate": 1.0, "retry_after_s": 7})
    with pytest.raises(Throttled) as err:
        p.parse_get_message(await env.call(p.build_get_message("1")))
    assert err.value.retry_after == 7.0
    stats = await env.admin("GET", "/_sim/stats")
    assert stats["injected"] == {"error": 1, "throttle": 1} and stats["messages"] == 0   # type: ignore[index]
    await env.admin("POST", "/_sim/reset")
    assert isinstance(await env.send(p, sms()), Accepted)


async def test_sim_reset_and_delays(env):
    p = env.provider()
    accepted = await env.send(p, sms())
    assert await env.admin("PUT", "/_sim/ogangi/delays", {"carrier_delay_s": 0, "device_delay_s": 0}) == \
        {"carrier_delay_s": 0.0, "device_delay_s": 0.0}
    status = p.parse_get_message(await env.call(p.build_get_message(accepted.provider_message_id)))
    assert status.state is DeliveryState.DELIVERED
    await env.admin("POST", "/_sim/reset")
    assert env.sim.messages == {} and env.sim.mo == []
