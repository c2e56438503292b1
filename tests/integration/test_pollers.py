"""MO pollers on a real broker with the ThingSpace and Ogangi simulators as processes.

Exactly once per dedupe key in ``sms.inbound``: in process for the plain path, and with the
poller in a child process that is ``kill -9``-ed at the worst moments (after the write-ahead
intent and before any produce; half-way through a block's produces, before its commit) and
restarted. The child (``_child`` below) runs ``Pollers`` with a publisher slowed down by its
environment, so the kills land where the test wants them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from connector import contract as topics
from connector.app import build_senders, inbound_producer
from connector.config import Settings, load
from connector.devtools.embedded_broker import free_port
from connector.devtools.kafka_broker import KafkaCluster
from connector.records import InboundSms
from connector.kafka import client_options, topic_partitions
from connector.providers import thingspace as ts
from connector.sender import RouteSender
from connector.devtools.simulators.thingspace import ThingSpaceSimulator
from connector.devtools.stack import LocalStack, worker_env
from connector.streams.pollers import Pollers
from connector.streams.publish import InboundPublisher

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TS_ROUTE = {"thingspace": {"provider": "thingspace"}}
OG_ROUTE = {"ogangi": {"provider": "ogangi", "sender": "24365"}}
ACCOUNT = ThingSpaceSimulator.default_credentials()["account_name"]
TS_POLLER = f"thingspace-mo:{ACCOUNT}"
OG_POLLER = "ogangi-mo:1001"


# --- the stack --------------------------------------------------------------------------------

@pytest.fixture
async def mo_stack(broker: LocalStack) -> AsyncIterator[LocalStack]:
    s = broker
    try:
        await asyncio.gather(s.start_simulator("thingspace"), s.start_simulator("ogangi"))
        yield s
    finally:
        Child.kill_leftovers()     # a failed test's child (own session) would outlive the run
        await s.stop()


def env_for(stack: LocalStack, routes: Mapping[str, Mapping[str, str]], **extra: str) -> dict[str, str]:
    assert stack.broker is not None
    env = worker_env(stack.kafka, stack.sim_urls, free_port(), routes, default_route=next(iter(routes)))
    env["SMS_CONNECTOR_INBOUND__MO_POLL_INTERVAL_S"] = "0.2"
    env.update(extra)
    return env


def producer_for(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(**client_options(settings.kafka), acks="all", enable_idempotence=settings.kafka.idempotent_producer)


@contextlib.asynccontextmanager
async def pollers_running(env: Mapping[str, str], transactional: bool = False) -> AsyncIterator[Pollers]:
    """Pollers in this process, as a worker would run them."""
    settings = load(environ=env)
    senders = build_senders(settings)
    producer = producer_for(settings)
    await producer.start()
    pollers = Pollers(settings, senders, producer, InboundPublisher(producer), transactional=transactional)
    stop = asyncio.Event()
    task = asyncio.create_task(pollers.run(stop))
    try:
        yield pollers
    finally:
        stop.set()
        await task
        await producer.stop()
        for s in senders.values():
            await s.transport.aclose()


async def admin_post(url: str, body: Any) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200, await r.text()


class Watch:
    """Reads sms.inbound, sms.optout and sms.poller.state from the beginning, in the background."""

    def __init__(self, stack: LocalStack) -> None:
        self.kafka = stack.kafka
        self.inbound: list[dict[str, Any]] = []
        self.optout: list[dict[str, Any]] = []
        self.state: list[tuple[str, dict[str, Any] | None]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        names = {topics.spec(r).name: r for r in ("inbound", "optout", "poller_state")}
        consumer = AIOKafkaConsumer(**client_options(self.kafka), enable_auto_commit=False,
                                    auto_offset_reset="earliest", isolation_level="read_committed")
        await consumer.start()
        try:
            tps = [tp for t in names for tp in await topic_partitions(consumer, t)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=50, max_records=10000)
                for tp, records in batch.items():
                    for r in records:
                        role = names[tp.topic]
                        if role == "poller_state":
                            self.state.append((r.key.decode(), orjson.loads(r.value) if r.value else None))
                        else:
                            getattr(self, role).append(orjson.loads(r.value))
        finally:
            await consumer.stop()

    def keys(self, provider: str) -> Counter[str]:
        return Counter(r["dedupe_key"] for r in self.inbound if r["provider"] == provider)

    def latest_state(self, name: str) -> dict[str, Any] | None:
        return next((v for k, v in reversed(self.state) if k == name), None)

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


def ts_queue(n_distinct: int, n_dups: int) -> tuple[list[dict[str, Any]], set[str]]:
    """ThingSpace MO messages to enqueue: distinct ones (one a STOP from an MDN device), plus
    duplicates of some of them placed out of order (some before their original)."""
    distinct = [{"device": {"kind": "MDN" if i % 3 else "IMEI", "id": f"415555{i:04d}" if i % 3 else f"3569380356{i:05d}"},
                 "text": "STOP" if i == 17 else f"reading {i}", "timestamp": f"2024-05-01T10:{i // 60:02d}:{i % 60:02d}Z"}
                for i in range(n_distinct)]
    queue = list(distinct)
    for j in range(n_dups):
        original = (j * 37 + 11) % n_distinct
        queue.insert((j * 53 + 5) % len(queue), dict(distinct[original]))
    keys = {ts_key(m) for m in distinct}
    assert len(keys) == n_distinct
    return queue, keys


def ts_key(m: Mapping[str, Any]) -> str:
    raw = {"deviceIds": [{"id": m["device"]["id"], "kind": m["device"]["kind"]}], "message": m["text"],
           "timestamp": m["timestamp"]}
    return ts.MoMessage(None, None, m["text"], m["timestamp"], raw).dedupe_key


async def ts_history_is_empty(env: Mapping[str, str]) -> bool:
    sender: RouteSender = build_senders(load(environ=env))["thingspace"]
    try:
        config = sender.provider.config
        page = await sender.call(lambda: ts.build_mo_history(config), ts.parse_mo_history)
        return page.messages == () and not page.has_more
    finally:
        await sender.transport.aclose()


def assert_exactly_once(counts: Counter[str], expected: set[str]) -> None:
    assert set(counts) == expected, f"missing {len(expected - set(counts))}, unexpected {len(set(counts) - expected)}"
    dups = {k: n for k, n in counts.items() if n > 1}
    assert dups == {}, f"{len(dups)} dedupe keys published more than once"


# --- in process -------------------------------------------------------------------------------

def transactions_or_skip(stack: LocalStack, transactional: bool) -> bool:
    if transactional and not isinstance(stack.broker, KafkaCluster):
        pytest.skip("transactions need Apache Kafka")
    return transactional


modes = pytest.mark.parametrize("transactional", [False, True], ids=["at-least-once", "exactly-once"])


@modes
async def test_thingspace_queue_lands_exactly_once_per_dedupe_key_and_is_acknowledged(
        mo_stack: LocalStack, transactional: bool) -> None:
    transactions_or_skip(mo_stack, transactional)
    queue, expected = ts_queue(240, 10)
    await admin_post(mo_stack.sim_urls["thingspace"] + "/_sim/thingspace/mo", queue)
    env = env_for(mo_stack, TS_ROUTE)
    async with Watch(mo_stack) as w:
        async with pollers_running(env, transactional) as pollers:
            await w.until(lambda: pollers.ready, 20, "pollers ready")
            await w.until(lambda: len(w.keys("thingspace")) >= len(expected), 30, "every MO in sms.inbound")
            # the last page (200, no token) is acknowledged by the next poll
            await w.until(lambda: (w.latest_state(TS_POLLER) or {}).get("intent") is None, 5, "state committed")
            await asyncio.sleep(0.6)
            assert pollers.health()[TS_POLLER]["healthy"]
            assert all((p.txn is not None) == transactional for p in pollers.pollers)
        await asyncio.sleep(0.3)
        assert_exactly_once(w.keys("thingspace"), expected)
        stop = [r for r in w.inbound if r["text"] == "STOP"]
    assert len(stop) == 1 and stop[0]["optout"] == "stop" and stop[0]["keyword"] == "STOP"
    assert stop[0]["sender"] == {"device": {"kind": "MDN", "id": "4155550017"}}
    assert all(r["occurred_at"] and r["raw"] for r in w.inbound)
    assert await ts_history_is_empty(env)


@modes
async def test_optout_keywords_from_a_phone_number_update_the_optout_table(mo_stack: LocalStack,
                                                                          transactional: bool) -> None:
    transactions_or_skip(mo_stack, transactional)
    url = mo_stack.sim_urls["ogangi"] + "/_sim/ogangi/mo"
    await admin_post(url, [{"from": "584121234567", "text": "hello"}, {"from": "584121234567", "text": "Stop"}])
    async with Watch(mo_stack) as w, pollers_running(env_for(mo_stack, OG_ROUTE), transactional):
        await w.until(lambda: len(w.optout) == 1, 20, "the opt-out record")
        assert w.optout[0]["phone"] == "+584121234567" and w.optout[0]["opted_out"] is True
        await admin_post(url, [{"from": "584121234567", "text": "START"}])
        await w.until(lambda: len(w.optout) == 2, 20, "the opt-in record")
        assert w.optout[1]["phone"] == "+584121234567" and w.optout[1]["opted_out"] is False
        await asyncio.sleep(0.5)
    assert [(r["text"], r["optout"]) for r in w.inbound] == [("hello", None), ("Stop", "stop"), ("START", "start")]
    assert len(w.optout) == 2 and w.inbound[0]["sender"] == {"phone": "+584121234567"}


# --- kill -9 ----------------------------------------------------------------------------------

class SlowPublisher(InboundPublisher):
    """One MO at a time, ``step_s`` apart, the first after ``hold_s``: kills land mid-block."""

    def __init__(self, producer: AIOKafkaProducer, hold_s: float, step_s: float) -> None:
        super().__init__(producer)
        self.hold_s, self.step_s = hold_s, step_s
        self._lock = asyncio.Lock()

    async def publish_mo(self, mo: InboundSms) -> None:
        async with self._lock:
            await asyncio.sleep(self.hold_s + self.step_s)
            self.hold_s = 0.0
            await super().publish_mo(mo)

    async def record_optout(self, change: Any) -> None:
        await pause_point("optout")       # between an MO's sms.inbound record and its opt-out record
        await super().record_optout(change)


_counts: Counter[str] = Counter()


async def pause_point(step: str) -> None:
    """``TEST_PAUSE_AT=step:n``: at the n-th time the process reaches ``step``, say so on stderr
    (the test reads the log) and hold for ``TEST_PAUSE_S`` seconds (default: until killed)."""
    _counts[step] += 1
    want = os.environ.get("TEST_PAUSE_AT", "")
    if want and want == f"{step}:{_counts[step]}":
        print(f"TEST-PAUSED {want}", file=sys.stderr, flush=True)
        await asyncio.sleep(float(os.environ.get("TEST_PAUSE_S") or 3600))


async def _child_main() -> None:
    from connector import logs

    settings = load()
    logs.configure(settings.log.level, "json", settings.secrets())
    senders = build_senders(settings)
    producer = inbound_producer(settings)     # the worker's own (its request timeout matters in a stall)
    await producer.start()
    publisher = SlowPublisher(producer, float(os.environ.get("TEST_HOLD_S", "0")),
                              float(os.environ.get("TEST_STEP_S", "0")))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # TEST_TRANSACTIONS=1: the exactly-once path (each block and its state in one transaction)
    pollers = Pollers(settings, senders, producer, publisher, transactional=os.environ.get("TEST_TRANSACTIONS") == "1")
    for p in pollers.pollers:
        p.on_step = pause_point
    try:
        await pollers.run(stop)
    finally:
        await producer.stop()
        for s in senders.values():
            await s.transport.aclose()


def _child() -> None:
    asyncio.run(_child_main())


class Child:
    running: list[asyncio.subprocess.Process] = []     # started, maybe not yet ended

    def __init__(self, stack: LocalStack, env: Mapping[str, str], label: str) -> None:
        self.stack, self.env, self.label = stack, env, label
        self.proc: asyncio.subprocess.Process | None = None
        self.log = stack.logdir / f"{label}.log"

    @classmethod
    def kill_leftovers(cls) -> None:
        for proc in cls.running:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        cls.running.clear()

    async def start(self, hold_s: float = 0.0, step_s: float = 0.0, pause_at: str = "",
                    pause_s: float = 0.0) -> Child:
        with open(self.log, "ab") as fh:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from tests.integration.test_pollers import _child; _child()",
                cwd=ROOT, stdout=fh, stderr=fh, stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, **self.env, "PYTHONPATH": str(ROOT), "TEST_HOLD_S": str(hold_s),
                     "TEST_STEP_S": str(step_s), "TEST_PAUSE_AT": pause_at, "TEST_PAUSE_S": str(pause_s or "")})
        Child.running.append(self.proc)
        return self

    def said(self, text: str) -> bool:
        return self.log.exists() and text in self.log.read_text(errors="replace")

    async def paused(self, timeout: float = 30.0) -> None:
        """Wait until the child reached its pause point."""
        deadline = time.monotonic() + timeout
        while not self.said("TEST-PAUSED"):
            assert self.proc is not None
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.label} never reached its pause point:\n" + self.tail())
            await asyncio.sleep(0.02)

    async def kill_9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def stop(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(self.proc.wait(), 20) == 0, self.tail()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:]) if self.log.exists() else ""


async def until_or_dead(w: Watch, child: Child, predicate: Callable[[], bool], timeout: float, what: str) -> None:
    def check() -> bool:
        assert child.proc is not None
        if child.proc.returncode is not None:
            raise AssertionError(f"{child.label} exited with {child.proc.returncode} while waiting for {what}:\n"
                                 + child.tail())
        return predicate()
    await w.until(check, timeout, what)


def has_intent(w: Watch, name: str) -> Callable[[], bool]:
    return lambda: (w.latest_state(name) or {}).get("intent") is not None


async def test_thingspace_poller_killed_between_fetch_and_produce_loses_and_repeats_nothing(
        mo_stack: LocalStack) -> None:
    queue, expected = ts_queue(240, 10)       # blocks of 100, 100, 50: 202, 202, then the last page
    await admin_post(mo_stack.sim_urls["thingspace"] + "/_sim/thingspace/mo", queue)
    env = env_for(mo_stack, TS_ROUTE)
    n = lambda: len(w.keys("thingspace"))  # noqa: E731
    async with Watch(mo_stack) as w:
        # 1. the first block is fetched and its intent saved; the produce is held: kill now
        c = await Child(mo_stack, env, "ts-1").start(hold_s=5.0)
        await until_or_dead(w, c, has_intent(w, TS_POLLER), 20, "the first block's intent")
        await c.kill_9()
        assert n() == 0
        # 2. the block is finished from the intent; kill half-way through the second block's produces
        c = await Child(mo_stack, env, "ts-2").start(step_s=0.02)
        await until_or_dead(w, c, lambda: n() >= 150, 30, "half of the second block")
        await c.kill_9()
        assert has_intent(w, TS_POLLER)(), "killed after the block's commit: not the moment under test"
        # 3. again, in the last page (200, no token: acknowledged only by the next poll)
        c = await Child(mo_stack, env, "ts-3").start(step_s=0.02)
        await until_or_dead(w, c, lambda: n() >= 215, 30, "half of the last page")
        await c.kill_9()
        assert has_intent(w, TS_POLLER)()
        # 4. run to the end, then stop cleanly
        c = await Child(mo_stack, env, "ts-4").start()
        await until_or_dead(w, c, lambda: n() >= len(expected) and not has_intent(w, TS_POLLER)(), 30, "every MO")
        await asyncio.sleep(0.8)       # a few more polls: the last page is acknowledged
        await c.stop()
        await asyncio.sleep(0.3)
        assert_exactly_once(w.keys("thingspace"), expected)
    assert await ts_history_is_empty(env)


async def test_ogangi_poller_restarts_without_losing_or_repeating(mo_stack: LocalStack) -> None:
    url = mo_stack.sim_urls["ogangi"] + "/_sim/ogangi/mo"
    first = [{"from": f"58412{i % 9:07d}", "text": f"first {i}"} for i in range(130)]
    await admin_post(url, first)
    env = env_for(mo_stack, OG_ROUTE)
    n = lambda: len(w.keys("ogangi"))  # noqa: E731
    async with Watch(mo_stack) as w:
        # killed half-way through the first page's produces, before its commit
        c = await Child(mo_stack, env, "og-1").start(step_s=0.02)
        await until_or_dead(w, c, lambda: n() >= 50, 30, "half of the first page")
        await c.kill_9()
        assert has_intent(w, OG_POLLER)()
        # messages arrive while no poller runs
        await admin_post(url, [{"from": f"58414{i % 5:07d}", "text": f"second {i}"} for i in range(40)])
        c = await Child(mo_stack, env, "og-2").start()
        await until_or_dead(w, c, lambda: n() >= 170, 30, "every MO of both batches")
        await c.stop()
        # a clean restart, more messages, and the list re-read from the cursor
        await admin_post(url, [{"from": "584150000001", "text": f"third {i}"} for i in range(5)])
        c = await Child(mo_stack, env, "og-3").start()
        await until_or_dead(w, c, lambda: n() >= 175, 30, "the third batch")
        await asyncio.sleep(0.8)
        await c.stop()
        await asyncio.sleep(0.3)
        counts = w.keys("ogangi")
    texts = Counter(r["text"] for r in w.inbound)
    assert len(counts) == 175 and max(counts.values()) == 1, f"{sum(counts.values())} records for {len(counts)} keys"
    assert len(texts) == 175 and max(texts.values()) == 1
    assert (w.latest_state(OG_POLLER) or {}).get("position") == {"cursor": 175}
