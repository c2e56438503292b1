"""A stop during start-up or during a partition assignment (test_shutdown.py runs both on a broker)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

from connector.kafka import _cancel_safe
from connector.streams.plumbing import unless_stopped


async def test_unless_stopped_returns_the_work_s_result_when_it_ends_first() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await unless_stopped(asyncio.Event(), work()) == (True, 7)


async def test_a_stop_cancels_the_work_and_lets_it_close_what_it_opened() -> None:
    stop, began, closed = asyncio.Event(), asyncio.Event(), []

    async def work() -> None:
        try:
            began.set()
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0)      # a close that awaits
            closed.append(True)

    task = asyncio.ensure_future(unless_stopped(stop, work()))
    await began.wait()
    stop.set()
    assert await asyncio.wait_for(task, 1) == (False, None)
    assert closed == [True]


async def test_work_is_not_begun_once_stopped() -> None:
    stop, ran = asyncio.Event(), []
    stop.set()

    async def work() -> None:
        ran.append(True)

    assert await unless_stopped(stop, work()) == (False, None)
    assert ran == []


async def test_the_work_s_own_failure_is_raised() -> None:
    async def work() -> None:
        raise RuntimeError("topic sizes differ")

    try:
        await unless_stopped(asyncio.Event(), work())
    except RuntimeError as exc:
        assert "sizes" in str(exc)
    else:
        raise AssertionError("not raised")


async def test_a_cancelled_client_start_stops_at_once_and_closes_aiokafka_s_bootstrap_connection() -> None:
    """aiokafka's own bootstrap (the installed version) against a broker that accepts and never
    answers: cancelled during its metadata request, it would leave its connection open (an ERROR
    "Unclosed AIOKafkaConnection" when collected). Cancelled, it ends at once, not after the
    request timeout (``check --timeout`` against a stalled broker), and its connection is closed."""
    from aiokafka.client import AIOKafkaClient

    accepted, closed = asyncio.Event(), asyncio.Event()

    async def stalled_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        while await reader.read(65536):     # reads requests, answers none
            pass
        closed.set()
        writer.close()

    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context.get("message"))))
    server = await asyncio.start_server(stalled_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AIOKafkaClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=30000)
    start = asyncio.ensure_future(client.bootstrap())
    await asyncio.wait_for(accepted.wait(), 5)
    await asyncio.sleep(0.05)                # the metadata request sent
    t0 = asyncio.get_running_loop().time()
    start.cancel()
    try:
        await start
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the cancellation was swallowed")
    assert asyncio.get_running_loop().time() - t0 < 1.0
    await asyncio.wait_for(closed.wait(), 2)
    with warnings.catch_warnings(record=True) as unclosed:
        warnings.simplefilter("always")
        gc.collect()                          # an unclosed connection says so when collected
    assert not [m for m in reported if "Unclosed AIOKafkaConnection" in m], reported
    assert not [w for w in unclosed if "Unclosed AIOKafkaConnection" in str(w.message)]
    loop.set_exception_handler(None)
    await client.close()
    server.close()
    await server.wait_closed()
    assert _cancel_safe(AIOKafkaClient.bootstrap) is AIOKafkaClient.bootstrap     # wrapped once


def _dispatcher(stop: asyncio.Event, exactly_once: bool) -> Any:
    from connector.config import load
    from connector.routing import Router
    from connector.streams.dispatch import Dispatcher

    settings = load(environ={})
    d = Dispatcher(settings, {}, Router.from_settings(settings.routing, {}), exactly_once=exactly_once)
    d._stop = stop
    return d


async def test_an_assignment_once_stopping_starts_no_committer_ledger_or_load() -> None:
    """The consumer's close lets a rebalance under way finish, assignment callback included: once
    the worker stops, that callback starts nothing (the old code started a transactional
    producer per partition there, never closed)."""
    from aiokafka import TopicPartition

    from connector import contract as topics

    stop = asyncio.Event()
    stop.set()
    for eos in (True, False):
        d = _dispatcher(stop, exactly_once=eos)
        started: list[Any] = []
        d._start_committers = lambda partitions: started.append(partitions)  # type: ignore[method-assign]
        d._assigned = lambda assigned: started.append(assigned)  # type: ignore[method-assign]
        assert d.on_assigned([TopicPartition(topics.spec("outbound").name, p) for p in range(3)]) is None
        assert started == [] and d.assigned == 0 and d._committers == {}


async def test_committers_whose_start_a_stop_overtook_are_closed() -> None:
    """A stop while the assignment's transactional producers initialise: those up are closed
    (uncommitted, nothing was taken), no other starts, and the partitions are not resumed."""
    from aiokafka import TopicPartition

    from connector import contract as topics
    from connector.streams import dispatch

    stop = asyncio.Event()
    d = _dispatcher(stop, exactly_once=True)
    closed: list[bool] = []
    resumed: list[Any] = []
    began: list[int] = []

    class Consumer:
        def pause(self, *tps: Any) -> None:
            pass

        def resume(self, *tps: Any) -> None:
            resumed.append(tps)

    class Committer:
        def __init__(self, producer: Any, *args: Any, **kwargs: Any) -> None:
            self.txp = producer

        async def start(self) -> None:
            began.append(1)
            stop.set()                    # the SIGTERM lands while InitProducerId is under way
            await asyncio.sleep(0)
            self.txp._producer = object()

        async def close(self, commit: bool, timeout: float) -> None:
            closed.append(commit)

    d._consumer = Consumer()
    d._assigned = lambda assigned: resumed.append(assigned)  # type: ignore[method-assign]
    real = dispatch.PartitionCommitter
    dispatch.PartitionCommitter = Committer  # type: ignore[misc, assignment]
    try:
        await d._assign_transactional([TopicPartition(topics.spec("outbound").name, p) for p in range(2)])
    finally:
        dispatch.PartitionCommitter = real  # type: ignore[misc]
    # the first one started is closed; the other one's start is not begun once stopping
    assert began == [1] and closed == [False] and d._committers == {} and resumed == []
