"""offsets: only the first unfinished offset is ever committable."""

from __future__ import annotations

import random

from connector.offsets import PartitionProgress


def test_commits_only_contiguous_finished_offsets() -> None:
    p = PartitionProgress()
    for o in range(10, 15):
        assert p.take(o)
    assert p.committable() == 10
    p.finish(12)
    p.finish(11)
    assert p.committable() == 10
    p.finish(10)
    assert p.committable() == 13
    p.committed = 13
    assert p.committable() is None
    p.finish(13)
    p.finish(14)
    assert p.committable() == 15 and p.in_flight == 0


def test_redelivered_offsets_are_not_taken_twice() -> None:
    p = PartitionProgress()
    assert p.take(5) and p.take(6)
    assert not p.take(5)


def test_gaps_in_offsets_are_fine() -> None:
    p = PartitionProgress()
    p.take(3)
    p.take(7)
    p.finish(7)
    assert p.committable() == 3
    p.finish(3)
    assert p.committable() == 8


def test_random_completion_order_never_commits_past_unfinished() -> None:
    rng = random.Random(1)
    p = PartitionProgress()
    offsets = list(range(1000))
    for o in offsets:
        p.take(o)
    order = offsets[:]
    rng.shuffle(order)
    finished: set[int] = set()
    for o in order:
        p.finish(o)
        finished.add(o)
        c = p.committable()
        assert c is not None
        assert all(x in finished for x in range(c))
        assert c == 1000 or c not in finished
