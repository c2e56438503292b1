"""pollers: dedupe decisions, cursors, state encoding, and exactly-once under a crash at every step.

The crash tests run the real poller logic against in-memory stand-ins (a ThingSpace queue with
token acknowledgement, an Ogangi list, the state topic, ``sms.inbound``): the "process" dies after
each effect in turn (a provider answer, a durable state write, an acknowledged produce), a new
poller restarts from the durable state, and every dedupe key must end in ``sms.inbound`` once.
"""

from __future__ import annotations

import random
import zlib
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import pytest

from connector import metrics
from connector.config import Secret
from aiokafka.errors import KafkaTimeoutError

from connector.errors import Retriable, Throttled
from connector.keywords import Keywords
from connector.providers import ogangi as og
from connector.providers import thingspace as ts
from connector.records import InboundSms, Recipient
from connector.providers.ogangi import mo_cursor_after as ogangi_cursor_after
from connector.providers.ogangi import mo_inbound as ogangi_inbound
from connector.providers.ogangi import mo_read_plan as ogangi_read_plan
from connector.providers.ogangi import mo_reset_cursor as ogangi_reset_cursor
from connector.providers.thingspace import mo_inbound as thingspace_inbound
from connector.streams.pollers import (
    ListMoPoller,
    QueueMoPoller,
    InboundLog,
    Intent,
    MoPoller,
    MoState,
    PollerState,
    SeenKeys,
    decode_mo,
    encode_mo,
    fresh_records,
    publish_groups,
    retry_delay,
)
from connector.policy import RetryPolicy

KEYWORDS = Keywords()


def mo(key: str, sender: str = "+15550001", at: str | None = None, text: str = "hi") -> InboundSms:
    return InboundSms(provider="ogangi", sender=Recipient(phone=sender), text=text, received_at=1.0, raw="{}",
                      dedupe_key=key, occurred_at=at)


# --- pure decisions ---------------------------------------------------------------------------

@pytest.mark.parametrize("seen, keys, fresh", [
    ([], ["a", "b", "c"], ["a", "b", "c"]),
    (["b"], ["a", "b", "c"], ["a", "c"]),
    ([], ["a", "b", "a", "c", "b"], ["a", "b", "c"]),        # duplicates inside one block
    (["a", "b", "c"], ["c", "b", "a"], []),                   # a block sent again after a restart
    (["x"], ["c", "a", "c"], ["c", "a"]),                     # order of first appearance kept
])
def test_fresh_records(seen: list[str], keys: list[str], fresh: list[str]) -> None:
    assert [r.dedupe_key for r in fresh_records([mo(k) for k in keys], SeenKeys(10, seen))] == fresh


def test_seen_keys_are_bounded_and_refreshed() -> None:
    s = SeenKeys(3, ["a", "b", "c"])
    s.add(["a"])             # refreshed: now the newest
    s.add(["d"])             # evicts the oldest, b
    assert s.to_list() == ["c", "a", "d"] and "b" not in s and len(s) == 3
    s.add(["e", "f", "g", "h"])
    assert s.to_list() == ["f", "g", "h"]
    with pytest.raises(ValueError):
        SeenKeys(0)


def test_publish_groups_keep_each_sender_in_time_order() -> None:
    records = [mo("1", "+1a", "2024-01-01T00:00:03Z", "START"), mo("2", "+1b", "2024-01-01T00:00:01Z"),
               mo("3", "+1a", "2024-01-01T00:00:01Z", "STOP"), mo("4", "+1a", None), mo("5", "+1b", None)]
    groups = publish_groups(records)
    assert [[r.dedupe_key for r in g] for g in groups] == [["4", "3", "1"], ["5", "2"]]


@pytest.mark.parametrize("cursor, per_page, overlap, plan", [
    (0, 100, 20, (1, 0)),
    (10, 100, 20, (1, 0)),
    (120, 100, 20, (2, 0)),
    (150, 100, 20, (2, 30)),
    (100, 100, 20, (1, 80)),      # re-read the tail of page 1, then page 2
    (250, 100, 0, (3, 50)),
    (7, 3, 2, (2, 2)),
])
def test_ogangi_read_plan(cursor: int, per_page: int, overlap: int, plan: tuple[int, int]) -> None:
    assert ogangi_read_plan(cursor, per_page, overlap) == plan


@pytest.mark.parametrize("cursor, page, per_page, count, after", [
    (0, 1, 100, 0, 0),
    (0, 1, 100, 40, 40),
    (100, 1, 100, 100, 100),      # an overlap re-read of page 1 does not move the cursor
    (150, 1, 100, 100, 150),      # nor back
    (150, 2, 100, 70, 170),
])
def test_ogangi_cursor_after(cursor: int, page: int, per_page: int, count: int, after: int) -> None:
    assert ogangi_cursor_after(cursor, page, per_page, count) == after


@pytest.mark.parametrize("cursor, total, window, reset", [
    (100, 100, 500, None),
    (100, 150, 500, None),
    (100, 60, 500, 0),
    (1000, 800, 500, 300),
])
def test_ogangi_reset_cursor(cursor: int, total: int, window: int, reset: int | None) -> None:
    assert ogangi_reset_cursor(cursor, total, window) == reset


@pytest.mark.parametrize("error, attempt, rand, expected", [
    (Retriable("x"), 1, lambda: 0.0, 1.0),          # never below the base delay
    (Retriable("x"), 3, lambda: 1.0, 4.0),
    (Retriable("x"), 30, lambda: 1.0, 60.0),        # capped
    (Throttled("x", retry_after=42), 1, lambda: 0.0, 42.0),
    (Throttled("x", retry_after=9999), 1, lambda: 0.0, 300.0),
    (Throttled("x"), 2, lambda: 1.0, 2.0),
])
def test_retry_delay(error: Exception, attempt: int, rand: Any, expected: float) -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, max_retry_after_s=300.0)
    assert retry_delay(error, attempt, policy, rand) == expected


# --- records ----------------------------------------------------------------------------------

def ts_message(device_id: str, text: str, timestamp: str = "2024-05-01T10:00:00Z", kind: str = "MDN") -> ts.MoMessage:
    raw = {"deviceIds": [{"id": device_id, "kind": kind}], "message": text, "timestamp": timestamp}
    return ts.MoMessage(device_kind=kind.upper(), device_id=device_id, text=text, timestamp=timestamp, raw=raw)


def test_thingspace_record() -> None:
    m = ts_message("4155550123", "stop")
    r = thingspace_inbound(m, KEYWORDS, 100.0)
    assert (r.provider, r.sender.key(), r.dedupe_key, r.keyword, r.optout, r.occurred_at) == (
        "thingspace", "MDN:4155550123", m.dedupe_key, "STOP", "stop", "2024-05-01T10:00:00Z")
    again = thingspace_inbound(ts_message("4155550123", "stop"), KEYWORDS, 200.0)
    assert again.dedupe_key == r.dedupe_key                       # stable across re-deliveries
    assert thingspace_inbound(ts_message("4155550123", "stop", "2024-05-01T10:00:01Z"), KEYWORDS,
                              1.0).dedupe_key != r.dedupe_key
    assert thingspace_inbound(ts_message("4155550123", "please stop by"), KEYWORDS, 1.0).optout is None


@pytest.mark.parametrize("sender, text, keyword, phone, optout, kw", [
    ("584121234567", "STOP", "^STOP.*", "+584121234567", "stop", "STOP"),    # the provider's rule stays in raw
    ("584121234567", "stop now", "^STOP.*", "+584121234567", None, "STOP"),
    ("+584121234567", "start!", None, "+584121234567", "start", "START"),
    ("584121234567", "hello there", "", "+584121234567", None, "HELLO"),
    ("shortcode", "x", None, "shortcode", None, "X"),
    ("shortcode", "STOP", None, "shortcode", None, "STOP"),      # not a number: cannot opt out
])
def test_ogangi_record(sender: str, text: str, keyword: str | None, phone: str, optout: str | None,
                       kw: str) -> None:
    m = og.MoMessage(text=text, sender=sender, to="55555", encoding="UTF-8", keyword=keyword, carrier="C",
                     send_date="2024-05-01 10:00:00.123")
    r = ogangi_inbound(m, KEYWORDS, 1.0)
    assert (r.sender.phone, r.optout, r.keyword, r.to) == (phone, optout, kw, "55555")
    assert r.dedupe_key == ogangi_inbound(m, KEYWORDS, 2.0).dedupe_key


@pytest.mark.parametrize("record", [
    mo("k1", "+15550001", "2024", "STOP"),
    thingspace_inbound(ts_message("4155550123", "héllo"), KEYWORDS, 1.5),
])
def test_intent_records_round_trip(record: InboundSms) -> None:
    back = decode_mo(orjson.loads(orjson.dumps(encode_mo(record))))
    assert back == record and back.encode() == record.encode() and back.key == record.key


def test_state_round_trip_and_unreadable_states() -> None:
    st = MoState({"token": "T"}, ["a", "b"], Intent([mo("a")], {0: 3, 7: 12}, {"token": "U"}))
    back = MoState.from_json(orjson.loads(orjson.dumps(st.as_json())))
    assert back.position == {"token": "T"} and back.seen == ["a", "b"]
    assert back.intent is not None and back.intent.offsets == {0: 3, 7: 12} and back.intent.records == [mo("a")]
    for bad in (None, [], {"v": 99}, {"v": 1, "intent": {"records": [{}]}}):
        with pytest.raises(ValueError):
            MoState.from_json(bad)


# --- crash at every step ----------------------------------------------------------------------

class Crash(BaseException):
    """The process died (not an Exception: the poller's error handling must not see it)."""


class World:
    """What outlives a process: the provider, the state topic, sms.inbound. ``effect`` is called
    after each durable effect; the ``crash_at``-th one kills the process right after it."""

    def __init__(self, crash_at: set[int] | None = None) -> None:
        self.crash_at = crash_at or set()
        self.ops = 0
        self.dead = False
        self.state: dict[str, Any] = {}
        self.inbound: list[tuple[int, dict[str, Any]]] = []     # (partition, record)
        self.optout: list[tuple[str, bool]] = []                 # sms.optout: (phone, opted_out)
        self.broker_down = False                                 # a stalled broker: every write fails

    def alive(self) -> None:
        if self.dead:
            raise Crash()

    def broker(self) -> None:
        self.alive()
        if self.broker_down:
            raise KafkaTimeoutError()

    def effect(self) -> None:
        self.ops += 1
        if self.ops in self.crash_at:
            self.dead = True
            raise Crash()

    def restart(self) -> None:
        self.dead = False

    def keys(self, provider: str) -> list[str]:
        return [r["dedupe_key"] for _, r in self.inbound if r["provider"] == provider]


class MemoryState(PollerState):
    def __init__(self, world: World) -> None:
        self.world = world
        self.values = {k: orjson.loads(v) for k, v in world.state.items()}
        self.loaded = True

    async def save(self, name: str, value: Any) -> None:
        self.world.broker()
        self.world.state[name] = orjson.dumps(value)
        self.values[name] = orjson.loads(self.world.state[name])
        self.world.effect()


class MemoryInbound(InboundLog):
    PARTITIONS = 3

    def __init__(self, world: World) -> None:
        self.world = world

    async def end_offsets(self) -> dict[int, int]:
        self.world.broker()
        return {p: sum(1 for q, _ in self.world.inbound if q == p) for p in range(self.PARTITIONS)}

    async def find(self, provider: str, keys: Any, since: Any) -> set[str]:
        self.world.alive()
        wanted, found, seen = set(keys), set(), dict.fromkeys(range(self.PARTITIONS), 0)
        for p, r in self.world.inbound:
            if seen[p] >= since.get(p, 0) and r["provider"] == provider and r["dedupe_key"] in wanted:
                found.add(r["dedupe_key"])
            seen[p] += 1
        return found


class MemoryPublisher:
    def __init__(self, world: World) -> None:
        self.world = world

    async def publish_mo(self, m: InboundSms) -> None:
        self.world.broker()
        self.world.inbound.append((zlib.crc32(m.key) % MemoryInbound.PARTITIONS, orjson.loads(m.encode())))
        self.world.effect()
        await self.derive_optout(m)

    async def derive_optout(self, m: InboundSms) -> None:
        if m.optout and m.sender.phone:
            self.world.broker()
            self.world.optout.append((m.sender.phone, m.optout == "stop"))
            self.world.effect()


class TsQueue:
    """The simulator's MO queue rules (connector/devtools/simulators/thingspace.py), in memory."""

    def __init__(self, world: World, page_size: int) -> None:
        self.world = world
        self.page_size = page_size
        self.pending: list[dict[str, Any]] = []
        self.outstanding: tuple[str | None, list[dict[str, Any]], bool] | None = None
        self.last_acked: str | None = None
        self.n = 0
        # effects after which a crash may lose a block: a last page (200, no token) answered to a
        # request without a token; the restarted poller's first poll acknowledges it unseen
        self.unrecoverable: dict[int, list[dict[str, Any]]] = {}

    def history(self, token: str | None) -> ts.MoPage:
        self.world.alive()
        out = self.outstanding
        if token:
            if out is not None and out[0] == token:
                self.outstanding, self.last_acked, out = None, token, None
            elif token != self.last_acked:
                raise AssertionError(f"the poller sent a token the provider never gave: {token}")
        elif out is not None and out[0] is None:
            self.outstanding = out = None
        if out is None:
            block, self.pending = self.pending[:self.page_size], self.pending[self.page_size:]
            self.n += 1
            out = (f"T{self.n}" if self.pending else None, block, bool(self.pending))
            if block:
                self.outstanding = out
        tok, block, more = out
        if token is None and tok is None and block:
            self.unrecoverable[self.world.ops + 1] = block
        page = ts.MoPage(tuple(ts.MoMessage(device_kind=b["deviceIds"][0]["kind"], device_id=b["deviceIds"][0]["id"],
                                            text=b["message"], timestamp=b["timestamp"], raw=b) for b in block),
                         more, tok)
        self.world.effect()
        return page


class OgList:
    def __init__(self, world: World) -> None:
        self.world = world
        self.mo: list[og.MoMessage] = []

    def get(self, page: int, per_page: int) -> og.MoPage:
        self.world.alive()
        result = og.MoPage(len(self.mo), tuple(self.mo[(page - 1) * per_page: page * per_page]))
        self.world.effect()
        return result


TS_CONFIG = ts.ThingSpaceConfig(client_id="c", client_secret=Secret("s"), username="u", password=Secret("p"),
                                account_name="0000123456-00001")
OG_PROVIDER = og.Ogangi(og.OgangiConfig(base_url="http://og", public_key="pk", private_key=Secret("k"),
                                        instance_id="7"), route="og")


def ts_sender(queue: TsQueue) -> Any:
    async def call(build: Any, parse: Any) -> Any:
        token = parse_qs(urlsplit(build().url).query).get("next", [None])[0]
        return queue.history(token)
    return SimpleNamespace(route="ts", provider=ts.ThingSpace(TS_CONFIG, route="ts"), call=call)


def og_sender(mo_list: OgList) -> Any:
    async def call(build: Any, parse: Any) -> Any:
        parts = urlsplit(build().url).path.split("/")
        i = parts.index("getMOMessages")
        assert unquote(parts[i + 4]) == "order=ASC"
        return mo_list.get(int(parts[i + 2]), int(parts[i + 3]))
    return SimpleNamespace(route="og", provider=OG_PROVIDER, call=call)


def make_poller(kind: type[MoPoller], world: World, sender: Any, **kw: Any) -> MoPoller:
    poller = kind(f"{sender.provider.name}-mo:test", sender, MemoryState(world), MemoryInbound(world),
                  MemoryPublisher(world), interval_s=0, keywords=KEYWORDS, **kw)  # type: ignore[arg-type]
    poller.restore()
    return poller


async def drain(poller: MoPoller, idle_polls: int = 2) -> None:
    """What ``run`` does, without sleeps: recover, then poll until ``idle_polls`` empty polls."""
    idle = 0
    for _ in range(200):
        await poller.settle()
        if not await poller.poll_once():
            idle += 1
            if idle >= idle_polls:
                return
    raise AssertionError("the poller did not settle")


def ts_messages(n: int, dup_every: int = 4) -> list[dict[str, Any]]:
    """n messages; every dup_every-th one repeats an earlier or a later one (out of order)."""
    base = [{"deviceIds": [{"id": f"415555{i:04d}", "kind": "MDN"}], "message": f"m{i}",
             "timestamp": f"2024-05-01T10:00:{i:02d}Z"} for i in range(n)]
    out = list(base)
    for i in range(0, n, dup_every):
        out.insert(min(len(out), (i * 7 + 3) % (len(out) + 1)), dict(base[(i * 5) % n]))
    return out


async def run_ts(crash_at: set[int], messages: list[dict[str, Any]], page_size: int,
                 restarts: int) -> tuple[World, TsQueue]:
    world = World(crash_at)
    queue = TsQueue(world, page_size)
    queue.pending = list(messages)
    for _ in range(restarts + 1):
        world.restart()
        try:
            await drain(make_poller(QueueMoPoller, world, ts_sender(queue), seen_window=50))
            return world, queue
        except Crash:
            continue
    raise AssertionError("still crashing")


@pytest.mark.parametrize("page_size", [3, 100])
async def test_thingspace_exactly_once_whatever_step_the_process_dies_after(page_size: int) -> None:
    messages = ts_messages(11)
    distinct = {ts_key(m) for m in messages}
    clean, clean_queue = await run_ts(set(), messages, page_size, 0)
    assert sorted(clean.keys("thingspace")) == sorted(distinct)
    # With every message queued before the first poll, a last page is fetched without a token
    # only when it is also the first page.
    assert bool(clean_queue.unrecoverable) == (page_size >= len(messages))
    for k in range(1, clean.ops + 1):
        reported = at_risk("crash")
        world, queue = await run_ts({k}, messages, page_size, 1)
        keys = world.keys("thingspace")
        assert len(keys) == len(set(keys)), f"crash after effect {k}: duplicates"
        lost = distinct - set(keys)
        allowed = {ts_key(m) for m in clean_queue.unrecoverable.get(k, ())}
        assert lost <= allowed, f"crash after effect {k}: {len(lost)} lost"
        if lost:   # the API's open window: never silent
            assert at_risk("crash") == reported + 1, f"crash after effect {k}: loss not reported"
        assert queue.pending == [] and queue.outstanding is None


def at_risk(reason: str) -> float:
    return metrics.MO_PAGES_AT_RISK.labels("thingspace", reason)._value.get()  # noqa: SLF001


@pytest.mark.parametrize("page_size", [3, 100])
async def test_a_stalled_broker_never_lets_a_fetched_block_be_acknowledged(page_size: int) -> None:
    """The broker stops answering right after a provider answer (at every such moment, for
    longer than any retry): the poller keeps the block and asks the provider nothing until the
    block is durable. No crash here, so nothing may be lost, not even a last page."""
    messages = ts_messages(11)
    distinct = {ts_key(m) for m in messages}
    clean, _ = await run_ts(set(), messages, page_size, 0)
    for k in range(1, clean.ops + 1):
        world = World()
        queue = TsQueue(world, page_size)
        queue.pending = list(messages)
        asked_while_down = 0
        history = queue.history

        def answer(token: str | None) -> ts.MoPage:
            nonlocal asked_while_down
            asked_while_down += world.broker_down
            page = history(token)
            if world.ops == k:
                world.broker_down = True       # the broker stalls right after this answer
            return page

        queue.history = answer  # type: ignore[method-assign]
        poller = make_poller(QueueMoPoller, world, ts_sender(queue), seen_window=50)
        failures, idle = 0, 0
        for _ in range(400):
            try:
                await poller.settle()
                idle = idle + 1 if not await poller.poll_once() else 0
            except KafkaTimeoutError:
                failures += 1
                world.broker_down = failures < 5     # down for 5 attempts, then back
                continue
            if idle >= 2:
                break
        keys = world.keys("thingspace")
        assert sorted(keys) == sorted(distinct), f"stall after effect {k}: {len(distinct - set(keys))} lost"
        assert asked_while_down == 0 and queue.pending == [] and queue.outstanding is None


def og_stop_start(i: int) -> og.MoMessage:
    """Most numbers send one keyword (so a missing opt-out record cannot hide behind a later
    one); number 999 sends STOP, then START, then STOP (so the order is checked too)."""
    texts = ["hello", "STOP", "more", "START", "STOP", "bye", "STOP"]
    sender = "584120000999" if i in (4, 8, 13) else f"584120{i:06d}"
    return og.MoMessage(text=texts[i % len(texts)] if i not in (4, 8, 13) else {4: "STOP", 8: "START", 13: "STOP"}[i],
                        sender=sender, to="55555", encoding="UTF-8",
                        keyword=None, carrier="C", send_date=f"2024-05-01 10:00:{i:02d}.000")


def table(world: World) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for phone, opted_out in world.optout:
        out[phone] = opted_out
    return out


async def test_the_optout_table_never_misses_a_keyword_in_sms_inbound_whatever_step_the_process_dies_after() -> None:
    """A crash between an MO's sms.inbound record and its sms.optout record: the recovery finds
    the MO already published and must still write its opt-out change (and keep each number's
    STOP / START order)."""
    batches = [[og_stop_start(i) for i in range(0, 9)], [og_stop_start(i) for i in range(9, 14)]]
    clean = await run_og(set(), batches, 4, 0)
    expected = table(clean)
    assert expected and set(expected.values()) == {True, False}
    for k in range(1, clean.ops + 1):
        world = await run_og({k}, batches, 4, 1)
        assert table(world) == expected, f"crash after effect {k}"
        keyworded = {r["sender"]["phone"] for _, r in world.inbound if r.get("optout")}
        assert keyworded <= set(table(world)), f"crash after effect {k}: a keyword without its opt-out"


def ts_key(m: dict[str, Any]) -> str:
    return ts.MoMessage(None, None, m["message"], m["timestamp"], m).dedupe_key


async def test_thingspace_exactly_once_with_two_crashes() -> None:
    messages = ts_messages(9)
    distinct = {ts_key(m) for m in messages}
    clean, _ = await run_ts(set(), messages, 3, 0)
    rng = random.Random(7)
    for _ in range(60):
        a = rng.randrange(1, clean.ops)
        world, _ = await run_ts({a, a + rng.randrange(1, 8)}, messages, 3, 2)
        assert sorted(world.keys("thingspace")) == sorted(distinct)


async def test_thingspace_refused_token_is_dropped() -> None:
    world = World()
    queue = TsQueue(world, 2)
    queue.pending = ts_messages(5, dup_every=100)
    calls: list[str | None] = []
    inner = ts_sender(queue)

    async def call(build: Any, parse: Any) -> Any:
        token = parse_qs(urlsplit(build().url).query).get("next", [None])[0]
        calls.append(token)
        if token == "STALE":
            raise ts.Rejected("ThingSpace MO history answered HTTP 400", code="UnifiedWebService.INPUT_INVALID.Next.Invalid")
        return await inner.call(build, parse)

    poller = make_poller(QueueMoPoller, world, SimpleNamespace(route="ts", provider=inner.provider, call=call))
    poller.position = {"token": "STALE"}
    await drain(poller)
    assert calls[:2] == ["STALE", None] and len(world.keys("thingspace")) == 5


def og_message(i: int, sender: str = "58412000") -> og.MoMessage:
    return og.MoMessage(text=f"mo {i}", sender=f"{sender}{i % 7:03d}", to="55555", encoding="UTF-8",
                        keyword=None, carrier="C", send_date=f"2024-05-01 10:00:{i // 10:02d}.{i:03d}")


async def run_og(crash_at: set[int], batches: list[list[og.MoMessage]], per_page: int,
                 restarts: int) -> World:
    """Each batch is appended to the list, then the poller runs until it settles (with crashes)."""
    world = World(crash_at)
    mo_list = OgList(world)
    for batch in batches:
        mo_list.mo += batch
        for _ in range(restarts + 1):
            world.restart()
            try:
                await drain(make_poller(ListMoPoller, world, og_sender(mo_list), per_page=per_page, overlap=2,
                                        seen_window=40))
                break
            except Crash:
                continue
        else:
            raise AssertionError("still crashing")
    return world


async def test_ogangi_exactly_once_whatever_step_the_process_dies_after() -> None:
    batches = [[og_message(i) for i in range(0, 8)], [og_message(i) for i in range(8, 13)],
               [og_message(i) for i in range(13, 14)]]
    expected = sorted(ogangi_inbound(m, KEYWORDS, 0).dedupe_key for b in batches for m in b)
    clean = await run_og(set(), batches, 3, 0)
    assert sorted(clean.keys("ogangi")) == expected
    for k in range(1, clean.ops + 1):
        world = await run_og({k}, batches, 3, 1)
        assert sorted(world.keys("ogangi")) == expected, f"crash after effect {k}"


async def test_ogangi_overlap_finds_a_message_inserted_before_the_cursor() -> None:
    world = World()
    mo_list = OgList(world)
    mo_list.mo = [og_message(i) for i in range(6)]
    poller = make_poller(ListMoPoller, world, og_sender(mo_list), per_page=4, overlap=2)
    await drain(poller)
    assert poller.position == {"cursor": 6}
    late = og_message(99)
    mo_list.mo.insert(5, late)                       # lands just before the cursor (same-time reorder)
    mo_list.mo.append(og_message(6))
    await drain(poller)
    keys = world.keys("ogangi")
    assert len(keys) == len(set(keys)) == 8 and ogangi_inbound(late, KEYWORDS, 0).dedupe_key in keys


async def test_ogangi_list_that_shrank_is_read_again_from_its_tail() -> None:
    world = World()
    mo_list = OgList(world)
    mo_list.mo = [og_message(i) for i in range(10)]
    poller = make_poller(ListMoPoller, world, og_sender(mo_list), per_page=4, overlap=2)
    await drain(poller)
    mo_list.mo = mo_list.mo[6:] + [og_message(i) for i in range(10, 12)]   # the provider dropped 6 old ones
    await drain(poller)
    keys = world.keys("ogangi")
    assert len(keys) == len(set(keys)) == 12


async def test_a_failed_publish_is_finished_from_the_intent_without_duplicates() -> None:
    world = World()
    queue = TsQueue(world, 4)
    queue.pending = ts_messages(6, dup_every=100)
    publisher_calls = 0

    class Flaky(MemoryPublisher):
        async def publish_mo(self, m: InboundSms) -> None:
            nonlocal publisher_calls
            publisher_calls += 1
            if publisher_calls == 3:
                raise RuntimeError("broker unavailable")
            await super().publish_mo(m)

    poller = make_poller(QueueMoPoller, world, ts_sender(queue))
    poller.publisher = Flaky(world)  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        await poller.poll_once()
    assert poller.intent is not None and orjson.loads(world.state[poller.name])["intent"] is not None
    await drain(poller)
    keys = world.keys("thingspace")
    assert len(keys) == len(set(keys)) == 6
