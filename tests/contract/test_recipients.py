"""A person who said STOP is never sent to, whatever form their number takes: through every
provider's simulator over real HTTP, on the worker's own path (config -> senders -> pipeline)."""

from __future__ import annotations

import time

import orjson
import pytest

from connector.records import OutboundSms, Recipient, encode_outbound
from connector.streams.optouts import OptOutTable
from tests.contract.test_providers import case, pipeline_for  # noqa: F401 - the fixture

STOPPED = "+14155550188"

# The opted-out number as producers and providers write it: each ends failed (opted-out when
# it is the number in another form, invalid when it is not a clean number), never sent.
FORMS = [
    ("newline", Recipient(phone=STOPPED + "\n"), "invalid"),
    ("crlf", Recipient(phone=STOPPED + "\r\n"), "invalid"),
    ("nul", Recipient(phone=STOPPED + "\x00"), "invalid"),
    ("tab", Recipient(phone="+1\t4155550188"), "invalid"),
    ("zero-width", Recipient(phone="+1415555\u200b0188"), "invalid"),
    ("bidi", Recipient(phone="\u202d" + STOPPED), "invalid"),
    ("no-break-space", Recipient(phone="+1\u00a04155550188"), "invalid"),
    ("fullwidth", Recipient(phone="+\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff18\uff18"), "invalid"),
    ("letter-o", Recipient(phone="+1415555O188"), "invalid"),
    ("spaces", Recipient(phone=" " + STOPPED + " "), "opted-out"),
    ("formatted", Recipient(phone="+1 (415) 555-0188"), "opted-out"),
    ("dots", Recipient(phone="+1.415.555.0188"), "opted-out"),
    ("canonical", Recipient(phone=STOPPED), "opted-out"),
    ("mdn", Recipient(device_kind="MDN", device_id="4155550188"), "opted-out"),        # ThingSpace form
    ("msisdn", Recipient(device_kind="MSISDN", device_id="14155550188"), "opted-out"),
]


async def test_an_opted_out_number_never_reaches_any_provider(case) -> None:  # noqa: F811
    c, url, sim = case
    p = pipeline_for(c, url)
    table = OptOutTable.__new__(OptOutTable)      # the table's own apply(), without Kafka
    table.numbers = set()
    # the STOP came through Ogangi's MO list, as international digits
    table.apply(b"+14155550188", orjson.dumps({"phone": STOPPED, "opted_out": True}))
    p.optouts = table
    try:
        for name, recipient, reason in FORMS:
            if recipient.device_id is not None and c.provider != "thingspace":
                continue    # device ids are ThingSpace's
            value = encode_outbound(OutboundSms(client_message_id=f"stop-{name}", recipient=recipient, text="hi"))
            t = await p.outcome(value, int(time.time() * 1000))
            record = orjson.loads(t.value or b"{}")
            assert (t.ending, t.reason) == ("failed", reason), (name, t)
            assert record["attempts"] == 0 and record["recipient_region"] in (None, "US"), record
        assert sim.stats.messages == 0, "a message reached the provider"
        # and a clean other number goes out, with its canonical form and region on the record
        value = encode_outbound(OutboundSms(client_message_id="other", recipient=c.recipient, text="hi"))
        t = await p.outcome(value, int(time.time() * 1000))
        assert t.ending == "accepted", t
    finally:
        for sender in p.senders.values():
            await sender.aclose()
            await sender.transport.aclose()


def test_the_table_reads_keys_in_any_accepted_form() -> None:
    table = OptOutTable.__new__(OptOutTable)
    table.numbers = set()
    table.apply(b"+1 (415) 555-0188", orjson.dumps({"phone": "+1 (415) 555-0188", "opted_out": True}))
    assert STOPPED in table and table.numbers == {STOPPED}
    table.apply(b"+14155550188", orjson.dumps({"phone": STOPPED, "opted_out": False}))
    assert STOPPED not in table
