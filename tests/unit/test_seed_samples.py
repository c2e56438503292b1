"""Every simulator answers the seed documents' own sample requests as the documents show.

Each sample request of seeds 000-004 is replayed, as written (only credentials and session
keys, which the documents leave as placeholders, are the simulator's), against its simulator
over real HTTP on loopback; the answer must be the documented success shape. A simulator
trigger (rejected numbers, faults) must never be one a sample uses: the Rev.io simulator once
refused SMS_Send's own sample (ToNumber 8504700000) because every simulator rejected numbers
ending in 0000.
"""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
import orjson
import pytest

from connector.http import HttpRequest
from connector.providers import ogangi as og
from connector.providers.revio import RevIo, parse_optout, parse_sms_send
from connector.devtools.simulators import SIMULATORS, serve
from connector.devtools.simulators.base import REJECT_SUFFIX
from connector.devtools.simulators.ogangi import UNDELIVERED_SUFFIX as OGANGI_UNDELIVERED_SUFFIX
from tests.unit.test_ogangi import env  # noqa: F401 - fixture
from tests.unit.test_revio import (  # noqa: F401 - sim is a fixture
    SEED_OPTOUT_CREATE_REQUEST,
    SEED_OPTOUT_DELETE_REQUEST,
    SEED_SMS_SEND_REQUEST,
    call,
    login,
    sim,
    sim_config,
)
from tests.unit.test_thingspace import SEED_000_SEND_REQUEST, clock, lb  # noqa: F401 - fixtures

# Every number the seed documents' samples use (phone numbers, TNs, MDNs).
SEED_NUMBERS = ("8504700000", "6788651234", "1234567890", "1234567891", "7022895555", "8589268379",
                "13056708084", "19893653744", "19893143924", "58123456789", "1200000001")


def test_no_simulator_trigger_is_a_seed_sample_number() -> None:
    assert not [n for n in SEED_NUMBERS if n.endswith(REJECT_SUFFIX)]
    assert not [n for n in SEED_NUMBERS if n.endswith(OGANGI_UNDELIVERED_SUFFIX)]


# --- seed 001: Rev.io ---------------------------------------------------------------------------


def _soap(body: bytes) -> bytes:
    return (b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
            b'envelope/"><soap:Body>' + body + b"</soap:Body></soap:Envelope>")


def _revio_request(url: str, op: str, body: bytes, ns: str = "http://api.myh2o.com/v20") -> HttpRequest:
    return HttpRequest("POST", url + "/v20/default.asmx",
                       {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{ns}/{op}"'}, body)


async def test_revio_sms_send_sample(sim) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    s, url, session = sim
    p = RevIo(sim_config(url), route="rev")
    await login(session, p)
    body = _soap(SEED_SMS_SEND_REQUEST.replace(b"xyzabc123", escape(p.auth.session_key or "").encode()))
    response = await call(session, _revio_request(url, "SMS_Send", body, "http://api.myh2o.com"))
    accepted = parse_sms_send(response)      # Success=true, ID, Profile{SmsProfileID, FromNumber}
    assert accepted.provider_message_id and set(accepted.details or {}) == {"sms_profile_id", "from_number"}
    assert (s.sent[-1]["to"], s.sent[-1]["message"]) == ("8504700000", "Test Message from Rev.io")


async def test_revio_opt_out_samples(sim) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    s, url, session = sim
    # The samples authenticate with the documents' placeholder credentials.
    s.credentials.update(username="[Rev.io user]", password="[Rev.io password]", client="[Rev.io Client Code]")
    created = parse_optout("create", await call(session, _revio_request(url, "SMSOptOut_Create",
                                                                         SEED_OPTOUT_CREATE_REQUEST)))
    assert created.complete and "6788651234" in s.optouts
    # the seed's "already in the opt-out list" answer, for a second create
    again = await call(session, _revio_request(url, "SMSOptOut_Create", SEED_OPTOUT_CREATE_REQUEST))
    assert b"<Message>'6788651234' is already in the opt-out list.</Message>" in again.body
    assert b"<Error_Code>S2010</Error_Code>" in again.body
    s.optouts["1234567890"] = None          # the delete sample removes a listed number
    deleted = parse_optout("delete", await call(session, _revio_request(url, "SMSOptOut_Delete",
                                                                         SEED_OPTOUT_DELETE_REQUEST)))
    assert deleted.complete and "1234567890" not in s.optouts


# --- seeds 000 and 002: ThingSpace -----------------------------------------------------------------


async def test_thingspace_send_sample(lb) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    # Seed 000's SendSmsMessage (SOAP form) in the REST form the API takes: the same device,
    # encoding and text.
    assert "<nph1:Identifier>7022895555</nph1:Identifier>" in SEED_000_SEND_REQUEST
    p = lb.provider()
    await lb.login(p.auth)
    body = {"deviceIds": [{"kind": "MDN", "id": "7022895555"}], "dataEncoding": "7-bit", "smsMessage": "Status"}
    req = p.auth.apply(HttpRequest("POST", lb.config.base_url + "/m2m/v1/sms", {}, orjson.dumps(body)))
    response = await lb.call(req)
    assert response.status == 200, response.body
    assert set(orjson.loads(response.body)) == {"requestId"}


async def test_thingspace_mo_queue_samples(lb) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    p = lb.provider()
    await lb.login(p.auth)
    account = lb.config.account_name
    start = p.auth.apply(HttpRequest("PUT", f"{lb.config.base_url}/m2m/v1/sms/{account}/startCallbacks",
                                     {"Content-Type": "application/json"}, b""))
    response = await lb.call(start)
    assert (response.status, orjson.loads(response.body)) == (200, {"success": True})
    history = p.auth.apply(HttpRequest("GET", f"{lb.config.base_url}/m2m/v1/sms/{account}/history", {}, b""))
    response = await lb.call(history)
    assert response.status == 200 and {"messages", "hasMoreData"} <= set(orjson.loads(response.body))


# --- seed 003: the SMPP gateway's REST API -------------------------------------------------------

SMPP_XML_SAMPLE = b"""<SendSMPPSmsRequest xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns="http://schemas.datacontract.org/2004/07/digitaluapi.ServiceModel">
<Messages>
<SMPPMessage>
<channel>String</channel>
<clientMessageId>String</clientMessageId>
<content>String</content>
<to>String</to>
</SMPPMessage>
</Messages>
</SendSMPPSmsRequest>"""


@pytest.mark.parametrize("content_type, body", [
    ("application/xml", SMPP_XML_SAMPLE),
    ("application/json", orjson.dumps({"Messages": [{"channel": "String", "to": "String", "content": "String",
                                                     "clientMessageId": "String"}]})),
])
async def test_smpp_send_sample(content_type: str, body: bytes) -> None:
    s = SIMULATORS["smpp_rest"]()
    runner = await serve(s, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}{s.base_path}"
    key = s.default_credentials()["api_key"]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/communication/message/smpp/sms", data=body,
                                    headers={"Content-Type": content_type, "Accept": content_type,
                                             "Authorization": f"Bearer {key}"}) as r:
                status, answer = r.status, await r.read()
    finally:
        await runner.cleanup()
    # The documented answer: 200, one SMPPResponseMsg echoing the message. The sample's `to` is
    # the placeholder "String", so (as the seed's sample response shows) it is not accepted.
    assert status == 200, answer
    if content_type == "application/xml":
        assert answer.startswith(b"<SMPPMsgResponse") and b"<clientMessageId>String</clientMessageId>" in answer
        assert b"<accepted>false</accepted>" in answer
    else:
        (result,) = orjson.loads(answer)["messages"]
        assert result["accepted"] is False and result["msg"]["clientMessageId"] == "String"


# --- seed 004: Ogangi ------------------------------------------------------------------------------


def _ogangi_call(env: Any, call: str, params: list[str]) -> HttpRequest:  # noqa: F811
    creds = env.sim.credentials
    return HttpRequest("GET", og.signed_url(env.base_url, og.CALL_PATHS[call], params, public_key=creds["public_key"],
                                            private_key=creds["private_key"]), {"Accept": "application/xml"})


@pytest.fixture
def seeded(env):  # type: ignore[no-untyped-def]  # noqa: F811
    env.sim.credentials = {**env.sim.credentials, "instance_id": "43"}    # the samples' workspace
    return env


async def test_ogangi_send_samples(seeded) -> None:  # type: ignore[no-untyped-def]
    env = seeded
    text = og.b64("OGANGI TEST MESSAGE")
    answer = await env.call(_ogangi_call(env, og.SEND_SMS, ["43", "carrierName", "19893653744",
                                                            og.b64("13056708084"), text]))
    envelope = og.read_envelope(answer.body)
    assert (envelope.input, envelope.status) == ("sendSMS", "OK")
    message = envelope.result.find(".//message")
    assert (message.findtext("to"), message.findtext("from"), message.findtext("text")) == (
        "13056708084", "19893653744", "OGANGI TEST MESSAGE")
    for params in (["43", "19893653744", "null", "13056708084", text],
                   ["43", "19893653744", "null", "13056708084", text, "FLAG"]):
        envelope = og.read_envelope((await env.call(_ogangi_call(env, og.SEND_MT, params))).body)
        assert (envelope.input, envelope.status) == ("sendMT", "OK")
    pin = await env.call(_ogangi_call(env, og.SEND_PIN, ["43", "carrierName", "19893653744", "13056708084",
                                                         og.b64("Your PIN"), "6"]))
    assert re.fullmatch(r"[0-9]{6}", og.read_envelope(pin.body).result.findtext(".//pin") or "")


async def test_ogangi_mo_samples(seeded) -> None:  # type: ignore[no-untyped-def]
    env = seeded
    fired = og.parse_fire_message(await env.call(_ogangi_call(
        env, og.FIRE_MESSAGE, ["43", "1200000001", og.b64("Test qa API fireMessage.")])))
    assert (fired.instance_id, fired.mobile_number, fired.text) == ("43", "1200000001", "Test qa API fireMessage.")
    await env.admin("POST", "/_sim/ogangi/mo", [{"from": "58123456789", "to": "19893143924", "text": "Test",
                                                 "carrier": "Movistar", "keyword": "^OGANGI.*"}])
    page = og.parse_get_mo_messages(await env.call(_ogangi_call(env, og.GET_MO_MESSAGES, ["43", "1", "10", "null"])))
    assert ("58123456789", "19893143924", "Test") in [(m.sender, m.to, m.text) for m in page.messages]
