"""Which offset of a partition may be committed: the lowest one not yet finished.

Records of one partition finish out of order (different keys run concurrently). Committing
offset N tells Kafka that everything below N is done, so N must be the first unfinished offset;
``PartitionProgress`` tracks exactly that, in O(1) amortised per record.
"""

from __future__ import annotations

import time
from collections import deque


class PartitionProgress:
    __slots__ = ("_pending", "_since", "_done", "_next", "committed", "revoked", "closing")

    def __init__(self, committed: int | None = None) -> None:
        self._pending: deque[int] = deque()    # offsets taken, in order, not yet retired
        self._since: deque[float] = deque()    # monotonic time each pending offset was taken
        self._done: set[int] = set()           # finished offsets not yet retired
        self._next: int | None = None          # one past the highest offset taken
        self.committed = committed             # the last offset committed to Kafka
        self.closing = False                   # being handed back: take no new records
        self.revoked = False                   # handed back: start no more records

    def take(self, offset: int) -> bool:
        """Start tracking ``offset``; False if it was already taken (a re-delivered fetch)."""
        if self._next is not None and offset < self._next:
            return False
        self._pending.append(offset)
        self._since.append(time.monotonic())
        self._next = offset + 1
        return True

    def finish(self, offset: int) -> None:
        self._done.add(offset)
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            done.discard(pending.popleft())
            self._since.popleft()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def unfinished(self) -> int:
        """Records taken and not finished (in_flight less those finished behind an unfinished one)."""
        return len(self._pending) - len(self._done)

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds since the oldest unfinished record was taken (0 when none)."""
        if not self._since:
            return 0.0
        return (time.monotonic() if now is None else now) - self._since[0]

    def committable(self) -> int | None:
        """The offset to commit now (first unfinished), or None when nothing new is finished."""
        if self._next is None:
            return None
        position = self._pending[0] if self._pending else self._next
        if self.committed is not None and position <= self.committed:
            return None
        return position
