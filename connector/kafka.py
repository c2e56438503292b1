"""Kafka client options and topic administration, from settings and the ``topics/`` contract.

``client_options`` turns ``KafkaSettings`` into aiokafka keyword arguments (bootstrap, TLS,
SASL PLAIN / SCRAM). ``apply_topics`` / ``check_topics`` create or verify the topics in
``topics/topics.toml``. ``key_partition`` is Kafka's default partitioner for a keyed record.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, UnknownError

from connector import contract as topics
from connector.config import KafkaSettings

_M = 0x5BD1E995


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), about twice as fast as aiokafka's
    byte-by-byte version: whole 32-bit words, masks only where a value can overflow."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length // 4
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    tail = length & 3
    if tail:
        base = words * 4
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, aiokafka) gives a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def client_options(k: KafkaSettings) -> dict[str, Any]:
    opts: dict[str, Any] = {"bootstrap_servers": k.bootstrap_servers, "client_id": k.client_id,
                            "security_protocol": k.security_protocol}
    if k.security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(cafile=k.ssl_cafile or None)
        if k.ssl_certfile:
            ctx.load_cert_chain(k.ssl_certfile, k.ssl_keyfile or None)
        opts["ssl_context"] = ctx
    if k.security_protocol.startswith("SASL_"):
        opts["sasl_mechanism"] = k.sasl_mechanism
        opts["sasl_plain_username"] = k.sasl_username
        opts["sasl_plain_password"] = k.sasl_password.value if k.sasl_password else ""
    return opts


async def start_producer(k: KafkaSettings, notice: Callable[[str], None] | None = None,
                         **options: Any) -> AIOKafkaProducer:
    """A started producer with the settings' idempotence. A broker that refuses the idempotent
    producer (InitProducerId answers an unknown error: the embedded dev broker) gets a plain one
    instead, and ``notice`` is told. A producer that fails to start is closed, never left behind."""
    idempotent = k.idempotent_producer
    while True:
        producer = AIOKafkaProducer(**client_options(k), enable_idempotence=idempotent, **options)
        try:
            await producer.start()
            return producer
        except UnknownError:
            await producer.stop()
            if not idempotent:
                raise
        except BaseException:
            await producer.stop()
            raise
        idempotent = False
        if notice:
            notice(f"the broker at {k.bootstrap_servers} has no idempotent producer (as the embedded dev broker): "
                   f"producing without it; set kafka.idempotent_producer=false to skip the attempt")


def failure_line(exc: BaseException) -> str | None:
    """One line for an error that means Kafka could not be used (unreachable, refused, a topic
    missing); None for anything else."""
    if isinstance(exc, (KafkaConnectionError, ConnectionError)):
        return f"cannot reach Kafka: {str(exc).removeprefix('KafkaConnectionError: ')}"
    if isinstance(exc, TopicMissing):
        return str(exc)
    if isinstance(exc, KafkaError):
        return f"Kafka refused the request: {type(exc).__name__}{f': {exc}' if str(exc) else ''}"
    return None


class TopicMissing(ValueError):
    """A topic of the contract does not exist on the cluster."""


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, attempts: int = 100) -> list[TopicPartition]:
    """Every partition of ``topic``, refreshing metadata until the topic is known (a just-created
    topic takes a moment to appear); TopicMissing after ``attempts`` tries 0.1 s apart."""
    for _ in range(attempts):
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
        await asyncio.sleep(0.1)
    raise TopicMissing(f"topic {topic} does not exist: create the topics with `sms-connector topics apply`")


@dataclass(frozen=True)
class TopicState:
    role: str
    name: str
    exists: bool
    partitions: int | None
    expected_partitions: int

    @property
    def ok(self) -> bool:
        return self.exists and self.partitions is not None and self.partitions >= self.expected_partitions


async def apply_topics(k: KafkaSettings, partitions: int | None = None) -> list[tuple[str, str]]:
    """Create every topic of the contract that is missing. Returns (name, 'created'|'exists').

    ``partitions`` overrides the contract's partition counts (``dev`` uses fewer)."""
    admin = AIOKafkaAdminClient(**client_options(k))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        out: list[tuple[str, str]] = []
        new = []
        for spec in topics.specs().values():
            if spec.name in existing:
                out.append((spec.name, "exists"))
                continue
            new.append(NewTopic(spec.name, partitions or spec.partitions, k.replication_factor,
                                topic_configs=spec.configs))
            out.append((spec.name, "created"))
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        return out
    finally:
        await admin.close()


async def check_topics(k: KafkaSettings) -> list[TopicState]:
    admin = AIOKafkaAdminClient(**client_options(k))
    await admin.start()
    try:
        names = [s.name for s in topics.specs().values()]
        existing = set(await admin.list_topics())
        described = {t["topic"]: t for t in await admin.describe_topics([n for n in names if n in existing])}
        states = []
        for spec in topics.specs().values():
            d = described.get(spec.name)
            parts = len(d["partitions"]) if d and d.get("partitions") is not None else None
            states.append(TopicState(spec.role, spec.name, spec.name in existing, parts, spec.partitions))
        return states
    finally:
        await admin.close()
