"""Smart encoding and destination rules end to end: sms.outbound on a real broker -> the worker
process -> the SMPP simulator process -> sms.outbound.accepted / .failed, and the metrics."""

from __future__ import annotations

import pytest

from connector.devtools.stack import Follower, LocalStack, produce
from tests.integration.helpers import metric_sum, outbound, phone

pytestmark = pytest.mark.integration

CURLY = ("Your parcel\u2019s on its way \u2014 track it with the code \u201c{i:04d}\u201d in the app. "
         "Questions? Reply HELP\u2026")
GSM7 = "Your parcel's on its way - track it with the code \"{i:04d}\" in the app. Questions? Reply HELP..."


async def test_look_alikes_go_as_gsm7_and_blocked_destinations_never_reach_the_provider(stack: LocalStack) -> None:
    w = await stack.start_worker(routes={"smpp": {"provider": "smpp_rest", "batch_max": "20",
                                                  "smart_encoding": "true", "block_regions": "CU"}})
    smart = [outbound(f"smart-{i}", phone(i), CURLY.format(i=i)) for i in range(20)]
    emoji = [outbound(f"emoji-{i}", phone(100 + i), "Parcel\u2019s here \U0001f4e6") for i in range(3)]
    premium = [outbound(f"premium-{i}", f"+1900555{1001 + i}") for i in range(5)]
    cuba = [outbound(f"cuba-{i}", f"+53512345{10 + i}") for i in range(5)]
    plain = [outbound(f"plain-{i}", phone(200 + i)) for i in range(10)]
    records = smart + emoji + premium + cuba + plain
    ids = [h[0][1].decode() for _, _, h in records]
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        await produce(stack.kafka, records)
        assert await f.wait_for(ids, timeout=60, settle_s=0.5), f"missing {f.tally.missing(ids)}"
    t = f.tally
    assert t.duplicates(ids) == 0
    result = {cid: t.records[cid][0] for cid in ids}
    for i in range(20):
        r = result[f"smart-{i}"]
        assert (r["outcome"], r["encoding"], r["segments"], r["original_encoding"], r["original_segments"]) == \
            ("accepted", "gsm7", 1, "ucs2", 2), r
    for i in range(3):   # an emoji has no look-alike: sent as written, curly quote included
        r = result[f"emoji-{i}"]
        assert (r["outcome"], r["encoding"]) == ("accepted", "ucs2") and "original_segments" not in r, r
    for cid in [c for c in ids if c.startswith(("premium-", "cuba-"))]:
        r = result[cid]
        assert (r["outcome"], r["reason"], r["attempts"]) == ("failed", "blocked-destination", 0), r
    assert all(result[f"plain-{i}"]["outcome"] == "accepted" for i in range(10))
    stats = await stack.sim_stats("smpp_rest")
    assert stats["messages"] == 33, "the provider saw a blocked destination"
    texts = set(stats["texts"])
    assert {GSM7.format(i=i) for i in range(20)} <= texts
    assert not any("\u2019" in x or "\u201c" in x for x in texts if "\U0001f4e6" not in x)
    assert await metric_sum(w.url, "sms_outbound_segments_saved_total") == 20
    assert await metric_sum(w.url, "sms_outbound_smart_encoded_total") == 20
    assert await metric_sum(w.url, "sms_outbound_blocked_total") == 10
