"""Kafka transactions for the streams (exactly-once, #16): one place that knows aiokafka's ways.

``TransactionalProducer`` wraps one transactional id's ``AIOKafkaProducer``: ``start()``
initialises the id (InitProducerId bumps its epoch: any older producer holding the same id, a
zombie, is fenced and its open transaction aborted), ``begin()`` / ``commit(offsets, group)`` /
``abort()`` run one transaction, ``replace()`` swaps in a new producer for the same id. Records
go through ``.producer`` as usual (``send``, or ``streams.batcher.Batcher``) between begin and
commit.

What a failure means (``needs_new_producer``): aiokafka leaves a transactional producer in a
fatal state after ``ProducerFenced`` / ``InvalidProducerEpoch`` (another producer initialised the
id, or the coordinator aborted a transaction past ``kafka.transaction_timeout_s`` and bumped the
epoch), ``UnknownProducerId``, ``InvalidTxnState``, and then raises ``AssertionError`` ("Invalid
state transition", not a ``KafkaError``: an ``except KafkaError`` misses it) on the next
begin/abort. Such a producer is never reused: ``commit``/``abort`` raise ``TransactionFenced`` and
the caller replaces it, or gives its partition up when another worker may own it now (replacing
would fence the rightful owner in turn). Any other failure of a commit aborts the transaction and
raises ``TransactionAborted``: its records are discarded, the caller writes them again.

aiokafka speaks TxnOffsetCommit v0 (no KIP-447 member/generation fencing): the group coordinator
cannot refuse a zombie's offsets, so fencing rests on the transactional id alone. Hence one id per
input partition for dispatch (``transactional_id``), owned by whoever owns that partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable, Mapping

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (InvalidProducerEpoch, InvalidTxnState, KafkaError, ProducerFenced,
                             TransactionCoordinatorFenced, UnknownProducerId)

from connector import metrics
from connector.config import KafkaSettings
from connector.kafka import client_options
from connector.streams.plumbing import stop_client

log = logging.getLogger("sms_connector.transactions")

COMMITTED, ABORTED, FENCED = "committed", "aborted", "fenced"

_FATAL = (ProducerFenced, InvalidProducerEpoch, InvalidTxnState, UnknownProducerId, TransactionCoordinatorFenced,
          AssertionError)


class TransactionFailed(Exception):
    """A transaction did not commit; nothing of it is visible to read_committed readers."""


class TransactionAborted(TransactionFailed):
    """The transaction was aborted (its records discarded); the producer is usable for the next one."""


class TransactionFenced(TransactionFailed):
    """The producer is fenced or broken: it must be replaced (``replace()``), or its partition given up."""


def transactional_id(k: KafkaSettings, partition: int | str, group: str | None = None) -> str:
    """``<prefix>-<group>-<partition>``: the id of one input partition's transactions (or of another
    unit of ownership named by ``partition``, such as a poller's route)."""
    return f"{k.transactional_id_prefix}-{group if group is not None else k.group_id}-{partition}"


def needs_new_producer(exc: BaseException, producer: AIOKafkaProducer | None = None) -> bool:
    """True when a transactional producer cannot go on after ``exc`` (module docstring)."""
    if isinstance(exc, _FATAL):
        return True
    manager = getattr(producer, "_txn_manager", None) if producer is not None else None
    return bool(manager is not None and manager.is_fatal_error())


class TransactionalProducer:
    def __init__(self, k: KafkaSettings, txn_id: str, role: str, **options: Any) -> None:
        self.kafka = k
        self.transactional_id = txn_id
        self.role = role
        # retry_backoff_ms 20 (aiokafka's default 100): after every EndTxn the coordinator answers
        # CONCURRENT_TRANSACTIONS to the next transaction's AddPartitionsToTxn until its markers are
        # written (KAFKA-5477); aiokafka retries the first one after 20 ms but a later one (and
        # AddOffsetsToTxn, TxnOffsetCommit) after retry_backoff_ms, which put 100 ms on the commits
        # it hit (0-4% of transactions in a probe: enough for the p99). 20 ms is aiokafka's own value for that race.
        self.options = {"linger_ms": k.linger_ms, "request_timeout_ms": int(k.request_timeout_s * 1000),
                        "max_batch_size": 256 * 1024, "retry_backoff_ms": 20, **options}
        self.timeout_s = k.transaction_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self.in_transaction = False

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "TransactionalProducer not started"
        return self._producer

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """A new producer for the id, initialised: fences older holders, aborts their open transaction."""
        producer = AIOKafkaProducer(**client_options(self.kafka), transactional_id=self.transactional_id,
                                    transaction_timeout_ms=int(self.timeout_s * 1000), acks="all", **self.options)
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer)
            raise
        self._producer = producer
        self.in_transaction = False

    async def replace(self) -> None:
        """Close the current producer (broken or not) and start a new one for the same id."""
        old, self._producer = self._producer, None
        if old is not None:
            await _stop_quietly(old)
        await self.start()

    async def stop(self) -> None:
        old, self._producer = self._producer, None
        self.in_transaction = False
        if old is not None:
            await _stop_quietly(old)

    async def begin(self) -> None:
        try:
            await self.producer.begin_transaction()
        except Exception as exc:  # noqa: BLE001 - AssertionError included (aiokafka's fatal state)
            metrics.TRANSACTIONS.labels(self.role, FENCED).inc()
            raise TransactionFenced(f"cannot begin a transaction for {self.transactional_id}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        self.in_transaction = True

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None, group_id: str | None = None,
                     sent: Iterable[asyncio.Future[None]] = (), proceed: Callable[[], bool] | None = None) -> bool:
        """Add ``offsets`` (the next offset to read, i.e. last finished record + 1) for ``group_id``
        and commit. Raises TransactionAborted or TransactionFenced (module docstring).

        ``sent``: the futures of the transaction's record batches, still being acknowledged. The
        offsets are added (AddOffsetsToTxn, then TxnOffsetCommit to the group coordinator) while
        they are: two round trips that would otherwise follow the produce acks. That is safe
        because nothing of a transaction is visible before EndTxn: EndTxn (commit_transaction)
        goes only after every batch and the offsets were acknowledged, and a failed batch aborts
        the whole transaction, offsets included. ``proceed`` is asked just before EndTxn: False
        commits nothing and leaves the transaction open (returns False; the caller aborts it)."""
        producer = self.producer
        t0 = time.monotonic()
        left_open = False
        try:
            async with asyncio.timeout(self.timeout_s):
                waits: list[asyncio.Future[Any]] = list(sent)
                if offsets:
                    adding = asyncio.ensure_future(
                        producer.send_offsets_to_transaction(dict(offsets), group_id or self.kafka.group_id))
                    adding.add_done_callback(lambda t: t.cancelled() or t.exception())   # retrieved, even past a timeout
                    waits.append(adding)
                if waits:
                    await asyncio.wait(waits)      # every one settled: none still in flight if it aborts
                    if any(w.cancelled() for w in waits):
                        raise asyncio.CancelledError("a record batch of the transaction was cancelled")
                    failures = [w.exception() for w in waits if w.exception() is not None]
                    if failures:    # a fatal one first: it decides whether the producer can abort
                        raise next((e for e in failures if needs_new_producer(e, producer)), failures[0])
                if proceed is not None and not proceed():
                    left_open = True
                    return False
                await producer.commit_transaction()
        except Exception as exc:  # noqa: BLE001 - AssertionError included
            await self._fail(exc)
        finally:
            if not left_open:
                self.in_transaction = False
        metrics.TRANSACTIONS.labels(self.role, COMMITTED).inc()
        metrics.TRANSACTION_COMMIT.labels(self.role).observe(time.monotonic() - t0)
        return True

    async def abort(self) -> None:
        """Abort the open transaction. Raises TransactionFenced when the producer cannot (replace it)."""
        if not self.in_transaction:
            return
        self.in_transaction = False
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.producer.abort_transaction()
        except Exception as exc:  # noqa: BLE001
            metrics.TRANSACTIONS.labels(self.role, FENCED).inc()
            raise TransactionFenced(f"abort failed for {self.transactional_id}: {type(exc).__name__}: {exc}") from exc
        metrics.TRANSACTIONS.labels(self.role, ABORTED).inc()

    async def _fail(self, exc: BaseException) -> None:
        """A commit failed: abort if the producer can, and say which it was (always raises)."""
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TimeoutError) or needs_new_producer(exc, self._producer):
            metrics.TRANSACTIONS.labels(self.role, FENCED).inc()
            log.warning("transaction fenced or producer broken", extra={"transactional_id": self.transactional_id,
                                                                        "error": what})
            raise TransactionFenced(f"{self.transactional_id}: {what}") from exc
        self.in_transaction = True
        await self.abort()          # TransactionFenced if it cannot
        log.warning("transaction aborted", extra={"transactional_id": self.transactional_id, "error": what})
        raise TransactionAborted(f"{self.transactional_id}: {what}") from exc


async def _stop_quietly(producer: AIOKafkaProducer, timeout: float = 10.0) -> None:
    try:
        await asyncio.wait_for(stop_client(producer), timeout)   # the close of its connections: 2 s
    except Exception as exc:  # noqa: BLE001 - a broken producer may fail to close; it is dropped anyway
        log.debug("producer stop failed", extra={"error": f"{type(exc).__name__}: {exc}"})
    finally:
        _retrieve_fatal_error(producer)


def _retrieve_fatal_error(producer: AIOKafkaProducer) -> None:
    """A fenced (or otherwise fatally failed) aiokafka producer sets its transaction waiter to the
    error, and only a commit or abort would await it; the producer is dropped instead, and asyncio
    would log "Future exception was never retrieved" (ERROR) when the waiter is collected. The
    error was already handled (TransactionFenced): mark it retrieved."""
    waiter = getattr(getattr(producer, "_txn_manager", None), "_transaction_waiter", None)
    if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled():
        waiter.exception()


async def broker_supports_transactions(k: KafkaSettings, timeout: float = 15.0) -> bool:
    """Whether the brokers run transactions: a probe id is initialised (InitProducerId) and one empty
    transaction committed. False on a broker without them (the embedded dev broker Tansu answers
    an unknown error or never answers); an authorisation error is raised (a setting fixes it)."""
    from aiokafka.errors import TransactionalIdAuthorizationFailed

    probe = TransactionalProducer(k, transactional_id(k, "probe"), role="probe")
    try:
        async with asyncio.timeout(timeout):
            await probe.start()
            async with probe.producer.transaction():
                pass
        return True
    except TransactionalIdAuthorizationFailed:
        raise
    except (ProducerFenced, InvalidProducerEpoch):
        return True     # another worker probing at the same moment fenced this probe: transactions work
    except (KafkaError, TimeoutError, AssertionError, OSError) as exc:
        log.debug("no transactions", extra={"error": f"{type(exc).__name__}: {exc}"})
        return False
    finally:
        await probe.stop()
