#!/usr/bin/env python
"""CPU per message of the dispatcher's produce side alone: ``streams.batcher`` + aiokafka, real broker.

``sms-connector bench`` measures the whole worker on a shared, noisy machine; ``hot_path.py``
leaves Kafka out. This writes what the dispatcher writes per message in ``single`` (an accepted
record, a correlation record, the ledger's ``done`` entry: three ``Batcher.send`` to three topics,
awaited) for ``--messages`` messages, ``--in-flight`` at once, each after a simulated provider call
of ``--call-ms`` on average (so records arrive spread out, as in ``single``), spread over the topics' partitions,
and reports this process's CPU time (``time.process_time``) per 1,000 messages, best of
``--repeat`` runs, with the number of batches handed to aiokafka per message, the waits in aiokafka's ``MessageBatch.wait_drain`` per message and the time from a
message's sends to its last acknowledgement (p50, p99).

The broker is the embedded Tansu (started here, with the contract's topics) or ``--bootstrap-servers``.

Example: ``.venv/bin/python benchmarks/produce_path.py --messages 20000``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import MessageBatch

from connector import contract as topics
from connector.config import KafkaSettings
from connector.kafka import client_options
from connector.streams.batcher import Batcher


async def one_run(k: KafkaSettings, messages: int, in_flight: int, linger_ms: float, call_ms: float) -> dict[str, float]:
    producer = AIOKafkaProducer(**client_options(k), acks="all", linger_ms=linger_ms, max_batch_size=256 * 1024)
    await producer.start()
    names = [topics.spec(t).name for t in ("accepted", "correlation", "ledger")]
    parts = {t: len(await producer.partitions_for(t)) for t in names}
    batcher = Batcher(producer, linger_s=linger_ms / 1000)
    handed = 0
    send_batch = producer.send_batch

    async def counting(*args: object, **kw: object) -> object:
        nonlocal handed
        handed += 1
        return await send_batch(*args, **kw)  # type: ignore[arg-type]

    producer.send_batch = counting  # type: ignore[method-assign]
    waits = 0
    wait_drain = MessageBatch.wait_drain

    async def counting_waits(self: MessageBatch, timeout: float | None = None) -> None:
        nonlocal waits
        waits += 1
        await wait_drain(self, timeout)

    MessageBatch.wait_drain = counting_waits  # type: ignore[method-assign]
    value = b'{"schema_version":1,"client_message_id":"pp-0000000","provider":"smpp","id":"smpp-0000000001"}'
    headers = [("source", b"sms.outbound:3:12345")]
    rng = random.Random(17)
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(messages):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            if call_ms:
                await asyncio.sleep(rng.expovariate(1000 / call_ms))   # the provider call before it
            key = b"+4477%07d1" % (i % 2000)
            s0 = time.monotonic()
            futs = [batcher.send(t, i % parts[t], key, value, headers) for t in names]
            for f in futs:
                await f
            latencies.append(time.monotonic() - s0)

    try:
        t0, w0 = time.process_time(), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        cpu, wall = time.process_time() - t0, time.monotonic() - w0
    finally:
        await batcher.aclose()
        await producer.stop()
        MessageBatch.wait_drain = wait_drain  # type: ignore[method-assign]
    return {"cpu_ms_per_1k": round(cpu * 1e6 / messages, 1), "messages_per_s": round(messages / wall),
            "batches_per_message": round(handed / messages, 3), "drain_waits_per_message": round(waits / messages, 3),
            "produce_p50_ms": round(statistics.median(latencies) * 1000, 2),
            "produce_p99_ms": round(statistics.quantiles(latencies, n=100)[98] * 1000, 2)}


async def main(args: argparse.Namespace) -> dict[str, object]:
    stack = None
    if args.bootstrap_servers:
        k = KafkaSettings(bootstrap_servers=args.bootstrap_servers)
    else:
        from connector.devtools.stack import LocalStack
        stack = LocalStack()
        await stack.start_broker()
        k = stack.kafka
    try:
        runs = [await one_run(k, args.messages, args.in_flight, args.linger_ms, args.call_ms) for _ in range(args.repeat)]
    finally:
        if stack is not None:
            await stack.stop()
    best = min(runs, key=lambda r: r["cpu_ms_per_1k"])
    return {"messages": args.messages, "in_flight": args.in_flight, "linger_ms": args.linger_ms, "call_ms": args.call_ms,
            "best": best, "runs": runs}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--linger-ms", type=float, default=5.0)
    ap.add_argument("--call-ms", type=float, default=2.0,
                    help="mean of a simulated provider call before each message's produce (exponential; 0: none)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bootstrap-servers", default="")
    print(json.dumps(asyncio.run(main(ap.parse_args())), indent=1))
