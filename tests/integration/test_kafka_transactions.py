"""What Kafka transactions with aiokafka 0.14 give us on Apache Kafka 4.1, pinned before #16 builds on them.

Exactly-once terminal records (#16) rest on a handful of broker and client facts. Each test here
states one of them on the real broker, so that a client or broker upgrade that changes one fails
here first, not in ``make faults``:

* a zombie (a worker frozen past its session timeout with a transaction open) is fenced when the
  partition's new owner initialises the same per-partition transactional id: its commit fails
  with ``ProducerFenced`` and nothing it wrote is visible to a ``read_committed`` reader;
* aborted records are invisible to ``read_committed`` readers and plain records to
  ``read_uncommitted`` ones; an open transaction holds ``read_committed`` readers at the last
  stable offset;
* ``send_offsets_to_transaction`` commits the group's offsets with the records, or not at all;
* aiokafka's open transaction issues, as far as they apply (see each test).

aiokafka speaks TxnOffsetCommit version 0: no member id or generation (KIP-447), so the consumer
group cannot fence a zombie; the per-partition transactional id does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, ProducerFenced

from connector.devtools.kafka_broker import KafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def transactional_id(prefix: str, group: str, topic: str, partition: int) -> str:
    """Kafka Streams' first exactly-once design: one transactional id per input partition."""
    return f"{prefix}-{group}-{topic}-{partition}"


@pytest.fixture
async def kafka(kafka_cluster: KafkaCluster | None) -> AsyncIterator[str]:
    """The bootstrap servers of the run's Apache Kafka broker."""
    if kafka_cluster is None:
        pytest.skip("transactions need Apache Kafka")
    yield kafka_cluster.bootstrap_servers


async def new_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


def names(*roles: str) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"txn-test-{role}-{tag}" for role in roles]


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    meta = offsets.get(tp)
    return meta.offset if meta is not None else None


async def read_all(bootstrap: str, topic: str, isolation: str, partitions: int = 1,
                   timeout: float = 10.0) -> list[bytes]:
    """Every record value of ``topic`` a reader with ``isolation`` sees, up to its end offset
    (the last stable offset for read_committed, the high watermark for read_uncommitted)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"{topic}: not at {end} within {timeout}s"
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                values += [r.value for r in recs]
        return values
    finally:
        await consumer.stop()


async def txn_producer(bootstrap: str, txn_id: str, **options: Any) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id, **options)
    await producer.start()      # InitProducerId: bumps the epoch, fencing any older holder of txn_id
    return producer


# --- read_committed, aborted transactions, the last stable offset -----------------------------

async def test_aborted_records_are_invisible_to_read_committed_and_an_open_transaction_holds_the_lso(kafka: str) -> None:
    [out] = names("out")
    await new_topics(kafka, out)
    tp = TopicPartition(out, 0)
    producer = await txn_producer(kafka, f"t-{out}")
    try:
        async with producer.transaction():
            await producer.send_and_wait(out, b"committed-1", partition=0)
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"aborted-1", partition=0)
        await producer.abort_transaction()

        await producer.begin_transaction()
        await producer.send_and_wait(out, b"open-1", partition=0)
        # the transaction is open: read_committed readers stop at the last stable offset (the
        # first offset of the open transaction); read_uncommitted ones read on to the end
        reader = AIOKafkaConsumer(bootstrap_servers=kafka, isolation_level="read_committed")
        await reader.start()
        try:
            lso = (await reader.end_offsets([tp]))[tp]
        finally:
            await reader.stop()
        plain = AIOKafkaConsumer(bootstrap_servers=kafka)
        await plain.start()
        try:
            hw = (await plain.end_offsets([tp]))[tp]
        finally:
            await plain.stop()
        # offsets: 0 committed-1, 1 its commit marker, 2 aborted-1, 3 its abort marker, 4 open-1
        assert (lso, hw) == (4, 5)
        assert await read_all(kafka, out, "read_committed") == [b"committed-1"]
        assert await read_all(kafka, out, "read_uncommitted") == [b"committed-1", b"aborted-1", b"open-1"]
        await producer.commit_transaction()
    finally:
        await producer.stop()
    assert await read_all(kafka, out, "read_committed") == [b"committed-1", b"open-1"]


# --- send_offsets_to_transaction: offsets with the records, or not at all ----------------------

async def test_send_offsets_to_transaction_commits_the_groups_offsets_with_the_records(kafka: str) -> None:
    src, out = names("in", "out")
    group = f"g-{src}"
    await new_topics(kafka, src, out)
    tp = TopicPartition(src, 0)
    producer = await txn_producer(kafka, transactional_id("sms", group, src, 0))
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"r-aborted", partition=0)
        await producer.send_offsets_to_transaction({tp: 10}, group)
        await producer.abort_transaction()
        assert await committed(kafka, group, tp) is None       # the abort took the offset back

        await producer.begin_transaction()
        await producer.send_and_wait(out, b"r-1", partition=0)
        await producer.send_offsets_to_transaction({tp: 11}, group)
        assert await committed(kafka, group, tp) is None       # pending until the commit
        await producer.commit_transaction()
    finally:
        await producer.stop()
    assert await committed(kafka, group, tp) == 11
    assert await read_all(kafka, out, "read_committed") == [b"r-1"]


async def test_a_restarted_consumer_resumes_at_the_offset_committed_in_the_transaction(kafka: str) -> None:
    """aiokafka #920 (open): "the commit is not done in the transaction", the same record read
    again. Not a broker or client fault on Kafka 4.1: send_offsets_to_transaction stores what it is
    given, and that must be the NEXT offset to read (record offset + 1, as for consumer.commit());
    the consumer that sent it does not move its own position (it already read past the record),
    and a consumer (re)joining the group starts at the committed offset."""
    src, out = names("in", "out")
    group = f"g-{src}"
    await new_topics(kafka, src, out)
    plain = AIOKafkaProducer(bootstrap_servers=kafka, enable_idempotence=True)
    await plain.start()
    try:
        for i in range(3):
            await plain.send_and_wait(src, b"m%d" % i, partition=0)
    finally:
        await plain.stop()

    async def take_one() -> Any:
        consumer = AIOKafkaConsumer(src, bootstrap_servers=kafka, group_id=group, enable_auto_commit=False,
                                    auto_offset_reset="earliest", isolation_level="read_committed")
        await consumer.start()
        try:
            batch: dict[Any, list[Any]] = {}
            while not batch:
                batch = await consumer.getmany(timeout_ms=1000, max_records=1)
            [(tp, [rec])] = batch.items()
            producer = await txn_producer(kafka, transactional_id("sms", group, src, tp.partition))
            try:
                async with producer.transaction():
                    await producer.send(out, rec.value, partition=0)
                    await producer.send_offsets_to_transaction({tp: rec.offset + 1}, group)
            finally:
                await producer.stop()
            return rec.value
        finally:
            await consumer.stop()

    assert [await take_one() for _ in range(3)] == [b"m0", b"m1", b"m2"]
    assert await read_all(kafka, out, "read_committed") == [b"m0", b"m1", b"m2"]


# --- fencing a zombie with per-partition transactional ids -----------------------------------

ZOMBIE = r"""
import asyncio, json, sys
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

async def main(bootstrap, txn_id, src, out, group):
    consumer = AIOKafkaConsumer(src, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed",
                                session_timeout_ms=6000, heartbeat_interval_ms=500)
    await consumer.start()
    batch = {}
    while not batch:
        batch = await consumer.getmany(timeout_ms=1000, max_records=1)
    [(tp, [rec])] = batch.items()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id)
    await producer.start()
    await producer.begin_transaction()
    await producer.send_and_wait(out, b"zombie-before-pause", partition=0)
    print("OPEN", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)   # frozen meanwhile
    outcome = "committed"
    try:
        await producer.send(out, b"zombie-after-pause", partition=0)
        await producer.send_offsets_to_transaction({tp: rec.offset + 1}, group)
        await producer.commit_transaction()
    except Exception as exc:
        outcome = type(exc).__name__
    print(json.dumps({"outcome": outcome}), flush=True)
    for close in (producer.stop, consumer.stop):
        try:
            await asyncio.wait_for(close(), 10)
        except Exception:
            pass

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_zombie_is_fenced_by_the_new_owner_of_its_partitions_transactional_id(kafka: str) -> None:
    src, out = names("in", "out")
    group = f"g-{src}"
    await new_topics(kafka, src, out)
    tp = TopicPartition(src, 0)
    txn_id = transactional_id("sms", group, src, 0)
    plain = AIOKafkaProducer(bootstrap_servers=kafka, enable_idempotence=True)
    await plain.start()
    try:
        await plain.send_and_wait(src, b"m0", partition=0)
    finally:
        await plain.stop()

    zombie = subprocess.Popen([sys.executable, "-c", ZOMBIE, kafka, txn_id, src, out, group],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert zombie.stdout is not None and zombie.stdin is not None
        line = await asyncio.wait_for(asyncio.to_thread(zombie.stdout.readline), 30)
        assert line.strip() == "OPEN"
        zombie.send_signal(signal.SIGSTOP)

        # the new owner joins the group: it gets the partition once the zombie's session expired
        owner = AIOKafkaConsumer(src, bootstrap_servers=kafka, group_id=group, enable_auto_commit=False,
                                 auto_offset_reset="earliest", isolation_level="read_committed",
                                 session_timeout_ms=6000, heartbeat_interval_ms=500)
        await owner.start()
        try:
            batch: dict[Any, list[Any]] = {}
            deadline = time.monotonic() + 30
            while not batch:
                assert time.monotonic() < deadline, "the partition never moved to the new owner"
                batch = await owner.getmany(timeout_ms=1000, max_records=1)
            [rec] = batch[tp]
            assert rec.value == b"m0"            # nothing committed by the zombie: read again
            # first initialise the partition's transactional id (fences the zombie, aborts its open
            # transaction), then work
            producer = await txn_producer(kafka, txn_id)
            try:
                async with producer.transaction():
                    await producer.send(out, b"owner", partition=0)
                    await producer.send_offsets_to_transaction({tp: rec.offset + 1}, group)
            finally:
                await producer.stop()
        finally:
            await owner.stop()

        zombie.send_signal(signal.SIGCONT)
        zombie.stdin.write("go\n")
        zombie.stdin.flush()
        line = await asyncio.wait_for(asyncio.to_thread(zombie.stdout.readline), 30)
        outcome = json.loads(line)["outcome"]
        print("zombie outcome:", outcome)
        # aiokafka maps INVALID_PRODUCER_EPOCH / PRODUCER_FENCED to ProducerFenced (or fails the
        # send first with the same cause)
        assert outcome in ("ProducerFenced", "InvalidProducerEpoch", "KafkaError"), outcome
    finally:
        with_cont = zombie.poll() is None
        if with_cont:
            zombie.send_signal(signal.SIGCONT)
        try:
            zombie.wait(timeout=20)
        except subprocess.TimeoutExpired:
            zombie.kill()
            zombie.wait()
        for pipe in (zombie.stdin, zombie.stdout):
            if pipe is not None:
                pipe.close()
    assert await read_all(kafka, out, "read_committed") == [b"owner"]
    assert b"zombie-before-pause" in await read_all(kafka, out, "read_uncommitted")
    assert await committed(kafka, group, tp) == 1


# --- aiokafka's open transaction issues -------------------------------------------------------


# --- aiokafka's open transaction issues, on Apache Kafka 4.1.1 --------------------------------

async def test_back_to_back_transactions_with_offsets_keep_the_producer_usable(kafka: str) -> None:
    """aiokafka #1004 (open): after a broker upgrade to 3.7, TxnOffsetCommit answered error 13
    (NETWORK_EXCEPTION, which aiokafka still calls StaleLeaderEpochCodeError) and aiokafka treats
    it as unexpected: the sender task dies ("Unexpected error during batch delivery") and the
    producer is unusable. Not reproduced on 4.1.1 (one broker): back-to-back transactions, offsets
    sent first (the order that makes the broker's transaction verification busiest), all commit.
    Should it happen in production, the producer must be closed and a new one initialised for the
    same transactional id (which aborts the open transaction): the design treats any
    KafkaError from a transactional producer other than a retriable produce error that way."""
    src, out = names("in", "out")
    group = f"g-{src}"
    await new_topics(kafka, src, out, partitions=3)
    producer = await txn_producer(kafka, transactional_id("sms", group, src, 0))
    try:
        for i in range(40):
            await producer.begin_transaction()
            await producer.send_offsets_to_transaction({TopicPartition(src, 0): i + 1}, group)
            await producer.send(out, b"%d" % i, partition=i % 3)
            await producer.commit_transaction()
    finally:
        await producer.stop()
    assert await committed(kafka, group, TopicPartition(src, 0)) == 40
    assert len(await read_all(kafka, out, "read_committed", partitions=3)) == 40


async def test_concurrent_send_offsets_calls_in_one_transaction_all_commit(kafka: str) -> None:
    """aiokafka #1098 (open): a KeyError in TxnOffsetCommitHandler.handle_response, the sender
    task dies. The handler looks up each answered partition in the pending offsets dict that
    ``offset_committed`` deletes from: two handlers over one dict. Not reproduced on 4.1.1 with
    twelve concurrent calls per transaction (each call is its own dict, committed in turn by the
    single transactional task). The design avoids the shape anyway: one awaited
    ``send_offsets_to_transaction`` per transaction, for the one input partition it finishes."""
    src, out = names("in", "out")
    group = f"g-{src}"
    await new_topics(kafka, src, out, partitions=12)
    producer = await txn_producer(kafka, f"t-{src}")
    try:
        for i in range(5):
            async with producer.transaction():
                await asyncio.gather(*[producer.send(out, b"x", partition=p) for p in range(12)])
                await asyncio.gather(*[producer.send_offsets_to_transaction({TopicPartition(src, p): i + 1}, group)
                                       for p in range(12)])
    finally:
        await producer.stop()
    for p in range(12):
        assert await committed(kafka, group, TopicPartition(src, p)) == 5


async def test_a_read_committed_reader_steps_over_trailing_markers_to_the_end_offset(kafka: str) -> None:
    """The ledger (and every "read to the end" in the connector) loads a partition until the
    reader's position reaches the end offset. With transactions, a partition ends with a control
    marker, and after a crash with an aborted transaction: aiokafka #911 (open) reports a position
    stuck one below the end offset in that case. On aiokafka 0.14 / Kafka 4.1.1 the position steps
    over the trailing commit and abort markers (a reader that returns no record still advances)."""
    [out] = names("out")
    await new_topics(kafka, out, partitions=2)
    producer = await txn_producer(kafka, f"t-{out}")
    try:
        async with producer.transaction():
            await producer.send(out, b"kept", partition=0)
            await producer.send(out, b"kept", partition=1)
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"lost", partition=1)
        await producer.abort_transaction()
    finally:
        await producer.stop()
    reader = AIOKafkaConsumer(bootstrap_servers=kafka, isolation_level="read_committed",
                              auto_offset_reset="earliest", enable_auto_commit=False)
    await reader.start()
    try:
        tps = [TopicPartition(out, 0), TopicPartition(out, 1)]
        reader.assign(tps)
        end = await reader.end_offsets(tps)
        assert end == {tps[0]: 2, tps[1]: 4}        # record + commit marker; + aborted record + abort marker
        seen: list[bytes] = []
        deadline = time.monotonic() + 10
        while [await reader.position(tp) for tp in tps] != [end[tp] for tp in tps]:
            assert time.monotonic() < deadline, [await reader.position(tp) for tp in tps]
            for recs in (await reader.getmany(timeout_ms=200)).values():
                seen += [r.value for r in recs]
        assert seen == [b"kept", b"kept"]
    finally:
        await reader.stop()


async def test_a_transaction_past_its_timeout_is_aborted_and_its_producer_must_be_replaced(kafka: str) -> None:
    """A worker that keeps a transaction open longer than ``transaction_timeout_ms`` (aiokafka's
    default: 60 s; a GC pause, a frozen process that kept its partitions) finds it aborted by the
    coordinator (which checks every 10 s by default) and its producer fenced for good: the next
    operation raises ProducerFenced, abort_transaction() too (or AssertionError), and
    begin_transaction() raises AssertionError (aiokafka's invalid state transition from its fatal
    state, not a KafkaError: an ``except KafkaError`` does not catch it). The only way on
    is a new producer for the same transactional id; nothing of the aborted transaction is
    visible to read_committed."""
    [out] = names("out")
    await new_topics(kafka, out)
    txn_id = f"t-{out}"
    producer = await txn_producer(kafka, txn_id, transaction_timeout_ms=1000)
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"timed-out", partition=0)
        deadline = time.monotonic() + 25
        with pytest.raises(ProducerFenced):
            while True:
                assert time.monotonic() < deadline, "the coordinator never aborted the transaction"
                await asyncio.sleep(1)
                await producer.send_and_wait(out, b"later", partition=0)
        with pytest.raises((ProducerFenced, AssertionError)):   # which one depends on timing
            await producer.abort_transaction()
        with pytest.raises(AssertionError, match="Invalid state transition"):
            await producer.begin_transaction()
    finally:
        await asyncio.wait_for(producer.stop(), 10)
    fresh = await txn_producer(kafka, txn_id)
    try:
        async with fresh.transaction():
            await fresh.send(out, b"fresh", partition=0)
    finally:
        await fresh.stop()
    assert await read_all(kafka, out, "read_committed") == [b"fresh"]
