"""Scheduled sends and quiet hours on a real broker: never sent before send_at (the simulator's own
clock of each first send), a far send_at at the head of a partition holds nothing up, quiet hours
hold a message to their end, and kill -9 while messages wait loses, repeats and hurries nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest

from connector import contract as topics
from connector.devtools.stack import Follower, LocalStack, produce
from connector.records import iso
from tests.integration.helpers import Phases, metric_sum, outbound, phone, size

pytestmark = pytest.mark.integration

LAP_S = 10    # the shortest lap allowed: messages due more than 10 s ahead go through sms.outbound.scheduled
ENV = {"SMS_CONNECTOR_DISPATCH__SCHEDULE_LAP_S": str(LAP_S)}
ROUTE = {"smpp": {"provider": "smpp_rest", "concurrency": "32"}}


# Quiet hours (to the second, HH:MM:SS) end QUIET_PICK_S after they are chosen, before the worker
# starts. Once the worker runs, at least QUIET_LEFT_S must remain for the messages to be read while
# quiet and the bypassing ones to be sent (measured: 2.3 s on the loaded shared machine; the
# worker's start took ~5 s); a slower start picks a new window, as long again as that start plus
# QUIET_LEFT_S, with a new worker.
QUIET_PICK_S, QUIET_LEFT_S = 14, 8


def quiet_until(ahead_s: float) -> tuple[str, float]:
    """UTC quiet hours from an hour ago to ``ahead_s`` from now (whole seconds), and the epoch of
    their end."""
    now = datetime.now(timezone.utc)
    end = (now + timedelta(seconds=ahead_s + 1)).replace(microsecond=0)
    return f"{now - timedelta(hours=1):%H:%M}-{end:%H:%M:%S}", end.timestamp()


async def test_scheduled_and_quiet_hours_messages_are_sent_on_time_and_never_early(stack: LocalStack) -> None:
    phases, ahead_s = Phases(), QUIET_PICK_S
    while True:
        quiet, quiet_end = quiet_until(ahead_s)
        routes = {"smpp": {**ROUTE["smpp"], "quiet_hours": quiet}}
        picked = time.time()
        worker = await stack.start_worker(env=ENV, routes=routes)
        if quiet_end - time.time() >= QUIET_LEFT_S:
            break
        ahead_s = time.time() - picked + QUIET_LEFT_S + 2
        assert await worker.stop(timeout=40) == 0
    phases.done("worker start")
    now = time.time()
    send_at: dict[str, float] = {}
    records = []
    # first on its partition: a send_at a day ahead; behind it, same key, messages due in 3-16 s:
    # those due within the lap (10 s) are held, those due 12 s and more wait in sms.outbound.scheduled
    head = phone(1)
    records.append(outbound("far", head, send_at=now + 86400, bypass_quiet_hours=True))
    for i in range(60):
        cid, when = f"at-{i}", now + 3 + (i % 12) * 1.2
        send_at[cid] = when
        records.append(outbound(cid, head if i % 3 == 0 else phone(i + 10), send_at=when, bypass_quiet_hours=True))
    # in the route's quiet hours (UTC, named by the record): held to their end; a bypass goes now
    records += [outbound(f"quiet-{i}", phone(100 + i), recipient_time_zone="UTC") for i in range(10)]
    records += [outbound(f"otp-{i}", phone(200 + i), recipient_time_zone="UTC", bypass_quiet_hours=True)
                for i in range(10)]
    for i in range(10):
        send_at[f"quiet-{i}"] = quiet_end
    ids = [*send_at, *(f"otp-{i}" for i in range(10))]
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        await produce(stack.kafka, records)
        otp = [f"otp-{i}" for i in range(10)]
        assert await f.wait_for(otp, timeout=30)
        otp_s = time.time() - now
        phases.done("produce, bypassing sends")
        assert await f.wait_for(ids, timeout=150, settle_s=2.0), f"missing {f.tally.missing(ids)}"
        phases.done("the rest sent, settle")
        await asyncio.sleep(1)
        deferred = await metric_sum(worker.url, "sms_deferred_total")
        waiting = await metric_sum(worker.url, "sms_deferred_waiting")
    sent = await stack.sim_sent_at("smpp_rest")
    late = {cid: round(sent[cid] - send_at[cid], 2) for cid in send_at}
    early = {cid: d for cid, d in late.items() if d < 0}
    print(f"\nscheduled: {len(send_at)} messages (lap {LAP_S} s), sent after their send_at by "
          f"{min(late.values()):.2f}..{max(late.values()):.2f} s; quiet hours ended {quiet_end - now:.0f} s after "
          f"produce; bypassing ones done in {otp_s:.1f} s; deferred_total {deferred}, still waiting {waiting:.0f}; {phases}")
    assert early == {}, f"sent before send_at: {early}"
    assert "far" not in sent and f.tally.seen["far"] == 0          # a day ahead: still waiting
    assert waiting >= 1
    assert otp_s < quiet_end - now
    assert f.tally.duplicates(ids) == 0 and (await stack.sim_stats("smpp_rest"))["duplicate_ids"] == 0
    for cid in ids:
        [r] = f.tally.records[cid]
        assert r["outcome"] == "accepted"
        assert r["headers"][topics.HEADER_SOURCE_TOPIC] == "sms.outbound"   # through both topics, it names its input
    # nothing waited much longer than it had to (a loaded machine may add a few seconds)
    assert max(late.values()) < 15


async def test_kill_9_while_scheduled_and_held_messages_wait(stack: LocalStack) -> None:
    """Some messages are held in memory (due within a lap), others wait in sms.outbound.scheduled
    for their next check; the worker is killed, another takes over: each is sent once, on time."""
    phases = Phases()
    worker = await stack.start_worker(env=ENV, routes=ROUTE)
    phases.done("worker start")
    now = time.time()
    n = size(600, 150)
    send_at = {f"held-{i}": now + 6 + (i % 5) for i in range(n)}             # within one lap: held
    send_at |= {f"sched-{i}": now + 14 + (i % 4) for i in range(n)}          # beyond: the scheduled topic
    records = [outbound(cid, phone(i % 90), send_at=when) for i, (cid, when) in enumerate(send_at.items())]
    ids = list(send_at)
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        await produce(stack.kafka, records)
        deadline = time.monotonic() + 30
        while await metric_sum(worker.url, "sms_deferred_total") < len(ids):
            assert time.monotonic() < deadline, "the messages were not all deferred"
            await asyncio.sleep(0.2)
        # held once read back: with exactly-once the hand-offs are read after their transaction commits
        while await metric_sum(worker.url, "sms_deferred_waiting") == 0:
            assert time.monotonic() < deadline, "no deferred message was held"
            await asyncio.sleep(0.1)
        phases.done("produce, all deferred")
        worker.kill()
        await worker.proc.wait()
        assert time.time() < now + 6, "killed too late: the test would not show held messages surviving"
        await stack.start_worker(env=ENV, routes=ROUTE)
        phases.done("kill, restart")
        assert await f.wait_for(ids, timeout=120, settle_s=3.0), f"missing {len(f.tally.missing(ids))}"
        phases.done("all sent, settle")
    sent = await stack.sim_sent_at("smpp_rest")
    stats = await stack.sim_stats("smpp_rest")
    early = {cid: round(sent[cid] - send_at[cid], 3) for cid in ids if sent[cid] < send_at[cid]}
    late = [sent[cid] - send_at[cid] for cid in ids]
    print(f"\nkill -9 with {len(ids)} messages waiting (half held, half in the scheduled topic): terminal "
          f"{sum(f.tally.seen[c] for c in ids)}, duplicates {f.tally.duplicates(ids)}, provider sends "
          f"{stats['messages']}, late by {min(late):.2f}..{max(late):.2f} s; {phases}")
    assert f.tally.missing(ids) == []
    assert early == {}, f"sent before send_at: {early}"
    assert f.tally.duplicates(ids) == 0 and stats["duplicate_ids"] == 0 and stats["messages"] == len(ids)
    assert all(f.tally.records[c][0]["outcome"] == "accepted" for c in ids)


async def test_a_rebalance_while_messages_wait_moves_them_with_their_partitions(stack: LocalStack) -> None:
    """A second worker joins while messages are held and in the scheduled topic, then the first
    leaves: the partitions (outbound, retry, scheduled, ledger) move together; none lost, early or twice."""
    phases = Phases()
    first = await stack.start_worker(env=ENV, routes=ROUTE)
    phases.done("worker start")
    now = time.time()
    send_at = {f"mv-held-{i}": now + 8 + (i % 2) for i in range(100)}
    send_at |= {f"mv-sched-{i}": now + 14 + (i % 4) for i in range(100)}    # beyond the lap, as in the kill test
    ids = list(send_at)
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        await produce(stack.kafka, [outbound(cid, phone(i % 60), send_at=when) for i, (cid, when) in enumerate(send_at.items())])
        deadline = time.monotonic() + 30
        while await metric_sum(first.url, "sms_deferred_total") < len(ids):
            assert time.monotonic() < deadline, "the messages were not all deferred"
            await asyncio.sleep(0.2)
        phases.done("produce, all deferred")
        second = await stack.start_worker(env=ENV, routes=ROUTE)
        phases.done("second worker start")
        assert await f.wait_for(ids, timeout=120, settle_s=3.0), f"missing {len(f.tally.missing(ids))}"
        phases.done("all sent, settle")
        by_second = await metric_sum(second.url, "sms_outbound_accepted_total")
        assert await first.stop(timeout=40) == 0 and second.alive
        phases.done("first stopped")
    sent = await stack.sim_sent_at("smpp_rest")
    stats = await stack.sim_stats("smpp_rest")
    early = {cid: round(sent[cid] - send_at[cid], 3) for cid in ids if sent[cid] < send_at[cid]}
    print(f"\nrebalance with {len(ids)} messages waiting: terminal {sum(f.tally.seen[c] for c in ids)}, duplicates "
          f"{f.tally.duplicates(ids)}, provider sends {stats['messages']}, sent by the worker that joined {by_second:.0f}; {phases}")
    assert f.tally.missing(ids) == [] and early == {}
    assert f.tally.duplicates(ids) == 0 and stats["duplicate_ids"] == 0 and stats["messages"] == len(ids)
