"""``sms-connector bench``: throughput, latency and memory of one worker, with reference points.

Each scenario runs on a fresh local stack (``connector.devtools.stack``): the embedded broker (or the
cluster given with ``bootstrap_servers``, or a running local Apache Kafka given as ``cluster``, the
test session's), the SMPP REST simulator in its own process, and ONE worker process started with
explicit routes and settings. In the same run it measures:

- the **raw ceiling**: aiohttp's client straight to the same simulator, same concurrency and
  request shape (``SmppRest.build_send``, bodies built beforehand), no Kafka; in a separate
  process on uvloop, like the worker (``python -m connector.devtools.bench --ceiling ...``);
- the **typical baseline**: ``connector.devtools.baseline``, a faust agent with ``concurrency=50`` awaiting
  one shared default-transport ``httpx`` call per record, on the same broker and simulator, timed
  like the worker. It is slow, so it runs on ``baseline_records`` records, once per provider
  latency (single and batch share the 0 ms figure);
- with ``peer`` (``--peer redpanda-connect``), a **real peer** doing the same job on the same
  broker and simulator, before the worker runs: ``connector.devtools.peer`` (records/s, p99 and CPU per
  record, measured like the worker's; per-message scenarios only).

How a dispatch scenario is measured (``single``, ``latency50``, ``batch``):

1. **Throughput.** ``records`` records (keyed by ``keys`` recipients) are produced to
   ``sms.outbound`` BEFORE the worker starts; the worker's consumer group is positioned at the
   end of the topic first, so it reads exactly these. Then the worker starts, and records/s is
   measured from the Kafka timestamp of the first terminal record to that of the last (worker
   start-up and group join are excluded; the ramp-up is included). Progress comes from the
   group's committed offsets (a record is committed only after its terminal record is
   acknowledged), so the bench process does almost nothing while the worker runs; terminal
   records are read afterwards.
2. **Latency at a steady offered rate.** With the worker idle and joined, records are produced
   at ``latency_load`` (default 0.5) x the throughput just measured for about 5 s. p50 / p99 are
   result record timestamp - input record timestamp (the input's Kafka CreateTime, carried as
   ``received_at`` in the result). Latency of the pre-produced backlog would only measure
   queueing, so it is not reported.
3. **Peak RSS** of the worker: ``VmHWM`` of its ``/proc/<pid>/status`` at the end.
4. **What bounds it**: CPU of the worker, simulator, broker and bench processes from the worker's
   start to the last result (``/proc/<pid>/stat``, as % of one core over the throughput window),
   the worker's CPU per record next to the raw client's, and with ``profile_dir`` a py-spy
   profile of the worker (top functions, self time by package). A scenario that misses its
   target gets a closing note made of these.

On the embedded broker (Tansu) an idle fetch is answered only when the consumer's
``fetch_max_wait_ms`` expires (the worker's ``kafka.fetch_max_wait_ms``, 100 ms by default) instead
of when data arrives, so p50 / p99 there are bounded below by it; on Kafka they are not.

``soak`` feeds ``soak_records`` (1M) records while the worker runs (backlog kept under 50,000),
samples the worker's RSS every 2 s, and reports the peak, the slope over the second half and
whether it is flat; its records/s is wall-clock from the committed offsets. ``callbacks`` posts
ThingSpace SOAP delivery callbacks to the worker's ``POST /callbacks/thingspace`` (role
``callbacks``; 2xx only after the ``sms.delivery`` record is durable) and reports callbacks/s and
the p50 / p99 of the HTTP round trip; it reports "not available" while the worker answers 404.
Its callbacks match no message sent, so the role's correlator holds every one of them (the worst
case for its memory and housekeeping).

Long phases print progress to stderr. The machine is shared and noisy: compare the ratios of one
run (ceiling, baseline and worker are measured minutes apart on the same simulator), not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncIterator, Iterable, Iterator, Mapping, Self, TextIO

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connector import contract as topics
from connector.devtools.children import child_options
from connector.config import KafkaSettings
from connector.devtools.embedded_broker import free_port
from connector.devtools.kafka_broker import KAFKA_VERSION, KafkaCluster
from connector.kafka import client_options, topic_partitions
from connector.devtools.simulators import SIMULATORS
from connector.devtools.stack import LocalStack, Process, committed_isolation, wait_http, worker_env

SMPP = "smpp_rest"
SCENARIO_NAMES = ("single", "latency50", "batch", "callbacks", "soak")


@dataclass(frozen=True)
class Scenario:
    name: str
    latency_ms: float = 0.0       # provider (simulator) latency
    batch_max: int = 1            # route batch_max (SMPP Messages[])
    concurrency: int = 64         # route concurrency = provider calls in flight (ceiling: the same)
    max_in_flight: int = 2000     # dispatch.max_in_flight
    target: str = ""


SCENARIOS: dict[str, Scenario] = {
    "single": Scenario("single", target="ratio_to_ceiling >= 0.6"),
    # in flight needed ~ rate x latency: 256 calls / 50 ms ~ 5,000/s at most.
    "latency50": Scenario("latency50", latency_ms=50, concurrency=256, max_in_flight=4000,
                          target="records_per_s >= 2000 and speedup_vs_baseline >= 5"),
    "batch": Scenario("batch", batch_max=200, concurrency=16, max_in_flight=8000,
                      target="records_per_s >= 20000"),
    "callbacks": Scenario("callbacks", concurrency=64, target="records_per_s >= 3000 and p99_ms < 50"),
    "soak": Scenario("soak", target="peak_rss_mb <= 200 and rss_flat"),
}

FIELDS = ("scenario", "records", "records_per_s", "ceiling_per_s", "ratio_to_ceiling", "worker_cpu_s_per_1k",
          "baseline_per_s", "speedup_vs_baseline", "p50_ms", "p99_ms", "peak_rss_mb")

CALLBACK_USERNAME = "bench-callbacks"
CALLBACK_PASSWORD = "bench-callbacks-secret"
CALLBACK_PATH = "/callbacks/thingspace"
SOAK_MAX_BACKLOG = 50_000


# ------------------------------------------------------------------------------------------------
# Output


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def format_table(results: list[dict[str, Any]]) -> str:
    """The results as a plain-text table (one row per scenario), then any notes."""
    cols = [("scenario", "scenario", "s"), ("records", "records", ",.0f"), ("records/s", "records_per_s", ",.0f"),
            ("ceiling/s", "ceiling_per_s", ",.0f"), ("x ceiling", "ratio_to_ceiling", ".2f"),
            ("CPU s/1k", "worker_cpu_s_per_1k", ".3f"),
            ("baseline/s", "baseline_per_s", ",.0f"), ("x baseline", "speedup_vs_baseline", ".1f"),
            ("p50 ms", "p50_ms", ".1f"), ("p99 ms", "p99_ms", ".1f"), ("peak RSS MB", "peak_rss_mb", ".0f"),
            ("target", "target", "s"), ("met", "target_met", "s")]
    rows = [[r.get("scenario", "?") if key == "scenario" else _fmt(r.get(key), spec) for _, key, spec in cols]
            for r in results]
    widths = [max(len(title), *(len(row[i]) for row in rows)) if rows else len(title)
              for i, (title, _, _) in enumerate(cols)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i in (0, len(cols) - 2) else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [line([c[0] for c in cols]), line(["-" * w for w in widths])] + [line(row) for row in rows]
    notes = [f"{r.get('scenario')}: {r['note']}" for r in results if r.get("note")]
    notes += [bound_note(r) for r in results if r.get("target_met") is False]
    if any(r.get("peer") for r in results):
        from connector.devtools.peer import side_by_side

        notes += [side_by_side(r) for r in results if r.get("peer")]
    if any(r.get("latency_offered_per_s") for r in results):
        notes.append("p50/p99: result record timestamp - input record timestamp at a steady offered rate of "
                     "half the measured throughput (callbacks: HTTP round trip to the 2xx)."
                     + (" On the embedded broker an idle fetch is answered only when the consumer's "
                        "kafka.fetch_max_wait_ms (100 ms by default) expires, which bounds these figures." if
                        any(r.get("broker") == EMBEDDED for r in results) else ""))
    brokers = sorted({str(r.get("broker")) for r in results if r.get("broker")})
    if brokers:
        notes.insert(0, f"broker: {', '.join(brokers)}")
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def bound_note(r: dict[str, Any]) -> str:
    """What bounds a scenario that missed its target: CPU shares, CPU per record, the profile."""
    cpu = r.get("cpu_pct") or {}
    parts = [f"{r.get('scenario')}: target not met ({r.get('target')})."]
    if cpu:
        shares = ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items())
        parts.append(f"CPU during the run (% of one core): {shares}.")
        waited = (r.get("cpu_wait_pct") or {}).get("worker", 0)
        if cpu.get("worker", 0) >= 75:
            parts.append("Bound by the worker's CPU: one event loop on one core.")
        elif cpu.get("simulator", 0) >= 75:
            parts.append("Bound by the simulator's CPU.")
        elif cpu.get("worker", 0) + waited >= 75:
            parts.append(f"Bound by the machine: the worker also waited for a CPU {waited:.0f}% of the time "
                         "(runnable, not running: other processes held both cores).")
        else:
            parts.append("The worker is not CPU-saturated: it waits (in-flight bound, provider latency or broker).")
    if r.get("worker_cpu_us_per_record"):
        ref = r.get("ceiling_cpu_us_per_record")
        parts.append(f"Worker CPU {r['worker_cpu_us_per_record']:.0f} us per record"
                     + (f" vs {ref:.0f} us per record for the raw client." if ref else "."))
    prof = r.get("profile") or {}
    if prof.get("self_by_package_pct"):
        parts.append("Profile, self time by package: "
                     + ", ".join(f"{k} {v:.0f}%" for k, v in prof["self_by_package_pct"][:6]) + ".")
        parts.append("Inclusive: " + ", ".join(f"{k.split(' (')[0]} {v:.0f}%" for k, v in prof["inclusive_pct"][:8]) + ".")
    elif not prof:
        parts.append("(run with a profile directory and py-spy installed for the profile)")
    return " ".join(parts)


class _Progress:
    def __init__(self, err: TextIO | None) -> None:
        self.err = err

    def __call__(self, text: str) -> None:
        if self.err is not None:
            print(f"[bench] {text}", file=self.err, flush=True)


# ------------------------------------------------------------------------------------------------
# Records


def phone(k: int) -> str:
    """Recipient k as E.164; ends in 1, so never in the simulators' reject suffix."""
    return f"+4477{k % 10_000_000:07d}1"


def make_records(tag: str, n: int, keys: int, start: int = 0) -> Iterator[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """n outbound records ``{tag}-{i}``; record i goes to recipient i % keys (its Kafka key)."""
    for i in range(start, start + n):
        to = phone(i % keys)
        value = orjson.dumps({"schema_version": 1, "client_message_id": f"{tag}-{i}", "recipient": {"phone": to},
                              "text": f"Your code is {i % 1_000_000:06d}", "metadata": {"bench": tag}})
        yield to.encode(), value, []


# ------------------------------------------------------------------------------------------------
# Kafka helpers


async def produce_tracked(kafka: KafkaSettings, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
                          topic: str, *, rate: float | None = None) -> dict[int, int]:
    """Produce records (paced at ``rate``/s when given); returns partition -> highest offset written.

    Offsets come from the produce acknowledgements, which are right on every broker (the embedded
    one's ListOffsets is not: it undercounts multi-record batches)."""
    producer = AIOKafkaProducer(**client_options(kafka), acks="all", linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    last: dict[int, int] = {}
    try:
        futures = []
        t0 = time.monotonic()
        for i, (key, value, headers) in enumerate(records):
            if rate:
                ahead = i / rate - (time.monotonic() - t0)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            if len(futures) >= 20_000:
                _merge_offsets(last, await asyncio.gather(*futures))
                futures = []
        _merge_offsets(last, await asyncio.gather(*futures))
    finally:
        await producer.stop()
    return last


def _merge_offsets(last: dict[int, int], metas: Iterable[Any]) -> None:
    for m in metas:
        if m.offset > last.get(m.partition, -1):
            last[m.partition] = m.offset


async def end_offsets(kafka: KafkaSettings, topic_names: Iterable[str]) -> dict[TopicPartition, int]:
    """ListOffsets ends (a lower bound on the embedded broker, exact on Kafka)."""
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [tp for t in topic_names for tp in await topic_partitions(consumer, t)]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def position_group(kafka: KafkaSettings, group: str, topic: str,
                         written: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Commit ``group`` at the end of ``topic`` (before it ever joins), so it reads only what is
    produced next. The end is ListOffsets' answer or past what this run wrote, whichever is later."""
    ends = await end_offsets(kafka, [topic])
    start = {tp: max(off, written.get(tp, 0)) for tp, off in ends.items()}
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(start))
        await consumer.commit(start)
    finally:
        await consumer.stop()
    return start


class GroupWatch:
    """Committed offsets of a consumer group: how many records it has finished."""

    def __init__(self, kafka: KafkaSettings, group: str) -> None:
        self.consumer = AIOKafkaConsumer(**client_options(kafka), group_id=group, enable_auto_commit=False)

    async def __aenter__(self) -> GroupWatch:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def committed(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        tps = list(tps)
        got = await asyncio.gather(*(self.consumer.committed(tp) for tp in tps))
        return {tp: (c or 0) for tp, c in zip(tps, got)}

    async def wait(self, start: Mapping[TopicPartition, int], target: Mapping[TopicPartition, int], *,
                   label: str, say: _Progress, timeout: float, proc: Process | None = None,
                   every_s: float = 2.0) -> list[tuple[float, int]]:
        """Until every partition's committed offset reaches ``target``; returns (time, done) samples."""
        total = sum(target[tp] - start[tp] for tp in target)
        deadline = time.monotonic() + timeout
        samples: list[tuple[float, int]] = []
        last_say = 0.0
        while True:
            now = time.monotonic()
            committed = await self.committed(target)
            done = sum(min(committed[tp], target[tp]) - start[tp] for tp in target)
            samples.append((now, done))
            if done >= total:
                return samples
            if now - last_say >= every_s:
                rate = _recent_rate(samples)
                say(f"{label}: {done:,}/{total:,} done ({rate:,.0f}/s)")
                last_say = now
            if proc is not None and not proc.alive:
                raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}: {_tail(proc)}")
            if now > deadline:
                raise RuntimeError(f"{label}: only {done:,}/{total:,} done after {timeout:.0f}s")
            await asyncio.sleep(0.25)


def _recent_rate(samples: list[tuple[float, int]], window_s: float = 3.0) -> float:
    if len(samples) < 2:
        return 0.0
    t1, d1 = samples[-1]
    t0, d0 = next(((t, d) for t, d in samples if t >= t1 - window_s), samples[0])
    return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


def _tail(p: Process, lines: int = 10) -> str:
    if p.log is None or not p.log.exists():
        return ""
    return " | ".join(p.log.read_text(errors="replace").splitlines()[-lines:])


def _parse_iso_ms(text: str) -> float:
    return datetime.fromisoformat(text).timestamp() * 1000


@dataclass
class Terminal:
    cid: str
    timestamp_ms: int         # the result record's Kafka timestamp
    received_ms: float | None  # the input record's Kafka timestamp (``received_at``)
    outcome: str


async def collect(kafka: KafkaSettings, start: Mapping[TopicPartition, int], prefix: str, expected: int,
                  *, idle_s: float = 3.0, timeout: float = 120.0,
                  seen_ends: dict[TopicPartition, int] | None = None) -> list[Terminal]:
    """Terminal records (accepted / failed / dlq) whose client_message_id starts with ``prefix``,
    read from ``start``; stops at ``expected`` distinct ids or after ``idle_s`` without records.
    ``seen_ends`` is updated with the next offset after the last record read per partition."""
    roles = {topics.spec(r).name: r for r in ("accepted", "failed", "dlq")}
    pfx = prefix.encode()
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level=committed_isolation(kafka),
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    found: dict[str, Terminal] = {}
    try:
        tps = list(start)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp])
        deadline = time.monotonic() + timeout
        idle_since = time.monotonic()
        while len(found) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=20000)
            if not batch:
                if time.monotonic() - idle_since > idle_s:
                    break
                continue
            idle_since = time.monotonic()
            for tp, recs in batch.items():
                role = roles.get(tp.topic, "accepted")
                for r in recs:
                    if seen_ends is not None and r.offset + 1 > seen_ends.get(tp, 0):
                        seen_ends[tp] = r.offset + 1
                    value = r.value or b""
                    if pfx not in value:
                        continue
                    try:
                        data = orjson.loads(value)
                    except orjson.JSONDecodeError:
                        continue
                    cid = data.get("client_message_id") if isinstance(data, dict) else None
                    if not isinstance(cid, str) or not cid.startswith(prefix) or cid in found:
                        continue
                    received = data.get("received_at")
                    outcome = "dead-lettered" if role == "dlq" else str(data.get("outcome", role))
                    found[cid] = Terminal(cid, r.timestamp, _parse_iso_ms(received) if received else None, outcome)
    finally:
        await consumer.stop()
    return list(found.values())


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def throughput(terminals: list[Terminal]) -> tuple[float | None, float]:
    """records/s from the first to the last result timestamp; (rate, window seconds)."""
    if len(terminals) < 2:
        return None, 0.0
    ts = [t.timestamp_ms for t in terminals]
    window = (max(ts) - min(ts)) / 1000
    return ((len(ts) - 1) / window if window > 0 else None), window


# ------------------------------------------------------------------------------------------------
# Processes


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in kB (empty when it is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_seconds(pid: int) -> float | None:
    """Seconds a process's threads have been runnable but waiting for a CPU
    (``/proc/<pid>/task/*/schedstat``): on a shared machine, the CPU it wanted and did not get."""
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):   # a thread may end meanwhile
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[1]) / 1e9
    except OSError:
        return None
    return total


class _Sampler:
    """Calls ``sample()`` every ``every_s`` in the background between ``start()`` and ``stop()``."""

    every_s: float
    _task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every_s)

    def start(self) -> Self:
        self._task = asyncio.create_task(self._run())
        return self

    async def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class CpuMeter(_Sampler):
    """Samples the CPU time (and run-queue wait) of named processes every ``every_s`` in the
    background, so the CPU used over any window (e.g. first to last result record) can be read
    afterwards."""

    def __init__(self, pids: Mapping[str, int | None], every_s: float = 0.2) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.every_s = every_s
        # (epoch seconds, name -> CPU s, name -> s waited for a CPU)
        self.samples: list[tuple[float, dict[str, float], dict[str, float]]] = []

    def sample(self) -> None:
        now = time.time()
        cpu = {k: c for k, pid in self.pids.items() if (c := cpu_seconds(pid)) is not None}
        wait = {k: w for k, pid in self.pids.items() if (w := runqueue_seconds(pid)) is not None}
        self.samples.append((now, cpu, wait))

    async def stop(self) -> None:
        await self._cancel()
        self.sample()

    def over(self, t0: float | None = None, t1: float | None = None, *,
             waiting: bool = False) -> tuple[dict[str, float], float]:
        """(CPU % of one core per process, seconds) between the samples bracketing [t0, t1]
        (epoch seconds; default: everything sampled). ``waiting``: instead of the CPU used, the
        % of the window each process was runnable but waiting for a CPU."""
        if len(self.samples) < 2:
            return {}, 0.0
        first = self.samples[0] if t0 is None else max((s for s in self.samples if s[0] <= t0),
                                                       key=lambda s: s[0], default=self.samples[0])
        last = self.samples[-1] if t1 is None else min((s for s in self.samples if s[0] >= t1),
                                                       key=lambda s: s[0], default=self.samples[-1])
        span = last[0] - first[0]
        if span <= 0:
            return {}, 0.0
        i = 2 if waiting else 1
        return ({k: round(100 * (last[i][k] - first[i][k]) / span, 1) for k in last[i] if k in first[i]},
                span)


class RssSampler(_Sampler):
    """Samples a process's VmRSS every ``every_s`` in the background; keeps its VmHWM."""

    def __init__(self, pid: int, every_s: float = 1.0) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []   # (seconds since start, MB)
        self.hwm_mb = 0.0
        self._t0 = time.monotonic()

    def sample(self) -> None:
        st = proc_status(self.pid)
        if st:
            self.samples.append((round(time.monotonic() - self._t0, 1), round(st.get("VmRSS", 0) / 1024, 1)))
            self.hwm_mb = max(self.hwm_mb, st.get("VmHWM", 0) / 1024)

    async def stop(self) -> None:
        self.sample()
        await self._cancel()

    def flat(self, tolerance: float = 0.05) -> bool | None:
        """Whether RSS stops growing: the second half's trend, extended over the whole run, adds
        less than ``tolerance`` of the peak (shrinking counts as flat)."""
        slope = self.second_half_slope()
        if slope is None or not self.samples:
            return None
        minutes = self.samples[-1][0] / 60
        return slope * minutes < tolerance * max(v for _, v in self.samples)

    def second_half_slope(self) -> float | None:
        """Least-squares slope of RSS over the second half of the samples, MB per minute."""
        half = self.samples[len(self.samples) // 2:]
        if len(half) < 3:
            return None
        n = len(half)
        mx = sum(t for t, _ in half) / n
        my = sum(v for _, v in half) / n
        den = sum((t - mx) ** 2 for t, _ in half)
        return round(sum((t - mx) * (v - my) for t, v in half) / den * 60, 2) if den else None


async def start_worker(stack: LocalStack, kafka: KafkaSettings, routes: Mapping[str, Mapping[str, str]],
                       env: Mapping[str, str], args: tuple[str, ...] = ()) -> Process:
    """A worker process with explicit routes, settings and command-line arguments (``--role``)."""
    port = free_port()
    full_env = {**worker_env(kafka, stack.sim_urls, port, routes, default_route=next(iter(routes))), **env}
    proc, log = await stack.spawn(f"worker-{len(stack.workers)}", "worker", *args, env=full_env)
    w = Process(f"worker {len(stack.workers)}", proc, f"http://127.0.0.1:{port}", log)
    stack.workers.append(w)
    await wait_http(w.url + "/healthz", timeout=60, proc=proc)
    return w


async def wait_ready(w: Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if not w.alive:
                raise RuntimeError(f"{w.name} exited with {w.proc.returncode}: {_tail(w)}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(w.url + "/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{w.name} not ready within {timeout:.0f}s: {_tail(w)}")


EMBEDDED = "embedded Tansu"


def broker_label(o: Options) -> str:
    """Which broker gave a row's figures (the README's tables say it)."""
    if o.bootstrap_servers:
        return o.bootstrap_servers
    if o.cluster is not None:
        return f"Apache Kafka {KAFKA_VERSION} ({o.cluster.nodes} local broker{'s' if o.cluster.nodes > 1 else ''})"
    return f"Apache Kafka {KAFKA_VERSION} (1 local broker)" if o.broker == "kafka" else EMBEDDED


@contextlib.asynccontextmanager
async def local_stack(bootstrap_servers: str | None, broker: str = "tansu", cluster: KafkaCluster | None = None
                      ) -> AsyncIterator[tuple[LocalStack, KafkaSettings]]:
    """A fresh stack: the embedded broker, a local Apache Kafka broker (``broker="kafka"``, Java 17
    + Maven), the running local ``cluster`` (left running) or the given cluster, and room for
    simulators / workers."""
    stack = LocalStack(broker=cluster, owns_broker=cluster is None)
    try:
        if bootstrap_servers is None:
            if stack.broker is None and broker == "kafka":
                stack.broker = await asyncio.to_thread(KafkaCluster(directory=stack.logdir / "kafka").start)
            await stack.start_broker()
            kafka = stack.kafka
        else:
            kafka = _external_kafka(bootstrap_servers)
        yield stack, kafka
    finally:
        await stack.stop()


def _external_kafka(bootstrap_servers: str) -> KafkaSettings:
    """Kafka settings of a given cluster: SMS_CONNECTOR_KAFKA__* from the environment (security),
    with these bootstrap servers. The workers inherit the same environment."""
    from connector.config import ConfigError, load

    try:
        base = load().kafka
    except ConfigError:
        base = KafkaSettings()
    return dataclasses.replace(base, bootstrap_servers=bootstrap_servers)


# ------------------------------------------------------------------------------------------------
# Profiling the worker (py-spy, when installed)


def _py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


async def start_profiler(pid: int, path: str, rate: int = 250) -> asyncio.subprocess.Process | None:
    """``py-spy record`` on the worker (collapsed stacks to ``path``) until it exits or is stopped."""
    exe = _py_spy()
    if exe is None:
        return None
    with open(path + ".log", "ab") as log:
        return await asyncio.create_subprocess_exec(
            exe, "record", "-p", str(pid), "-o", path, "--format", "raw", "--rate", str(rate), "--nonblocking",
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, **child_options())


async def stop_profiler(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)     # py-spy writes its output on SIGINT
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)``."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def summarize_profile(path: str, top: int = 12) -> dict[str, Any]:
    """Top functions of a py-spy collapsed-stack file: self and inclusive share of samples (%)."""
    self_counts: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        with open(path) as fh:
            for line in fh:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                n = int(count)
                frames = [_frame_name(f) for f in stack.split(";") if f]
                if not frames:
                    continue
                total += n
                self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
                for f in set(frames):
                    incl[f] = incl.get(f, 0) + n

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    by_package: dict[str, int] = {}
    for frame, n in self_counts.items():
        by_package[_package(frame)] = by_package.get(_package(frame), 0) + n
    incl = {k: v for k, v in incl.items() if not _ROOT_FRAMES.search(k)}
    if not total:
        return {}
    return {"samples": total, "self_pct": share(self_counts), "inclusive_pct": share(incl),
            "self_by_package_pct": share(by_package)}


# Frames every sample of the worker's main thread goes through: not informative.
_ROOT_FRAMES = re.compile(r"\((<frozen runpy>|click/|connector/cli\.py|uvloop/__init__\.py|asyncio/runners\.py)")


def _package(frame: str) -> str:
    """``func (aiohttp/client.py)`` -> ``aiohttp``; generated code (fastjsonschema validators,
    dataclass __init__) -> ``<generated>``."""
    m = re.search(r"\(([^)]*)\)$", frame)
    path = m.group(1) if m else ""
    if path.startswith("<string>"):
        return "<generated>"
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


# ------------------------------------------------------------------------------------------------
# Raw ceiling (child process)


async def ceiling_child(url: str, requests_n: int, concurrency: int, batch: int, api_key: str) -> dict[str, Any]:
    """aiohttp straight to the SMPP simulator: ``requests_n`` messages in requests of ``batch``,
    ``concurrency`` in flight; bodies built with the connector's own adapter beforehand."""
    from connector.config import Secret
    from connector.providers.smpp_rest import SmppRest, SmppRestConfig
    from connector.records import OutboundSms, Recipient

    provider = SmppRest(SmppRestConfig(base_url=url, api_key=Secret(api_key)), route="ceiling")

    def build(start: int, count: int, tag: str) -> list[Any]:
        reqs = []
        for b in range(start, start + count, batch):
            prepared = [provider.prepare(OutboundSms(client_message_id=f"{tag}-{i}", recipient=Recipient(phone=phone(i)),
                                                     text=f"Your code is {i % 1_000_000:06d}"))
                        for i in range(b, min(b + batch, start + count))]
            reqs.append((provider.auth.apply(provider.build_send(prepared)), len(prepared)))
        return reqs

    tag = f"ceil{os.getpid()}"
    warm = build(0, min(requests_n, max(concurrency * batch * 2, 200)), tag + "w")
    main = build(0, requests_n, tag)
    errors = 0
    accepted = 0

    async def drive(session: aiohttp.ClientSession, reqs: list[Any]) -> None:
        it = iter(reqs)

        async def one() -> None:
            nonlocal errors, accepted
            for req, _ in it:
                try:
                    async with session.post(req.url, data=req.body, headers=req.headers) as r:
                        body = await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                    accepted += sum(1 for m in orjson.loads(body)["messages"] if m.get("accepted"))
                except (aiohttp.ClientError, OSError, ValueError, KeyError):
                    errors += 1

        await asyncio.gather(*(one() for _ in range(min(concurrency, len(reqs)))))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await drive(session, warm)
        errors = accepted = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        await drive(session, main)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"messages": requests_n, "requests": len(main), "errors": errors, "accepted": accepted,
            "elapsed_s": round(elapsed, 3), "messages_per_s": round(requests_n / elapsed, 1),
            "requests_per_s": round(len(main) / elapsed, 1), "cpu_us_per_request": round(cpu / len(main) * 1e6, 1),
            "cpu_us_per_message": round(cpu / requests_n * 1e6, 1)}


async def measure_ceiling(url: str, n: int, concurrency: int, batch: int, timeout: float = 300.0) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connector.devtools.bench", "--ceiling", url, "--requests", str(n),
        "--concurrency", str(concurrency), "--batch", str(batch),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        **child_options())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"raw ceiling did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"raw ceiling failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# Typical baseline (faust subprocess)


async def measure_baseline(stack: LocalStack, kafka: KafkaSettings, sim_url: str, n: int, tag: str,
                           say: _Progress, written: dict[TopicPartition, int]) -> dict[str, Any]:
    """Run ``connector.devtools.baseline`` on ``n`` fresh records; records/s timed like the worker's."""
    import importlib.util

    missing = [m for m in ("faust", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        return {"baseline_per_s": None, "baseline_note": f"baseline skipped: {', '.join(missing)} not installed "
                                                         f"(the bench extra: pip install 'sms-connector[bench]', "
                                                         f"or -e '.[bench]' in a checkout)"}
    topic_in = topics.spec("outbound").name
    group = f"sms-bench-{tag}"
    await position_group(kafka, group, topic_in, written)
    results_start = await end_offsets(kafka, [topics.spec(r).name for r in ("accepted", "failed", "dlq")])
    last = await produce_tracked(kafka, make_records(tag, n, keys=min(n, 2000)), topic_in)
    _track(written, topic_in, last)
    log = stack.logdir / f"{tag}.log"
    say(f"baseline: faust agent (concurrency 50, httpx) on {n:,} records")
    with open(log, "ab") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connector.devtools.baseline", "--bootstrap", kafka.bootstrap_servers, "--url", sim_url,
            "--records", str(n), "--group", group, "--web-port", str(free_port()),
            stdout=asyncio.subprocess.PIPE, stderr=fh, stdin=asyncio.subprocess.DEVNULL, **child_options())
    timeout = 120 + n / 50
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise RuntimeError(f"baseline did not finish {n} records within {timeout:.0f}s (log {log})") from None
    summary = next((json.loads(m) for m in re.findall(r"\{[^{}]*\}", out.decode(errors="replace"))), {})
    terminals = await collect(kafka, results_start, tag + "-", n)
    rate, window = throughput(terminals)
    return {"baseline_per_s": rate, "baseline_records": len(terminals), "baseline_window_s": round(window, 2),
            "baseline_exit": proc.returncode, "baseline_self_reported_s": summary.get("elapsed_s")}


def _upto(start: Mapping[TopicPartition, int], written: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Per partition of ``start``: the offset after the last record written (or ``start``)."""
    return {tp: max(off, written.get(tp, 0)) for tp, off in start.items()}


def _track(written: dict[TopicPartition, int], topic: str, last: Mapping[int, int]) -> None:
    for p, off in last.items():
        tp = TopicPartition(topic, p)
        written[tp] = max(written.get(tp, 0), off + 1)


# ------------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Options:
    records: int
    bootstrap_servers: str | None
    broker: str = "tansu"              # without bootstrap_servers: "tansu" (embedded) or "kafka" (local Apache Kafka)
    baseline_records: int = 2000
    soak_records: int = 1_000_000
    concurrency: int | None = None
    keys: int = 2000
    latency_load: float = 0.5
    latency_seconds: float = 5.0
    run_id: str = ""
    profile_dir: str | None = None
    tracing_url: str | None = None       # the worker traces, exported to this OTLP sink
    tracing_ratio: float = 1.0
    peer: str | None = None
    exactly_once: bool | None = None     # the worker's kafka.exactly_once (None: its default)
    compare_exactly_once: bool = False   # each dispatch scenario both ways (_compare_exactly_once)
    cluster: KafkaCluster | None = None  # a running local Apache Kafka every scenario shares (not stopped)


async def dispatch_scenario(sc: Scenario, o: Options, say: _Progress,
                            baselines: dict[float, dict[str, Any]]) -> dict[str, Any]:
    soak = sc.name == "soak"
    n = o.soak_records if soak else o.records
    concurrency = o.concurrency or sc.concurrency
    topic_in = topics.spec("outbound").name
    result_topics = [topics.spec(r).name for r in ("accepted", "failed", "dlq")]
    row: dict[str, Any] = {"scenario": sc.name, "records": n, "broker": broker_label(o),
                           "provider_latency_ms": sc.latency_ms,
                           "batch_max": sc.batch_max, "concurrency": concurrency, "max_in_flight": sc.max_in_flight,
                           "keys": o.keys, "target": sc.target}
    async with local_stack(o.bootstrap_servers, o.broker, o.cluster) as (stack, kafka):
        opts = ("--latency-ms", f"{sc.latency_ms:g}") if sc.latency_ms else ()
        sim_url = await stack.start_simulator(SMPP, *opts)
        written: dict[TopicPartition, int] = {}

        # 1. the raw ceiling, on the same simulator
        ceiling_n = min(n, max(o.records, 20_000))
        say(f"{sc.name}: raw ceiling (aiohttp, {concurrency} in flight, {sc.batch_max}/request, {ceiling_n:,} messages)")
        ceiling = await measure_ceiling(sim_url + SIMULATORS[SMPP].base_path, ceiling_n, concurrency, sc.batch_max)
        row["ceiling_per_s"] = ceiling["messages_per_s"]
        row["ceiling_errors"] = ceiling["errors"]
        row["ceiling_cpu_us_per_record"] = ceiling["cpu_us_per_message"]

        # 2. the typical baseline, once per provider latency
        if o.baseline_records > 0:
            if sc.latency_ms not in baselines:
                b = await measure_baseline(stack, kafka, sim_url, o.baseline_records,
                                           f"{o.run_id}-bl{sc.latency_ms:g}", say, written)
                baselines[sc.latency_ms] = {**b, "baseline_from": sc.name}
            row.update(baselines[sc.latency_ms])
        if o.peer:
            from connector.devtools.peer import peer_phase

            row.update(await peer_phase(stack, kafka, sim_url, sc, o, concurrency, say, written))

        # 3. the worker: throughput on a pre-produced backlog (soak: fed while it runs)
        group = f"sms-bench-{o.run_id}-{sc.name}"
        start = await position_group(kafka, group, topic_in, written)
        results_start = await end_offsets(kafka, result_topics)
        route = {"provider": SMPP, "channel": "sms", "batch_max": str(sc.batch_max), "concurrency": str(concurrency)}
        env = {"SMS_CONNECTOR_KAFKA__GROUP_ID": group,
               "SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": str(sc.max_in_flight),
               "SMS_CONNECTOR_HTTP__PROVIDER_MAX_CONNECTIONS": str(max(concurrency, 1)),
               "SMS_CONNECTOR_LOG__LEVEL": "WARNING"}
        if o.exactly_once is not None:
            env["SMS_CONNECTOR_KAFKA__EXACTLY_ONCE"] = str(o.exactly_once).lower()
            row["scenario"] = f"{sc.name}/{EOS_LABELS[o.exactly_once]}"
        if o.tracing_url:
            env |= tracing_env(o.tracing_url, o.tracing_ratio)
            row["scenario"] = f"{sc.name}+tracing"
            row["tracing_sample_ratio"] = o.tracing_ratio
        tag = f"{o.run_id}-{sc.name}"
        timeout = 120 + n / 300
        if not soak:
            say(f"{sc.name}: producing {n:,} records over {o.keys:,} recipients")
            _track(written, topic_in, await produce_tracked(kafka, make_records(tag + "-t", n, o.keys), topic_in))
            sim0 = await stack.sim_stats(SMPP)
            # The worker starts on the backlog as soon as it has joined: measure from its start.
            worker = await start_worker(stack, kafka, {"bench": route}, env)
            cpu = CpuMeter(_pids(stack, worker)).start()
            spy = await start_profiler(worker.proc.pid, _profile_path(o, sc.name)) if o.profile_dir else None
            rss = RssSampler(worker.proc.pid).start()
            await wait_ready(worker)
            async with GroupWatch(kafka, group) as watch:
                await watch.wait(start, _upto(start, written), label=f"{sc.name}: worker", say=say,
                                 timeout=timeout, proc=worker)
            await cpu.stop()
            sim1 = await stack.sim_stats(SMPP)
            reqs = sim1["requests"] - sim0["requests"]
            row["provider_requests"] = reqs
            row["messages_per_request"] = round((sim1["messages"] - sim0["messages"]) / reqs, 1) if reqs else None
            if spy is not None:
                await stop_profiler(spy)
                row["profile"] = {"file": _profile_path(o, sc.name), **summarize_profile(_profile_path(o, sc.name))}
            seen: dict[TopicPartition, int] = {}
            terminals = await collect(kafka, results_start, tag + "-t-", n, seen_ends=seen)
            rate, window = throughput(terminals)
            row["window_s"] = round(window, 2)
            # CPU over the throughput window: first to last result record (0.2 s resolution).
            if terminals:
                ts = [t.timestamp_ms / 1000 for t in terminals]
                row["cpu_pct"] = cpu.over(min(ts), max(ts))[0]
                row["cpu_wait_pct"] = cpu.over(min(ts), max(ts), waiting=True)[0]
            _cpu_per_record(row, rate)
        else:
            worker = await start_worker(stack, kafka, {"bench": route}, env)
            rss = RssSampler(worker.proc.pid, every_s=2.0).start()
            await wait_ready(worker)
            cpu = CpuMeter(_pids(stack, worker), every_s=1.0).start()
            rate, terminals, seen = await _soak_feed(kafka, group, start, written, tag + "-t", n, o, say, worker,
                                                     timeout)
            await cpu.stop()
            row["cpu_pct"] = cpu.over()[0]
            row["cpu_wait_pct"] = cpu.over(waiting=True)[0]
            _cpu_per_record(row, rate)
            rss.sample()    # memory over the feed only (the latency phase below is idle time)
            row["rss_second_half_slope_mb_per_min"] = rss.second_half_slope()
            row["rss_flat"] = rss.flat()
            row["rss_samples"] = list(rss.samples)
        row["outcomes"] = _outcomes(terminals) if not soak else await worker_outcomes(worker)
        row["records_per_s"] = rate
        say(f"{sc.name}: {len(terminals):,} terminal records, {_fmt(rate)} records/s")

        # 4. latency at a steady offered rate (the worker is joined and idle)
        if rate:
            lrate = max(50.0, rate * o.latency_load)
            m = int(min(n, max(200, lrate * o.latency_seconds)))
            say(f"{sc.name}: latency at {lrate:,.0f} records/s offered ({m:,} records)")
            before = _upto(start, written)
            lstart = {tp: max(off, seen.get(tp, 0)) for tp, off in (await end_offsets(kafka, result_topics)).items()}
            _track(written, topic_in,
                   await produce_tracked(kafka, make_records(tag + "-l", m, o.keys), topic_in, rate=lrate))
            async with GroupWatch(kafka, group) as watch:
                await watch.wait(before, _upto(start, written), label=f"{sc.name}: latency", say=say,
                                 timeout=120 + m / 100, proc=worker)
            lat = sorted(t.timestamp_ms - t.received_ms for t in
                         await collect(kafka, lstart, tag + "-l-", m) if t.received_ms is not None)
            row.update(latency_offered_per_s=round(lrate), latency_records=len(lat),
                       p50_ms=percentile(lat, 0.50), p99_ms=percentile(lat, 0.99))
        await rss.stop()
        row["peak_rss_mb"] = round(rss.hwm_mb, 1)
        row["worker_log"] = str(worker.log)
    return _finish(row)


async def _soak_feed(kafka: KafkaSettings, group: str, start: dict[TopicPartition, int],
                     written: dict[TopicPartition, int], tag: str, n: int, o: Options, say: _Progress,
                     worker: Process, timeout: float) -> tuple[float | None, list[Terminal], dict[TopicPartition, int]]:
    """Produce n records while the worker runs, keeping the backlog under SOAK_MAX_BACKLOG."""
    topic_in = topics.spec("outbound").name
    chunk = 10_000
    produced = 0
    t_first: tuple[float, int] | None = None
    deadline = time.monotonic() + timeout
    last_say = 0.0
    async with GroupWatch(kafka, group) as watch:
        while True:
            committed = await watch.committed(start)
            done = sum(max(committed[tp] - start[tp], 0) for tp in start)
            now = time.monotonic()
            if done > 0 and t_first is None:
                t_first = (now, done)
            if done >= n:
                break
            if not worker.alive:
                raise RuntimeError(f"{worker.name} exited with {worker.proc.returncode}: {_tail(worker)}")
            if now > deadline:
                raise RuntimeError(f"soak: only {done:,}/{n:,} done after {timeout:.0f}s")
            if produced < n and produced - done < SOAK_MAX_BACKLOG:
                k = min(chunk, n - produced)
                _track(written, topic_in,
                       await produce_tracked(kafka, make_records(tag, k, o.keys, start=produced), topic_in))
                produced += k
                continue
            if now - last_say >= 5:
                rate = (done - t_first[1]) / (now - t_first[0]) if t_first and now > t_first[0] else 0.0
                say(f"soak: {done:,}/{n:,} done ({rate:,.0f}/s), worker RSS {proc_status(worker.proc.pid).get('VmRSS', 0) / 1024:.0f} MB")
                last_say = now
            await asyncio.sleep(0.5)
    t_end = time.monotonic()
    rate = (n - t_first[1]) / (t_end - t_first[0]) if t_first and t_end > t_first[0] else None
    # Reading a million results back would take longer than the soak itself: outcomes come from
    # the worker's metrics instead, latency from the steady-rate phase that follows.
    return rate, [], {}


def _cpu_per_record(row: dict[str, Any], rate: float | None) -> None:
    """The worker's CPU per record: its share of a core over the window / records per second."""
    worker = (row.get("cpu_pct") or {}).get("worker")
    if worker and rate:
        row["worker_cpu_us_per_record"] = round(worker / 100 / rate * 1e6, 1)
        # the same figure as the table shows it: worker CPU seconds per 1,000 messages
        row["worker_cpu_s_per_1k"] = round(worker / 100 / rate * 1000, 3)


def broker_pid(stack: LocalStack) -> int | None:
    """The local broker's process (Tansu, or the first node of an Apache Kafka cluster)."""
    nodes = stack.broker.members if isinstance(stack.broker, KafkaCluster) else [stack.broker] if stack.broker else []
    return next((n.process.pid for n in nodes if n.process is not None), None)


def _pids(stack: LocalStack, worker: Process) -> dict[str, int | None]:
    sim = stack.simulators.get(SMPP)
    return {"worker": worker.proc.pid, "simulator": sim.proc.pid if sim else None, "broker": broker_pid(stack),
            "bench": os.getpid()}


def _profile_path(o: Options, scenario: str) -> str:
    assert o.profile_dir is not None
    os.makedirs(o.profile_dir, exist_ok=True)
    return os.path.join(o.profile_dir, f"{o.run_id}-{scenario}.collapsed.txt")


async def worker_outcomes(w: Process) -> dict[str, int]:
    """Terminal outcomes counted by the worker itself (its /metrics), for runs too long to read back."""
    names = {"sms_outbound_accepted_total": "accepted", "sms_outbound_failed_total": "failed",
             "sms_outbound_dead_lettered_total": "dead-lettered"}
    out: dict[str, int] = {}
    with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
        async with aiohttp.ClientSession() as s, s.get(w.url + "/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in names:
                out[names[name]] = out.get(names[name], 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def _outcomes(terminals: list[Terminal]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in terminals:
        out[t.outcome] = out.get(t.outcome, 0) + 1
    return out


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    rate, ceiling, base = row.get("records_per_s"), row.get("ceiling_per_s"), row.get("baseline_per_s")
    row["records_per_s"] = round(rate, 1) if rate else rate
    row["ratio_to_ceiling"] = round(rate / ceiling, 3) if rate and ceiling else None
    row["baseline_per_s"] = round(base, 1) if base else base
    row["speedup_vs_baseline"] = round(rate / base, 2) if rate and base else None
    for k in ("p50_ms", "p99_ms"):
        if row.get(k) is not None:
            row[k] = round(float(row[k]), 1)
    for k in FIELDS:
        row.setdefault(k, None)
    row["target_met"] = _target_met(row)
    return {**{k: row[k] for k in FIELDS}, **{k: v for k, v in row.items() if k not in FIELDS}}


def _target_met(row: dict[str, Any]) -> bool | None:
    target = row.get("target")
    if not target or not row.get("records_per_s"):
        return None
    names = {k: (row.get(k) if row.get(k) is not None else float("nan")) for k in
             ("records_per_s", "ratio_to_ceiling", "speedup_vs_baseline", "p99_ms", "peak_rss_mb")}
    names["rss_flat"] = bool(row.get("rss_flat"))
    try:
        return bool(eval(target, {"__builtins__": {}}, names))  # noqa: S307 - our own constant expressions
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------------------
# Callbacks


CALLBACK_BODY = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
    '<CallbackRequest xmlns="http://nphase.com/unifiedwebservice/v2"><Username>{user}</Username>'
    '<Password>{password}</Password><RequestId>{request_id}</RequestId><Device><Kind>MDN</Kind>'
    '<Identifier>{device}</Identifier></Device><Data><Data><CarrierService xsi:nil="true"/>'
    '<ExternalProvisioningChange xsi:nil="true"/><PromoChange xsi:nil="true"/><SMSDelivery>'
    '<Confirmation>Delivered</Confirmation><Fault xsi:nil="true"/></SMSDelivery>'
    '<PRLInformation xsi:nil="true"/><GoToState xsi:nil="true"/><Fault xsi:nil="true"/>'
    '<Comment xsi:nil="true"/><Summary xsi:nil="true"/><Status xsi:nil="true"/>'
    '<CallbackCount>1</CallbackCount><MaxCallbackThreshold>4</MaxCallbackThreshold></Data></Data>'
    '</CallbackRequest></s:Body></s:Envelope>')


def callback_body(tag: str, i: int) -> bytes:
    """A ThingSpace SMS delivery confirmation callback (seed 000) with the bench's credentials."""
    return CALLBACK_BODY.format(user=CALLBACK_USERNAME, password=CALLBACK_PASSWORD,
                                request_id=f"{tag}-{i:08x}-0000-0000-000000000000",
                                device=f"{7020000000 + i % 10_000_000}").encode()


def callback_settings_env() -> dict[str, str]:
    """Environment giving the callbacks role the bench's ThingSpace callback credentials, found by
    name among the declared settings (``callbacks.thingspace_username`` / ``..._password``)."""
    from connector.config import describe

    env: dict[str, str] = {}
    for d in describe():
        path = d.path.lower()
        if "callback" in path and "thingspace" in path and "<name>" not in path:
            if path.endswith("username"):
                env[d.env] = CALLBACK_USERNAME
            elif path.endswith("password"):
                env[d.env] = CALLBACK_PASSWORD
    return env


async def callbacks_scenario(sc: Scenario, o: Options, say: _Progress) -> dict[str, Any]:
    n = o.records
    concurrency = o.concurrency or sc.concurrency
    row: dict[str, Any] = {"scenario": sc.name, "records": n, "broker": broker_label(o),
                           "concurrency": concurrency, "target": sc.target}
    async with local_stack(o.bootstrap_servers, o.broker, o.cluster) as (stack, kafka):
        routes = {"thingspace": {"provider": "thingspace"}}
        env = {"SMS_CONNECTOR_KAFKA__GROUP_ID": f"sms-bench-{o.run_id}-callbacks", "SMS_CONNECTOR_LOG__LEVEL": "WARNING",
               **callback_settings_env()}
        try:
            worker = await start_worker(stack, kafka, routes, env, ("--role", "callbacks"))
        except RuntimeError as exc:
            return _unavailable(row, f"callbacks worker did not start: {exc}")
        rss = RssSampler(worker.proc.pid).start()
        with contextlib.suppress(RuntimeError):
            await wait_ready(worker, timeout=30)   # group joins done; the probe below decides
        url = worker.url + CALLBACK_PATH
        tag = f"{o.run_id}cb"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:
            headers = {"Content-Type": "text/xml; charset=utf-8"}
            status, text = 0, ""
            for _ in range(100):    # the role may need a moment to connect its producer
                try:
                    async with session.post(url, data=callback_body(tag + "probe", 0), headers=headers) as r:
                        status, text = r.status, (await r.text())[:200]
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    status, text = 0, f"{type(exc).__name__}: {exc}"
                if status not in (0, 502, 503) or not worker.alive:
                    break
                await asyncio.sleep(0.2)
            if status in (404, 405):
                await rss.stop()
                return _unavailable(row, f"not available: the worker answers {status} on POST {CALLBACK_PATH}")
            if not 200 <= status < 300:
                await rss.stop()
                return _unavailable(row, f"probe callback answered {status}: {text!r} (credentials env: "
                                         f"{sorted(callback_settings_env()) or 'no callback credential settings found'})")
            say(f"callbacks: posting {n:,} delivery callbacks, {concurrency} in flight")
            bodies = [callback_body(tag, i) for i in range(n)]
            lat: list[float] = []
            codes: dict[int, int] = {}
            it = iter(bodies)

            async def client() -> None:
                for body in it:
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url, data=body, headers=headers) as r:
                            await r.read()
                            codes[r.status] = codes.get(r.status, 0) + 1
                            if 200 <= r.status < 300:
                                lat.append((time.perf_counter() - t0) * 1000)
                    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                        codes[0] = codes.get(0, 0) + 1

            async def progress() -> None:
                while True:
                    await asyncio.sleep(2)
                    say(f"callbacks: {len(lat):,}/{n:,} acknowledged")

            ticker = asyncio.create_task(progress())
            cpu = CpuMeter(_pids(stack, worker)).start()
            spy = await start_profiler(worker.proc.pid, _profile_path(o, sc.name)) if o.profile_dir else None
            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t0
            ticker.cancel()
            await cpu.stop()
            row["cpu_pct"] = cpu.over()[0]
            row["cpu_wait_pct"] = cpu.over(waiting=True)[0]
            _cpu_per_record(row, len(lat) / elapsed if elapsed > 0 else None)
            if spy is not None:
                await stop_profiler(spy)
                row["profile"] = {"file": _profile_path(o, sc.name), **summarize_profile(_profile_path(o, sc.name))}
        await rss.stop()
        lat.sort()
        row.update(records_per_s=len(lat) / elapsed if elapsed > 0 else None, p50_ms=percentile(lat, 0.5),
                   p99_ms=percentile(lat, 0.99), peak_rss_mb=round(rss.hwm_mb, 1), status_codes=codes,
                   available=True, worker_log=str(worker.log),
                   note="ceiling/baseline: not defined for callback ingest")
    return _finish(row)


def _unavailable(row: dict[str, Any], note: str) -> dict[str, Any]:
    row.update(available=False, note=note, records=0)
    out = _finish(row)
    out["target_met"] = None
    return out


# ------------------------------------------------------------------------------------------------
# Entry point


async def run_bench(scenarios: list[str], records: int, *, json_out: bool, out: TextIO = sys.stdout,
                    bootstrap_servers: str | None = None, broker: str = "tansu", baseline_records: int = 2000,
                    soak_records: int = 1_000_000, concurrency: int | None = None, keys: int = 2000,
                    latency_load: float = 0.5, profile_dir: str | None = None, peer: str | None = None,
                    err: TextIO | None = sys.stderr, tracing: float | None = None,
                    compare_exactly_once: bool = False, cluster: KafkaCluster | None = None) -> list[dict[str, Any]]:
    """Run the scenarios; print one JSON object per scenario (``json_out``) or a table to ``out``.

    ``records`` per scenario (``soak``: ``soak_records``); ``baseline_records`` for the faust
    baseline (0: skip it); ``concurrency`` overrides every scenario's route concurrency (and the
    ceiling's); ``keys`` recipients; ``latency_load`` the offered rate of the latency phase as a
    share of the measured throughput; ``profile_dir``: profile the worker with py-spy (when
    installed) during each throughput phase, collapsed stacks there, top functions in the row;
    ``peer``: also run that real peer (``connector.devtools.peer.PEERS``) in each dispatch scenario.
    ``tracing``: the dispatch scenarios' worker traces with this sample ratio and exports to an
    OTLP/HTTP sink in this process; rows are named ``<scenario>+tracing`` and count the spans
    received. ``compare_exactly_once``: each dispatch scenario (soak aside) runs twice in a row,
    rows ``<scenario>/at-least-once`` and ``<scenario>/exactly-once`` (``kafka.exactly_once``
    off / on, each on a fresh broker of the same kind), the second with ``eos_ratio``: its
    records/s over the first's. ``cluster``: a running local Apache Kafka (the test session's) that
    every scenario uses instead of a broker of its own, its topics created where missing and the
    cluster left running (the bench reads only what it produced, like on ``bootstrap_servers``).
    Progress goes to ``err`` (None: silent)."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)} (known: {', '.join(SCENARIO_NAMES)})")
    if records < 2:
        raise ValueError("records must be at least 2")
    if broker not in ("tansu", "kafka"):
        raise ValueError(f"unknown broker {broker!r} (tansu or kafka)")
    if cluster is not None:
        if bootstrap_servers:
            raise ValueError("a running local cluster or bootstrap servers, not both")
        broker = "kafka"
    o = Options(records=records, bootstrap_servers=bootstrap_servers, broker=broker, baseline_records=baseline_records,
                soak_records=soak_records, concurrency=concurrency, keys=max(1, min(keys, records)),
                latency_load=latency_load, profile_dir=profile_dir, peer=peer,
                run_id=f"bench{int(time.time() * 1000) % 10**10}", compare_exactly_once=compare_exactly_once,
                cluster=cluster)
    say = _Progress(err)
    baselines: dict[float, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    async with contextlib.AsyncExitStack() as exits:
        sink = await exits.enter_async_context(OtlpSink()) if tracing is not None else None
        o.tracing_url = sink.url if sink else None
        o.tracing_ratio = tracing if tracing is not None else 1.0
        await _run_scenarios(scenarios, o, say, baselines, results, json_out, out, sink)
    say(f"done in {time.monotonic() - t0:.0f}s")
    if not json_out:
        print(format_table(results), file=out, flush=True)
    return results


async def _run_scenarios(scenarios: list[str], o: Options, say: _Progress, baselines: dict[float, dict[str, Any]],
                         results: list[dict[str, Any]], json_out: bool, out: TextIO, sink: OtlpSink | None) -> None:
    for name in scenarios:
        sc = SCENARIOS[name]
        say(f"=== {name} ===")
        started = time.monotonic()
        if name == "callbacks":
            row = await callbacks_scenario(sc, o, say)
        elif o.compare_exactly_once and name != "soak":
            row = await _compare_exactly_once(sc, o, say, baselines, results, json_out, out)
        else:
            row = await dispatch_scenario(sc, o, say, baselines)
        row["scenario_s"] = round(time.monotonic() - started, 1)
        if sink is not None and name != "callbacks":
            await asyncio.sleep(2)   # the worker's last export batch (it exports every second)
            row["spans_exported"] = sink.take()
        results.append(row)
        if json_out:
            print(json.dumps(row, default=str), file=out, flush=True)


EOS_LABELS = {False: "at-least-once", True: "exactly-once"}


async def _compare_exactly_once(sc: Scenario, o: Options, say: _Progress, baselines: dict[float, dict[str, Any]],
                                results: list[dict[str, Any]], json_out: bool, out: TextIO) -> dict[str, Any]:
    """``sc`` at-least-once (appended to ``results`` here), then exactly-once (returned, with
    ``eos_ratio``): what Kafka transactions cost on the same job."""
    rows = {}
    for eos in (False, True):
        say(f"{sc.name}: {EOS_LABELS[eos]}")
        rows[eos] = await dispatch_scenario(sc, dataclasses.replace(o, exactly_once=eos), say, baselines)
        if not eos:
            results.append(rows[eos])
            if json_out:
                print(json.dumps(rows[eos], default=str), file=out, flush=True)
    base, eos_rate = rows[False].get("records_per_s"), rows[True].get("records_per_s")
    ratio = round(eos_rate / base, 3) if base and eos_rate else None
    rows[True]["eos_ratio"] = ratio
    rows[True]["note"] = ((rows[True].get("note") + "; ") if rows[True].get("note") else "") + \
        f"exactly-once / at-least-once records/s: {ratio if ratio is not None else '-'}"
    return rows[True]


def tracing_env(otlp_url: str, sample_ratio: float) -> dict[str, str]:
    """A worker that traces (``sample_ratio`` of its messages) and exports to ``otlp_url``."""
    return {"SMS_CONNECTOR_TRACING__ENABLED": "true", "SMS_CONNECTOR_TRACING__OTLP_URL": otlp_url,
            "SMS_CONNECTOR_TRACING__SAMPLE_RATIO": f"{sample_ratio:g}"}


class OtlpSink:
    """An OTLP/HTTP trace endpoint on loopback that counts the spans it receives (the bench's
    stand-in for a collector: it decodes every export, as a collector would, and keeps nothing)."""

    def __init__(self) -> None:
        self.spans = 0
        self.url = ""
        self._runner: Any = None

    async def __aenter__(self) -> OtlpSink:
        from aiohttp import web

        async def traces(request: web.Request) -> web.Response:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

            export = ExportTraceServiceRequest.FromString(await request.read())
            self.spans += sum(len(ss.spans) for rs in export.resource_spans for ss in rs.scope_spans)
            return web.Response(content_type="application/x-protobuf")

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", traces)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1/traces"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    def take(self) -> int:
        n, self.spans = self.spans, 0
        return n


def _ceiling_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Raw ceiling: aiohttp straight to the SMPP REST simulator.")
    p.add_argument("--ceiling", required=True, metavar="URL", help="simulator base URL")
    p.add_argument("--requests", type=int, default=20000, help="messages to send")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch", type=int, default=1, help="messages per request")
    p.add_argument("--api-key", default=SIMULATORS[SMPP].default_credentials()["api_key"])
    a = p.parse_args(argv)
    coro = ceiling_child(a.ceiling, a.requests, a.concurrency, a.batch, a.api_key)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_ceiling_main())
