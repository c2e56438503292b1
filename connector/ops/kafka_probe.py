"""The Kafka layer of ``sms-connector status``: ``KafkaProbe`` asks the brokers for end and
beginning offsets (ListOffsets, through a group-less consumer) and the group's committed offsets
(``AIOKafkaAdminClient.list_consumer_group_offsets``). It also counts the terminal records on
``sms.outbound.accepted`` / ``.failed`` / ``.dlq`` (end - beginning, the records retained): a
cross-check of the metrics that covers every worker, even those whose metrics URL was not given.
Nothing is committed and no group is joined.

The embedded dev broker (Tansu, recognised by its cluster id ``tansu_cluster`` or because the dev
manifest was used) answers ListOffsets with the base offset of a partition's last batch + 1, too low
whenever a batch holds several records. There the probe seeks each partition to that answer - 1 and
reads what follows (one batch per partition, usually), which gives the real end; the lag is still
labelled "approx." (records produced meanwhile, and a read cut short by its time budget, leave it
low). On Kafka the ListOffsets answer is exact.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from connector import contract as topics
from connector.config import KafkaSettings
from connector.kafka import client_options
from connector.ops import quiet_client_logs
from connector.ops.snapshot import KafkaState, consumer_lag
from connector.streams.plumbing import groupless_consumer, stop_client

TANSU_CLUSTER_PREFIX = "tansu"
TERMINAL_ROLES = ("accepted", "failed", "dlq")


class KafkaProbe:
    """Offsets of the dispatch group and the result topics; the clients stay open between samples."""

    def __init__(self, kafka: KafkaSettings, *, group: str | None = None, dev_broker: bool | None = None,
                 timeout: float = 10.0, read_budget_s: float = 2.0) -> None:
        self.kafka = kafka
        self.group = group or kafka.group_id
        self.dev_broker = dev_broker          # None: ask the broker (cluster id)
        self.timeout = timeout
        self.read_budget_s = read_budget_s
        self.outbound = topics.spec("outbound").name
        self.terminal_topics = [topics.spec(r).name for r in TERMINAL_ROLES]
        self.scheduled = topics.spec("scheduled").name   # its lag: messages waiting more than a lap ahead
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def start(self) -> None:
        quiet_client_logs()
        opts = client_options(self.kafka)
        request_ms = int(self.timeout * 1000)
        admin = AIOKafkaAdminClient(**opts, request_timeout_ms=request_ms)
        consumer = groupless_consumer(self.kafka, fetch_max_wait_ms=50, request_timeout_ms=request_ms)
        try:
            await admin.start()
            await consumer.start()
        except BaseException:
            await _close(admin, consumer)
            raise
        self._admin, self._consumer = admin, consumer

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer, self._tps = self._admin, self._consumer, None, None, []
        await _close(admin, consumer)

    async def sample(self) -> KafkaState:
        """Never raises for broker trouble: the state carries the error, the next sample reconnects."""
        try:
            return await asyncio.wait_for(self._sample(), self.timeout + self.read_budget_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # noqa: BLE001 - any client failure is shown, then retried
            await self.close()
            what = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.TimeoutError):
                what = f"no answer within {self.timeout + self.read_budget_s:.0f}s"
            return KafkaState(self.kafka.bootstrap_servers, self.group, error=what)

    async def _sample(self) -> KafkaState:
        if self._admin is None:
            await self.start()
        admin, consumer = self._admin, self._consumer
        assert admin is not None and consumer is not None
        if self.dev_broker is None:
            cluster = await admin.describe_cluster()
            self.dev_broker = str(cluster.get("cluster_id") or "").startswith(TANSU_CLUSTER_PREFIX)
        if not self._tps:
            wanted = [self.outbound, *self.terminal_topics, self.scheduled]
            described = {t["topic"]: t for t in await admin.describe_topics(wanted)}
            missing = [n for n in wanted if not (described.get(n) or {}).get("partitions")]
            if missing:
                raise RuntimeError(f"topic(s) {', '.join(missing)} not found (run `sms-connector topics apply`)")
            self._tps = [TopicPartition(n, p["partition"]) for n in wanted
                         for p in sorted(described[n]["partitions"], key=lambda p: p["partition"])]
            if self.dev_broker:   # read only in _read_real_ends: paused in between
                consumer.assign(self._tps)
                consumer.pause(*self._tps)
        out_tps = [tp for tp in self._tps if tp.topic in (self.outbound, self.scheduled)]
        ends = dict(await consumer.end_offsets(self._tps))
        beginnings = dict(await consumer.beginning_offsets(self._tps))
        committed = await _group_offsets(admin, self.group, out_tps)
        if self.dev_broker:
            ends = await self._read_real_ends(ends)
        lags = tuple(consumer_lag(name, self.group, {tp.partition: ends[tp] for tp in out_tps if tp.topic == name},
                                  {tp.partition: (committed[tp].offset if tp in committed else None)
                                   for tp in out_tps if tp.topic == name},
                                  {tp.partition: beginnings[tp] for tp in out_tps if tp.topic == name})
                     for name in (self.outbound, self.scheduled))
        terminal = {name: sum(max(0, ends[tp] - beginnings[tp]) for tp in self._tps if tp.topic == name)
                    for name in self.terminal_topics}
        return KafkaState(self.kafka.bootstrap_servers, self.group, lags, terminal, approx=bool(self.dev_broker),
                          markers=self.kafka.exactly_once and not self.dev_broker)

    async def _read_real_ends(self, ends: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Tansu's end offset is its last batch's base offset + 1: fetch from there and take the
        offset after the last record read. Bounded by ``read_budget_s``."""
        consumer = self._consumer
        assert consumer is not None
        real = dict(ends)
        for tp, end in ends.items():
            consumer.seek(tp, max(0, end - 1))
        consumer.resume(*ends)
        try:
            deadline = time.monotonic() + self.read_budget_s
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=250, max_records=50_000)
                if not batch:
                    break
                for tp, records in batch.items():
                    if records:
                        real[tp] = max(real[tp], records[-1].offset + 1)
        finally:
            consumer.pause(*ends)
        return real


async def _close(admin: AIOKafkaAdminClient | None, consumer: AIOKafkaConsumer | None) -> None:
    for client in (consumer, admin):
        if client is None:
            continue
        try:
            await stop_client(client)
        except Exception:   # noqa: BLE001, S110 - closing a client that never connected
            pass


async def _group_offsets(admin: Any, group: str, tps: list[TopicPartition], patience_s: float = 5.0) -> Any:
    """The group's committed offsets. A cluster that has not yet created its offsets topic (no
    group ever committed: a new cluster) answers "coordinator not available" for a while: retried
    for ``patience_s``, then raised."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return await admin.list_consumer_group_offsets(group, partitions=tps)
        except GroupCoordinatorNotAvailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
