"""Unit tests of the ThingSpace adapter (sans-IO, the seeds' own samples) and its simulator
(real HTTP on loopback).

Seeds 000 and 002 (PROVIDERS.md §1). Seed 000 shows the SOAP form of the send; the REST JSON the
adapter builds is that sample with camelCase names, which ``test_send_request_is_seed_000_sample``
derives from the SOAP sample itself. Simulator tests drive the simulator with requests the adapter
builds, so adapter and simulator are checked against each other as well as against the seeds.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import defusedxml.ElementTree as SafeET
import orjson
import pytest
from aiohttp import web

from connector.config import Secret
from connector.encoding import Encoding
from connector.errors import (
    AuthFailed,
    InDoubt,
    InvalidMessage,
    InvalidRecord,
    LoginLocked,
    Rejected,
    Retriable,
    Throttled,
)
from connector.http import HttpRequest, HttpResponse
from connector.providers import thingspace as ts
from connector.providers.thingspace import (
    BearerRefused,
    MoMessage,
    SessionRefused,
    ThingSpace,
    ThingSpaceAuth,
    ThingSpaceConfig,
)
from connector.records import Accepted, OutboundSms, Recipient
from connector.devtools.simulators import thingspace as sim_mod
from connector.devtools.simulators.base import serve
from connector.devtools.simulators.thingspace import ThingSpaceSimulator

ACCOUNT = "0000123456-00001"
CONFIG = ThingSpaceConfig(client_id="app-key", client_secret=Secret("app-secret"), username="uws-user",
                          password=Secret("uws-pass"), account_name=ACCOUNT)
BASE = "https://thingspace.verizon.com/api"

# Seed 000's samples, verbatim (the "Delivered" sample lacks </s:Envelope> in the seed too).
SEED_000_SEND_REQUEST = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:v2="ht'
    'tp://nphase.com/unifiedwebservice/v2" xmlns:nph="http://schemas.datacontract.org/2004/07'
    '/NPhase.UnifiedWebService.APIs.v2.Contract.EnhancedConnectivityService" xmlns:nph1="http'
    '://schemas.datacontract.org/2004/07/NPhase.UnifiedWebService.APIs.v2.Contract.Common"> <'
    'soapenv:Header> <token xmlns="http://nphase.com/unifiedwebservice/v2">${#Project#Token}<'
    '/token> </soapenv:Header> <soapenv:Body> <v2:SendSmsMessage> <v2:Input> <nph:Devices> <n'
    'ph1:DeviceIdentifier> <nph1:Kind>MDN</nph1:Kind> <nph1:Identifier>7022895555</nph1:Ident'
    'ifier> </nph1:DeviceIdentifier> </nph:Devices> <nph:DataEncoding>7-bit</nph:DataEncoding'
    '> <nph:SmsMessage>Status</nph:SmsMessage> </v2:Input> </v2:SendSmsMessage> </soapenv:Bod'
    'y> </soapenv:Envelope>'
)

SEED_000_SEND_RESPONSE = (
    '<SendSmsMessageResponse xmlns="http://nphase.com/unifiedwebservice/v2"> <Output xmlns:i='
    '"http://www.w3.org/2001/XMLSchema-instance" xmlns:a="http://schemas.datacontract.org/200'
    '4/07/NPhase.UnifiedWebService.APIs.v2.Contract.EnhancedConnectivityService"> <a:RequestI'
    'd>2c90bd28-ece4-42ef-9f02-7e3bd4fbff33</a:RequestId> </Output> </SendSmsMessageResponse>'
)

SEED_000_CB_PER_DEVICE = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"> <s:Body xmlns:xsi="http'
    '://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"> <Ca'
    'llbackRequest xmlns="http://nphase.com/unifiedwebservice/v2"> <Username/> <Password/> <R'
    'equestId>2ca8790f-7925-47e5-8367-dc5111ef92c4</RequestId> <Device> <Kind>meid</Kind> <Id'
    'entifier>A100001F702731</Identifier> </Device> <Data> <Data> <CarrierService xsi:nil="tr'
    'ue"/> <ExternalProvisioningChange xsi:nil="true"/> <PromoChange xsi:nil="true"/> <SMSDel'
    'ivery xsi:nil="true"/> <PRLInformation xsi:nil="true"/> <GoToState xsi:nil="true"/> <Fau'
    'lt xsi:nil="true"/> <Comment>SendSmsMessage,Performed action on device.</Comment> <Summa'
    'ry xsi:nil="true"/> <Status xsi:nil="true"/> <CallbackCount>1</CallbackCount> <MaxCallba'
    'ckThreshold>4</MaxCallbackThreshold> </Data> </Data> </CallbackRequest> </s:Body> </s:En'
    'velope>'
)

SEED_000_CB_REQUEST_COMPLETE = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"> <s:Body xmlns:xsi="http'
    '://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"> <Ca'
    'llbackRequest xmlns="http://nphase.com/unifiedwebservice/v2"> <Username/> <Password/> <R'
    'equestId>2ca8790f-7925-47e5-8367-dc5111ef92c4</RequestId> <Data> <Data> <CarrierService '
    'xsi:nil="true"/> <ExternalProvisioningChange xsi:nil="true"/> <PromoChange xsi:nil="true'
    '"/> <SMSDelivery xsi:nil="true"/> <PRLInformation xsi:nil="true"/> <GoToState xsi:nil="t'
    'rue"/> <Fault xsi:nil="true"/> <Comment>SendSmsMessage,Request Completed Processing</Com'
    'ment> <Summary> <NumDevicesRequested>5</NumDevicesRequested> </Summary> <Status xsi:nil='
    '"true"/> <CallbackCount>1</CallbackCount> <MaxCallbackThreshold>4</MaxCallbackThreshold>'
    ' </Data> </Data> </CallbackRequest> </s:Body> </s:Envelope>'
)

SEED_000_CB_DELIVERED = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"> <s:Body xmlns:xsi="http'
    '://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"> <Ca'
    'llbackRequest xmlns="http://nphase.com/unifiedwebservice/v2"> <Username/> <Password/> <R'
    'equestId>be1f03b8-64ec-4e59-a778-20536016beb5</RequestId> <Device> <Kind>MDN</Kind> <Ide'
    'ntifier>8589268379</Identifier> </Device> <Data> <Data> <CarrierService xsi:nil="true"/>'
    ' <ExternalProvisioningChange xsi:nil="true"/> <PromoChange xsi:nil="true"/> <SMSDelivery'
    '> <Confirmation>Delivered</Confirmation> <Fault xsi:nil="true"/> </SMSDelivery> <PRLInfo'
    'rmation xsi:nil="true"/> <GoToState xsi:nil="true"/> <Fault xsi:nil="true"/> <Comment xs'
    'i:nil="true"/> <Summary xsi:nil="true"/> <Status xsi:nil="true"/> <CallbackCount>1</Call'
    'backCount> <MaxCallbackThreshold>4</MaxCallbackThreshold> </Data> </Data> </CallbackRequ'
    'est> </s:Body>'
)

SEED_000_CB_UNDELIVERABLE = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"> <s:Body xmlns:xsi="http'
    '://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"> <Ca'
    'llbackRequest xmlns="http://nphase.com/unifiedwebservice/v2"> <Username/> <Password/> <R'
    'equestId>be1f03b8-64ec-4e59-a778-20536016beb5</RequestId> <Device> <Kind>MDN</Kind> <Ide'
    'ntifier>8589268379</Identifier> </Device> <Data> <Data> <CarrierService xsi:nil="true"/>'
    ' <ExternalProvisioningChange xsi:nil="true"/> <PromoChange xsi:nil="true"/> <SMSDelivery'
    '> <Confirmation>Unceliverable</Confirmation> <Fault xsi:nil="true"/> </SMSDelivery> <PRL'
    'Information xsi:nil="true"/> <GoToState xsi:nil="true"/> <Fault xsi:nil="true"/> <Commen'
    't xsi:nil="true"/> <Summary xsi:nil="true"/> <Status xsi:nil="true"/> <CallbackCount>1</'
    'CallbackCount> <MaxCallbackThreshold>4</MaxCallbackThreshold> </Data> </Data> </Callback'
    'Request> </s:Body> </s:Envelope>'
)

SEED_000_CB_EXPIRED = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"> <s:Body xmlns:xsi="http'
    '://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"> <Ca'
    'llbackRequest xmlns="http://nphase.com/unifiedwebservice/v2"> <Username/> <Password/> <R'
    'equestId>be1f03b8-64ec-4e59-a778-20536016beb5</RequestId> <Device> <Kind>MDN</Kind> <Ide'
    'ntifier>8589268379</Identifier> </Device> <Data> <Data> <CarrierService xsi:nil="true"/>'
    ' <ExternalProvisioningChange xsi:nil="true"/> <PromoChange xsi:nil="true"/> <SMSDelivery'
    '> <Confirmation>Expired</Confirmation> <Fault xsi:nil="true"/> </SMSDelivery> <PRLInform'
    'ation xsi:nil="true"/> <GoToState xsi:nil="true"/> <Fault xsi:nil="true"/> <Comment xsi:'
    'nil="true"/> <Summary xsi:nil="true"/> <Status xsi:nil="true"/> <CallbackCount>1</Callba'
    'ckCount> <MaxCallbackThreshold>4</MaxCallbackThreshold> </Data> </Data> </CallbackReques'
    't> </s:Body> </s:Envelope>'
)


# --- helpers -------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(config: ThingSpaceConfig = CONFIG, clock: Clock | None = None, **kw: Any) -> ThingSpace:
    return ThingSpace(config, route="ts", clock=clock or Clock(), **kw)


def sms(text: str = "Status", *, phone: str | None = None, kind: str | None = "MDN",
        device_id: str | None = "7022895555", **options: Any) -> OutboundSms:
    if phone is not None:
        rcpt = Recipient(phone=phone)
    elif kind is None:
        rcpt = Recipient()
    else:
        rcpt = Recipient(device_kind=kind, device_id=device_id)
    return OutboundSms(client_message_id="m-1", recipient=rcpt, text=text,
                       options={"thingspace": options} if options else {})


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else (b"" if body is None else orjson.dumps(body))
    ctype = {"content-type": "application/json"} if not isinstance(body, bytes) else {}
    return HttpResponse(status, raw, {**ctype, **{k.lower(): v for k, v in (headers or {}).items()}})


def logged_in(clock: Clock | None = None) -> ThingSpace:
    p = make(clock=clock)
    for req in p.auth.login_requests():
        if req.url.endswith("/oauth2/token"):
            p.auth.handle_login(req, reply(200, {"access_token": "AT-1", "token_type": "Bearer",
                                                 "expires_in": 3600, "scope": "ts"}))
        else:
            p.auth.handle_login(req, reply(200, {"sessionToken": "ST-1"}))
    assert p.auth.ready
    return p


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# --- seed 000: send ------------------------------------------------------------------------


def test_send_request_is_seed_000_sample() -> None:
    """The SOAP sample's fields, renamed to the REST JSON form, are exactly what we send."""
    root = SafeET.fromstring(SEED_000_SEND_REQUEST)
    inp = next(el for el in root.iter() if _local(el.tag) == "Input")
    fields = {_local(c.tag): c for c in inp}
    expected = {
        "deviceIds": [{"kind": d[0].text, "id": d[1].text} for d in fields["Devices"]],
        "dataEncoding": fields["DataEncoding"].text,
        "smsMessage": fields["SmsMessage"].text,
    }
    assert expected == {"deviceIds": [{"kind": "MDN", "id": "7022895555"}], "dataEncoding": "7-bit",
                        "smsMessage": "Status"}
    p = logged_in()
    prepared = p.prepare(sms("Status", kind="MDN", device_id="7022895555"))
    req = p.auth.apply(p.build_send([prepared]))
    assert (req.method, req.url) == ("POST", BASE + "/m2m/v1/sms")
    assert orjson.loads(req.body) == expected
    assert req.headers["Authorization"] == "Bearer AT-1"
    assert req.headers["VZ-M2M-Token"] == "ST-1"
    assert req.headers["Content-Type"] == "application/json"
    assert prepared.to == "MDN:7022895555"
    assert prepared.encoded.encoding is Encoding.GSM7 and prepared.segments == 1


def test_send_response_is_seed_000_sample() -> None:
    root = SafeET.fromstring(SEED_000_SEND_RESPONSE)
    request_id = next(el.text for el in root.iter() if _local(el.tag) == "RequestId")
    p = logged_in()
    batch = [p.prepare(sms())]
    assert p.parse_send(batch, reply(200, {"requestId": request_id})) == [
        Accepted(provider_message_id=None, provider_request_id="2c90bd28-ece4-42ef-9f02-7e3bd4fbff33")]


def test_provider_metadata() -> None:
    assert (ThingSpace.name, ThingSpace.max_batch, ThingSpace.supports_ucs2, ThingSpace.max_segments,
            ThingSpace.can_split) == ("thingspace", 1, False, 1, False)


def test_send_200_without_request_id_is_in_doubt() -> None:
    p = logged_in()
    with pytest.raises(InDoubt):
        p.parse_send([p.prepare(sms())], reply(200, {}))
    with pytest.raises(InDoubt):
        p.parse_send([p.prepare(sms())], reply(200, b"<html>ok</html>"))


# --- recipients ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, device_id", [
    ("ESN", "8A2B3C4D"), ("ICCID", "89148000000800784259"), ("IMEI", "990000862471854"),
    ("MDN", "7022895555"), ("MEID", "A100001F702731"), ("MSISDN", "17022895555"),
    ("IMSI", "311480000000001"), ("EID", "89049032000001000000012345678901"),
    ("meid", "A100001F702731"), ("Imei", "990000862471854"),
])
def test_every_device_kind_case_insensitively(kind: str, device_id: str) -> None:
    p = make()
    target = ts.send_target(sms(kind=kind, device_id=device_id), CONFIG)
    assert target == {"deviceIds": [{"kind": kind.upper(), "id": device_id}]}
    assert p.prepare(sms(kind=kind, device_id=device_id)).to == f"{kind.upper()}:{device_id}"


@pytest.mark.parametrize("kind, device_id, field", [
    ("MDN", "702289555", "recipient.device.id"),       # 9 digits
    ("MDN", "17022895555", "recipient.device.id"),     # 11 digits
    ("MDN", "70228955AB", "recipient.device.id"),
    ("IMEI", "9900 0086", "recipient.device.id"),
    ("SIM", "123", "recipient.device.kind"),
])
def test_bad_device_ids_are_invalid(kind: str, device_id: str, field: str) -> None:
    with pytest.raises(InvalidMessage) as exc:
        make().prepare(sms(kind=kind, device_id=device_id))
    assert exc.value.field == field


def test_us_phone_number_is_sent_as_mdn() -> None:
    p = logged_in()
    req = p.build_send([p.prepare(sms(phone="+17022895555"))])
    assert orjson.loads(req.body)["deviceIds"] == [{"kind": "MDN", "id": "7022895555"}]


@pytest.mark.parametrize("phone", ["+447700900123", "+1702289555", "+170228955551", "7022895555", "+1-702-289"])
def test_other_phone_numbers_are_invalid(phone: str) -> None:
    with pytest.raises(InvalidMessage) as exc:
        make().prepare(sms(phone=phone))
    assert exc.value.field == "recipient.phone"


def test_selection_by_group_plan_and_custom_fields() -> None:
    p = logged_in()
    msg = sms(kind=None, group_name="Fleet-West", service_plan="M2M 5GB",
              custom_fields=[{"key": "CustomField1", "value": "truck"}, {"key": "CustomField5", "value": "v2"}])
    prepared = p.prepare(msg)
    body = orjson.loads(p.build_send([prepared]).body)
    assert body == {"accountName": ACCOUNT, "groupName": "Fleet-West", "servicePlan": "M2M 5GB",
                    "customFields": [{"key": "CustomField1", "value": "truck"},
                                     {"key": "CustomField5", "value": "v2"}],
                    "dataEncoding": "7-bit", "smsMessage": "Status"}
    assert "deviceIds" not in body
    assert prepared.to.startswith(f"account:{ACCOUNT}/group:Fleet-West")


def test_selection_of_a_whole_named_account() -> None:
    body = ts.send_target(sms(kind=None, account_name="0000999999-00001"), CONFIG)
    assert body == {"accountName": "0000999999-00001"}


@pytest.mark.parametrize("msg", [
    sms(group_name="Fleet"),                                     # a device id AND a selection
    sms(phone="+17022895555", service_plan="plan"),              # a phone AND a selection
    sms(kind=None),                                              # nobody at all
    sms(kind=None, custom_fields=[{"key": "CustomField6", "value": "x"}]),
    sms(kind=None, custom_fields=[{"key": "CustomField1", "value": "a"}, {"key": "CustomField1", "value": "b"}]),
    sms(kind=None, custom_fields=[]),
    sms(kind=None, group_name=""),
    sms(groupname="typo"),                                       # unknown option
])
def test_never_mix_and_never_guess(msg: OutboundSms) -> None:
    with pytest.raises(InvalidMessage):
        make().prepare(msg)


# --- encodings -----------------------------------------------------------------------------


def test_7bit_one_segment_counts_escapes_as_two_septets() -> None:
    p = make()
    assert p.prepare(sms("x" * 160)).encoded.units == 160
    assert p.prepare(sms("{" * 80)).encoded.units == 160
    for text in ("x" * 161, "{" * 81, "x" * 159 + "€"):
        with pytest.raises(InvalidMessage):
            p.prepare(sms(text))


def test_long_text_is_refused_even_when_the_route_splits() -> None:
    p = make(segment_policy="split")
    with pytest.raises(InvalidMessage):
        p.prepare(sms("x" * 200))


def test_ucs2_text_in_7bit_suggests_8bit_utf8() -> None:
    with pytest.raises(InvalidMessage, match="8-bit-UTF-8"):
        make().prepare(sms("Привет"))


@pytest.mark.parametrize("encoding, text, payload", [
    ("8-bit-UTF-8", "Привет ✅", "Привет ✅".encode()),
    ("8-bit-ASCII", "Status `ok`", b"Status `ok`"),
    ("8-bit-DATA", base64.b64encode(b"\x00\x01\xfe\xff").decode(), b"\x00\x01\xfe\xff"),
])
def test_8bit_content_is_base64_of_the_bytes(encoding: str, text: str, payload: bytes) -> None:
    p = logged_in()
    prepared = p.prepare(sms(text, data_encoding=encoding))
    assert prepared.encoded.encoding is Encoding.BINARY
    assert prepared.encoded.units == len(payload) and prepared.segments == 1
    body = orjson.loads(p.build_send([prepared]).body)
    assert body["dataEncoding"] == encoding
    assert base64.b64decode(body["smsMessage"], validate=True) == payload


def test_8bit_limit_is_140_bytes() -> None:
    p = make()
    assert p.prepare(sms("é" * 70, data_encoding="8-bit-UTF-8")).encoded.units == 140
    with pytest.raises(InvalidMessage, match="141 bytes"):
        p.prepare(sms("é" * 70 + "x", data_encoding="8-bit-UTF-8"))
    data = base64.b64encode(bytes(141)).decode()
    with pytest.raises(InvalidMessage):
        p.prepare(sms(data, data_encoding="8-bit-DATA"))


@pytest.mark.parametrize("encoding, text", [
    ("8-bit-ASCII", "café"), ("8-bit-DATA", "not base64!"), ("8-bit-DATA", "QQ"), ("16-bit", "hi"),
])
def test_bad_8bit_content_is_invalid(encoding: str, text: str) -> None:
    with pytest.raises(InvalidMessage):
        make().prepare(sms(text, data_encoding=encoding))


def test_route_default_data_encoding() -> None:
    config = ThingSpaceConfig(client_id="k", client_secret=Secret("s"), username="u", password=Secret("p"),
                              account_name=ACCOUNT, default_data_encoding="8-bit-UTF-8")
    p = make(config)
    prepared = p.prepare(sms("Привет"))
    assert prepared.encoded.encoding is Encoding.BINARY
    assert orjson.loads(p.build_send([prepared]).body)["dataEncoding"] == "8-bit-UTF-8"


def test_config_builds_from_route_settings() -> None:
    from connector.config import Problem, build

    problems: list[Problem] = []
    raw = {"client_id": "k", "client_secret": "s3cret", "username": "u", "password": "pw",
           "account_name": ACCOUNT, "token_refresh_margin_s": "30"}
    config = build(ThingSpaceConfig, raw, "routes.ts", problems)
    assert problems == []
    assert config.base_url == BASE and config.default_data_encoding == "7-bit"
    assert config.client_secret == Secret("s3cret") and config.token_refresh_margin_s == 30.0
    build(ThingSpaceConfig, {"client_id": "k", "default_data_encoding": "UCS-2"}, "routes.ts", problems)
    assert any("default_data_encoding" in str(p) for p in problems)
    assert any("routes.ts.password: required" in str(p) for p in problems)


def test_empty_text_is_invalid() -> None:
    with pytest.raises(InvalidMessage):
        make().prepare(sms(""))


# --- authentication (sans-IO) --------------------------------------------------------------


def test_two_step_login_builds_documented_requests() -> None:
    auth = ThingSpaceAuth(CONFIG, Clock())
    assert not auth.ready
    steps = auth.login_requests()
    token_req = next(steps)
    assert (token_req.method, token_req.url) == ("POST", BASE + "/ts/v1/oauth2/token")
    assert token_req.headers["Authorization"] == "Basic " + base64.b64encode(b"app-key:app-secret").decode()
    assert token_req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert token_req.body == b"grant_type=client_credentials"
    auth.handle_login(token_req, reply(200, {"access_token": "AT-1", "token_type": "Bearer",
                                             "expires_in": 3600, "scope": "ts"}))
    login_req = next(steps)   # built after the token answer: it carries the new bearer
    assert (login_req.method, login_req.url) == ("POST", BASE + "/m2m/v1/session/login")
    assert login_req.headers["Authorization"] == "Bearer AT-1"
    assert orjson.loads(login_req.body) == {"username": "uws-user", "password": "uws-pass"}
    auth.handle_login(login_req, reply(200, {"sessionToken": "ST-1"}))
    assert list(steps) == []
    assert auth.ready
    req = auth.apply(HttpRequest("GET", BASE + "/m2m/v1/sms/x/history"))
    assert req.headers["Authorization"] == "Bearer AT-1"
    assert req.headers["VZ-M2M-Token"] == "ST-1"
    assert req.headers["Content-Type"] == "application/json"


def test_tokens_are_reused_until_the_access_token_nears_expiry() -> None:
    clock = Clock()
    p = logged_in(clock)
    clock.now += 3600 - 61
    assert p.auth.ready and list(p.auth.login_requests()) == []
    clock.now += 2   # within token_refresh_margin_s (60 s) of expires_in
    assert not p.auth.ready
    steps = list(p.auth.login_requests())
    assert [r.url for r in steps] == [BASE + "/ts/v1/oauth2/token"]   # the session is kept


def test_expired_session_error_drops_only_the_session() -> None:
    p = logged_in()
    body = {"errorCode": "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired",
            "errorMessage": "Session token is expired."}
    with pytest.raises(SessionRefused) as exc:
        p.parse_send([p.prepare(sms())], reply(400, body))
    assert isinstance(exc.value, AuthFailed)
    assert exc.value.code == "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired"
    p.auth.invalidate()
    assert not p.auth.ready
    assert [r.url for r in p.auth.login_requests()] == [BASE + "/m2m/v1/session/login"]


def test_gateway_401_drops_both_tokens() -> None:
    p = logged_in()
    fault = {"fault": {"code": "900901", "message": "Invalid Credentials",
                       "description": "Make sure you have given the correct access token"}}
    with pytest.raises(BearerRefused) as exc:
        p.parse_send([p.prepare(sms())], reply(401, fault))
    assert exc.value.code == "900901"
    p.auth.invalidate()
    steps = p.auth.login_requests()
    assert next(steps).url == BASE + "/ts/v1/oauth2/token"


@pytest.mark.parametrize("status, body, error", [
    (401, {"error": "invalid_client", "error_description": "Client Authentication failed."}, AuthFailed),
    (400, {"error": "invalid_request", "error_description": "Missing grant_type parameter value"}, AuthFailed),
    (404, b"not found", AuthFailed),
    (200, {"token_type": "Bearer"}, AuthFailed),
    (500, b"", Retriable),
    (503, {"fault": {"code": "101503", "message": "Runtime Error"}}, Retriable),
    (429, {"fault": {"code": "900800", "message": "Message throttled out"}}, Throttled),
])
def test_oauth_failures(status: int, body: Any, error: type[Exception]) -> None:
    auth = ThingSpaceAuth(CONFIG, Clock())
    req = next(auth.login_requests())
    with pytest.raises(error):
        auth.handle_login(req, reply(status, body, {"Retry-After": "3"}))
    assert not auth.ready


@pytest.mark.parametrize("status, body, error", [
    (400, {"errorCode": sim_mod.LOGIN_FAILED, "errorMessage": "Invalid username or password."}, AuthFailed),
    (400, {"errorCode": sim_mod.ACCOUNT_LOCKED, "errorMessage": "locked"}, LoginLocked),
    (401, {"fault": {"code": "900901", "message": "Invalid Credentials"}}, BearerRefused),
    (200, {}, AuthFailed),
    (502, b"bad gateway", Retriable),
])
def test_session_login_failures(status: int, body: Any, error: type[Exception]) -> None:
    auth = ThingSpaceAuth(CONFIG, Clock())
    steps = auth.login_requests()
    auth.handle_login(next(steps), reply(200, {"access_token": "AT", "expires_in": 3600}))
    with pytest.raises(error):
        auth.handle_login(next(steps), reply(status, body))
    assert not auth.ready


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("status, body, headers, error, code", [
    (400, {"errorCode": "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "errorMessage": "x"}, {},
     SessionRefused, "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired"),
    (400, {"errorCode": "UnifiedWebService.REQUEST_FAILED.SessionToken.Invalid", "errorMessage": "x"}, {},
     SessionRefused, "UnifiedWebService.REQUEST_FAILED.SessionToken.Invalid"),
    (400, {"errorCode": "REQUEST_FAILED.SessionToken.Expired", "errorMessage": "x"}, {},   # no service name
     SessionRefused, "REQUEST_FAILED.SessionToken.Expired"),
    (400, {"errorCode": "UnifiedWebService.REQUEST_FAILED.AccountNotFound", "errorMessage": "no account"}, {},
     Rejected, "UnifiedWebService.REQUEST_FAILED.AccountNotFound"),
    (400, {"errorCode": "DeviceService.INPUT_INVALID.CustomField.InvalidName",
           "errorMessage": "your session token expired"}, {},   # the text is never matched
     Rejected, "DeviceService.INPUT_INVALID.CustomField.InvalidName"),
    (401, {"fault": {"code": "900902", "message": "Missing Credentials"}}, {}, BearerRefused, "900902"),
    (403, b'<ams:fault xmlns:ams="http://wso2.org/apimanager/security"><ams:code>900908</ams:code>'
          b'<ams:message>Resource forbidden </ams:message><ams:description>Access failure</ams:description>'
          b'</ams:fault>', {"Content-Type": "application/xml"}, AuthFailed, "900908"),
    (429, {"fault": {"code": "900800", "message": "Message throttled out"}}, {"Retry-After": "7"},
     Throttled, "900800"),
    (500, {"errorCode": "UnifiedWebService.REQUEST_FAILED.UnexpectedError", "errorMessage": "x"}, {},
     Retriable, "UnifiedWebService.REQUEST_FAILED.UnexpectedError"),
    (503, b"<html>Service Unavailable</html>", {}, Retriable, None),
])
def test_send_errors_are_classified_by_code(status: int, body: Any, headers: dict[str, str],
                                            error: type[Exception], code: str | None) -> None:
    p = logged_in()
    with pytest.raises(error) as exc:
        p.parse_send([p.prepare(sms())], reply(status, body, headers))
    assert type(exc.value) is error
    assert exc.value.code == code
    if error is Throttled:
        assert exc.value.retry_after == 7.0


def test_403_xml_error_text_is_kept() -> None:
    body = (b'<ams:fault xmlns:ams="http://wso2.org/apimanager/security"><ams:code>900908</ams:code>'
            b'<ams:message>Resource forbidden</ams:message></ams:fault>')
    error = ts.classify_error(reply(403, body))
    assert isinstance(error, AuthFailed) and error.text == "Resource forbidden"


# --- seed 002: MO queue and startCallbacks -------------------------------------------------


def test_mo_history_requests() -> None:
    assert ts.build_mo_history(CONFIG).url == f"{BASE}/m2m/v1/sms/{ACCOUNT}/history"
    req = ts.build_mo_history(CONFIG, next_token="abc/123=")
    assert (req.method, req.url) == ("GET", f"{BASE}/m2m/v1/sms/{ACCOUNT}/history?next=abc%2F123%3D")


def test_mo_history_page_with_more_data() -> None:
    body = {"messages": [
        {"deviceIds": [{"id": "7022895555", "kind": "mdn"}, {"id": "990000862471854", "kind": "imei"}],
         "message": "temp=21", "timestamp": "2024-05-01T10:00:00Z"},
        {"deviceIds": [{"id": "A100001F702731", "kind": "MEID"}], "message": "hello",
         "timestamp": "2024-05-01T09:59:00Z"},    # out of order, as seed 002 warns
    ], "hasMoreData": True}
    page = ts.parse_mo_history(reply(202, body, {
        "Location": f"{BASE}/m2m/v1/sms/{ACCOUNT}/history?next=TOKEN-2"}))
    assert page.has_more and page.next_token == "TOKEN-2"
    first = page.messages[0]
    assert (first.device_kind, first.device_id, first.text, first.timestamp) == (
        "MDN", "7022895555", "temp=21", "2024-05-01T10:00:00Z")
    assert first.raw == body["messages"][0]
    again = ts.parse_mo_history(reply(202, body, {"Location": "…/history?next=TOKEN-3"})).messages[0]
    assert again.dedupe_key == first.dedupe_key != page.messages[1].dedupe_key


def test_mo_history_last_page() -> None:
    page = ts.parse_mo_history(reply(200, {"messages": [], "hasMoreData": False}))
    assert page == ts.MoPage(messages=(), has_more=False, next_token=None)


def test_mo_history_errors() -> None:
    err = {"errorCode": "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "errorMessage": "expired"}
    with pytest.raises(SessionRefused):
        ts.parse_mo_history(reply(400, err))
    with pytest.raises(Retriable):
        ts.parse_mo_history(reply(504, b""))


def test_start_callbacks_is_seed_002_sample() -> None:
    p = logged_in()
    req = p.auth.apply(ts.build_start_callbacks(CONFIG))
    assert (req.method, req.url, req.body) == ("PUT", f"{BASE}/m2m/v1/sms/{ACCOUNT}/startCallbacks", b"")
    assert {"Authorization", "VZ-M2M-Token", "Content-Type"} <= set(req.headers)
    assert ts.parse_start_callbacks(reply(200, orjson.loads(b'{\n"success": true\n}'))) is True
    sample_error = {"errorCode": "error code string", "errorMessage": "error message string"}
    with pytest.raises(Rejected) as exc:
        ts.parse_start_callbacks(reply(400, sample_error))
    assert (exc.value.code, exc.value.text) == ("error code string", "error message string")


def test_callback_registration_requests() -> None:
    req = ts.build_register_callback(CONFIG, "SMSDeliveryConfirmation", "https://hooks.example.com/ts",
                                     username="hook", password=Secret("hook-pass"))
    assert (req.method, req.url) == ("POST", f"{BASE}/m2m/v1/callbacks/{ACCOUNT}")
    assert orjson.loads(req.body) == {"name": "SMSDeliveryConfirmation", "url": "https://hooks.example.com/ts",
                                      "username": "hook", "password": "hook-pass"}
    bare = ts.build_register_callback(CONFIG, "EnhancedConnectivityService", "https://h.example.com/")
    assert orjson.loads(bare.body) == {"name": "EnhancedConnectivityService", "url": "https://h.example.com/"}
    assert ts.build_list_callbacks(CONFIG).method == "GET"
    delete = ts.build_delete_callback(CONFIG, "SMSDeliveryConfirmation")
    assert (delete.method, delete.url) == (
        "DELETE", f"{BASE}/m2m/v1/callbacks/{ACCOUNT}/name/SMSDeliveryConfirmation")
    reg = ts.parse_register_callback(reply(200, {"accountName": ACCOUNT, "name": "SMSDeliveryConfirmation"}))
    assert reg == ts.CallbackRegistration(ACCOUNT, "SMSDeliveryConfirmation")
    listed = ts.parse_list_callbacks(reply(200, [{"accountName": ACCOUNT, "name": "SMSDeliveryConfirmation",
                                                  "url": "https://hooks.example.com/ts"}]))
    assert listed == [ts.CallbackRegistration(ACCOUNT, "SMSDeliveryConfirmation", "https://hooks.example.com/ts")]
    with pytest.raises(BearerRefused):
        ts.parse_delete_callback(reply(401, {"fault": {"code": "900901", "message": "Invalid Credentials"}}))


# --- seed 000: callbacks received ----------------------------------------------------------


def test_per_device_callback() -> None:
    cb = ts.parse_callback(SEED_000_CB_PER_DEVICE.encode(), "text/xml")
    assert (cb.kind, cb.request_id, cb.device_kind, cb.device_id) == (
        "device", "2ca8790f-7925-47e5-8367-dc5111ef92c4", "MEID", "A100001F702731")
    assert cb.comment == "SendSmsMessage,Performed action on device."
    assert (cb.callback_count, cb.max_callback_threshold) == (1, 4)
    assert (cb.username, cb.password, cb.confirmation, cb.fault) == (None, None, None, None)
    assert cb.raw == SEED_000_CB_PER_DEVICE.encode()


def test_request_complete_callback() -> None:
    cb = ts.parse_callback(SEED_000_CB_REQUEST_COMPLETE.encode(), "text/xml")
    assert (cb.kind, cb.num_devices_requested, cb.device_id) == ("completed", 5, None)
    assert cb.comment == "SendSmsMessage,Request Completed Processing"


@pytest.mark.parametrize("sample, confirmation", [
    (SEED_000_CB_DELIVERED, "Delivered"),          # the seed's sample lacks </s:Envelope>
    (SEED_000_CB_UNDELIVERABLE, "Undeliverable"),  # spelled "Unceliverable" in the seed
    (SEED_000_CB_EXPIRED, "Expired"),
])
def test_delivery_confirmation_callbacks(sample: str, confirmation: str) -> None:
    cb = ts.parse_callback(sample.encode(), "text/xml; charset=utf-8")
    assert (cb.kind, cb.confirmation, cb.device_kind, cb.device_id, cb.request_id) == (
        "delivery", confirmation, "MDN", "8589268379", "be1f03b8-64ec-4e59-a778-20536016beb5")


def test_json_callback_camel_case() -> None:
    body = orjson.dumps({"username": "hook", "password": "pw", "requestId": "r-1",
                         "device": {"kind": "mdn", "id": "8589268379"},
                         "data": {"smsDelivery": {"confirmation": "Unceliverable"}, "callbackCount": 2,
                                  "maxCallbackThreshold": 4}})
    cb = ts.parse_callback(body, "application/json")
    assert (cb.kind, cb.confirmation, cb.device_kind, cb.device_id, cb.callback_count) == (
        "delivery", "Undeliverable", "MDN", "8589268379", 2)
    assert ts.callback_credentials_match(cb, "hook", Secret("pw"))
    assert not ts.callback_credentials_match(cb, "hook", "other")
    completed = ts.parse_callback(orjson.dumps({"requestId": "r-1", "comment": "done",
                                                "summary": {"numDevicesRequested": 3}}), "application/json")
    assert completed.kind == "completed" and completed.num_devices_requested == 3


def test_callback_xml_with_entities_is_refused() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
            b'<CallbackRequest><RequestId>&lol2;</RequestId></CallbackRequest>')
    with pytest.raises(InvalidRecord):
        ts.parse_callback(bomb, "text/xml")
    with pytest.raises(InvalidRecord):
        ts.parse_callback(b"<CallbackRequest><RequestId>x</Req", "text/xml")
    with pytest.raises(InvalidRecord):
        ts.parse_callback(b"plain text", "text/plain")


# --- the simulator over loopback ------------------------------------------------------------


class Loopback:
    """A running simulator and a client that sends adapter-built requests to it."""

    def __init__(self, sim: ThingSpaceSimulator, runner: web.AppRunner, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.runner = runner
        self.session = session
        port = runner.addresses[0][1]
        self.root = f"http://127.0.0.1:{port}"
        creds = sim.credentials
        self.config = ThingSpaceConfig(base_url=self.root + "/api", client_id=creds["client_id"],
                                       client_secret=Secret(creds["client_secret"]), username=creds["username"],
                                       password=Secret(creds["password"]), account_name=creds["account_name"])

    async def call(self, req: HttpRequest) -> HttpResponse:
        async with self.session.request(req.method, req.url, headers=req.headers, data=req.body or None) as r:
            return HttpResponse(r.status, await r.read(), {k.lower(): v for k, v in r.headers.items()})

    async def raw(self, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
        async with self.session.request(method, self.root + path, **kw) as r:
            body = await r.read()
            return r.status, (orjson.loads(body) if body else None), r.headers

    async def login(self, auth: ThingSpaceAuth) -> None:
        for req in auth.login_requests():
            auth.handle_login(req, await self.call(req))

    def provider(self, clock: Clock | None = None, config: ThingSpaceConfig | None = None) -> ThingSpace:
        return ThingSpace(config or self.config, route="ts", clock=clock or Clock())

    async def send(self, p: ThingSpace, msg: OutboundSms) -> Accepted:
        prepared = p.prepare(msg)
        resp = await self.call(p.auth.apply(p.build_send([prepared])))
        (result,) = p.parse_send([prepared], resp)
        assert isinstance(result, Accepted)
        return result


async def _start(sim: ThingSpaceSimulator) -> Loopback:
    runner = await serve(sim, "127.0.0.1", 0)
    return Loopback(sim, runner, aiohttp.ClientSession())


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def lb(clock: Clock) -> Any:
    loop = await _start(ThingSpaceSimulator(clock=clock))
    yield loop
    await loop.session.close()
    await loop.runner.cleanup()


async def test_sim_login_and_send(lb: Loopback) -> None:
    p = lb.provider()
    await lb.login(p.auth)
    assert p.auth.ready
    result = await lb.send(p, sms("Status"))
    assert result.provider_request_id and result.provider_message_id is None
    assert lb.sim.sent[0]["deviceIds"] == [{"kind": "MDN", "id": "7022895555"}]
    assert lb.sim.stats.sends_by_id["MDN:7022895555|Status"] == 1
    utf8 = await lb.send(p, sms("Привет", data_encoding="8-bit-UTF-8", kind="IMEI", device_id="990000862471854"))
    assert utf8.provider_request_id != result.provider_request_id
    assert base64.b64decode(lb.sim.sent[1]["smsMessage"]).decode() == "Привет"
    selection = await lb.send(p, sms(kind=None, group_name="Fleet",
                                     custom_fields=[{"key": "CustomField2", "value": "x"}]))
    assert selection.provider_request_id
    assert lb.sim.sent[2]["selection"]["groupName"] == "Fleet"
    assert lb.sim.stats.accepted == 3


async def test_sim_oauth_refuses_bad_client_secret(lb: Loopback) -> None:
    config = ThingSpaceConfig(**{**lb.config.__dict__, "client_secret": Secret("wrong")})
    auth = lb.provider(config=config).auth
    with pytest.raises(AuthFailed) as exc:
        await lb.login(auth)
    assert exc.value.code == "invalid_client"
    basic = "Basic " + base64.b64encode(b"sim-ts-key:sim-ts-secret").decode()
    status, body, _ = await lb.raw("POST", "/api/ts/v1/oauth2/token", data=b"grant_type=password",
                                   headers={"Authorization": basic,
                                            "Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body["error"]) == (400, "unsupported_grant_type")


async def test_sim_locks_the_account_after_five_failed_logins(lb: Loopback) -> None:
    wrong = ThingSpaceConfig(**{**lb.config.__dict__, "password": Secret("wrong")})
    for _ in range(5):
        auth = lb.provider(config=wrong).auth
        with pytest.raises(AuthFailed) as exc:
            await lb.login(auth)
        assert exc.value.code == sim_mod.LOGIN_FAILED and not isinstance(exc.value, LoginLocked)
    assert lb.sim.locked
    right = lb.provider().auth
    with pytest.raises(LoginLocked) as locked:
        await lb.login(right)
    assert locked.value.code == sim_mod.ACCOUNT_LOCKED
    await lb.raw("POST", "/_sim/thingspace/unlock")
    await lb.login(right)
    assert right.ready


async def test_sim_failed_logins_must_be_consecutive(lb: Loopback) -> None:
    wrong = ThingSpaceConfig(**{**lb.config.__dict__, "password": Secret("wrong")})
    for _ in range(4):
        with pytest.raises(AuthFailed):
            await lb.login(lb.provider(config=wrong).auth)
    await lb.login(lb.provider().auth)
    for _ in range(4):
        with pytest.raises(AuthFailed):
            await lb.login(lb.provider(config=wrong).auth)
    assert not lb.sim.locked


async def test_sim_session_expires_when_idle_then_relogin(lb: Loopback, clock: Clock) -> None:
    p = lb.provider(clock)
    await lb.login(p.auth)
    await lb.send(p, sms())
    clock.now += 1199            # each use restarts the idle timer
    await lb.send(p, sms())
    clock.now += 1201
    prepared = p.prepare(sms())
    resp = await lb.call(p.auth.apply(p.build_send([prepared])))
    with pytest.raises(SessionRefused) as exc:
        p.parse_send([prepared], resp)
    assert exc.value.code == sim_mod.SESSION_EXPIRED
    p.auth.invalidate()
    assert [r.url for r in p.auth.login_requests()] == [lb.config.base_url + "/m2m/v1/session/login"]
    await lb.login(p.auth)
    await lb.send(p, sms())
    assert lb.sim.logins == 2


async def test_sim_expired_access_token_is_a_gateway_401(lb: Loopback, clock: Clock) -> None:
    p = lb.provider(clock)
    await lb.login(p.auth)
    clock.now += 3601
    prepared = p.prepare(sms())
    resp = await lb.call(p.auth.apply(p.build_send([prepared])))
    assert resp.status == 401
    with pytest.raises(BearerRefused):
        p.parse_send([prepared], resp)


async def _post_sms(lb: Loopback, p: ThingSpace, body: Any, headers: dict[str, str] | None = None) -> HttpResponse:
    req = p.auth.apply(HttpRequest("POST", lb.config.base_url + "/m2m/v1/sms", {}, orjson.dumps(body)))
    req.headers.update(headers or {})
    return await lb.call(req)


@pytest.mark.parametrize("body, code", [
    ({"deviceIds": [{"kind": "MDN", "id": "7022895555"}], "groupName": "g", "smsMessage": "x"},
     "UnifiedWebService.INPUT_INVALID.DeviceIds.NotAllowed"),
    ({"smsMessage": "x"}, "UnifiedWebService.INPUT_INVALID.AccountName.Required"),
    ({"deviceIds": [{"kind": "PHONE", "id": "7022895555"}], "smsMessage": "x"},
     "UnifiedWebService.INPUT_INVALID.DeviceIdentifier.Kind.Invalid"),
    ({"deviceIds": [{"kind": "mdn", "id": "702289555"}], "smsMessage": "x"},
     "UnifiedWebService.INPUT_INVALID.DeviceIdentifier.Id.Invalid"),
    ({"deviceIds": [{"kind": "MDN", "id": "7022895555"}], "smsMessage": "x", "dataEncoding": "16-bit"},
     "UnifiedWebService.INPUT_INVALID.DataEncoding.Invalid"),
    ({"deviceIds": [{"kind": "MDN", "id": "7022895555"}], "smsMessage": "x" * 161},
     "UnifiedWebService.INPUT_INVALID.SmsMessage.TooLong"),
    ({"deviceIds": [{"kind": "MDN", "id": "7022895555"}], "smsMessage": "Привет"},
     "UnifiedWebService.INPUT_INVALID.SmsMessage.InvalidCharacters"),
    ({"deviceIds": [{"kind": "MDN", "id": "7022895555"}], "dataEncoding": "8-bit-DATA",
      "smsMessage": base64.b64encode(bytes(141)).decode()}, "UnifiedWebService.INPUT_INVALID.SmsMessage.TooLong"),
    ({"deviceIds": [{"kind": "MDN", "id": "7022895555"}], "dataEncoding": "8-bit-UTF-8", "smsMessage": "héllo"},
     "UnifiedWebService.INPUT_INVALID.SmsMessage.NotBase64"),
    ({"accountName": "0000999999-00001", "smsMessage": "x"}, "UnifiedWebService.REQUEST_FAILED.AccountNotFound"),
    ({"groupName": "g", "customFields": [{"key": "Color", "value": "red"}], "smsMessage": "x"},
     "DeviceService.INPUT_INVALID.CustomField.InvalidName"),
    ({"deviceIds": [{"kind": "MDN", "id": "7022890666"}], "smsMessage": "x"},
     "UnifiedWebService.REQUEST_FAILED.DeviceNotFound"),
])
async def test_sim_send_validation(lb: Loopback, body: dict[str, Any], code: str) -> None:
    p = lb.provider()
    await lb.login(p.auth)
    resp = await _post_sms(lb, p, body)
    assert resp.status == 400
    assert orjson.loads(resp.body)["errorCode"] == code
    with pytest.raises(Rejected):   # none of these is an auth problem
        p.parse_send([p.prepare(sms())], resp)
    assert lb.sim.sent == []


async def test_sim_send_needs_both_tokens(lb: Loopback) -> None:
    p = lb.provider()
    await lb.login(p.auth)
    body = {"deviceIds": [{"kind": "MDN", "id": "7022895555"}], "smsMessage": "x"}
    no_session = await _post_sms(lb, p, body, {"VZ-M2M-Token": "bogus"})
    assert orjson.loads(no_session.body)["errorCode"] == sim_mod.SESSION_INVALID
    status, fault, _ = await lb.raw("POST", "/api/m2m/v1/sms", json=body)
    assert (status, fault["fault"]["code"]) == (401, "900902")


async def test_sim_prepared_limits_match_the_simulator(lb: Loopback) -> None:
    """What the adapter lets through, the simulator accepts (at the exact limits)."""
    p = lb.provider()
    await lb.login(p.auth)
    await lb.send(p, sms("{" * 80))
    await lb.send(p, sms("x" * 160))
    await lb.send(p, sms("é" * 70, data_encoding="8-bit-UTF-8"))
    await lb.send(p, sms(base64.b64encode(bytes(range(140))).decode(), data_encoding="8-bit-DATA"))
    await lb.send(p, sms("ASCII ~`", data_encoding="8-bit-ASCII"))
    assert len(lb.sim.sent) == 5


async def _enqueue(lb: Loopback, n: int, start: int = 0) -> None:
    messages = [{"device": {"kind": "MDN", "id": "7022895555"}, "text": f"mo-{i}",
                 "timestamp": f"2024-05-01T10:{i // 60:02d}:{i % 60:02d}Z"} for i in range(start, start + n)]
    status, body, _ = await lb.raw("POST", "/_sim/thingspace/mo", json=messages)
    assert (status, body) == (200, {"queued": n})


async def _history(lb: Loopback, p: ThingSpace, token: str | None = None) -> ts.MoPage:
    return ts.parse_mo_history(await lb.call(p.auth.apply(ts.build_mo_history(lb.config, token))))


def _texts(page: ts.MoPage) -> list[str]:
    return [m.text for m in page.messages]


async def test_sim_mo_paging_with_acknowledgement(lb: Loopback) -> None:
    p = lb.provider()
    await lb.login(p.auth)
    await _enqueue(lb, 150)
    page1 = await _history(lb, p)
    assert len(page1.messages) == 100 and page1.has_more and page1.next_token
    assert page1.messages[0] == MoMessage("MDN", "7022895555", "mo-0", "2024-05-01T10:00:00Z", {})
    # Without the token nothing is acknowledged: the same block comes again.
    again = await _history(lb, p)
    assert _texts(again) == _texts(page1) and again.next_token == page1.next_token
    # With the token, page 1 is acknowledged and gone; page 2 is the last (200, no token).
    page2 = await _history(lb, p, page1.next_token)
    assert _texts(page2) == [f"mo-{i}" for i in range(100, 150)]
    assert not page2.has_more and page2.next_token is None
    # A retried acknowledgement (its answer lost) gets the current block again, not page 1.
    retried = await _history(lb, p, page1.next_token)
    assert _texts(retried) == _texts(page2)
    # The next poll acknowledges the last page.
    await _enqueue(lb, 1, start=500)
    page3 = await _history(lb, p)
    assert _texts(page3) == ["mo-500"]
    assert _texts(await _history(lb, p)) == []
    with pytest.raises(Rejected):
        await _history(lb, p, "not-a-token")


async def test_sim_mo_history_checks_the_account(lb: Loopback) -> None:
    p = lb.provider()
    await lb.login(p.auth)
    other = ThingSpaceConfig(**{**lb.config.__dict__, "account_name": "0000999999-00001"})
    resp = await lb.call(p.auth.apply(ts.build_mo_history(other)))
    with pytest.raises(Rejected) as exc:
        ts.parse_mo_history(resp)
    assert exc.value.code == sim_mod.ACCOUNT_NOT_FOUND


async def test_sim_start_callbacks_and_registration(lb: Loopback) -> None:
    p = lb.provider()
    await lb.login(p.auth)
    assert ts.parse_start_callbacks(await lb.call(p.auth.apply(ts.build_start_callbacks(lb.config))))
    assert lb.sim.callbacks_started == {lb.config.account_name}
    reg = ts.parse_register_callback(await lb.call(p.auth.apply(ts.build_register_callback(
        lb.config, "SMSDeliveryConfirmation", "https://hooks.example.com/dc", "hook", "pw"))))
    assert reg == ts.CallbackRegistration(lb.config.account_name, "SMSDeliveryConfirmation")
    listed = ts.parse_list_callbacks(await lb.call(p.auth.apply(ts.build_list_callbacks(lb.config))))
    assert listed == [ts.CallbackRegistration(lb.config.account_name, "SMSDeliveryConfirmation",
                                              "https://hooks.example.com/dc")]
    deleted = ts.parse_delete_callback(await lb.call(p.auth.apply(
        ts.build_delete_callback(lb.config, "SMSDeliveryConfirmation"))))
    assert deleted.name == "SMSDeliveryConfirmation"
    assert ts.parse_list_callbacks(await lb.call(p.auth.apply(ts.build_list_callbacks(lb.config)))) == []
    with pytest.raises(Rejected):
        ts.parse_delete_callback(await lb.call(p.auth.apply(
            ts.build_delete_callback(lb.config, "SMSDeliveryConfirmation"))))
    with pytest.raises(Rejected):
        ts.parse_register_callback(await lb.call(p.auth.apply(ts.build_register_callback(
            lb.config, "NoSuchService", "https://hooks.example.com/"))))


async def test_sim_faults(lb: Loopback) -> None:
    p = lb.provider()
    await lb.login(p.auth)
    status, _, _ = await lb.raw("PUT", "/_sim/faults", json={"throttle_rate": 1.0, "retry_after_s": 4})
    assert status == 200
    prepared = p.prepare(sms())
    with pytest.raises(Throttled) as throttled:
        p.parse_send([prepared], await lb.call(p.auth.apply(p.build_send([prepared]))))
    assert throttled.value.retry_after == 4.0
    await lb.raw("PUT", "/_sim/faults", json={"throttle_rate": 0.0, "error_rate": 1.0})
    with pytest.raises(Retriable):
        p.parse_send([prepared], await lb.call(p.auth.apply(p.build_send([prepared]))))
    fresh = lb.provider().auth   # a login during an outage is retriable, never a refusal
    with pytest.raises(Retriable):
        await lb.login(fresh)
    await lb.raw("PUT", "/_sim/faults", json={"error_rate": 0.0})
    await lb.send(p, sms())
    status, stats, _ = await lb.raw("GET", "/_sim/stats")
    assert stats["injected"] == {"throttle": 1, "error": 2}
    await lb.raw("POST", "/_sim/reset")
    assert lb.sim.sent == [] and lb.sim.sessions == {}


async def test_sim_delivers_callbacks_until_acknowledged() -> None:
    received: list[bytes] = []
    answers = iter([500, 200, 200, 200, 200, 200])

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=next(answers))

    app = web.Application()
    app.router.add_post("/hook", hook)
    hook_runner = web.AppRunner(app, access_log=None)
    await hook_runner.setup()
    await web.TCPSite(hook_runner, "127.0.0.1", 0).start()
    hook_url = f"http://127.0.0.1:{hook_runner.addresses[0][1]}/hook"
    lb = await _start(ThingSpaceSimulator(deliver_callbacks=True, callback_retry_s=0.01))
    try:
        p = lb.provider()
        await lb.login(p.auth)
        ts.parse_register_callback(await lb.call(p.auth.apply(ts.build_register_callback(
            lb.config, "SMSDeliveryConfirmation", hook_url, "hook-user", "hook-pw"))))
        accepted = await lb.send(p, sms(kind="MDN", device_id="8589268379"))
        for _ in range(200):
            if len(received) >= 2:
                break
            await asyncio.sleep(0.01)
        callbacks = [ts.parse_callback(body, "text/xml") for body in received]
        assert [cb.callback_count for cb in callbacks] == [1, 2]     # resent after the 500
        cb = callbacks[-1]
        assert (cb.kind, cb.confirmation, cb.request_id, cb.device_id) == (
            "delivery", "Delivered", accepted.provider_request_id, "8589268379")
        assert ts.callback_credentials_match(cb, "hook-user", "hook-pw")
        assert [e["status"] for e in lb.sim.callback_log] == [500, 200]
    finally:
        await lb.session.close()
        await lb.runner.cleanup()
        await hook_runner.cleanup()


async def test_sender_logs_in_once_and_recovers_an_expired_session(lb: Loopback, clock: Clock) -> None:
    """The real RouteSender drives the adapter's Auth against the simulator."""
    from connector.sender import RouteSender
    from connector.transport import HttpTransport

    p = lb.provider(clock)
    transport = HttpTransport(timeout_s=5)
    sender = RouteSender(p, transport, concurrency=4)
    try:
        outcomes = await asyncio.gather(*(sender.send(p.prepare(sms(f"hi {i}"))) for i in range(5)))
        assert all(isinstance(o.result, Accepted) for o in outcomes)
        assert lb.sim.logins == 1
        clock.now += 1500           # idle past the session; the access token is still valid
        outcome = await sender.send(p.prepare(sms("after idle")))
        assert isinstance(outcome.result, Accepted) and outcome.attempts == 1
        assert lb.sim.logins == 2 and len(lb.sim.access_tokens) == 1
    finally:
        await sender.aclose()
        await transport.aclose()


def test_selection_recipient_from_the_record_contract() -> None:
    from connector.records import decode_outbound

    raw = orjson.dumps({"client_message_id": "sel-1", "text": "hello meters",
                        "recipient": {"selection": {"group_name": "meters", "service_plan": "plan-a"}}})
    provider = ThingSpace(ThingSpaceConfig(client_id="k", client_secret=Secret("s"), username="u",
                                           password=Secret("p"), account_name="0000123456-00001"), route="ts")
    body = orjson.loads(provider.build_send([provider.prepare(decode_outbound(raw))]).body)
    assert body["groupName"] == "meters" and body["servicePlan"] == "plan-a"
    assert body["accountName"] == "0000123456-00001" and "deviceIds" not in body


@pytest.mark.parametrize("body, fast", [
    (b'<CallbackRequest><RequestId>r</RequestId></CallbackRequest>', True),
    (b'<?xml version="1.0" encoding="UTF-8"?><CallbackRequest/>', True),
    (b'\xef\xbb\xbf<?xml version="1.0" encoding="iso-8859-1"?><CallbackRequest/>', True),
    (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "x">]><CallbackRequest/>', False),   # a DTD
    (b'<CallbackRequest><!-- a comment --></CallbackRequest>', False),                  # any "<!": defusedxml decides
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r><CallbackRequest/>'.encode("utf-16"), False),   # BOM
    ('<!DOCTYPE r><CallbackRequest/>'.encode("utf-16-le"), False),                      # NULs up front
    (b'<?xml version="1.0" encoding="UTF-7"?><CallbackRequest>+ADw-!DOCTYPE</CallbackRequest>', False),
])
def test_only_documents_that_cannot_hold_a_dtd_take_the_c_parser(body: bytes, fast: bool) -> None:
    assert ts._cannot_hold_a_dtd(body) is fast


def test_entities_hidden_in_utf16_are_refused_too() -> None:
    bomb = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY e "&#x41;">]>'
            '<CallbackRequest><RequestId>&e;</RequestId></CallbackRequest>').encode("utf-16")
    with pytest.raises(InvalidRecord):
        ts.parse_callback(bomb, "text/xml")
