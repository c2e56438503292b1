"""The data layer of ``sms-connector status``, pure: no broker, no terminal, no network.

``parse_metrics(text) -> Snapshot`` reads one worker's ``/metrics`` text (the names in
``connector.metrics``); ``merge`` sums several workers (in flight, partitions and counters add up;
the oldest pending record and a circuit's state take the maximum); ``rates(prev, cur, dt)`` turns
two snapshots into per-second throughput (a counter that went down, a restarted worker, counts from
zero). ``consumer_lag`` computes the dispatch group's lag on ``sms.outbound``: per partition, end
offset - committed offset (the beginning offset when the group has committed nothing: the worker
starts at ``earliest``), never below 0. ``KafkaState`` is what ``connector.ops.kafka_probe`` found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from connector import contract as topics

ACCEPTED, FAILED, DEAD_LETTERED = "accepted", "failed", "dead-lettered"
SCHEDULED_TOPIC = topics.spec("scheduled").name     # its lag is messages waiting for their send time

# The metrics of ``connector.metrics`` this view reads (a unit test keeps the two in step).
METRICS_READ = ("sms_outbound_consumed", "sms_outbound_accepted", "sms_outbound_failed",
                "sms_outbound_dead_lettered", "sms_outbound_segments", "sms_outbound_in_flight", "sms_outbound_retry_waiting",
                "sms_outbound_oldest_pending_seconds", "sms_kafka_partitions_assigned", "sms_provider_retries",
                "sms_callbacks_received", "sms_mo_received", "sms_optout_suppressed", "sms_circuit_state",
                "sms_delivery_latency_seconds", "sms_deferred", "sms_deferred_waiting",
                "sms_budget_segments_spent", "sms_budget_segments", "sms_route_rate_limit")


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
    deferred: dict[str, float] = field(default_factory=dict)                  # reason (scheduled, quiet-hours)
    deferred_waiting: float = 0.0   # deferred messages held in memory (further ahead: the scheduled topic's lag)
    deferred_waiting_scheduled: float = 0.0   # of which read from the scheduled topic: in its lag too
    # spend budgets, by (route, scope, window): spent adds up over workers, the budget is the same on each
    budget_spent: dict[tuple[str, str, str], float] = field(default_factory=dict)
    budget_limit: dict[tuple[str, str, str], float] = field(default_factory=dict)
    # rate limits by route: each worker's share (after 429 back-off); summed, the deployment's rate
    rate_limit: dict[str, float] = field(default_factory=dict)
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
            elif name == "sms_deferred_total":
                _add(snap.deferred, lb.get("reason", ""), v)
            elif name == "sms_deferred_waiting":
                snap.deferred_waiting += v
                if lb.get("topic") == SCHEDULED_TOPIC:
                    snap.deferred_waiting_scheduled += v
            elif name == "sms_circuit_state":
                route = lb.get("route", "")
                snap.circuits[route] = max(snap.circuits.get(route, 0.0), v)
            elif name in ("sms_budget_segments_spent", "sms_budget_segments"):
                key = (lb.get("route", ""), lb.get("scope", ""), lb.get("window", ""))
                if name == "sms_budget_segments":
                    snap.budget_limit[key] = max(snap.budget_limit.get(key, 0.0), v)
                else:
                    _add(snap.budget_spent, key, v)
            elif name == "sms_route_rate_limit":
                _add(snap.rate_limit, lb.get("route", ""), v)
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
        out.deferred_waiting += s.deferred_waiting
        out.deferred_waiting_scheduled += s.deferred_waiting_scheduled
        out.partitions_assigned += s.partitions_assigned
        out.oldest_pending_s = max(out.oldest_pending_s, s.oldest_pending_s)
        for src, dst in ((s.accepted, out.accepted), (s.failed, out.failed), (s.dead_lettered, out.dead_lettered),
                         (s.retries, out.retries), (s.callbacks, out.callbacks), (s.mo_received, out.mo_received),
                         (s.optout_suppressed, out.optout_suppressed), (s.deferred, out.deferred),
                         (s.rate_limit, out.rate_limit)):
            for k, v in src.items():
                _add(dst, k, v)
        for route, state in s.circuits.items():
            out.circuits[route] = max(out.circuits.get(route, 0.0), state)
        for k, v in s.budget_spent.items():
            _add(out.budget_spent, k, v)
        for k, v in s.budget_limit.items():
            out.budget_limit[k] = max(out.budget_limit.get(k, 0.0), v)
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
    # exactly-once: each transaction leaves a commit marker in every partition it wrote, and an
    # aborted one leaves its records: offsets then count more than the committed records
    markers: bool = False

    @property
    def terminal_total(self) -> int:
        return sum(self.terminal.values())

    @property
    def source(self) -> str:
        if self.approx:
            return ("approx.: dev broker (Tansu), ListOffsets is low for multi-record batches; "
                    "corrected by reading each partition's last batch")
        return "from ListOffsets and the group's committed offsets"
