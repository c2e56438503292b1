"""The ledger's memory bound: the oldest entries are forgotten first, a rewrite counts as new."""

from __future__ import annotations

from typing import Any

from connector import metrics
import tracemalloc

import pytest

from connector.records import INTENT, RETRYING, Ending, LedgerEntry
from connector.streams.ledger import DONE, Ledger, PartitionLedger, _apply, _evict, _pack, _unpack


class Batcher:
    """Stands in for connector.streams.batcher.Batcher: every record is durable at once."""

    async def send(self, *args: Any, **kwargs: Any) -> None:
        return None


def evicted() -> float:
    return metrics.LEDGER_EVICTED._value.get()


async def test_the_oldest_entries_go_first_and_the_cap_is_shared_by_partitions() -> None:
    ledger = Ledger(None, Batcher(), window_s=3600, max_entries=1000)  # type: ignore[arg-type]
    p0, p1 = PartitionLedger(ledger, 0), PartitionLedger(ledger, 1)
    ledger.partitions = {0: p0, 1: p1}
    before = evicted()
    for i in range(500):
        await p0.done(f"m-{i}", "accepted")
    await p0.done("m-0", "accepted")          # rewritten: now the newest
    for i in range(500, 600):
        await p0.done(f"m-{i}", "accepted")
    assert len(p0.entries) == 500 and evicted() - before == 100
    assert p0.state("m-0") == DONE and p0.state("m-1") is None and p0.state("m-100") is None
    assert p0.state("m-101") == DONE and p0.state("m-599") == DONE


def test_eviction_while_loading_keeps_the_newest() -> None:
    entries: dict[str, Any] = {}
    for i in range(10):
        _apply(entries, f"m-{i}".encode(), b'{"state":"done","at":%d,"outcome":"accepted"}' % (1000 + i), 1010, 3600)
    _apply(entries, b"m-0", b'{"state":"done","at":1011,"outcome":"failed"}', 1011, 3600)
    _evict(entries, 4)
    assert list(entries) == ["m-7", "m-8", "m-9", "m-0"] and _unpack(entries["m-0"])[2] == "failed"


@pytest.mark.parametrize("state, at, detail", [
    (DONE, 1_700_000_000.25, Ending.ACCEPTED), (DONE, 1_700_000_000.5, Ending.FAILED),
    (DONE, 1_700_000_000.0, Ending.DEAD_LETTERED), (DONE, 0.0, Ending.ACCEPTED), (DONE, -5.0, Ending.FAILED),
    (DONE, 1.0, None), (INTENT, 1_700_000_000.0, None), (RETRYING, 1_700_000_000.0, "token-1"),
])
def test_an_entry_reads_back_as_written(state: str, at: float, detail: str | None) -> None:
    assert _unpack(_pack(state, at, detail)) == (state, at, detail)


def test_loaded_entries_share_their_state_and_outcome_strings() -> None:
    entries: dict[str, Any] = {}
    for i in range(3):
        _apply(entries, b"r-%d" % i, LedgerEntry(RETRYING, 1000.0, token=f"t-{i}").encode(), 1000, 3600)
        _apply(entries, b"d-%d" % i, LedgerEntry(DONE, 1000.0, outcome="dlq").encode(), 1000, 3600)
    assert {id(_unpack(entries[f"r-{i}"])[0]) for i in range(3)} == {id(RETRYING)}
    assert {id(_unpack(entries[f"d-{i}"])[2]) for i in range(3)} == {id(Ending.DEAD_LETTERED)}
    assert [_unpack(entries[f"r-{i}"])[2] for i in range(3)] == ["t-0", "t-1", "t-2"]


async def test_a_done_entry_costs_little_memory_beyond_its_id() -> None:
    """The soak's only growth is the ledger, up to its cap: what each entry costs sets that plateau.
    Besides its id and its time, a done entry was a tuple (85 bytes with its dict slot); now ~30."""
    ledger = Ledger(None, Batcher(), window_s=3600, max_entries=1_000_000)  # type: ignore[arg-type]
    pl = PartitionLedger(ledger, 0)
    ledger.partitions = {0: pl}
    n = 20_000
    cids = [f"soak-{i}" for i in range(n)]                   # the ids exist anyway (the messages')
    entries = [ledger.entry(cid, DONE, outcome=Ending.ACCEPTED if i % 3 else Ending.FAILED)
               for i, cid in enumerate(cids)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for cid, entry in zip(cids, entries):
            ledger.remember(pl, cid, entry)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(pl.entries) == n and pl.outcome("soak-0") == Ending.FAILED and pl.outcome("soak-1") == Ending.ACCEPTED
    assert per_entry < 50, f"{per_entry:.0f} bytes per entry"
