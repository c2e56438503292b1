"""membership: the dispatch worker's local answer to "may I still send for my partitions?", and
the sender's gate that asks it before every provider call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator

from connector.config import Secret
from connector.http import HttpRequest, HttpResponse
from connector.providers.smpp_rest import SmppRest, SmppRestConfig
from connector.records import OutboundSms, Recipient
from connector.sender import RouteSender
from connector.streams.membership import LOST, OK, SUSPECT, UNKNOWN_MEMBER, Membership, OwnershipLost
from connector.transport import HttpTransport


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Coordinator:
    """The parts of aiokafka's GroupCoordinator the fence reads."""

    def __init__(self) -> None:
        self.generation, self.member_id = 3, "member-a"
        self.beats: list[bool] = []
        self.resets = 0

    async def _do_heartbeat(self) -> bool:
        return self.beats.pop(0) if self.beats else True

    def reset_generation(self) -> None:
        self.resets += 1
        self.generation, self.member_id = -1, UNKNOWN_MEMBER


def fenced(session_s: float = 15.0, interval_s: float = 3.0) -> tuple[Membership, Coordinator, Clock]:
    clock, coordinator = Clock(), Coordinator()
    m = Membership(session_s, interval_s, clock=clock)
    m.attach(type("Consumer", (), {"_coordinator": coordinator})())
    m.assigned()
    return m, coordinator, clock


def test_aiokafka_still_has_the_hooks_the_fence_uses() -> None:
    """An aiokafka upgrade that renames them must fail here, not silently unfence the worker."""
    assert callable(getattr(GroupCoordinator, "_do_heartbeat", None))
    assert callable(getattr(GroupCoordinator, "reset_generation", None))
    with pytest.raises(RuntimeError):
        Membership(15, 3).attach(type("Consumer", (), {"_coordinator": object()})())


async def test_a_frozen_worker_knows_on_waking_that_its_session_is_gone() -> None:
    m, coordinator, clock = fenced()
    assert m.state() == OK
    clock.now += 30                       # SIGSTOP for 30 s: no heartbeat could be sent
    with pytest.raises(OwnershipLost):
        await m.check()
    assert m.state() == LOST and coordinator.resets == 1     # rejoin at once, with a new member id
    clock.now += 1
    await coordinator._do_heartbeat()     # even a heartbeat that succeeds now does not undo it
    assert m.state() == LOST
    m.assigned()                          # the rejoin completed: a fresh assignment
    assert m.state() == OK


async def test_a_late_heartbeat_holds_calls_until_one_succeeds() -> None:
    m, coordinator, clock = fenced(session_s=15, interval_s=3)
    clock.now += 12.5                     # past session - interval: may be about to expire
    assert m.state() == SUSPECT
    call = asyncio.create_task(m.check())
    await asyncio.sleep(0.01)
    assert not call.done()
    await coordinator._do_heartbeat()     # a heartbeat (sent now) succeeds
    await asyncio.wait_for(call, 1)
    assert m.state() == OK and coordinator.resets == 0


async def test_a_failed_heartbeat_does_not_refresh_the_session() -> None:
    m, coordinator, clock = fenced(session_s=10, interval_s=2)
    clock.now += 5
    coordinator.beats = [False]
    await coordinator._do_heartbeat()
    clock.now += 5.5                      # 10.5 s since the last success
    assert m.state() == LOST


@pytest.mark.parametrize("change", ["generation", "member"])
def test_a_reset_generation_or_member_means_lost(change: str) -> None:
    m, coordinator, _ = fenced()
    if change == "generation":
        coordinator.generation = 4        # e.g. a refused commit: aiokafka reset and rejoined
    else:
        coordinator.member_id = UNKNOWN_MEMBER
    assert m.state() == LOST


def test_nothing_assigned_nothing_to_guard() -> None:
    m, coordinator, clock = fenced()
    m.revoked()
    clock.now += 100
    assert m.state() == OK and coordinator.resets == 0


def test_the_loss_is_reported_once_to_the_dispatcher() -> None:
    m, _, clock = fenced()
    reasons: list[str] = []
    m.on_lost = reasons.append
    clock.now += 20
    assert m.lost and m.lost and len(reasons) == 1 and "heartbeat" in reasons[0]


# --- the sender's gate -------------------------------------------------------------------------

def smpp_sender(batch_max: int) -> tuple[RouteSender, list[HttpRequest]]:
    calls: list[HttpRequest] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        calls.append(request)
        raise AssertionError("no call may start once ownership is lost")

    provider = SmppRest(SmppRestConfig(base_url="https://gw.example", api_key=Secret("k"), channel="String"),
                        route="smpp")
    return RouteSender(provider, HttpTransport(handler=handler), batch_max=batch_max, batch_linger_ms=1), calls


def msg(i: int, provider: Any) -> Any:
    return provider.prepare(OutboundSms(client_message_id=f"c{i}", recipient=Recipient(phone=f"+1415555{i:04d}"),
                                        text="hi"))


@pytest.mark.parametrize("batch_max", [1, 10])
async def test_no_provider_call_starts_when_the_gate_refuses(batch_max: int) -> None:
    sender, calls = smpp_sender(batch_max)

    async def gate() -> None:
        raise OwnershipLost("expelled")

    sender.gate = gate
    results = await asyncio.gather(*(sender.send(msg(i, sender.provider)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, OwnershipLost) for r in results) and calls == []
    await sender.aclose()


# --- the dispatcher on a loss --------------------------------------------------------------------

async def test_a_dispatcher_that_lost_its_partitions_starts_no_call_and_leaves_its_records_uncommitted() -> None:
    from aiokafka import ConsumerRecord, TopicPartition

    from connector import contract as topics
    from connector.config import load
    from connector.offsets import PartitionProgress
    from connector.pipeline import Verdict
    from connector.routing import Router
    from connector.streams.dispatch import Dispatcher

    # the per-record path (its outcome and produce are replaced below); the wave path's loss:
    # tests/unit/test_waves.py
    settings = load(environ={"SMS_CONNECTOR_DISPATCH__WAVES": "false"})
    d = Dispatcher(settings, {}, Router.from_settings(settings.routing, {}))
    d.ledger = None
    clock, coordinator = Clock(), Coordinator()
    d.membership.clock = clock
    d.membership.attach(type("Consumer", (), {"_coordinator": coordinator})())
    tp = TopicPartition(topics.spec("outbound").name, 4)
    d.on_assigned([tp])
    calls: list[int] = []
    first_call = asyncio.Event()
    release = asyncio.Event()

    async def outcome(value: Any, *args: Any) -> Verdict:
        await d._may_call()                   # what every sender does right before its call
        calls.append(int(value))
        if len(calls) == 1:
            first_call.set()
            await release.wait()              # a call in progress when the worker freezes
        return Verdict("failed", b"{}")

    async def produce(rec: Any, t: Verdict) -> None:
        return None

    d.pipeline.outcome = outcome              # type: ignore[method-assign]
    d._produce = produce                      # type: ignore[method-assign]
    records = [ConsumerRecord(tp.topic, 4, i, 0, 0, b"same-key", str(i).encode(), None, 8, 1, [])
               for i in range(5)] + [ConsumerRecord(tp.topic, 4, 5, 0, 0, b"other", b"5", None, 5, 1, [])]
    d._take(tp, records)                      # key "same-key": a chain of five; key "other": one
    await asyncio.wait_for(first_call.wait(), 1)
    await asyncio.sleep(0.01)
    assert calls == [0, 5] or calls == [0]    # the other key may have gone through already
    clock.now += 30                           # frozen past the session
    release.set()                             # the call in progress finishes after waking
    for _ in range(100):
        if d.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert d.in_flight == 0 and calls[0] == 0 and set(calls) <= {0, 5} and 1 not in calls
    assert d.membership.lost and coordinator.resets == 1
    progress = d._progress[tp]
    assert progress.revoked and progress.committable() == 1   # only the finished record is before it
    d._take(tp, [ConsumerRecord(tp.topic, 4, 6, 0, 0, b"k", b"6", None, 1, 1, [])])
    assert d.in_flight == 0                   # nothing more is taken
    await d.on_revoked([tp])                  # the rejoin: no drain, no commit
    assert tp not in d._progress
    d.on_assigned([tp])                       # a fresh assignment after the rejoin
    assert d.membership.state() == OK and isinstance(d._progress[tp], PartitionProgress)
