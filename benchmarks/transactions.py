#!/usr/bin/env python
"""What Kafka transactions cost with aiokafka, against the idempotent producer, in one run (#16).

Starts its own Apache Kafka broker (``connector.devtools.kafka_broker``, one node, loopback), creates an
input and an output topic of ``--partitions`` partitions, and measures on the same broker:

* **throughput by batch size**: for each batch size B, the same number of records produced
  (a) idempotent: B records sent, all acknowledged, next batch (today's at-least-once write,
  whose offset commit is periodic and not counted); (b) transactional: begin, B records,
  ``send_offsets_to_transaction`` for the input partition, commit. Records are spread over the
  output partitions as result records keyed by message id are. Reports records/s, the ratio, and
  the p50/p99 of one transaction's ``send_offsets + commit`` (the commit latency);
* **one producer per input partition**: ``--partitions`` transactional producers (one
  transactional id per input partition, Kafka Streams' first exactly-once design) running batches
  of ``--parallel-batch`` at once, against one idempotent producer doing the same concurrently;
* **what N producers cost**: open sockets and memory (RSS, and Python allocations by
  tracemalloc) of 1 and of N started transactional producers.

Each batch-size row is the median of ``--repeat`` interleaved runs (the machine is shared: one
run alone moves by 2x). With aiokafka's default ``max_batch_size`` (16 KiB) a transaction whose
records all go to one partition sends them as many small sequential batches; compare with
``--max-batch-size 262144``.

Everything goes to 127.0.0.1 (about 3.5 minutes). Example:
  .venv/bin/python benchmarks/transactions.py --batches 1,10,100,500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from connector.devtools.kafka_broker import KAFKA_VERSION, KafkaCluster  # noqa: E402

VALUE = b'{"message_id":"%08d","status":"accepted","provider":"smpp_rest","route":"default","padding":"' + b"x" * 200 + b'"}'


@dataclass
class Run:
    name: str
    batch: int
    records: int
    seconds: float
    commits: list[float] = field(default_factory=list)
    cpu: float = 0.0     # this process's CPU seconds (client side: aiokafka + asyncio)

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.records * 1e6

    def quantile(self, q: float) -> float | None:
        if len(self.commits) < 2:
            return None
        return statistics.quantiles(self.commits, n=100, method="inclusive")[int(q * 100) - 1] * 1000


def value(i: int) -> bytes:
    return VALUE % i


async def idempotent(bootstrap: str, out: str, partitions: int, batch: int, records: int,
                     max_batch_size: int) -> Run:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5,
                                max_batch_size=max_batch_size)
    await producer.start()
    try:
        await (await producer.send(out, b"warm-up", partition=0))
        start, cpu = time.perf_counter(), time.process_time()
        for first in range(0, records, batch):
            futs = [await producer.send(out, value(i), key=b"%d" % i, partition=i % partitions)
                    for i in range(first, min(first + batch, records))]
            await asyncio.gather(*futs)
        return Run("idempotent", batch, records, time.perf_counter() - start, cpu=time.process_time() - cpu)
    finally:
        await producer.stop()


async def transactional(bootstrap: str, src: str, out: str, group: str, partitions: int, batch: int,
                        records: int, input_partition: int = 0, tag: str = "", spread: bool = True,
                        max_batch_size: int = 16384) -> Run:
    """Transactions of ``batch`` records with the input offset; the records spread over every
    output partition, or (``spread=False``) all in the input partition's own output partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=max_batch_size,
                                transactional_id=f"sms-{group}-{src}-{input_partition}{tag}")
    await producer.start()
    tp = TopicPartition(src, input_partition)
    run = Run("transactional" if spread else "transactional, co-partitioned", batch, records, 0.0)
    try:
        async with producer.transaction():
            await producer.send(out, b"warm-up", partition=0)
            await producer.send_offsets_to_transaction({tp: 0}, group)
        start, cpu = time.perf_counter(), time.process_time()
        for first in range(0, records, batch):
            await producer.begin_transaction()
            futs = [await producer.send(out, value(i), key=b"%d" % i,
                                        partition=i % partitions if spread else input_partition)
                    for i in range(first, min(first + batch, records))]
            await asyncio.gather(*futs)
            t0 = time.perf_counter()
            await producer.send_offsets_to_transaction({tp: first + batch}, group)
            await producer.commit_transaction()
            run.commits.append(time.perf_counter() - t0)
        run.seconds, run.cpu = time.perf_counter() - start, time.process_time() - cpu
        return run
    finally:
        await producer.stop()


async def parallel(bootstrap: str, src: str, out: str, group: str, partitions: int, batch: int,
                   per_partition: int, spread: bool, max_batch_size: int) -> tuple[Run, Run]:
    """``partitions`` transactional producers at once vs one idempotent producer with as many
    batches in flight."""
    start = time.perf_counter()
    runs = await asyncio.gather(*[transactional(bootstrap, src, out, group, partitions, batch, per_partition, p,
                                                tag=f"-par{spread}", spread=spread, max_batch_size=max_batch_size)
                                  for p in range(partitions)])
    how = "each transaction spread over all output partitions" if spread else "co-partitioned: output partition = input partition"
    txn = Run(f"{partitions} txn producers ({how})", batch, per_partition * partitions,
              time.perf_counter() - start, [c for r in runs for c in r.commits])

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5,
                                max_batch_size=max_batch_size)
    await producer.start()
    try:
        await (await producer.send(out, b"warm-up", partition=0))

        async def lane(p: int) -> None:
            for first in range(0, per_partition, batch):
                futs = [await producer.send(out, value(i), key=b"%d" % i,
                                            partition=i % partitions if spread else p)
                        for i in range(first, min(first + batch, per_partition))]
                await asyncio.gather(*futs)

        start = time.perf_counter()
        await asyncio.gather(*[lane(p) for p in range(partitions)])
        plain = Run("1 idempotent producer", batch, per_partition * partitions, time.perf_counter() - start)
    finally:
        await producer.stop()
    return txn, plain


def sockets() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def producer_cost(bootstrap: str, src: str, out: str, group: str, count: int) -> tuple[int, int, int]:
    """Sockets, RSS KiB and traced Python KiB that ``count`` started transactional producers add
    (each has run one transaction with offsets, so its coordinator connections are open)."""
    base_sockets, base_rss = sockets(), rss_kib()
    tracemalloc.start()
    base_traced = tracemalloc.get_traced_memory()[0]
    producers = [AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"cost-{count}-{p}-{uuid.uuid4().hex[:6]}")
                 for p in range(count)]
    try:
        for p, producer in enumerate(producers):
            await producer.start()
            async with producer.transaction():
                await producer.send(out, b"x", partition=p % 12)
                await producer.send_offsets_to_transaction({TopicPartition(src, p): 1}, group)
        result = (sockets() - base_sockets, max(0, rss_kib() - base_rss),
                  (tracemalloc.get_traced_memory()[0] - base_traced) // 1024)
    finally:
        for producer in producers:
            await producer.stop()
        tracemalloc.stop()
    return result


def median_run(runs: list[Run]) -> Run:
    """The run of median throughput, with the commit latencies of all runs."""
    chosen = sorted(runs, key=lambda r: r.rate)[len(runs) // 2]
    return Run(chosen.name, chosen.batch, chosen.records, chosen.seconds,
               [c for r in runs for c in r.commits], chosen.cpu)


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


async def main(args: argparse.Namespace, bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out, group = f"bench-in-{tag}", f"bench-out-{tag}", f"bench-{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(src, args.partitions, 1), NewTopic(out, args.partitions, 1)])
    finally:
        await admin.close()

    print(f"Apache Kafka {KAFKA_VERSION}, 1 broker on loopback; aiokafka; {len(VALUE % 0)}-byte records "
          f"spread over {args.partitions} output partitions\n")
    print("One producer, one input partition; txn = begin + records + send_offsets + commit; commit = "
          "send_offsets + commit;\nco-part = the transaction's records all in one output partition\n")
    print(f"{'batch':>6} {'records':>8} {'idem rec/s':>11} {'txn rec/s':>10} {'txn/idem':>9} {'txn/s':>7} "
          f"{'commit p50 ms':>14} {'p99 ms':>7} {'co-part rec/s':>14} {'co-part/idem':>13} "
          f"{'CPU us/rec idem':>16} {'txn':>5}")
    for batch in args.batches:
        records = max(batch * args.min_transactions, min(args.records, batch * args.max_transactions))
        idems, txns, cops = [], [], []
        for r in range(args.repeat):    # interleaved, medians reported: the machine is shared
            idems.append(await idempotent(bootstrap, out, args.partitions, batch, records, args.max_batch_size))
            txns.append(await transactional(bootstrap, src, out, group, args.partitions, batch, records,
                                            tag=f"-b{batch}-{r}", max_batch_size=args.max_batch_size))
            cops.append(await transactional(bootstrap, src, out, group, args.partitions, batch, records,
                                            tag=f"-c{batch}-{r}", spread=False, max_batch_size=args.max_batch_size))
        idem, txn, cop = (median_run(runs) for runs in (idems, txns, cops))
        print(f"{batch:>6} {records:>8} {idem.rate:>11.0f} {txn.rate:>10.0f} {txn.rate / idem.rate:>9.2f} "
              f"{-(-txn.records // batch) / txn.seconds:>7.1f} {fmt(txn.quantile(0.5)):>14} {fmt(txn.quantile(0.99)):>7} "
              f"{cop.rate:>14.0f} {cop.rate / idem.rate:>13.2f} {idem.cpu_us:>16.0f} {txn.cpu_us:>5.0f}")

    print(f"\n{args.partitions} input partitions at once, batch {args.parallel_batch}, "
          f"{args.per_partition} records each:")
    for spread in (True, False):
        txn, plain = await parallel(bootstrap, src, out, group, args.partitions, args.parallel_batch,
                                    args.per_partition, spread, args.max_batch_size)
        print(f"  {txn.name}: {txn.rate:.0f} rec/s, commit p50 {fmt(txn.quantile(0.5))} ms, "
              f"p99 {fmt(txn.quantile(0.99))} ms")
        print(f"      vs {plain.name}, same records: {plain.rate:.0f} rec/s   (txn/idem {txn.rate / plain.rate:.2f})")

    print("\nWhat started transactional producers add to this process:")
    for count in (1, args.partitions):
        s, rss, traced = await producer_cost(bootstrap, src, out, group, count)
        print(f"  {count:>3} producer(s): {s} sockets, Python allocations +{traced} KiB "
              f"(RSS +{rss} KiB: the allocator reuses freed pages, so RSS hardly moves)")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100, 500])
    ap.add_argument("--records", type=int, default=10000, help="records per batch size and run (bounded by the two below)")
    ap.add_argument("--min-transactions", type=int, default=20)
    ap.add_argument("--max-transactions", type=int, default=150)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each variant, interleaved; medians are shown")
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--parallel-batch", type=int, default=100)
    ap.add_argument("--per-partition", type=int, default=2000)
    ap.add_argument("--max-batch-size", type=int, default=16384, help="aiokafka max_batch_size (its default: 16384)")
    return ap.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    cluster = KafkaCluster().start()
    try:
        asyncio.run(main(options, cluster.bootstrap_servers))
    finally:
        cluster.stop()
