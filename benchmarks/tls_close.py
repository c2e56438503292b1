#!/usr/bin/env python
"""How long closing each kind of Kafka client takes over SASL_SSL, as the worker runs it (uvloop).

Over TLS the event loop waits up to 30 s (``ssl_shutdown_timeout``) for the broker's close_notify
on each connection a client closes. This starts a SASL_SSL Apache Kafka, then per round closes
12 at a time of: groupless readers (read to the end of a partition, a fetch in flight), group
consumers (offsets committed), idempotent producers (acknowledged) and transactional producers
(transaction committed), each with aiokafka's ``stop()`` and with ``streams.plumbing.stop_client``,
and prints the longest close and how many took over 5 s.

Example: ``.venv/bin/python benchmarks/tls_close.py --rounds 6``
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any, Awaitable, Callable

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connector.config import KafkaSettings
from connector.devtools.kafka_broker import KafkaCluster
from connector.kafka import client_options
from connector.streams.plumbing import groupless_consumer, read_to_end, stop_client

TOPIC, PARTITIONS = "tls-close", 12


async def started(k: KafkaSettings, kind: str, p: int) -> Any:
    """A client of ``kind`` whose work is done, ready to close."""
    o = client_options(k)
    if kind == "reader":
        c = groupless_consumer(k)
        await c.start()
        await read_to_end(c, {TopicPartition(TOPIC, p): None}, lambda r: None, fetch_timeout_ms=500)
    elif kind == "group":
        c = AIOKafkaConsumer(TOPIC, **o, group_id=f"g-{uuid.uuid4().hex[:8]}", enable_auto_commit=False,
                             isolation_level="read_committed")
        await c.start()
        await c.getmany(timeout_ms=1500)
        await c.commit()
    elif kind == "producer":
        c = AIOKafkaProducer(**o, enable_idempotence=True)
        await c.start()
        await c.send_and_wait(TOPIC, b"x", partition=p)
    else:
        c = AIOKafkaProducer(**o, transactional_id=f"t-{uuid.uuid4().hex[:8]}")
        await c.start()
        async with c.transaction():
            await c.send_and_wait(TOPIC, b"x", partition=p)
    return c


async def timed_close(k: KafkaSettings, kind: str, p: int, close: Callable[[Any], Awaitable[None]]) -> float:
    c = await started(k, kind, p)
    began = time.monotonic()
    await close(c)
    return time.monotonic() - began


async def main(k: KafkaSettings, rounds: int) -> None:
    admin = AIOKafkaAdminClient(**client_options(k))
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    await admin.close()
    await asyncio.sleep(2)
    closes: dict[str, Callable[[Any], Awaitable[None]]] = {"stop()": lambda c: c.stop(), "stop_client": stop_client}
    for r in range(rounds):
        for how, close in closes.items():
            for kind in ("reader", "group", "producer", "transactional"):
                took = await asyncio.gather(*(timed_close(k, kind, p, close) for p in range(PARTITIONS)))
                print(f"round {r} {how:<11} {kind:<13} longest {max(took):5.1f} s, over 5 s: "
                      f"{sum(t > 5 for t in took)} of {len(took)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cluster = KafkaCluster(security="sasl_ssl").start()
    try:
        uvloop.run(main(cluster.settings(), args.rounds))
    finally:
        cluster.stop()
