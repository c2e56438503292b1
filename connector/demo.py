"""Demo traffic for ``dev --demo N``: a realistic, reproducible mix of outbound records.

Mostly short GSM-7 texts, then Unicode (emoji, Cyrillic), long multi-segment texts, a few
numbers the simulators reject, a few already expired, a few invalid numbers, and a few records
that are not valid at all (bad JSON, schema violations) and must land in the DLQ. Every record
carries a ``sms.demo.id`` header so its terminal record can be found, even in the DLQ.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

import orjson

from connector.records import OutboundSms, Recipient, encode_outbound

DEMO_HEADER = "sms.demo.id"

SHORT = ["Your code is {n}", "Your parcel {n} is out for delivery", "Reminder: appointment at 10:30",
         "Balance: $12.50 @ store #4", "Hi! Reply STOP to opt out", "Meeting moved to room 4 (2nd floor)"]
UNICODE = ["Привет! Ваш код {n}", "Order {n} shipped 📦", "¡Hola! Tu código es {n} ✅", "您的验证码是 {n}"]
LONG = ("This is a long message that needs more than one SMS segment so that concatenation is exercised "
        "end to end; it also carries the reference {n} and an escape character or two: [ok] {{x}} € ")


@dataclass(frozen=True)
class DemoRecord:
    demo_id: str
    key: bytes
    value: bytes
    kind: str          # what the demo expects: ok, unicode, long, rejected, expired, invalid, dlq


def generate(n: int, seed: int = 7, prefix: str = "demo") -> Iterator[DemoRecord]:
    rng = random.Random(seed)
    for i in range(n):
        demo_id = f"{prefix}-{i:06d}"
        phone = f"+1{rng.randint(201, 989)}{rng.randint(2000000, 9999999)}"
        roll = rng.random()
        kind, text, expires = "ok", rng.choice(SHORT).format(n=rng.randint(1000, 9999)), None
        if roll < 0.01:
            yield DemoRecord(demo_id, phone.encode(), b'{"client_message_id": "' + demo_id.encode() + b'", oops', "dlq")
            continue
        if roll < 0.02:
            bad = {"client_message_id": demo_id, "recipient": {"phone": phone}, "text": 42}
            yield DemoRecord(demo_id, phone.encode(), orjson.dumps(bad), "dlq")
            continue
        if roll < 0.04:
            kind, phone = "invalid", phone[:5]
        elif roll < 0.06:
            kind, phone = "rejected", phone[:-4] + "0000"
        elif roll < 0.08:
            kind, expires = "expired", 1_000_000_000.0
        elif roll < 0.20:
            kind, text = "unicode", rng.choice(UNICODE).format(n=rng.randint(1000, 9999))
        elif roll < 0.30:
            kind, text = "long", LONG.format(n=i) * rng.randint(1, 3)
        msg = OutboundSms(client_message_id=demo_id, recipient=Recipient(phone=phone), text=text,
                          expires_at=expires, metadata={"campaign": "demo", "kind": kind})
        yield DemoRecord(demo_id, phone.encode(), encode_outbound(msg), kind)
