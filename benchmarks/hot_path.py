#!/usr/bin/env python
"""CPU per record of the worker's own code on the dispatch path: no broker, no network.

``sms-connector bench`` measures the whole worker (aiohttp, aiokafka, asyncio and our code) on a
shared, noisy machine. This measures what our code costs per record, stably enough to compare two
commits: CPU time (``time.process_time``) in one process, best of ``--repeat`` runs.

- **stages**: each step a record goes through, timed alone (``decode_outbound``, routing, the
  opt-out lookup, ``prepare``, ``build_send`` + auth, ``parse_send`` of the simulator's answer,
  the accepted record, the correlation record, the metric updates);
- **pipeline**: ``Pipeline.outcome`` end to end for ``--records`` records, one task per record
  as the dispatcher makes them, ``--in-flight`` at once, through a ``RouteSender`` whose transport
  answers like the SMPP REST simulator in memory (the answer's cost is measured and taken off),
  for ``batch_max`` 1 and 200, with the worker's garbage-collector settings. What is left out, and measured by ``bench``: aiohttp, aiokafka,
  the dispatcher's chains, commits and produces;
- ``--keys 0``: every record's recipient new to the worker (the numbers' caches emptied before
  each run): what a first message to a number costs (parsing it);
- **dispatch**: the dispatcher itself, from fetched records to finished offsets (chains or waves,
  pipeline, sender, the output and ledger records through the real ``Batcher`` into aiokafka's
  batch builder), per-record path against waves (``dispatch.waves``), same records;
- **primitives**: what the per-record machinery of asyncio and dataclasses costs (a task, a
  future, a frozen dataclass), the unit prices of the vectorised-dispatch plan.

``--profile FILE`` also runs the pipeline under cProfile and writes its stats (sorted by own
time) to FILE; ``--json`` prints one JSON object instead of the table.

Example: ``.venv/bin/python benchmarks/hot_path.py --records 20000``
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import pstats
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson
from aiokafka.producer.message_accumulator import BatchBuilder

from connector import metrics
from connector.app import build_senders, tune_gc
from connector.config import load
from connector.http import HttpRequest, HttpResponse
from connector.offsets import PartitionProgress
from connector.pipeline import Pipeline, Verdict, _correlations
from connector.records import Accepted, Ending, SendFacts, decode_outbound, encode_accepted
from connector.routing import Router
from connector.transport import HttpTransport


def record(i: int, keys: int = 2000) -> bytes:
    """The bench's record i (``connector.devtools.bench.make_records``)."""
    return orjson.dumps({"schema_version": 1, "client_message_id": f"hp-{i}",
                         "recipient": {"phone": f"+4477{i % keys:07d}1"},
                         "text": f"Your code is {i % 1_000_000:06d}", "metadata": {"bench": "hp"}})


class SimulatedSmpp:
    """A transport handler answering like the SMPP REST simulator (every message accepted); it
    keeps the CPU it spent, which is the provider's, not ours."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.n = 0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        t0 = time.process_time()
        sent = orjson.loads(request.body)["Messages"]
        results = []
        for m in sent:
            self.n += 1
            results.append({"apiMessageId": f"smpp-{self.n:010d}", "accepted": True, "to": m["to"],
                            "error": None, "msg": m})
        response = HttpResponse(200, orjson.dumps({"messages": results}), {"content-type": "application/json"})
        self.cpu_s += time.process_time() - t0
        return response


def settings_env(batch_max: int, concurrency: int) -> dict[str, str]:
    p = "SMS_CONNECTOR_ROUTES__BENCH__"
    return {p + "PROVIDER": "smpp_rest", p + "BASE_URL": "http://sim.invalid", p + "API_KEY": "k",
            p + "BATCH_MAX": str(batch_max), p + "CONCURRENCY": str(concurrency)}


def make_pipeline(batch_max: int, concurrency: int, handler: Any) -> Pipeline:
    settings = load(environ=settings_env(batch_max, concurrency))
    senders = build_senders(settings)
    for s in senders.values():
        s.transport = HttpTransport(handler=handler)
    return Pipeline(senders, Router.from_settings(settings.routing, {"bench": "smpp_rest"}))


def forget_numbers() -> None:
    """Empty connector.numbers' caches: every recipient of the next run is new to the worker."""
    from connector import numbers

    for value in list(vars(numbers).values()):
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()
    getattr(numbers, "_PARSED", {}).clear()


async def run_pipeline(batch_max: int, records: list[bytes], in_flight: int, concurrency: int,
                       profile: cProfile.Profile | None = None, new_recipients: bool = False) -> float:
    """µs of CPU per record for ``Pipeline.outcome`` over ``records`` (the simulated answer's
    CPU taken off). ``new_recipients``: the numbers' caches are emptied first."""
    if new_recipients:
        forget_numbers()
    sim = SimulatedSmpp()
    pipeline = make_pipeline(batch_max, concurrency, sim)
    now_ms = int(time.time() * 1000)
    it = iter(records)
    ended: list[Verdict] = []

    async def one(value: bytes) -> None:
        ended.append(await pipeline.outcome(value, now_ms))

    async def feeder() -> None:
        # ``in_flight`` records at once, each in its own task (as the dispatcher's chains are)
        running: set[asyncio.Task[None]] = set()
        for value in it:
            if len(running) >= in_flight:
                _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            running.add(asyncio.create_task(one(value)))
        await asyncio.gather(*running)

    gc.collect()
    tune_gc()     # the worker's collector settings (connector.app): without them, cyclic GC over the
    #               thousands of tasks in flight is a large and noisy share of the figure
    if profile is not None:
        profile.enable()
    t0 = time.process_time()
    await feeder()
    cpu = time.process_time() - t0
    if profile is not None:
        profile.disable()
    for s in pipeline.senders.values():
        await s.aclose()
    assert len(ended) == len(records) and all(v.ending is Ending.ACCEPTED for v in ended), \
        {v.ending for v in ended}
    return (cpu - sim.cpu_s) / len(records) * 1e6


class _MemoryProducer:
    """What ``streams.batcher.Batcher`` asks of the producer: aiokafka's own batch builder, each
    batch acknowledged at once (no broker)."""

    def create_batch(self) -> Any:
        return BatchBuilder(256 * 1024, 0)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def run_dispatch(batch_max: int, records: list[bytes], concurrency: int, waves: bool,
                       partitions: int = 12, keys: int = 2000) -> float:
    """µs of CPU per record for the dispatcher itself, from fetched records to finished offsets:
    its chains or waves, the pipeline, the sender (transport in memory, its answer's CPU taken
    off), the result, correlation and ledger records through the real ``Batcher`` into aiokafka's
    batch builder (acknowledged at once). Fetches of up to 1,000 records as ``_fetch_loop`` takes
    them, ``dispatch.max_in_flight`` bounding. Left out: aiokafka's network side and aiohttp."""
    from aiokafka import ConsumerRecord, TopicPartition

    from connector import contract as topics
    from connector.streams.batcher import Batcher
    from connector.streams.dispatch import Dispatcher
    from connector.streams.ledger import Ledger, PartitionLedger

    sim = SimulatedSmpp()
    settings = load(environ={**settings_env(batch_max, concurrency), "SMS_CONNECTOR_DISPATCH__WAVES": str(waves)})
    senders = build_senders(settings)
    for s in senders.values():
        s.transport = HttpTransport(handler=sim)
    d = Dispatcher(settings, senders, Router.from_settings(settings.routing, {"bench": "smpp_rest"}))
    d._partitions = {topics.spec(t).name: partitions for t in ("outbound", "retry", "accepted", "failed", "dlq",
                                                              "correlation", "ledger", "scheduled")}
    batcher = d._batcher = Batcher(_MemoryProducer(), linger_s=settings.kafka.linger_ms / 1000)  # type: ignore[arg-type]
    d.ledger = Ledger(settings.kafka, batcher, settings.dispatch.idempotency_window_s)
    for p in range(partitions):      # loaded and empty, as after a first start
        d.ledger.partitions[p] = PartitionLedger(d.ledger, p)
        d.ledger._loaded[p] = asyncio.Event()
        d.ledger._loaded[p].set()
    name = topics.spec("outbound").name
    tps = [TopicPartition(name, p) for p in range(partitions)]
    d._assigned(tps)
    for tp in tps:
        d._progress[tp] = PartitionProgress()
    now_ms = int(time.time() * 1000)
    fetched, next_offset = [], [0] * partitions
    for i, v in enumerate(records):     # the bench's keys: record i to recipient i % keys
        p = (i % keys) % partitions
        fetched.append(ConsumerRecord(name, p, next_offset[p], now_ms, 0, f"k{i % keys}".encode(), v, None, 6,
                                      len(v), []))
        next_offset[p] += 1
    gc.collect()
    tune_gc()
    t0 = time.process_time()
    at = 0
    while at < len(fetched):
        room = d.max_in_flight - d.in_flight
        if room <= 0:
            d._capacity.clear()
            await d._capacity.wait()
            continue
        by_tp: dict[int, list[Any]] = {}
        for r in fetched[at:at + min(room, 1000)]:
            by_tp.setdefault(r.partition, []).append(r)
        at += min(room, 1000)
        for p, recs in by_tp.items():
            d._take(tps[p], sorted(recs, key=lambda r: r.offset))
        await asyncio.sleep(0)
    while d.in_flight:
        await asyncio.sleep(0.001)
    cpu = time.process_time() - t0
    await batcher.aclose()
    for s in senders.values():
        await s.aclose()
    assert all(d._progress[tp].committable() == next_offset[tp.partition] for tp in tps), "not all finished"
    return (cpu - sim.cpu_s) / len(records) * 1e6


def per_call_us(fn: Callable[[], Any], n: int, repeat: int) -> float:
    """Best of ``repeat`` runs: µs of CPU per call of ``fn``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def stages(n: int, repeat: int) -> dict[str, float]:
    """Each step of one record's path, alone (µs per record)."""
    settings = load(environ=settings_env(1, 64))
    senders = build_senders(settings)
    sender = senders["bench"]
    provider = sender.provider
    router = Router.from_settings(settings.routing, {"bench": "smpp_rest"})
    values = [record(i) for i in range(n)]
    msgs = [decode_outbound(v) for v in values]
    prepared = [provider.prepare(m) for m in msgs]
    sim = SimulatedSmpp()
    responses = [asyncio.run(sim(provider.build_send([p]))) for p in prepared[:200]]
    accepted = Accepted(provider_message_id="smpp-0000000001")
    facts = [SendFacts(msg=m, received_at=time.time(), route="bench", provider="smpp_rest", encoding="gsm7",
                       segments=1, attempts=1, submitted_at=time.time()) for m in msgs]
    counter = metrics.ACCEPTED
    child = counter.labels("bench", "smpp_rest")

    def each(fn: Callable[[Any], Any], items: list[Any]) -> Callable[[], None]:
        it = iter(items * (repeat + 1))
        return lambda: fn(next(it))

    table = {
        "decode_outbound (orjson + schema + recipient)": each(decode_outbound, values),
        "router.choose": each(router.choose, msgs),
        "recipient.e164 (opt-out lookup)": each(lambda m: m.recipient.e164, msgs),
        "provider.prepare (number, encoding)": each(provider.prepare, msgs),
        "build_send + auth.apply (1 message)": each(lambda p: provider.auth.apply(provider.build_send([p])), prepared),
        "parse_send (1 message)": each(lambda pr: provider.parse_send([pr[0]], pr[1]),
                                       list(zip(prepared, responses * (n // len(responses) + 1)))),
        "SendFacts + encode_accepted": each(lambda f: encode_accepted(f, accepted, time.time()), facts),
        "correlation record": each(lambda f: _correlations(f, accepted), facts),
        "metric: labels(...).inc()": lambda: counter.labels("bench", "smpp_rest").inc(),
        "metric: cached child .inc()": child.inc,
    }
    return {name: round(per_call_us(fn, n, repeat), 2) for name, fn in table.items()}


@dataclass(frozen=True, slots=True)
class _Eight:
    a: Any
    b: Any
    c: Any
    d: Any
    e: Any = None
    f: Any = None
    g: Any = None
    h: Any = None


def primitives(n: int, repeat: int) -> dict[str, float]:
    """The unit prices of per-record machinery (µs each)."""

    async def nothing() -> None:
        return None

    async def tasks(count: int) -> float:
        loop = asyncio.get_running_loop()
        rounds = max(1, count // 100)
        t0 = time.process_time()
        for _ in range(rounds):
            await asyncio.gather(*[loop.create_task(nothing()) for _ in range(100)])
        return (time.process_time() - t0) / (rounds * 100) * 1e6

    async def futures(count: int) -> float:
        loop = asyncio.get_running_loop()
        t0 = time.process_time()
        for _ in range(count):
            f = loop.create_future()
            loop.call_soon(f.set_result, None)
            await f
        return (time.process_time() - t0) / count * 1e6

    async def coroutines(count: int) -> float:
        t0 = time.process_time()
        for _ in range(count):
            await nothing()
        return (time.process_time() - t0) / count * 1e6

    def best(coro_fn: Callable[[int], Any]) -> float:
        return round(min(_run(coro_fn(n)) for _ in range(repeat)), 2)

    return {
        "task: create + run + gather (per task)": best(tasks),
        "future: create + set_result (call_soon) + await": best(futures),
        "coroutine: call + await (no suspension)": best(coroutines),
        "frozen slots dataclass, 8 fields": round(per_call_us(lambda: _Eight(1, 2, 3, 4, 5, 6, 7, 8), n, repeat), 2),
        "dict of 8 keys": round(per_call_us(lambda: {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 8},
                                            n, repeat), 2),
    }


def _run(coro: Any) -> float:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=20000, help="records through the pipeline per run")
    p.add_argument("--stage-records", type=int, default=5000, help="calls per stage timing")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the best is kept")
    p.add_argument("--in-flight", type=int, default=2000, help="records in progress at once (pipeline)")
    p.add_argument("--keys", type=int, default=2000,
                   help="distinct recipients (0: every record a new one, the numbers' caches emptied before each run)")
    p.add_argument("--profile", metavar="FILE", help="cProfile the pipeline runs; stats to FILE")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    new = a.keys <= 0
    values = [record(i, a.records if new else a.keys) for i in range(a.records)]
    pipeline_us = {}
    prof = cProfile.Profile() if a.profile else None
    for label, batch_max, concurrency in (("single (batch_max 1, 64 calls)", 1, 64),
                                          ("batch (batch_max 200, 16 calls)", 200, 16)):
        runs = [_run(run_pipeline(batch_max, values, a.in_flight, concurrency, new_recipients=new))
                for _ in range(a.repeat)]
        pipeline_us[label] = round(min(runs), 1)
        if prof is not None:
            _run(run_pipeline(batch_max, values, a.in_flight, concurrency, prof, new_recipients=new))
    dispatch_us = {}
    for label, batch_max, concurrency in (("single (batch_max 1, 64 calls)", 1, 64),
                                          ("batch (batch_max 200, 16 calls)", 200, 16)):
        for waves in (False, True):
            runs = [_run(run_dispatch(batch_max, values, concurrency, waves)) for _ in range(a.repeat)]
            dispatch_us[f"{label}, {'waves' if waves else 'per record'}"] = round(min(runs), 1)
    out = {"pipeline_us_per_record": pipeline_us, "dispatch_us_per_record": dispatch_us, "stages_us": stages(a.stage_records, a.repeat),
           "primitives_us": primitives(a.stage_records, a.repeat)}
    if prof is not None:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
        with open(a.profile, "w") as fh:
            fh.write(text.getvalue())
        out["profile"] = a.profile
    if a.json:
        print(json.dumps(out))
        return 0
    for section, rows in out.items():
        if not isinstance(rows, dict):
            print(f"\n{section}: {rows}")
            continue
        print(f"\n{section}")
        width = max(map(len, rows))
        for name, us in rows.items():
            print(f"  {name:<{width}}  {us:8.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
