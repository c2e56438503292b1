"""``stop_client`` / ``close_reader``: a client's Kafka work is waited for in full, the close of its
connections briefly, never for TLS's 30 s close."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from connector.streams import plumbing
from connector.streams.plumbing import close_reader, stop_client


class Connections:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def close(self) -> None:
        await asyncio.sleep(self.seconds)


class SlowToClose:
    """A client as aiokafka's stop() runs: its work (flush, commit, LeaveGroup: ``work_s``), then
    the close of its connections (``seconds``: TLS's close_notify)."""

    def __init__(self, seconds: float, error: Exception | None = None, work_s: float = 0) -> None:
        self.seconds, self.error, self.work_s, self.stopped, self.worked = seconds, error, work_s, False, False
        self.conns = self._client = Connections(seconds)

    async def stop(self) -> None:
        await asyncio.sleep(self.work_s)
        self.worked = True
        await self.conns.close()
        if self.error is not None:
            raise self.error
        self.stopped = True


class SlowProducer(SlowToClose):
    """A producer: aiokafka's keeps its client as ``client``."""

    def __init__(self, seconds: float, work_s: float = 0) -> None:
        super().__init__(seconds, work_s=work_s)
        del self._client
        self.client = self.conns


async def test_a_clients_work_is_never_cut_short_only_the_close_of_its_connections() -> None:
    for client in (SlowToClose(5, work_s=0.3), SlowProducer(5, work_s=0.3)):
        began = time.monotonic()
        await stop_client(client, wait_s=0.05)
        took = time.monotonic() - began
        assert client.worked and 0.3 <= took < 1.5 and not client.stopped, took
    for task in list(plumbing._CLOSING):
        task.cancel()


async def test_a_close_that_hangs_finishes_in_the_background() -> None:
    reader = SlowToClose(0.5)
    began = time.monotonic()
    await close_reader(reader, wait_s=0.05)  # type: ignore[arg-type]
    assert time.monotonic() - began < 0.4 and not reader.stopped
    assert len(plumbing._CLOSING) == 1
    await asyncio.sleep(0.6)
    assert reader.stopped and not plumbing._CLOSING


async def test_a_prompt_close_is_waited_for_and_its_failure_raised() -> None:
    reader = SlowToClose(0)
    await close_reader(reader)  # type: ignore[arg-type]
    assert reader.stopped
    with pytest.raises(RuntimeError, match="broken"):
        await close_reader(SlowToClose(0, RuntimeError("broken")))  # type: ignore[arg-type]


async def test_a_late_failure_in_the_background_is_not_reported() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    await close_reader(SlowToClose(0.1, RuntimeError("late")), wait_s=0.01)  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    gc.collect()
    assert errors == []


async def test_aiokafkas_clients_close_their_connections_last_through_the_client_stop_client_bounds() -> None:
    """The shape ``stop_client`` relies on, in the aiokafka installed: a producer's, a consumer's
    and an admin client's stop() end with their client's close() (the connections: TLS's wait)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    hung, closing = asyncio.Event(), []

    async def never_answered() -> None:   # a close_notify the broker never answers
        closing.append(1)
        await hung.wait()

    for client in (AIOKafkaProducer(bootstrap_servers="127.0.0.1:9"), AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9"),
                   AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9")):
        kafka = getattr(client, "_client", None) or client.client
        kafka.close = never_answered
        began = time.monotonic()
        await stop_client(client, wait_s=0.1)
        assert time.monotonic() - began < 1.0, type(client).__name__
    assert len(closing) == len(plumbing._CLOSING) == 3
    hung.set()
    await asyncio.sleep(0.05)
    assert not plumbing._CLOSING
