"""Record factories for integration tests."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Callable

import aiohttp

from connector.devtools.demo import DEMO_HEADER
from connector.records import OutboundSms, Recipient, encode_outbound

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]

FULL = os.environ.get("FAULTS") == "full"   # `make faults`; CI runs the bounded sizes


def exactly_once() -> bool:
    """Whether the test broker runs transactions, so workers run exactly-once (kafka.exactly_once,
    on by default): Apache Kafka yes, the embedded Tansu broker no (at-least-once)."""
    from tests.conftest import ON_KAFKA
    return ON_KAFKA


def size(full: int, bounded: int) -> int:
    """A fault scenario's size: full under `make faults`, bounded in `make test`."""
    return full if FULL else bounded


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    """Wait until ``predicate()`` holds; fail the test after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


class Phases:
    """Wall time of a test's phases, printed with its figures (where a slow test's time goes)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.took: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.took.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return "phases: " + ", ".join(f"{name} {s:.1f} s" for name, s in self.took)


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
