"""Inbound acceptance on a full worker (--role all): every seed 000 callback sample, posted over
HTTP with a RequestId the connector was given, becomes the right sms.delivery record carrying the
client message id; a STOP opts the sender out everywhere."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from connector.records import OutboundSms, Recipient, encode_outbound
from connector.devtools.stack import Follower, LocalStack, produce
from connector.ops.tools import recipient_key
from tests.unit.test_callbacks import PASSWORD, REQ_DELIVERY, REQ_PROGRESS, SEED_CASES, USERNAME, with_credentials

pytestmark = pytest.mark.integration



@pytest.fixture
async def full(broker: LocalStack) -> LocalStack:
    s = broker
    for name in ("smpp_rest", "revio", "ogangi", "thingspace"):
        await s.start_simulator(name)
    yield s
    await s.stop()


def send(cid: str, recipient: Recipient, text: str = "hello") -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    msg = OutboundSms(client_message_id=cid, recipient=recipient, text=text)
    return recipient_key(msg), encode_outbound(msg), [("sms.demo.id", cid.encode())]


async def test_seed_callback_and_stop(full: LocalStack) -> None:
    env = {"SMS_CONNECTOR_CALLBACKS__THINGSPACE_USERNAME": USERNAME,
           "SMS_CONNECTOR_CALLBACKS__THINGSPACE_PASSWORD": PASSWORD,
           "SMS_CONNECTOR_INBOUND__MO_POLL_INTERVAL_S": "0.3"}
    worker = await full.start_worker(env=env, roles=("all",))
    async with Follower(full.kafka) as f:
        f.tally.keep_records = True
        # one message per seed request: the per-device / request-complete samples are about a
        # MEID, the delivery confirmations about an MDN
        await produce(full.kafka, [send("ts-progress", Recipient(device_kind="MEID", device_id="A100001F702731")),
                                   send("ts-delivery", Recipient(device_kind="MDN", device_id="8589268379"))])
        assert await f.wait_for(["ts-progress", "ts-delivery"], timeout=60)
        issued = {}
        for cid, seed_request in (("ts-progress", REQ_PROGRESS), ("ts-delivery", REQ_DELIVERY)):
            accepted = f.tally.records[cid][0]
            assert accepted["outcome"] == "accepted", accepted
            issued[seed_request] = (cid, accepted["provider_request_id"])

        async with aiohttp.ClientSession() as http:
            for case in SEED_CASES:
                sample = case.values[0]
                cid, request_id = issued[case.values[5]]
                body = with_credentials(sample.replace(case.values[5], request_id))
                for _ in range(2):   # ThingSpace resends: one record
                    async with http.post(worker.url + "/callbacks/thingspace", data=body,
                                         headers={"Content-Type": "text/xml"}) as r:
                        assert r.status == 200, await r.text()
            wrong = with_credentials(SEED_CASES[2].values[0], password_xml="nope")
            async with http.post(worker.url + "/callbacks/thingspace", data=wrong,
                                 headers={"Content-Type": "text/xml"}) as r:
                assert r.status == 401
        want = sorted((issued[c.values[5]][0], c.values[1], c.values[2]) for c in SEED_CASES)
        for _ in range(300):
            events = sorted((e["client_message_id"], e["kind"], e["state"]) for e in f.tally.delivery_events)
            if len(events) >= len(want):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)   # any duplicate?
        events = sorted((e["client_message_id"], e["kind"], e["state"]) for e in f.tally.delivery_events)
        assert events == want

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

        # The same person in every other form and on every route: never sent (issue 12).
        before = {name: (await full.sim_stats(name))["messages"] for name in full.simulators}
        variants = [
            ("v-newline", Recipient(phone="+14155550123\n"), None, "invalid"),
            ("v-zero-width", Recipient(phone="+1415555\u200b0123"), None, "invalid"),
            ("v-formatted", Recipient(phone="+1 (415) 555-0123"), None, "opted-out"),
            ("v-smpp", Recipient(phone=" +14155550123 "), "smpp", "opted-out"),
            ("v-ogangi", Recipient(phone="+1.415.555.0123"), "ogangi", "opted-out"),
            ("v-thingspace", Recipient(phone="+14155550123"), "thingspace", "opted-out"),
            ("v-mdn", Recipient(device_kind="MDN", device_id="4155550123"), None, "opted-out"),
        ]
        records = []
        for cid, recipient, route, _ in variants:
            msg = OutboundSms(client_message_id=cid, recipient=recipient, text="hello", route=route)
            records.append((recipient_key(msg), encode_outbound(msg), [("sms.demo.id", cid.encode())]))
        await produce(full.kafka, records)
        assert await f.wait_for([v[0] for v in variants], timeout=60)
        got = {cid: (f.tally.records[cid][0]["outcome"], f.tally.records[cid][0]["reason"]) for cid, *_ in variants}
        assert got == {cid: ("failed", reason) for cid, _, _, reason in variants}
        after = {name: (await full.sim_stats(name))["messages"] for name in full.simulators}
        assert after == before, "a message to the opted-out person reached a provider"
