"""Record factories for integration tests."""

from __future__ import annotations

import aiohttp

from connector.demo import DEMO_HEADER
from connector.records import OutboundSms, Recipient, encode_outbound

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def phone(i: int) -> str:
    return f"+1415{5550000 + i + 1:07d}"   # never ends in 0000 (the simulators' reject rule)


def outbound(cid: str, to: str, text: str = "hello", **kw: object) -> Record:
    msg = OutboundSms(client_message_id=cid, recipient=Recipient(phone=to), text=text, **kw)  # type: ignore[arg-type]
    return to.encode(), encode_outbound(msg), [(DEMO_HEADER, cid.encode())]


def many(n: int, keys: int, prefix: str = "m") -> list[Record]:
    """n messages over ``keys`` recipients; message i goes to recipient i % keys."""
    return [outbound(f"{prefix}-{i}", phone(i % keys), f"message {i}") for i in range(n)]


async def metric_sum(url: str, name: str) -> float:
    """The sum of a metric's samples on a worker's /metrics."""
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))
