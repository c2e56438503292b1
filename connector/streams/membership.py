"""Whether the dispatch worker may still act for the partitions it was given.

A worker that was frozen (SIGSTOP, a long GC pause, a VM freeze, a network partition) wakes up
believing it owns its partitions, while the group coordinator may have expelled it and handed
them to another worker. aiokafka notices only later (a heartbeat or commit answered "unknown
member" / "illegal generation", then a rejoin that first runs the revocation callback), and in
between the worker would go on sending records that the new owner sends too.

``Membership`` answers locally, before every provider call (``RouteSender.gate``):

- **lost**: the coordinator's generation or member id is no longer the one the partitions were
  assigned under (aiokafka resets both when a heartbeat, a commit or a join is refused with
  unknown member / illegal generation), or no heartbeat has succeeded for a whole session
  timeout, measured on this process's monotonic clock from the moment the last successful
  heartbeat was *sent* (the broker cannot have heard from us later than that). A frozen process
  sees the gap on its first instruction after waking. Lost is sticky until the next assignment.
- **suspect**: no successful heartbeat for ``session timeout - heartbeat interval``: the session
  may be about to expire. Calls wait (nothing is dropped) until a heartbeat succeeds (ok again)
  or the session runs out (lost).
- **ok** otherwise.

A refused call raises ``OwnershipLost``, a ``BaseException`` like cancellation: no per-message
error handler may turn it into an outcome (a failed or dead-lettered record); the dispatcher
abandons the record uncommitted, for the partition's next owner. The successful-heartbeat time
comes from wrapping the coordinator's ``_do_heartbeat`` (aiokafka 0.14; ``attach`` checks the
hook exists and fails loudly otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Callable

from aiokafka.protocol.group import JoinGroupRequest

from connector import metrics

log = logging.getLogger("sms_connector.dispatch")

OK, SUSPECT, LOST = "ok", "suspect", "lost"
UNKNOWN_MEMBER = JoinGroupRequest.UNKNOWN_MEMBER_ID


class OwnershipLost(BaseException):
    """This worker may no longer own the record's partition: the call must not start."""


class Membership:
    def __init__(self, session_timeout_s: float, heartbeat_interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session_s = session_timeout_s
        self.suspect_after_s = max(heartbeat_interval_s, session_timeout_s - heartbeat_interval_s)
        self.clock = clock
        self._coordinator: Any = None
        self._assigned: tuple[int, str] | None = None
        self._last_ok = -math.inf
        self.lost_reason: str | None = None
        self._changed = asyncio.Event()
        self.on_lost: Callable[[str], None] | None = None

    # -- wiring ------------------------------------------------------------------------------
    def attach(self, consumer: Any) -> None:
        """Follow the consumer's group coordinator (once it exists: ``consumer.start()`` creates
        it, and the first assignment may come before ``start()`` returns). Idempotent."""
        coordinator = getattr(consumer, "_coordinator", None)
        if coordinator is not None and coordinator is self._coordinator:
            return
        original = getattr(coordinator, "_do_heartbeat", None)
        if coordinator is None or original is None or not hasattr(coordinator, "generation"):
            raise RuntimeError("aiokafka's group coordinator has no _do_heartbeat / generation: the membership "
                               "fence needs aiokafka 0.14 (see connector/streams/membership.py)")
        self._coordinator = coordinator

        async def heartbeat() -> bool:
            sent = self.clock()
            ok = bool(await original())
            if ok:
                self.heartbeat_ok(sent)
            return ok

        coordinator._do_heartbeat = heartbeat

    def _current(self) -> tuple[int, str] | None:
        c = self._coordinator
        return None if c is None else (c.generation, c.member_id)

    # -- events ------------------------------------------------------------------------------
    def assigned(self) -> None:
        """Partitions were (re)assigned: the join that just completed proves the session."""
        self._assigned = self._current()
        self._last_ok = self.clock()
        if self.lost_reason is not None:
            log.info("rejoined the group after losing it", extra={"reason": self.lost_reason})
        self.lost_reason = None
        self._wake()

    def heartbeat_ok(self, sent_at: float) -> None:
        self._last_ok = max(self._last_ok, sent_at)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- state -------------------------------------------------------------------------------
    def revoked(self) -> None:
        """Every partition was handed back: nothing to guard until the next assignment."""
        self._assigned = None

    def state(self) -> str:
        if self.lost_reason is not None:
            return LOST
        if self._assigned is None:
            return OK          # no partitions: nothing to guard (no record is taken)
        if self._current() != self._assigned:
            return self._lose("the group no longer knows this member (generation or member id reset by a refused "
                              "heartbeat, commit or join)")
        age = self.clock() - self._last_ok
        if age >= self.session_s:
            return self._lose(f"no successful heartbeat for {age:.1f}s (session timeout {self.session_s:.0f}s): "
                              f"the group has expelled this member")
        return SUSPECT if age >= self.suspect_after_s else OK

    def lose(self, reason: str) -> None:
        """Something else proved the partitions may be another worker's (a fenced transactional
        producer): as a lost session, sticky until the next assignment."""
        if self.lost_reason is None:
            self._lose(reason)

    def _lose(self, reason: str) -> str:
        self.lost_reason = reason
        metrics.OWNERSHIP_LOST.inc()
        log.error("partitions may be owned by another worker: no provider call starts until the group is rejoined",
                  extra={"reason": reason})
        c = self._coordinator
        if c is not None and c.member_id != UNKNOWN_MEMBER:
            # the broker has expired us (or will at once): rejoin now rather than after the next
            # refused heartbeat, so the worker runs on a fresh assignment, not a stale one
            c.reset_generation()
        if self.on_lost is not None:
            self.on_lost(reason)
        self._wake()
        return LOST

    @property
    def lost(self) -> bool:
        return self.state() == LOST

    async def check(self) -> None:
        """Return when a provider call may start; raise ``OwnershipLost`` when it must not."""
        waited = False
        while True:
            state = self.state()
            if state == OK:
                return
            if state == LOST:
                raise OwnershipLost(self.lost_reason or "lost")
            waiter = self._changed
            if not waited:
                waited = True
                metrics.OWNERSHIP_WAITS.inc()
            remaining = self._last_ok + self.session_s - self.clock()
            try:
                await asyncio.wait_for(waiter.wait(), max(0.01, remaining))
            except asyncio.TimeoutError:
                pass
