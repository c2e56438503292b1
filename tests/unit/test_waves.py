"""The dispatcher's wave path (``connector.streams.waves``), ``Pipeline.outcomes`` and
``RouteSender.send_many``: no broker (a batcher and a committer stand in), the SMPP REST adapter
answering from memory."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from connector import contract as topics
from connector import metrics
from connector.app import build_senders
from connector.config import load
from connector.http import HttpRequest, HttpResponse
from connector.offsets import PartitionProgress
from connector.pipeline import SKIP, Later, Verdict
from connector.records import Accepted, Ending, decode_outbound_many
from connector.routing import Router
from connector.streams.committer import Output
from connector.streams.dispatch import Dispatcher
from connector.streams.membership import OwnershipLost
from connector.streams.waves import produce_all
from connector.transport import HttpTransport

IN = topics.spec("outbound").name
ACCEPTED = topics.spec("accepted").name
FAILED = topics.spec("failed").name
DLQ = topics.spec("dlq").name
CORRELATION = topics.spec("correlation").name


class Gateway:
    """The SMPP REST gateway in memory: accepts every message except those whose
    client_message_id starts with ``rej`` (rejected) or is in ``unavailable`` (the call answers
    503, once per id). ``hold``: the calls wait for it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.unavailable: set[str] = set()
        self.hold: asyncio.Event | None = None
        self.n = 0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        sent = orjson.loads(request.body)["Messages"]
        ids = [m["clientMessageId"] for m in sent]
        self.calls.append(ids)
        if self.hold is not None:
            await self.hold.wait()
        if self.unavailable & set(ids):
            self.unavailable -= set(ids)
            return HttpResponse(503, b"", {})
        results = []
        for m in reversed(sent):       # any order: matched by the echo
            self.n += 1
            ok = not m["clientMessageId"].startswith("rej")
            results.append({"apiMessageId": f"api-{self.n}", "accepted": ok, "to": m["to"],
                            "error": None if ok else "bad number", "msg": m})
        return HttpResponse(200, orjson.dumps({"messages": results}), {"content-type": "application/json"})


class Batcher:
    """``streams.batcher.Batcher`` in memory: one future per (topic, partition) until the loop
    turns (a batch); ``fail``: the next batch of these partitions fails."""

    def __init__(self) -> None:
        self.sent: list[Output] = []
        self.fail: set[tuple[str, int]] = set()
        self._open: dict[tuple[str, int], asyncio.Future[None]] = {}

    def send(self, topic: str, partition: int, key: bytes | None, value: bytes, headers: Any = (),
             timestamp_ms: int | None = None) -> asyncio.Future[None]:
        self.sent.append(Output(topic, partition, key, value, list(headers), timestamp_ms))
        tp = (topic, partition)
        fut = self._open.get(tp)
        if fut is None:
            fut = self._open[tp] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._ack, tp)
        return fut

    def _ack(self, tp: tuple[str, int]) -> None:
        from aiokafka.errors import KafkaTimeoutError

        fut = self._open.pop(tp)
        if tp in self.fail:
            self.fail.discard(tp)
            fut.set_exception(KafkaTimeoutError())
        else:
            fut.set_result(None)

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(o.value) for o in self.sent if o.topic == topic]


def env(batch_max: int, concurrency: int = 8, **extra: str) -> dict[str, str]:
    p = "SMS_CONNECTOR_ROUTES__SMPP__"
    return {p + "PROVIDER": "smpp_rest", p + "BASE_URL": "http://gw.invalid", p + "API_KEY": "k",
            p + "BATCH_MAX": str(batch_max), p + "CONCURRENCY": str(concurrency),
            "SMS_CONNECTOR_DISPATCH__RETRY_BASE_DELAY_S": "0.001", **extra}


def dispatcher(batch_max: int, gateway: Gateway, concurrency: int = 8,
               optouts: frozenset[str] = frozenset(), **extra: str) -> tuple[Dispatcher, Batcher, TopicPartition]:
    settings = load(environ=env(batch_max, concurrency, **extra))
    senders = build_senders(settings)
    for s in senders.values():
        s.transport = HttpTransport(handler=gateway)
    d = Dispatcher(settings, senders, Router.from_settings(settings.routing, {"smpp": "smpp_rest"}), optouts)
    d.ledger = None
    d._partitions = {name: 4 for name in (IN, ACCEPTED, FAILED, DLQ, CORRELATION, topics.spec("retry").name,
                                          topics.spec("ledger").name, topics.spec("scheduled").name)}
    batcher = Batcher()
    d._batcher = batcher  # type: ignore[assignment]
    tp = TopicPartition(IN, 1)
    d.on_assigned([tp])
    return d, batcher, tp


def value(cid: str, phone: str = "+14155550100", **fields: Any) -> bytes:
    return orjson.dumps({"schema_version": 1, "client_message_id": cid, "recipient": {"phone": phone},
                         "text": "hello", **fields})


def rec(offset: int, key: str, body: bytes, headers: list[tuple[str, bytes]] | None = None) -> ConsumerRecord:
    return ConsumerRecord(IN, 1, offset, 1_700_000_000_000, 0, key.encode(), body, None, len(key), len(body),
                          headers or [])


async def settle(d: Dispatcher, until: Callable[[], bool] | None = None) -> None:
    for _ in range(500):
        if (until or (lambda: d.in_flight == 0))():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not settled: {d.in_flight} in flight")


# --- waves: one record per key at a time -----------------------------------------------------

async def test_a_wave_takes_one_record_per_key_and_keeps_each_keys_order() -> None:
    gw = Gateway()
    d, batcher, tp = dispatcher(200, gw)
    keys = ["a", "a", "b", "a", "c", "b"]
    d._take(tp, [rec(i, k, value(f"m{i}", f"+1415555010{ord(k) % 10}")) for i, k in enumerate(keys)])
    await settle(d)
    # one call per wave: the first record of each key, then the next of each, then the last
    assert [sorted(c) for c in gw.calls] == [["m0", "m2", "m4"], ["m1", "m5"], ["m3"]]
    accepted = batcher.values(ACCEPTED)
    assert [r["client_message_id"] for r in accepted] == ["m0", "m2", "m4", "m1", "m5", "m3"]
    assert all(r["attempts"] == 1 and r["provider"] == "smpp_rest" for r in accepted)
    # every accepted record has its correlation record and its source headers
    assert len([o for o in batcher.sent if o.topic == CORRELATION]) == 6
    first = next(o for o in batcher.sent if o.topic == ACCEPTED)
    assert dict(first.headers)[topics.HEADER_SOURCE_OFFSET] == b"0"
    assert dict(first.headers)[topics.HEADER_SOURCE_PARTITION] == b"1"
    assert d._progress[tp].committable() == 6 and not d._chains


async def test_a_key_in_progress_keeps_its_later_records_behind_it_across_fetches() -> None:
    gw = Gateway()
    gw.hold = asyncio.Event()
    d, batcher, tp = dispatcher(200, gw)
    d._take(tp, [rec(0, "a", value("m0"))])
    await settle(d, lambda: len(gw.calls) == 1)
    d._take(tp, [rec(1, "a", value("m1")), rec(2, "b", value("m2"))])   # a is busy: m1 waits, m2 goes
    await settle(d, lambda: len(gw.calls) == 2)
    assert gw.calls == [["m0"], ["m2"]]
    gw.hold.set()
    await settle(d)
    assert [r["client_message_id"] for r in batcher.values(ACCEPTED)].index("m0") < \
        [r["client_message_id"] for r in batcher.values(ACCEPTED)].index("m1")
    assert d._progress[tp].committable() == 3


# --- fast and slow records in one wave ---------------------------------------------------------

@pytest.mark.parametrize("waves", ["true", "false"])
async def test_fast_and_slow_records_of_one_wave_each_end_as_on_the_per_record_path(waves: str) -> None:
    gw = Gateway()
    gw.unavailable = {"retry-me"}
    d, batcher, tp = dispatcher(1, gw, optouts=frozenset({"+14155550199"}), SMS_CONNECTOR_DISPATCH__WAVES=waves)
    records = [
        rec(0, "k0", value("ok-0")),
        rec(1, "k1", value("rej-1")),                                  # refused: a plain failure
        rec(2, "k2", b"{not json"),                                    # dead letter
        rec(3, "k3", value("stop-3", "+14155550199")),                 # opted out: never sent
        rec(4, "k4", value("retry-me")),                               # 503 first: retried in place
        rec(5, "k4", value("after-retry")),                            # same key: after it
        rec(6, "k6", value("replayed"), [(topics.HEADER_REPLAYED_FROM, b"dlq")]),   # the per-record path
        rec(7, "k7", value("later", send_at="2999-01-01T00:00:00Z")),  # too far ahead: failed
    ]
    d._take(tp, records)
    await settle(d)
    sent_ids = [i for c in gw.calls for i in c]
    assert "stop-3" not in sent_ids                              # opt-outs are never sent to
    assert sent_ids.count("retry-me") == 2                       # the failed call's message, and only it, again
    accepted = {r["client_message_id"]: r for r in batcher.values(ACCEPTED)}
    failed = {r["client_message_id"]: r for r in batcher.values(FAILED)}
    assert set(accepted) == {"ok-0", "retry-me", "after-retry", "replayed"}
    assert accepted["retry-me"]["attempts"] == 2 and accepted["ok-0"]["attempts"] == 1
    assert failed["rej-1"]["reason"] == "rejected" and failed["stop-3"]["reason"] == "opted-out"
    assert failed["later"]["reason"] == "invalid"
    assert [o.value for o in batcher.sent if o.topic == DLQ] == [b"{not json"]
    order = [r["client_message_id"] for r in batcher.values(ACCEPTED)]
    assert order.index("retry-me") < order.index("after-retry")    # per-key order across the slow path
    assert d._progress[tp].committable() == 8 and d.in_flight == 0 and not d._chains


async def test_a_failed_produce_resends_only_the_records_of_the_failed_batch() -> None:
    batcher = Batcher()
    batcher.fail = {(ACCEPTED, 1)}
    outputs = [Output(ACCEPTED, 1, b"a", b"1"), Output(ACCEPTED, 2, b"b", b"2"), Output(CORRELATION, 0, b"c", b"3")]
    await produce_all(batcher, outputs)  # type: ignore[arg-type]
    assert [o.value for o in batcher.sent] == [b"1", b"2", b"3", b"1"]


async def test_a_wave_is_finished_only_when_its_records_are_durable() -> None:
    gw = Gateway()
    d, batcher, tp = dispatcher(200, gw)
    batcher.fail = {(ACCEPTED, 1)}
    d._take(tp, [rec(i, f"k{i}", value(f"m{i}")) for i in range(3)])
    await settle(d, lambda: len(batcher.sent) >= 6)
    assert d._progress[tp].committable() == 0             # the accepted batch failed: nothing finished
    await settle(d)
    assert d._progress[tp].committable() == 3
    accepted = [o for o in batcher.sent if o.topic == ACCEPTED]
    assert len(accepted) == 6 and len([o for o in batcher.sent if o.topic == CORRELATION]) == 3


# --- ownership ------------------------------------------------------------------------------------

async def test_a_revoked_partition_stops_its_wave_before_the_next_call() -> None:
    gw = Gateway()
    gw.hold = asyncio.Event()
    d, batcher, tp = dispatcher(1, gw, concurrency=1)
    abandoned = metrics.ABANDONED._value.get()
    d._take(tp, [rec(i, f"k{i}", value(f"m{i}")) for i in range(3)])
    await settle(d, lambda: len(gw.calls) == 1)
    d._progress[tp].revoked = True          # given up while the first call is in progress
    gw.hold.set()
    await settle(d)
    assert gw.calls == [["m0"]]             # the other two never reached the gateway
    assert [r["client_message_id"] for r in batcher.values(ACCEPTED)] == ["m0"]   # the call made is recorded
    assert d._progress[tp].committable() == 1      # the others are left unfinished for the next owner
    assert metrics.ABANDONED._value.get() - abandoned == 2


async def test_a_wave_of_a_partition_already_given_up_makes_no_call() -> None:
    gw = Gateway()
    d, batcher, tp = dispatcher(200, gw)
    d._take(tp, [rec(i, "same", value(f"m{i}")) for i in range(3)])
    d._progress[tp].revoked = True          # before the wave's task runs
    await settle(d)
    assert gw.calls == [] and batcher.sent == [] and not d._chains


# --- exactly-once: one transaction item per wave -----------------------------------------------

class Committer:
    def __init__(self) -> None:
        self.items: list[tuple[list[Output], int, asyncio.Future[None]]] = []

    def add(self, outputs: list[Output], count: int = 1) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.items.append((list(outputs), count, fut))
        return fut


async def test_with_exactly_once_a_wave_joins_its_partitions_transaction_at_once() -> None:
    gw = Gateway()
    d, batcher, tp = dispatcher(200, gw)
    d.exactly_once = True
    committer = Committer()
    d._committers[tp.partition] = committer  # type: ignore[assignment]
    d._take(tp, [rec(i, f"k{i}", value(f"m{i}")) for i in range(4)])
    await settle(d, lambda: bool(committer.items))
    [(outputs, count, fut)] = committer.items
    assert count == 4 and len([o for o in outputs if o.topic == ACCEPTED]) == 4
    assert batcher.sent == []                         # nothing outside the transaction
    assert d._progress[tp].committable() == 4        # finished with the add: its offsets are in it
    assert d.in_flight == 4                          # ... but the slots wait for the commit
    fut.set_result(None)
    await settle(d)


# --- the pipeline and the sender, alone --------------------------------------------------------

async def test_outcomes_leaves_budgets_intents_and_ledger_entries_to_the_per_record_path() -> None:
    gw = Gateway()
    d, _, _ = dispatcher(200, gw, **{"SMS_CONNECTOR_ROUTES__SMPP__IN_DOUBT": "fail"})

    class Ledger:
        def state(self, cid: str) -> str | None:
            return {"done": "done", "doubt": "intent"}.get(cid)

        def outcome(self, cid: str) -> str | None:
            return "accepted"

        def token(self, cid: str) -> str | None:
            return None

        async def intent(self, cid: str, route: str | None) -> None:
            return None

    msgs = decode_outbound_many([value("done"), value("doubt"), value("new")])
    ends = await d.pipeline.outcomes(msgs, [0, 0, 0], Ledger())
    assert ends[0] is SKIP                               # its outcome is recorded: nothing to send
    assert isinstance(ends[1], Later) and isinstance(ends[2], Later)   # in doubt / an intent to write first
    assert gw.calls == []
    verdict = await ends[2]()
    assert isinstance(verdict, Verdict) and verdict.ending is Ending.ACCEPTED and verdict.ledger_cid == "new"


async def test_outcomes_of_a_plain_route_end_without_a_verdict_per_accepted_message() -> None:
    gw = Gateway()
    d, _, _ = dispatcher(200, gw)
    ends = await d.pipeline.outcomes(decode_outbound_many([value("a"), value("rej-b"), None]), [0, 0, 0])
    assert isinstance(ends[0], tuple) and orjson.loads(ends[0][0])["outcome"] == "accepted"
    assert ends[0][1] and ends[0][2] is None           # correlation records; no ledger
    assert isinstance(ends[1], Verdict) and ends[1].ending is Ending.FAILED
    assert isinstance(ends[2], Verdict) and ends[2].ending is Ending.DEAD_LETTERED
    assert len(gw.calls) == 1


@pytest.mark.parametrize("batch_max, calls", [(3, [3, 3, 1]), (1, [1] * 7)])
async def test_send_many_cuts_calls_and_aligns_results_by_index(batch_max: int, calls: list[int]) -> None:
    gw = Gateway()
    d, _, _ = dispatcher(batch_max, gw, concurrency=2)
    sender = d.pipeline.senders["smpp"]
    msgs = decode_outbound_many([value(f"{'rej' if i == 4 else 'ok'}-{i}", f"+141555501{i:02d}") for i in range(7)])
    prepared = [sender.provider.prepare(m) for m in msgs]  # type: ignore[arg-type]
    results, started = await sender.send_many(prepared)
    assert sorted(len(c) for c in gw.calls) == sorted(calls)
    assert [isinstance(r, Accepted) for r in results] == [i != 4 for i in range(7)]
    assert all(s > 0 for s in started)


async def test_send_many_refused_by_the_gate_sends_nothing() -> None:
    gw = Gateway()
    d, _, _ = dispatcher(2, gw)
    sender = d.pipeline.senders["smpp"]

    async def gate() -> None:
        raise OwnershipLost("expelled")

    sender.gate = gate
    prepared = [sender.provider.prepare(m) for m in decode_outbound_many([value("a"), value("b"), value("c")])]  # type: ignore[arg-type]
    results, _ = await sender.send_many(prepared)
    assert gw.calls == [] and all(isinstance(r, OwnershipLost) for r in results)


async def test_calls_not_made_because_the_circuit_opened_are_left_to_the_per_record_path() -> None:
    gw = Gateway()
    d, _, _ = dispatcher(1, gw, concurrency=1)
    sender = d.pipeline.senders["smpp"]
    inner = gw.__call__

    async def opening(request: HttpRequest) -> HttpResponse:
        response = await inner(request)
        sender.breaker._open(sender.breaker._clock())      # the first call's failures opened it
        return response

    sender.transport = HttpTransport(handler=opening)
    ends = await d.pipeline.outcomes(decode_outbound_many([value("a"), value("b"), value("c")]), [0, 0, 0])
    assert gw.calls == [["a"]]                      # no call more while open
    assert isinstance(ends[0], tuple) and isinstance(ends[1], Later) and isinstance(ends[2], Later)


async def test_a_scheduled_message_in_a_wave_is_handed_off_until_its_time_not_sent() -> None:
    import time as _time

    from connector.records import iso

    gw = Gateway()
    d, batcher, tp = dispatcher(200, gw)
    due = _time.time() + 120
    d._take(tp, [rec(0, "a", value("now")), rec(1, "b", value("later", send_at=iso(due)))])
    await settle(d)
    assert gw.calls == [["now"]]                     # the scheduled one is not sent
    [handed] = [o for o in batcher.sent if o.topic in (topics.spec("retry").name, topics.spec("scheduled").name)]
    assert handed.value == value("later", send_at=iso(due)) and handed.key == b"b"
    assert dict(handed.headers)[topics.HEADER_RETRY_REASON] == b"scheduled"
    assert d._progress[tp].committable() == 2
