#!/usr/bin/env python
"""Where an exactly-once dispatch transaction's time goes (#16, #17): the real ``PartitionCommitter``.

Starts its own Apache Kafka broker (one node, loopback), runs ``--partitions`` committers (one
transactional producer each, as a worker with that many input partitions has), adds messages at
``--rate`` per second (``--records`` records each, over the output topic's 12 partitions, each
message to a random committer) and reports per variant: add -> committed latency (p50/p99),
transactions, process CPU, RSS, and each of aiokafka's transactional requests (AddPartitionsToTxn,
AddOffsetsToTxn, TxnOffsetCommit, EndTxn, Produce, coordinator lookups) timed one by one, with
how many failed (retried after the backoff).

Variants are JSON: name -> extra producer options (e.g. ``{"retry_backoff_ms": 100}``); the
``"impl": "old"`` option runs ``committer.py`` and ``transactions.py`` copied from an older commit
into ``--old-dir`` (``git show REV:connector/streams/committer.py > DIR/old_committer.py``, same
for ``old_transactions.py``, with its import of ``connector.streams.transactions`` changed to
``old_transactions``). Variants alternate ``--repeat`` times on the same broker: the machine is
shared, compare within a run. It patches aiokafka's sender handlers to time them: a probe, not
production code. Example (about 2 minutes):

  .venv/bin/python benchmarks/transactions_probe.py --variants '{"default": {}, "backoff100": {"retry_backoff_ms": 100}}'
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.producer import sender as aiokafka_sender

from connector.devtools.kafka_broker import KafkaCluster
from connector.streams import committer as committer_module
from connector.streams import transactions as transactions_module
from connector.streams.committer import Output
from connector.streams.transactions import transactional_id

TIMINGS: dict[str, list[tuple[float, bool]]] = collections.defaultdict(list)


def _timed(cls: Any) -> None:
    original = cls.do

    async def do(self: Any, node_id: int) -> Any:
        t0 = time.monotonic()
        ok = await original(self, node_id)
        TIMINGS[cls.__name__.removesuffix("Handler")].append((time.monotonic() - t0, ok is not False))
        return ok
    cls.do = do


def _instrument() -> None:
    for cls in (aiokafka_sender.AddPartitionsToTxnHandler, aiokafka_sender.AddOffsetsToTxnHandler,
                aiokafka_sender.TxnOffsetCommitHandler, aiokafka_sender.EndTxnHandler,
                aiokafka_sender.SendProduceReqHandler):
        _timed(cls)
    find = aiokafka_sender.Sender._find_coordinator

    async def find_coordinator(self: Any, kind: Any, key: str) -> Any:
        t0, cached = time.monotonic(), kind in self._coordinators
        node = await find(self, kind, key)
        if not cached:
            TIMINGS[f"FindCoordinator[{kind.name}]"].append((time.monotonic() - t0, True))
        return node
    aiokafka_sender.Sender._find_coordinator = find_coordinator


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


async def run_variant(cluster: KafkaCluster, name: str, options: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    options = dict(options)
    impl = options.pop("impl", "new")
    if impl == "old":
        import old_committer  # type: ignore[import-not-found]
        import old_transactions  # type: ignore[import-not-found]
        mods: tuple[Any, Any] = (old_committer, old_transactions)
    else:
        mods = (committer_module, transactions_module)
    TIMINGS.clear()
    k = cluster.settings(group_id=f"g-{name}", transactional_id_prefix=f"probe-{name}")
    offsets = dict.fromkeys(range(a.partitions), 0)
    commits: list[float] = []
    rss0 = rss_mb()
    committers = []
    for p in range(a.partitions):
        txp = mods[1].TransactionalProducer(k, transactional_id(k, p), role="probe", **options)
        c = mods[0].PartitionCommitter(txp, k.group_id, offsets=lambda p=p: {TopicPartition("in", p): offsets[p]},
                                       committed=lambda o: None, on_fenced=lambda r: None,
                                       max_records=a.max_records, max_s=a.max_s, linger_s=k.linger_ms / 1000)
        await c.start()
        original = c.txp.commit

        async def commit(*args: Any, original: Any = original, **kw: Any) -> Any:
            t0 = time.monotonic()
            try:
                return await original(*args, **kw)
            finally:
                commits.append(time.monotonic() - t0)
        c.txp.commit = commit
        committers.append(c)
    rss_started = rss_mb()
    latencies: list[float] = []
    waiting = []
    value = b"x" * 300
    cpu0, t_end = time.process_time(), time.monotonic() + a.seconds
    next_at, sent = time.monotonic(), 0
    while time.monotonic() < t_end:
        p = random.randrange(a.partitions)
        t0 = time.monotonic()
        fut = committers[p].add([Output("out", random.randrange(12), b"k%d" % sent, value) for _ in range(a.records)])
        offsets[p] += 1
        fut.add_done_callback(lambda f, t0=t0: latencies.append(time.monotonic() - t0))
        waiting.append(fut)
        sent += 1
        next_at += 1 / a.rate
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif sent % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.wait(waiting, timeout=30)
    cpu = time.process_time() - cpu0
    for c in committers:
        await c.close(commit=True)
    row: dict[str, Any] = {
        "variant": name, "messages": sent, "committed": len(latencies), "cpu_s": round(cpu, 2),
        "p50_ms": round(pct(latencies, .5) * 1000, 1), "p99_ms": round(pct(latencies, .99) * 1000, 1),
        "transactions": len(commits), "commit_p50_ms": round(pct(commits, .5) * 1000, 1),
        "commit_p99_ms": round(pct(commits, .99) * 1000, 1),
        "rss_mb": {"before": round(rss0, 1), "started": round(rss_started, 1), "after": round(rss_mb(), 1)}}
    for request, xs in sorted(TIMINGS.items()):
        d = [x for x, _ in xs]
        row[request] = {"n": len(xs), "failed": sum(1 for _, ok in xs if not ok),
                        "p50_ms": round(pct(d, .5) * 1000, 1), "p99_ms": round(pct(d, .99) * 1000, 1)}
    return row


async def main(a: argparse.Namespace) -> None:
    if a.old_dir:
        sys.path.insert(0, a.old_dir)
    _instrument()
    variants = json.loads(a.variants)
    cluster = await asyncio.to_thread(KafkaCluster().start)
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
        await admin.start()
        await admin.create_topics([NewTopic("in", a.partitions, 1), NewTopic("out", 12, 1)])
        await admin.close()
        warm = argparse.Namespace(**{**vars(a), "partitions": 2, "rate": 50, "seconds": 3})
        await run_variant(cluster, "warmup", {}, warm)     # the offsets and transaction state topics
        for r in range(a.repeat):
            for name, options in variants.items():
                print(json.dumps(await run_variant(cluster, f"{name}-{r}", options, a)), flush=True)
    finally:
        await asyncio.to_thread(cluster.stop)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default='{"default": {}}', help="JSON: name -> producer options (impl: old)")
    p.add_argument("--partitions", type=int, default=12, help="input partitions (committers)")
    p.add_argument("--rate", type=float, default=400, help="messages per second")
    p.add_argument("--records", type=int, default=3, help="records per message")
    p.add_argument("--seconds", type=float, default=12, help="per variant")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--max-records", type=int, default=500, help="dispatch.transaction_max_records")
    p.add_argument("--max-s", type=float, default=0.1, help="dispatch.transaction_max_s")
    p.add_argument("--old-dir", default=None, help="where old_committer.py and old_transactions.py are")
    asyncio.run(main(p.parse_args()))
