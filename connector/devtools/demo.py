"""Demo traffic for ``dev --demo N``: a realistic, reproducible mix of outbound records.

Recipients across the local stack's routes: devices (ThingSpace), US numbers (Rev.io),
Venezuelan numbers (Ogangi) and others (the SMPP gateway). Mostly short GSM-7 texts, with
Unicode and long texts where the route takes them, and a few that must fail: numbers the
simulators reject, expired messages, invalid numbers, text too long for its route, South African
numbers over their hourly budget (``DEMO_GUARDS_ENV``), and records that are not valid at all (bad
JSON, schema violations) and must land in the DLQ. The cost guards: texts with curly quotes and
dashes (``smart``: sent as GSM-7 on the local routes, which turn smart encoding on) and
premium-rate recipients (``blocked``: failed, reason blocked-destination, no provider call). Every record
carries a ``sms.demo.id`` header so its terminal record can be found, even in the DLQ.

Scheduled sends and quiet hours: a few records carry a ``send_at`` seconds ahead (sent when it
comes); a few go to the dev stack's ``quiet`` route (quiet hours 21:00-08:00) naming a time zone
where it is night now: those are held until morning there (kind ``held``: no terminal record is
expected while the demo runs), unless they bypass quiet hours like a one-time password (``otp``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Iterator

import orjson

from connector import numbers
from connector.errors import InvalidMessage
from connector.records import OutboundSms, Recipient, encode_outbound
from connector.devtools.simulators.base import REJECT_SUFFIX

DEMO_HEADER = "sms.demo.id"
QUIET_ROUTE = "quiet"   # the dev stack's route with quiet hours (connector.devtools.stack.LOCAL_ROUTES)

# The guards dev's worker runs with, beyond the local stack's routes. A spend budget
# (connector.budget): South African numbers (+27, one of the "other" region's prefixes) may use
# 20 segments per hour of the SMPP route, and over it they fail (reason budget), so the demo's
# summary shows a budget outcome (the figure is kept in sms.budget, as in production, though
# dev's broker forgets it when dev stops). A rate limit on the quiet route (its one-time passwords):
# the deployment's figure, of which the worker takes the share its partitions are of all (all of
# them for dev's one worker); the summary shows it.
DEMO_GUARDS_ENV = {"SMS_CONNECTOR_ROUTES__SMPP__BUDGET_REGIONS": "ZA=20/0",
                   "SMS_CONNECTOR_ROUTES__SMPP__OVER_BUDGET": "fail",
                   f"SMS_CONNECTOR_ROUTES__{QUIET_ROUTE.upper()}__RATE_LIMIT": "10"}

SHORT = ["Your code is {n}", "Your parcel {n} is out for delivery", "Reminder: appointment at 10:30",
         "Balance: $12.50 @ store #4", "Meeting moved to room 4 (2nd floor)", "Ticket {n}: we are on it"]
DEVICE = ["REBOOT", "REPORT {n}", "SET INTERVAL 300", "PING {n}"]
UNICODE = ["Привет! Ваш код {n}", "Order {n} shipped 📦", "¡Hola! Tu código es {n} ✅", "您的验证码是 {n}"]
# Typographic punctuation only: GSM-7 look-alikes exist for all of it (smart encoding).
SMART = ["Don\u2019t forget: your appointment\u2019s tomorrow at 10:30 \u2014 reply \u201cYES\u201d to confirm or "
         "\u201cNO\u201d to reschedule. Ref {n}",
         "Your order {n} is ready\u2026 pick it up at the \u201cNorth\u201d desk \u2013 open 9\u201318, bring your ID "
         "and this message.",
         "We\u2019ve received your payment of $12.50 \u2013 thank you! Your receipt \u2019{n}\u2019 is in the app\u2026"]
# Premium-rate numbers (libphonenumber): every route blocks them by default.
PREMIUM = ["+1900555{n}", "+44909879{n}"]
LONG = ("This is a long message that needs more than one SMS segment so that concatenation is exercised "
        "end to end; it also carries the reference {n} and an escape character or two: [ok] {{x}} € ")


@dataclass(frozen=True)
class DemoRecord:
    demo_id: str
    key: bytes
    value: bytes
    kind: str          # what the demo expects: ok, unicode, long, smart, rejected, expired, invalid, blocked, dlq,
    #                    scheduled, otp, held (waits for the end of quiet hours: no terminal record yet)


# one zone every few hours around the world: whatever the time, some are at night (21:00-08:00)
ZONES = ("Pacific/Auckland", "Asia/Tokyo", "Asia/Kolkata", "Europe/Berlin", "America/Sao_Paulo",
         "America/New_York", "America/Los_Angeles", "Pacific/Honolulu")


def night_zones(now: float) -> list[str]:
    """The zones of ``ZONES`` where local time is between 22:00 and 06:00 at ``now`` (never empty:
    they are at most four hours apart)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo
    return [z for z in ZONES if not 6 <= datetime.fromtimestamp(now, ZoneInfo(z)).hour < 22]


def _recipient(rng: random.Random, region: str) -> Recipient:
    if region == "device":
        if rng.random() < 0.5:
            return Recipient(device_kind="IMEI", device_id=f"99000086{rng.randint(1000000, 9999999)}")
        return Recipient(device_kind="MDN", device_id=f"{rng.randint(201, 989)}{rng.randint(2000000, 9999999)}")
    prefix = {"us": "+1", "ve": "+58", "other": rng.choice(["+44", "+27", "+49"])}[region]
    return Recipient(phone=f"{prefix}{rng.randint(201, 989)}{rng.randint(2000001, 9999998)}")


def _premium(rcpt: Recipient) -> bool:
    """A premium-rate number: a phone, or a device addressed by its number (an MDN in +1 900)."""
    try:
        return rcpt.e164 is not None and numbers.parse(rcpt.e164).number_type == "premium-rate"
    except InvalidMessage:
        return False


def generate(n: int, seed: int = 7, prefix: str = "demo", now: float | None = None) -> Iterator[DemoRecord]:
    """``now``: the clock scheduled sends and quiet hours are set against (the kinds and texts
    depend on ``seed`` alone)."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    nights = night_zones(now)
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
        elif roll < 0.10 and rcpt.phone:
            kind, rcpt = "blocked", Recipient(phone=rng.choice(PREMIUM).format(n=rng.randint(1000, 9999)))
        elif roll < 0.20 and region in ("ve", "other"):
            kind, text = "unicode", rng.choice(UNICODE).format(n=rng.randint(1000, 9999))
        elif roll < 0.30 and region in ("ve", "other"):
            kind, text = "long", LONG.format(n=i) * rng.randint(1, 3)
        elif roll < 0.40 and rcpt.phone:
            kind, text = "smart", rng.choice(SMART).format(n=rng.randint(1000, 9999))
        if kind != "blocked" and _premium(rcpt):
            kind = "blocked"     # a random number (or a device's MDN) that happens to be premium-rate
        schedule: dict[str, object] = {}
        if kind == "ok" and 0.40 <= roll < 0.43:
            kind, schedule = "scheduled", {"send_at": now + 4 + 8 * rng.random()}
        elif kind == "ok" and 0.43 <= roll < 0.48 and rcpt.phone:
            zone = nights[int(rng.random() * len(nights))]
            kind = "otp" if rng.random() < 0.3 else "held"
            schedule = {"route": QUIET_ROUTE, "recipient_time_zone": zone, "bypass_quiet_hours": kind == "otp"}
        msg = OutboundSms(client_message_id=demo_id, recipient=rcpt, text=text, expires_at=expires,
                          metadata={"campaign": "demo", "kind": kind}, **schedule)  # type: ignore[arg-type]
        yield DemoRecord(demo_id, key, encode_outbound(msg), kind)
