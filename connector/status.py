"""``sms-connector status``: a live terminal view of a running deployment, from its metrics and topics.

Three layers, so the arithmetic is testable without a broker or a terminal:

- **Data, pure.** ``parse_metrics(text) -> Snapshot`` reads one worker's ``/metrics`` text (the
  names in ``connector.metrics``); ``merge`` sums several workers (in flight, partitions and
  counters add up; the oldest pending record and a circuit's state take the maximum);
  ``rates(prev, cur, dt)`` turns two snapshots into per-second throughput (a counter that went
  down, a restarted worker, counts from zero). ``consumer_lag`` computes the dispatch group's lag
  on ``sms.outbound``: per partition, end offset - committed offset (the beginning offset when the
  group has committed nothing: the worker starts at ``earliest``), never below 0.
- **Kafka.** ``KafkaProbe`` asks the brokers for end and beginning offsets (ListOffsets, through a
  group-less consumer) and the group's committed offsets (``AIOKafkaAdminClient
  .list_consumer_group_offsets``). It also counts the terminal records on ``sms.outbound.accepted``
  / ``.failed`` / ``.dlq`` (end - beginning, the records retained): a cross-check of the metrics
  that covers every worker, even those whose metrics URL was not given. Nothing is committed and
  no group is joined.

  The embedded dev broker (Tansu, recognised by its cluster id ``tansu_cluster`` or because the
  dev manifest was used) answers ListOffsets with the base offset of a partition's last batch + 1,
  too low whenever a batch holds several records. There the probe seeks each partition to that
  answer - 1 and reads what follows (one batch per partition, usually), which gives the real end;
  the lag is still labelled "approx." (records produced meanwhile, and a read cut short by its time
  budget, leave it low). On Kafka the ListOffsets answer is exact.
- **View.** ``render(snapshot, rates, kafka)`` builds one rich renderable; ``run_status`` polls every
  ``interval`` seconds and shows it under ``rich.live.Live`` on a terminal, or prints one plain
  snapshot per interval otherwise (``once``: a single snapshot, rates measured over one interval).

``StatusMonitor`` holds the clients and the previous sample between polls; ``LiveStatus`` is the
hook ``dev`` uses to show the same view while its demo runs (on a terminal only).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp
import click
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from connector import contract as topics
from connector import devmanifest
from connector.config import ConfigError, KafkaSettings, load
from connector.kafka import client_options
from connector.streams.plumbing import groupless_consumer

DEFAULT_MANIFEST = devmanifest.DEFAULT_PATH
DEFAULT_INTERVAL_S = 2.0
METRICS_TIMEOUT_S = 5.0
TANSU_CLUSTER_PREFIX = "tansu"
TERMINAL_ROLES = ("accepted", "failed", "dlq")
CIRCUIT_NAMES = {0: "closed", 1: "half-open", 2: "open"}

ACCEPTED, FAILED, DEAD_LETTERED = "accepted", "failed", "dead-lettered"

# The metrics of ``connector.metrics`` this view reads (a unit test keeps the two in step).
METRICS_READ = ("sms_outbound_consumed", "sms_outbound_accepted", "sms_outbound_failed",
                "sms_outbound_dead_lettered", "sms_outbound_segments", "sms_outbound_in_flight", "sms_outbound_retry_waiting",
                "sms_outbound_oldest_pending_seconds", "sms_kafka_partitions_assigned", "sms_provider_retries",
                "sms_callbacks_received", "sms_mo_received", "sms_optout_suppressed", "sms_circuit_state",
                "sms_delivery_latency_seconds")


# ------------------------------------------------------------------------------------------------
# Data: metrics


@dataclass
class Hist:
    """A Prometheus histogram: cumulative bucket counts by upper bound, count and sum."""

    buckets: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    sum: float = 0.0

    def add(self, other: Hist) -> None:
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + n
        self.count += other.count
        self.sum += other.sum

    def quantile(self, q: float) -> float | None:
        """Estimate as Prometheus' histogram_quantile does: linear inside the bucket. None when empty;
        the highest finite bound when the quantile falls in the +Inf bucket."""
        bounds = sorted(self.buckets)
        if not bounds or self.count <= 0:
            return None
        rank = q * self.buckets[bounds[-1]]
        prev_le, prev_n = 0.0, 0.0
        for le in bounds:
            n = self.buckets[le]
            if n >= rank:
                if le == float("inf"):
                    return prev_le
                if n == prev_n:
                    return le
                return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n)
            prev_le, prev_n = le, n
        return prev_le

    def upper_bound(self, q: float) -> float | None:
        """The bucket bound below which at least ``q`` of the observations lie (exact, unlike the
        interpolated ``quantile`` with coarse buckets). None when empty; inf past the last bound."""
        bounds = sorted(self.buckets)
        if not bounds or self.count <= 0:
            return None
        rank = q * self.buckets[bounds[-1]]
        return next((le for le in bounds if self.buckets[le] >= rank), bounds[-1])


@dataclass
class Snapshot:
    """What one or several workers' ``/metrics`` say, summed over routes where the view does not need them."""

    consumed: float = 0.0
    accepted: dict[str, float] = field(default_factory=dict)                  # provider
    failed: dict[tuple[str, str], float] = field(default_factory=dict)        # (provider, reason)
    dead_lettered: dict[str, float] = field(default_factory=dict)             # reason
    segments: float = 0.0
    in_flight: float = 0.0
    retry_waiting: float = 0.0     # records held in the retry topic until due
    oldest_pending_s: float = 0.0
    partitions_assigned: float = 0.0
    retries: dict[str, float] = field(default_factory=dict)                   # provider
    callbacks: dict[tuple[str, str], float] = field(default_factory=dict)     # (provider, outcome)
    mo_received: dict[str, float] = field(default_factory=dict)               # provider
    optout_suppressed: dict[str, float] = field(default_factory=dict)         # route
    delivery_latency: dict[tuple[str, str], Hist] = field(default_factory=dict)  # (provider, state)
    circuits: dict[str, float] = field(default_factory=dict)                  # route -> 0/1/2
    workers: int = 0                     # metrics sources that answered
    errors: list[str] = field(default_factory=list)   # "URL: what went wrong", one per source that did not

    @property
    def accepted_total(self) -> float:
        return sum(self.accepted.values())

    @property
    def failed_total(self) -> float:
        return sum(self.failed.values())

    @property
    def dead_lettered_total(self) -> float:
        return sum(self.dead_lettered.values())

    @property
    def terminal_total(self) -> float:
        return self.accepted_total + self.failed_total + self.dead_lettered_total

    @property
    def callbacks_total(self) -> float:
        return sum(self.callbacks.values())

    @property
    def mo_total(self) -> float:
        return sum(self.mo_received.values())

    @property
    def optout_total(self) -> float:
        return sum(self.optout_suppressed.values())

    @property
    def retries_total(self) -> float:
        return sum(self.retries.values())

    def outcomes(self) -> dict[tuple[str, str, str], float]:
        """(outcome, provider, reason) -> count; accepted has no reason, dead-lettered no provider."""
        out: dict[tuple[str, str, str], float] = {}
        for provider, n in self.accepted.items():
            out[(ACCEPTED, provider, "")] = n
        for (provider, reason), n in self.failed.items():
            out[(FAILED, provider, reason)] = n
        for reason, n in self.dead_lettered.items():
            out[(DEAD_LETTERED, "", reason)] = n
        return out


def _add(d: dict[Any, float], key: Any, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


def parse_metrics(text: str) -> Snapshot:
    """One worker's ``/metrics`` text -> Snapshot. Unknown metrics are ignored; bad text raises ValueError."""
    snap = Snapshot(workers=1)
    hists: dict[tuple[str, str], Hist] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, lb, v = s.name, s.labels, float(s.value)
            provider = lb.get("provider", "")
            if name == "sms_outbound_consumed_total":
                snap.consumed += v
            elif name == "sms_outbound_accepted_total":
                _add(snap.accepted, provider, v)
            elif name == "sms_outbound_failed_total":
                _add(snap.failed, (provider, lb.get("reason", "")), v)
            elif name == "sms_outbound_dead_lettered_total":
                _add(snap.dead_lettered, lb.get("reason", ""), v)
            elif name == "sms_outbound_segments_total":
                snap.segments += v
            elif name == "sms_outbound_in_flight":
                snap.in_flight += v
            elif name == "sms_outbound_retry_waiting":
                snap.retry_waiting += v
            elif name == "sms_outbound_oldest_pending_seconds":
                snap.oldest_pending_s = max(snap.oldest_pending_s, v)
            elif name == "sms_kafka_partitions_assigned":
                snap.partitions_assigned += v
            elif name == "sms_provider_retries_total":
                _add(snap.retries, provider, v)
            elif name == "sms_callbacks_received_total":
                _add(snap.callbacks, (provider, lb.get("outcome", "")), v)
            elif name == "sms_mo_received_total":
                _add(snap.mo_received, provider, v)
            elif name == "sms_optout_suppressed_total":
                _add(snap.optout_suppressed, lb.get("route", ""), v)
            elif name == "sms_circuit_state":
                route = lb.get("route", "")
                snap.circuits[route] = max(snap.circuits.get(route, 0.0), v)
            elif name.startswith("sms_delivery_latency_seconds_"):
                h = hists.setdefault((provider, lb.get("state", "")), Hist())
                if name.endswith("_bucket"):
                    le = float(lb.get("le", "+Inf"))
                    h.buckets[le] = h.buckets.get(le, 0.0) + v
                elif name.endswith("_count"):
                    h.count += v
                elif name.endswith("_sum"):
                    h.sum += v
    snap.delivery_latency = hists
    return snap


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Several workers as one deployment: counters and in-flight add up, the oldest pending record
    and each route's circuit state are the maximum, errors are kept."""
    out = Snapshot()
    for s in snapshots:
        out.consumed += s.consumed
        out.segments += s.segments
        out.in_flight += s.in_flight
        out.retry_waiting += s.retry_waiting
        out.partitions_assigned += s.partitions_assigned
        out.oldest_pending_s = max(out.oldest_pending_s, s.oldest_pending_s)
        for src, dst in ((s.accepted, out.accepted), (s.failed, out.failed), (s.dead_lettered, out.dead_lettered),
                         (s.retries, out.retries), (s.callbacks, out.callbacks), (s.mo_received, out.mo_received),
                         (s.optout_suppressed, out.optout_suppressed)):
            for k, v in src.items():
                _add(dst, k, v)
        for route, state in s.circuits.items():
            out.circuits[route] = max(out.circuits.get(route, 0.0), state)
        for k, h in s.delivery_latency.items():
            out.delivery_latency.setdefault(k, Hist()).add(h)
        out.workers += s.workers
        out.errors += s.errors
    return out


@dataclass(frozen=True)
class Rates:
    """Per-second rates between two snapshots."""

    dt: float
    consumed: float
    accepted: float
    failed: float
    dead_lettered: float
    outcomes: dict[tuple[str, str, str], float]   # same keys as Snapshot.outcomes()
    callbacks: float
    mo: float

    @property
    def terminal(self) -> float:
        return self.accepted + self.failed + self.dead_lettered


def _per_s(prev: float, cur: float, dt: float) -> float:
    # A counter that went down was reset (a worker restarted): it counted ``cur`` since.
    return (cur - prev if cur >= prev else cur) / dt


def rates(prev: Snapshot, cur: Snapshot, dt: float) -> Rates:
    if dt <= 0:
        raise ValueError("dt must be positive")
    po, co = prev.outcomes(), cur.outcomes()
    return Rates(
        dt=dt,
        consumed=_per_s(prev.consumed, cur.consumed, dt),
        accepted=_per_s(prev.accepted_total, cur.accepted_total, dt),
        failed=_per_s(prev.failed_total, cur.failed_total, dt),
        dead_lettered=_per_s(prev.dead_lettered_total, cur.dead_lettered_total, dt),
        outcomes={k: _per_s(po.get(k, 0.0), v, dt) for k, v in co.items()},
        callbacks=_per_s(prev.callbacks_total, cur.callbacks_total, dt),
        mo=_per_s(prev.mo_total, cur.mo_total, dt),
    )


# ------------------------------------------------------------------------------------------------
# Data: Kafka


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    end: int
    committed: int | None      # None: the group has committed nothing here
    lag: int


@dataclass(frozen=True)
class TopicLag:
    topic: str
    group: str
    partitions: tuple[PartitionLag, ...]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def end(self) -> int:
        return sum(p.end for p in self.partitions)

    @property
    def committed(self) -> int:
        return sum(p.committed or 0 for p in self.partitions)

    @property
    def max_lag(self) -> int:
        return max((p.lag for p in self.partitions), default=0)


def consumer_lag(topic: str, group: str, ends: Mapping[int, int], committed: Mapping[int, int | None],
                 beginnings: Mapping[int, int] | None = None) -> TopicLag:
    """Lag per partition = end - committed, clamped at 0 (a low end offset, as the dev broker
    reports, must not show as negative lag). A partition without a committed offset (None or -1)
    counts from its beginning offset: the worker starts there (``auto_offset_reset=earliest``)."""
    parts = []
    for p in sorted(ends):
        c = committed.get(p)
        c = None if c is None or c < 0 else c
        start = c if c is not None else (beginnings or {}).get(p, 0)
        parts.append(PartitionLag(p, ends[p], c, max(0, ends[p] - start)))
    return TopicLag(topic, group, tuple(parts))


@dataclass(frozen=True)
class KafkaState:
    """One look at the brokers: the dispatch group's lag and the terminal records on the topics."""

    bootstrap_servers: str
    group: str
    lag: tuple[TopicLag, ...] = ()
    terminal: dict[str, int] = field(default_factory=dict)   # topic -> records retained (end - beginning)
    approx: bool = False                                      # dev broker: ListOffsets corrected by reading
    error: str | None = None

    @property
    def terminal_total(self) -> int:
        return sum(self.terminal.values())

    @property
    def source(self) -> str:
        if self.approx:
            return ("approx.: dev broker (Tansu), ListOffsets is low for multi-record batches; "
                    "corrected by reading each partition's last batch")
        return "from ListOffsets and the group's committed offsets"


def _quiet_client_logs() -> None:
    """aiokafka logs refused connections through logging's last-resort handler (stderr) when
    logging is not configured; the view already says it. Same as ``check`` does."""
    for name in ("aiokafka", "kafka"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())


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
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def start(self) -> None:
        _quiet_client_logs()
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
            wanted = [self.outbound, *self.terminal_topics]
            described = {t["topic"]: t for t in await admin.describe_topics(wanted)}
            missing = [n for n in wanted if not (described.get(n) or {}).get("partitions")]
            if missing:
                raise RuntimeError(f"topic(s) {', '.join(missing)} not found (run `sms-connector topics apply`)")
            self._tps = [TopicPartition(n, p["partition"]) for n in wanted
                         for p in sorted(described[n]["partitions"], key=lambda p: p["partition"])]
            if self.dev_broker:   # read only in _read_real_ends: paused in between
                consumer.assign(self._tps)
                consumer.pause(*self._tps)
        out_tps = [tp for tp in self._tps if tp.topic == self.outbound]
        ends = dict(await consumer.end_offsets(self._tps))
        beginnings = dict(await consumer.beginning_offsets(self._tps))
        committed = await admin.list_consumer_group_offsets(self.group, partitions=out_tps)
        if self.dev_broker:
            ends = await self._read_real_ends(ends)
        lag = consumer_lag(self.outbound, self.group, {tp.partition: ends[tp] for tp in out_tps},
                           {tp.partition: (committed[tp].offset if tp in committed else None) for tp in out_tps},
                           {tp.partition: beginnings[tp] for tp in out_tps})
        terminal = {name: sum(max(0, ends[tp] - beginnings[tp]) for tp in self._tps if tp.topic == name)
                    for name in self.terminal_topics}
        return KafkaState(self.kafka.bootstrap_servers, self.group, (lag,), terminal, approx=bool(self.dev_broker))

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
            await (client.stop() if isinstance(client, AIOKafkaConsumer) else client.close())
        except Exception:   # noqa: BLE001, S110 - closing a client that never connected
            pass


# ------------------------------------------------------------------------------------------------
# Polling


def metrics_url(url: str) -> str:
    """``http://host:8080`` and ``host:8080`` mean ``http://host:8080/metrics``."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        url = url.rstrip("/") + "/metrics"
    return url


@dataclass(frozen=True)
class StatusSample:
    snapshot: Snapshot
    rates: Rates | None
    kafka: KafkaState | None
    at: float                     # wall-clock time of the sample


class StatusMonitor:
    """Polls metrics URLs and Kafka, keeps the previous snapshot for rates. Use as ``async with``."""

    def __init__(self, metrics_urls: Sequence[str], kafka: KafkaSettings | None, *, dev_broker: bool | None = None,
                 group: str | None = None, timeout: float = METRICS_TIMEOUT_S) -> None:
        self.urls = [metrics_url(u) for u in metrics_urls]
        self.probe = KafkaProbe(kafka, group=group, dev_broker=dev_broker) if kafka is not None else None
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._prev: tuple[float, Snapshot] | None = None
        self.last: StatusSample | None = None

    async def __aenter__(self) -> StatusMonitor:
        _quiet_client_logs()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self.probe is not None:
            await self.probe.close()

    async def _scrape(self, url: str) -> Snapshot:
        assert self._session is not None, "use StatusMonitor as `async with`"
        try:
            async with self._session.get(url) as r:
                if r.status != 200:
                    return Snapshot(errors=[f"{url}: HTTP {r.status}"])
                text = await r.text()
            return parse_metrics(text)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            what = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.TimeoutError):
                what = f"no answer within {self.timeout:.0f}s"
            return Snapshot(errors=[f"{url}: {what}"])

    async def poll(self) -> StatusSample:
        kafka_task = asyncio.ensure_future(self.probe.sample()) if self.probe is not None else None
        snaps = await asyncio.gather(*(self._scrape(u) for u in self.urls))
        now = time.monotonic()
        snap = merge(snaps)
        kafka = await kafka_task if kafka_task is not None else None
        r = None
        # Rates only between samples from the same set of workers (one dropping out is no throughput).
        if self._prev is not None and now > self._prev[0] and snap.workers == self._prev[1].workers and snap.workers:
            r = rates(self._prev[1], snap, now - self._prev[0])
        if snap.workers or self._prev is None:
            self._prev = (now, snap)
        self.last = StatusSample(snap, r, kafka, time.time())
        return self.last

    def view(self, *, title: str | None = None, note: str | None = None) -> RenderableType:
        if self.last is None:
            return Text("sms-connector status: waiting for the first sample")
        s = self.last
        return render(s.snapshot, s.rates, s.kafka, title=title, note=note, at=s.at,
                      sources=len(self.urls))


async def status_panel(monitor: StatusMonitor, *, note: str | None = None) -> RenderableType:
    """Poll once and return the view (for a caller that owns its own ``Live`` or console)."""
    await monitor.poll()
    return monitor.view(note=note)


# ------------------------------------------------------------------------------------------------
# View


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}/s"


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:,.1f} s"


def _bound(le: float | None) -> str:
    # Buckets are coarse (1 s, 2 s, 5 s, ...): say which bucket, not an interpolated guess.
    if le is None:
        return "-"
    return "> last bucket" if le == float("inf") else f"<= {_secs(le)}"


def _kv_table(title: str) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_header=True, pad_edge=False)
    return t


def render(snapshot: Snapshot, rates: Rates | None, kafka: KafkaState | None, *, title: str | None = None,
           note: str | None = None, at: float | None = None, sources: int | None = None) -> RenderableType:
    """The status view: a rich renderable (print it, or give it to ``Live``)."""
    s, r = snapshot, rates
    parts: list[RenderableType] = []

    # -- header
    when = datetime.fromtimestamp(at if at is not None else time.time()).strftime("%H:%M:%S")
    n_sources = sources if sources is not None else s.workers + len(s.errors)
    head = Text()
    head.append(title or "sms-connector status", style="bold")
    head.append(f"   {when}   ")
    if n_sources:
        head.append(f"metrics from {s.workers}/{n_sources} worker(s)",
                    style="green" if s.workers == n_sources else "bold red")
    else:
        head.append("no metrics URL (Kafka only)", style="yellow")
    if r is not None:
        head.append(f"   rates over {r.dt:.1f}s")
    parts.append(head)
    if note:
        parts.append(Text(note))
    for err in s.errors:
        parts.append(Text(f"unreachable  {err}", style="red"))

    # -- throughput and pipeline, side by side
    thr = _kv_table("Throughput")
    thr.add_column("records")
    thr.add_column("total", justify="right")
    thr.add_column("rate", justify="right")
    for label, total, rate in (("consumed", s.consumed, r and r.consumed), ("accepted", s.accepted_total, r and r.accepted),
                               ("failed", s.failed_total, r and r.failed),
                               ("dead-lettered", s.dead_lettered_total, r and r.dead_lettered)):
        thr.add_row(label, _n(total), _rate(rate) if r is not None else "-")

    pipe = _kv_table("Pipeline")
    pipe.add_column("")
    pipe.add_column("now", justify="right")
    pipe.add_row("in flight", _n(s.in_flight))
    pipe.add_row("waiting to retry", _n(s.retry_waiting))
    pipe.add_row("oldest pending", _secs(s.oldest_pending_s))
    parts_total = None
    if kafka is not None and kafka.lag:
        parts_total = len(kafka.lag[0].partitions)
    pipe.add_row("partitions assigned", _n(s.partitions_assigned) + (f"/{parts_total}" if parts_total else ""))
    pipe.add_row("provider retries", _n(s.retries_total))
    cb_ok = sum(v for (_, outcome), v in s.callbacks.items() if outcome == "ok")
    pipe.add_row("callbacks (ok)", f"{_n(s.callbacks_total)} ({_n(cb_ok)})")
    pipe.add_row("MO received", _n(s.mo_total))
    pipe.add_row("opt-out suppressed", _n(s.optout_total))
    not_closed = {route: v for route, v in s.circuits.items() if v}
    if not_closed:
        pipe.add_row(Text("circuits", style="bold red"),
                     Text(", ".join(f"{rt} {CIRCUIT_NAMES.get(int(v), v)}" for rt, v in sorted(not_closed.items())),
                          style="bold red"))
    grid = Table.grid(padding=(0, 4))
    grid.add_row(thr, pipe)
    parts.append(grid)

    # -- outcomes
    out = Table(title="Outcomes by provider and reason", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    out.add_column("outcome")
    out.add_column("provider")
    out.add_column("reason")
    out.add_column("total", justify="right")
    out.add_column("rate", justify="right")
    out.add_column("share", justify="right")
    outcomes = s.outcomes()
    terminal = s.terminal_total
    style = {ACCEPTED: "green", FAILED: "yellow", DEAD_LETTERED: "red"}
    order = {ACCEPTED: 0, FAILED: 1, DEAD_LETTERED: 2}
    for (outcome, provider, reason), n in sorted(outcomes.items(), key=lambda kv: (order[kv[0][0]], -kv[1], kv[0])):
        rate = r.outcomes.get((outcome, provider, reason)) if r is not None else None
        out.add_row(Text(outcome, style=style[outcome]), Text(provider or "-"), Text(reason or "-"), _n(n),
                    _rate(rate), f"{100 * n / terminal:.1f}%" if terminal else "-")
    if not outcomes:
        out.add_row(Text("none yet", style="dim"), "", "", "", "", "")
    parts.append(out)

    # -- Kafka
    if kafka is not None:
        parts.append(_render_kafka(kafka, s))

    # -- delivery latency
    if s.delivery_latency:
        dl = Table(title="Delivery latency (submit to final status)", title_justify="left", box=box.SIMPLE_HEAD,
                   pad_edge=False)
        for col, just in (("provider", "left"), ("state", "left"), ("count", "right"), ("mean", "right"),
                          ("p50", "right"), ("p95", "right")):
            dl.add_column(col, justify=just)  # type: ignore[arg-type]
        for (provider, state), h in sorted(s.delivery_latency.items()):
            dl.add_row(Text(provider or "-"), Text(state or "-"), _n(h.count),
                       _secs(h.sum / h.count) if h.count else "-", _bound(h.upper_bound(0.5)),
                       _bound(h.upper_bound(0.95)))
        parts.append(dl)
    return Group(*parts)


def _render_kafka(k: KafkaState, s: Snapshot) -> RenderableType:
    if k.error:
        return Panel(Text(f"Kafka {k.bootstrap_servers}: {k.error}", style="red"), title="Consumer lag",
                     title_align="left", box=box.ROUNDED)
    approx = " (approx.)" if k.approx else ""
    t = Table(title=f"Consumer lag{approx}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              caption=k.source, caption_justify="left")
    t.add_column("topic")
    t.add_column("group")
    t.add_column("partitions", justify="right")
    t.add_column("end", justify="right")
    t.add_column("committed", justify="right")
    t.add_column("lag", justify="right")
    t.add_column("max/partition", justify="right")
    for lag in k.lag:
        t.add_row(Text(lag.topic), Text(lag.group), str(len(lag.partitions)), _n(lag.end), _n(lag.committed),
                  Text(("~" if k.approx else "") + _n(lag.lag), style="bold" if lag.lag else "green"), _n(lag.max_lag))
    lines = [t]
    names = {topics.spec(r).name: r for r in TERMINAL_ROLES}
    on_topics = ", ".join(f"{names.get(n, n)} {_n(c)}" for n, c in k.terminal.items())
    committed = sum(lag.committed for lag in k.lag)
    check = Text(f"terminal records on topics: {on_topics} = {_n(k.terminal_total)}; "
                 f"committed input {_n(committed)}; workers' metrics {_n(s.terminal_total)}", style="dim")
    lines.append(check)
    return Group(*lines)


# ------------------------------------------------------------------------------------------------
# Running


def _is_tty(out: IO[str]) -> bool:
    return bool(getattr(out, "isatty", None) and out.isatty())


def _console(out: IO[str], tty: bool, width: int | None = None) -> Console:
    if tty:
        return Console(file=out, highlight=False)
    # Plain: no colour, no cursor control; wide enough that the tables do not wrap in a log.
    return Console(file=out, force_terminal=False, color_system=None, highlight=False, width=width or 120,
                   soft_wrap=False)


async def run_status(metrics_urls: list[str], kafka: KafkaSettings | None, interval: float, once: bool,
                     out: IO[str], *, dev_broker: bool | None = None, group: str | None = None,
                     width: int | None = None) -> int:
    """Poll every ``interval`` seconds until cancelled. On a TTY the view refreshes in place
    (``rich.live.Live``); otherwise one plain snapshot is printed per interval. ``once``: sample,
    wait ``interval`` (for the rates), sample again, print one snapshot and return.

    Returns 0, or 1 when ``once`` and nothing answered (no metrics source and no Kafka)."""
    tty = _is_tty(out) and not once
    console = _console(out, tty, width)
    async with StatusMonitor(metrics_urls, kafka, dev_broker=dev_broker, group=group) as monitor:
        if once:
            await monitor.poll()
            if interval > 0:
                await asyncio.sleep(interval)
            sample = await monitor.poll()
            console.print(monitor.view())
            kafka_ok = sample.kafka is not None and sample.kafka.error is None
            return 0 if sample.snapshot.workers or kafka_ok else 1
        if tty:
            with Live(Text("sms-connector status: first sample..."), console=console, auto_refresh=False,
                      redirect_stdout=False, redirect_stderr=False) as live:
                while True:
                    t0 = time.monotonic()
                    await monitor.poll()
                    live.update(monitor.view(), refresh=True)
                    await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
        while True:
            t0 = time.monotonic()
            await monitor.poll()
            console.print(monitor.view())
            console.print()
            out.flush()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))


class LiveStatus:
    """The status view inside another command's loop (``dev``). On a terminal it shows the view under
    ``rich.live.Live`` and refreshes it on ``tick()`` (polling at most every ``interval`` seconds);
    ``say()`` prints a line above it. Not on a terminal it does nothing: the caller keeps printing
    its plain lines (tests and CI read those)::

        async with LiveStatus([metrics_url], kafka, out, dev_broker=True) as status:
            while ...:
                if not status.active:
                    say("progress ...")
                await status.tick(note="demo 500/1000 terminal")
    """

    def __init__(self, metrics_urls: Sequence[str], kafka: KafkaSettings | None, out: IO[str], *,
                 interval: float = 1.0, dev_broker: bool | None = None, enabled: bool | None = None) -> None:
        self.active = _is_tty(out) if enabled is None else enabled
        self.interval = interval
        self.console = _console(out, self.active)
        self.monitor = StatusMonitor(metrics_urls, kafka, dev_broker=dev_broker)
        self._live: Live | None = None
        self._last_poll = 0.0

    async def __aenter__(self) -> LiveStatus:
        if self.active:
            await self.monitor.__aenter__()
            self._live = Live(Text("status: first sample..."), console=self.console, auto_refresh=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.active:
            await self.monitor.__aexit__(*exc)

    def say(self, text: str) -> None:
        """A line above the live view (or nothing when inactive: the caller prints its own)."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)

    async def tick(self, *, note: str | None = None, force: bool = False) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        if force or now - self._last_poll >= self.interval or self.monitor.last is None:
            self._last_poll = now
            await self.monitor.poll()
        self._live.update(self.monitor.view(note=note), refresh=True)


# ------------------------------------------------------------------------------------------------
# The command (registered in connector.cli: ``main.add_command(status_command)``)


def resolve_sources(metrics_urls: Sequence[str], config: str | None, manifest: str
                    ) -> tuple[list[str], KafkaSettings, bool | None, str]:
    """(metrics URLs, Kafka settings, dev broker?, where they came from). With no URL the dev
    manifest is used when it exists (its bootstrap servers and metrics URL); else the config."""
    if not metrics_urls:
        m = devmanifest.read(manifest)
        if m is not None:
            if not m.get("bootstrap_servers") or not m.get("metrics_url"):
                raise click.ClickException(f"{manifest}: no bootstrap_servers / metrics_url in the dev manifest")
            kafka = KafkaSettings(bootstrap_servers=str(m["bootstrap_servers"]), idempotent_producer=False,
                                  replication_factor=1)
            return [str(m["metrics_url"])], kafka, True, f"dev manifest {manifest}"
    try:
        settings = load(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return list(metrics_urls), settings.kafka, None, f"config {config}" if config else "environment / defaults"


@click.command("status")
@click.option("--metrics-url", "metrics_urls", multiple=True, metavar="URL",
              help="A worker's metrics URL (repeatable; several workers are summed). "
                   "Default: the dev manifest's.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="SMS_CONNECTOR_CONFIG",
              help="TOML config file (also SMS_CONNECTOR_CONFIG) for Kafka (kafka.*). Environment variables "
                   "override it. Not used when the dev manifest is.")
@click.option("--manifest", default=DEFAULT_MANIFEST, show_default=True, type=click.Path(dir_okay=False),
              help="The dev manifest, used when no --metrics-url is given and it exists.")
@click.option("--interval", type=click.FloatRange(0, 3600), default=DEFAULT_INTERVAL_S, show_default=True,
              help="Seconds between samples (rates are measured over it).")
@click.option("--once", is_flag=True, help="Print one snapshot (two samples --interval apart, for the rates) and exit.")
def status_command(metrics_urls: tuple[str, ...], config: str | None, manifest: str, interval: float,
                   once: bool) -> None:
    """Live view of a running deployment: throughput, outcomes by provider and reason, consumer lag,
    in flight, oldest pending, callbacks and MO.

    \b
    Sources:  each --metrics-url (summed), and Kafka for the dispatch group's lag on sms.outbound
              and the terminal records on accepted / failed / dlq (nothing is committed).
    Default:  with no --metrics-url, .sms-connector-dev.json of a running `sms-connector dev`;
              else Kafka from --config / SMS_CONNECTOR_KAFKA__*.

    On a terminal the view refreshes in place (Ctrl-C stops); otherwise one plain snapshot per
    interval. Lag on the dev broker is approximate (its ListOffsets is low; see the caption).
    """
    urls, kafka, dev_broker, _ = resolve_sources(metrics_urls, config, manifest)
    if not once and interval <= 0:
        raise click.UsageError("--interval must be > 0 without --once")
    try:
        code = asyncio.run(run_status(urls, kafka, interval, once, sys.stdout,
                                      dev_broker=dev_broker))
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)


__all__ = ["Hist", "KafkaProbe", "KafkaState", "LiveStatus", "PartitionLag", "Rates", "Snapshot", "StatusMonitor",
           "StatusSample", "TopicLag", "consumer_lag", "merge", "metrics_url", "parse_metrics", "rates", "render",
           "resolve_sources", "run_status", "status_command", "status_panel"]
