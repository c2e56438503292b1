"""Demo traffic for ``dev --demo N``: a realistic, reproducible mix of outbound records.

Recipients across the local stack's routes: devices (ThingSpace), US numbers (Rev.io),
Venezuelan numbers (Ogangi) and others (the SMPP gateway). Mostly short GSM-7 texts, with
Unicode and long texts where the route takes them, and a few that must fail: numbers the
simulators reject, expired messages, invalid numbers, text too long for its route, South African
numbers over their hourly budget (``DEMO_BUDGET_ENV``), and records that are not valid at all (bad JSON, schema violations) and must land in the DLQ. Every record
carries a ``sms.demo.id`` header so its terminal record can be found, even in the DLQ.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

import orjson

from connector.records import OutboundSms, Recipient, encode_outbound
from connector.devtools.simulators.base import REJECT_SUFFIX

DEMO_HEADER = "sms.demo.id"

# A spend budget (connector.budget) on the local stack: South African numbers (+27, one of the
# "other" region's prefixes) may use 20 segments per hour of the SMPP route, and over it they
# fail (reason budget), so the demo's summary shows a budget outcome. The figure is kept in
# sms.budget: a second demo in the same hour finds it spent from the start.
DEMO_BUDGET_ENV = {"SMS_CONNECTOR_ROUTES__SMPP__BUDGET_REGIONS": "ZA=20/0",
                   "SMS_CONNECTOR_ROUTES__SMPP__OVER_BUDGET": "fail"}

SHORT = ["Your code is {n}", "Your parcel {n} is out for delivery", "Reminder: appointment at 10:30",
         "Balance: $12.50 @ store #4", "Meeting moved to room 4 (2nd floor)", "Ticket {n}: we are on it"]
DEVICE = ["REBOOT", "REPORT {n}", "SET INTERVAL 300", "PING {n}"]
UNICODE = ["Привет! Ваш код {n}", "Order {n} shipped 📦", "¡Hola! Tu código es {n} ✅", "您的验证码是 {n}"]
LONG = ("This is a long message that needs more than one SMS segment so that concatenation is exercised "
        "end to end; it also carries the reference {n} and an escape character or two: [ok] {{x}} € ")


@dataclass(frozen=True)
class DemoRecord:
    demo_id: str
    key: bytes
    value: bytes
    kind: str          # what the demo expects: ok, unicode, long, rejected, expired, invalid, dlq


def _recipient(rng: random.Random, region: str) -> Recipient:
    if region == "device":
        if rng.random() < 0.5:
            return Recipient(device_kind="IMEI", device_id=f"99000086{rng.randint(1000000, 9999999)}")
        return Recipient(device_kind="MDN", device_id=f"{rng.randint(201, 989)}{rng.randint(2000000, 9999999)}")
    prefix = {"us": "+1", "ve": "+58", "other": rng.choice(["+44", "+27", "+49"])}[region]
    return Recipient(phone=f"{prefix}{rng.randint(201, 989)}{rng.randint(2000001, 9999998)}")


def generate(n: int, seed: int = 7, prefix: str = "demo") -> Iterator[DemoRecord]:
    rng = random.Random(seed)
    for i in range(n):
        demo_id = f"{prefix}-{i:06d}"
        region = rng.choices(["device", "us", "ve", "other"], weights=[20, 25, 20, 35])[0]
        rcpt = _recipient(rng, region)
        key = rcpt.key().encode()
        roll = rng.random()
        kind, expires = "ok", None
        text = rng.choice(DEVICE if region == "device" else SHORT).format(n=rng.randint(1000, 9999))
        if roll < 0.01:
            yield DemoRecord(demo_id, key, b'{"client_message_id": "' + demo_id.encode() + b'", oops', "dlq")
            continue
        if roll < 0.02:
            bad = {"client_message_id": demo_id, "recipient": rcpt.as_json(), "text": 42}
            yield DemoRecord(demo_id, key, orjson.dumps(bad), "dlq")
            continue
        if roll < 0.04 and rcpt.phone:
            kind, rcpt = "invalid", Recipient(phone=rcpt.phone[:5])
        elif roll < 0.06 and rcpt.phone:
            kind, rcpt = "rejected", Recipient(phone=rcpt.phone[:-4] + REJECT_SUFFIX)
        elif roll < 0.08:
            kind, expires = "expired", 1_000_000_000.0
        elif roll < 0.09:
            kind, text = "too-long", LONG.format(n=i) * 2      # fails on one-segment routes
        elif roll < 0.20 and region in ("ve", "other"):
            kind, text = "unicode", rng.choice(UNICODE).format(n=rng.randint(1000, 9999))
        elif roll < 0.30 and region in ("ve", "other"):
            kind, text = "long", LONG.format(n=i) * rng.randint(1, 3)
        msg = OutboundSms(client_message_id=demo_id, recipient=rcpt, text=text, expires_at=expires,
                          metadata={"campaign": "demo", "kind": kind})
        yield DemoRecord(demo_id, key, encode_outbound(msg), kind)
