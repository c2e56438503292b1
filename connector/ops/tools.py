"""Small Kafka helpers behind the operator commands ``send`` and ``topics tail``: produce one record,
name a topic by its role, read a topic without a consumer group, describe a record for people."""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import orjson
from aiokafka import ConsumerRecord

from connector import contract as topics
from connector.config import KafkaSettings
from connector.kafka import start_producer, topic_partitions
from connector.records import OutboundSms


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
        from connector.streams.plumbing import stop_client

        await stop_client(producer)


def topic_name(name: str) -> str:
    """A topic given by its role in the contract (``accepted``, ``dlq``...) or by its name."""
    specs = topics.specs()
    return specs[name].name if name in specs else name


async def tail(k: KafkaSettings, topic: str, show: Callable[[ConsumerRecord[bytes, bytes]], None], *,
               from_beginning: bool = False, max_records: int | None = None, follow: bool = True) -> int:
    """Read every partition of ``topic`` without a consumer group (nothing is committed, so it
    works on any broker and disturbs no worker), calling ``show`` per record. Starts at the end,
    or the beginning; stops after ``max_records``, or (``follow`` off) at the end of the topic.
    Returns how many records were shown."""
    from connector.streams.plumbing import close_reader, groupless_consumer

    consumer = groupless_consumer(k, auto_offset_reset="latest")
    shown = 0
    try:
        await consumer.start()
        parts = await topic_partitions(consumer, topic, attempts=20)
        consumer.assign(parts)
        if from_beginning:
            await consumer.seek_to_beginning(*parts)
        else:
            await consumer.seek_to_end(*parts)
        end = await consumer.end_offsets(parts)
        while max_records is None or shown < max_records:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            if not batch and not follow and all([await consumer.position(tp) >= end[tp] for tp in parts]):
                break
            for records in batch.values():
                for record in records:
                    show(record)
                    shown += 1
                    if max_records is not None and shown >= max_records:
                        return shown
    finally:
        await close_reader(consumer)
    return shown


def describe_record(record: ConsumerRecord[bytes, bytes], as_json: bool = False) -> str:
    """A record for people (position, time, key, headers, then the value) or as one JSON object."""
    key = record.key.decode(errors="replace") if record.key is not None else None
    headers = [(h, v.decode(errors="replace") if v is not None else None) for h, v in record.headers or ()]
    value = record.value.decode(errors="replace") if record.value is not None else None
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.timestamp / 1000)) + \
        f".{record.timestamp % 1000:03d}Z"
    if as_json:
        parsed: object = value
        if value is not None:
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(value)
        return orjson.dumps({"topic": record.topic, "partition": record.partition, "offset": record.offset,
                             "timestamp": when, "key": key, "headers": [list(h) for h in headers],
                             "value": parsed}).decode()
    lines = [f"{record.topic}[{record.partition}]@{record.offset}  {when}  key={key if key is not None else '(none)'}"]
    lines += [f"  {h}: {v}" for h, v in headers]
    lines.append(f"  {value if value is not None else '(no value: a tombstone)'}")
    return "\n".join(lines)
