"""status: metrics parsing, merging, rates, lag arithmetic and the rich view; no network."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from rich.console import Console

from connector import metrics
from connector.config import KafkaSettings
from connector.ops.snapshot import (METRICS_READ, SCHEDULED_TOPIC, Hist, KafkaState, Snapshot, consumer_lag, merge,
                                    parse_metrics, rates)
from connector.ops.status import LiveStatus, metrics_url, render, resolve_sources, run_status


def clone(metric: Any, registry: CollectorRegistry) -> Any:
    """The same metric (name, help, labels, buckets) as connector.metrics defines it, in ``registry``."""
    doc, labels = metric._documentation, metric._labelnames   # noqa: SLF001 - prometheus_client keeps them here
    if isinstance(metric, Histogram):
        return Histogram(metric._name, doc, labels, registry=registry,   # noqa: SLF001
                         buckets=[b for b in metric._upper_bounds if b != float("inf")])   # noqa: SLF001
    return type(metric)(metric._name, doc, labels, registry=registry)   # noqa: SLF001


@pytest.fixture
def worker_text() -> str:
    """/metrics of one worker, produced by the connector's own metric definitions."""
    reg = CollectorRegistry()
    m = {name: clone(getattr(metrics, name), reg) for name in (
        "CONSUMED", "ACCEPTED", "FAILED", "DEAD_LETTERED", "SEGMENTS", "IN_FLIGHT", "RETRY_WAITING", "OLDEST_PENDING",
        "PARTITIONS_ASSIGNED", "PROVIDER_RETRIES", "CALLBACKS", "MO_RECEIVED", "OPTOUT_SUPPRESSED",
        "DELIVERY_LATENCY", "CIRCUIT_STATE", "PROVIDER_REQUEST", "COMMITS")}
    m["CONSUMED"].inc(120)
    m["ACCEPTED"].labels("smpp", "smpp_rest").inc(90)
    m["ACCEPTED"].labels("smpp-backup", "smpp_rest").inc(5)
    m["ACCEPTED"].labels("revio", "revio").inc(10)
    m["FAILED"].labels("smpp", "smpp_rest", "rejected").inc(3)
    m["FAILED"].labels("revio", "revio", "invalid").inc(2)
    m["FAILED"].labels("smpp-backup", "smpp_rest", "rejected").inc(1)
    m["DEAD_LETTERED"].labels("invalid-record").inc(4)
    m["SEGMENTS"].labels("smpp", "smpp_rest").inc(130)
    m["IN_FLIGHT"].set(5)
    m["RETRY_WAITING"].set(11)
    m["OLDEST_PENDING"].set(1.25)
    m["PARTITIONS_ASSIGNED"].set(6)
    m["PROVIDER_RETRIES"].labels("smpp", "smpp_rest", "throttled").inc(7)
    m["CALLBACKS"].labels("thingspace", "delivery", "ok").inc(8)
    m["CALLBACKS"].labels("thingspace", "delivery", "unauthorized").inc(1)
    m["MO_RECEIVED"].labels("ogangi").inc(2)
    m["OPTOUT_SUPPRESSED"].labels("smpp").inc(3)
    for seconds in (1.5, 3, 3, 4, 40):
        m["DELIVERY_LATENCY"].labels("thingspace", "delivered").observe(seconds)
    m["CIRCUIT_STATE"].labels("revio").set(2)
    m["CIRCUIT_STATE"].labels("smpp").set(0)
    m["PROVIDER_REQUEST"].labels("smpp_rest", "ok").observe(0.02)   # read by nobody: ignored
    m["COMMITS"].labels("ok").inc(9)
    return generate_latest(reg).decode()


def test_every_metric_the_view_reads_is_defined_in_connector_metrics() -> None:
    defined = {obj._name for obj in vars(metrics).values() if isinstance(obj, (Counter, Gauge, Histogram))}   # noqa: SLF001
    assert set(METRICS_READ) <= defined, set(METRICS_READ) - defined


def test_parse_metrics_reads_the_connectors_metrics(worker_text: str) -> None:
    s = parse_metrics(worker_text)
    assert s.workers == 1 and s.errors == []
    assert s.consumed == 120
    assert s.accepted == {"smpp_rest": 95, "revio": 10}   # routes of one provider add up
    assert s.failed == {("smpp_rest", "rejected"): 4, ("revio", "invalid"): 2}
    assert s.dead_lettered == {"invalid-record": 4}
    assert (s.accepted_total, s.failed_total, s.dead_lettered_total, s.terminal_total) == (105, 6, 4, 115)
    assert (s.in_flight, s.oldest_pending_s, s.partitions_assigned, s.segments) == (5, 1.25, 6, 130)
    assert s.retry_waiting == 11
    assert s.retries == {"smpp_rest": 7}
    assert s.callbacks == {("thingspace", "ok"): 8, ("thingspace", "unauthorized"): 1}
    assert s.mo_received == {"ogangi": 2} and s.optout_suppressed == {"smpp": 3}
    assert s.circuits == {"revio": 2, "smpp": 0}
    h = s.delivery_latency[("thingspace", "delivered")]
    assert h.count == 5 and h.sum == pytest.approx(51.5)
    assert h.buckets[2.0] == 1 and h.buckets[5.0] == 4 and h.buckets[float("inf")] == 5
    assert s.outcomes() == {("accepted", "smpp_rest", ""): 95, ("accepted", "revio", ""): 10,
                            ("failed", "smpp_rest", "rejected"): 4, ("failed", "revio", "invalid"): 2,
                            ("dead-lettered", "", "invalid-record"): 4}


def test_parse_metrics_of_handwritten_text_and_of_an_idle_worker() -> None:
    text = """# HELP process_cpu_seconds_total Total CPU.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 3.5
# TYPE sms_outbound_consumed_total counter
sms_outbound_consumed_total 7.0
# TYPE sms_outbound_accepted_total counter
sms_outbound_accepted_total{provider="ogangi",route="ve"} 6.0
# TYPE sms_outbound_failed_total counter
sms_outbound_failed_total{provider="ogangi",reason="expired",route="ve"} 1.0
# TYPE sms_outbound_in_flight gauge
sms_outbound_in_flight 0.0
"""
    s = parse_metrics(text)
    assert (s.consumed, s.accepted, s.failed, s.in_flight) == (7, {"ogangi": 6}, {("ogangi", "expired"): 1}, 0)
    idle = parse_metrics("")
    assert idle.workers == 1 and idle.terminal_total == 0 and idle.outcomes() == {}
    with pytest.raises(ValueError):
        parse_metrics("<html>not metrics</html>\n")


def test_merge_sums_workers_but_takes_the_oldest_pending_and_worst_circuit(worker_text: str) -> None:
    a, b = parse_metrics(worker_text), parse_metrics(worker_text)
    b.oldest_pending_s = 9.0
    b.circuits["revio"] = 1
    b.circuits["ogangi"] = 1
    down = Snapshot(errors=["http://w3:8080/metrics: refused"])
    m = merge([a, b, down])
    assert m.workers == 2 and m.errors == ["http://w3:8080/metrics: refused"]
    assert m.consumed == 240 and m.accepted == {"smpp_rest": 190, "revio": 20}
    assert m.failed[("smpp_rest", "rejected")] == 8 and m.dead_lettered == {"invalid-record": 8}
    assert (m.in_flight, m.retry_waiting, m.partitions_assigned, m.oldest_pending_s) == (10, 22, 12, 9.0)
    assert m.circuits == {"revio": 2, "smpp": 0, "ogangi": 1}
    assert m.delivery_latency[("thingspace", "delivered")].count == 10
    assert m.callbacks_total == 18 and m.mo_total == 4 and m.optout_total == 6 and m.retries_total == 14
    assert a.consumed == 120, "merge must not modify its inputs"


def test_rates_between_snapshots_including_a_counter_reset() -> None:
    prev = Snapshot(consumed=100, accepted={"smpp_rest": 80}, failed={("smpp_rest", "rejected"): 10},
                    dead_lettered={"invalid-record": 2}, callbacks={("thingspace", "ok"): 4}, workers=1)
    cur = Snapshot(consumed=300, accepted={"smpp_rest": 260, "revio": 10}, failed={("smpp_rest", "rejected"): 14},
                   dead_lettered={"invalid-record": 2}, callbacks={("thingspace", "ok"): 4}, workers=1)
    r = rates(prev, cur, 2.0)
    assert (r.consumed, r.accepted, r.failed, r.dead_lettered, r.callbacks) == (100, 95, 2, 0, 0)
    assert r.terminal == 97
    assert r.outcomes == {("accepted", "smpp_rest", ""): 90, ("accepted", "revio", ""): 5,
                          ("failed", "smpp_rest", "rejected"): 2, ("dead-lettered", "", "invalid-record"): 0}
    restarted = Snapshot(consumed=30, accepted={"smpp_rest": 20}, workers=1)
    r2 = rates(cur, restarted, 1.0)
    assert r2.consumed == 30 and r2.accepted == 20, "a reset counter counts from zero, never negative"
    with pytest.raises(ValueError):
        rates(prev, cur, 0)


def test_histogram_quantiles_interpolate_like_prometheus() -> None:
    h = Hist(buckets={1.0: 0, 2.0: 10, 5.0: 30, float("inf"): 40}, count=40, sum=100)
    assert h.quantile(0.25) == pytest.approx(2.0)
    assert h.quantile(0.5) == pytest.approx(3.5)        # rank 20: halfway through (2, 5]
    assert h.quantile(0.99) == 5.0                        # in +Inf: the highest finite bound
    assert Hist().quantile(0.5) is None
    assert (h.upper_bound(0.25), h.upper_bound(0.5), h.upper_bound(0.99)) == (2.0, 5.0, float("inf"))
    assert Hist().upper_bound(0.5) is None


def test_lag_is_end_minus_committed_never_negative() -> None:
    lag = consumer_lag("sms.outbound", "g", ends={0: 100, 1: 50, 2: 12, 3: 40},
                       committed={0: 90, 1: 50, 2: 30, 3: -1}, beginnings={3: 10})
    assert [(p.partition, p.lag) for p in lag.partitions] == [(0, 10), (1, 0), (2, 0), (3, 30)]
    assert lag.partitions[3].committed is None        # -1: nothing committed, counted from the beginning
    assert (lag.lag, lag.max_lag, lag.end, lag.committed) == (40, 30, 202, 170)
    assert consumer_lag("t", "g", {0: 5}, {}).lag == 5


def test_metrics_url_forms() -> None:
    assert metrics_url("http://w:8080/metrics") == "http://w:8080/metrics"
    assert metrics_url("http://w:8080") == "http://w:8080/metrics"
    assert metrics_url("w:8080/") == "http://w:8080/metrics"
    assert metrics_url("https://w/prom/metrics") == "https://w/prom/metrics"


def text_of(renderable: Any, width: int = 140) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_render_shows_throughput_outcomes_pipeline_lag_and_latency(worker_text: str) -> None:
    cur = parse_metrics(worker_text)
    prev = Snapshot(consumed=100, accepted={"smpp_rest": 75, "revio": 10}, failed={("smpp_rest", "rejected"): 4},
                    workers=1)
    lag = consumer_lag("sms.outbound", "sms-connector-dispatch", {0: 60, 1: 70}, {0: 50, 1: 70})
    kafka = KafkaState("kafka:9092", "sms-connector-dispatch", (lag,),
                       {"sms.outbound.accepted": 105, "sms.outbound.failed": 6, "sms.outbound.dlq": 4})
    text = text_of(render(cur, rates(prev, cur, 2.0), kafka, at=0, sources=1))
    lines = text.splitlines()

    def row(*words: str) -> str:
        found = [ln for ln in lines if all(w in ln.split() for w in words)]
        assert found, f"no line with {words} in:\n{text}"
        return found[0]

    assert "metrics from 1/1 worker(s)" in text and "rates over 2.0s" in text
    assert row("consumed", "120", "10.0/s") and row("accepted", "105", "10.0/s")
    assert row("failed", "6", "1.0/s") and row("dead-lettered", "4", "2.0/s")
    assert row("accepted", "smpp_rest", "95", "10.0/s") and row("accepted", "revio", "10", "0.0/s")
    assert row("failed", "smpp_rest", "rejected", "4") and row("failed", "revio", "invalid", "2")
    assert row("dead-lettered", "invalid-record", "4")
    assert row("in", "flight", "5") and row("oldest", "pending", "1.2") and row("partitions", "assigned", "6/2")
    assert row("callbacks", "9", "(8)") and row("MO", "received", "2") and row("opt-out", "suppressed", "3")
    assert row("circuits", "revio", "open")
    assert row("sms.outbound", "sms-connector-dispatch", "2", "130", "120", "10")
    assert "from ListOffsets" in text and "approx." not in text
    assert "terminal records on topics: accepted 105, failed 6, dlq 4 = 115" in text
    assert row("thingspace", "delivered", "5", "10.3", "<=", "5.0")   # mean 51.5/5; p50 in (2, 5], p95 in (30, 60]
    assert "<= 60.0 s" in row("thingspace", "delivered")


def test_render_before_rates_with_dev_broker_errors_and_no_traffic() -> None:
    empty = merge([parse_metrics(""), Snapshot(errors=["http://w2/metrics: HTTP 503"])])
    lag = consumer_lag("sms.outbound", "g", {0: 3}, {0: 9})
    text = text_of(render(empty, None, KafkaState("127.0.0.1:9092", "g", (lag,), {}, approx=True), sources=2))
    assert "metrics from 1/2 worker(s)" in text and "unreachable  http://w2/metrics: HTTP 503" in text
    assert "none yet" in text
    assert "Consumer lag (approx.)" in text and "~0" in text and "dev broker" in text
    broken = text_of(render(Snapshot(), None, KafkaState("k:9092", "g", error="Unable to bootstrap"), sources=0))
    assert "no metrics URL (Kafka only)" in broken and "Kafka k:9092: Unable to bootstrap" in broken


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_run_status_once_without_sources_prints_one_plain_snapshot() -> None:
    out = io.StringIO()
    code = await run_status([], None, 0, True, out)
    assert code == 1, "nothing answered"
    text = out.getvalue()
    assert text.count("sms-connector status") == 1 and "no metrics URL" in text and "\x1b[" not in text


async def test_run_status_prints_a_snapshot_per_interval_or_refreshes_live_on_a_tty() -> None:
    plain = io.StringIO()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(run_status([], None, 0.1, False, plain), 0.35)
    assert plain.getvalue().count("sms-connector status") >= 2 and "\x1b[" not in plain.getvalue()
    tty = FakeTTY()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(run_status([], None, 0.1, False, tty), 0.35)
    assert "sms-connector status" in tty.getvalue() and "\x1b[" in tty.getvalue()   # cursor control: in place


async def test_live_status_is_a_no_op_off_a_terminal_and_refreshes_on_one() -> None:
    plain = io.StringIO()
    async with LiveStatus(["http://127.0.0.1:9/metrics"], KafkaSettings(), plain) as status:
        assert not status.active
        status.say("progress")
        await status.tick(note="demo 1/2")
    assert plain.getvalue() == "", "off a terminal dev prints its own lines"
    tty = FakeTTY()
    async with LiveStatus([], None, tty) as status:
        assert status.active
        status.say("broker ready")
        await status.tick(note="demo 5/10 terminal")
    assert "broker ready" in tty.getvalue() and "demo 5/10 terminal" in tty.getvalue()


def test_sources_come_from_the_dev_manifest_when_no_url_is_given(tmp_path: Path) -> None:
    manifest = tmp_path / "dev.json"
    manifest.write_bytes(orjson.dumps({"bootstrap_servers": "127.0.0.1:1234",
                                       "metrics_url": "http://127.0.0.1:8080/metrics"}))
    urls, kafka, dev_broker, origin = resolve_sources((), None, str(manifest))
    assert urls == ["http://127.0.0.1:8080/metrics"] and kafka.bootstrap_servers == "127.0.0.1:1234"
    assert dev_broker is True and "manifest" in origin
    urls, kafka, dev_broker, _ = resolve_sources(("http://w:1/metrics",), None, str(manifest))
    assert urls == ["http://w:1/metrics"] and dev_broker is None   # a URL given: the config's Kafka
    urls, _, dev_broker, _ = resolve_sources((), None, str(tmp_path / "absent.json"))
    assert urls == [] and dev_broker is None


def test_render_shows_messages_waiting_for_their_send_time() -> None:
    """Deferred messages: those held by the workers plus the scheduled topic's lag, and the deferrals by reason."""
    text_in = ('sms_deferred_total{route="r",reason="scheduled"} 7\n'
               'sms_deferred_total{route="r",reason="quiet-hours"} 3\n'
               'sms_deferred_waiting 4\n')
    snap = merge([parse_metrics("# TYPE sms_deferred_total counter\n# TYPE sms_deferred_waiting gauge\n" + text_in)])
    assert snap.deferred == {"scheduled": 7, "quiet-hours": 3} and snap.deferred_waiting == 4
    lags = (consumer_lag("sms.outbound", "g", {0: 3}, {0: 3}), consumer_lag("sms.outbound.scheduled", "g", {0: 9}, {0: 4}))
    text = text_of(render(snap, None, KafkaState("k:9092", "g", lags, {}), sources=1))
    assert any(ln.split()[-5:] == ["waiting", "for", "send", "time", "9"] for ln in text.splitlines()), text
    # 9: 4 held by the workers + 5 in the scheduled topic
    assert "quiet-hours 3, scheduled 7" in text
    assert "committed input 3" in text                    # the scheduled topic is not input
def test_budget_usage_adds_up_over_workers_and_is_shown_against_the_budget() -> None:
    def worker(spent: float) -> Snapshot:
        reg = CollectorRegistry()
        m_spent, m_limit = clone(metrics.BUDGET_SPENT, reg), clone(metrics.BUDGET_LIMIT, reg)
        m_spent.labels("smpp", "", "hour").set(spent)
        m_limit.labels("smpp", "", "hour").set(1000)
        m_spent.labels("smpp", "NG", "day").set(10)
        m_limit.labels("smpp", "NG", "day").set(20)
        return parse_metrics(generate_latest(reg).decode())
    merged = merge([worker(300), worker(550)])
    assert merged.budget_spent[("smpp", "", "hour")] == 850 and merged.budget_limit[("smpp", "", "hour")] == 1000
    text = text_of(render(merged, None, None, at=0, sources=2))
    assert "budget smpp per hour" in text and "850/1,000 (85%)" in text
    assert "budget smpp NG per day" in text and "20/20 (100%)" in text


def test_rate_limit_shares_add_up_to_the_deployments_rate() -> None:
    """Each worker's sms_route_rate_limit is its share of the route's rate_limit; the view shows
    their sum (the deployment's), and nothing for a route without a rate limit (0)."""
    def worker(share: float) -> Snapshot:
        reg = CollectorRegistry()
        gauge = clone(metrics.ROUTE_RATE_LIMIT, reg)
        gauge.labels("smpp").set(share)
        gauge.labels("revio").set(0)
        return parse_metrics(generate_latest(reg).decode())
    merged = merge([worker(10), worker(30)])
    assert merged.rate_limit == {"smpp": 40, "revio": 0}
    text = text_of(render(merged, None, None, at=0, sources=2))
    assert any(ln.split()[-4:] == ["rate", "limit", "smpp", "40/s"] for ln in text.splitlines()), text
    assert "rate limit revio" not in text


def test_messages_read_from_the_scheduled_topic_are_not_counted_twice() -> None:
    """A record read from sms.outbound.scheduled and waiting for its next check is held by the
    worker and still in the topic's lag (not committed until forwarded): counted once."""
    reg = CollectorRegistry()
    gauge = clone(metrics.DEFERRED_WAITING, reg)
    gauge.labels("sms.outbound.retry").set(4)          # due within a lap
    gauge.labels(SCHEDULED_TOPIC).set(3)               # read, waiting for their next check
    snap = merge([parse_metrics(generate_latest(reg).decode())])
    assert (snap.deferred_waiting, snap.deferred_waiting_scheduled) == (7, 3)
    lags = (consumer_lag("sms.outbound", "g", {0: 3}, {0: 3}), consumer_lag(SCHEDULED_TOPIC, "g", {0: 9}, {0: 4}))
    text = text_of(render(snap, None, KafkaState("k:9092", "g", lags, {}), sources=1))
    # 4 held from the retry topic + 5 in the scheduled topic (the 3 read among them)
    assert any(ln.split()[-5:] == ["waiting", "for", "send", "time", "9"] for ln in text.splitlines()), text
    text = text_of(render(snap, None, None, sources=1))          # no lag known: what the workers hold
    assert any(ln.split()[-5:] == ["waiting", "for", "send", "time", "7"] for ln in text.splitlines()), text
