"""Kafka client options and topic administration, from settings and the ``topics/`` contract.

``client_options`` turns ``KafkaSettings`` into aiokafka keyword arguments (bootstrap, TLS,
SASL PLAIN / SCRAM). ``apply_topics`` / ``check_topics`` create or verify the topics in
``topics/topics.toml``. ``key_partition`` is Kafka's default partitioner for a keyed record.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
import struct
from dataclasses import dataclass
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
import aiokafka.client as aiokafka_client
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (AuthenticationFailedError, IllegalSaslStateError, KafkaConnectionError, KafkaError,
                             SaslAuthenticationFailed, TopicAlreadyExistsError, TopicAuthorizationFailedError,
                             UnknownError, UnknownTopicOrPartitionError, UnsupportedSaslMechanismError)

from connector import contract as topics
from connector.config import KafkaSettings

_M = 0x5BD1E995


# The connections aiokafka's bootstrap opened, while one runs (see _cancel_safe)
_bootstrap_conns: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("bootstrap_conns", default=None)


def _tracked(create_conn: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(create_conn, "tracked", False):
        return create_conn

    async def create(*args: Any, **kwargs: Any) -> Any:
        conn = await create_conn(*args, **kwargs)
        opened = _bootstrap_conns.get()
        if opened is not None:
            opened.append(conn)
        return conn

    create.tracked = True  # type: ignore[attr-defined]
    return create


def _cancel_safe(bootstrap: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """aiokafka's ``AIOKafkaClient.bootstrap`` opens a connection of its own for its first metadata
    request and closes it after; cancelled during that request it leaves it open, and the event
    loop logs "Unclosed AIOKafkaConnection" at ERROR when it is collected. A stop during start-up
    cancels the clients' starts (``streams.plumbing.unless_stopped``), and ``check --timeout``
    cancels them too: the bootstrap is cancelled at once, as before, and the connections it had
    opened and not handed to the client are closed (the client's ``stop()`` closes the others)."""
    if getattr(bootstrap, "cancel_safe", False):
        return bootstrap

    async def safe(self: Any) -> Any:
        opened: list[Any] = []
        token = _bootstrap_conns.set(opened)
        try:
            task = asyncio.ensure_future(bootstrap(self))    # runs in a copy of this context: tracked
        finally:
            _bootstrap_conns.reset(token)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()    # retrieved: the start was cancelled anyway
            kept = set(map(id, getattr(self, "_conns", {}).values()))
            for conn in opened:
                if id(conn) not in kept:
                    conn.close()
            raise

    safe.cancel_safe = True  # type: ignore[attr-defined]
    return safe


aiokafka_client.create_conn = _tracked(aiokafka_client.create_conn)
AIOKafkaClient.bootstrap = _cancel_safe(AIOKafkaClient.bootstrap)  # type: ignore[method-assign]


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
    authorized: bool = True        # False: the broker refused to describe it (TOPIC_AUTHORIZATION_FAILED)

    @property
    def ok(self) -> bool:
        return self.authorized and self.exists and self.partitions is not None and self.partitions >= self.expected_partitions


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
    """Each topic of the contract as the brokers describe it to this client: existing, with how
    many partitions, or not authorized (a missing Describe ACL). Never creates a topic, even on a
    broker with auto.create.topics.enable."""
    from aiokafka.protocol.metadata import MetadataRequest

    admin = AIOKafkaAdminClient(**client_options(k))
    await admin.start()
    try:
        names = [s.name for s in topics.specs().values()]
        response = await admin._send_request(MetadataRequest(names, allow_auto_topic_creation=False))  # noqa: SLF001
        described = {t["topic"]: t for t in response.to_object()["topics"]}
        states = []
        for spec in topics.specs().values():
            d = described.get(spec.name) or {"error_code": UnknownTopicOrPartitionError.errno}
            found = d["error_code"] == 0
            parts = len(d["partitions"]) if found and d.get("partitions") is not None else None
            states.append(TopicState(spec.role, spec.name, found, parts, spec.partitions,
                                     authorized=d["error_code"] != TopicAuthorizationFailedError.errno))
        return states
    finally:
        await admin.close()


async def wait_for_leaders(k: KafkaSettings, timeout: float = 60.0) -> None:
    """Wait until every partition of every topic of the contract has a leader in the metadata a
    client gets (CreateTopics answers before every broker has caught up)."""
    from aiokafka.protocol.metadata import MetadataRequest

    names = [s.name for s in topics.specs().values()]
    admin = AIOKafkaAdminClient(**client_options(k))
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            response = await admin._send_request(MetadataRequest(names, allow_auto_topic_creation=False))  # noqa: SLF001
            found = response.to_object()["topics"]
            if len(found) == len(names) and all(t["error_code"] == 0 and t["partitions"] and
                                                all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])
                                                for t in found):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topics without a leader after {timeout:.0f}s")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


class KafkaAccessError(RuntimeError):
    """The brokers refuse this client for a reason a setting fixes (SASL credentials, TLS trust).
    The message is one line that names the setting."""


def transactional_acl_problem(k: KafkaSettings) -> str:
    """One line for a principal the brokers refuse its transactional ids (exactly-once), naming
    the ACL to grant."""
    who = f"'{k.sasl_username}'" if k.sasl_username else "this client's principal"
    return (f"the brokers refuse {who} its transactional ids (TRANSACTIONAL_ID_AUTHORIZATION_FAILED). Fix: grant "
            f"Write and Describe on TransactionalId prefix '{k.transactional_id_prefix}-' (the chart's KafkaUser "
            f"does), or set kafka.exactly_once=false")


async def access_problem(k: KafkaSettings, timeout: float = 10.0) -> KafkaAccessError | None:
    """Connect to the first bootstrap server as the clients do and say why it is refused: a TLS
    certificate not trusted, a TLS handshake failing, SASL credentials or mechanism rejected.
    None when the connection works, or fails for another reason (unreachable, timeout): the
    clients' own errors and retries handle those."""
    from aiokafka.conn import create_conn

    host, _, port = k.bootstrap_servers.split(",")[0].strip().rpartition(":")
    opts = client_options(k)
    where = f"{host}:{port}"
    try:
        conn = await asyncio.wait_for(create_conn(
            host, int(port), ssl_context=opts.get("ssl_context"), security_protocol=k.security_protocol,
            sasl_mechanism=opts.get("sasl_mechanism"), sasl_plain_username=opts.get("sasl_plain_username"),
            sasl_plain_password=opts.get("sasl_plain_password"), request_timeout_ms=int(timeout * 1000)), timeout)
    except ssl.SSLCertVerificationError as exc:
        return KafkaAccessError(
            f"the TLS certificate of the broker at {where} is not trusted ({exc.verify_message}). Fix: set "
            f"kafka.ssl_cafile to the CA that signed the brokers' certificates"
            f"{' (now ' + k.ssl_cafile + ')' if k.ssl_cafile else ' (now empty: the system CAs)'}")
    except ssl.SSLError as exc:
        return KafkaAccessError(f"TLS handshake with the broker at {where} failed ({exc.reason or exc}). Fix: check "
                                f"kafka.security_protocol ({k.security_protocol}) matches the listener, and kafka.ssl_*")
    except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
        return KafkaAccessError(
            f"SASL authentication as '{k.sasl_username}' ({k.sasl_mechanism}) failed at {where}. Fix: check "
            f"kafka.sasl_password (and kafka.sasl_username, kafka.sasl_mechanism)"
            + (f": {exc.args[0]}" if exc.args and "invalid credentials" not in str(exc.args[0]) else ""))
    except (UnsupportedSaslMechanismError, IllegalSaslStateError):
        return KafkaAccessError(f"the broker at {where} does not accept SASL mechanism {k.sasl_mechanism}. Fix: set "
                                f"kafka.sasl_mechanism to one its listener enables")
    except (OSError, asyncio.TimeoutError, KafkaError):
        return None
    conn.close()
    return None


async def delete_topics(k: KafkaSettings, timeout: float = 60.0) -> list[str]:
    """Delete every topic but Kafka's own (``__*``) and wait until the cluster no longer lists them.

    The tests share one broker per run: each test starts from an empty contract this way."""
    admin = AIOKafkaAdminClient(**client_options(k))
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if not t.startswith("__")]
        if names:
            await admin.delete_topics(names)
        deadline = asyncio.get_running_loop().time() + timeout
        while set(names) & set(await admin.list_topics()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topics not deleted within {timeout:.0f}s: {sorted(names)}")
            await asyncio.sleep(0.05)
        return names
    finally:
        await admin.close()
