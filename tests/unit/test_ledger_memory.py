"""The ledger's memory bound: the oldest entries are forgotten first, a rewrite counts as new."""

from __future__ import annotations

from typing import Any

from connector import metrics
from connector.streams.ledger import DONE, Ledger, PartitionLedger, _apply, _evict


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
    entries: dict[str, tuple[str, float, str | None]] = {}
    for i in range(10):
        _apply(entries, f"m-{i}".encode(), b'{"state":"done","at":%d,"outcome":"accepted"}' % (1000 + i), 1010, 3600)
    _apply(entries, b"m-0", b'{"state":"done","at":1011,"outcome":"failed"}', 1011, 3600)
    _evict(entries, 4)
    assert list(entries) == ["m-7", "m-8", "m-9", "m-0"] and entries["m-0"][2] == "failed"
