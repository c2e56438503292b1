"""Small Kafka and simulator helpers shared by the CLI commands (send, simulate, dev)."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

from connector import contract as topics
from connector.config import KafkaSettings
from connector.kafka import start_producer
from connector.records import OutboundSms
from connector.simulators import Simulator, serve


def recipient_key(msg: OutboundSms) -> bytes:
    """The key convention of sms.outbound: the recipient (per-recipient ordering)."""
    return msg.recipient.key().encode()


async def produce_one(k: KafkaSettings, msg: OutboundSms, value: bytes,
                      notice: Callable[[str], None] | None = None) -> str:
    producer = await start_producer(k, notice, acks="all")
    try:
        meta = await producer.send_and_wait(topics.spec("outbound").name, value=value, key=recipient_key(msg))
        return f"{meta.topic}[{meta.partition}]@{meta.offset}"
    finally:
        await producer.stop()


async def run_simulator(sim: Simulator, host: str, port: int) -> None:
    """Serve ``sim`` until SIGINT/SIGTERM; prints the URL it listens on (one line, flushed)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve(sim, host, port)
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"simulator {sim.name} listening on http://{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
