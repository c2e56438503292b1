"""Inbound acceptance on a full worker (--role all): a seed callback with a real RequestId becomes
an sms.delivery record carrying the client message id; a STOP opts the sender out everywhere."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import orjson
import pytest

from connector.records import OutboundSms, Recipient, encode_outbound
from connector.stack import Follower, LocalStack, produce
from connector.tools import recipient_key

pytestmark = pytest.mark.integration

SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"
USER, PASSWORD = "cb-user", "cb-pass-123456"


def seed_delivered_sample() -> bytes:
    """Seed 000's SMS delivery confirmation ("Delivered") sample, as printed."""
    text = (SEEDS / "000_3d126904b5fe7187.txt").read_text()
    start = text.index('<s:Envelope', text.index("<Confirmation>Delivered") - 1200)
    end = text.index("</s:Body>", start) + len("</s:Body>")
    sample = text[start:end]
    assert "<Confirmation>Delivered</Confirmation>" in sample
    return sample.encode()


@pytest.fixture
async def full() -> LocalStack:
    s = LocalStack()
    await s.start_broker()
    for name in ("smpp_rest", "revio", "ogangi", "thingspace"):
        await s.start_simulator(name)
    yield s
    await s.stop()


def send(cid: str, recipient: Recipient, text: str = "hello") -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    msg = OutboundSms(client_message_id=cid, recipient=recipient, text=text)
    return recipient_key(msg), encode_outbound(msg), [("sms.demo.id", cid.encode())]


async def test_seed_callback_and_stop(full: LocalStack) -> None:
    env = {"SMS_CONNECTOR_CALLBACKS__THINGSPACE_USERNAME": USER,
           "SMS_CONNECTOR_CALLBACKS__THINGSPACE_PASSWORD": PASSWORD,
           "SMS_CONNECTOR_INBOUND__MO_POLL_INTERVAL_S": "0.3"}
    worker = await full.start_worker(env=env, roles=("all",))
    device = Recipient(device_kind="MDN", device_id="8589268379")
    async with Follower(full.kafka) as f:
        f.tally.keep_records = True
        await produce(full.kafka, [send("ts-1", device)])
        assert await f.wait_for(["ts-1"], timeout=60)
        accepted = f.tally.records["ts-1"][0]
        assert accepted["outcome"] == "accepted", accepted
        request_id = accepted["provider_request_id"]

        # The seed's sample, RequestId replaced by the one the connector was given, credentials ours.
        body = seed_delivered_sample()
        body = re.sub(rb"<RequestId>[^<]*</RequestId>", b"<RequestId>" + request_id.encode() + b"</RequestId>", body)
        body = body.replace(b"<Username/>", f"<Username>{USER}</Username>".encode())
        body = body.replace(b"<Password/>", f"<Password>{PASSWORD}</Password>".encode())
        async with aiohttp.ClientSession() as http:
            for _ in range(3):   # ThingSpace resends: one record
                async with http.post(worker.url + "/callbacks/thingspace", data=body,
                                     headers={"Content-Type": "text/xml"}) as r:
                    assert r.status == 200, await r.text()
            async with http.post(worker.url + "/callbacks/thingspace", data=body.replace(PASSWORD.encode(), b"nope"),
                                 headers={"Content-Type": "text/xml"}) as r:
                assert r.status == 401
        for _ in range(200):
            if f.tally.deliveries[("thingspace", "delivered")]:
                break
            await asyncio.sleep(0.1)
        assert f.tally.deliveries[("thingspace", "delivered")] == 1

        # STOP from a US number (through Ogangi's MO list), then a send to it via Rev.io.
        async with aiohttp.ClientSession() as http:
            async with http.post(full.simulators["ogangi"].url + "/_sim/ogangi/mo",
                                 data=orjson.dumps([{"from": "14155550123", "to": "24365", "text": "STOP"}])) as r:
                assert r.status < 300, await r.text()
        stopped = Recipient(phone="+14155550123")
        for _ in range(100):
            async with aiohttp.ClientSession() as http:
                async with http.get(full.simulators["revio"].url + "/_sim/revio/optouts") as r:
                    listed = await r.text()
            if "4155550123" in listed:
                break
            await asyncio.sleep(0.2)
        assert "4155550123" in listed, "the opt-out was not mirrored to Rev.io"
        await asyncio.sleep(1.0)   # the dispatcher's table follows sms.optout
        await produce(full.kafka, [send("after-stop", stopped)])
        assert await f.wait_for(["after-stop"], timeout=60)
        failed = f.tally.records["after-stop"][0]
        assert (failed["outcome"], failed["reason"], failed["attempts"]) == ("failed", "opted-out", 0)
